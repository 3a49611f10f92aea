"""One parameter list: signatures, constraints, docstrings and the code that reads them agree."""

from __future__ import annotations

import inspect
import sys

import pytest
from numpydoc.docscrape import ClassDoc, FunctionDoc
from sklearn.base import BaseEstimator
from torch import nn

import sklearn_finetune
from sklearn_finetune import (
    FoundationClassifier,
    FoundationEmbedder,
    FoundationRegressor,
)

PUBLIC = [getattr(sklearn_finetune, name) for name in sklearn_finetune.__all__]
ESTIMATORS = [obj for obj in PUBLIC if isinstance(obj, type) and issubclass(obj, BaseEstimator)]


def documented(doc: ClassDoc | FunctionDoc) -> list[str]:
    """The names in a numpydoc Parameters section; ``X, y : ...`` documents both."""
    return [
        name.strip().lstrip("*")
        for entry in doc["Parameters"]
        for name in entry.name.split(",")
        if name.strip()
    ]


def signature_names(function) -> list[str]:
    return [
        name
        for name, parameter in inspect.signature(function).parameters.items()
        if name not in ("self", "cls")
    ]


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda cls: cls.__name__)
def test_signature_constraints_and_docstring_name_the_same_parameters(estimator):
    in_signature = signature_names(estimator)
    assert list(estimator._parameter_constraints) == in_signature
    assert documented(ClassDoc(estimator)) == in_signature
    assert estimator._get_param_names() == sorted(in_signature)


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda cls: cls.__name__)
def test_docstring_gives_a_default_exactly_where_the_signature_has_one(estimator):
    signature = inspect.signature(estimator).parameters
    for entry in ClassDoc(estimator)["Parameters"]:
        has_default = signature[entry.name].default is not inspect.Parameter.empty
        assert ("default=" in entry.type) == has_default, entry.name


def public_callables():
    """Public functions, and the methods the package defines on public classes."""
    for obj in PUBLIC:
        if not isinstance(obj, type):
            yield obj.__name__, obj
            continue
        for name, member in vars(obj).items():
            function = member.__func__ if isinstance(member, classmethod) else member
            if name.startswith("_") or not inspect.isfunction(function):
                continue
            if function.__module__.startswith("sklearn_finetune"):
                yield f"{obj.__name__}.{name}", function


@pytest.mark.parametrize("name, function", list(public_callables()), ids=lambda x: str(x))
def test_every_public_function_documents_each_of_its_parameters(name, function):
    assert documented(FunctionDoc(function)) == signature_names(function), name


@pytest.mark.parametrize(
    "cls", [obj for obj in PUBLIC if isinstance(obj, type) and obj not in ESTIMATORS]
)
def test_every_public_class_documents_its_constructor(cls):
    assert documented(ClassDoc(cls)) == signature_names(cls)


class ReadRecorder:
    """Mixin recording which parameters the package's own code reads.

    Reads made by scikit-learn (``get_params``, parameter validation, clone)
    do not count: the question is whether fit and predict use each
    parameter, which a forgotten ``lr=self.lr`` somewhere would break.
    """

    def __getattribute__(self, name):
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if caller.startswith("sklearn_finetune") and name in type(self)._parameter_constraints:
            object.__getattribute__(self, "__dict__").setdefault("reads_", set()).add(name)
        return object.__getattribute__(self, name)


class RecordingClassifier(ReadRecorder, FoundationClassifier):
    pass


class RecordingRegressor(ReadRecorder, FoundationRegressor):
    pass


class RecordingEmbedder(ReadRecorder, FoundationEmbedder):
    pass


def reads(estimator, X, y=None):
    estimator.fit(X, y) if y is not None else estimator.fit(X)
    getattr(estimator, "predict", getattr(estimator, "transform", None))(X[:5])
    return estimator.__dict__["reads_"]


def test_fit_and_predict_read_every_parameter(digits):
    """Across the regimes, every declared parameter is read by the code that trains."""
    X, y = digits
    X, y = X[:120], y[:120]
    encoder = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 8))
    fits = [
        RecordingClassifier(encoder, solver="lbfgs", val_split=0, max_epochs=2),
        RecordingClassifier(
            encoder,
            freeze_backbone=False,
            solver="sgd",
            layer_decay=0.5,
            lr_schedule="warmup_cosine",
            max_grad_norm=1.0,
            val_split=(X[:20], y[:20]),
            n_iter_no_change=2,
            max_epochs=3,
        ),
        RecordingClassifier(
            encoder,
            unfreeze_at=1,
            unfreeze_mode="top_down",
            head="mlp",
            class_weight="balanced",
            max_epochs=3,
        ),
    ]
    seen = set().union(*(reads(fit, X, y) for fit in fits))
    assert seen == set(FoundationClassifier._parameter_constraints)
    y_reg = y.astype(float)
    seen = reads(RecordingRegressor(max_epochs=1), X, y_reg)
    assert "loss" in seen
    assert reads(RecordingEmbedder(encoder), X) == set(FoundationEmbedder._parameter_constraints)
