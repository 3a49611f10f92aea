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
from skorch.dataset import Dataset
from skorch.helper import predefined_split
from skorch.utils import multi_indexing, to_tensor
from sklearn.base import BaseEstimator, _fit_context, clone
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted
from torch import nn
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import Subset

from ._batches import feature_batches
from ._cache import FeatureCache
from ._device import resolve_device
from ._embedding import cache_key, embed
from ._encoder import preserved_modes, prepare_encoder
from ._heads import HEADS, build_head, mlp_backbone
from ._module import FoundationModule, representation_size
from ._representation import POOLINGS, Pooling, Representation
from ._validation import ModelInput, n_samples, validate_X

SOLVERS = ("adamw", "lbfgs")

#: L-BFGS iterations per epoch with ``solver="lbfgs"`` (torch's default ``max_iter``).
LBFGS_ITERATIONS = 20

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

    head : {"linear", "mlp"}, default="linear"
        ``"linear"``: one linear layer on the representation. ``"mlp"``:
        hidden layers of ``hidden_dims`` with ReLU and ``dropout``, then a
        linear output layer. A new head is initialised at every fit.

    hidden_dims : sequence of int, default=(64, 32)
        Hidden layer widths of the MLP head.

    dropout : float, default=0.0
        Dropout after each hidden layer of the MLP head, in [0, 1).

    solver : {"adamw", "lbfgs"}, default="adamw"
        ``"adamw"``: mini-batch AdamW, at ``lr`` for the head and ``lr *
        backbone_lr_mult`` for a trained backbone, in batches of
        ``batch_size``, with decoupled ``weight_decay``. ``"lbfgs"``, for a
        frozen backbone only: full-batch L-BFGS with a strong-Wolfe line
        search on all the cached features at once, the exact solver
        ``LogisticRegression`` uses; each epoch is one L-BFGS step of up to
        20 iterations, ``weight_decay`` is an L2 penalty ``weight_decay / 2 *
        ||W||^2`` on the head's weight matrices added to the mean loss
        (``LogisticRegression``'s ``C`` is ``1 / (weight_decay * n_train)``,
        and ``2 / (weight_decay * n_train)`` for two classes, whose softmax
        splits the weights into halves), and ``lr`` and ``batch_size`` do not
        apply.

    lr : float, default=1e-3
        Learning rate of the head (AdamW).

    backbone_lr_mult : float, default=0.1
        The backbone's learning rate as a fraction of ``lr``: the optimizer
        has two parameter groups, backbone at ``lr * backbone_lr_mult`` and
        head at ``lr``. Unused when the backbone is frozen. Backbone
        parameters whose ``requires_grad`` is False stay fixed.

    weight_decay : float, default=0.0
        AdamW's decoupled weight decay, for both groups; with
        ``solver="lbfgs"``, the strength of an L2 penalty (see ``solver``).

    max_epochs : int, default=30
        Number of passes over the training data.

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
        Held-out data scored after every epoch (loss and the default score
        in ``history_``). A float in (0, 1) holds out that fraction of X,
        stratified by class for classifiers when every class has at least
        two samples; ``0`` or ``None`` trains on all of X; a tuple gives the
        validation data explicitly. The held-out fraction is not trained on.

    output_key : str or None, default=None
        Which entry of a mapping output holds the representation. ``None``
        takes the first of ``"feature"``, ``"features"``, ``"pooler_output"``
        and ``"last_hidden_state"`` that is present and not None.

    pooling : {"mean", "max", "cls", "flatten"} or callable, default="mean"
        How an output with more than two axes becomes ``(batch, features)``.
        3-D outputs are read as ``(batch, tokens, features)`` and 4-D+ as
        channels-first ``(batch, channels, *spatial)``: ``"mean"`` and
        ``"max"`` reduce over the tokens or the spatial axes, ``"cls"`` takes
        the first token, ``"flatten"`` keeps everything. A callable (defined
        at module level, so the estimator pickles) gets the tensor and
        returns ``(batch, features)``. 2-D outputs pass through.

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

    device : str or torch.device, default="auto"
        ``"auto"`` picks CUDA, then MPS, then the CPU. A device that is not
        available falls back to the CPU with a warning.

    random_state : int, RandomState instance or None, default=None
        Seeds the validation split, the head's initialisation, shuffling and
        dropout. Torch's global random state is left as it was. With an int,
        two fits on the CPU give identical predictions.

    verbose : int, default=0
        ``> 0`` prints skorch's per-epoch table."""


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
        "head": [StrOptions(set(HEADS))],
        "hidden_dims": ["array-like"],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "solver": [StrOptions(set(SOLVERS))],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "backbone_lr_mult": [Interval(Real, 0, None, closed="left")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "inference_batch_size": [Interval(Integral, 1, None, closed="left"), None],
        "val_split": [Interval(Real, 0, 1, closed="left"), tuple, None],
        "output_key": [str, None],
        "pooling": [StrOptions(set(POOLINGS)), callable],
        "cache": ["boolean", str, os.PathLike, FeatureCache],
        "device": [str, torch.device],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    # Set by the subclasses.
    _net_class: ClassVar[type]
    _criterion: ClassVar[type[nn.Module]]

    def __init__(
        self,
        encoder: nn.Module | None = None,
        *,
        freeze_backbone: bool | str = "auto",
        head: str = "linear",
        hidden_dims: Sequence[int] = (64, 32),
        dropout: float = 0.0,
        solver: str = "adamw",
        lr: float = 1e-3,
        backbone_lr_mult: float = 0.1,
        weight_decay: float = 0.0,
        max_epochs: int = 30,
        batch_size: int = 32,
        inference_batch_size: int | None = None,
        val_split: float | tuple | None = 0.2,
        output_key: str | None = None,
        pooling: Pooling = "mean",
        cache: bool | str | os.PathLike | FeatureCache = True,
        device: str | torch.device = "auto",
        random_state: int | np.random.RandomState | None = None,
        verbose: int = 0,
    ) -> None:
        self.encoder = encoder
        self.freeze_backbone = freeze_backbone
        self.head = head
        self.hidden_dims = hidden_dims
        self.dropout = dropout
        self.solver = solver
        self.lr = lr
        self.backbone_lr_mult = backbone_lr_mult
        self.weight_decay = weight_decay
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.inference_batch_size = inference_batch_size
        self.val_split = val_split
        self.output_key = output_key
        self.pooling = pooling
        self.cache = cache
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # Hooks for the subclasses ------------------------------------------------

    def _validate_y(self, y: Any) -> np.ndarray:
        """Check y, learn what predict needs to undo (classes, scale), return the training target."""
        raise NotImplementedError

    def _transform_y(self, y: Any) -> np.ndarray:
        """Turn more targets (the validation set's) into the training encoding."""
        raise NotImplementedError

    def _n_outputs(self) -> int:
        raise NotImplementedError

    def _stratify(self, y: np.ndarray, n_val: int) -> np.ndarray | None:
        return None

    def _callbacks(self) -> list:
        return []

    # Fitting -----------------------------------------------------------------

    def _is_frozen(self) -> bool:
        if self.freeze_backbone == "auto":
            return self.encoder is not None
        return bool(self.freeze_backbone)

    def _validate_X(self, X: Any, *, reset: bool) -> ModelInput:
        return validate_X(self, X, reset=reset, for_mlp=self.encoder is None)

    def _feature_cache(self) -> FeatureCache | None:
        if isinstance(self.cache, FeatureCache):
            return self.cache
        if isinstance(self.cache, (str, os.PathLike)):
            return FeatureCache.at(self.cache)  # refuses a path that is not a directory
        return FeatureCache.default() if self.cache else None

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

    def _inference_batch_size(self) -> int:
        return self.batch_size if self.inference_batch_size is None else self.inference_batch_size

    def _build_head(self, width: int, device: torch.device) -> nn.Module:
        return build_head(
            self.head, width, self._n_outputs(), hidden_dims=self.hidden_dims, dropout=self.dropout
        ).to(device)

    def _optimizer_settings(self, n_train: int) -> dict[str, Any]:
        """The skorch net settings that depend on ``solver``."""
        if self.solver == "lbfgs":
            return dict(
                optimizer=torch.optim.LBFGS,
                optimizer__lr=1.0,
                optimizer__max_iter=LBFGS_ITERATIONS,
                optimizer__line_search_fn="strong_wolfe",
                l2_penalty=self.weight_decay,
                batch_size=-1,  # skorch: the whole training set in one batch
                iterator_train__shuffle=False,
            )
        return dict(
            optimizer=torch.optim.AdamW,
            lr=self.lr,
            optimizer__weight_decay=self.weight_decay,
            batch_size=self.batch_size,
            iterator_train__shuffle=True,
            iterator_train__drop_last=n_train > 1 and n_train % self.batch_size == 1,
        )

    def _build_net(self, module: nn.Module, n_train: int, device: torch.device, **kwargs: Any) -> Any:
        """The skorch net for ``module``; ``kwargs`` add to or override its settings."""
        settings = dict(
            module=module,
            criterion=self._criterion,
            max_epochs=self.max_epochs,
            iterator_valid__batch_size=self._inference_batch_size(),
            callbacks=self._callbacks(),
            device=device,
            verbose=self.verbose,
            **self._optimizer_settings(n_train),
        )
        return self._net_class(**{**settings, **kwargs})

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
        )
        return torch.as_tensor(features, device=device)

    def _fit_on_features(
        self, X: ModelInput, y: np.ndarray, train: Any, valid: Any, device: torch.device
    ) -> tuple[FoundationModule, Any]:
        """Frozen backbone: encode X once (through the cache), then train the head on the features."""
        if self.encoder is None:
            encoder = mlp_backbone(self.input_shape_).to(device)
        else:
            encoder = self.encoder
        representation = Representation(self.output_key, self.pooling)
        cache = self._feature_cache()
        key = None if cache is None else cache_key(encoder, representation, device)
        features = self._embed(encoder, representation, X, device, cache, key)
        targets = torch.as_tensor(y, device=device)
        train_split = None
        if isinstance(valid, tuple):
            X_val = self._embed(encoder, representation, valid[0], device, cache, key)
            train_split = predefined_split(Dataset(X_val, torch.as_tensor(valid[1], device=device)))
        elif valid is not None:
            train_split = predefined_split(Dataset(features[valid], targets[valid]))
            features, targets = features[train], targets[train]
        head = self._build_head(features.shape[1], device)
        net = self._build_net(
            head,
            len(features),
            device,
            train_split=train_split,
            iterator_train=feature_batches,
            iterator_valid=feature_batches,
            iterator_valid__batch_size=FEATURE_BATCH_SIZE,
        )
        net.fit(features, targets)
        return FoundationModule(encoder, representation, head, frozen=True), net

    def _fit_end_to_end(
        self, X: ModelInput, y: np.ndarray, train: Any, valid: Any, device: torch.device
    ) -> tuple[FoundationModule, Any]:
        """Trained backbone: every batch runs through the encoder and the head."""
        if self.encoder is None:
            encoder = mlp_backbone(self.input_shape_).to(device)
        else:
            encoder = prepare_encoder(self.encoder, trainable=True, device=device)
        representation = Representation(self.output_key, self.pooling)
        width = representation_size(
            encoder, representation, to_tensor(multi_indexing(X, slice(0, 2)), device)
        )
        module = FoundationModule(
            encoder, representation, self._build_head(width, device), frozen=False
        )
        if isinstance(valid, tuple):
            train_split = predefined_split(Dataset(*valid))
        elif valid is not None:
            train_split = partial(_index_split, train=train, valid=valid)
        else:
            train_split = None
        net = self._build_net(
            module,
            n_samples(X) if train is None else len(train),
            device,
            train_split=train_split,
            optimizer__param_groups=[("encoder.*", {"lr": self.lr * self.backbone_lr_mult})],
        )
        net.fit(X, y)
        return module, net

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X: Any, y: Any) -> FoundationEstimator:
        """Train the head (and the backbone unless frozen) on X, y.

        With a frozen backbone X is encoded once, through the feature cache,
        and the head trains on the features; otherwise every batch runs
        through the encoder.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...), DataFrame, torch.Tensor or dict
            Training input; a dict maps the encoder's keyword arguments to
            arrays of n_samples rows.
        y : array-like of shape (n_samples,) or (n_samples, n_targets)
            Class labels (classifier) or targets (regressor).

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
        if self.solver == "lbfgs" and not self._is_frozen():
            raise ValueError(
                "solver='lbfgs' trains the head on a frozen backbone's cached features in "
                "one batch; it cannot train the backbone. Use freeze_backbone=True (with "
                "an encoder, the default), or solver='adamw' to fine-tune."
            )
        rng = check_random_state(self.random_state)
        self._feature_cache()  # a bad cache path fails here, before any encoding
        train, valid = self._split(X, y, rng)
        device = resolve_device(self.device)
        user_encoder = (
            contextlib.nullcontext() if self.encoder is None else preserved_modes(self.encoder)
        )
        rng_devices = [device.index] if device.type == "cuda" else []
        fit_path = self._fit_on_features if self._is_frozen() else self._fit_end_to_end
        with torch.random.fork_rng(devices=rng_devices), user_encoder:
            torch.manual_seed(int(rng.randint(np.iinfo(np.int32).max)))
            module, net = fit_path(X, y, train, valid, device)
            module.eval()
        self.module_ = module
        self.net_ = net
        self.encoder_ = module.encoder
        self.history_ = net.history
        self.device_ = device
        return self

    # Inference ---------------------------------------------------------------

    def _net_predict(self, method: str, X: Any) -> np.ndarray:
        """Validate X and run one of the skorch net's inference methods on it."""
        check_is_fitted(self, "net_")
        X = self._validate_X(X, reset=False)
        if self.module_.frozen:
            features = self._embed(
                self.encoder_, self.module_.representation, X, self.device_, self._feature_cache()
            )
            return getattr(self.net_, method)(features)
        with preserved_modes(self.encoder_):
            return getattr(self.net_, method)(X)

    # scikit-learn protocol ---------------------------------------------------

    def __sklearn_clone__(self) -> FoundationEstimator:
        """An unfitted copy that shares the encoder and cache objects instead of deep-copying them.

        ``fit`` never changes the encoder it is given (a trained backbone is
        copied at fit time), so sharing it is safe, and it saves GridSearchCV
        and cross_val_score a deep copy of a possibly large model per
        candidate and fold. The cache is shared for the same reason a cache
        exists. Every other parameter is cloned as :func:`sklearn.base.clone`
        would.
        """
        params = self.get_params(deep=False)
        shared = {name: params.pop(name) for name in ("encoder", "cache")}
        new = type(self)(**shared, **{k: clone(v, safe=False) for k, v in params.items()})
        if hasattr(self, "_metadata_request"):
            new._metadata_request = copy.deepcopy(self._metadata_request)
        return new

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.input_tags.dict = True
        return tags


def _index_split(
    dataset: TorchDataset, y: Any = None, groups: Any = None, *, train: np.ndarray, valid: np.ndarray
) -> tuple[Subset, Subset]:
    """A skorch ``train_split``: fixed training and validation rows of the dataset."""
    return Subset(dataset, train), Subset(dataset, valid)


def _check_lengths(X: ModelInput, y: np.ndarray, x_name: str, y_name: str) -> None:
    if n_samples(X) != len(y):
        raise ValueError(
            f"{x_name} and {y_name} must have the same number of samples; got "
            f"{n_samples(X)} and {len(y)}."
        )
