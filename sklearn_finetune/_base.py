"""What FoundationClassifier and FoundationRegressor share: parameters, fit, inference, clone."""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Sequence
from functools import partial
from math import ceil
from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np
import torch
from sklearn.base import BaseEstimator, _fit_context, clone
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import _check_sample_weight, check_is_fitted
from skorch.callbacks import EarlyStopping, ProgressBar
from skorch.dataset import Dataset
from skorch.helper import predefined_split
from skorch.utils import multi_indexing, noop, to_tensor
from torch import nn
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import Subset

from ._batches import feature_batches
from ._blocks import UNFREEZE_MODES, BackboneUnfreezing, backbone_blocks
from ._cache import FeatureCache, feature_cache
from ._device import PRECISIONS, check_precision, resolve_device
from ._embedding import cache_key, embed
from ._encoder import prepare_encoder, preserved_modes
from ._heads import HEADS, AttentionPooling, HeadSpec, build_head, mlp_backbone
from ._metrics import SCORES, ValidationScores, greater_is_better
from ._module import FoundationModule, representation_size
from ._net import FoundationNet
from ._optimization import (
    LR_SCHEDULES,
    SOLVERS,
    Solver,
    block_learning_rates,
    schedule_callback,
    solver_settings,
    steps_per_epoch,
)
from ._representation import POOLINGS, Pooling, Representation
from ._validation import ModelInput, n_samples, validate_X

#: Batch size for running the head on cached features at validation and
#: prediction: large enough that per-batch overhead vanishes, small enough to
#: bound an MLP head's activations.
FEATURE_BATCH_SIZE = 4096

SHARED_PARAMETERS = """\
    encoder : torch.nn.Module or None, default=None
        The backbone. Its ``forward`` receives a batch of X (a dict X is passed
        as keyword arguments) and may return a tensor ``(batch, ...)``, a tuple
        or list (the first element is used) or a mapping such as a Hugging
        Face output (see ``output_key``). The representation size is found by
        running it once on two samples. ``fit`` never changes this object: a
        frozen encoder is shared by reference, a trained one is copied (see
        ``encoder_``). ``None`` builds a small MLP sized from the data
        (flatten, then two ReLU layers of width ``clip(2 * n_features, 32,
        256)``), for training from scratch.

    freeze_backbone : bool or "auto", default="auto"
        ``True``: a linear probe (or MLP probe): the backbone gets no gradient,
        is not in the optimizer and runs in eval mode, so neither its weights
        nor its batch-norm statistics change and its dropout is off. X is
        encoded once (in inference mode, through ``cache``) and the head
        trains on the features, which gives the same result as running the
        encoder in every batch at a fraction of the cost. ``False``: full
        fine-tuning of a copy of the backbone at ``lr * backbone_lr_mult``.
        ``"auto"``: frozen when an encoder is given, trained when
        ``encoder=None`` (a frozen random MLP is a random-features baseline:
        ask for it with ``True``).

    unfreeze_at : int or None, default=None
        Gradual unfreezing of a frozen backbone: the head trains alone for
        this many epochs, then the backbone trains too, at ``lr *
        backbone_lr_mult`` (Lightning's ``BackboneFinetuning``, ULMFiT).
        While frozen the encoder runs in eval mode without gradients, in
        every batch (features are not cached for these epochs). ``0`` is
        full fine-tuning from the start. Ignored when
        ``freeze_backbone=False`` (the backbone trains from the start).
        Must be below ``max_epochs``.

    unfreeze_mode : {"all", "top_down"}, default="all"
        With ``unfreeze_at``: ``"all"`` unfreezes the whole backbone at once;
        ``"top_down"`` unfreezes one block per epoch, the top block first
        (blocks as for ``layer_decay``). Once any block trains, the encoder
        is in train mode.

    head : {"linear", "mlp"}, torch.nn.Module or callable, default="linear"
        ``"linear"``: one linear layer on the representation. ``"mlp"``:
        hidden layers of ``hidden_dims`` with ReLU, ``dropout`` and
        ``batch_norm``, then a linear output layer. Both are initialised
        afresh at every fit with PyTorch's defaults (weights and biases
        uniform in ``±1/sqrt(fan_in)``). A module: a deep copy of it trains
        at each fit, initialised as given; a callable: ``head(width,
        n_outputs)`` builds the module. Either must map ``(batch, width)``
        to ``(batch, n_outputs)``.

    hidden_dims : sequence of int, default=(64, 32)
        Hidden layer widths of the MLP head.

    dropout : float, default=0.0
        Dropout after each hidden layer of the MLP head, in [0, 1).

    batch_norm : bool, default=False
        ``"mlp"``: batch norm after each hidden linear layer. ``"linear"``: a
        batch norm without learned scale and shift that standardises the
        representation before the linear layer (MAE's linear-probe recipe).

    solver : {"adamw", "adam", "sgd", "lbfgs"} or callable, default="adamw"
        The optimizer. ``"adamw"``, ``"adam"`` and ``"sgd"`` (with
        ``momentum``) take mini-batches of ``batch_size`` at ``lr`` for the
        head and ``lr * backbone_lr_mult`` for a trained backbone. A torch
        optimizer class, or a ``functools.partial`` of one for more
        arguments, is called with the parameter groups, ``lr`` and, when not
        0, ``weight_decay``. ``"lbfgs"``, for a frozen backbone only:
        full-batch L-BFGS with a strong-Wolfe line search on all the cached
        features at once, the exact solver ``LogisticRegression`` uses; each
        epoch is one L-BFGS step of up to 20 iterations, ``weight_decay`` is
        an L2 penalty ``weight_decay / 2 * ||W||^2`` on the head's weight
        matrices added to the mean loss (``LogisticRegression``'s ``C`` is
        ``1 / (weight_decay * n_train)``, and ``2 / (weight_decay *
        n_train)`` for two classes, whose softmax splits the weights into
        halves), and ``lr``, ``batch_size``, ``lr_schedule`` and
        ``precision="16"`` do not apply.

    lr : float, default=1e-3
        Learning rate of the head.

    backbone_lr_mult : float, default=0.1
        The backbone's learning rate as a fraction of ``lr``: the optimizer
        has two parameter groups, backbone at ``lr * backbone_lr_mult`` and
        head at ``lr``. Unused when the backbone is frozen. Backbone
        parameters whose ``requires_grad`` is False stay fixed.

    layer_decay : float or None, default=None
        Layer-wise learning-rate decay for a trained backbone (BEiT and MAE
        fine-tuning): the backbone's blocks get one parameter group each,
        the top block at ``lr * backbone_lr_mult`` and each block below at
        the rate of the block above times ``layer_decay``, in (0, 1]. The
        blocks are the children of the encoder's largest ``nn.ModuleList``
        or ``nn.Sequential`` (a transformer's layers), with what comes
        before it (embeddings) as the bottom block and what comes after (a
        final norm, a pooler) as the top block; an encoder without one is
        an error. Unused when the backbone is frozen.

    weight_decay : float, default=0.0
        The optimizer's weight decay, for all groups (decoupled for AdamW);
        with ``solver="lbfgs"``, the strength of an L2 penalty (see
        ``solver``).

    momentum : float, default=0.9
        Momentum of ``solver="sgd"``, in [0, 1].

    lr_schedule : {"cosine", "warmup_cosine", "step", "plateau"} or None, default=None
        How the learning rates change during training; every group follows
        the same factor, and ``history_`` records the rate of the first
        group as ``"event_lr"`` (the head's when the backbone is frozen, the
        lowest backbone group's otherwise). ``"cosine"``: cosine decay to 0 over
        ``max_epochs``, updated after every batch. ``"warmup_cosine"``: a
        linear warmup over ``warmup_epochs``, then cosine decay.
        ``"step"``: divided by 10 every ``max_epochs // 3`` epochs.
        ``"plateau"``: divided by 10 when the validation loss (the training
        loss without validation data) has not improved for 2 epochs. For
        other settings pass skorch's ``LRScheduler`` in ``callbacks``.

    warmup_epochs : float, default=1
        Length of the warmup of ``lr_schedule="warmup_cosine"``, in epochs
        (fractions allowed).

    max_grad_norm : float or None, default=None
        Clip the gradients' global norm to this value before each step.

    precision : {"32", "bf16", "16"}, default="32"
        ``"bf16"`` and ``"16"`` run forward passes (frozen encoding,
        training and prediction) under autocast in bfloat16 or float16,
        where the device supports it; ``"16"`` also scales the loss
        (``GradScaler``). Losses, metrics and predictions are float32.

    max_epochs : int, default=30
        Maximum number of passes over the training data (see ``patience``).

    batch_size : int, default=32
        Training batch size. When the last training batch would hold a
        single sample it is dropped (shuffling changes which sample each
        epoch), so batch norm in train mode never sees a batch of one.

    inference_batch_size : int or None, default=None
        Batch size of every pass without gradients: encoding X with a frozen
        backbone, validation and prediction. ``None`` uses ``batch_size``.
        Raise it on a GPU; on a CPU larger batches are not always faster
        (all-MiniLM-L6-v2 encodes faster in batches of 32 than of 256 on two
        cores).

    val_split : float, (X_val, y_val) or None, default=0.2
        Held-out data scored after every epoch (the loss and every
        validation score in ``history_``). A float in (0, 1) holds out that
        fraction of X, stratified by class for classifiers when every class
        has at least two samples; ``0`` or ``None`` trains on all of X; a
        tuple gives the validation data explicitly. The held-out fraction
        is not trained on.

    scoring : str, default="loss"
        The validation score that picks the best epoch (``restore_best_weights``)
        and drives ``patience``: ``"loss"`` (the weighted validation loss,
        lower is better) or a score recorded in ``history_`` as
        ``valid_<scoring>`` (see the ``history_`` attribute).

    patience : int or None, default=None
        Early stopping: stop when ``scoring`` has not improved (by a relative
        1e-4) for this many epochs. Needs validation data. ``None`` trains
        for ``max_epochs``.

    restore_best_weights : bool, default=True
        With validation data, end training with the weights of the epoch
        whose ``scoring`` was best (``best_epoch_``) instead of the last
        epoch's. They are kept in memory as a copy of the trained weights.
        Without validation data the last epoch's weights are kept.

    output_key : str or None, default=None
        Which entry of a mapping output holds the representation. ``None``
        takes the first of ``"feature"``, ``"features"``,
        ``"last_hidden_state"`` and ``"pooler_output"`` that is present and
        not None: for a Hugging Face model, the last hidden state, pooled
        as ``pooling`` says (BERT's ``pooler_output`` was trained for
        next-sentence prediction; sentence-transformers mean-pool instead).

    pooling : {"mean", "max", "cls", "flatten", "attention"} or callable, default="mean"
        How an output with more than two axes becomes ``(batch, features)``.
        3-D outputs are read as ``(batch, tokens, features)`` and 4-D+ as
        channels-first ``(batch, channels, *spatial)``: ``"mean"`` and
        ``"max"`` reduce over the tokens or the spatial axes, over the real
        tokens only when X is a dict with an ``attention_mask`` (a
        tokenizer's output, see :class:`Tokenizer`); ``"cls"`` takes the
        first token, ``"flatten"`` keeps everything. ``"attention"`` is
        learned: the head starts with an attention pooling over the real
        tokens (or spatial positions), trained with it; a frozen backbone
        then caches every token's features, ``tokens`` times the memory of
        a pooled representation. A callable (defined at module level, so
        the estimator pickles) gets the tensor and returns ``(batch,
        features)``. 2-D outputs pass through.

    cache : bool, str, path-like or FeatureCache, default=True
        Where a frozen backbone's features are kept between fits and
        predictions, keyed by the encoder's content and each sample's
        content, so that in a whole GridSearchCV or cross_val_score each
        unique sample is encoded once. ``True``: the process-wide in-memory
        :meth:`FeatureCache.default` (1 GiB bound, least recently used
        dropped first). A directory path: also on disk, shared by joblib
        workers and later processes (see :class:`FeatureCache`). A
        ``FeatureCache``: that one. ``False``: nothing is kept, but a
        frozen backbone still encodes X once per ``fit`` or ``predict``. The
        choice changes speed, never results.

    callbacks : list of skorch callbacks or None, default=None
        More skorch callbacks (or ``(name, callback)`` pairs), run after the
        estimator's own (validation scores, best-epoch tracking, schedule,
        unfreezing). They are copied at each fit, so the objects given are
        not changed; the fitted ones are in ``net_.callbacks_``.

    device : str or torch.device, default="auto"
        ``"auto"`` picks CUDA, then MPS, then the CPU. A device that is not
        available falls back to the CPU with a warning.

    random_state : int, RandomState instance or None, default=None
        Seeds the validation split, the head's initialisation, shuffling and
        dropout. Torch's global random state is left as it was. With an int,
        two fits on the CPU give identical predictions.

    verbose : int, default=0
        ``1`` prints skorch's per-epoch table; ``2`` also shows progress bars
        (tqdm) over encoding and over the batches of each epoch."""


SHARED_ATTRIBUTES = """\
    module_ : FoundationModule
        The whole model as one ``nn.Module``: ``encoder``, ``representation``
        (output selection and pooling) and ``head``. When the backbone is
        frozen, its encoder stays where it was given (features were computed
        on ``device_``).
    encoder_ : torch.nn.Module
        The backbone used: the ``encoder`` object itself when frozen on its
        own device, otherwise the trained copy.
    device_ : torch.device
        The device training ran on.
    best_epoch_ : int or None
        The epoch (as numbered in ``history_``) with the best validation
        ``scoring``; its weights are the fitted ones when
        ``restore_best_weights``. None without validation data, or when the
        score never improved (e.g. NaN throughout).
    input_shape_ : tuple or dict
        The shape of one training sample (a dict of shapes for dict input).
    n_features_in_ : int
        Number of features, for 2-D X only.
    feature_names_in_ : ndarray of str
        Column names, when X was a DataFrame with string column names."""


def with_shared_docs(cls: type) -> type:
    """Fill ``{shared_parameters}`` and ``{shared_attributes}`` in ``cls``'s docstring."""
    if cls.__doc__:  # None under python -OO
        cls.__doc__ = cls.__doc__.replace("    {shared_parameters}", SHARED_PARAMETERS).replace(
            "    {shared_attributes}", SHARED_ATTRIBUTES
        )
    return cls


class FoundationEstimator(BaseEstimator):
    """Base class of the estimators: use FoundationClassifier or FoundationRegressor."""

    _parameter_constraints: ClassVar[dict[str, list]] = {
        "encoder": [nn.Module, None],
        "freeze_backbone": ["boolean", StrOptions({"auto"})],
        "unfreeze_at": [Interval(Integral, 0, None, closed="left"), None],
        "unfreeze_mode": [StrOptions(set(UNFREEZE_MODES))],
        "head": [StrOptions(set(HEADS)), nn.Module, callable],
        "hidden_dims": ["array-like"],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "batch_norm": ["boolean"],
        "solver": [StrOptions(set(SOLVERS)), callable],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "backbone_lr_mult": [Interval(Real, 0, None, closed="left")],
        "layer_decay": [Interval(Real, 0, 1, closed="right"), None],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "momentum": [Interval(Real, 0, 1, closed="both")],
        "lr_schedule": [StrOptions(set(LR_SCHEDULES)), None],
        "warmup_epochs": [Interval(Real, 0, None, closed="left")],
        "max_grad_norm": [Interval(Real, 0, None, closed="neither"), None],
        "precision": [StrOptions(set(PRECISIONS))],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "inference_batch_size": [Interval(Integral, 1, None, closed="left"), None],
        "val_split": [Interval(Real, 0, 1, closed="left"), tuple, None],
        "scoring": [StrOptions({"loss"} | {name for task in SCORES.values() for name in task})],
        "patience": [Interval(Integral, 1, None, closed="left"), None],
        "restore_best_weights": ["boolean"],
        "output_key": [str, None],
        "pooling": [StrOptions(set(POOLINGS)), callable],
        "cache": ["boolean", str, os.PathLike, FeatureCache],
        "callbacks": [list, None],
        "device": [str, torch.device],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        encoder: nn.Module | None = None,
        *,
        freeze_backbone: bool | str = "auto",
        unfreeze_at: int | None = None,
        unfreeze_mode: str = "all",
        head: HeadSpec = "linear",
        hidden_dims: Sequence[int] = (64, 32),
        dropout: float = 0.0,
        batch_norm: bool = False,
        solver: Solver = "adamw",
        lr: float = 1e-3,
        backbone_lr_mult: float = 0.1,
        layer_decay: float | None = None,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        lr_schedule: str | None = None,
        warmup_epochs: float = 1,
        max_grad_norm: float | None = None,
        precision: str = "32",
        max_epochs: int = 30,
        batch_size: int = 32,
        inference_batch_size: int | None = None,
        val_split: float | tuple | None = 0.2,
        scoring: str = "loss",
        patience: int | None = None,
        restore_best_weights: bool = True,
        output_key: str | None = None,
        pooling: Pooling = "mean",
        cache: bool | str | os.PathLike | FeatureCache = True,
        callbacks: list | None = None,
        device: str | torch.device = "auto",
        random_state: int | np.random.RandomState | None = None,
        verbose: int = 0,
    ) -> None:
        self.encoder = encoder
        self.freeze_backbone = freeze_backbone
        self.unfreeze_at = unfreeze_at
        self.unfreeze_mode = unfreeze_mode
        self.head = head
        self.hidden_dims = hidden_dims
        self.dropout = dropout
        self.batch_norm = batch_norm
        self.solver = solver
        self.lr = lr
        self.backbone_lr_mult = backbone_lr_mult
        self.layer_decay = layer_decay
        self.weight_decay = weight_decay
        self.momentum = momentum
        self.lr_schedule = lr_schedule
        self.warmup_epochs = warmup_epochs
        self.max_grad_norm = max_grad_norm
        self.precision = precision
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.inference_batch_size = inference_batch_size
        self.val_split = val_split
        self.scoring = scoring
        self.patience = patience
        self.restore_best_weights = restore_best_weights
        self.output_key = output_key
        self.pooling = pooling
        self.cache = cache
        self.callbacks = callbacks
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # Hooks for the subclasses ------------------------------------------------

    def _criterion(self) -> nn.Module:
        """The loss, one value per sample (see ``_losses``)."""
        raise NotImplementedError

    def _validate_y(self, y: Any) -> np.ndarray:
        """Check y, learn what predict needs to undo (classes, scale), return the training target."""
        raise NotImplementedError

    def _transform_y(self, y: Any) -> np.ndarray:
        """Turn more targets (the validation set's) into the training encoding."""
        raise NotImplementedError

    def _n_outputs(self) -> int:
        raise NotImplementedError

    def _task(self) -> str:
        """Which validation scores apply: a key of ``SCORES``."""
        raise NotImplementedError

    def _class_weight_vector(self, y: np.ndarray) -> np.ndarray | None:
        """The weight of each class from ``class_weight`` and fit's encoded y (None: no weights)."""
        return None

    def _stratify(self, y: np.ndarray, n_val: int) -> np.ndarray | None:
        return None

    def _predict_nonlinearity(self) -> Any:
        """What turns the head's outputs into ``predict_proba``'s (None: nothing)."""
        return None

    def _prediction_of(self, outputs: torch.Tensor) -> np.ndarray:
        """Outputs -> probabilities or original-scale targets, for validation scores."""
        raise NotImplementedError

    def _target_of(self, y: np.ndarray) -> np.ndarray:
        """Encoded targets -> class indices, indicator rows or original-scale targets."""
        return y

    # Fitting -----------------------------------------------------------------

    def _frozen_at_start(self) -> bool:
        if self.freeze_backbone == "auto":
            return self.encoder is not None
        return bool(self.freeze_backbone)

    def _unfreezes(self) -> bool:
        """Whether a backbone that starts frozen trains later (``unfreeze_at``)."""
        return self._frozen_at_start() and self.unfreeze_at is not None

    def _is_frozen(self) -> bool:
        """Frozen for the whole fit: the embed-once path."""
        return self._frozen_at_start() and self.unfreeze_at is None

    def _validate_X(self, X: Any, *, reset: bool) -> ModelInput:
        return validate_X(self, X, reset=reset, for_mlp=self.encoder is None)

    def _feature_cache(self) -> FeatureCache | None:
        return feature_cache(self.cache)

    def _check_settings(self, has_validation: bool) -> None:
        """Refuse combinations of parameters that cannot work, before any encoding."""
        if self.solver == "lbfgs":
            if not self._is_frozen():
                raise ValueError(
                    "solver='lbfgs' trains the head on a frozen backbone's cached features "
                    "in one batch; it cannot train the backbone. Use freeze_backbone=True "
                    "(with an encoder, the default) without unfreeze_at, or another solver "
                    "to fine-tune."
                )
            if self.lr_schedule is not None:
                raise ValueError(
                    f"solver='lbfgs' does not take lr_schedule={self.lr_schedule!r}: L-BFGS "
                    "chooses its own steps by line search. Use solver='adamw' with a schedule."
                )
            if self.precision == "16":
                raise ValueError(
                    "solver='lbfgs' does not take precision='16': its line search cannot "
                    "work on a scaled float16 loss. Use precision='bf16' or '32'."
                )
        if self._unfreezes() and self.unfreeze_at >= self.max_epochs:
            raise ValueError(
                f"unfreeze_at={self.unfreeze_at} is not below max_epochs={self.max_epochs}: "
                "the backbone would never train. Use unfreeze_at=None for a frozen backbone."
            )
        if self.scoring != "loss" and self.scoring not in SCORES[self._task()]:
            raise ValueError(
                f"scoring={self.scoring!r} is not a validation score of {type(self).__name__} "
                f"for this y; choose 'loss' or one of {sorted(SCORES[self._task()])}."
            )
        if self.patience is not None and not has_validation:
            raise ValueError(
                f"patience={self.patience} stops on a validation score, but there is no "
                "validation data: set val_split, or patience=None."
            )

    def _split(
        self, X: ModelInput, y: np.ndarray, rng: np.random.RandomState
    ) -> tuple[np.ndarray | None, np.ndarray | tuple[ModelInput, np.ndarray] | None]:
        """The training rows (None: all) and the validation data for ``val_split``.

        The validation data is None, the held-out rows, or a validated
        ``(X_val, y_val)`` pair. A held-out fraction is kept as row indices,
        as skorch's own ``ValidSplit`` does, so X is never copied for it.
        """
        if isinstance(self.val_split, tuple):
            if len(self.val_split) != 2:
                raise ValueError(
                    f"val_split as a tuple must be (X_val, y_val); got a tuple of "
                    f"{len(self.val_split)} items."
                )
            X_val = self._validate_X(self.val_split[0], reset=False)
            y_val = self._transform_y(self.val_split[1])
            _check_lengths(X_val, y_val, "X_val", "y_val")
            return None, (X_val, y_val)
        if not self.val_split:
            return None, None
        n = n_samples(X)
        n_val = ceil(self.val_split * n)
        if n - n_val < 1:
            raise ValueError(
                f"val_split={self.val_split} leaves no sample to train on: X has {n} "
                f"sample(s). Pass more data or val_split=0."
            )
        return train_test_split(
            np.arange(n), test_size=n_val, stratify=self._stratify(y, n_val), random_state=rng
        )

    def _sample_weights(
        self, y: np.ndarray, sample_weight: Any, train: np.ndarray | None, valid: Any
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The loss weight of every row of X, and of an explicit validation set.

        ``sample_weight`` times ``class_weight``'s, scaled to mean 1 over the
        training rows, so that the learning rate means the same with or
        without weights.
        """
        per_class = self._class_weight_vector(y)
        weights = np.ones(len(y)) if per_class is None else per_class[y]
        if sample_weight is not None:
            weights = weights * _check_sample_weight(
                sample_weight, np.empty(len(y)), dtype=np.float64, ensure_non_negative=True
            )
        scale = weights.mean() if train is None else weights[train].mean()
        if not scale > 0:
            raise ValueError(
                "The sample weights of the training rows are all zero; nothing would be "
                "learned. Give some training samples a positive weight."
            )
        val_weights = None
        if isinstance(valid, tuple):
            y_val = valid[1]
            val_weights = np.ones(len(y_val)) if per_class is None else per_class[y_val]
            val_weights = (val_weights / scale).astype(np.float32)
        return (weights / scale).astype(np.float32), val_weights

    def _inference_batch_size(self) -> int:
        return self.batch_size if self.inference_batch_size is None else self.inference_batch_size

    def _build_head(self, width: int, device: torch.device) -> nn.Module:
        """The head for ``width`` features, after an attention pooling when ``pooling="attention"``."""
        head = build_head(
            self.head,
            width,
            self._n_outputs(),
            hidden_dims=self.hidden_dims,
            dropout=self.dropout,
            batch_norm=self.batch_norm,
        )
        if self.pooling == "attention":
            head = nn.Sequential(AttentionPooling(width), head)
        return head.to(device)

    def _callbacks(self, has_validation: bool, steps: int, blocks: list | None) -> list:
        """The estimator's callbacks, then the user's copies."""
        callbacks: list = []
        if has_validation:
            callbacks.append(
                (
                    "valid_scores",
                    ValidationScores(self._task(), self._prediction_of, self._target_of),
                )
            )
            monitor = "valid_loss" if self.scoring == "loss" else f"valid_{self.scoring}"
            best = EarlyStopping(
                monitor=monitor,
                patience=self.patience,
                lower_is_better=not greater_is_better(self._task(), self.scoring),
                load_best=self.restore_best_weights,
                sink=print if self.verbose else noop,
            )
            callbacks.append(("best_epoch", best))
        if self.lr_schedule is not None:
            schedule = schedule_callback(
                self.lr_schedule,
                max_epochs=self.max_epochs,
                steps=steps,
                warmup_epochs=self.warmup_epochs,
                monitor="valid_loss" if has_validation else "train_loss",
            )
            callbacks.append(("lr_schedule", schedule))
        if self._unfreezes():
            unfreezing = BackboneUnfreezing(self.unfreeze_at, self.unfreeze_mode, blocks)
            callbacks.append(("unfreezing", unfreezing))
        if self.verbose >= 2:
            callbacks.append(("progress", ProgressBar()))
        return callbacks + copy.deepcopy(list(self.callbacks or []))

    def _build_net(
        self,
        module: nn.Module,
        n_train: int,
        device: torch.device,
        has_validation: bool,
        blocks: list | None = None,
        **kwargs: Any,
    ) -> FoundationNet:
        """The skorch net for ``module``; ``kwargs`` add to or override its settings."""
        solver = solver_settings(
            self.solver,
            lr=self.lr,
            weight_decay=self.weight_decay,
            momentum=self.momentum,
            batch_size=self.batch_size,
            n_train=n_train,
        )
        steps = steps_per_epoch(
            n_train, self.batch_size, solver.get("iterator_train__drop_last", False)
        )
        settings = dict(
            module=module,
            criterion=self._criterion(),
            max_epochs=self.max_epochs,
            iterator_valid__batch_size=self._inference_batch_size(),
            callbacks=self._callbacks(has_validation, steps, blocks),
            predict_nonlinearity=self._predict_nonlinearity(),
            max_grad_norm=self.max_grad_norm,
            precision=self.precision,
            device=device,
            verbose=self.verbose,
            **solver,
        )
        return FoundationNet(**{**settings, **kwargs})

    def _embed(
        self,
        encoder: nn.Module,
        representation: Representation,
        X: ModelInput,
        device: torch.device,
        cache: FeatureCache | None,
        key: str | None = None,
    ) -> torch.Tensor:
        features = embed(
            encoder,
            representation,
            X,
            device=device,
            batch_size=self._inference_batch_size(),
            cache=cache,
            key=key,
            precision=self.precision,
            progress=self.verbose >= 2,
        )
        return torch.as_tensor(features, device=device)

    def _fit_on_features(
        self, X: ModelInput, targets: tuple, train: Any, valid: Any, device: torch.device
    ) -> tuple[FoundationModule, FoundationNet]:
        """Frozen backbone: encode X once (through the cache), then train the head on the features."""
        if self.encoder is None:
            encoder = mlp_backbone(self.input_shape_).to(device)
        else:
            encoder = self.encoder
        representation = Representation(self.output_key, self.pooling)
        cache = self._feature_cache()
        key = None if cache is None else cache_key(encoder, representation, device, self.precision)
        features = self._embed(encoder, representation, X, device, cache, key)
        y = [torch.as_tensor(array, device=device) for array in targets]
        train_split = None
        if isinstance(valid, tuple):
            X_val = self._embed(encoder, representation, valid[0], device, cache, key)
            y_val = [torch.as_tensor(array, device=device) for array in valid[1:]]
            train_split = predefined_split(Dataset(X_val, y_val))
        elif valid is not None:
            train_split = predefined_split(Dataset(features[valid], [t[valid] for t in y]))
            features, y = features[train], [t[train] for t in y]
        head = self._build_head(representation.width(features), device)
        net = self._build_net(
            head,
            len(features),
            device,
            has_validation=train_split is not None,
            train_split=train_split,
            iterator_train=feature_batches,
            iterator_valid=feature_batches,
            iterator_valid__batch_size=FEATURE_BATCH_SIZE,
        )
        net.fit(features, y)
        return FoundationModule(encoder, representation, head, frozen=True), net

    def _backbone_groups(self, encoder: nn.Module) -> tuple[list, list | None]:
        """The backbone's optimizer groups, and its blocks when they are needed."""
        needs_blocks = self.layer_decay is not None or (
            self._unfreezes() and self.unfreeze_mode == "top_down"
        )
        blocks = backbone_blocks(encoder) if needs_blocks else None
        backbone_lr = self.lr * self.backbone_lr_mult
        if self.layer_decay is None:
            return [("encoder.*", {"lr": backbone_lr})], blocks
        return block_learning_rates(blocks, backbone_lr, self.layer_decay), blocks

    def _fit_end_to_end(
        self, X: ModelInput, targets: tuple, train: Any, valid: Any, device: torch.device
    ) -> tuple[FoundationModule, FoundationNet]:
        """Trained backbone: every batch runs through the encoder and the head."""
        if self.encoder is None:
            encoder = mlp_backbone(self.input_shape_).to(device)
        else:
            encoder = prepare_encoder(self.encoder, trainable=True, device=device)
        param_groups, blocks = self._backbone_groups(encoder)
        representation = Representation(self.output_key, self.pooling)
        width = representation_size(
            encoder, representation, to_tensor(multi_indexing(X, slice(0, 2)), device)
        )
        module = FoundationModule(
            encoder, representation, self._build_head(width, device), frozen=False
        )
        if isinstance(valid, tuple):
            train_split = predefined_split(Dataset(valid[0], list(valid[1:])))
        elif valid is not None:
            train_split = partial(_index_split, train=train, valid=valid)
        else:
            train_split = None
        net = self._build_net(
            module,
            n_samples(X) if train is None else len(train),
            device,
            has_validation=train_split is not None,
            blocks=blocks,
            train_split=train_split,
            optimizer__param_groups=param_groups,
        )
        net.fit(X, list(targets))
        return module, net

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> FoundationEstimator:
        """Train the head (and the backbone unless frozen) on X, y.

        With a frozen backbone X is encoded once, through the feature cache,
        and the head trains on the features; otherwise every batch runs
        through the encoder.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...), DataFrame, torch.Tensor or dict
            Training input; a dict maps the encoder's keyword arguments to
            arrays of n_samples rows.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Class labels or a multilabel indicator matrix (classifier), or
            targets (regressor).
        sample_weight : array-like of shape (n_samples,) or None, default=None
            Non-negative weight of each sample in the loss (training and
            validation loss), multiplied by ``class_weight``'s. Validation
            scores other than the loss are unweighted.

        Returns
        -------
        self
            The fitted estimator.
        """
        X = self._validate_X(X, reset=True)
        if y is None:
            raise ValueError(
                f"{type(self).__name__} requires y to be passed, but the target y is None."
            )
        y = self._validate_y(y)
        _check_lengths(X, y, "X", "y")
        rng = check_random_state(self.random_state)
        self._feature_cache()  # a bad cache path fails here, before any encoding
        train, valid = self._split(X, y, rng)
        self._check_settings(has_validation=valid is not None)
        weights, val_weights = self._sample_weights(y, sample_weight, train, valid)
        if isinstance(valid, tuple):
            valid = (*valid, val_weights)
        device = resolve_device(self.device)
        check_precision(self.precision, device)
        user_encoder = (
            contextlib.nullcontext() if self.encoder is None else preserved_modes(self.encoder)
        )
        rng_devices = [device.index] if device.type == "cuda" else []
        fit_path = self._fit_on_features if self._is_frozen() else self._fit_end_to_end
        with torch.random.fork_rng(devices=rng_devices), user_encoder:
            torch.manual_seed(int(rng.randint(np.iinfo(np.int32).max)))
            module, net = fit_path(X, (y, weights), train, valid, device)
            module.eval()
        self.module_ = module
        self.net_ = net
        self.encoder_ = module.encoder
        self.history_ = net.history
        self.device_ = device
        best = dict(net.callbacks_).get("best_epoch")
        self.best_epoch_ = None if best is None or not best.best_epoch_ else best.best_epoch_
        return self

    # Inference ---------------------------------------------------------------

    def _net_predict(self, method: str, X: Any) -> np.ndarray:
        """Validate X and run one of the skorch net's inference methods on it.

        Torch's CPU random state is restored afterwards: each DataLoader
        draws a seed from it, and predicting should not change what a
        training loop around it draws next.
        """
        check_is_fitted(self, "net_")
        X = self._validate_X(X, reset=False)
        with torch.random.fork_rng(devices=[]):
            if self.module_.frozen:
                features = self._embed(
                    self.encoder_,
                    self.module_.representation,
                    X,
                    self.device_,
                    self._feature_cache(),
                )
                return getattr(self.net_, method)(features)
            with preserved_modes(self.encoder_):
                return getattr(self.net_, method)(X)

    # scikit-learn protocol ---------------------------------------------------

    def __sklearn_clone__(self) -> FoundationEstimator:
        """An unfitted copy that shares the encoder and cache objects (see :func:`clone_sharing`)."""
        return clone_sharing(self)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.input_tags.dict = True
        return tags


def clone_sharing(estimator: BaseEstimator, shared: tuple[str, ...] = ("encoder", "cache")) -> Any:
    """An unfitted copy of ``estimator`` that shares the ``shared`` parameters' objects.

    ``fit`` never changes the encoder it is given (a trained backbone is
    copied at fit time), so sharing it is safe, and it saves GridSearchCV
    and cross_val_score a deep copy of a possibly large model per candidate
    and fold. The cache is shared for the same reason a cache exists. Every
    other parameter is cloned as :func:`sklearn.base.clone` would, and so
    are metadata requests and the ``set_output`` configuration.
    """
    params = estimator.get_params(deep=False)
    kept = {name: params.pop(name) for name in shared}
    new = type(estimator)(**kept, **{k: clone(v, safe=False) for k, v in params.items()})
    for state in ("_metadata_request", "_sklearn_output_config"):
        if hasattr(estimator, state):
            setattr(new, state, copy.deepcopy(getattr(estimator, state)))
    return new


def _index_split(
    dataset: TorchDataset,
    y: Any = None,
    groups: Any = None,
    *,
    train: np.ndarray,
    valid: np.ndarray,
) -> tuple[Subset, Subset]:
    """A skorch ``train_split``: fixed training and validation rows of the dataset."""
    return Subset(dataset, train), Subset(dataset, valid)


def _check_lengths(X: ModelInput, y: np.ndarray, x_name: str, y_name: str) -> None:
    if n_samples(X) != len(y):
        raise ValueError(
            f"{x_name} and {y_name} must have the same number of samples; got "
            f"{n_samples(X)} and {len(y)}."
        )
