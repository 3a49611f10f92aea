"""The estimators' parameters, each declared once (see :mod:`._declare`).

The classifier and the regressor add their own fields to
:class:`EstimatorParameters`; :class:`FoundationEmbedder` reuses some of
its declarations through :func:`._declare.like`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from torch import nn

from ._cache import FeatureCache
from ._callbacks import UNFREEZE_MODES
from ._declare import declared, parameter
from ._device import PRECISIONS
from ._heads import HEADS, HeadSpec
from ._metrics import SCORES
from ._optimization import LR_SCHEDULES, SOLVERS, Solver
from ._representation import POOLINGS, Pooling

CacheSetting = bool | str | os.PathLike | FeatureCache


@declared
class EstimatorParameters:
    """The parameters FoundationClassifier and FoundationRegressor share."""

    encoder: nn.Module | None = parameter(
        default=None,
        kw_only=False,
        constraints=[nn.Module, None],
        types="torch.nn.Module or None",
        doc="""
        The backbone. Its ``forward`` receives a batch of X (a dict X is passed
        as keyword arguments) and may return a tensor ``(batch, ...)``, a tuple
        or list (the first element is used) or a mapping such as a Hugging
        Face output (see ``output_key``). The representation size is found by
        running it once on two samples. ``fit`` never changes this object: a
        frozen encoder is shared by reference, a trained one is copied (see
        ``encoder_``). ``None`` builds a small MLP sized from the data
        (flatten, then two ReLU layers of width ``clip(2 * n_features, 32,
        256)``), for training from scratch.
        """,
    )
    freeze_backbone: bool | str = parameter(
        default="auto",
        constraints=["boolean", StrOptions({"auto"})],
        types='bool or "auto"',
        doc="""
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
        """,
    )
    unfreeze_at: int | None = parameter(
        default=None,
        constraints=[Interval(Integral, 0, None, closed="left"), None],
        types="int or None",
        doc="""
        Gradual unfreezing of a frozen backbone: the head trains alone for
        this many epochs, then the backbone trains too, at ``lr *
        backbone_lr_mult`` (Lightning's ``BackboneFinetuning``, ULMFiT).
        While frozen the encoder runs in eval mode without gradients, in
        every batch (features are not cached for these epochs). ``0`` is
        full fine-tuning from the start. Ignored when
        ``freeze_backbone=False`` (the backbone trains from the start).
        Must be below ``max_epochs``.
        """,
    )
    unfreeze_mode: str = parameter(
        default="all",
        constraints=[StrOptions(set(UNFREEZE_MODES))],
        types='{"all", "top_down"}',
        doc="""
        With ``unfreeze_at``: ``"all"`` unfreezes the whole backbone at once;
        ``"top_down"`` unfreezes one block per epoch, the top block first
        (blocks as for ``layer_decay``). Once any block trains, the encoder
        is in train mode.
        """,
    )
    head: HeadSpec = parameter(
        default="linear",
        constraints=[StrOptions(set(HEADS)), nn.Module, callable],
        types='{"linear", "mlp"}, torch.nn.Module or callable',
        doc="""
        ``"linear"``: one linear layer on the representation. ``"mlp"``:
        hidden layers of ``hidden_dims`` with ReLU, ``dropout`` and
        ``batch_norm``, then a linear output layer. Both are initialised
        afresh at every fit with PyTorch's defaults (weights and biases
        uniform in ``±1/sqrt(fan_in)``). A module: a deep copy of it trains
        at each fit, initialised as given; a callable: ``head(width,
        n_outputs)`` builds the module. Either must map ``(batch, width)``
        to ``(batch, n_outputs)``.
        """,
    )
    hidden_dims: Sequence[int] = parameter(
        default=(64, 32),
        constraints=["array-like"],
        types="sequence of int",
        doc="Hidden layer widths of the MLP head.",
    )
    dropout: float = parameter(
        default=0.0,
        constraints=[Interval(Real, 0, 1, closed="left")],
        types="float",
        doc="Dropout after each hidden layer of the MLP head, in [0, 1).",
    )
    batch_norm: bool = parameter(
        default=False,
        constraints=["boolean"],
        types="bool",
        doc="""
        ``"mlp"``: batch norm after each hidden linear layer. ``"linear"``: a
        batch norm without learned scale and shift that standardises the
        representation before the linear layer (MAE's linear-probe recipe).
        """,
    )
    solver: Solver = parameter(
        default="auto",
        constraints=[StrOptions({"auto", *SOLVERS}), callable],
        types='{"auto", "adamw", "adam", "sgd", "lbfgs"} or callable',
        doc="""
        The optimizer; ``solver_`` is the one that ran. ``"auto"``:
        ``"lbfgs"`` for a linear probe (frozen backbone, linear head, no
        attention pooling, ``lr_schedule`` or ``precision="16"``), which then
        solves ``LogisticRegression()``'s problem (``Ridge()``'s for the
        regressor); ``"adamw"`` wherever the backbone or an MLP head trains.
        On CPU, where that problem is exactly theirs (a plain linear head,
        single-label classes without label smoothing, the squared error),
        ``LogisticRegression`` or ``Ridge`` itself fits the head.
        ``"adamw"``, ``"adam"`` and ``"sgd"`` (with ``momentum``) take
        mini-batches of ``batch_size`` at ``lr`` for the head and ``lr *
        backbone_lr_mult`` for a trained backbone; a torch optimizer class
        (or a ``functools.partial`` of one) is called with the parameter
        groups, ``lr`` and, when not 0, ``weight_decay``. ``"lbfgs"``, for a
        frozen backbone only: full-batch L-BFGS on the cached features, as
        ``LogisticRegression``, in one run (one ``history_`` row) of at most
        ``max_epochs`` iterations that stops once no gradient entry exceeds
        ``tol``; ``lr``, ``lr_schedule`` and ``precision="16"`` do not apply.
        """,
    )
    lr: float = parameter(
        default=3e-3,
        constraints=[Interval(Real, 0, None, closed="neither")],
        types="float",
        doc="""
        Learning rate of the head (mini-batch solvers; the L-BFGS probe,
        ``solver_="lbfgs"``, takes its steps by line search and does not use
        it: search ``weight_decay`` there). The default and ``batch_size``'s
        were chosen together by ``benchmarks/scratch_sweep.py``: from scratch
        on five scikit-learn datasets they score as 1e-3 and 32 did, in half
        the time (see :ref:`how they were chosen <lr-batch-size-sweep>`).
        """,
    )
    backbone_lr_mult: float = parameter(
        default=0.1,
        constraints=[Interval(Real, 0, None, closed="left")],
        types="float",
        doc="""
        The backbone's learning rate as a fraction of ``lr``: the optimizer
        has two parameter groups, backbone at ``lr * backbone_lr_mult`` and
        head at ``lr``. Unused when the backbone is frozen. Backbone
        parameters whose ``requires_grad`` is False stay fixed.
        """,
    )
    layer_decay: float | None = parameter(
        default=None,
        constraints=[Interval(Real, 0, 1, closed="right"), None],
        types="float or None",
        doc="""
        Layer-wise learning-rate decay for a trained backbone (BEiT and MAE
        fine-tuning): the backbone's blocks get one parameter group each,
        the top block at ``lr * backbone_lr_mult`` and each block below at
        the rate of the block above times ``layer_decay``, in (0, 1]. The
        blocks are the children of the encoder's largest ``nn.ModuleList``
        or ``nn.Sequential`` (a transformer's layers), with what comes
        before it (embeddings) as the bottom block and what comes after (a
        final norm, a pooler) as the top block; an encoder without one is
        an error. Unused when the backbone is frozen.
        """,
    )
    weight_decay: float | str = parameter(
        default="auto",
        constraints=[Interval(Real, 0, None, closed="left"), StrOptions({"auto"})],
        types='float or "auto"',
        doc="""
        Mini-batch solvers: the optimizer's weight decay (decoupled for
        AdamW); ``"auto"`` is 0. ``solver="lbfgs"``: an L2 penalty
        ``weight_decay / 2 * ||W||^2`` on the head's weight matrices added to
        the mean loss, ``LogisticRegression``'s ``C = 1 / (weight_decay *
        n_train)`` (twice that for two classes); ``"auto"`` is ``C=1.0`` (the
        regressor: ``Ridge(alpha=1.0)``), i.e. ``1 / n_train``, ``2 /
        n_train`` for two classes, ``1 / (n_train * n_labels)`` for
        multilabel y, ``2 / (n_train * n_targets)`` for the regressor.
        With sample or class weights ``n_train`` is their sum over the
        training rows, as in scikit-learn's weighted objectives.
        """,
    )
    momentum: float = parameter(
        default=0.9,
        constraints=[Interval(Real, 0, 1, closed="both")],
        types="float",
        doc='Momentum of ``solver="sgd"``, in [0, 1].',
    )
    lr_schedule: str | None = parameter(
        default=None,
        constraints=[StrOptions(set(LR_SCHEDULES)), None],
        types='{"cosine", "warmup_cosine", "step", "plateau"} or None',
        doc="""
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
        """,
    )
    warmup_epochs: float = parameter(
        default=1,
        constraints=[Interval(Real, 0, None, closed="left")],
        types="float",
        doc="""
        Length of the warmup of ``lr_schedule="warmup_cosine"``, in epochs
        (fractions allowed).
        """,
    )
    max_grad_norm: float | None = parameter(
        default=None,
        constraints=[Interval(Real, 0, None, closed="neither"), None],
        types="float or None",
        doc="Clip the gradients' global norm to this value before each step.",
    )
    precision: str = parameter(
        default="32",
        constraints=[StrOptions(set(PRECISIONS))],
        types='{"32", "bf16", "16"}',
        doc="""
        ``"bf16"`` and ``"16"`` run forward passes (frozen encoding,
        training and prediction) under autocast in bfloat16 or float16,
        where the device supports it; ``"16"`` also scales the loss
        (``GradScaler``) when training. Losses, metrics and predictions are
        float32.
        """,
    )
    max_epochs: int | str = parameter(
        default="auto",
        constraints=[Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        types='int or "auto"',
        doc="""
        The most passes over the training data (for ``solver="lbfgs"``, the
        most L-BFGS iterations, as ``LogisticRegression``'s ``max_iter``).
        ``"auto"``: the cap of the scikit-learn estimator the solver stands
        in for, 100 for the L-BFGS probe (``LogisticRegression``) and 200
        for mini-batch solvers (``MLPClassifier``). Training usually ends
        earlier (see ``tol``); when it ends here instead, a
        ``ConvergenceWarning`` says so.
        """,
    )
    tol: float = parameter(
        default=1e-4,
        constraints=[Interval(Real, 0, None, closed="left")],
        types="float",
        doc="""
        Tolerance for the optimization, as in ``MLPClassifier``: an epoch
        improves on the best so far when the monitored value (see
        ``n_iter_no_change``) is better by more than ``tol``. For
        ``solver="lbfgs"``, L-BFGS stops once no gradient entry exceeds
        ``tol`` (``LogisticRegression``'s rule), or once the loss stops
        changing (scipy's and torch's own rule, as in ``LogisticRegression``).
        """,
    )
    n_iter_no_change: int | None = parameter(
        default=10,
        constraints=[Interval(Integral, 1, None, closed="left"), None],
        types="int or None",
        doc="""
        Stop when this many epochs in a row have not improved by more than
        ``tol``: the rule of ``MLPClassifier`` and ``SGDClassifier``, counted
        as ``SGDClassifier`` counts (the ``n_iter_no_change``-th such epoch is
        the last; ``MLPClassifier`` runs one more). The monitored value is
        ``scoring`` on the validation data when there is validation data,
        the training loss otherwise. An epoch whose score is undefined
        (NaN, e.g. ROC AUC on a validation set of one class) neither counts
        towards this nor can be the best; a warning says so once. ``None``
        trains for exactly ``max_epochs`` (no early stopping, no
        ``ConvergenceWarning``). Mini-batch solvers only.
        """,
    )
    batch_size: int = parameter(
        default=64,
        constraints=[Interval(Integral, 1, None, closed="left")],
        types="int",
        doc="""
        Training batch size (mini-batch solvers; chosen with ``lr``). When
        the last training batch would hold a single sample it is dropped
        (shuffling changes which sample each epoch), so batch norm in train
        mode never sees a batch of one.
        """,
    )
    inference_batch_size: int | None = parameter(
        default=None,
        constraints=[Interval(Integral, 1, None, closed="left"), None],
        types="int or None",
        doc="""
        Batch size of every pass without gradients: encoding X with a frozen
        backbone, validation and prediction. ``None`` uses ``batch_size``.
        Raise it on a GPU; on a CPU larger batches are not always faster
        (all-MiniLM-L6-v2 encodes faster in batches of 32 than of 256 on two
        cores).
        """,
    )
    val_split: float | tuple | str | None = parameter(
        default="auto",
        constraints=[Interval(Real, 0, 1, closed="left"), tuple, StrOptions({"auto"}), None],
        types='float, (X_val, y_val), "auto" or None',
        doc="""
        Held-out data scored after every epoch (the loss and every
        validation score in ``history_``), which picks the best epoch and
        drives ``n_iter_no_change``. A float in (0, 1) holds out that
        fraction of X, stratified by class for classifiers when every class
        has at least two samples; ``0`` or ``None`` trains on all of X; a
        tuple gives the validation data explicitly. The held-out fraction
        is not trained on. ``"auto"``: none for ``solver="lbfgs"`` (as
        ``LogisticRegression``, it trains on all of X), 0.1 otherwise
        (``MLPClassifier``'s ``validation_fraction``).
        """,
    )
    scoring: str = parameter(
        default="loss",
        constraints=[StrOptions({"loss"} | {name for task in SCORES.values() for name in task})],
        types="str",
        doc="""
        The validation score that picks the best epoch (``restore_best_weights``)
        and drives ``n_iter_no_change``: ``"loss"`` (the weighted validation
        loss, lower is better) or a score recorded in ``history_`` as
        ``valid_<scoring>`` (see the ``history_`` attribute). A fit without
        validation data (``val_split=0``, or ``"auto"`` for the L-BFGS probe)
        has no epoch to pick: a score other than ``"loss"`` then warns that
        it has no effect.
        """,
    )
    patience: int | str | None = parameter(
        default="deprecated",
        constraints=[Interval(Integral, 1, None, closed="left"), None, StrOptions({"deprecated"})],
        types='int, None or "deprecated"',
        doc="""
        Deprecated in 0.2, removed in 0.3: use ``n_iter_no_change`` (and
        ``tol``). When given, it takes the place of ``n_iter_no_change``,
        with a ``FutureWarning``.
        """,
    )
    restore_best_weights: bool = parameter(
        default=True,
        constraints=["boolean"],
        types="bool",
        doc="""
        With validation data, end training with the weights of the epoch
        whose ``scoring`` was best (``best_epoch_``) instead of the last
        epoch's. They are kept in memory as a copy of the trained weights.
        Without validation data the last epoch's weights are kept.
        """,
    )
    output_key: str | None = parameter(
        default=None,
        constraints=[str, None],
        types="str or None",
        doc="""
        Which entry of a mapping output holds the representation. ``None``
        takes the first of ``"feature"``, ``"features"``,
        ``"last_hidden_state"`` and ``"pooler_output"`` that is present and
        not None: for a Hugging Face model, the last hidden state, pooled
        as ``pooling`` says (BERT's ``pooler_output`` was trained for
        next-sentence prediction; sentence-transformers mean-pool instead).
        """,
    )
    pooling: Pooling = parameter(
        default="mean",
        constraints=[StrOptions(set(POOLINGS)), callable],
        types='{"mean", "max", "cls", "flatten", "attention"} or callable',
        doc="""
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
        """,
    )
    cache: CacheSetting = parameter(
        default=True,
        constraints=["boolean", str, os.PathLike, FeatureCache],
        types="bool, str, path-like or FeatureCache",
        doc="""
        Where a frozen backbone's features are kept between fits, predictions
        and transforms, keyed by the encoder's content and each sample's
        content, so that in a whole GridSearchCV or cross_val_score each
        unique sample is encoded once. ``True``: the process-wide in-memory
        :meth:`FeatureCache.default` (1 GiB bound, least recently used
        dropped first). A directory path: also on disk, shared by joblib
        workers and later processes (see :class:`FeatureCache`). A
        ``FeatureCache``: that one; ``FeatureCache(directory,
        share_encoders=True)`` also sends the encoder to each worker process
        once, through the directory, instead of with every task of a
        search. ``False``: nothing is kept, but a
        frozen backbone still encodes X once per call. The choice changes
        speed, never results.
        """,
    )
    callbacks: list | None = parameter(
        default=None,
        constraints=[list, None],
        types="list of skorch callbacks or None",
        doc="""
        More skorch callbacks (or ``(name, callback)`` pairs), run after the
        estimator's own (validation scores, best-epoch tracking, schedule,
        unfreezing). They are copied at each fit, so the objects given are
        not changed; the fitted ones are in ``net_.callbacks_``.
        """,
    )
    device: str | torch.device = parameter(
        default="auto",
        constraints=[str, torch.device],
        types="str or torch.device",
        doc="""
        ``"auto"`` picks CUDA, then MPS, then the CPU. A device that is not
        available falls back to the CPU with a warning.
        """,
    )
    accelerator: Any = parameter(
        default=None,
        constraints=[HasMethods(["prepare", "unwrap_model", "backward"]), None],
        types="accelerate.Accelerator or None",
        doc="""
        Train on several processes or devices through Hugging Face
        accelerate (``pip install sklearn-finetune[accelerate]``), run as
        ``accelerate launch --num_processes N script.py``: the model is
        wrapped in DistributedDataParallel, each training batch is split
        across the processes (``Accelerator(split_batches=True)`` keeps
        ``batch_size`` the batch of one step; otherwise each process takes
        ``batch_size`` rows), gradients are averaged, and training's mixed
        precision is the accelerator's ``mixed_precision``. Only a backbone
        trained from the first epoch (``freeze_backbone=False``,
        ``encoder=None``, or ``unfreeze_at=0`` with ``unfreeze_mode="all"``)
        is trained this way; a frozen backbone and gradual unfreezing are
        refused. ``device`` must be
        ``"auto"`` (the accelerator's device is used), ``precision``
        ``"32"`` or the accelerator's own, and ``random_state`` an int when
        there are several processes. Validation runs whole in every
        process. After training the model is unwrapped: the fitted
        estimator predicts in one process, pickles (without the
        accelerator) and saves (:func:`save_estimator` writes on the main
        process only). Shared, not copied, by ``clone``. Read more in the
        :ref:`User Guide <accelerator>`.
        """,
    )
    random_state: int | np.random.RandomState | None = parameter(
        default=None,
        constraints=["random_state"],
        types="int, RandomState instance or None",
        doc="""
        Seeds the validation split, the head's initialisation, shuffling and
        dropout. Torch's global random state is left as it was. With an int,
        two fits on the CPU give identical predictions.
        """,
    )
    verbose: int = parameter(
        default=0,
        constraints=["verbose"],
        types="int",
        doc="""
        ``1`` prints skorch's per-epoch table while training; ``2`` also
        shows progress bars (tqdm) over encoding and over the batches of each
        epoch.
        """,
    )
