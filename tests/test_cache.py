"""The embed-once path of a frozen backbone and the feature cache behind it, in encoder samples."""

from __future__ import annotations

import hashlib
import pickle
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CountingEncoder
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, cross_val_score
from torch import nn

from sklearn_finetune import FeatureCache, FoundationClassifier, FoundationRegressor
from sklearn_finetune._fingerprint import encoder_fingerprint, row_digests


def counting_encoder(seed: int = 0) -> CountingEncoder:
    torch.manual_seed(seed)
    return CountingEncoder(nn.Sequential(nn.Linear(64, 16), nn.ReLU()))


def test_a_frozen_fit_encodes_each_sample_once_not_once_per_epoch(digits):
    X, y = digits
    encoder = counting_encoder()
    clf = FoundationClassifier(encoder, max_epochs=5, cache=False, random_state=0).fit(X, y)
    assert encoder.samples_seen == len(X)  # training and validation rows, once
    assert encoder.modes_seen == {False}
    clf.predict_proba(X[:50])
    assert encoder.samples_seen == len(X) + 50  # predict encodes once too


def test_cross_val_score_encodes_each_unique_sample_once(digits):
    X, y = digits
    encoder = counting_encoder()
    cache = FeatureCache()
    scores = cross_val_score(
        FoundationClassifier(encoder, max_epochs=2, cache=cache, random_state=0), X, y, cv=5
    )
    assert len(scores) == 5
    assert encoder.samples_seen == len(X)
    assert cache.misses == len(X) and cache.hits > 0


def test_grid_search_encodes_each_unique_sample_once(digits):
    X, y = digits
    encoder = counting_encoder()
    search = GridSearchCV(
        FoundationClassifier(encoder, max_epochs=2, cache=FeatureCache(), random_state=0),
        {"head": ["linear", "mlp"], "lr": [1e-3, 3e-3, 1e-2]},
        cv=5,
    ).fit(X, y)
    assert len(search.cv_results_["params"]) == 6  # 30 fits, 30 scorings and a refit
    assert encoder.samples_seen == len(X)


def test_the_default_cache_is_shared_by_separate_estimators(digits):
    X, y = digits
    encoder = counting_encoder(seed=11)  # weights no other test uses
    FoundationClassifier(encoder, max_epochs=1).fit(X, y)
    FoundationClassifier(encoder, head="mlp", max_epochs=1).fit(X, y)
    assert encoder.samples_seen == len(X)


def test_a_changed_weight_or_sample_is_a_miss(digits):
    X, y = digits
    encoder = counting_encoder()
    clf = FoundationClassifier(encoder, max_epochs=1, cache=FeatureCache(), random_state=0)
    clf.fit(X, y)
    assert encoder.samples_seen == len(X)
    changed = X.copy()
    changed[7, 3] += 0.5
    clf.fit(changed, y)
    assert encoder.samples_seen == len(X) + 1
    with torch.no_grad():
        encoder.inner[0].bias[0] += 1e-3
    clf.fit(X, y)
    assert encoder.samples_seen == 2 * len(X) + 1


def test_output_selection_pooling_and_plain_attributes_are_part_of_the_key():
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(4, 3)
            self.scale = 1.0

        def forward(self, x):
            return self.linear(x) * self.scale

    encoder = Scaled()
    cpu = torch.device("cpu")
    base = encoder_fingerprint(encoder, output_key=None, pooling="mean", device=cpu)
    assert base != encoder_fingerprint(encoder, output_key=None, pooling="max", device=cpu)
    assert base != encoder_fingerprint(encoder, output_key="features", pooling="mean", device=cpu)
    encoder.scale = 2.0
    assert base != encoder_fingerprint(encoder, output_key=None, pooling="mean", device=cpu)
    encoder.scale = 1.0
    assert base == encoder_fingerprint(encoder, output_key=None, pooling="mean", device=cpu)


def test_features_match_running_the_encoder_in_every_batch(digits):
    """Embed-once is an optimisation: a frozen fit equals the same training end to end.

    Fine-tuning with a zero backbone rate runs the encoder in every batch and
    leaves it unchanged; on an encoder without dropout or batch norm it is
    the slow path of a linear probe, step for step.
    """
    X, y = digits
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(64, 16), nn.Tanh())
    common = dict(max_epochs=3, batch_size=16, random_state=0, head="mlp")
    fast = FoundationClassifier(encoder, freeze_backbone=True, cache=False, **common).fit(X, y)
    slow = FoundationClassifier(encoder, freeze_backbone=False, backbone_lr_mult=0.0, **common).fit(
        X, y
    )
    for column in ("train_loss", "valid_loss", "valid_accuracy"):
        np.testing.assert_allclose(fast.history_[:, column], slow.history_[:, column], rtol=1e-5)
    np.testing.assert_allclose(fast.predict_proba(X), slow.predict_proba(X), atol=1e-6)


def test_regressor_uses_the_same_path(digits):
    X, y = digits
    encoder = counting_encoder()
    reg = FoundationRegressor(
        encoder, max_epochs=3, val_split=0.2, cache=FeatureCache(), random_state=0
    )
    cross_val_score(reg, X, y.astype(float), cv=3)
    assert encoder.samples_seen == len(X)
    assert "valid_r2" in reg.fit(X, y.astype(float)).history_[-1]


def test_memory_bound_evicts_least_recently_used_blocks(digits):
    X, y = digits
    encoder = counting_encoder()
    cache = FeatureCache(max_bytes=150 * 16 * 4)  # room for 150 samples of width 16
    clf = FoundationClassifier(encoder, max_epochs=1, val_split=0, cache=cache, random_state=0)
    clf.fit(X[:100], y[:100])
    clf.fit(X[:100], y[:100])
    assert encoder.samples_seen == 100
    clf.fit(X[100:200], y[100:200])  # the first block is evicted to make room
    assert cache.nbytes <= cache.max_bytes
    clf.fit(X[:100], y[:100])
    assert encoder.samples_seen == 300


def test_a_cache_pickles_as_its_settings_and_clones_share_it(tmp_path):
    cache = FeatureCache(directory=tmp_path, max_bytes=1234)
    cache.fetch("key", [b"a" * 16], lambda positions: np.ones((len(positions), 2)))
    restored = pickle.loads(pickle.dumps(cache))
    assert (restored.directory, restored.max_bytes, restored.nbytes) == (tmp_path, 1234, 0)
    clf = FoundationClassifier(nn.Linear(64, 4), cache=cache)
    assert clone(clf).cache is cache
    assert FeatureCache.at(tmp_path) is FeatureCache.at(str(tmp_path))


def test_a_relative_directory_is_made_absolute_where_the_cache_is_built(tmp_path, monkeypatch):
    """A worker whose working directory differs (a cluster node) reaches the same folder."""
    monkeypatch.chdir(tmp_path)
    cache = FeatureCache("features")
    assert cache.directory == tmp_path / "features"
    monkeypatch.chdir(tmp_path.parent)  # as a worker started elsewhere
    restored = pickle.loads(pickle.dumps(cache))
    restored.fetch("key", [b"a" * 16], lambda positions: np.ones((len(positions), 2)))
    assert len(list((tmp_path / "features" / "key").glob("*.features"))) == 1


def test_a_directory_cache_is_read_by_a_later_process(digits, tmp_path):
    X, y = digits
    encoder = counting_encoder()
    clf = FoundationClassifier(encoder, max_epochs=1, cache=FeatureCache(tmp_path), random_state=0)
    first = clf.fit(X, y).predict_proba(X)
    assert len(list(tmp_path.glob("*/*.features"))) == 1
    clf.set_params(cache=FeatureCache(tmp_path))  # an empty memory layer, as in a new process
    np.testing.assert_array_equal(clf.fit(X, y).predict_proba(X), first)
    assert encoder.samples_seen == len(X)


def test_parallel_search_workers_share_a_directory_cache(digits, tmp_path):
    X, y = digits
    encoder = counting_encoder()
    GridSearchCV(
        FoundationClassifier(encoder, max_epochs=1, cache=str(tmp_path), random_state=0),
        {"head": ["linear", "mlp"]},
        cv=2,
        n_jobs=2,
    ).fit(X, y)
    # The workers encoded in their own processes (each fold covers every row,
    # in training or in scoring); the refit, here, read all of it from disk.
    assert list(tmp_path.glob("*/*.features"))
    assert encoder.samples_seen == 0


def test_a_damaged_file_is_detected_deleted_and_recomputed(digits, tmp_path):
    X, y = digits
    encoder = counting_encoder()
    clf = FoundationClassifier(encoder, max_epochs=1, cache=FeatureCache(tmp_path), random_state=0)
    expected = clf.fit(X, y).predict_proba(X)
    (entry,) = tmp_path.glob("*/*.features")
    original = entry.read_bytes()
    damaged = bytearray(original)
    damaged[-100] ^= 0xFF  # one flipped bit pattern inside the features
    entry.write_bytes(bytes(damaged))
    clf.set_params(cache=FeatureCache(tmp_path))
    with pytest.warns(RuntimeWarning, match="damaged feature cache file"):
        clf.fit(X, y)
    assert encoder.samples_seen == 2 * len(X)
    np.testing.assert_array_equal(clf.predict_proba(X), expected)
    (rewritten,) = tmp_path.glob("*/*.features")
    assert rewritten.read_bytes() == original


WRITER = textwrap.dedent(
    """
    import sys
    import time
    import warnings

    import numpy as np
    import torch
    from torch import nn
    from sklearn_finetune import FeatureCache
    from sklearn_finetune._frozen import embed
    from sklearn_finetune._representation import Representation

    warnings.simplefilter("error")  # a damaged file seen by a writer fails it
    directory, writer, start = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    X = np.random.default_rng(0).normal(size=(4000, 64)).astype("float32")
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 32))
    rng = np.random.default_rng(writer)
    while time.time() < start:
        time.sleep(0.01)
    blocks = 0
    while time.time() < start + 2 or blocks < 20:
        rows = np.sort(rng.choice(len(X), size=200, replace=False))
        cache = FeatureCache(directory)  # a fresh memory layer: read all that is on disk
        embed(encoder, Representation(), X[rows], device=torch.device("cpu"),
              batch_size=64, cache=cache)
        blocks += 1
    print(blocks)
    """
)


def test_two_processes_writing_one_directory_leave_it_valid(tmp_path):
    cache_dir = tmp_path / "cache"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    start = str(time.time() + 5)  # both start together, after importing torch
    writers = [
        subprocess.Popen(
            [sys.executable, str(script), str(cache_dir), str(i), start],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    results = [writer.communicate(timeout=120) for writer in writers]
    assert [writer.returncode for writer in writers] == [0, 0], results
    files = list(cache_dir.glob("*/*.features"))
    assert len(files) > 20 and not list(cache_dir.glob("*/*.tmp"))  # no temporary file left
    for file in files:
        assert hashlib.sha256(file.read_bytes()).hexdigest() == file.stem

    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 32))
    X = np.random.default_rng(0).normal(size=(4000, 64)).astype("float32")
    (key,) = {file.parent.name for file in files}
    assert key == encoder_fingerprint(
        encoder, output_key=None, pooling="mean", device=torch.device("cpu")
    )
    reader = FeatureCache(cache_dir)
    with torch.no_grad():
        expected = encoder(torch.as_tensor(X)).numpy()
        features = reader.fetch(key, row_digests(X), lambda rows: expected[rows])
    assert reader.hits > 1000  # what the writers left is read back...
    np.testing.assert_allclose(features, expected, atol=1e-5)  # ...and is what the encoder gives


def test_inference_batch_size_sets_the_encoding_batches(digits):
    X, y = digits
    encoder = counting_encoder()
    FoundationClassifier(encoder, max_epochs=1, cache=False, inference_batch_size=150).fit(X, y)
    assert encoder.batch_sizes == [150, 150, 100]
    encoder.batch_sizes.clear()
    FoundationClassifier(encoder, max_epochs=1, cache=False, batch_size=100).fit(X, y)
    assert encoder.batch_sizes == [100] * 4
    tuned = FoundationClassifier(
        encoder, freeze_backbone=False, max_epochs=1, val_split=0, inference_batch_size=300
    ).fit(X, y)
    tuned.encoder_.batch_sizes.clear()
    tuned.predict_proba(X)
    assert tuned.encoder_.batch_sizes == [300, 100]


def test_cache_false_keeps_nothing_between_fits(digits):
    X, y = digits
    encoder = counting_encoder()
    clf = FoundationClassifier(encoder, max_epochs=1, cache=False, random_state=0)
    clf.fit(X, y)
    clf.fit(X, y)
    assert encoder.samples_seen == 2 * len(X)


@pytest.mark.parametrize("cache", ["", 3, None, "a-file"])
def test_a_bad_cache_parameter_is_refused_before_encoding(digits, cache, tmp_path):
    X, y = digits
    if cache == "a-file":
        cache = tmp_path / "a-file"
        cache.write_text("not a directory")
    encoder = counting_encoder()
    clf = FoundationClassifier(encoder, cache=cache)
    with pytest.raises((ValueError, TypeError), match="cache"):
        clf.fit(X, y)
    assert encoder.samples_seen == 0


@pytest.mark.parametrize("max_bytes", [-1, 1.5, "1GB", True])
def test_a_bad_memory_bound_is_refused(max_bytes):
    with pytest.raises(ValueError, match="max_bytes must be a non-negative int"):
        FeatureCache(max_bytes=max_bytes)


def test_files_unrelated_to_the_cache_are_left_alone(tmp_path: Path):
    other = tmp_path / "notes.txt"
    other.write_text("mine")
    cache = FeatureCache(tmp_path)
    cache.fetch("key", [b"b" * 16], lambda positions: np.zeros((len(positions), 2)))
    cache.clear()
    assert other.read_text() == "mine" and not list(tmp_path.glob("*/*.features"))


def test_a_directory_that_is_not_a_path_is_a_type_error():
    with pytest.raises(TypeError, match="directory must be a str or path-like; got int 123"):
        FeatureCache(123)
