"""X larger than memory: memory maps, datasets.Dataset and torch Dataset, read in batches."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CountingEncoder
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from torch import nn
from torch.utils.data import Dataset, IterableDataset, Subset

from sklearn_finetune import FeatureCache, FoundationClassifier, _streamed

REGIMES = {"frozen": {}, "fine_tune": {"freeze_backbone": False, "max_epochs": 2}}


def encoder() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 16), nn.ReLU())


def classifier(**settings) -> FoundationClassifier:
    return FoundationClassifier(encoder(), batch_size=32, random_state=0, **settings)


def fitted(X, y, **settings) -> FoundationClassifier:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return classifier(**settings).fit(X, y)


@pytest.fixture
def on_disk(digits, tmp_path):
    """The digits as a float64 .npy file, opened read-only as a memory map."""
    X, _ = digits
    path = tmp_path / "X.npy"
    np.save(path, X.astype(np.float64))
    return path, np.load(path, mmap_mode="r")


class Rows(Dataset):
    """A torch Dataset of the rows of an array, one float64 tensor per item."""

    def __init__(self, X: np.ndarray) -> None:
        self.X = X

    def __len__(self) -> int:
        return len(self.X)

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.X[index], dtype=np.float64))


@pytest.mark.parametrize("regime", REGIMES)
def test_memmap_predicts_as_the_array_in_memory_and_is_left_alone(digits, on_disk, regime):
    X, y = digits
    path, X_map = on_disk
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    expected = fitted(X.astype(np.float32), y, **REGIMES[regime])
    clf = fitted(X_map, y, **REGIMES[regime])
    np.testing.assert_array_equal(clf.predict_proba(X_map), expected.predict_proba(X))
    assert clf.n_features_in_ == 64
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    with pytest.raises(ValueError, match="64 features"):
        clf.predict(X[:, :10])


@pytest.mark.parametrize("regime", REGIMES)
def test_datasets_and_torch_datasets_predict_as_arrays_in_memory(digits, regime):
    datasets = pytest.importorskip("datasets")
    X, y = digits
    expected = fitted(X.astype(np.float32), y, **REGIMES[regime]).predict_proba(X)
    table = datasets.Dataset.from_dict({"pixels": X})
    for given in (table, Rows(X)):
        clf = fitted(given, y, **REGIMES[regime])
        np.testing.assert_array_equal(clf.predict_proba(given), expected)
        np.testing.assert_array_equal(clf.predict_proba(X), expected)


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = nn.Linear(64, 8), nn.Linear(3, 8)

    def forward(self, pixels: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        return self.first(pixels) + self.second(extra)


def test_a_dataset_of_several_columns_is_a_dict_x(digits):
    datasets = pytest.importorskip("datasets")
    X, y = digits
    extra = np.random.default_rng(0).standard_normal((len(X), 3)).astype(np.float32)
    in_memory = {"pixels": X.astype(np.float32), "extra": extra}
    predictions = []
    for given in (in_memory, datasets.Dataset.from_dict({"pixels": X, "extra": extra})):
        torch.manual_seed(0)
        clf = FoundationClassifier(TwoInputs(), freeze_backbone=False, max_epochs=2, random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            predictions.append(clf.fit(given, y).predict_proba(in_memory))
        assert clf.input_shape_ == {"pixels": (64,), "extra": (3,)}
    np.testing.assert_allclose(predictions[1], predictions[0], atol=1e-6)


@pytest.mark.parametrize("regime", REGIMES)
def test_a_memmap_is_never_copied_whole(regime, tmp_path, monkeypatch):
    """numpy reports its allocations to tracemalloc: a copy of X would show in the peak."""
    monkeypatch.setattr(_streamed, "BLOCK_BYTES", 2**18)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((10_000, 256))  # float64: 20 MB, 10 MB once cast to float32
    y = (X[:, 0] > 0).astype(int)
    np.save(tmp_path / "X.npy", X)
    X_map = np.load(tmp_path / "X.npy", mmap_mode="r")
    peaks = {}
    # The first fit imports modules lazily, which tracemalloc would count: a warm-up comes first.
    for name, given in (("warm-up", X_map[:2000]), ("memmap", X_map), ("array", X)):
        torch.manual_seed(0)
        clf = FoundationClassifier(
            nn.Linear(256, 16), batch_size=1000, cache=False, **REGIMES[regime]
        )
        tracemalloc.start()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(given, y[: len(given)])
        peaks[name] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peaks["array"] > X.nbytes / 2  # the in-memory path casts a copy: the check can fail
    assert peaks["memmap"] < X.nbytes / 4, peaks  # blocks of X, features (10,000 x 16)


def test_blocks_are_hashed_as_rows_in_memory_and_cached_on_disk(
    digits, on_disk, tmp_path, monkeypatch
):
    monkeypatch.setattr(_streamed, "BLOCK_BYTES", 64 * 64 * 4)  # 64 rows of float32
    X, y = digits
    _, X_map = on_disk
    counting = CountingEncoder(encoder())
    FoundationClassifier(counting, cache=FeatureCache(tmp_path / "features")).fit(X_map, y)
    assert counting.samples_seen == len(X)
    assert max(counting.batch_sizes) <= 64
    assert len(list((tmp_path / "features").glob("*/*.features"))) == 7  # ceil(400 / 64)
    fresh = FeatureCache(tmp_path / "features")  # as another process: only the files
    FoundationClassifier(counting, cache=fresh).fit(X.astype(np.float32), y)
    assert counting.samples_seen == len(X)  # the array in memory has the same digests
    assert fresh.hits == len(X)


def test_cross_validation_of_memmaps_and_datasets(digits, on_disk):
    datasets = pytest.importorskip("datasets")
    X, y = digits
    _, X_map = on_disk
    expected = cross_val_score(classifier(), X.astype(np.float32), y, cv=3)
    np.testing.assert_array_equal(cross_val_score(classifier(), X_map, y, cv=3), expected)
    table = datasets.Dataset.from_dict({"pixels": X})
    rows = np.arange(len(X))
    for select in (lambda index: table.select(index), lambda index: Subset(Rows(X), index)):
        model = make_pipeline(FunctionTransformer(select), classifier())
        np.testing.assert_array_equal(cross_val_score(model, rows, y, cv=3), expected)


class NoLength(IterableDataset):
    def __iter__(self):
        yield from torch.zeros(4, 64)


class Items(Dataset):
    """A torch Dataset whose item 7 (of 10) is ``odd``, the others 64 zeros."""

    def __init__(self, odd) -> None:
        self.odd = odd

    def __len__(self) -> int:
        return 10

    def __getitem__(self, index: int):
        return self.odd if index == 7 else torch.zeros(64)


def bad_tables():
    datasets = pytest.importorskip("datasets")
    ragged = [[0.0] * (64 if i != 7 else 63) for i in range(10)]
    return [
        (datasets.Dataset.from_dict({"x": ragged}), ValueError, "different shapes"),
        (datasets.Dataset.from_dict({"x": ["a"] * 10}), TypeError, "dtype <U1"),
        (
            datasets.Dataset.from_dict({"x": [[0.0] * 64] * 10}).to_iterable_dataset(),
            TypeError,
            r"^X is an IterableDataset \(it has no __len__\): pass a map-style Dataset",
        ),
    ]


@pytest.mark.parametrize(
    ("X", "error", "message"),
    [
        (NoLength(), TypeError, r"^X is a NoLength \(it has no __len__\): pass a map-style"),
        (Items(torch.zeros(63)), ValueError, r"\(63,\) at item 7"),
        (Items((torch.zeros(64), 1)), TypeError, "pass a dataset of the inputs only"),
        (Items({"x": torch.zeros(64)}), ValueError, "Item 7 .* is a dict"),
        (Items(torch.full((64,), float("nan"))), ValueError, "NaN or infinity, first in row 7"),
        ("tables", None, None),
    ],
)
def test_bad_input_is_refused_before_the_encoder_runs(X, error, message):
    cases = bad_tables() if X == "tables" else [(X, error, message)]
    for given, expected_error, expected_message in cases:
        counting = CountingEncoder(encoder())
        with pytest.raises(expected_error, match=expected_message):
            FoundationClassifier(counting, freeze_backbone=False).fit(given, np.arange(10) % 2)
        assert counting.batch_sizes == []


def test_nan_in_a_memmap_names_its_row(tmp_path):
    X = np.zeros((20, 4), dtype=np.float32)
    X[13, 2] = np.nan
    np.save(tmp_path / "X.npy", X)
    X_map = np.load(tmp_path / "X.npy", mmap_mode="r")
    with pytest.raises(ValueError, match="first in row 13"):
        FoundationClassifier().fit(X_map, np.arange(20) % 2)


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        (
            ["x", "label"],
            r"a column of single numbers \(shape \(\)\): 'label'\..*"
            r"X\.remove_columns\(\['label'\]\) .*X\.select_columns\(\['x'\]\)",
        ),
        (
            ["label", "x", "id"],
            r"columns of single numbers \(shape \(\)\): 'label', 'id'\..*"
            r"X\.remove_columns\(\['label', 'id'\]\) .*X\.select_columns\(\['x'\]\)",
        ),
        (["label"], r"'label'\..* Put the features in one column of arrays"),
    ],
)
def test_a_datasets_column_of_single_numbers_is_named_before_training(columns, message):
    """A label column left in a datasets.Dataset X is named, with the call that drops it."""
    datasets = pytest.importorskip("datasets")
    y = np.arange(10) % 2
    values = {"x": np.zeros((10, 64)).tolist(), "label": y.tolist(), "id": list(range(10))}
    table = datasets.Dataset.from_dict({column: values[column] for column in columns})
    counting = CountingEncoder(encoder())
    with pytest.raises(ValueError, match=message):
        FoundationClassifier(counting, freeze_backbone=False).fit(table, y)
    assert counting.batch_sizes == []


@pytest.mark.parametrize(
    ("name", "article"),
    [("IterableDataset", "an"), ("NoLength", "a"), ("UserStream", "a"), ("Other", "an")],
)
def test_the_article_before_a_class_name(name, article):
    assert _streamed._article(name) == article


def test_a_float64_memmap_too_large_for_float32_is_refused_in_plain_words(tmp_path):
    X = np.ones((10, 4))
    X[3, 1] = 1e300
    np.save(tmp_path / "X.npy", X)
    X_map = np.load(tmp_path / "X.npy", mmap_mode="r")
    with pytest.raises(ValueError, match="too large for float32") as caught:
        FoundationClassifier().fit(X_map, np.arange(10) % 2)
    message = str(caught.value)
    assert "Rescale it first, e.g. with StandardScaler." in message
    assert ") (" not in message  # not "Rescale X (a memory-mapped array) (e.g. ...)"


def test_the_memory_benchmark_creates_a_missing_dir(tmp_path, monkeypatch):
    """``benchmarks/memory.py --dir`` makes a directory that does not exist yet."""
    path = Path(__file__).parents[1] / "benchmarks" / "memory.py"
    spec = importlib.util.spec_from_file_location("memory_benchmark", path)
    memory = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(memory)
    written = []

    def run_case(case, storage, x_path, y_path, batch_size):
        written.append(x_path)
        assert x_path.exists()
        return {"peak": 1.0, "baseline": 1.0, "seconds": 0.0, "accuracy": 1.0}

    monkeypatch.setattr(memory, "run_case", run_case)
    missing = tmp_path / "not" / "there"
    argv = ["memory.py", "--rows", "20", "--features", "4", "--no-in-memory", "--dir"]
    monkeypatch.setattr(sys, "argv", [*argv, str(missing)])
    memory.main()
    assert written and all(x_path.parents[1] == missing for x_path in written)
    assert missing.is_dir() and list(missing.iterdir()) == []  # the temporary directory is gone
    (tmp_path / "file").write_text("")
    monkeypatch.setattr(sys, "argv", [*argv, str(tmp_path / "file" / "sub")])
    with pytest.raises(SystemExit):
        memory.main()
