"""FoundationClassifier: a torch encoder as a scikit-learn classifier."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, column_or_1d
from torch import nn

from ._base import FoundationEstimator, with_shared_docs
from ._net import ClassifierNet


def _as_labels(y: Any) -> np.ndarray:
    return column_or_1d(check_array(y, ensure_2d=False, dtype=None, input_name="y"), warn=True)


@with_shared_docs
class FoundationClassifier(ClassifierMixin, FoundationEstimator):
    """A classifier made of a torch encoder and a head, trained by skorch.

    Linear probe (``freeze_backbone=True``), full fine-tuning
    (``freeze_backbone=False``) or training from scratch (``encoder=None``),
    with cross-entropy loss. Labels may be of any type; ``predict`` returns
    them as given and ``predict_proba``'s columns follow ``classes_``.

    Parameters
    ----------
    {shared_parameters}

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The class labels, sorted.
    net_ : skorch.NeuralNetClassifier
        The skorch net that trained: its ``module_`` is ``module_`` when the
        backbone trains, and ``module_.head`` (fed cached features) when it
        is frozen.
    history_ : skorch.History
        One row per epoch with ``train_loss``, and with a validation set
        ``valid_loss`` and ``valid_acc``; e.g. ``history_[:, "valid_acc"]``.
    {shared_attributes}

    See Also
    --------
    FoundationRegressor : The same for continuous targets.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from torch import nn
    >>> from sklearn_finetune import FoundationClassifier
    >>> X, y = load_digits(return_X_y=True)
    >>> encoder = nn.Sequential(nn.Linear(64, 32), nn.ReLU())  # a pretrained one in practice
    >>> clf = FoundationClassifier(encoder, max_epochs=5, random_state=0).fit(X, y)
    >>> clf.predict_proba(X[:2]).shape
    (2, 10)
    >>> clf.predict(X[:2]).shape
    (2,)
    """

    _net_class = ClassifierNet
    _criterion = nn.CrossEntropyLoss

    def _validate_y(self, y: Any) -> np.ndarray:
        y = _as_labels(y)
        check_classification_targets(y)
        self.classes_, encoded = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(
                f"{type(self).__name__} needs samples of at least 2 classes in y; got "
                f"1 class ({self.classes_[0]!r})."
            )
        return encoded.astype(np.int64)

    def _transform_y(self, y: Any) -> np.ndarray:
        y = _as_labels(y)
        encoded = np.searchsorted(self.classes_, y)
        known = (encoded < len(self.classes_)) & (
            self.classes_[np.minimum(encoded, len(self.classes_) - 1)] == y
        )
        if not known.all():
            raise ValueError(
                f"y_val has labels not seen in y: {sorted(set(y[~known].tolist()))}."
            )
        return encoded.astype(np.int64)

    def _n_outputs(self) -> int:
        return len(self.classes_)

    def _stratify(self, y: np.ndarray, n_val: int) -> np.ndarray | None:
        n_classes = len(self.classes_)
        feasible = np.bincount(y).min() >= 2 and min(n_val, len(y) - n_val) >= n_classes
        return y if feasible else None

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities (softmax of the head's outputs).

        Parameters
        ----------
        X : array-like, DataFrame, torch.Tensor or dict
            Input in the form used at fit time.

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
            Columns in the order of ``classes_``.
        """
        return self._net_predict("predict_proba", X)

    def predict(self, X: Any) -> np.ndarray:
        """Most probable class label of each sample.

        Parameters
        ----------
        X : array-like, DataFrame, torch.Tensor or dict
            Input in the form used at fit time.

        Returns
        -------
        ndarray of shape (n_samples,)
            Labels from ``classes_``.
        """
        probabilities = self.predict_proba(X)
        return self.classes_[np.argmax(probabilities, axis=1)]
