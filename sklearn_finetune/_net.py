"""The skorch net that runs the training loop, and how a fit plan configures it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from skorch import NeuralNet
from skorch.utils import TeeGenerator, to_device, to_tensor
from torch import nn

from ._callbacks import estimator_callbacks
from ._device import autocast, batch_threads, chooses_threads, counted_flops, forward_flops
from ._module import FoundationModule, check_finite_output
from ._optimization import solver_settings, steps_per_epoch
from ._probe_solver import LinearSolver

if TYPE_CHECKING:
    from ._estimator import FoundationEstimator
    from ._plan import FitPlan


class _NonFiniteLoss(Exception):
    """Raised inside torch's L-BFGS closure to end the run at a loss that is not finite."""


class FoundationNet(NeuralNet):
    """skorch's ``NeuralNet``, training a ``FoundationModule`` or a head on cached features.

    The estimators validate X and y themselves and compute their own
    validation scores, so skorch's classifier and regressor layers are not
    used. What this net adds to skorch's loop:

    * Targets come with sample weights: each batch's y is ``(target,
      weight)``, the criterion returns one loss per sample, and the batch
      loss is ``mean(weight * loss)`` (the estimator scales the weights to
      mean 1 over the training rows, so the epoch's loss is the weighted
      mean of the per-sample losses).
    * The optimizer is offered only what should train (see
      ``FoundationModule``; a head alone, on cached features, offers all of
      itself).
    * ``l2_penalty`` adds ``l2_penalty / 2 * ||W||^2`` over the weight
      matrices (not the biases) to the training loss, for optimizers
      without a weight decay of their own, such as L-BFGS.
    * ``max_grad_norm`` clips the gradients' global norm before each step.
    * ``linear_solver`` (with L-BFGS, on a head that is one ``nn.Linear``)
      solves the epoch's one full batch with scikit-learn instead of
      ``torch.optim.LBFGS`` (see ``_probe_solver``).
    * ``precision`` runs the forward pass under autocast (``"bf16"`` or
      ``"16"``); ``"16"`` scales the loss with a ``GradScaler`` so that small
      float16 gradients do not underflow.
    * ``stopped_by_`` names the callback that ended training, if one did.
      skorch's callbacks end training by raising ``KeyboardInterrupt`` from
      a hook (skorch's ``EarlyStopping``, ``n_iter_no_change``), which
      skorch's loop cannot tell from Ctrl-C; ``notify`` notes the name of the
      callback whose hook raised it, so that the fit does not report an
      interrupt (see ``_fit_report``). A Ctrl-C that lands while a
      callback's hook runs counts as that callback's stop.
    """

    stopped_by_: str | None = None

    def __init__(
        self,
        *args: Any,
        l2_penalty: float = 0.0,
        max_grad_norm: float | None = None,
        precision: str = "32",
        linear_solver: LinearSolver | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.l2_penalty = l2_penalty
        self.max_grad_norm = max_grad_norm
        self.precision = precision
        self.linear_solver = linear_solver

    def initialize(self) -> FoundationNet:
        super().initialize()
        device_type = torch.device(self.device).type
        self.grad_scaler_ = torch.amp.GradScaler(device_type) if self.precision == "16" else None
        self.solver_iterations_: int | None = None
        return self

    def initialize_optimizer(self, *args: Any, **kwargs: Any) -> FoundationNet:
        """skorch's optimizer, or None while ``linear_solver`` may solve the head without one.

        Building a torch optimizer imports ``torch._dynamo`` (over a second,
        once per process), which a probe solved by scikit-learn never needs;
        ``train_step`` builds the optimizer if the solver declines.
        """
        if self.linear_solver is not None and type(self.module_) is nn.Linear:
            self._register_attribute("optimizer_", None)  # as skorch does on seeing an optimizer
            self.optimizer_ = None
            return self
        return super().initialize_optimizer(*args, **kwargs)

    def notify(self, method_name: str, **cb_kwargs: Any) -> None:
        """skorch's; a callback whose hook raises ``KeyboardInterrupt`` goes in ``stopped_by_``."""
        if method_name == "on_train_begin":
            self.stopped_by_ = None
        getattr(self, method_name)(self, **cb_kwargs)
        for name, callback in self.callbacks_:
            try:
                getattr(callback, method_name)(self, **cb_kwargs)
            except KeyboardInterrupt:
                self.stopped_by_ = name
                raise

    def check_data(self, X: Any, y: Any) -> None:
        """Nothing to check: the estimator validated X and y before building the net."""

    def _unwrapped_module(self) -> nn.Module:
        """``module_`` as built (``AcceleratedNet`` unwraps its DistributedDataParallel)."""
        return self.module_

    def get_all_learnable_params(self) -> Iterator[tuple[str, nn.Parameter]]:
        module = self._unwrapped_module()
        if isinstance(module, FoundationModule):
            return module.trainable_named_parameters()
        return super().get_all_learnable_params()

    def get_params_for_optimizer(self, prefix: str, named_parameters: Any) -> tuple[tuple, dict]:
        """skorch's parameter groups, with groups of equal settings merged into one.

        ``optimizer__param_groups`` patterns match parameter by parameter, so
        per-block learning rates come as one pattern per parameter; merged,
        the optimizer holds one group per block, then the head's.
        """
        (groups,), kwargs = super().get_params_for_optimizer(prefix, named_parameters)
        merged: dict[tuple, dict[str, Any]] = {}
        for group in groups:
            settings = tuple(sorted((k, v) for k, v in group.items() if k != "params"))
            merged.setdefault(settings, {**group, "params": []})["params"].extend(group["params"])
        return (list(merged.values()),), kwargs

    def forward_iter(
        self, X: Any, training: bool = False, device: str | torch.device = "cpu"
    ) -> Iterator[torch.Tensor]:
        """skorch's, with a tensor X (cached features) sliced into batches, no loader between.

        The first batch's FLOPs choose the threads of the others (see
        ``batch_threads``): a light model predicts on one CPU thread.
        """
        outputs = self._batch_outputs(X, training, device)
        if not chooses_threads(torch.device(self.device)):
            yield from outputs
            return
        with counted_flops() as counter:
            first = next(outputs, None)
        if first is None:
            return
        flops = forward_flops(counter, self.module_, rows=len(first))
        with batch_threads(flops, torch.device(self.device)):
            yield first
            yield from outputs

    def _batch_outputs(
        self, X: Any, training: bool, device: str | torch.device
    ) -> Iterator[torch.Tensor]:
        if not isinstance(X, torch.Tensor):
            yield from super().forward_iter(X, training=training, device=device)
            return
        batch_size = self.get_params_for("iterator_valid").get("batch_size", self.batch_size)
        for batch in X.split(batch_size if batch_size > 0 else max(len(X), 1)):
            yield to_device(self.evaluation_step((batch, None), training=training), device)

    def infer(self, x: Any, **fit_params: Any) -> torch.Tensor:
        with autocast(torch.device(self.device), self.precision):
            return super().infer(x, **fit_params).float()

    def get_loss(
        self, y_pred: Any, y_true: Any, X: Any = None, training: bool = False
    ) -> torch.Tensor:
        target, weight = to_tensor(y_true, device=self.device)
        loss = (self.criterion_(y_pred, target) * weight).mean()
        if training and self.l2_penalty:
            squares = [
                parameter.pow(2).sum()
                for name, parameter in self.get_all_learnable_params()
                if name.endswith("weight") and parameter.ndim > 1
            ]
            loss = loss + 0.5 * self.l2_penalty * torch.stack(squares).sum()
        return loss

    def train_step_single(self, batch: Any, **fit_params: Any) -> dict[str, Any]:
        self._set_training(True)
        Xi, yi = batch
        y_pred = self.infer(Xi, **fit_params)
        loss = self.get_loss(y_pred, yi, X=Xi, training=True)
        if not torch.isfinite(loss):
            self._check_encoder_output(Xi)
            if isinstance(self.optimizer_, torch.optim.LBFGS):
                raise _NonFiniteLoss  # its line search would spend every evaluation on it
        (loss if self.grad_scaler_ is None else self.grad_scaler_.scale(loss)).backward()
        return {"loss": loss, "y_pred": y_pred}

    def _check_encoder_output(self, Xi: Any) -> None:
        """A batch's loss is not finite: name a trained encoder whose output is the cause.

        Frozen features were checked when they were encoded; a trained
        encoder runs again on the batch, without gradients, only now.
        """
        module = self._unwrapped_module()
        if not isinstance(module, FoundationModule) or module.frozen:
            return
        if not all(parameter.isfinite().all() for parameter in module.encoder.parameters()):
            return  # its weights diverged in training: FiniteLoss reports that, not the encoder
        with torch.no_grad():
            features = module.embed(**Xi) if isinstance(Xi, dict) else module.embed(Xi)
        where = f"in training batch {len(self.history[-1]['batches'])} of epoch {len(self.history)}"
        check_finite_output(features, module.encoder, where)

    @property
    def lbfgs_iterations_(self) -> int:
        """The iterations L-BFGS has run, scikit-learn's or torch's (0 for other optimizers)."""
        if self.solver_iterations_ is not None:
            return self.solver_iterations_
        if not isinstance(self.optimizer_, torch.optim.LBFGS):
            return 0
        state: dict[str, Any] = next(iter(self.optimizer_.state.values()), {})
        return int(state.get("n_iter", 0))

    def _lbfgs_step(self, batch: Any, **fit_params: Any) -> None:
        """Torch's L-BFGS run; a loss that stops being finite ends it (``FiniteLoss`` reports)."""
        try:
            super().train_step(batch, **fit_params)
        except _NonFiniteLoss:
            pass  # the loss recorded for the epoch is not finite: FiniteLoss ends the fit
        except RuntimeError as error:
            if "without overflow" not in str(error):
                raise
            raise ValueError(
                "Training diverged: torch's L-BFGS took a step too large for float32 "
                f"({error}). Scale X (e.g. StandardScaler) or raise weight_decay."
            ) from error

    def _clip_grad_norm(self, max_norm: float) -> None:
        """Clip the (unscaled) gradients' global norm to ``max_norm``."""
        parameters = [parameter for _, parameter in self.get_all_learnable_params()]
        nn.utils.clip_grad_norm_(parameters, max_norm)

    def train_step(self, batch: Any, **fit_params: Any) -> dict[str, Any]:
        """One optimizer step: L-BFGS through skorch's closure, other optimizers directly.

        A plain linear head is first offered to ``linear_solver`` (see
        ``initialize_optimizer``); if it declines, torch's L-BFGS runs. L-BFGS
        evaluates the loss many times in one step; the step's loss is the
        objective at the weights it ends with (skorch would report the first
        evaluation's). Gradients are unscaled (``precision="16"``) and clipped
        before the ``on_grad_computed`` callbacks see them and the optimizer
        steps.
        """
        Xi, yi = batch
        if self.optimizer_ is None:  # see initialize_optimizer
            assert self.linear_solver is not None
            target, weight = to_tensor(yi, device=self.device)
            self.solver_iterations_ = self.linear_solver(self.module_, Xi, target, weight)
            if self.solver_iterations_ is None:
                super().initialize_optimizer()
        if self.optimizer_ is None or isinstance(self.optimizer_, torch.optim.LBFGS):
            if self.optimizer_ is not None:
                self._lbfgs_step(batch, **fit_params)
            with torch.no_grad():
                y_pred = self.infer(Xi, **fit_params)
                loss = self.get_loss(y_pred, yi, X=Xi, training=True)
            return {"loss": loss, "y_pred": y_pred}
        self._zero_grad_optimizer()
        step = self.train_step_single(batch, **fit_params)
        scaler = self.grad_scaler_
        if scaler is not None:
            scaler.unscale_(self.optimizer_)
        if self.max_grad_norm is not None:
            self._clip_grad_norm(self.max_grad_norm)
        self.notify(
            "on_grad_computed",
            named_parameters=TeeGenerator(self.get_all_learnable_params()),
            batch=batch,
            training=True,
        )
        if scaler is None:
            self.optimizer_.step()
        else:
            scaler.step(self.optimizer_)
            scaler.update()
        return step


def build_net(
    estimator: FoundationEstimator, plan: FitPlan, module: nn.Module, **settings: Any
) -> FoundationNet:
    """The skorch net that trains ``module`` as ``estimator``'s parameters and ``plan`` say.

    Parameters
    ----------
    estimator : FoundationClassifier or FoundationRegressor
        Its loss, solver, epochs, batch sizes, clipping, precision, callbacks
        and verbosity.
    plan : FitPlan
        The device, the regime and the number of training rows.
    module : torch.nn.Module
        A ``FoundationModule``, or a head alone on cached features.
    **settings
        More skorch settings (``train_split``, iterators, parameter
        groups), which take precedence.

    Returns
    -------
    FoundationNet
        Not yet initialised.
    """
    solver = solver_settings(
        plan.solver,
        lr=estimator.lr,
        weight_decay=plan.weight_decay,
        momentum=estimator.momentum,
        batch_size=estimator.batch_size,
        n_train=plan.n_train,
        max_epochs=plan.max_epochs,
        tol=estimator.tol / estimator._n_loss_terms(),
    )
    drop_last = solver.get("iterator_train__drop_last", False)
    steps = steps_per_epoch(plan.n_train, estimator.batch_size, drop_last)
    defaults = dict(
        module=module,
        criterion=estimator._criterion(),
        iterator_valid__batch_size=estimator._inference_batch_size(),
        callbacks=estimator_callbacks(estimator, plan, steps),
        predict_nonlinearity=estimator._predict_nonlinearity(),
        max_grad_norm=estimator.max_grad_norm,
        precision=estimator.precision,
        device=plan.device,
        verbose=estimator.verbose,
        **solver,
    )
    if not estimator.verbose:  # PrintLog formats a table each epoch even when it prints nothing
        defaults["callbacks__print_log"] = None
    if plan.accelerated:
        from ._accelerate import AcceleratedNet

        return AcceleratedNet(accelerator=estimator.accelerator, **{**defaults, **settings})
    return FoundationNet(**{**defaults, **settings})
