"""FoundationEmbedder: a frozen encoder as a scikit-learn transformer, for any downstream model."""

from __future__ import annotations

import os
from numbers import Integral
from typing import Any, ClassVar

import numpy as np
import torch
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    _fit_context,
)
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted
from skorch.utils import multi_indexing, to_tensor
from torch import nn

from ._base import clone_sharing
from ._cache import FeatureCache, feature_cache
from ._device import PRECISIONS, check_precision, resolve_device
from ._embedding import embed
from ._encoder import prepare_encoder
from ._module import representation_size
from ._representation import POOLINGS, Pooling, Representation
from ._validation import ModelInput, validate_X


class FoundationEmbedder(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """A frozen encoder's representation of X, as features for any scikit-learn model.

    ``transform`` runs the encoder in eval and inference mode, selects and
    pools its output as :class:`FoundationClassifier` does, and returns one
    row of float32 features per sample. The features go through the same
    embed-once cache, so an embedder and a linear-probe estimator on one
    encoder share them, and a grid search over the model after the embedder
    encodes each unique sample once. The encoder is never changed or copied
    (unless it must move to ``device``).

    Parameters
    ----------
    encoder : torch.nn.Module
        The backbone, as for :class:`FoundationClassifier`.
    output_key : str or None, default=None
        Which entry of a mapping output holds the representation (see
        :class:`FoundationClassifier`).
    pooling : {"mean", "max", "cls", "flatten"} or callable, default="mean"
        How an output with more than two axes becomes one row per sample,
        using the ``attention_mask`` of a dict X (see
        :class:`FoundationClassifier`; the learned ``"attention"`` pooling
        needs a head and is not available here).
    precision : {"32", "bf16", "16"}, default="32"
        ``"bf16"`` and ``"16"`` run the encoder under autocast.
    batch_size : int, default=32
        Samples per forward pass.
    cache : bool, str, path-like or FeatureCache, default=True
        Where features are kept between calls (see :class:`FeatureCache`).
    device : str or torch.device, default="auto"
        ``"auto"`` picks CUDA, then MPS, then the CPU.
    verbose : int, default=0
        ``2`` shows a progress bar over the batches.

    Attributes
    ----------
    n_features_out_ : int
        The representation's width: the number of columns ``transform`` returns.
    device_ : torch.device
        Where the encoder runs.
    input_shape_ : tuple or dict
        The shape of one sample seen by ``fit``.
    n_features_in_ : int
        Number of features, for 2-D X only.
    feature_names_in_ : ndarray of str
        Column names, when X was a DataFrame with string column names.

    See Also
    --------
    FoundationClassifier : trains a head on the same features (a linear probe).
    linear_probe_score : the cross-validated linear-probe benchmark in one call.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.pipeline import make_pipeline
    >>> from torch import nn
    >>> from sklearn_finetune import FoundationEmbedder
    >>> X, y = np.random.default_rng(0).normal(size=(40, 8)), np.arange(40) % 2
    >>> embedder = FoundationEmbedder(nn.Sequential(nn.Linear(8, 16), nn.ReLU()))
    >>> embedder.fit_transform(X).shape
    (40, 16)
    >>> embedder.get_feature_names_out()[:2]
    array(['foundationembedder0', 'foundationembedder1'], dtype=object)
    >>> make_pipeline(embedder, LogisticRegression()).fit(X, y).predict(X[:3]).shape
    (3,)
    """

    _parameter_constraints: ClassVar[dict[str, list]] = {
        "encoder": [nn.Module],
        "output_key": [str, None],
        "pooling": [StrOptions(set(POOLINGS) - {"attention"}), callable],
        "precision": [StrOptions(set(PRECISIONS))],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "cache": ["boolean", str, os.PathLike, FeatureCache],
        "device": [str, torch.device],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        encoder: nn.Module,
        *,
        output_key: str | None = None,
        pooling: Pooling = "mean",
        precision: str = "32",
        batch_size: int = 32,
        cache: bool | str | os.PathLike | FeatureCache = True,
        device: str | torch.device = "auto",
        verbose: int = 0,
    ) -> None:
        self.encoder = encoder
        self.output_key = output_key
        self.pooling = pooling
        self.precision = precision
        self.batch_size = batch_size
        self.cache = cache
        self.device = device
        self.verbose = verbose

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X: Any, y: Any = None) -> FoundationEmbedder:
        """Check X and the encoder on two samples; nothing is learned.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...), DataFrame, torch.Tensor or dict
            Input, as for :class:`FoundationClassifier`.
        y : None
            Ignored.

        Returns
        -------
        self
        """
        X = validate_X(self, X, reset=True, for_mlp=False)
        feature_cache(self.cache)  # a bad cache path fails here
        device = resolve_device(self.device)
        check_precision(self.precision, device)
        self.n_features_out_ = representation_size(
            prepare_encoder(self.encoder, trainable=False, device=device),
            self._representation(),
            to_tensor(multi_indexing(X, slice(0, 2)), device),
        )
        self.device_ = device
        return self

    def transform(self, X: Any) -> np.ndarray:
        """The encoder's representation of X.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...), DataFrame, torch.Tensor or dict
            Input in the form ``fit`` saw.

        Returns
        -------
        ndarray of shape (n_samples, n_features_out_), float32
        """
        check_is_fitted(self, "n_features_out_")
        X: ModelInput = validate_X(self, X, reset=False, for_mlp=False)
        return embed(
            self.encoder,
            self._representation(),
            X,
            device=self.device_,
            batch_size=self.batch_size,
            cache=feature_cache(self.cache),
            precision=self.precision,
            progress=self.verbose >= 2,
        )

    def _representation(self) -> Representation:
        return Representation(self.output_key, self.pooling)

    @property
    def _n_features_out(self) -> int:
        """For ``get_feature_names_out``: ``foundationembedder0`` ... ``foundationembedder{n-1}``."""
        return self.n_features_out_

    def __sklearn_clone__(self) -> FoundationEmbedder:
        """An unfitted copy sharing the encoder and the cache (neither is changed by fit)."""
        return clone_sharing(self)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.input_tags.dict = True
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags
