"""Training on several processes or devices through Hugging Face accelerate (``accelerator``).

The estimator's ``accelerator`` parameter takes an ``accelerate.Accelerator``;
:func:`accelerator_device` checks it against the other parameters before
training, and :class:`AcceleratedNet` is skorch's ``AccelerateMixin`` on this
package's net: the model is wrapped (DistributedDataParallel across
processes), each training batch is sharded across the processes, gradients
are averaged, and mixed precision (autocast, loss scaling) is the
accelerator's. After training the model is unwrapped, so the fitted
estimator predicts, pickles and saves in a plain single process.
"""

from __future__ import annotations

import os
from numbers import Integral
from typing import TYPE_CHECKING, Any

import torch
from skorch.hf import AccelerateMixin
from skorch.net import NeuralNet

from ._callbacks import BackboneUnfreezing
from ._net import FoundationNet

if TYPE_CHECKING:
    from torch import nn

    from ._estimator import FoundationEstimator

#: accelerate's ``mixed_precision`` -> the estimator's ``precision`` it equals.
MIXED_PRECISIONS = {"no": "32", "bf16": "bf16", "fp16": "16"}


def accelerator_device(estimator: FoundationEstimator, regime: str) -> torch.device:
    """The accelerator's device, after refusing settings that contradict it.

    One mechanism decides each thing: the accelerator places the model (its
    ``device``) and runs mixed precision in training (its
    ``mixed_precision``), so ``device`` must be ``"auto"`` or the same device
    and ``precision`` ``"32"`` or the same precision. The accelerator must
    span the processes the launcher started (``WORLD_SIZE``): accelerate
    runs each process alone on CPUs unless told ``cpu=True``. Only a backbone
    trained whole from the first epoch (``freeze_backbone=False``,
    ``unfreeze_at=0`` with ``unfreeze_mode="all"``, or ``encoder=None`` from
    scratch; see :func:`trains_from_start`) is trained by the accelerator.
    With several processes ``random_state`` must be an int, so that every
    process holds out the same validation rows.

    Parameters
    ----------
    estimator : FoundationClassifier or FoundationRegressor
        With ``accelerator`` set.
    regime : str
        The fit's regime (see ``_plan.regime_of``).

    Returns
    -------
    torch.device

    Raises
    ------
    ValueError
        For any of the contradictions above.
    """
    accelerator = estimator.accelerator
    if not trains_from_start(estimator, regime):
        if regime == "frozen":
            why = "frozen, and a frozen backbone's head trains on cached features in one process"
        else:
            why = (
                f"unfrozen gradually (unfreeze_at={estimator.unfreeze_at!r}, unfreeze_mode="
                f"{estimator.unfreeze_mode!r}), and the accelerator's wrapped model trains "
                "every parameter from the first step"
            )
        raise ValueError(
            "accelerator= distributes the mini-batch loop that trains the backbone; this "
            f"fit's backbone is {why}. Use freeze_backbone=False (or unfreeze_at=0 with "
            "unfreeze_mode='all', the same full fine-tuning), or accelerator=None."
        )
    mixed = str(getattr(accelerator, "mixed_precision", "no"))
    if mixed not in MIXED_PRECISIONS:
        raise ValueError(
            f"The accelerator's mixed_precision={mixed!r} is not supported; use an Accelerator "
            f"with mixed_precision in {sorted(MIXED_PRECISIONS)}."
        )
    if estimator.precision not in ("32", MIXED_PRECISIONS[mixed]):
        raise ValueError(
            f"precision={estimator.precision!r} contradicts the accelerator's "
            f"mixed_precision={mixed!r}: with an accelerator, training's mixed precision is "
            f"the accelerator's. {_precision_options(estimator.precision, mixed)}"
        )
    device = torch.device(accelerator.device)
    if device.type == "cpu":  # accelerate numbers the CPU by process ("cpu:1"); torch has one
        device = torch.device("cpu")
    if estimator.device != "auto":
        try:
            asked = torch.device(estimator.device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"device={estimator.device!r} is not a torch device.") from exc
        if asked.type != device.type or asked.index not in (None, device.index):
            raise ValueError(
                f"device={estimator.device!r} contradicts the accelerator's device {device}: "
                "with an accelerator, the accelerator places the model. Leave device='auto'."
            )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if accelerator.num_processes != launched:
        raise ValueError(
            f"This process is one of WORLD_SIZE={launched} launched processes, but the "
            f"accelerator runs {accelerator.num_processes}: each process would train alone. "
            "On CPUs create it with Accelerator(cpu=True) (or launch with ACCELERATE_USE_CPU=1)."
        )
    if accelerator.num_processes > 1 and not isinstance(estimator.random_state, Integral):
        raise ValueError(
            f"random_state={estimator.random_state!r} with an accelerator of "
            f"{accelerator.num_processes} processes: each process draws the validation rows "
            "and the initial weights itself, so they agree only from the same int seed. "
            "Pass random_state=<int>."
        )
    return device


def trains_from_start(estimator: FoundationEstimator, regime: str) -> bool:
    """Whether the whole backbone trains from the first epoch, as ``accelerator`` needs.

    ``regime`` is the plan's (``_plan.regime_of``): ``"fine_tune"``, or
    ``"gradual_unfreezing"`` whose unfreezing is at epoch 0 all at once
    (``unfreeze_at=0, unfreeze_mode="all"``: full fine-tuning, which predicts
    exactly as ``freeze_backbone=False``). Top-down unfreezing from epoch 0
    still adds one block per epoch.
    """
    if regime == "fine_tune":
        return True
    return (
        regime == "gradual_unfreezing"
        and estimator.unfreeze_at == 0
        and estimator.unfreeze_mode == "all"
    )


def _precision_options(precision: str, mixed: str) -> str:
    """What to set instead, each option once, when ``precision`` contradicts ``mixed``."""
    matching = MIXED_PRECISIONS[mixed]
    if matching == "32":
        wanted = {value: key for key, value in MIXED_PRECISIONS.items()}[precision]
        return f"Leave precision='32', or create the Accelerator with mixed_precision={wanted!r}."
    return (
        "Leave precision='32' (predictions in float32) or set precision="
        f"{matching!r}, the one that matches (predictions in it too)."
    )


def _unfreezes_nothing(item: Any) -> bool:
    """Whether a callback (or ``(name, callback)``) is unfreezing from epoch 0, all at once."""
    callback = item[1] if isinstance(item, tuple) else item
    return (
        isinstance(callback, BackboneUnfreezing)
        and callback.unfreeze_at == 0
        and callback.mode == "all"
    )


class AcceleratedNet(AccelerateMixin, FoundationNet):
    """``FoundationNet`` trained through an ``accelerate.Accelerator`` (skorch's mixin).

    What differs from skorch's ``AccelerateMixin``:

    * Only training batches are sharded across the processes; every
      process runs the whole validation set itself (nothing is gathered),
      so every process records the same scores. The training loss
      recorded is the mean over the processes, for the same reason. A
      callback that ends training in one process ends it in all, at the
      same epoch.
    * Gradients are clipped by the accelerator (which unscales float16
      gradients first); autocast and loss scaling are the accelerator's
      only (the net's own ``GradScaler`` is not made).
    * The unfreezing callback of ``unfreeze_at=0, unfreeze_mode="all"``
      (which freezes nothing: full fine-tuning) is left out; it would reach
      for the encoder through the wrapped model.
    * The model is unwrapped after every callback's ``on_train_end`` (the
      best epoch's weights are restored into the wrapped model first), and
      the accelerator forgets the prepared objects (``free_memory``, as
      accelerate advises between two trainings) and is dropped from the
      net: the fitted net predicts in one process, and pickles. A training
      that raises releases the accelerator the same way, so that a failed
      fit leaves no model, optimizer or loader held by the user's
      accelerator.
    """

    accelerator: Any  # an accelerate.Accelerator; None once training has ended
    module_: Any
    _wrapped_with_accelerator: bool

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("callbacks"):  # unfreeze_at=0, "all": nothing to unfreeze, no DDP access
            kwargs["callbacks"] = [
                item for item in kwargs["callbacks"] if not _unfreezes_nothing(item)
            ]
        super().__init__(*args, unwrap_after_train=False, **kwargs)
        if kwargs.get("callbacks__print_log", "") is None:  # no PrintLog: the mixin's sink has none
            del self.callbacks__print_log__sink

    def _initialize_callbacks(self) -> AcceleratedNet:
        if "callbacks__print_log__sink" not in vars(self):
            NeuralNet._initialize_callbacks(self)
            return self
        return super()._initialize_callbacks()

    def initialize(self) -> AcceleratedNet:
        # The mixin's initialize is skorch's, with the accelerator's preparation added;
        # what FoundationNet.initialize adds is set here (no GradScaler: the accelerator's).
        super().initialize()
        self.grad_scaler_ = None
        self.solver_iterations_ = None
        return self

    def _initialize_accelerator(self) -> AcceleratedNet:
        """The mixin's preparation of the module and optimizer, without the criterion's.

        The losses hold no parameters, and DistributedDataParallel refuses a
        module without any (the mixin would wrap it too).
        """
        if self._wrapped_with_accelerator:
            return self
        with self._current_init_context("module"):
            self.module_ = self.accelerator.prepare(self.module_)
        with self._current_init_context("optimizer"):
            self.optimizer_ = self.accelerator.prepare(self.optimizer_)
        self._wrapped_with_accelerator = True
        return self

    def _validate_params(self) -> None:
        # The accelerator's device is the net's: skorch's check against a set device is moot.
        NeuralNet._validate_params(self)

    def _unwrapped_module(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.module_)

    def get_iterator(self, dataset: Any, training: bool = False) -> Any:
        iterator = FoundationNet.get_iterator(self, dataset, training=training)
        return self.accelerator.prepare(iterator) if training else iterator

    def evaluation_step(self, batch: Any, training: bool = False) -> Any:
        return FoundationNet.evaluation_step(self, batch, training=training)

    def train_step_single(self, batch: Any, **fit_params: Any) -> dict[str, Any]:
        self._set_training(True)
        Xi, yi = batch
        with self.accelerator.autocast():
            y_pred = self.infer(Xi, **fit_params)
            loss = self.get_loss(y_pred, yi, X=Xi, training=True)
        self.accelerator.backward(loss)
        return {"loss": self.accelerator.reduce(loss.detach(), "mean"), "y_pred": y_pred}

    def _clip_grad_norm(self, max_norm: float) -> None:
        parameters = [parameter for _, parameter in self.get_all_learnable_params()]
        self.accelerator.clip_grad_norm_(parameters, max_norm)

    def notify(self, method_name: str, **cb_kwargs: Any) -> None:
        if method_name == "on_epoch_end":
            self._end_epoch_together(**cb_kwargs)
            return
        super().notify(method_name, **cb_kwargs)
        if method_name == "on_train_end":
            self._release_accelerator()

    def partial_fit(self, *args: Any, **kwargs: Any) -> AcceleratedNet:
        """skorch's; a training that raises releases the accelerator too (no ``on_train_end``)."""
        try:
            return super().partial_fit(*args, **kwargs)
        except BaseException:
            if self.accelerator is not None:
                self._release_accelerator()
            raise

    def _release_accelerator(self) -> None:
        """Unwrap the model; the accelerator forgets what it prepared; the net drops it."""
        self._unwrap_accelerator()
        self.accelerator.free_memory()  # accelerate's advice between two trainings
        self.accelerator = None

    def _end_epoch_together(self, **cb_kwargs: Any) -> None:
        """The epoch's callbacks; if one ends training in any process, it ends in all.

        skorch's callbacks end training by raising ``KeyboardInterrupt``
        (``n_iter_no_change``, skorch's ``EarlyStopping``). A process that
        stopped alone would leave the others waiting at their next
        all-reduce, so whether to stop is itself reduced across processes,
        and every process takes ``stopped_by_`` from the first that names a
        callback.
        """
        from accelerate.utils import gather_object

        stop = False
        try:
            super().notify("on_epoch_end", **cb_kwargs)
        except KeyboardInterrupt:
            stop = True
        stops = self.accelerator.reduce(
            torch.tensor([float(stop)], device=self.accelerator.device), "sum"
        )
        if stops.item() > 0:
            names = gather_object([self.stopped_by_ if stop else None])
            self.stopped_by_ = next((name for name in names if name is not None), None)
            raise KeyboardInterrupt
