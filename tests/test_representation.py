"""Encoder outputs of every shape the package promises to read."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from sklearn_finetune import FoundationClassifier
from sklearn_finetune._representation import pool, select_output


def test_select_output_reads_tensors_sequences_and_mappings():
    t = torch.randn(2, 3)
    assert select_output(t) is t
    assert select_output((t, torch.zeros(1))) is t
    assert select_output([t]) is t
    hidden = torch.zeros(2, 4, 3)
    hf_like = OrderedDict(pooler_output=t, last_hidden_state=hidden)
    assert select_output(hf_like) is hidden  # last_hidden_state comes first
    assert select_output(hf_like, "pooler_output") is t
    assert select_output({"feature": t, "pooler_output": None}) is t
    assert select_output({"pooler_output": None, "last_hidden_state": t}) is t


@pytest.mark.parametrize(
    ("output", "key", "error", "match"),
    [
        ("text", None, TypeError, "returned a str"),
        (3.0, None, TypeError, "returned a float"),
        ((np.zeros(3),), None, TypeError, "first element is a ndarray"),
        ({"logits": torch.zeros(2, 3)}, None, ValueError, "set output_key"),
        ({"logits": torch.zeros(2, 3)}, "embedding", ValueError, "keys \\['logits'\\]"),
        ({"embedding": [1, 2]}, "embedding", TypeError, "not a tensor"),
    ],
)
def test_select_output_errors_say_what_was_returned(output, key, error, match):
    with pytest.raises(error, match=match):
        select_output(output, key)


def test_pool_follows_token_and_channel_conventions():
    tokens = torch.arange(24.0).reshape(2, 3, 4)  # (batch, tokens, features)
    torch.testing.assert_close(pool(tokens), tokens.mean(1))
    torch.testing.assert_close(pool(tokens, "max"), tokens[:, 2])
    torch.testing.assert_close(pool(tokens, "cls"), tokens[:, 0])
    assert pool(tokens, "flatten").shape == (2, 12)
    maps = torch.randn(2, 5, 3, 3)  # (batch, channels, height, width)
    torch.testing.assert_close(pool(maps), maps.mean((2, 3)))
    torch.testing.assert_close(pool(maps, "max"), maps.amax((2, 3)))
    assert pool(torch.randn(2, 7)).shape == (2, 7)
    assert pool(torch.randn(2)).shape == (2, 1)
    torch.testing.assert_close(pool(tokens, lambda h: h.sum(1)), tokens.sum(1))


def test_masked_pooling_ignores_padding_and_checks_the_mask():
    tokens = torch.arange(24.0).reshape(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    torch.testing.assert_close(
        pool(tokens, "mean", mask), torch.stack([tokens[0, :2].mean(0), tokens[1, 0]])
    )
    torch.testing.assert_close(pool(tokens, "max", mask), torch.stack([tokens[0, 1], tokens[1, 0]]))
    torch.testing.assert_close(pool(tokens, "cls", mask), tokens[:, 0])
    assert pool(tokens, "flatten", mask).shape == (2, 12)
    empty = torch.zeros(2, 3, dtype=torch.long)  # a sample of padding only pools to zeros
    torch.testing.assert_close(pool(tokens, "mean", empty), torch.zeros(2, 4))
    torch.testing.assert_close(pool(tokens, "max", empty), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"attention_mask of shape \(2, 5\)"):
        pool(tokens, "mean", torch.ones(2, 5))


def test_attention_pooling_over_the_positions_of_a_feature_map(digits):
    """A CNN's (batch, channels, h, w) map: the head attends over the h * w positions."""
    X, y = digits
    cnn = nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 6, 3), nn.ReLU())
    clf = FoundationClassifier(cnn, pooling="attention", max_epochs=3, random_state=0).fit(X, y)
    encoding = clf._frozen_encoding(clf.encoder_, clf.module_.representation, clf.device_, None)
    features = torch.as_tensor(encoding.features(X[:4].astype("float32")))
    assert features.shape == (4, 36, 7)  # 6x6 positions, 6 channels and the mask channel
    assert torch.equal(features[..., -1], torch.ones(4, 36))
    assert clf.predict_proba(X[:4]).shape == (4, 10)
    with pytest.raises(ValueError, match="pooling='attention' attends over tokens"):
        FoundationClassifier(nn.Linear(64, 8), pooling="attention").fit(X, y)


def test_pool_errors():
    with pytest.raises(ValueError, match="pooling='cls'"):
        pool(torch.randn(2, 5, 3, 3), "cls")
    with pytest.raises(ValueError, match=r"return a \(batch, features\) tensor"):
        pool(torch.randn(2, 5, 3), lambda h: h)


class SequenceEncoder(nn.Module):
    """Returns a Hugging Face style mapping with a (batch, tokens, features) tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 6)

    def forward(self, x):
        hidden = self.proj(x)  # x: (batch, tokens, 4)
        return {"last_hidden_state": hidden, "attentions": None}


class ConvEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 5, 3, padding=1)

    def forward(self, x):
        return self.conv(x), "aux"


@pytest.mark.parametrize(
    ("encoder", "X_shape", "pooling", "width"),
    [
        (SequenceEncoder(), (40, 7, 4), "mean", 6),
        (SequenceEncoder(), (40, 7, 4), "cls", 6),
        (SequenceEncoder(), (40, 7, 4), "flatten", 42),
        (ConvEncoder(), (40, 1, 8, 8), "mean", 5),
        (ConvEncoder(), (40, 1, 8, 8), "max", 5),
    ],
)
def test_probe_encoder_is_found_by_running_the_encoder(encoder, X_shape, pooling, width):
    rng = np.random.default_rng(0)
    X = rng.normal(size=X_shape).astype(np.float32)
    y = np.arange(len(X)) % 2
    clf = FoundationClassifier(encoder, pooling=pooling, max_epochs=1).fit(X, y)
    assert clf.module_.head.in_features == width
    assert clf.predict_proba(X).shape == (40, 2)


class StringEncoder(nn.Module):
    def forward(self, x):
        return "not a tensor"


class TwoOutputEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.small, self.large = nn.Linear(3, 2), nn.Linear(3, 5)

    def forward(self, x):
        return {"small": self.small(x), "large": self.large(x)}


def test_output_key_picks_the_representation():
    X, y = np.random.default_rng(0).normal(size=(20, 3)), np.arange(20) % 2
    for key, width in [("small", 2), ("large", 5)]:
        clf = FoundationClassifier(TwoOutputEncoder(), output_key=key, max_epochs=1).fit(X, y)
        assert clf.module_.head.in_features == width
    with pytest.raises(ValueError, match="none of which is a default representation key"):
        FoundationClassifier(TwoOutputEncoder(), max_epochs=1).fit(X, y)


def test_an_encoder_output_that_is_not_a_tensor_fails_before_training():
    clf = FoundationClassifier(StringEncoder(), max_epochs=1)
    with pytest.raises(TypeError, match="The encoder returned a str"):
        clf.fit(np.zeros((10, 3)), np.arange(10) % 2)
    assert not hasattr(clf, "net_")


def test_an_encoder_that_cannot_take_X_is_reported_with_the_input_it_got():
    clf = FoundationClassifier(nn.Linear(5, 2), max_epochs=1)
    with pytest.raises(ValueError, match=r"failed on samples of X.*shape \(\d+, 3\)"):
        clf.fit(np.zeros((10, 3)), np.arange(10) % 2)


def test_integer_X_for_a_float_encoder_gets_a_hint():
    clf = FoundationClassifier(nn.Conv2d(1, 4, 3), max_epochs=1)
    with pytest.raises(ValueError, match=r"int64 tensor.*pass X.astype\('float32'\)"):
        clf.fit(np.ones((10, 1, 8, 8), dtype=np.int64), np.arange(10) % 2)
