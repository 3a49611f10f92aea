"""What one fit does, decided once: the regime, the data that trains and validates, the encoder.

``fit`` calls :func:`plan_fit` once; every later step reads the
:class:`FitPlan` instead of asking the parameters again.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from math import ceil
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.validation import _check_sample_weight
from skorch.dataset import Dataset
from skorch.helper import predefined_split
from torch import nn
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import Subset

from ._batches import WritableSamples
from ._blocks import backbone_blocks
from ._cache import FeatureCache, feature_cache
from ._device import check_precision, seed_torch
from ._encoder import mlp_backbone, prepare_encoder
from ._inputs import ModelInput, n_samples
from ._metrics import SCORES
from ._optimization import Solver
from ._representation import Representation
from ._unused_parameters import warn_unused_parameters

if TYPE_CHECKING:
    from ._estimator import FoundationEstimator

#: ``"frozen"``: the head trains on cached features; ``"fine_tune"``: the
#: backbone trains from the first epoch; ``"gradual_unfreezing"``: it starts
#: frozen and trains from epoch ``unfreeze_at``.
Regime = Literal["frozen", "fine_tune", "gradual_unfreezing"]

#: ``val_split="auto"`` for mini-batch solvers: ``MLPClassifier``'s ``validation_fraction``.
AUTO_VALIDATION_FRACTION = 0.1

#: ``max_epochs="auto"``: ``LogisticRegression``'s ``max_iter`` for the L-BFGS
#: probe, ``MLPClassifier``'s for mini-batch solvers.
AUTO_MAX_EPOCHS = {"lbfgs": 100, "mini-batch": 200}

#: Training targets and per-sample loss weights.
Targets = tuple[np.ndarray, np.ndarray]


def solver_of(estimator: FoundationEstimator, regime: Regime) -> Solver:
    """``solver``, with ``"auto"`` resolved: L-BFGS for a linear probe, AdamW otherwise.

    A linear probe is a frozen backbone under a linear head, with no learned
    pooling, no learning-rate schedule and no float16 loss scaling: the
    convex problem of ``LogisticRegression`` (``Ridge`` for the regressor),
    which full-batch L-BFGS solves exactly.
    """
    if estimator.solver != "auto":
        return estimator.solver
    probe = (
        regime == "frozen"
        and isinstance(estimator.head, str)
        and estimator.head == "linear"
        and estimator.pooling != "attention"
        and estimator.lr_schedule is None
        and estimator.precision != "16"
    )
    return "lbfgs" if probe else "adamw"


def regime_of(encoder: nn.Module | None, freeze_backbone: bool | str, unfreeze_at: Any) -> Regime:
    """The regime that ``encoder``, ``freeze_backbone`` and ``unfreeze_at`` ask for."""
    frozen = encoder is not None if freeze_backbone == "auto" else bool(freeze_backbone)
    if not frozen:
        return "fine_tune"
    return "frozen" if unfreeze_at is None else "gradual_unfreezing"


@dataclass(frozen=True)
class Validation:
    """The data scored after every epoch, and the rows that train.

    Exactly one of ``rows`` (rows of X held out, kept as indices as skorch's
    ``ValidSplit`` does, so X is never copied for it) and ``data`` (a
    separate, validated ``(X_val, y_val, weights)``) is set, or neither.

    Parameters
    ----------
    train : ndarray of int or None
        The rows of X that train; None: all of them.
    rows : ndarray of int or None
        The rows of X held out.
    data : tuple or None
        ``(X_val, y_val, weights)`` given as ``val_split``.
    """

    train: np.ndarray | None = None
    rows: np.ndarray | None = None
    data: tuple[ModelInput, np.ndarray, np.ndarray] | None = None

    def __bool__(self) -> bool:
        return self.rows is not None or self.data is not None

    def split_features(
        self,
        features: torch.Tensor,
        targets: list[torch.Tensor],
        encode: Callable[[ModelInput], np.ndarray],
    ) -> tuple[torch.Tensor, list[torch.Tensor], Any]:
        """Training features and targets, and skorch's ``train_split``, for cached features.

        ``encode`` turns the explicit validation X into features (an array,
        moved to the device of ``features`` here).
        """
        if self.data is not None:
            X_val, *y_val = self.data
            device = features.device
            valid = Dataset(
                torch.as_tensor(encode(X_val), device=device),
                [torch.as_tensor(array, device=device) for array in y_val],
            )
            return features, targets, predefined_split(valid)
        if self.rows is None:
            return features, targets, None
        rows, train = self.rows, self.train
        valid = Dataset(features[rows], [target[rows] for target in targets])
        return features[train], [target[train] for target in targets], predefined_split(valid)

    def split_inputs(self) -> Any:
        """skorch's ``train_split`` for ``net.fit(X, y)`` on all of X."""
        if self.data is not None:
            X_val, *y_val = self.data
            return predefined_split(WritableSamples(X_val, y_val))
        if self.rows is None or self.train is None:
            return None
        return partial(_index_split, train=self.train, valid=self.rows)


def _index_split(
    dataset: TorchDataset,
    y: Any = None,
    groups: Any = None,
    *,
    train: np.ndarray,
    valid: np.ndarray,
) -> tuple[Subset, Subset]:
    """A skorch ``train_split``: fixed training and validation rows of the dataset."""
    return Subset(dataset, cast(Sequence[int], train)), Subset(dataset, cast(Sequence[int], valid))


@dataclass(frozen=True)
class FitPlan:
    """What one fit does.

    Parameters
    ----------
    regime : {"frozen", "fine_tune", "gradual_unfreezing"}
        See :data:`Regime`.
    encoder : torch.nn.Module
        The backbone this fit runs: the user's own object when frozen (the
        encoding step runs a copy where it must move to another device), a
        copy on ``device`` when it trains, or the MLP built for
        ``encoder=None``.
    representation : Representation
        Output selection and pooling.
    device : torch.device
        Where the fit runs.
    cache : FeatureCache or None
        Where a frozen backbone's features are kept.
    targets : (ndarray, ndarray)
        The encoded y of every row of X and its loss weights.
    validation : Validation
        The rows that train, and the validation data.
    blocks : list of list of str or None
        The backbone's blocks, where ``layer_decay`` or top-down unfreezing
        needs them.
    solver : str or callable
        The optimizer, ``solver="auto"`` resolved (see :func:`solver_of`).
    weight_decay : float
        ``weight_decay="auto"`` resolved for this solver and training set.
    max_epochs : int
        ``max_epochs="auto"`` resolved for this solver (see
        :data:`AUTO_MAX_EPOCHS`).
    n_iter_no_change : int or None
        Epochs without improvement that stop training (``patience`` mapped).
    accelerated : bool, default=False
        Whether ``accelerator`` trains (see ``_accelerate``).
    """

    regime: Regime
    solver: Solver
    weight_decay: float
    max_epochs: int
    n_iter_no_change: int | None
    encoder: nn.Module
    representation: Representation
    device: torch.device
    cache: FeatureCache | None
    targets: Targets
    validation: Validation
    blocks: list[list[str]] | None
    accelerated: bool = False

    @property
    def n_train(self) -> int:
        """The number of training rows."""
        train = self.validation.train
        return len(self.targets[0]) if train is None else len(train)


def plan_fit(
    estimator: FoundationEstimator,
    X: ModelInput,
    y: np.ndarray,
    sample_weight: Any,
    device: torch.device,
) -> FitPlan:
    """Decide what this fit does, and refuse what cannot work, before any training.

    Random numbers are drawn in a fixed order from ``random_state``: first
    the validation split, then the seed of torch's generator (which the
    caller has forked), which then initialises the MLP backbone and the head.

    Parameters
    ----------
    estimator : FoundationClassifier or FoundationRegressor
        Its parameters, and its hooks for targets, stratification and class
        weights.
    X : ndarray or dict of ndarray
        The validated training input.
    y : ndarray
        The encoded targets.
    sample_weight : array-like or None
        As passed to ``fit``.
    device : torch.device
        The resolved device.

    Returns
    -------
    FitPlan
    """
    rng = check_random_state(estimator.random_state)
    cache = feature_cache(estimator.cache)  # a bad cache path fails here, before any encoding
    regime = regime_of(estimator.encoder, estimator.freeze_backbone, estimator.unfreeze_at)
    solver = solver_of(estimator, regime)
    val_split = estimator.val_split
    if val_split == "auto":
        val_split = 0 if solver == "lbfgs" else AUTO_VALIDATION_FRACTION
    train, rows, data = _split(estimator, val_split, X, y, rng)
    max_epochs = (
        AUTO_MAX_EPOCHS["lbfgs" if solver == "lbfgs" else "mini-batch"]
        if estimator.max_epochs == "auto"
        else int(estimator.max_epochs)
    )
    _check_settings(estimator, regime, solver, max_epochs)
    targets, validation, mean_weight = _weighted(estimator, y, sample_weight, train, rows, data)
    warn_unused_parameters(estimator, regime, solver, has_validation=bool(validation))
    n_train = len(y) if train is None else len(train)
    if estimator.weight_decay != "auto":
        weight_decay = float(estimator.weight_decay)
    elif solver == "lbfgs":
        weight_decay = estimator._lbfgs_penalty(n_train * mean_weight)
    else:
        weight_decay = 0.0
    check_precision(estimator.precision, device)
    seed_torch(int(rng.randint(np.iinfo(np.int32).max)), device)
    encoder: nn.Module
    if estimator.encoder is None:
        encoder = mlp_backbone(estimator.input_shape_).to(device)
    elif regime == "frozen":
        encoder = estimator.encoder
    else:
        encoder = prepare_encoder(estimator.encoder, trainable=True, device=device)
    needs_blocks = regime != "frozen" and (
        estimator.layer_decay is not None
        or (regime == "gradual_unfreezing" and estimator.unfreeze_mode == "top_down")
    )
    return FitPlan(
        regime=regime,
        solver=solver,
        weight_decay=weight_decay,
        max_epochs=max_epochs,
        n_iter_no_change=_n_iter_no_change(estimator),
        encoder=encoder,
        representation=Representation(estimator.output_key, estimator.pooling),
        device=device,
        cache=cache,
        targets=targets,
        validation=validation,
        blocks=backbone_blocks(encoder) if needs_blocks else None,
        accelerated=estimator.accelerator is not None,
    )


def _n_iter_no_change(estimator: FoundationEstimator) -> int | None:
    """``n_iter_no_change``, or the deprecated ``patience`` when it is given."""
    if estimator.patience == "deprecated":
        return estimator.n_iter_no_change
    default = type(estimator).__dataclass_fields__["n_iter_no_change"].default
    if estimator.n_iter_no_change != default:
        raise ValueError(
            f"patience={estimator.patience!r} and n_iter_no_change="
            f"{estimator.n_iter_no_change!r} were both given; patience is deprecated: "
            "set only n_iter_no_change."
        )
    warnings.warn(
        "patience was deprecated in 0.2 and will be removed in 0.3; use n_iter_no_change "
        f"(and tol) instead: n_iter_no_change={estimator.patience!r} is used now.",
        FutureWarning,
        stacklevel=6,  # _n_iter_no_change, plan_fit, _fit, fit, scikit-learn's wrapper, the caller
    )
    return cast(int | None, estimator.patience)


def _check_settings(
    estimator: FoundationEstimator, regime: Regime, solver: Solver, max_epochs: int
) -> None:
    """Refuse combinations of parameters that cannot work, before any encoding."""
    if solver == "lbfgs":
        if regime != "frozen":
            raise ValueError(
                "solver='lbfgs' trains the head on a frozen backbone's cached features "
                "in one batch; it cannot train the backbone. Use freeze_backbone=True "
                "(with an encoder, the default) without unfreeze_at, or another solver "
                "to fine-tune."
            )
        if estimator.lr_schedule is not None:
            raise ValueError(
                f"solver='lbfgs' does not take lr_schedule={estimator.lr_schedule!r}: L-BFGS "
                "chooses its own steps by line search. Use solver='adamw' with a schedule."
            )
        if estimator.precision == "16":
            raise ValueError(
                "solver='lbfgs' does not take precision='16': its line search cannot "
                "work on a scaled float16 loss. Use precision='bf16' or '32'."
            )
    unfreeze_at = estimator.unfreeze_at
    if regime == "gradual_unfreezing" and unfreeze_at is not None and unfreeze_at >= max_epochs:
        raise ValueError(
            f"unfreeze_at={unfreeze_at} is not below max_epochs={max_epochs}"
            f"{' (auto)' if estimator.max_epochs == 'auto' else ''}: the backbone would "
            "never train. Use unfreeze_at=None "
            "for a frozen backbone."
        )
    task = estimator._task()
    if estimator.scoring != "loss" and estimator.scoring not in SCORES[task]:
        raise ValueError(
            f"scoring={estimator.scoring!r} is not a validation score of "
            f"{type(estimator).__name__} for this y; choose 'loss' or one of "
            f"{sorted(SCORES[task])}."
        )


def check_lengths(X: ModelInput, y: np.ndarray, x_name: str, y_name: str) -> None:
    """Refuse X and y of different numbers of samples."""
    if n_samples(X) != len(y):
        raise ValueError(
            f"{x_name} and {y_name} must have the same number of samples; got "
            f"{n_samples(X)} and {len(y)}."
        )


def _split(
    estimator: FoundationEstimator,
    val_split: Any,
    X: ModelInput,
    y: np.ndarray,
    rng: np.random.RandomState,
) -> tuple[np.ndarray | None, np.ndarray | None, tuple[ModelInput, np.ndarray] | None]:
    """The training rows, the held-out rows and the explicit ``(X_val, y_val)`` of ``val_split``."""
    if isinstance(val_split, tuple):
        if len(val_split) != 2:
            raise ValueError(
                f"val_split as a tuple must be (X_val, y_val); got a tuple of "
                f"{len(val_split)} items."
            )
        try:
            X_val = estimator._validate_X(val_split[0], reset=False)
        except (TypeError, ValueError) as error:  # scikit-learn's messages say "X"
            kind = TypeError if isinstance(error, TypeError) else ValueError
            raise kind(f"val_split's X_val does not match X: {error}") from error
        y_val = estimator._transform_y(val_split[1])
        check_lengths(X_val, y_val, "X_val", "y_val")
        return None, None, (X_val, y_val)
    if not val_split:
        return None, None, None
    n = n_samples(X)
    n_val = ceil(val_split * n)
    if n - n_val < 1:
        raise ValueError(
            f"val_split={val_split} leaves no sample to train on: X has {n} "
            f"sample(s). Pass more data or val_split=0."
        )
    train, rows = train_test_split(
        np.arange(n), test_size=n_val, stratify=estimator._stratify(y, n_val), random_state=rng
    )
    return train, rows, None


def _weighted(
    estimator: FoundationEstimator,
    y: np.ndarray,
    sample_weight: Any,
    train: np.ndarray | None,
    rows: np.ndarray | None,
    data: tuple[ModelInput, np.ndarray] | None,
) -> tuple[Targets, Validation, float]:
    """The loss weight of every row of X, of an explicit validation set, and their scale.

    ``sample_weight`` times ``class_weight``'s, scaled to mean 1 over the
    training rows, so that the learning rate means the same with or
    without weights; the scale (the raw weights' mean over the training
    rows) is returned too, for the penalty of ``weight_decay="auto"``.
    """
    if sample_weight is not None:
        sample_weight = _check_sample_weight(
            sample_weight, np.empty(len(y)), dtype=np.float64, ensure_non_negative=True
        )
    per_class = estimator._class_weight_vector(y, sample_weight)
    weights = np.ones(len(y)) if per_class is None else per_class[y]
    if sample_weight is not None:
        weights = weights * sample_weight
    scale = weights.mean() if train is None else weights[train].mean()
    if not scale > 0:
        raise ValueError(
            "The sample weights of the training rows are all zero; nothing would be "
            "learned. Give some training samples a positive weight."
        )
    targets = (y, (weights / scale).astype(np.float32))
    if data is None:
        return targets, Validation(train=train, rows=rows), float(scale)
    X_val, y_val = data
    val_weights = np.ones(len(y_val)) if per_class is None else per_class[y_val]
    validation = Validation(data=(X_val, y_val, (val_weights / scale).astype(np.float32)))
    return targets, validation, float(scale)
