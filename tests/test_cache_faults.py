"""The feature cache under faults: a full disk, killed and concurrent writers, foreign files.

Every fault is real: the disk-full errors are raised by the OS calls the
cache makes (``open``'s writes, ``os.fsync``, ``os.replace``, ``os.mkdir``),
writers are real (forked) processes, one of them killed with SIGKILL, and
damaged or crafted files are real bytes on disk. The cache itself is never
mocked.
"""

from __future__ import annotations

import errno
import hashlib
import io
import multiprocessing
import os
import pickle
import re
import signal
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier, Event
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CountingEncoder
from filelock import FileLock
from threadpoolctl import threadpool_limits
from torch import nn

from sklearn_finetune import FeatureCache, FoundationClassifier, _cache, _cache_files
from sklearn_finetune._cache_files import LOCK_NAME

WIDTH = 16


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Fits on one BLAS/OpenMP thread: on a busy machine more threads only wait for each other."""
    with threadpool_limits(1):
        yield


def counting_encoder(width: int = WIDTH) -> CountingEncoder:
    """The same small linear encoder in every test (and so the same cache key)."""
    torch.manual_seed(0)
    return CountingEncoder(nn.Linear(64, width))


def fit(encoder: nn.Module, cache: FeatureCache | bool, X, y) -> FoundationClassifier:
    return FoundationClassifier(encoder, cache=cache, random_state=0).fit(X, y)


def block_files(directory: Path) -> list[Path]:
    """The cache's block files under ``directory``: ``<key>/<sha256>.features``."""
    return [
        file
        for file in directory.glob("*/*.features")
        if re.fullmatch(r"[0-9a-f]{64}\.features", file.name) and file.is_file()
    ]


def all_files(directory: Path) -> list[Path]:
    """Every file under ``directory`` but the (empty) lock files the cache's writers take."""
    return [path for path in directory.rglob("*") if not path.is_dir() and path.name != LOCK_NAME]


def is_valid(file: Path) -> bool:
    return hashlib.sha256(file.read_bytes()).hexdigest() == file.name.removesuffix(".features")


@contextmanager
def cache_warnings() -> Iterator[list[str]]:
    """The messages of the warnings about the feature cache raised inside the block."""
    messages: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield messages
    messages.extend(
        str(w.message)
        for w in caught
        if issubclass(w.category, RuntimeWarning) and "feature cache" in str(w.message)
    )


@dataclass(frozen=True)
class Reference:
    """An uncached fit's probabilities, and the block file a cached fit writes."""

    proba: np.ndarray
    key: str
    name: str
    data: bytes

    def digests(self) -> np.ndarray:
        return np.lib.format.read_array(io.BytesIO(self.data), allow_pickle=False)


@pytest.fixture(scope="module")
def reference(digits, tmp_path_factory) -> Reference:
    X, y = digits
    directory = tmp_path_factory.mktemp("complete")
    with threadpool_limits(1):  # set up before the function-scoped one_thread
        proba = fit(counting_encoder(), False, X, y).predict_proba(X)
        fit(counting_encoder(), FeatureCache(directory), X, y)
    (file,) = block_files(directory)
    return Reference(proba, file.parent.name, file.name, file.read_bytes())


def assert_fits_correctly(cache: FeatureCache, digits, reference: Reference) -> CountingEncoder:
    """A fit through ``cache`` that encodes every sample and predicts as an uncached fit."""
    X, y = digits
    encoder = counting_encoder()
    clf = fit(encoder, cache, X, y)
    assert encoder.samples_seen == len(X)  # nothing was read from the damaged directory
    np.testing.assert_allclose(clf.predict_proba(X), reference.proba, atol=1e-6)
    return encoder


# 1. A full disk --------------------------------------------------------------


def disk_full(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class HalfWrittenFile(io.FileIO):
    """A file on a disk that fills up halfway through the write."""

    def write(self, data) -> int:  # type: ignore[override]
        data = bytes(data)
        super().write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def full_while_writing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_cache_files, "open", HalfWrittenFile, raising=False)


def full_at_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "fsync", disk_full)


def full_at_rename(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "replace", disk_full)


def full_at_mkdir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "mkdir", disk_full)


@pytest.mark.parametrize(
    "fill_disk", [full_while_writing, full_at_fsync, full_at_rename, full_at_mkdir]
)
def test_a_full_disk_warns_once_leaves_no_file_and_the_fit_goes_on(
    digits, reference, tmp_path, monkeypatch, fill_disk: Callable[[pytest.MonkeyPatch], None]
):
    X, y = digits
    cache = FeatureCache(tmp_path)
    fill_disk(monkeypatch)
    with cache_warnings() as messages:
        encoder = assert_fits_correctly(cache, digits, reference)
    assert len(messages) == 1, messages
    assert str(tmp_path) in messages[0] and os.strerror(errno.ENOSPC) in messages[0]
    assert all_files(tmp_path) == []  # no block, no partial or temporary file

    with cache_warnings() as messages:
        fit(encoder, cache, X, y)  # the memory layer still holds the features
    assert encoder.samples_seen == len(X) and messages == []

    monkeypatch.undo()  # space again: the next new samples are written
    fit(encoder, cache, X[:100] + 0.5, y[:100])
    (file,) = all_files(tmp_path)
    assert is_valid(file)


def test_write_failures_are_reported_again_once_a_write_has_succeeded(tmp_path, monkeypatch):
    cache = FeatureCache(tmp_path)

    def fetch(digest: bytes) -> None:
        cache.fetch("key", [digest * 16], lambda positions: np.ones((len(positions), 2)))

    monkeypatch.setattr(os, "fsync", disk_full)
    with cache_warnings() as messages:
        fetch(b"a")
        fetch(b"b")
    assert len(messages) == 1
    monkeypatch.undo()
    fetch(b"c")
    monkeypatch.setattr(os, "fsync", disk_full)
    with cache_warnings() as messages:
        fetch(b"d")
    assert len(messages) == 1
    assert len(all_files(tmp_path)) == 1


# 2. A writer killed before its rename ------------------------------------------


@pytest.mark.parametrize("kept", [0.0, 0.01, 0.5, -1])
def test_what_a_killed_writer_leaves_is_never_read_as_features(digits, reference, tmp_path, kept):
    """A truncated temporary file is ignored; a truncated block is deleted with a warning."""
    data = reference.data
    cut = len(data) - 1 if kept == -1 else int(kept * len(data))
    folder = tmp_path / reference.key
    folder.mkdir()
    temporary = folder / f".{reference.name}.4242.{'0' * 32}.tmp"
    temporary.write_bytes(data[:cut])
    with cache_warnings() as messages:
        assert_fits_correctly(FeatureCache(tmp_path), digits, reference)
    assert messages == [] and temporary.read_bytes() == data[:cut]  # ignored, left alone
    (folder / reference.name).write_bytes(data[:cut])  # as a copy cut short would leave it
    with cache_warnings() as messages:
        assert_fits_correctly(FeatureCache(tmp_path), digits, reference)
    assert len(messages) == 1 and "damaged feature cache file" in messages[0]
    assert (folder / reference.name).read_bytes() == data  # recomputed and written again


def stall_before_the_rename(writing: Event) -> Callable[[int], None]:
    """An ``os.fsync`` that never returns: the block is in its temporary file, not renamed."""

    def stall(fd: int) -> None:
        writing.set()
        time.sleep(120)

    return stall


def fit_in_a_process(X, y, width: int, directory: Path, out: Path) -> None:
    """A forked writer's fit (one thread, as DataLoader workers run), its predictions saved."""
    torch.set_num_threads(1)
    warnings.simplefilter("error", RuntimeWarning)  # a cache warning fails the writer
    clf = fit(counting_encoder(width), FeatureCache(directory), X, y)
    np.save(out, clf.predict_proba(X))


def killed_writer(X, y, width: int, directory: Path, writing: Event) -> None:
    os.fsync = stall_before_the_rename(writing)
    fit_in_a_process(X, y, width, directory, directory.parent / "never.npy")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="a forked writer, killed with SIGKILL")
def test_a_writer_killed_while_writing_a_large_block_leaves_nothing_read(digits, tmp_path):
    X, y = digits
    width = 1024  # a block of 1.6 MB
    cache_dir = tmp_path / "cache"
    context = multiprocessing.get_context("fork")
    writing = context.Event()
    writer = context.Process(target=killed_writer, args=(X, y, width, cache_dir, writing))
    writer.start()
    try:
        assert writing.wait(timeout=60), f"the writer did not write (exit code {writer.exitcode})"
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.join(timeout=30)
    assert writer.exitcode == -signal.SIGKILL
    (temporary,) = all_files(cache_dir)
    assert temporary.name.startswith(".") and temporary.name.endswith(".tmp")
    assert temporary.stat().st_size > width * len(X) * 4  # the whole block, never renamed

    encoder = counting_encoder(width)
    with cache_warnings() as messages:
        expected = fit(counting_encoder(width), False, X, y).predict_proba(X)
        proba = fit(encoder, FeatureCache(cache_dir), X, y).predict_proba(X)
    assert encoder.samples_seen == len(X) and messages == []
    np.testing.assert_allclose(proba, expected, atol=1e-6)
    assert temporary.exists() and all(is_valid(file) for file in block_files(cache_dir))


# 3. Files that are not ours ----------------------------------------------------


def random_bytes(size: int = 4096) -> bytes:
    return np.random.default_rng(0).bytes(size)


def another_blocks_content(reference: Reference) -> bytes:
    """A well-formed block with zero features, under the name of the real one."""
    digests = reference.digests()
    buffer = io.BytesIO()
    np.save(buffer, digests)
    np.save(buffer, np.zeros((len(digests), WIDTH), dtype=np.float32))
    return buffer.getvalue()


#: (how the entry is named and made, whether it is left alone, the warnings of a fit)
FOREIGN = {
    "random bytes, our suffix, another name": (
        lambda folder, ref: (folder / "notes.features").write_bytes(random_bytes()),
        True,
        0,
    ),
    "random bytes, named like ours": (
        lambda folder, ref: (folder / f"{'ab' * 32}.features").write_bytes(random_bytes()),
        False,
        1,
    ),
    "a block whose content does not match its name": (
        lambda folder, ref: (folder / ref.name).write_bytes(another_blocks_content(ref)),
        False,
        1,
    ),
    "a truncated block": (
        lambda folder, ref: (folder / ref.name).write_bytes(ref.data[: len(ref.data) // 3]),
        False,
        1,
    ),
    "a directory where the block goes": (
        lambda folder, ref: (folder / ref.name).mkdir(),
        True,
        2,
    ),
    "a valid block without our suffix": (
        lambda folder, ref: (folder / ref.name.removesuffix(".features")).write_bytes(ref.data),
        True,
        0,
    ),
}


@pytest.mark.parametrize("kind", FOREIGN)
def test_a_file_that_is_not_ours_is_never_loaded(digits, reference, tmp_path, kind):
    make, left_alone, n_warnings = FOREIGN[kind]
    folder = tmp_path / reference.key
    folder.mkdir()
    make(folder, reference)
    (entry,) = folder.iterdir()
    before = None if entry.is_dir() else entry.read_bytes()
    cache = FeatureCache(tmp_path)
    with cache_warnings() as messages:
        encoder = assert_fits_correctly(cache, digits, reference)
    assert len(messages) == n_warnings, messages  # a directory: not readable, not writable
    assert all(str(entry) in message or str(tmp_path) in message for message in messages)
    if left_alone:
        assert entry.exists() and (before is None or entry.read_bytes() == before)
    else:  # deleted, or replaced by the valid block this fit wrote under that name
        assert not entry.exists() or (entry.read_bytes() != before and is_valid(entry))

    X, y = digits
    with cache_warnings() as messages:  # reported once, not at every fit
        fit(encoder, cache, X, y)
    assert messages == [] and encoder.samples_seen == len(X)
    cache.clear()  # our files go, what is not ours stays
    assert entry.exists() == left_alone and block_files(tmp_path) == []


# 4. Two processes writing the same block at the same time -------------------------


def writer_meeting_the_other(X, y, directory: Path, barrier: Barrier, out: Path) -> None:
    """A fit whose rename into ``directory`` waits until the other writer is at its own.

    Both writers have then found the block absent and written their temporary
    file: both rename onto the same name at the same moment. Had one found
    the block already there, the other would wait in vain and fail. The
    directory behaves as a file system without ``flock`` (where the cache
    runs unlocked): with the lock, the second writer would wait for the
    first instead of encoding the block too.
    """
    replace = os.replace

    def no_flock(self, *args, **kwargs):
        raise OSError(errno.ENOLCK, "No locks available")

    FileLock.acquire = no_flock

    def replace_together(source: str, target: str) -> None:
        if str(target).startswith(str(directory)):
            barrier.wait()
        replace(source, target)

    os.replace = replace_together
    fit_in_a_process(X, y, WIDTH, directory, out)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forked writers")
def test_two_processes_writing_the_same_block_at_once_both_succeed(digits, reference, tmp_path):
    X, y = digits
    cache_dir = tmp_path / "cache"
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(2, timeout=60)
    outs = [tmp_path / "first.npy", tmp_path / "second.npy"]
    writers = [
        context.Process(target=writer_meeting_the_other, args=(X, y, cache_dir, barrier, out))
        for out in outs
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
    assert [writer.exitcode for writer in writers] == [0, 0]
    first, second = (np.load(out) for out in outs)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first, reference.proba, atol=1e-6)
    files = all_files(cache_dir)
    assert files and all(is_valid(file) for file in files)  # no temporary file either

    encoder = counting_encoder()
    with cache_warnings() as messages:
        proba = fit(encoder, FeatureCache(cache_dir), X, y).predict_proba(X)
    assert encoder.samples_seen == 0 and messages == []  # read back from what they wrote
    np.testing.assert_allclose(proba, first, atol=1e-6)


def test_a_block_another_writer_renamed_first_is_kept_not_rewritten(tmp_path):
    first, second = FeatureCache(tmp_path), FeatureCache(tmp_path)
    digests = [bytes([i]) * 16 for i in range(3)]
    features = np.arange(6, dtype=np.float32).reshape(3, 2)

    def compute_while_the_other_writes(positions: np.ndarray) -> np.ndarray:
        first.fetch("key", digests, lambda positions: features[positions])
        return features[positions]

    second.fetch("key", digests, compute_while_the_other_writes)
    (file,) = all_files(tmp_path)
    written = file.stat()
    np.testing.assert_array_equal(
        second.fetch("key", digests, lambda positions: features[positions] + 1), features
    )
    assert (file.stat().st_ino, file.stat().st_mtime_ns) == (written.st_ino, written.st_mtime_ns)
    assert is_valid(file)


# 5. Nothing on disk is ever unpickled ----------------------------------------------


@dataclass(frozen=True)
class Marker:
    """An object whose unpickling creates ``path``."""

    path: Path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def objects_as_features(reference: Reference, marker: Path) -> bytes:
    digests = reference.digests()
    buffer = io.BytesIO()
    np.save(buffer, digests)
    np.save(buffer, np.array([Marker(marker)] * len(digests), dtype=object), allow_pickle=True)
    return buffer.getvalue()


def objects_as_digests(reference: Reference, marker: Path) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array([Marker(marker)], dtype=object), allow_pickle=True)
    np.save(buffer, np.zeros((1, WIDTH), dtype=np.float32))
    return buffer.getvalue()


def a_pickle(reference: Reference, marker: Path) -> bytes:
    return pickle.dumps([Marker(marker)])


def an_npz_archive(reference: Reference, marker: Path) -> bytes:
    buffer = io.BytesIO()
    objects = np.array([Marker(marker)], dtype=object)
    np.savez(buffer, digests=reference.digests(), features=objects)
    return buffer.getvalue()


def load_allowing_pickles(content: bytes) -> None:
    """Read ``content`` as a careless reader would: ``np.load(..., allow_pickle=True)``."""
    stream = io.BytesIO(content)
    if content.startswith(b"PK"):  # an .npz archive
        archive = np.load(stream, allow_pickle=True)
        for name in archive.files:
            archive[name]
    elif content.startswith(b"\x93NUMPY"):  # .npy arrays back to back
        np.load(stream, allow_pickle=True)
        np.load(stream, allow_pickle=True)
    else:
        pickle.loads(content)


@pytest.mark.parametrize(
    "craft", [objects_as_features, objects_as_digests, a_pickle, an_npz_archive]
)
def test_a_crafted_pickle_under_our_name_is_refused_not_executed(
    digits, reference, tmp_path, craft: Callable[[Reference, Path], bytes]
):
    proof = tmp_path / "proof"  # the crafted bytes do run code when unpickled...
    load_allowing_pickles(craft(reference, proof))
    assert proof.exists()

    marker = tmp_path / "marker"  # ...but not when the cache meets them
    content = craft(reference, marker)
    folder = tmp_path / "cache" / reference.key
    folder.mkdir(parents=True)
    crafted = folder / f"{hashlib.sha256(content).hexdigest()}.features"
    crafted.write_bytes(content)
    with cache_warnings() as messages:
        assert_fits_correctly(FeatureCache(tmp_path / "cache"), digits, reference)
    assert not marker.exists()
    assert len(messages) == 1 and "damaged feature cache file" in messages[0]
    assert not crafted.exists()


def test_a_fifo_named_like_a_block_is_skipped_not_read(tmp_path, digits):
    """Reading a FIFO would wait for a writer forever; it is not a regular file, so not read."""
    X, y = digits
    encoder = counting_encoder()
    fit(encoder, FeatureCache(tmp_path), X, y)
    (folder,) = [path for path in tmp_path.iterdir() if path.is_dir()]
    os.mkfifo(folder / ("c" * 64 + _cache.SUFFIX))
    signal.signal(signal.SIGALRM, lambda *args: pytest.fail("the cache read the FIFO"))
    signal.alarm(20)
    try:
        with pytest.warns(RuntimeWarning, match="not a regular file"):
            fit(encoder, FeatureCache(tmp_path), X, y)
    finally:
        signal.alarm(0)
