"""The estimator's own skorch callbacks: validation scores, convergence, schedule, unfreezing."""

from __future__ import annotations

import copy
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sklearn.exceptions import UndefinedMetricWarning
from skorch.callbacks import Callback, ProgressBar

from ._metrics import ValidationScores, greater_is_better
from ._optimization import schedule_callback

if TYPE_CHECKING:
    from ._estimator import FoundationEstimator
    from ._plan import FitPlan

UNFREEZE_MODES = ("all", "top_down")


def estimator_callbacks(estimator: FoundationEstimator, plan: FitPlan, steps: int) -> list:
    """The callbacks a fit runs: the estimator's own, then copies of the user's.

    Parameters
    ----------
    estimator : FoundationClassifier or FoundationRegressor
        Its parameters and its hooks for validation scores.
    plan : FitPlan
        Whether there is validation data, the regime and the backbone's blocks.
    steps : int
        Optimizer steps per epoch (for per-step schedules).

    Returns
    -------
    list of (str, skorch.callbacks.Callback) or Callback
    """
    has_validation = bool(plan.validation)
    callbacks: list = [("finite_loss", FiniteLoss())]
    if has_validation:
        scores = ValidationScores(estimator._task(), estimator._prediction_of, estimator._target_of)
        callbacks.append(("valid_scores", scores))
    if has_validation or (plan.solver != "lbfgs" and plan.n_iter_no_change is not None):
        if not has_validation:
            monitor, lower_is_better = "train_loss", True
        elif estimator.scoring == "loss":
            monitor, lower_is_better = "valid_loss", True
        else:
            monitor = f"valid_{estimator.scoring}"
            lower_is_better = not greater_is_better(estimator._task(), estimator.scoring)
        convergence = Convergence(
            monitor,
            lower_is_better=lower_is_better,
            tol=estimator.tol,
            n_iter_no_change=plan.n_iter_no_change,
            restore_best=has_validation and estimator.restore_best_weights,
        )
        callbacks.append(("convergence", convergence))
    if estimator.lr_schedule is not None:
        schedule = schedule_callback(
            estimator.lr_schedule,
            max_epochs=plan.max_epochs,
            steps=steps,
            warmup_epochs=estimator.warmup_epochs,
            monitor="valid_loss" if has_validation else "train_loss",
        )
        callbacks.append(("lr_schedule", schedule))
    if plan.regime == "gradual_unfreezing" and estimator.unfreeze_at is not None:
        unfreezing = BackboneUnfreezing(estimator.unfreeze_at, estimator.unfreeze_mode, plan.blocks)
        callbacks.append(("unfreezing", unfreezing))
    if estimator.verbose >= 2:
        callbacks.append(("progress", ProgressBar()))
    return callbacks + copy.deepcopy(list(estimator.callbacks or []))


class FiniteLoss(Callback):
    """Ends training at the first epoch whose training or validation loss is not finite.

    A loss that is NaN or infinite (a learning rate too high, float16
    overflow) makes every later epoch worthless; the estimator then keeps
    the best epoch's weights, if validation found one, or refuses the fit
    (see ``_fit_report.check_finite_loss``). It runs before
    ``Convergence``, so the diverged epoch is never the best one.

    Attributes
    ----------
    diverged_ : tuple of (int, str, float) or None
        The epoch, the history column (or the weights) and its value where
        the loss, or a trainable weight after the epoch's steps, stopped
        being finite; None while all are finite.
    """

    def on_train_begin(self, net: Any, **kwargs: Any) -> None:
        self.diverged_: tuple[int, str, float] | None = None

    def on_epoch_end(self, net: Any, **kwargs: Any) -> None:
        row = net.history[-1]
        for column in ("train_loss", "valid_loss"):
            if column in row and not np.isfinite(row[column]):
                self.diverged_ = (row["epoch"], column, float(row[column]))
                raise KeyboardInterrupt  # skorch's way to end the loop; it runs on_train_end
        # A finite loss whose gradient overflowed leaves weights that are not finite.
        for name, parameter in net.get_all_learnable_params():
            if not torch.isfinite(parameter).all():
                self.diverged_ = (row["epoch"], f"the weights ({name})", float("nan"))
                raise KeyboardInterrupt


class BackboneUnfreezing(Callback):
    """Keeps the backbone frozen for ``unfreeze_at`` epochs, then lets it train.

    While frozen the encoder runs in eval mode without gradients (as with
    ``freeze_backbone=True``). Its parameters are in the optimizer from the
    start, at ``lr * backbone_lr_mult``, but get no gradient, so no update
    and no weight decay touch them: the same as their group joining the
    optimizer at epoch ``unfreeze_at``, and a learning-rate schedule applies
    to them as to the head. With ``mode="top_down"`` one block unfreezes per
    epoch, the top block first (ULMFiT's gradual unfreezing).

    Parameters
    ----------
    unfreeze_at : int
        Number of epochs that train the head alone.
    mode : {"all", "top_down"}
        Unfreeze the whole backbone at once, or one block per epoch from the
        top.
    blocks : list of list of str or None
        ``backbone_blocks(encoder)`` for ``"top_down"``.
    """

    def __init__(self, unfreeze_at: int, mode: str, blocks: list[list[str]] | None) -> None:
        self.unfreeze_at = unfreeze_at
        self.mode = mode
        self.blocks = blocks

    def on_train_begin(self, net: Any, **kwargs: Any) -> None:
        encoder = net.module_.encoder
        self.trainable_ = [name for name, p in encoder.named_parameters() if p.requires_grad]
        self._set_epoch(net, 0)

    def on_epoch_begin(self, net: Any, **kwargs: Any) -> None:
        self._set_epoch(net, len(net.history) - 1)

    def on_train_end(self, net: Any, **kwargs: Any) -> None:
        """Leave the trained encoder as it came: every parameter that could train can train."""
        parameters = dict(net.module_.encoder.named_parameters())
        for name in self.trainable_:
            parameters[name].requires_grad_(True)
        net.module_.frozen = False

    def _set_epoch(self, net: Any, epoch: int) -> None:
        """Freeze or unfreeze for ``epoch`` (counted from 0)."""
        module = net.module_
        module.frozen = epoch < self.unfreeze_at
        if self.mode != "top_down" or module.frozen or self.blocks is None:
            return
        n_unfrozen = epoch - self.unfreeze_at + 1
        still_frozen = {name for block in self.blocks[:-n_unfrozen] for name in block}
        parameters = dict(module.encoder.named_parameters())
        for name in self.trainable_:
            parameters[name].requires_grad_(name not in still_frozen)


class Convergence(Callback):
    """Watches one value in ``history`` each epoch: the best epoch, its weights, early stopping.

    The rule is ``MLPClassifier``'s: an epoch counts as an improvement when
    the value beats the best so far by more than ``tol``; after
    ``n_iter_no_change`` epochs in a row without one, training stops. The
    best epoch is the one with the best value (ties: the earliest). A value
    that is not finite (a score undefined on the validation set, such as
    ROC AUC when it holds one class) is neither an improvement nor a miss,
    and a ``UndefinedMetricWarning`` says so once per fit.

    Parameters
    ----------
    monitor : str
        The ``history`` column: ``"valid_loss"``, ``"valid_<score>"`` or
        ``"train_loss"``.
    lower_is_better : bool
        Whether lower values are better.
    tol : float
        The improvement that counts, in the units of ``monitor``.
    n_iter_no_change : int or None
        Epochs without improvement that end training; None never stops.
    restore_best : bool
        Keep a copy of the best epoch's weights and load them when training
        ends.

    Attributes
    ----------
    best_epoch_ : int or None
        The best epoch as numbered in ``history`` (None: no finite value).
    stopped_early_ : bool
        Whether ``n_iter_no_change`` ended training.
    """

    def __init__(
        self,
        monitor: str,
        *,
        lower_is_better: bool,
        tol: float,
        n_iter_no_change: int | None,
        restore_best: bool,
    ) -> None:
        self.monitor = monitor
        self.lower_is_better = lower_is_better
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.restore_best = restore_best

    def on_train_begin(self, net: Any, **kwargs: Any) -> None:
        self.best_ = np.inf if self.lower_is_better else -np.inf
        self.best_epoch_: int | None = None
        self.best_weights_: dict | None = None
        self.misses_ = 0
        self.stopped_early_ = False
        self.undefined_warned_ = False

    def on_epoch_end(self, net: Any, **kwargs: Any) -> None:
        value = float(net.history[-1, self.monitor])
        epoch = net.history[-1, "epoch"]
        if not np.isfinite(value):
            self._warn_undefined(value, epoch)
            return
        sign = 1.0 if self.lower_is_better else -1.0
        if sign * value > sign * self.best_ - self.tol:
            self.misses_ += 1
        else:
            self.misses_ = 0
        if sign * value < sign * self.best_:
            self.best_, self.best_epoch_ = value, epoch
            if self.restore_best:
                self.best_weights_ = copy.deepcopy(net.module_.state_dict())
        if self.n_iter_no_change is not None and self.misses_ >= self.n_iter_no_change:
            self.stopped_early_ = True
            raise KeyboardInterrupt  # skorch's way to end the loop; it runs on_train_end

    def on_train_end(self, net: Any, **kwargs: Any) -> None:
        if self.best_weights_ is not None and self.best_epoch_ != net.history[-1, "epoch"]:
            net.module_.load_state_dict(self.best_weights_)

    def _warn_undefined(self, value: float, epoch: int) -> None:
        if self.undefined_warned_:
            return
        self.undefined_warned_ = True
        warnings.warn(
            f"{self.monitor} is {value} at epoch {epoch}: the score is undefined on this "
            "validation set (ROC AUC and average precision need every class present in "
            "it). Epochs with an undefined score neither count towards n_iter_no_change "
            "nor can be the best epoch. Choose scoring='loss', or a validation set that "
            "holds every class.",
            UndefinedMetricWarning,
            stacklevel=2,
        )
