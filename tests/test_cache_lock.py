"""The directory cache's per-encoder lock, with real processes (spawned, as dask's and loky's are).

Two processes that need the same rows at the same time encode them once
between them; a process killed while it holds the lock does not block the
others; a directory where no lock can be taken still works.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from sklearn_finetune import FeatureCache
from sklearn_finetune._cache_files import LOCK_NAME

KEY = "encoder-key"
N_ROWS = 300


def features_of(positions: np.ndarray) -> np.ndarray:
    return np.repeat(positions[:, None].astype(np.float32), 4, axis=1)


def fetch_all_rows(directory: str, log: str, start: float) -> None:
    """Fetch every row once a shared start time is reached, logging the rows encoded."""

    def encode(positions: np.ndarray) -> np.ndarray:
        with open(log, "a") as handle:
            handle.write(f"{os.getpid()} {len(positions)}\n")
        time.sleep(0.5)  # an encoder that takes a while: the other process arrives meanwhile
        return features_of(positions)

    digests = [i.to_bytes(16, "big") for i in range(N_ROWS)]
    while time.time() < start:
        time.sleep(0.001)
    out = FeatureCache(directory).fetch(KEY, digests, encode)
    np.testing.assert_array_equal(out, features_of(np.arange(N_ROWS)))


def hold_the_lock_forever(directory: str, holding: str) -> None:
    """Start encoding, say so, and hang: killed with SIGKILL while holding the lock."""

    def encode(positions: np.ndarray) -> np.ndarray:
        Path(holding).touch()
        time.sleep(600)
        raise AssertionError("not reached")

    FeatureCache(directory).fetch(KEY, [b"\x00" * 16], encode)


def encoded_rows(log: Path) -> list[int]:
    return [int(line.split()[1]) for line in log.read_text().splitlines()] if log.exists() else []


def test_two_processes_fetching_the_same_rows_at_once_encode_them_once(tmp_path):
    context = multiprocessing.get_context("spawn")
    log = tmp_path / "encoded.log"
    start = time.time() + 3  # after both have imported numpy and the package
    processes = [
        context.Process(target=fetch_all_rows, args=(str(tmp_path / "cache"), str(log), start))
        for _ in range(2)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [process.exitcode for process in processes] == [0, 0]
    assert encoded_rows(log) == [N_ROWS]  # one process encoded; the other waited and read it


def test_a_process_killed_while_holding_the_lock_does_not_block_the_others(tmp_path):
    directory = tmp_path / "cache"
    holding = tmp_path / "holding"
    context = multiprocessing.get_context("spawn")
    holder = context.Process(target=hold_the_lock_forever, args=(str(directory), str(holding)))
    holder.start()
    try:
        deadline = time.time() + 60
        while not holding.exists():
            assert time.time() < deadline and holder.is_alive(), "the holder never encoded"
            time.sleep(0.05)
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(timeout=30)
    assert holder.exitcode == -signal.SIGKILL
    assert (directory / KEY / LOCK_NAME).exists()  # the lock file stays; the lock does not
    began = time.time()
    out = FeatureCache(directory).fetch(
        KEY, [b"\x00" * 16], lambda positions: features_of(positions)
    )
    assert time.time() - began < 5
    np.testing.assert_array_equal(out, features_of(np.array([0])))


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="a POSIX directory root cannot write"
)
def test_a_read_only_directory_warns_once_and_keeps_the_features_in_memory(tmp_path):
    directory = tmp_path / "cache"
    directory.mkdir()
    directory.chmod(0o500)
    try:
        cache = FeatureCache(directory)
        with pytest.warns(RuntimeWarning, match="kept in memory only"):
            cache.fetch(KEY, [b"\x01" * 16], features_of)
        assert cache.fetch(KEY, [b"\x01" * 16], lambda positions: 1 / 0).shape == (1, 4)
    finally:
        directory.chmod(0o700)


def test_a_folder_where_no_lock_can_be_taken_runs_unlocked(tmp_path):
    (tmp_path / KEY / LOCK_NAME).mkdir(parents=True)  # opening the lock file fails
    cache = FeatureCache(tmp_path)
    np.testing.assert_array_equal(
        cache.fetch(KEY, [b"\x02" * 16], features_of), features_of(np.array([0]))
    )
    reader = FeatureCache(tmp_path)  # the block was written all the same
    assert reader.fetch(KEY, [b"\x02" * 16], lambda positions: 1 / 0).shape == (1, 4)


def test_two_threads_fetching_the_same_rows_at_once_encode_them_once(tmp_path):
    """As two tasks of one dask worker with ``threads_per_worker=2`` would, each with its cache."""
    log = tmp_path / "encoded.log"
    start = time.time() + 0.5
    with ThreadPoolExecutor(max_workers=2) as pool:
        fetches = [
            pool.submit(fetch_all_rows, str(tmp_path / "cache"), str(log), start) for _ in range(2)
        ]
        for fetch in fetches:
            fetch.result(timeout=60)  # each got every row right
    assert encoded_rows(log) == [N_ROWS]
