"""FoundationEmbedder: a frozen encoder as a scikit-learn transformer, for any downstream model."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    _fit_context,
)
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.validation import check_is_fitted
from torch import nn

from ._cache import feature_cache
from ._declare import declared, like
from ._device import check_precision, resolve_device
from ._encoder import clone_sharing
from ._frozen import FrozenEncoding
from ._inputs import validate_X
from ._parameters import CacheSetting, EstimatorParameters
from ._representation import POOLINGS, Pooling, Representation
from ._shared_encoders import check_readable, deepcopy_with_own_encoder, with_shared_encoder


@declared
class FoundationEmbedder(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """A frozen encoder's representation of X, as features for any scikit-learn model.

    ``transform`` runs the encoder in eval and inference mode, selects and
    pools its output as :class:`FoundationClassifier` does, and returns one
    row of float32 features per sample. The features go through the same
    embed-once cache, so an embedder and a linear-probe estimator on one
    encoder share them, and a grid search over the model after the embedder
    encodes each unique sample once. The encoder is never changed or copied
    (unless it must move to ``device``).

    Read more in the :ref:`User Guide <foundation-embedder>`.

    Parameters
    ----------
    {parameters}

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
    FoundationClassifier : Trains a head on the same features (a linear
        probe), or fine-tunes the encoder.
    linear_probe_score : The cross-validated linear-probe benchmark in one call.
    knn_probe_score : The k-nearest-neighbour probe on the same features.
    FeatureCache : Keeps the features, so each sample is encoded once.

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

    encoder: nn.Module = like(
        EstimatorParameters,
        "encoder",
        default=dataclasses.MISSING,
        constraints=[nn.Module],
        types="torch.nn.Module",
        doc="The backbone, as for :class:`FoundationClassifier`; never changed.",
    )
    output_key: str | None = like(EstimatorParameters, "output_key")
    pooling: Pooling = like(
        EstimatorParameters,
        "pooling",
        constraints=[StrOptions(set(POOLINGS) - {"attention"}), callable],
        types='{"mean", "max", "cls", "flatten"} or callable',
        doc="""
        How an output with more than two axes becomes one row per sample,
        using the ``attention_mask`` of a dict X (see
        :class:`FoundationClassifier`; the learned ``"attention"`` pooling
        needs a head and is not available here).
        """,
    )
    precision: str = like(
        EstimatorParameters,
        "precision",
        doc="""
        ``"bf16"`` and ``"16"`` run the encoder under autocast in bfloat16
        or float16, where the device supports it; the features are float32.
        """,
    )
    batch_size: int = like(EstimatorParameters, "batch_size", doc="Samples per forward pass.")
    cache: CacheSetting = like(EstimatorParameters, "cache")
    device: str | torch.device = like(EstimatorParameters, "device")
    verbose: int = like(
        EstimatorParameters, "verbose", doc="``2`` shows a progress bar over the batches."
    )

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X: Any, y: Any = None) -> FoundationEmbedder:
        """Check X and the encoder on two samples; nothing is learned.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...), DataFrame, torch.Tensor, dict or Dataset
            Input, as for :class:`FoundationClassifier`.
        y : None
            Ignored.

        Returns
        -------
        self
        """
        X = validate_X(self, X, reset=True, for_mlp=False)
        device = resolve_device(self.device)
        check_precision(self.precision, device)
        self.n_features_out_ = self._encoding(device).width(X)
        self.device_ = device
        return self

    def transform(self, X: Any) -> np.ndarray:
        """The encoder's representation of X.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...), DataFrame, torch.Tensor, dict or Dataset
            Input in the form ``fit`` saw.

        Returns
        -------
        ndarray of shape (n_samples, n_features_out), float32
        """
        check_is_fitted(self, "n_features_out_")
        X = validate_X(self, X, reset=False, for_mlp=False)
        return self._encoding(self.device_).features(X)

    def _encoding(self, device: torch.device) -> FrozenEncoding:
        """The encoder's features through the cache (a bad cache setting fails here)."""
        return FrozenEncoding(
            self.encoder,
            Representation(self.output_key, self.pooling),
            device,
            batch_size=self.batch_size,
            cache=feature_cache(self.cache),
            precision=self.precision,
            progress=self.verbose >= 2,
        )

    @property
    def _n_features_out(self) -> int:
        """For ``get_feature_names_out``: ``foundationembedder0`` to ``foundationembedder{n-1}``."""
        return self.n_features_out_

    def __sklearn_clone__(self) -> FoundationEmbedder:
        """An unfitted copy sharing the encoder and the cache (neither is changed by fit)."""
        return clone_sharing(self)

    def __getstate__(self) -> dict[str, Any]:
        """The state to pickle: a fitted embedder's as it is, an unfitted one's maybe shared.

        Unfitted, with a ``FeatureCache(directory, share_encoders=True)`` as
        ``cache``, the encoder is pickled as a reference to its file there.
        """
        return with_shared_encoder(super().__getstate__(), fitted=hasattr(self, "n_features_out_"))

    def __deepcopy__(self, memo: dict[int, Any]) -> FoundationEmbedder:
        """A copy through :meth:`__getstate__`, with its own encoder even if the cache shares it."""
        return deepcopy_with_own_encoder(self, memo)

    def _validate_params(self) -> None:
        """Raise first the error of a shared encoder this process could not load."""
        check_readable(self.encoder)
        super()._validate_params()

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.input_tags.dict = True
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags
