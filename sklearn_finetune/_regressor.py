"""FoundationRegressor: a torch encoder as a scikit-learn regressor."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.base import RegressorMixin
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.validation import check_array
from torch import nn

from ._declare import declared, parameter
from ._estimator import FoundationEstimator
from ._losses import REGRESSION_LOSSES, RegressionLoss
from ._plan import FitPlan
from ._probe_solver import LinearSolver, RidgeSolver


@declared
class FoundationRegressor(RegressorMixin, FoundationEstimator):
    """A regressor made of a torch encoder and a head, trained by skorch.

    Linear probe (``freeze_backbone=True``), full fine-tuning
    (``freeze_backbone=False``), gradual unfreezing (``unfreeze_at``) or
    training from scratch (``encoder=None``), with squared-error or Huber
    loss on one or several targets. Targets are standardised for training
    (each to mean 0, standard deviation 1) and ``predict`` returns them on
    their original scale.

    Read more in the :ref:`User Guide <regimes>`.

    Parameters
    ----------
    {parameters}

    Attributes
    ----------
    n_outputs_ : int
        Number of targets.
    target_mean_, target_scale_ : ndarray of shape (n_outputs,)
        Mean and standard deviation of each target in the training data (a
        constant target gets scale 1).
    net_ : FoundationNet
        The skorch net that trained: its ``module_`` is ``module_`` when the
        backbone trains, and ``module_.head`` (fed cached features) when it
        is frozen.
    history_ : skorch.History
        One row per epoch with ``train_loss``, and with validation data
        ``valid_loss`` (on standardised targets) and the validation scores
        ``valid_r2``, ``valid_mae`` and ``valid_rmse`` (on the original
        scale, averaged over targets).
    {shared_attributes}

    See Also
    --------
    FoundationClassifier : The same estimator for class labels.
    FoundationEmbedder : The frozen encoder's features as a transformer, e.g.
        before :class:`~sklearn.linear_model.Ridge`.
    HistoryDisplay : Plot ``history_``, with the best epoch marked.
    save_estimator : Save the fitted estimator as safetensors and JSON.

    Examples
    --------
    >>> from sklearn.datasets import load_diabetes
    >>> from sklearn_finetune import FoundationRegressor
    >>> X, y = load_diabetes(return_X_y=True)
    >>> reg = FoundationRegressor(random_state=0).fit(X, y)  # an MLP from scratch
    >>> reg.solver_, reg.n_iter_ <= 200  # max_epochs="auto": 200 for mini-batch solvers
    ('adamw', True)
    >>> reg.predict(X[:3]).shape
    (3,)
    """

    loss: str = parameter(
        default="squared_error",
        constraints=[StrOptions(set(REGRESSION_LOSSES))],
        types='{"squared_error", "huber"}',
        doc="""
        The training loss on standardised targets, averaged over targets.
        ``"huber"``: quadratic within one standard deviation of the target
        and linear beyond, so outliers pull less.
        """,
    )

    def _criterion(self) -> nn.Module:
        return RegressionLoss(self.loss)

    def _task(self) -> str:
        return "regression"

    def _validate_y(self, y: Any) -> np.ndarray:
        y = check_array(y, ensure_2d=False, dtype=np.float64, input_name="y")
        if y.ndim not in (1, 2):
            raise ValueError(
                f"y must have shape (n_samples,) or (n_samples, n_targets); got {y.shape}."
            )
        y2d = y.reshape(len(y), -1)
        with np.errstate(over="ignore", invalid="ignore"):
            mean, scale = y2d.mean(axis=0), y2d.std(axis=0)
        if not (np.isfinite(mean).all() and np.isfinite(scale).all()):
            raise ValueError(
                "y has values too large to standardise: their mean or standard deviation "
                f"overflows float64 (the largest magnitude is {np.abs(y2d).max():.3g}). "
                "Rescale y, e.g. divide it by a power of ten (and the predictions by "
                "the same)."
            )
        self.n_outputs_ = y2d.shape[1]
        self.target_mean_ = mean
        self.target_scale_ = np.where(scale > 0, scale, 1.0)
        return self._transform_y(y)

    def _transform_y(self, y: Any) -> np.ndarray:
        if y is None:
            raise ValueError("y_val is None; val_split=(X_val, y_val) needs the targets of X_val.")
        y = check_array(y, ensure_2d=False, dtype=np.float64, input_name="y")
        y2d = y.reshape(len(y), -1)
        if y2d.shape[1] != self.n_outputs_:
            raise ValueError(f"y_val has {y2d.shape[1]} target(s); y has {self.n_outputs_}.")
        with np.errstate(over="ignore"):
            standardised = ((y2d - self.target_mean_) / self.target_scale_).astype(np.float32)
        if not np.isfinite(standardised).all():
            raise ValueError(
                "y_val has values too far from y's to train on: standardised by y's mean "
                "and standard deviation they overflow float32. Check that y_val is on "
                "the scale of y."
            )
        return standardised

    def _n_loss_terms(self) -> int:
        return self.n_outputs_

    def _lbfgs_penalty(self, total_weight: float) -> float:
        """``Ridge(alpha=1)``'s penalty on this head's loss.

        Ridge minimises ``||y - Xw||^2 + ||w||^2``, i.e. the mean squared
        error plus ``||w||^2 / n`` (``n`` the training rows' total weight);
        this head's loss is averaged over the targets too, hence
        ``2 / (n * n_targets)`` in ``weight_decay / 2 * ||W||^2``.
        """
        return 2.0 / (total_weight * self.n_outputs_)

    def _n_outputs(self) -> int:
        return self.n_outputs_

    def _linear_solver(self, plan: FitPlan) -> LinearSolver | None:
        """``Ridge`` itself, where the L-BFGS probe's objective is exactly its own.

        That is: the squared error, a penalty, float32 on CPU; the net
        applies it only to a head that is one ``nn.Linear``.
        """
        exact = (
            plan.solver == "lbfgs"
            and plan.weight_decay > 0
            and plan.device.type == "cpu"
            and self.precision == "32"
            and self.loss == "squared_error"
        )
        return RidgeSolver(penalty=plan.weight_decay) if exact else None

    def _prediction_of(self, outputs: torch.Tensor) -> np.ndarray:
        return outputs.cpu().numpy() * self.target_scale_ + self.target_mean_

    def _target_of(self, y: np.ndarray) -> np.ndarray:
        return y * self.target_scale_ + self.target_mean_

    def predict(self, X: Any) -> np.ndarray:
        """Predicted targets, on the scale of the training targets.

        Parameters
        ----------
        X : array-like, DataFrame, torch.Tensor, dict or Dataset
            Input in the form used at fit time.

        Returns
        -------
        ndarray of shape (n_samples,) or (n_samples, n_outputs)
            One column per target; 1-D for a single target.
        """
        standardised = self._net_predict("predict", X)
        y = standardised * self.target_scale_ + self.target_mean_
        return y.ravel() if self.n_outputs_ == 1 else y

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """R² of ``predict(X)`` against ``y``: ``RegressorMixin.score``.

        scikit-learn's :func:`~sklearn.metrics.r2_score`, averaged uniformly
        over the targets when there are several. 1 is a perfect fit; a
        model that always predicts the mean of ``y`` scores 0. ``cross_val_score``
        and the search tools use it when ``scoring`` is None.

        Parameters
        ----------
        X : array-like, DataFrame, torch.Tensor, dict or Dataset
            Input in the form used at fit time.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            True targets.
        sample_weight : array-like of shape (n_samples,) or None, default=None
            Weight of each sample.

        Returns
        -------
        float
            R², at most 1 (negative for a model worse than the mean).
        """
        return super().score(X, y, sample_weight=sample_weight)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags
