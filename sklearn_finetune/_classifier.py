"""FoundationClassifier: a torch encoder as a scikit-learn classifier."""

from __future__ import annotations

from functools import partial
from inspect import signature
from numbers import Real
from typing import Any

import numpy as np
import torch
from sklearn.base import ClassifierMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_array, column_or_1d
from torch import nn

from ._declare import declared, parameter
from ._estimator import FoundationEstimator
from ._losses import SigmoidCrossEntropy, SoftmaxCrossEntropy
from ._plan import FitPlan
from ._probe_solver import LinearSolver, LogisticRegressionSolver

#: scikit-learn >= 1.7: ``class_weight="balanced"`` counts classes by sample weight.
_WEIGHTED_CLASS_COUNTS = "sample_weight" in signature(compute_class_weight).parameters


def _as_labels(y: Any) -> np.ndarray:
    return column_or_1d(check_array(y, ensure_2d=False, dtype=None, input_name="y"), warn=True)


def _distinct(labels: np.ndarray) -> list:
    """The distinct labels, sorted where their types allow it (by ``repr`` otherwise)."""
    distinct = set(labels.tolist())
    try:
        return sorted(distinct)
    except TypeError:
        return sorted(distinct, key=repr)


def _classes_and_codes(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sorted classes of ``y`` and each label's index among them."""
    try:
        return np.unique(y, return_inverse=True)
    except TypeError as exc:  # e.g. str and None, or str and int, in an object array
        types = sorted({type(label).__name__ for label in y.tolist()})
        raise TypeError(
            f"y mixes labels of types {', '.join(types)}, which cannot be sorted into "
            "classes_; give labels of one type (e.g. y.astype(str)), and no None."
        ) from exc


def _as_indicator(y: Any, n_labels: int | None = None) -> np.ndarray | None:
    """y as a float 0/1 matrix when it is a multilabel indicator matrix, else None."""
    if not hasattr(y, "shape"):
        y = np.asarray(y)
    if y.ndim != 2 or type_of_target(y) != "multilabel-indicator":
        return None
    y = check_array(y, dtype=np.float32, input_name="y")
    if n_labels is not None and y.shape[1] != n_labels:
        raise ValueError(f"y_val has {y.shape[1]} labels; y has {n_labels}.")
    return y


@declared
class FoundationClassifier(ClassifierMixin, FoundationEstimator):
    """A classifier made of a torch encoder and a head, trained by skorch.

    Linear probe (``freeze_backbone=True``), full fine-tuning
    (``freeze_backbone=False``), gradual unfreezing (``unfreeze_at``) or
    training from scratch (``encoder=None``), with cross-entropy loss.
    Labels may be of any type; ``predict`` returns them as given and
    ``predict_proba``'s columns follow ``classes_``. A 2-D 0/1 indicator
    matrix y is multilabel classification: one sigmoid output per label.

    Read more in the :ref:`User Guide <regimes>`.

    Parameters
    ----------
    {parameters}

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The class labels, sorted; for multilabel y, ``arange(n_labels)``.
    multilabel_ : bool
        Whether y was a multilabel indicator matrix.
    net_ : FoundationNet
        The skorch net that trained: its ``module_`` is ``module_`` when the
        backbone trains, and ``module_.head`` (fed cached features) when it
        is frozen.
    history_ : skorch.History
        One row per epoch with ``train_loss``, and with validation data
        ``valid_loss`` and the validation scores ``valid_accuracy``,
        ``valid_balanced_accuracy``, ``valid_f1_macro``, ``valid_roc_auc``
        and ``valid_average_precision`` (AUROC and AUPRC; one-vs-rest macro
        averages for more than two classes), ``valid_brier_score`` and
        ``valid_ece`` (expected calibration error, 15 bins); multilabel
        y has accuracy (exact match), F1, ROC AUC, average precision and
        Brier score, each averaged over labels. E.g. ``history_[:,
        "valid_roc_auc"]``.
    {shared_attributes}

    See Also
    --------
    FoundationRegressor : The same estimator for continuous targets.
    FoundationEmbedder : The frozen encoder's features as a transformer, for
        any scikit-learn model.
    linear_probe_score : A linear probe's cross-validated score in one call.
    HistoryDisplay : Plot ``history_``, with the best epoch marked.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from torch import nn
    >>> from sklearn_finetune import FoundationClassifier
    >>> X, y = load_digits(return_X_y=True)
    >>> encoder = nn.Sequential(nn.Linear(64, 32), nn.ReLU())  # a pretrained one in practice
    >>> clf = FoundationClassifier(encoder, random_state=0).fit(X / 16, y)  # a linear probe
    >>> clf.solver_  # LogisticRegression()'s problem, solved by L-BFGS
    'lbfgs'
    >>> clf.predict_proba(X[:2]).shape
    (2, 10)
    >>> clf.predict(X[:2]).shape
    (2,)
    """

    class_weight: dict | str | None = parameter(
        default=None,
        constraints=[dict, StrOptions({"balanced"}), None],
        types='dict, "balanced" or None',
        doc="""
        Weights of the classes in the loss, as in scikit-learn: a dict maps
        labels to weights (missing labels weigh 1); ``"balanced"`` gives
        class ``c`` the weight ``n_samples / (n_classes * count(c))``,
        counted in the y passed to ``fit`` (by ``sample_weight`` where
        given, as ``LogisticRegression`` does from scikit-learn 1.7). A
        sample's weight is its class's times its ``sample_weight``. Not for
        multilabel y (use ``sample_weight``).
        """,
    )
    label_smoothing: float = parameter(
        default=0.0,
        constraints=[Interval(Real, 0, 1, closed="left")],
        types="float",
        doc="""
        Label smoothing of the cross-entropy, in [0, 1): the target puts
        ``label_smoothing`` of its mass evenly on all classes (for
        multilabel y, each 0/1 target moves towards 1/2 by
        ``label_smoothing / 2``).
        """,
    )

    def _criterion(self) -> nn.Module:
        loss = SigmoidCrossEntropy if self.multilabel_ else SoftmaxCrossEntropy
        return loss(self.label_smoothing)

    def _task(self) -> str:
        return "multilabel" if self.multilabel_ else "multiclass"

    def _validate_y(self, y: Any) -> np.ndarray:
        indicator = _as_indicator(y)
        self.multilabel_ = indicator is not None
        if indicator is not None:
            if self.class_weight is not None:
                raise ValueError(
                    "class_weight does not apply to multilabel y (each sample has several "
                    "labels); weight samples with fit(..., sample_weight=...) instead."
                )
            self.classes_ = np.arange(indicator.shape[1])
            return indicator
        y = _as_labels(y)
        classes, encoded = _classes_and_codes(y)
        check_classification_targets(y)
        self.classes_ = classes
        if len(self.classes_) < 2:
            raise ValueError(
                f"{type(self).__name__} needs samples of at least 2 classes in y; got "
                f"1 class ({self.classes_[0]!r})."
            )
        return encoded.astype(np.int64)

    def _transform_y(self, y: Any) -> np.ndarray:
        if y is None:
            raise ValueError("y_val is None; val_split=(X_val, y_val) needs the labels of X_val.")
        if self.multilabel_:
            indicator = _as_indicator(y, len(self.classes_))
            if indicator is None:
                raise ValueError(
                    "y_val must be a multilabel indicator matrix (0/1 columns), as y was."
                )
            return indicator
        y = _as_labels(y)
        try:
            encoded = np.searchsorted(self.classes_, y)
        except TypeError:  # labels of types that do not compare with the classes'
            index = {label: code for code, label in enumerate(self.classes_.tolist())}
            encoded = np.array([index.get(label, len(index)) for label in y.tolist()])
        known = (encoded < len(self.classes_)) & (
            self.classes_[np.minimum(encoded, len(self.classes_) - 1)] == y
        )
        if not known.all():
            raise ValueError(f"y_val has labels not seen in y: {_distinct(y[~known])}.")
        return encoded.astype(np.int64)

    def _class_weight_vector(
        self, y: np.ndarray, sample_weight: np.ndarray | None
    ) -> np.ndarray | None:
        """``class_weight`` per class; ``"balanced"`` counts the classes by sample weight.

        As ``LogisticRegression`` does where scikit-learn's ``compute_class_weight``
        takes ``sample_weight`` (1.7 and later); by rows on earlier releases.
        """
        if self.class_weight is None:
            return None
        if isinstance(self.class_weight, dict):
            unknown = [label for label in self.class_weight if label not in set(self.classes_)]
            if unknown:
                raise ValueError(
                    f"class_weight has labels that are not in y: {unknown}; y's classes are "
                    f"{self.classes_.tolist()}."
                )
        weighted = {"sample_weight": sample_weight} if _WEIGHTED_CLASS_COUNTS else {}
        with np.errstate(divide="ignore"):  # a class of total sample weight 0: checked below
            weights = compute_class_weight(
                self.class_weight, classes=self.classes_, y=self.classes_[y], **weighted
            )
        bad = ~(np.isfinite(weights) & (weights >= 0))
        if bad.any():
            classes = self.classes_[bad].tolist()
            if isinstance(self.class_weight, dict):
                raise ValueError(
                    f"class_weight gives classes {classes} the weights "
                    f"{weights[bad].tolist()}; class weights must be finite and non-negative."
                )
            raise ValueError(
                f"class_weight='balanced' cannot weight classes {classes}: the "
                "sample_weight of their samples sums to 0. Drop those samples, or give "
                "some of them a positive weight."
            )
        return weights

    def _n_loss_terms(self) -> int:
        return len(self.classes_) if self.multilabel_ else 1

    def _lbfgs_penalty(self, total_weight: float) -> float:
        """``LogisticRegression(C=1)``'s penalty ``||W||^2 / (2 n)`` on this head's mean loss.

        ``n`` is the training rows' total weight.

        Two classes: the softmax's two weight vectors ``(w/2, -w/2)`` carry
        ``LogisticRegression``'s one ``w`` at half its squared norm, so the
        penalty doubles. Multilabel: the loss is averaged over the labels,
        so the penalty shrinks by their number.
        """
        if self.multilabel_:
            return 1.0 / (total_weight * len(self.classes_))
        return (2.0 if len(self.classes_) == 2 else 1.0) / total_weight

    def _n_outputs(self) -> int:
        return len(self.classes_)

    def _linear_solver(self, plan: FitPlan) -> LinearSolver | None:
        """``LogisticRegression`` itself, where the L-BFGS probe's objective is exactly its own.

        That is: single-label classes, no label smoothing, a penalty, float32
        on CPU (scikit-learn computes on NumPy arrays); the net applies it
        only to a head that is one ``nn.Linear``.
        """
        exact = (
            plan.solver == "lbfgs"
            and plan.weight_decay > 0
            and plan.device.type == "cpu"
            and self.precision == "32"
            and not self.multilabel_
            and self.label_smoothing == 0
        )
        if not exact:
            return None
        return LogisticRegressionSolver(
            penalty=plan.weight_decay, tol=self.tol, max_iter=plan.max_epochs
        )

    def _stratify(self, y: np.ndarray, n_val: int) -> np.ndarray | None:
        if self.multilabel_:
            return None
        n_classes = len(self.classes_)
        feasible = np.bincount(y).min() >= 2 and min(n_val, len(y) - n_val) >= n_classes
        return y if feasible else None

    def _predict_nonlinearity(self) -> Any:
        return torch.sigmoid if self.multilabel_ else partial(torch.softmax, dim=-1)

    def _prediction_of(self, outputs: torch.Tensor) -> np.ndarray:
        return self._predict_nonlinearity()(outputs).cpu().numpy()

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities: softmax of the head's outputs (per-label sigmoids for multilabel).

        Parameters
        ----------
        X : array-like, DataFrame, torch.Tensor, dict or Dataset
            Input in the form used at fit time.

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
            Columns in the order of ``classes_``; for multilabel y, the
            probability of each label, independently.
        """
        return self._net_predict("predict_proba", X)

    def predict(self, X: Any) -> np.ndarray:
        """Most probable class label of each sample (each label above 1/2, for multilabel).

        Parameters
        ----------
        X : array-like, DataFrame, torch.Tensor, dict or Dataset
            Input in the form used at fit time.

        Returns
        -------
        ndarray of shape (n_samples,) or (n_samples, n_labels)
            Labels from ``classes_``, or the 0/1 indicator matrix for
            multilabel y.
        """
        probabilities = self.predict_proba(X)
        if self.multilabel_:
            return (probabilities >= 0.5).astype(np.int64)
        return self.classes_[np.argmax(probabilities, axis=1)]

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """Accuracy of ``predict(X)`` against ``y``: ``ClassifierMixin.score``.

        scikit-learn's :func:`~sklearn.metrics.accuracy_score`; for multilabel
        y, the subset accuracy (a sample counts only when all its labels are
        right). ``cross_val_score`` and the search tools use it when
        ``scoring`` is None.

        Parameters
        ----------
        X : array-like, DataFrame, torch.Tensor, dict or Dataset
            Input in the form used at fit time.
        y : array-like of shape (n_samples,) or (n_samples, n_labels)
            True labels.
        sample_weight : array-like of shape (n_samples,) or None, default=None
            Weight of each sample in the mean.

        Returns
        -------
        float
            The fraction of samples predicted right, in [0, 1].
        """
        return super().score(X, y, sample_weight=sample_weight)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags
