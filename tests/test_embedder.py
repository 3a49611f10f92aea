"""FoundationEmbedder: the linear probe's features, for any scikit-learn model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import CountingEncoder, assert_same_state, state_of
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks
from torch import nn

from sklearn_finetune import FeatureCache, FoundationClassifier, FoundationEmbedder


class Summary(nn.Module):
    """A parameter-free encoder for any number of features: mean, max and min of each row."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        return torch.stack([x.mean(1), x.amax(1), x.amin(1)], dim=1)


@parametrize_with_checks([FoundationEmbedder(Summary())])
def test_sklearn_compatible_transformer(estimator, check):
    check(estimator)


def test_features_equal_the_linear_probes(pretrained_encoder, digits):
    X, y = digits
    before = state_of(pretrained_encoder)
    cache = FeatureCache()
    features = FoundationEmbedder(pretrained_encoder, cache=cache).fit_transform(X)
    assert features.dtype == np.float32 and features.shape == (400, 16)
    misses = cache.misses
    clf = FoundationClassifier(pretrained_encoder, cache=cache, max_epochs=2).fit(X, y)
    assert cache.misses == misses  # the classifier found every sample's features in the cache
    encoding = clf._frozen_encoding(clf.encoder_, clf.module_.representation, clf.device_, None)
    np.testing.assert_array_equal(features, encoding.features(X.astype(np.float32)))
    assert_same_state(before, pretrained_encoder)


def test_embedder_and_logistic_regression_is_the_lbfgs_linear_probe(pretrained_encoder, digits):
    """LogisticRegression(C) on the embedder's features and the estimator's L-BFGS probe agree."""
    X, y = digits
    C = 1.0
    pipeline = make_pipeline(
        FoundationEmbedder(pretrained_encoder), LogisticRegression(C=C, max_iter=1000, tol=1e-8)
    ).fit(X, y)
    probe = FoundationClassifier(
        pretrained_encoder,
        solver="lbfgs",
        weight_decay=1 / (C * len(X)),
        max_epochs=1000,
        tol=1e-7,
        val_split=0,
        random_state=0,
    ).fit(X, y)
    np.testing.assert_allclose(probe.predict_proba(X), pipeline.predict_proba(X), atol=2e-3)


def test_feature_names_and_pandas_output(pretrained_encoder, digits):
    X, _ = digits
    frame = pd.DataFrame(X, columns=[f"pixel{i}" for i in range(64)], index=np.arange(400) + 1000)
    embedder = FoundationEmbedder(pretrained_encoder).set_output(transform="pandas")
    out = embedder.fit_transform(frame)
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns) == [f"foundationembedder{i}" for i in range(16)]
    assert list(out.index) == list(frame.index)
    pipeline = make_pipeline(FoundationEmbedder(pretrained_encoder), StandardScaler())
    pipeline.set_output(transform="pandas")
    scaled = pipeline.fit_transform(frame)
    assert list(scaled.columns) == list(out.columns)
    np.testing.assert_array_equal(pipeline[0].feature_names_in_, frame.columns)


def test_grid_search_after_the_embedder_encodes_each_sample_once(pretrained_encoder, digits):
    X, y = digits
    counting = CountingEncoder(pretrained_encoder)
    pipeline = make_pipeline(
        FoundationEmbedder(counting, cache=FeatureCache()), LogisticRegression()
    )
    search = GridSearchCV(pipeline, {"logisticregression__C": [0.1, 1.0, 10.0]}, cv=3)
    search.fit(X, y)
    n_fits = 3 * 3 + 1  # candidates x folds, and the refit
    # Every sample encoded once; each fit only checks the encoder on two samples.
    assert counting.samples_seen == len(X) + 2 * n_fits
    assert search.best_score_ > 0.8


def test_embedder_errors(pretrained_encoder, digits):
    X, _ = digits
    with pytest.raises(ValueError, match="'pooling' parameter"):
        FoundationEmbedder(pretrained_encoder, pooling="attention").fit(X)
    with pytest.raises(NotFittedError):
        FoundationEmbedder(pretrained_encoder).transform(X)
    fitted = FoundationEmbedder(pretrained_encoder).fit(X)
    with pytest.raises(ValueError, match="features"):
        fitted.transform(X[:, :10])
    with pytest.raises(ValueError, match="The encoder failed"):
        FoundationEmbedder(pretrained_encoder).fit(X[:, :10])


def test_batch_size_and_precision_reach_the_encoder(pretrained_encoder, digits):
    X, _ = digits
    counting = CountingEncoder(pretrained_encoder)
    FoundationEmbedder(counting, batch_size=150, cache=False).fit_transform(X)
    assert counting.batch_sizes == [2, 150, 150, 100]  # the 2-sample check, then X in batches
    full = FoundationEmbedder(pretrained_encoder, cache=False).fit_transform(X)
    half = FoundationEmbedder(pretrained_encoder, precision="bf16", cache=False).fit_transform(X)
    assert half.dtype == np.float32 and not np.array_equal(half, full)
    np.testing.assert_allclose(half, full, atol=0.1)
