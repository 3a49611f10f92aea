"""Fuzzed inputs: every fit either works and predicts sensibly, or refuses with a clear error.

The property, over X of many shapes, dtypes and non-finite values, labels and
targets of many types, sample weights good and bad, and the main parameters:
``fit`` then ``predict`` / ``predict_proba`` give finite outputs of the right
shape (labels from ``classes_``, probabilities summing to 1), or ``fit``
raises ``ValueError`` or ``TypeError`` with a message. Never another
exception type, never a hang.

The default run is small; ``pytest -m slow tests/test_fuzz.py`` runs a larger
budget.
"""

from __future__ import annotations

import signal
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from sklearn_finetune import FoundationClassifier, FoundationRegressor

#: Seconds one example may take before it counts as a hang.
HANG_SECONDS = 60

ROW_COUNTS = [0, 1, 2, 3, 4, 6, 10]
X_DTYPES = [
    "float64",
    "float32",
    "float16",
    "int64",
    "int8",
    "bool",
    "object",
    "numeric strings",
    "letter strings",
    "complex",
]
SPECIAL_VALUES = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf, "huge": 1e300}
LABEL_KINDS = [
    "int",
    "str",
    "float",
    "bool",
    "mixed",
    "one class",
    "many classes",
    "multilabel",
    "column",
    "nan",
    "continuous",
    "none",
]
TARGET_KINDS = [
    "float",
    "int",
    "bool",
    "constant",
    "column",
    "two targets",
    "3-D",
    "object",
    "numeric strings",
    "letter strings",
    "nan",
    "inf",
    "huge",
]
WEIGHT_KINDS = [
    "none",
    "ones",
    "positive",
    "zeros",
    "one zero",
    "negative",
    "nan",
    "inf",
    "short",
    "long",
    "2-D",
    "scalar",
    "strings",
]


@dataclass
class Case:
    """One fuzzed fit: which estimator, with what, on what."""

    kind: str
    X: Any
    y: Any
    sample_weight: Any
    params: dict[str, Any] = field(default_factory=dict)
    encoder_width: int | None = None

    def estimator(self) -> FoundationClassifier | FoundationRegressor:
        """A fresh estimator; the encoder, when asked for, maps the last axis of X."""
        encoder = None
        if self.encoder_width is not None:
            torch.manual_seed(0)
            encoder = nn.Linear(self.encoder_width, 3)
        cls = FoundationClassifier if self.kind == "classifier" else FoundationRegressor
        return cls(encoder, device="cpu", random_state=0, **self.params)


def _with_special_values(
    data: st.DataObject, X: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """X with NaN, infinity or a value float32 cannot hold, somewhere, or unchanged."""
    special = data.draw(st.sampled_from([None, *SPECIAL_VALUES]), label="special value")
    if special is None or X.size == 0:
        return X
    where = data.draw(st.sampled_from(["first", "last", "random", "column", "all"]), label="where")
    value = SPECIAL_VALUES[special]
    flat = X.reshape(len(X), -1)
    if where == "first":
        flat[0, 0] = value
    elif where == "last":
        flat[-1, -1] = value
    elif where == "random":
        flat.flat[rng.integers(flat.size)] = value
    elif where == "column":
        flat[:, rng.integers(flat.shape[1])] = value
    else:
        flat[...] = value
    return flat.reshape(X.shape)


def _cast(X: np.ndarray, dtype: str) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # huge and non-finite values in casts
        if dtype in ("int64", "int8"):
            return np.nan_to_num(np.round(X * 3), posinf=100, neginf=-100).astype(dtype)
        if dtype == "bool":
            return X > 0
        if dtype == "object":
            return X.astype(object)
        if dtype == "numeric strings":
            return X.astype(str)
        if dtype == "letter strings":
            return np.where(X > 0, "a", "b")
        if dtype == "complex":
            return X + 1j
        return X.astype(dtype)


@st.composite
def inputs(draw: st.DrawFn, data: st.DataObject) -> tuple[np.ndarray, int | None]:
    """X, and the width an ``nn.Linear`` encoder must take (its last axis)."""
    n = draw(st.sampled_from(ROW_COUNTS), label="rows")
    ndim = draw(st.sampled_from([2, 2, 2, 1, 3]), label="ndim")
    n_features = draw(st.sampled_from([3, 1, 5, 0]), label="features")
    shape = {1: (n,), 2: (n, n_features), 3: (n, 2, n_features)}[ndim]
    seed = draw(st.integers(0, 2**16), label="seed")
    rng = np.random.default_rng(seed)
    X = rng.standard_normal(shape)
    X = _with_special_values(data, X, rng)
    X = _cast(X, draw(st.sampled_from(X_DTYPES), label="X dtype"))
    width = 1 if ndim == 1 else n_features
    return X, width


def _labels(kind: str, n: int, rng: np.random.Generator) -> Any:
    codes = rng.integers(0, 3, size=n)
    if n >= 2:
        codes[:2] = [0, 1]  # at least two classes where there is room
    if kind == "int":
        return codes
    if kind == "str":
        return np.array(["cat", "dog", "eel"])[codes]
    if kind == "float":
        return codes * 0.5
    if kind == "bool":
        return codes == 0
    if kind == "mixed":
        return np.array([1, "a", 2.5], dtype=object)[codes]
    if kind == "one class":
        return np.full(n, 7)
    if kind == "many classes":
        return np.arange(n) * 10
    if kind == "multilabel":
        indicator = rng.integers(0, 2, size=(n, 3))
        indicator[:, 2] = 0  # a label nobody has
        return indicator
    if kind == "column":
        return codes.reshape(-1, 1)
    if kind == "nan":
        labels = codes.astype(float)
        labels[-1:] = np.nan
        return labels
    if kind == "continuous":
        return rng.standard_normal(n)
    return np.array([None] * n, dtype=object)


def _targets(kind: str, n: int, rng: np.random.Generator) -> Any:
    values = rng.standard_normal(n)
    if kind == "float":
        return values
    if kind == "int":
        return np.round(values * 10).astype(int)
    if kind == "bool":
        return values > 0
    if kind == "constant":
        return np.full(n, 3.0)
    if kind == "column":
        return values.reshape(-1, 1)
    if kind == "two targets":
        return np.column_stack([values, -2 * values])
    if kind == "3-D":
        return values.reshape(-1, 1, 1)
    if kind == "object":
        return values.astype(object)
    if kind == "numeric strings":
        return values.astype(str)
    if kind == "letter strings":
        return np.where(values > 0, "up", "down")
    special = {"nan": np.nan, "inf": np.inf, "huge": 1e300}[kind]
    values[-1:] = special
    return values


def _sample_weight(kind: str, n: int, rng: np.random.Generator) -> Any:
    if kind == "none":
        return None
    if kind == "scalar":
        return 2.0
    size = {"short": max(n - 1, 0), "long": n + 1}.get(kind, n)
    weights = rng.uniform(0.5, 2.0, size=size)
    if kind == "ones":
        return np.ones(size)
    if kind == "zeros":
        return np.zeros(size)
    if kind == "one zero":
        weights[:1] = 0
    elif kind == "negative":
        weights[-1:] = -1.0
    elif kind == "nan":
        weights[-1:] = np.nan
    elif kind == "inf":
        weights[-1:] = np.inf
    elif kind == "2-D":
        return weights.reshape(-1, 1)
    elif kind == "strings":
        return weights.astype(str)
    return weights


@st.composite
def cases(draw: st.DrawFn, kind: str) -> Case:
    """A fit of ``kind`` ("classifier" or "regressor") with fuzzed data and parameters."""
    data = draw(st.data())
    X, width = draw(inputs(data))
    n = len(X)
    rng = np.random.default_rng(draw(st.integers(0, 2**16), label="target seed"))
    if kind == "classifier":
        y = _labels(draw(st.sampled_from(LABEL_KINDS), label="labels"), n, rng)
    else:
        y = _targets(draw(st.sampled_from(TARGET_KINDS), label="targets"), n, rng)
    length = draw(st.sampled_from(["same", "same", "same", "shorter", "longer"]), label="y length")
    if length == "shorter":
        y = y[:-1]
    elif length == "longer":
        y = np.concatenate([y, y[:1]])
    weights = _sample_weight(draw(st.sampled_from(WEIGHT_KINDS), label="weights"), n, rng)
    val_split = draw(
        st.sampled_from(["auto", 0, None, 0.2, 0.5, 0.99, "explicit"]), label="val_split"
    )
    if val_split == "explicit":
        val_split = (X[:2], y[:2])
    params = {
        "freeze_backbone": draw(st.sampled_from(["auto", True, False]), label="freeze"),
        "head": draw(st.sampled_from(["linear", "mlp"]), label="head"),
        "solver": draw(st.sampled_from(["auto", "adamw", "lbfgs"]), label="solver"),
        "val_split": val_split,
        "batch_size": draw(st.sampled_from([32, 1, 2, 3]), label="batch_size"),
        "max_epochs": draw(st.sampled_from([1, 2, 3]), label="max_epochs"),
        "hidden_dims": (4,),
        "cache": draw(st.booleans(), label="cache"),
    }
    if kind == "classifier":
        params["class_weight"] = draw(st.sampled_from([None, "balanced"]), label="class_weight")
    encoder_width = width if draw(st.booleans(), label="encoder") else None
    return Case(kind, X, y, weights, params, encoder_width)


@contextmanager
def no_hang(seconds: int) -> Iterator[None]:
    """Fail, instead of waiting for ever, when the block runs longer than ``seconds``."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def hung(signum: int, frame: Any) -> None:
        raise TimeoutError(f"the example ran longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _check_predictions(estimator: Any, X: Any) -> None:
    n = len(X)
    if isinstance(estimator, FoundationRegressor):
        prediction = estimator.predict(X)
        expected = (n,) if estimator.n_outputs_ == 1 else (n, estimator.n_outputs_)
        assert prediction.shape == expected
        assert np.isfinite(prediction).all(), prediction
        return
    n_classes = len(estimator.classes_)
    proba = estimator.predict_proba(X)
    assert proba.shape == (n, n_classes)
    assert np.isfinite(proba).all(), proba
    assert ((proba >= 0) & (proba <= 1)).all(), proba
    labels = estimator.predict(X)
    if estimator.multilabel_:
        assert labels.shape == (n, n_classes)
        assert set(np.unique(labels)) <= {0, 1}
        return
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert labels.shape == (n,)
    assert all(label in set(estimator.classes_.tolist()) for label in labels.tolist())


def check_case(case: Case) -> None:
    """The property: fit and predict sensibly, or refuse with a ValueError or TypeError."""
    estimator = case.estimator()
    with no_hang(HANG_SECONDS), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            estimator.fit(case.X, case.y, sample_weight=case.sample_weight)
        except (ValueError, TypeError) as error:
            assert str(error).strip(), f"{type(error).__name__} without a message"
            return
        _check_predictions(estimator, case.X)


FUZZ_SETTINGS = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)


@pytest.mark.parametrize("kind", ["classifier", "regressor"])
@settings(FUZZ_SETTINGS, max_examples=60)
@given(data=st.data())
def test_fuzzed_fit_fits_or_refuses_clearly(kind: str, data: st.DataObject) -> None:
    check_case(data.draw(cases(kind)))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["classifier", "regressor"])
@settings(FUZZ_SETTINGS, max_examples=600, derandomize=False)
@given(data=st.data())
def test_fuzzed_fit_fits_or_refuses_clearly_at_length(kind: str, data: st.DataObject) -> None:
    check_case(data.draw(cases(kind)))
