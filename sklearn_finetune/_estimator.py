"""What FoundationClassifier and FoundationRegressor share: fit, inference, scikit-learn protocol.

``fit`` reads in one direction: validate X and y -> plan the fit
(:func:`plan_fit`) -> encode once through the cache (frozen) or not ->
build the head -> train with skorch (:func:`build_net`).
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, _fit_context
from sklearn.utils.validation import check_is_fitted
from torch import nn

from ._accelerate import accelerator_device
from ._batches import WritableSamples, feature_batches
from ._cache import FeatureCache, feature_cache
from ._device import (
    HEAD_THREADS,
    batch_threads,
    forked_random_state,
    resolve_device,
    torch_threads,
)
from ._encoder import clone_sharing, preserved_modes
from ._fit_report import check_finite_loss, warn_if_interrupted, warn_if_not_converged
from ._frozen import FrozenEncoding
from ._heads import AttentionPooling, build_head
from ._inputs import ModelInput, validate_X
from ._module import FoundationModule, probe_encoder
from ._net import FoundationNet, build_net
from ._optimization import backbone_groups
from ._parameters import EstimatorParameters
from ._pickling import TorchPickling
from ._plan import FitPlan, check_lengths, plan_fit, regime_of
from ._probe_solver import LinearSolver
from ._representation import Representation

#: The attributes every fitted estimator has, filled in for
#: ``{shared_attributes}`` in the subclasses' docstrings.
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
    solver_ : str or callable
        The optimizer that trained: ``solver`` with ``"auto"`` resolved.
    n_iter_ : int
        Epochs run (for ``solver_="lbfgs"``, L-BFGS iterations), as
        scikit-learn's iterative estimators report.
    best_epoch_ : int or None
        The epoch (as numbered in ``history_``) with the best validation
        ``scoring``; its weights are the fitted ones when
        ``restore_best_weights``. None without validation data, or when the
        score was undefined (NaN) throughout.
    input_shape_ : tuple or dict
        The shape of one training sample (a dict of shapes for dict input).
    n_features_in_ : int
        Number of features, for 2-D X only.
    feature_names_in_ : ndarray of str
        Column names, when X was a DataFrame with string column names."""

#: Batch size for running the head on cached features at validation and
#: prediction: large enough that per-batch overhead vanishes, small enough to
#: bound an MLP head's activations.
FEATURE_BATCH_SIZE = 4096


def loader_settings(*, frozen: bool, array_input: bool) -> dict[str, Any]:
    """The skorch loader settings of a net: how batches reach the module.

    Cached features (frozen) and an array X (in memory or read from disk)
    are batched by indexing (:func:`feature_batches`), features at
    prediction in batches of ``FEATURE_BATCH_SIZE``; a dict X (a
    tokenizer's output, a dataset of several columns) goes through skorch's
    own loader, sample by sample (copied from a read-only X, see
    :class:`WritableSamples`). ``fit`` and ``load_estimator`` both build nets with it.
    """
    if frozen:
        return dict(
            iterator_train=feature_batches,
            iterator_valid=feature_batches,
            iterator_valid__batch_size=FEATURE_BATCH_SIZE,
        )
    if array_input:
        return dict(iterator_train=feature_batches, iterator_valid=feature_batches)
    return dict(dataset=WritableSamples)


class FoundationEstimator(TorchPickling, EstimatorParameters, BaseEstimator):
    """Base class of the estimators: use FoundationClassifier or FoundationRegressor."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__doc__:  # None under python -OO
            cls.__doc__ = cls.__doc__.replace("    {shared_attributes}", SHARED_ATTRIBUTES)

    # Hooks for the subclasses ------------------------------------------------

    def _criterion(self) -> nn.Module:
        """The loss, one value per sample (see ``_losses``)."""
        raise NotImplementedError

    def _validate_y(self, y: Any) -> np.ndarray:
        """Check y, learn what predict must undo (classes, scale), return the training target."""
        raise NotImplementedError

    def _transform_y(self, y: Any) -> np.ndarray:
        """Turn more targets (the validation set's) into the training encoding."""
        raise NotImplementedError

    def _n_outputs(self) -> int:
        raise NotImplementedError

    def _task(self) -> str:
        """Which validation scores apply: a key of ``SCORES``."""
        raise NotImplementedError

    def _n_loss_terms(self) -> int:
        """Labels or targets the loss is averaged over (1 for single-label classes).

        L-BFGS's gradient tolerance is divided by it, so that each label or
        target is solved to ``tol``, as one ``LogisticRegression`` or
        ``Ridge`` per label would be.
        """
        return 1

    def _lbfgs_penalty(self, total_weight: float) -> float:
        """``weight_decay="auto"`` for L-BFGS: ``LogisticRegression``'s or ``Ridge``'s penalty.

        ``total_weight`` is the sum of the training rows' weights (sample
        weights times class weights; their number when unweighted): the
        penalty that scikit-learn's objective, a weighted sum of losses,
        puts on the head's weighted mean loss.
        """
        raise NotImplementedError

    def _linear_solver(self, plan: FitPlan) -> LinearSolver | None:
        """scikit-learn's solver for the plain linear probe's objective (None: torch's L-BFGS)."""
        return None

    def _class_weight_vector(
        self, y: np.ndarray, sample_weight: np.ndarray | None
    ) -> np.ndarray | None:
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

    # Pieces of a fit ---------------------------------------------------------

    def _validate_X(self, X: Any, *, reset: bool) -> ModelInput:
        return validate_X(self, X, reset=reset, for_mlp=self.encoder is None)

    def _inference_batch_size(self) -> int:
        return self.batch_size if self.inference_batch_size is None else self.inference_batch_size

    def _frozen_encoding(
        self,
        encoder: nn.Module,
        representation: Representation,
        device: torch.device,
        cache: FeatureCache | None,
    ) -> FrozenEncoding:
        return FrozenEncoding(
            encoder,
            representation,
            device,
            batch_size=self._inference_batch_size(),
            cache=cache,
            precision=self.precision,
            progress=self.verbose >= 2,
        )

    def _build_head(self, width: int, device: torch.device) -> nn.Module:
        """The head for ``width`` features, after attention pooling if ``pooling="attention"``."""
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

    def _fit_head_on_features(
        self, plan: FitPlan, X: ModelInput
    ) -> tuple[FoundationModule, FoundationNet]:
        """Frozen backbone: encode X once (through the cache), then train the head on features."""
        encoding = self._frozen_encoding(plan.encoder, plan.representation, plan.device, plan.cache)
        features = torch.as_tensor(encoding.features(X), device=plan.device)
        targets = [torch.as_tensor(array, device=plan.device) for array in plan.targets]
        features, targets, train_split = plan.validation.split_features(
            features, targets, encoding.features
        )
        head = self._build_head(plan.representation.width(features), plan.device)
        net = build_net(
            self,
            plan,
            head,
            train_split=train_split,
            linear_solver=self._linear_solver(plan),
            **loader_settings(frozen=True, array_input=True),
        )
        with torch_threads(HEAD_THREADS, plan.device):
            net.fit(features, targets)
        return FoundationModule(plan.encoder, plan.representation, head, frozen=True), net

    def _fit_module(self, plan: FitPlan, X: ModelInput) -> tuple[FoundationModule, FoundationNet]:
        """Trained backbone (from the start or after ``unfreeze_at``): batches run through it."""
        probe = probe_encoder(plan.encoder, plan.representation, X, plan.device)
        head = self._build_head(probe.width, plan.device)
        module = FoundationModule(plan.encoder, plan.representation, head, frozen=False)
        groups = backbone_groups(self.lr * self.backbone_lr_mult, self.layer_decay, plan.blocks)
        net = build_net(
            self,
            plan,
            module,
            train_split=plan.validation.split_inputs(),
            optimizer__param_groups=groups,
            # accelerate shards a torch DataLoader; feature_batches' index sampler it cannot
            **loader_settings(
                frozen=False,
                array_input=not isinstance(self.input_shape_, dict) and not plan.accelerated,
            ),
        )
        with batch_threads(probe.flops_per_sample * self.batch_size, plan.device):
            net.fit(X, list(plan.targets))
        return module, net

    # scikit-learn API --------------------------------------------------------

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> FoundationEstimator:
        """Train the head (and the backbone unless frozen) on X, y.

        With a frozen backbone X is encoded once, through the feature cache,
        and the head trains on the features; otherwise every batch runs
        through the encoder. A fit that raises (bad input, a fault, an
        interrupt before training starts) leaves the estimator as it was,
        fitted or not.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...), DataFrame, torch.Tensor, dict or Dataset
            Training input; a dict maps the encoder's keyword arguments to
            arrays of n_samples rows. X larger than memory (a
            ``numpy.memmap``, a ``datasets.Dataset`` or a torch ``Dataset``
            of inputs only) is read in batches, never copied whole.
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
        previous = dict(self.__dict__)
        try:
            return self._fit(X, y, sample_weight)
        except BaseException:  # a failed or interrupted fit leaves the estimator as it was
            self.__dict__.clear()
            self.__dict__.update(previous)
            raise

    def _fit(self, X: Any, y: Any, sample_weight: Any) -> FoundationEstimator:
        """:meth:`fit`'s work, on an estimator that ``fit`` restores if it raises."""
        X = self._validate_X(X, reset=True)
        if y is None:
            raise ValueError(
                f"{type(self).__name__} requires y to be passed, but the target y is None."
            )
        y = self._validate_y(y)
        check_lengths(X, y, "X", "y")
        if self.accelerator is None:
            device = resolve_device(self.device)
        else:
            regime = regime_of(self.encoder, self.freeze_backbone, self.unfreeze_at)
            device = accelerator_device(self, regime)
        user_encoder = (
            contextlib.nullcontext() if self.encoder is None else preserved_modes(self.encoder)
        )
        rng_devices = [device.index] if device.type == "cuda" else []
        with forked_random_state(rng_devices), user_encoder, torch.enable_grad():
            plan = plan_fit(self, X, y, sample_weight, device)
            if plan.regime == "frozen":
                module, net = self._fit_head_on_features(plan, X)
            else:
                module, net = self._fit_module(plan, X)
            module.eval()
        check_finite_loss(self, net, plan)
        self.module_ = module
        self.net_ = net
        self.encoder_ = module.encoder
        self.history_ = net.history
        self.device_ = device
        self.solver_ = plan.solver
        convergence = dict(net.callbacks_).get("convergence")
        self.best_epoch_ = None
        if convergence is not None and plan.validation:
            self.best_epoch_ = convergence.best_epoch_
        self.n_iter_ = net.lbfgs_iterations_ if plan.solver == "lbfgs" else len(net.history)
        if warn_if_interrupted(self, plan, net):
            return self
        warn_if_not_converged(self, plan, net, convergence)
        return self

    def _net_predict(self, method: str, X: Any) -> np.ndarray:
        """Validate X and run one of the skorch net's inference methods on it.

        Torch's CPU random state is restored afterwards: each DataLoader
        draws a seed from it, and predicting should not change what a
        training loop around it draws next.
        """
        check_is_fitted(self, "net_")
        X = self._validate_X(X, reset=False)
        with forked_random_state([]):
            if self.module_.frozen:
                cache = feature_cache(self.cache)
                representation = self.module_.representation
                encoding = self._frozen_encoding(self.encoder_, representation, self.device_, cache)
                features = torch.as_tensor(encoding.features(X), device=self.device_)
                with torch_threads(HEAD_THREADS, self.device_):
                    return getattr(self.net_, method)(features)
            with preserved_modes(self.encoder_):
                return getattr(self.net_, method)(X)

    def __sklearn_clone__(self) -> FoundationEstimator:
        """An unfitted copy sharing the encoder and cache objects (see :func:`clone_sharing`)."""
        return clone_sharing(self, ("encoder", "cache", "accelerator"))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.input_tags.dict = True
        return tags
