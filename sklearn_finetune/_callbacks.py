"""The estimator's own skorch callbacks: validation scores, best epoch, schedule, unfreezing."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from skorch.callbacks import Callback, EarlyStopping, ProgressBar
from skorch.utils import noop

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
    callbacks: list = []
    if has_validation:
        scores = ValidationScores(estimator._task(), estimator._prediction_of, estimator._target_of)
        callbacks.append(("valid_scores", scores))
        monitor = "valid_loss" if estimator.scoring == "loss" else f"valid_{estimator.scoring}"
        best = EarlyStopping(
            monitor=monitor,
            patience=estimator.patience,
            lower_is_better=not greater_is_better(estimator._task(), estimator.scoring),
            load_best=estimator.restore_best_weights,
            sink=print if estimator.verbose else noop,
        )
        callbacks.append(("best_epoch", best))
    if estimator.lr_schedule is not None:
        schedule = schedule_callback(
            estimator.lr_schedule,
            max_epochs=estimator.max_epochs,
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
