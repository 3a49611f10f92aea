"""Validation scores recorded in ``history_`` after every epoch, and which direction is better."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata
from skorch.callbacks import Callback

#: Bins of the expected calibration error.
ECE_BINS = 15


def expected_calibration_error(
    y_true: np.ndarray, proba: np.ndarray, n_bins: int = ECE_BINS
) -> float:
    """Top-label expected calibration error: the mean gap between confidence and accuracy.

    Samples are binned by the probability of their predicted class into
    ``n_bins`` equal-width bins; the gap of each bin is weighted by its share
    of the samples.

    Parameters
    ----------
    y_true : ndarray of shape (n_samples,)
        Class indices.
    proba : ndarray of shape (n_samples, n_classes)
        Predicted probabilities.
    n_bins : int, default=15
        Number of confidence bins.

    Returns
    -------
    float
        In [0, 1]; 0 for a perfectly calibrated model.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_finetune._metrics import expected_calibration_error
    >>> proba = np.array([[0.9, 0.1], [0.9, 0.1], [0.2, 0.8], [0.4, 0.6]])
    >>> round(expected_calibration_error(np.array([0, 1, 1, 1]), proba), 3)
    0.35
    """
    confidence = proba.max(axis=1)
    correct = proba.argmax(axis=1) == y_true
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    gaps = [
        abs(correct[bins == b].mean() - confidence[bins == b].mean()) * np.mean(bins == b)
        for b in np.unique(bins)
    ]
    return float(np.sum(gaps))


def ranking_scores(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC AUC and average precision of each column of ``scores`` against 0/1 column of ``y``.

    The same values as scikit-learn's ``roc_auc_score`` (ties count half)
    and ``average_precision_score`` (precision at each distinct threshold,
    weighted by the recall gained), computed for all columns in one pass;
    NaN for a column whose ``y`` holds one class only.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_finetune._metrics import ranking_scores
    >>> y, scores = np.array([[0], [0], [1], [1]]), np.array([[0.1], [0.4], [0.35], [0.8]])
    >>> auc, ap = ranking_scores(y, scores)
    >>> float(auc[0]), round(float(ap[0]), 4)
    (0.75, 0.8333)
    """
    y = y.astype(bool)
    n_pos = y.sum(axis=0)
    n_neg = len(y) - n_pos
    defined = (n_pos > 0) & (n_neg > 0)
    ranks = rankdata(scores, axis=0)
    auc = ((ranks * y).sum(axis=0) - n_pos * (n_pos + 1) / 2) / np.where(defined, n_pos * n_neg, 1)
    ap = np.empty(y.shape[1])
    for column in range(y.shape[1]):
        order = np.argsort(-scores[:, column], kind="mergesort")
        ranked, hits = scores[order, column], y[order, column]
        last_of_tie = np.r_[ranked[1:] != ranked[:-1], True]
        true_positives = np.cumsum(hits)[last_of_tie]
        precision = true_positives / (np.flatnonzero(last_of_tie) + 1)
        recall_gain = np.diff(np.r_[0, true_positives]) / max(n_pos[column], 1)
        ap[column] = np.sum(recall_gain * precision)
    return np.where(defined, auc, np.nan), np.where(defined, ap, np.nan)


def _f1_per_class(
    true_positives: np.ndarray, predicted: np.ndarray, actual: np.ndarray
) -> np.ndarray:
    """F1 of each class from counts; 0 where undefined (scikit-learn's ``zero_division=0``)."""
    denominator = predicted + actual
    return np.divide(
        2 * true_positives, denominator, out=np.zeros(len(denominator)), where=denominator > 0
    )


def multiclass_scores(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """The validation scores of a single-label classifier (see ``SCORES``).

    Accuracy; balanced accuracy (mean recall over the classes present in
    y); macro F1 over all classes; ROC AUC and average precision (of the
    positive class for two classes, one-vs-rest macro averages otherwise);
    Brier score (the squared error summed over classes, averaged over
    samples; for two classes that of the positive class alone, as
    scikit-learn's ``brier_score_loss``); top-label ECE.
    """
    n_classes = proba.shape[1]
    predicted = proba.argmax(axis=1)
    confusion = np.bincount(y * n_classes + predicted, minlength=n_classes**2)
    confusion = confusion.reshape(n_classes, n_classes)
    correct, actual, guessed = np.diag(confusion), confusion.sum(axis=1), confusion.sum(axis=0)
    present = actual > 0
    onehot = np.eye(n_classes, dtype=bool)[y]
    if n_classes == 2:
        auc, ap = ranking_scores(onehot[:, 1:], proba[:, 1:])
    else:
        auc, ap = ranking_scores(onehot, proba)
    return {
        "accuracy": correct.sum() / len(y),
        "balanced_accuracy": np.mean(correct[present] / actual[present]),
        "f1_macro": np.mean(_f1_per_class(correct, guessed, actual)),
        "roc_auc": np.mean(auc),
        "average_precision": np.mean(ap),
        "brier_score": np.mean(np.sum((proba - onehot) ** 2, axis=1))
        / (2 if n_classes == 2 else 1),
        "ece": expected_calibration_error(y, proba),
    }


def multilabel_scores(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """The validation scores of a multilabel classifier: macro averages over labels.

    Accuracy is the exact-match ratio (all labels right), as scikit-learn's
    ``accuracy_score``; F1 thresholds each probability at 1/2; the Brier
    score is the mean squared error over all labels.
    """
    y = y.astype(bool)
    predicted = proba >= 0.5
    auc, ap = ranking_scores(y, proba)
    f1 = _f1_per_class((y & predicted).sum(axis=0), predicted.sum(axis=0), y.sum(axis=0))
    return {
        "accuracy": np.mean((predicted == y).all(axis=1)),
        "f1_macro": np.mean(f1),
        "roc_auc": np.mean(auc),
        "average_precision": np.mean(ap),
        "brier_score": np.mean((proba - y) ** 2),
    }


def regression_scores(y: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """R² (NaN for a constant target), MAE and RMSE, each averaged over the targets."""
    y, predicted = y.reshape(len(y), -1), predicted.reshape(len(y), -1)
    residual = ((y - predicted) ** 2).sum(axis=0)
    total = ((y - y.mean(axis=0)) ** 2).sum(axis=0)
    r2 = np.where(total > 0, 1 - residual / np.where(total > 0, total, 1), np.nan)
    return {
        "r2": np.mean(r2),
        "mae": np.mean(np.abs(y - predicted)),
        "rmse": np.mean(np.sqrt(residual / len(y))),
    }


#: The scores of each task, and whether higher is better.
SCORES: dict[str, dict[str, bool]] = {
    "multiclass": dict(
        accuracy=True,
        balanced_accuracy=True,
        f1_macro=True,
        roc_auc=True,
        average_precision=True,
        brier_score=False,
        ece=False,
    ),
    "multilabel": dict(
        accuracy=True, f1_macro=True, roc_auc=True, average_precision=True, brier_score=False
    ),
    "regression": dict(r2=True, mae=False, rmse=False),
}


def greater_is_better(task: str, scoring: str) -> bool:
    """Whether a higher ``scoring`` is better (``"loss"``: lower is)."""
    return scoring != "loss" and SCORES[task][scoring]


class ValidationScores(Callback):
    """Records every score of the task as ``valid_<name>`` after each epoch with validation data.

    Scores are computed from the predictions the validation pass already
    made (no extra forward pass), unweighted, in NumPy in about a millisecond
    per epoch (scikit-learn's functions give the same values but, with their
    input checks, cost more per epoch than a linear head's training). A
    score that is undefined on the validation set (e.g. ROC AUC when it
    holds one class) is NaN.

    Parameters
    ----------
    task : {"multiclass", "multilabel", "regression"}
        Which scores apply.
    to_prediction : callable
        Maps the module's outputs (a float tensor) to probabilities, or for
        regression to targets on their original scale, as a NumPy array.
    target_of : callable
        Maps the training encoding of the targets back to class indices,
        indicator rows or original-scale targets.
    """

    def __init__(
        self,
        task: str,
        to_prediction: Callable[[torch.Tensor], np.ndarray],
        target_of: Callable[[np.ndarray], np.ndarray],
    ) -> None:
        self.task = task
        self.to_prediction = to_prediction
        self.target_of = target_of

    def on_epoch_begin(self, net: Any, **kwargs: Any) -> None:
        self.outputs_: list[torch.Tensor] = []
        self.targets_: list[torch.Tensor] = []

    def on_batch_end(
        self, net: Any, batch: Any, y_pred: torch.Tensor, training: bool, **kwargs: Any
    ) -> None:
        if not training:
            self.outputs_.append(y_pred.detach().float())
            self.targets_.append(batch[1][0])

    def on_epoch_end(self, net: Any, **kwargs: Any) -> None:
        if not self.outputs_:
            return
        prediction = self.to_prediction(torch.cat(self.outputs_))
        target = self.target_of(torch.cat(self.targets_).cpu().numpy())
        scores = {
            "multiclass": multiclass_scores,
            "multilabel": multilabel_scores,
            "regression": regression_scores,
        }[self.task](target, prediction)
        for name, score in scores.items():
            net.history.record(f"valid_{name}", float(score))
        self.outputs_, self.targets_ = [], []
