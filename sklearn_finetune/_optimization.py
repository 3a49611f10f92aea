"""Optimizers, learning-rate schedules and per-block learning rates, as skorch settings."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from skorch.callbacks import LRScheduler

from ._module import ENCODER_PREFIX

#: Named solvers; ``solver`` may also be a torch optimizer class or factory.
SOLVERS = ("adamw", "adam", "sgd", "lbfgs")
LR_SCHEDULES = ("cosine", "warmup_cosine", "step", "plateau")

Solver = str | Callable[..., torch.optim.Optimizer]

#: Loss evaluations L-BFGS may make in one fit: scipy's ``maxfun`` default,
#: which ``LogisticRegression`` and ``MLPClassifier`` keep, so that the
#: iteration cap (``max_epochs``) is what ends an unconverged run.
LBFGS_MAX_EVALUATIONS = 15_000

#: ``lr_schedule="step"`` divides the rate by 10 every third of ``max_epochs``;
#: ``"plateau"`` divides it by 10 after this many epochs without a better loss.
STEP_GAMMA = 0.1
PLATEAU_PATIENCE = 2


def solver_settings(
    solver: Solver,
    *,
    lr: float,
    weight_decay: float,
    momentum: float,
    batch_size: int,
    n_train: int,
    max_epochs: int,
    tol: float,
) -> dict[str, Any]:
    """The skorch net settings of ``solver``: the optimizer, its arguments, batching and epochs.

    ``"lbfgs"`` runs once over the whole training set (one skorch epoch)
    for at most ``max_epochs`` iterations, until no gradient entry exceeds
    ``tol``, as ``LogisticRegression`` does; ``weight_decay`` becomes the
    net's ``l2_penalty``.

    Examples
    --------
    >>> from sklearn_finetune._optimization import solver_settings
    >>> settings = solver_settings(
    ...     "sgd", lr=0.1, weight_decay=0.0, momentum=0.9, batch_size=32, n_train=100,
    ...     max_epochs=200, tol=1e-4,
    ... )
    >>> settings["optimizer"].__name__, settings["optimizer__momentum"]
    ('SGD', 0.9)
    """
    if solver == "lbfgs":
        return dict(
            optimizer=torch.optim.LBFGS,
            optimizer__lr=1.0,
            optimizer__max_iter=max_epochs,
            optimizer__max_eval=LBFGS_MAX_EVALUATIONS,
            optimizer__tolerance_grad=tol,
            optimizer__line_search_fn="strong_wolfe",
            l2_penalty=weight_decay,
            batch_size=-1,  # skorch: the whole training set in one batch
            iterator_train__shuffle=False,
            max_epochs=1,
        )
    settings: dict[str, Any] = dict(
        lr=lr,
        batch_size=batch_size,
        iterator_train__shuffle=True,
        iterator_train__drop_last=n_train > 1 and n_train % batch_size == 1,
        max_epochs=max_epochs,
    )
    if solver == "sgd":
        settings.update(optimizer=torch.optim.SGD, optimizer__momentum=momentum)
    elif isinstance(solver, str):
        settings["optimizer"] = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}[solver]
    else:
        settings["optimizer"] = solver
    if weight_decay or isinstance(solver, str):
        settings["optimizer__weight_decay"] = weight_decay
    return settings


def steps_per_epoch(n_train: int, batch_size: int, drop_last: bool) -> int:
    """Optimizer steps in one epoch of ``n_train`` rows."""
    return n_train // batch_size if drop_last else math.ceil(n_train / batch_size)


class WarmupCosine:
    """The factor of a linear warmup followed by a cosine decay to 0, per optimizer step.

    Parameters
    ----------
    total_steps : int
        Steps of the whole training.
    warmup_steps : int
        Steps of the linear warmup, from ``1 / warmup_steps`` to 1.

    Examples
    --------
    >>> from sklearn_finetune._optimization import WarmupCosine
    >>> factor = WarmupCosine(total_steps=10, warmup_steps=2)
    >>> [round(factor(step), 2) for step in range(10)]
    [0.5, 1.0, 1.0, 0.96, 0.85, 0.69, 0.5, 0.31, 0.15, 0.04]
    """

    def __init__(self, total_steps: int, warmup_steps: int) -> None:
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def schedule_callback(
    schedule: str, *, max_epochs: int, steps: int, warmup_epochs: float, monitor: str
) -> LRScheduler:
    """skorch's ``LRScheduler`` for ``lr_schedule``; the rate of each step is in ``history_``.

    ``"cosine"`` and ``"warmup_cosine"`` change the rate after every
    optimizer step (``steps`` per epoch), ``"step"`` and ``"plateau"`` after
    every epoch; ``monitor`` is the history column ``"plateau"`` watches.
    """
    if schedule in ("cosine", "warmup_cosine"):
        warmup = round(warmup_epochs * steps) if schedule == "warmup_cosine" else 0
        factor = WarmupCosine(max_epochs * steps, warmup)
        return LRScheduler(torch.optim.lr_scheduler.LambdaLR, step_every="batch", lr_lambda=factor)
    if schedule == "step":
        return LRScheduler(
            torch.optim.lr_scheduler.StepLR, step_size=max(1, max_epochs // 3), gamma=STEP_GAMMA
        )
    return LRScheduler(
        torch.optim.lr_scheduler.ReduceLROnPlateau,
        monitor=monitor,
        factor=STEP_GAMMA,
        patience=PLATEAU_PATIENCE,
    )


def backbone_groups(
    backbone_lr: float, layer_decay: float | None, blocks: list[list[str]] | None
) -> list[tuple[str, dict[str, float]]]:
    """skorch ``optimizer__param_groups`` for a trained backbone (the head takes ``lr``).

    One group at ``backbone_lr``, or with ``layer_decay`` (and ``blocks``,
    which the fit plan finds whenever ``layer_decay`` is set) one group per
    block (see :func:`block_learning_rates`).

    Examples
    --------
    >>> from sklearn_finetune._optimization import backbone_groups
    >>> backbone_groups(0.01, None, None)
    [('encoder.*', {'lr': 0.01})]
    """
    if layer_decay is None or blocks is None:
        return [(ENCODER_PREFIX + "*", {"lr": backbone_lr})]
    return block_learning_rates(blocks, backbone_lr, layer_decay)


def block_learning_rates(
    blocks: list[list[str]], top_lr: float, decay: float
) -> list[tuple[str, dict[str, float]]]:
    """skorch ``optimizer__param_groups`` for layer-wise learning-rate decay.

    The top block trains at ``top_lr`` and each block below at the rate of
    the block above times ``decay``. One group per block; each parameter is
    matched by its exact name in the ``FoundationModule``.

    Examples
    --------
    >>> from sklearn_finetune._optimization import block_learning_rates
    >>> block_learning_rates([["a"], ["b"]], top_lr=0.1, decay=0.5)
    [('encoder.a', {'lr': 0.05}), ('encoder.b', {'lr': 0.1})]
    """
    top = len(blocks) - 1
    return [
        (ENCODER_PREFIX + name, {"lr": top_lr * decay ** (top - depth)})
        for depth, block in enumerate(blocks)
        for name in block
    ]
