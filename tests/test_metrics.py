"""The validation scores in history_ agree with scikit-learn's metric functions."""

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    brier_score_loss,
    f1_score,
    mean_absolute_error,
    r2_score,
    roc_auc_score,
    root_mean_squared_error,
)

from sklearn_finetune._metrics import (
    expected_calibration_error,
    multiclass_scores,
    multilabel_scores,
    ranking_scores,
    regression_scores,
)


def rounded_probabilities(rng, n, n_classes):
    """Probabilities rounded to one decimal, so ranking ties are common."""
    proba = rng.dirichlet(np.ones(n_classes), n).round(1) + 1e-3
    return proba / proba.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("n_classes", [2, 3, 7])
def test_multiclass_scores_equal_sklearn(n_classes):
    rng = np.random.default_rng(n_classes)
    y = rng.integers(0, n_classes, 300)
    proba = rounded_probabilities(rng, 300, n_classes)
    predicted = proba.argmax(axis=1)
    labels = np.arange(n_classes)
    ranked = proba[:, 1] if n_classes == 2 else proba
    onehot = np.eye(n_classes)[y]
    expected = {
        "accuracy": accuracy_score(y, predicted),
        "balanced_accuracy": balanced_accuracy_score(y, predicted),
        "f1_macro": f1_score(y, predicted, average="macro", labels=labels, zero_division=0),
        "roc_auc": roc_auc_score(y, ranked, multi_class="ovr", labels=labels),
        "average_precision": average_precision_score(
            y if n_classes == 2 else onehot, ranked, average="macro"
        ),
        "brier_score": brier_score_loss(y, ranked, labels=labels),
        "ece": expected_calibration_error(y, proba),
    }
    scores = multiclass_scores(y, proba)
    assert scores.keys() == expected.keys()
    for name, value in expected.items():
        assert scores[name] == pytest.approx(value, rel=1e-9), name


def test_multilabel_scores_equal_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (200, 4))
    proba = rng.random((200, 4)).round(1)
    predicted = (proba >= 0.5).astype(int)
    expected = {
        "accuracy": accuracy_score(y, predicted),
        "f1_macro": f1_score(y, predicted, average="macro", zero_division=0),
        "roc_auc": roc_auc_score(y, proba, average="macro"),
        "average_precision": average_precision_score(y, proba, average="macro"),
        "brier_score": np.mean((proba - y) ** 2),
    }
    scores = multilabel_scores(y, proba)
    for name, value in expected.items():
        assert scores[name] == pytest.approx(value, rel=1e-9), name


@pytest.mark.parametrize("n_targets", [1, 3])
def test_regression_scores_equal_sklearn(n_targets):
    rng = np.random.default_rng(n_targets)
    y = rng.normal(size=(100, n_targets)) * [10.0, 1.0, 0.1][:n_targets]
    predicted = y + rng.normal(size=y.shape)
    scores = regression_scores(y, predicted)
    assert scores["r2"] == pytest.approx(r2_score(y, predicted))
    assert scores["mae"] == pytest.approx(mean_absolute_error(y, predicted))
    assert scores["rmse"] == pytest.approx(root_mean_squared_error(y, predicted))


def test_undefined_ranking_scores_are_nan():
    auc, ap = ranking_scores(np.array([[1, 0], [1, 1]]), np.array([[0.2, 0.3], [0.9, 0.4]]))
    assert np.isnan(auc[0]) and np.isnan(ap[0])
    assert auc[1] == 1.0 and ap[1] == 1.0
    scores = multiclass_scores(np.array([0, 0, 0]), np.array([[0.9, 0.1]] * 3))
    assert np.isnan(scores["roc_auc"]) and scores["accuracy"] == 1.0
    assert np.isnan(regression_scores(np.ones(4), np.arange(4.0))["r2"])


def test_ece_is_zero_when_confidence_matches_accuracy():
    y = np.array([0, 0, 0, 1])  # 3 of 4 predictions of class 0 right, at confidence 0.75
    proba = np.tile([0.75, 0.25], (4, 1))
    assert expected_calibration_error(y, proba) == pytest.approx(0.0)
    assert expected_calibration_error(np.array([1, 1, 1, 1]), proba) == pytest.approx(0.75)
