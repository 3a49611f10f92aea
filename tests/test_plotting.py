"""HistoryDisplay draws what history_ holds."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError
from torch import nn

from sklearn_finetune import FoundationClassifier, FoundationRegressor, HistoryDisplay

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")


@pytest.fixture(scope="module")
def fitted(digits):
    X, y = digits
    clf = FoundationClassifier(nn.Linear(64, 16), solver="adamw", max_epochs=4, random_state=0)
    return clf.fit(X, y)


def test_curves_are_the_history_and_the_best_epoch_is_marked(fitted):
    display = HistoryDisplay.from_estimator(fitted)
    assert set(display.lines_) == {"train_loss", "valid_loss", "valid_accuracy"}
    for column, line in display.lines_.items():
        np.testing.assert_allclose(line.get_ydata(), fitted.history_[:, column])
        np.testing.assert_array_equal(line.get_xdata(), [1, 2, 3, 4])
    marks = [line for line in display.ax_.get_lines() if line.get_label() == "best epoch"]
    assert len(marks) == 1 and marks[0].get_xdata()[0] == fitted.best_epoch_
    assert display.score_ax_.get_ylabel() == "valid_accuracy"
    matplotlib.pyplot.close("all")


def test_score_follows_scoring_or_the_argument(fitted, digits):
    assert HistoryDisplay.from_estimator(fitted, score="valid_ece").score == "valid_ece"
    X, y = digits
    by_auc = FoundationClassifier(
        nn.Linear(64, 16), solver="adamw", scoring="roc_auc", max_epochs=2
    )
    by_auc.fit(X, y)
    assert HistoryDisplay.from_estimator(by_auc).score == "valid_roc_auc"
    with pytest.raises(ValueError, match="score='valid_r2' is not in the history"):
        HistoryDisplay.from_estimator(fitted, score="valid_r2")
    matplotlib.pyplot.close("all")


def test_without_validation_only_the_training_loss(digits):
    X, y = digits
    reg = FoundationRegressor(nn.Linear(64, 16), val_split=0, max_epochs=2).fit(X, y)
    display = HistoryDisplay.from_estimator(reg)
    assert list(display.lines_) == ["train_loss"] and display.score_ax_ is None
    matplotlib.pyplot.close("all")


def test_unfitted_and_missing_matplotlib(fitted, monkeypatch):
    with pytest.raises(NotFittedError):
        HistoryDisplay.from_estimator(FoundationClassifier())
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"sklearn-finetune\[plot\]"):
        HistoryDisplay.from_estimator(fitted)
