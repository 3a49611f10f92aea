"""Searches on a dask cluster (joblib's dask backend), the shared feature cache, and threads.

One real ``dask.distributed.LocalCluster`` (two worker processes on
127.0.0.1) serves the whole module. The encoder counts its own work: its
``forward`` appends the process id, the batch size and torch's thread count
to a file, so samples encoded in every worker are counted, not estimated.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, RandomizedSearchCV, cross_val_score
from torch import nn

from sklearn_finetune import FeatureCache, FoundationClassifier, FoundationRegressor

distributed = pytest.importorskip("distributed")


class LoggingEncoder(nn.Module):
    """A frozen backbone whose every forward pass is recorded in ``log``: pid, rows, threads.

    Each pass also takes ``pause`` seconds, as a large encoder would: two
    workers that start together then encode at the same time.
    """

    def __init__(self, log: str, pause: float = 0.0) -> None:
        super().__init__()
        self.log = log
        self.pause = pause
        self.inner = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with open(self.log, "a") as handle:
            handle.write(f"{os.getpid()} {len(x)} {torch.get_num_threads()}\n")
        time.sleep(self.pause)
        return self.inner(x)


class UnpicklingLoggingEncoder(LoggingEncoder):
    """A LoggingEncoder that also records each unpickling of it, by pid, in ``<log>.loads``."""

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        with open(f"{self.log}.loads", "a") as handle:
            handle.write(f"{os.getpid()}\n")


def loaded_encoders() -> list[str]:
    """The SHA-256 of each encoder this process loaded from a cache directory (``client.run``)."""
    from sklearn_finetune._shared_encoders import LOADED

    return list(LOADED)


def records(log: Path) -> list[tuple[int, int, int]]:
    """(pid, rows, torch threads) of each forward pass so far."""
    if not log.exists():
        return []
    return [tuple(int(field) for field in line.split()) for line in log.read_text().splitlines()]


def logging_encoder(log: Path, pause: float = 0.0) -> LoggingEncoder:
    torch.manual_seed(0)
    return LoggingEncoder(str(log), pause)


@pytest.fixture(scope="module")
def client() -> Iterator[distributed.Client]:
    """Two single-threaded worker processes, as in the docs' example."""
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    )
    client = distributed.Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return (X[:300] / 16.0).astype(np.float32), y[:300]


def same_results(local: dict, remote: dict) -> None:
    """cv_results_ agree in everything but the times."""
    keys = [key for key in local if "time" not in key]
    assert keys == [key for key in remote if "time" not in key]
    for key in keys:
        if key == "params":
            assert local[key] == remote[key]
        elif np.asarray(local[key]).dtype.kind == "f":
            np.testing.assert_allclose(local[key], remote[key], rtol=1e-6, err_msg=key)
        else:
            np.testing.assert_array_equal(local[key], remote[key], err_msg=key)


def test_a_grid_search_on_dask_matches_the_local_one_and_encodes_each_sample_once(
    client, data, tmp_path
):
    X, y = data
    grid = {"head": ["linear", "mlp"], "lr": [1e-3, 1e-2]}  # 4 candidates x 3 folds
    local_log, remote_log = tmp_path / "local.log", tmp_path / "remote.log"
    settings = dict(solver="adamw", max_epochs=3, random_state=0)
    local = GridSearchCV(
        FoundationClassifier(logging_encoder(local_log), cache=False, **settings), grid, cv=3
    ).fit(X, y)
    cache = FeatureCache(tmp_path / "features")  # the directory both workers share
    encoder = logging_encoder(remote_log, pause=0.1)
    estimator = FoundationClassifier(encoder, cache=cache, **settings)
    with joblib.parallel_backend("dask"):
        remote = GridSearchCV(estimator, grid, cv=3).fit(X, y)
    same_results(local.cv_results_, remote.cv_results_)
    assert remote.best_params_ == local.best_params_

    seen = records(remote_log)
    workers = {pid for pid in client.run(os.getpid).values()}
    assert {pid for pid, _, _ in seen} <= workers  # the refit here found every sample on disk
    unique = len(np.unique(X, axis=0))
    encoded = sum(rows for _, rows, _ in seen)
    assert unique <= encoded <= 1.05 * unique, (encoded, unique)


def test_share_encoders_sends_the_encoder_to_each_worker_once(client, data, tmp_path):
    """``share_encoders=True``: each task carries a reference; each process loads the file once."""
    X, y = data
    grid = {"head": ["linear", "mlp"], "lr": [1e-3, 1e-2]}  # 4 candidates x 3 folds
    settings = dict(solver="adamw", max_epochs=3, random_state=0)
    local = GridSearchCV(
        FoundationClassifier(logging_encoder(tmp_path / "local.log"), cache=False, **settings),
        grid,
        cv=3,
    ).fit(X, y)
    log = tmp_path / "remote.log"
    torch.manual_seed(0)
    encoder = UnpicklingLoggingEncoder(str(log), pause=0.1)
    cache = FeatureCache(tmp_path / "features", share_encoders=True)
    estimator = FoundationClassifier(encoder, cache=cache, **settings)
    task = pickle.dumps(clone(estimator))  # what GridSearchCV sends with each task
    [file] = (tmp_path / "features" / "encoders").iterdir()
    written = file.stat()
    with joblib.parallel_backend("dask"):
        remote = GridSearchCV(estimator, grid, cv=3).fit(X, y)
    same_results(local.cv_results_, remote.cv_results_)

    assert list((tmp_path / "features" / "encoders").iterdir()) == [file]  # written once
    assert (file.stat().st_ino, file.stat().st_mtime_ns) == (written.st_ino, written.st_mtime_ns)
    whole = pickle.dumps(clone(FoundationClassifier(encoder, **settings)))
    assert len(task) < len(whole) - len(pickle.dumps(encoder)) + 1_000
    workers = set(client.run(os.getpid).values())
    loads = Counter(int(pid) for pid in Path(f"{log}.loads").read_text().split())
    # each process loaded it once at most: the workers, and this one (dask's scheduler)
    assert set(loads) <= workers | {os.getpid()} and set(loads) & workers, loads
    assert set(loads.values()) == {1}, loads
    holding = [pid for pid, shas in client.run(loaded_encoders).items() if file.stem in shas]
    assert len(holding) == len(set(loads) & workers)
    seen = records(log)
    assert {pid for pid, _, _ in seen} <= workers  # the loaded encoder has the cache's key
    unique = len(np.unique(X, axis=0))
    assert unique <= sum(rows for _, rows, _ in seen) <= 1.05 * unique


def test_a_randomized_search_of_a_regressor_on_dask_matches_the_local_one(client, data, tmp_path):
    X, y = data
    target = y.astype(np.float32) + X[:, 20]
    distributions = {"lr": [1e-3, 3e-3, 1e-2, 3e-2], "head": ["linear", "mlp"]}
    estimator = FoundationRegressor(
        logging_encoder(tmp_path / "log"),
        solver="adamw",
        max_epochs=3,
        cache=FeatureCache(tmp_path / "features"),
        random_state=0,
    )
    search = RandomizedSearchCV(estimator, distributions, n_iter=4, cv=3, random_state=0)
    local = clone(search).fit(X, target)
    with joblib.parallel_backend("dask"):
        remote = clone(search).fit(X, target)
    same_results(local.cv_results_, remote.cv_results_)


def test_cross_val_score_on_dask_matches_the_local_one(client, data, tmp_path):
    X, y = data
    estimator = FoundationClassifier(logging_encoder(tmp_path / "log"), random_state=0)
    local = cross_val_score(estimator, X, y, cv=3)
    with joblib.parallel_backend("dask"):
        remote = cross_val_score(estimator, X, y, cv=3)
    np.testing.assert_array_equal(local, remote)


def test_each_dask_worker_encodes_with_one_torch_thread(client, data, tmp_path):
    """dask's nanny starts workers with ``OMP_NUM_THREADS=1``: a thread per task, no more."""
    X, y = data
    log = tmp_path / "log"
    estimator = FoundationClassifier(logging_encoder(log), cache=False, random_state=0)
    with joblib.parallel_backend("dask"):
        cross_val_score(estimator, X, y, cv=2)
    workers = set(client.run(os.getpid).values())
    seen = records(log)
    assert {pid for pid, _, _ in seen} <= workers and seen
    assert {threads for _, _, threads in seen} == {1}
    assert set(client.run(torch.get_num_threads).values()) == {1}  # as a worker left it


def test_each_loky_worker_encodes_with_its_share_of_the_cores(data, tmp_path):
    """joblib's loky workers: ``cpu_count() // n_jobs`` threads each, as loky sets them.

    Each encoding's first batch runs on the worker's share; this encoder is
    small enough for the rest to run on one thread (``batch_threads``).
    """
    X, y = data
    log = tmp_path / "log"
    estimator = FoundationClassifier(logging_encoder(log), cache=False, random_state=0)
    threads_here = torch.get_num_threads()
    cross_val_score(estimator, X, y, cv=2, n_jobs=2)
    seen = records(log)
    assert len({pid for pid, _, _ in seen} - {os.getpid()}) >= 1
    share = max(1, joblib.cpu_count() // 2)
    assert max(threads for _, _, threads in seen) == share
    assert {threads for _, rows, threads in seen if rows > 2} <= {1, share}
    assert torch.get_num_threads() == threads_here


def test_share_encoders_sends_the_encoder_to_each_loky_worker_once(data, tmp_path):
    """joblib's loky backend (``n_jobs``) pickles every task too: one load per worker process."""
    X, y = data
    log = tmp_path / "log"
    torch.manual_seed(0)
    encoder = UnpicklingLoggingEncoder(str(log))
    cache = FeatureCache(tmp_path / "features", share_encoders=True)
    estimator = FoundationClassifier(encoder, cache=cache, max_epochs=2, random_state=0)
    local = cross_val_score(estimator, X, y, cv=4)
    np.testing.assert_array_equal(cross_val_score(estimator, X, y, cv=4, n_jobs=2), local)
    loads = Counter(int(pid) for pid in Path(f"{log}.loads").read_text().split())
    assert os.getpid() not in loads and set(loads.values()) == {1}, loads


@pytest.mark.slow
@pytest.mark.skipif(
    "'slow' not in config.getoption('markexpr')", reason="starting Ray takes 15 s: -m slow"
)
def test_a_grid_search_on_ray_matches_the_local_one(data, tmp_path):
    """Ray's joblib backend (``ray.util.joblib``): same cv_results_, one thread per worker."""
    ray = pytest.importorskip("ray")
    from ray.util.joblib import register_ray

    X, y = data
    grid = {"head": ["linear", "mlp"], "lr": [1e-3, 1e-2]}
    log = tmp_path / "log"
    settings = dict(solver="adamw", max_epochs=2, random_state=0)
    local = GridSearchCV(
        FoundationClassifier(logging_encoder(log), cache=False, **settings), grid, cv=3
    ).fit(X, y)
    log.unlink()
    estimator = FoundationClassifier(
        logging_encoder(log), cache=FeatureCache(tmp_path / "features"), **settings
    )
    here = str(Path(__file__).parent)  # Ray's workers import this module's encoder class
    path = os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": path}},
    )
    try:
        register_ray()
        with joblib.parallel_backend("ray"):
            remote = GridSearchCV(estimator, grid, cv=3).fit(X, y)
    finally:
        ray.shutdown()
    same_results(local.cv_results_, remote.cv_results_)
    seen = records(log)
    assert os.getpid() not in {pid for pid, _, _ in seen}
    assert {threads for _, _, threads in seen} == {1}  # Ray sets OMP_NUM_THREADS=1
    assert sum(rows for _, rows, _ in seen) <= 1.05 * len(np.unique(X, axis=0))


def test_an_encoder_class_from_the_users_script_has_one_key_in_every_process():
    """A spawned worker imports the script as ``__mp_main__``; its parent knows ``__main__``."""
    from sklearn_finetune._fingerprint import encoder_fingerprint

    def key_of(module_name: str) -> str:
        cls = type("Backbone", (nn.Linear,), {"__module__": module_name})
        torch.manual_seed(0)
        encoder = cls(4, 2)
        return encoder_fingerprint(
            encoder, output_key=None, pooling="mean", device=torch.device("cpu")
        )

    assert key_of("__mp_main__") == key_of("__main__") != key_of("my_package.models")


def test_an_encoder_class_defined_in_the_users_script_runs_in_loky_workers(tmp_path):
    """The class lives in ``__main__``, which workers cannot import: the state goes by value."""
    script = tmp_path / "search.py"
    script.write_text(
        textwrap.dedent(
            """
            import numpy as np, torch
            from sklearn.datasets import load_digits
            from sklearn.model_selection import cross_val_score
            from torch import nn
            from sklearn_finetune import FoundationClassifier

            class MyEncoder(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.layer = nn.Linear(64, 16)

                def forward(self, x):
                    return torch.relu(self.layer(x))

            if __name__ == "__main__":
                X, y = load_digits(return_X_y=True)
                X, y = (X[:300] / 16).astype(np.float32), y[:300]
                torch.manual_seed(0)
                probe = FoundationClassifier(MyEncoder(), random_state=0)
                local = cross_val_score(probe, X, y, cv=3)
                workers = cross_val_score(probe, X, y, cv=3, n_jobs=2)
                assert np.array_equal(local, workers), (local, workers)
                print("same scores", workers.round(3))
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "same scores" in done.stdout
