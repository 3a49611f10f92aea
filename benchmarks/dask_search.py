"""A GridSearchCV of a frozen encoder on a two-worker dask LocalCluster: what it encodes and ships.

Prints, as Markdown:

1. Samples the frozen encoder ran on across the whole search (every worker
   and the refit here), against the unique samples, with the feature cache
   on a directory both workers share (``FeatureCache(directory)``, with and
   without ``share_encoders=True``) and without a cache directory (each
   worker's own memory).
2. What each task carries, side by side for every cache: the bytes of the
   pickled estimator clone that ``GridSearchCV`` hands joblib for every
   (candidate, fold) task, next to the encoder's own pickle; how many times
   the encoder was unpickled in the workers and here (dask's scheduler runs
   in this process and unpickles every task too), counted by the encoder's
   ``__setstate__``; and the search's wall time (after a warm-up search
   in which the workers import everything and fit once).
3. torch's intra-op thread count seen inside the encoder's ``forward``, in
   the workers and here.
4. Whether ``cv_results_`` (all but the times) equal the local run's.

Run from the repository root (needs ``pip install -e ".[distributed]"``)::

    python benchmarks/dask_search.py              # 4 candidates x 3 folds, 400 digits
    python benchmarks/dask_search.py --width 2048  # a 17 MB encoder
"""

from __future__ import annotations

import argparse
import os
import pickle
import tempfile
import time
from collections import Counter
from pathlib import Path

import joblib
import numpy as np
import torch
from distributed import Client, LocalCluster
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV
from torch import nn

from sklearn_finetune import FeatureCache, FoundationClassifier


class LoggingEncoder(nn.Module):
    """An MLP backbone that records each forward pass (pid, rows, threads) and each unpickling.

    Each forward pass also waits ``pause`` seconds, as a large encoder takes
    time: the two workers' first tasks then encode at the same time.
    """

    def __init__(self, log: str, width: int, pause: float) -> None:
        super().__init__()
        self.log = log
        self.pause = pause
        self.inner = nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with open(self.log, "a") as handle:
            handle.write(f"forward {os.getpid()} {len(x)} {torch.get_num_threads()}\n")
        time.sleep(self.pause)
        return self.inner(x)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        with open(self.log, "a") as handle:
            handle.write(f"unpickled {os.getpid()}\n")


def read(log: Path) -> list[list[str]]:
    return [line.split() for line in log.read_text().splitlines()] if log.exists() else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=256, help="hidden width of the encoder")
    parser.add_argument("--n-samples", type=int, default=400)
    parser.add_argument("--pause", type=float, default=0.1, help="seconds per forward pass")
    args = parser.parse_args()

    X, y = load_digits(return_X_y=True)
    X, y = (X[: args.n_samples] / 16.0).astype(np.float32), y[: args.n_samples]
    unique = len(np.unique(X, axis=0))
    grid = {"head": ["linear", "mlp"], "lr": [1e-3, 1e-2]}
    work = Path(tempfile.mkdtemp())
    torch.manual_seed(0)
    log = work / "encoder.log"
    encoder = LoggingEncoder(str(log), args.width, args.pause)
    settings = dict(solver="adamw", max_epochs=3, random_state=0)
    local = GridSearchCV(FoundationClassifier(encoder, cache=False, **settings), grid, cv=3)
    local.fit(X, y)
    log.unlink()

    rows = []
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        workers = set(client.run(os.getpid).values())
        with joblib.parallel_backend("dask"):  # warm-up: every worker imports and runs a fit
            warm_up = FoundationClassifier(nn.Linear(64, 8), cache=False, **settings)
            GridSearchCV(warm_up, {"lr": [1e-3, 1e-2]}, cv=2).fit(X, y)
        for name, cache in [
            ("shared directory", FeatureCache(work / "features")),
            (
                "shared directory, share_encoders=True",
                FeatureCache(work / "features-shared", share_encoders=True),
            ),
            ("cache=True (each worker process's memory)", True),
            ("a FeatureCache() object (each task's memory)", FeatureCache()),
        ]:
            estimator = FoundationClassifier(encoder, cache=cache, **settings)
            task_bytes = len(pickle.dumps(clone(estimator)))  # what each task carries
            log.unlink(missing_ok=True)  # the share_encoders file was written: not a load
            start = time.perf_counter()
            with joblib.parallel_backend("dask"):
                remote = GridSearchCV(estimator, grid, cv=3).fit(X, y)
            seconds = time.perf_counter() - start
            same = all(
                np.array_equal(local.cv_results_[key], remote.cv_results_[key])
                for key in local.cv_results_
                if "time" not in key and key != "params"
            ) and (local.cv_results_["params"] == remote.cv_results_["params"])
            records = read(log)
            log.unlink()
            forwards = [r for r in records if r[0] == "forward"]
            in_workers = sum(int(r[2]) for r in forwards if int(r[1]) in workers)
            here = sum(int(r[2]) for r in forwards if int(r[1]) == os.getpid())
            threads = sorted({(int(r[1]) in workers, int(r[3])) for r in forwards})
            unpickled = Counter(int(r[1]) for r in records if r[0] == "unpickled")
            per_worker = sorted(unpickled[pid] for pid in workers)
            loads = (per_worker, unpickled[os.getpid()])
            rows.append((name, in_workers, here, same, threads, loads, task_bytes, seconds))

    tasks = len(local.cv_results_["params"]) * 3
    print(f"### GridSearchCV, 4 candidates x 3 folds ({tasks} tasks), {len(X)} samples")
    print(f"({unique} unique), encoder width {args.width}, two single-threaded workers\n")
    print("| cache | encoded in workers | in the refit here | / unique | same cv_results_ |")
    print("| --- | --- | --- | --- | --- |")
    for name, in_workers, here, same, *_ in rows:
        ratio = (in_workers + here) / unique
        print(f"| {name} | {in_workers} | {here} | {ratio:.2f}x | {same} |")
    encoder_bytes = len(pickle.dumps(encoder))
    print(f"\nWhat each task carries (the encoder's own pickle: {encoder_bytes:,} bytes)\n")
    print("| cache | bytes per task | encoder unpickled: per worker | here | search (s) |")
    print("| --- | --- | --- | --- | --- |")
    for name, *_, (per_worker, here), task_bytes, seconds in rows:
        print(f"| {name} | {task_bytes:,} | {per_worker} | {here} | {seconds:.1f} |")
    print("\ntorch threads in forward, (in a worker, threads):", rows[0][4])


if __name__ == "__main__":
    main()
