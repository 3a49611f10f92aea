"""Small real torch encoders and data shared by the tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn


class BatchNormEncoder(nn.Module):
    """Linear -> BatchNorm -> ReLU -> Dropout: every layer a linear probe must leave alone."""

    def __init__(self, in_features: int = 64, width: int = 16) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(in_features, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Dropout(0.5)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class CountingEncoder(nn.Module):
    """Wraps an encoder and counts the samples it sees and the modes it ran in.

    The record is kept in containers, not plain int attributes, which the
    feature cache would read as hyperparameters of the encoder.
    """

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.batch_sizes: list[int] = []
        self.modes_seen: set[bool] = set()

    @property
    def samples_seen(self) -> int:
        return sum(self.batch_sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(len(x))
        self.modes_seen.add(self.inner.training)
        return self.inner(x)


def state_of(module: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every parameter and buffer."""
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def assert_same_state(before: dict[str, torch.Tensor], module: nn.Module) -> None:
    after = module.state_dict()
    assert before.keys() == after.keys()
    for name, value in before.items():
        assert torch.equal(value, after[name]), f"{name} changed"


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """400 digit images as (n, 64) float features scaled to [0, 1], labels 0-9."""
    X, y = load_digits(return_X_y=True)
    return X[:400] / 16.0, y[:400]


@pytest.fixture(scope="session")
def pretrained_encoder(digits) -> nn.Module:
    """An encoder trained on the digits, standing in for a pretrained backbone."""
    from sklearn_finetune import FoundationClassifier

    X, y = digits
    torch.manual_seed(0)
    clf = FoundationClassifier(
        BatchNormEncoder(),
        freeze_backbone=False,
        backbone_lr_mult=1.0,
        lr=1e-2,
        max_epochs=10,
        val_split=0,
        random_state=0,
    ).fit(X, y)
    return clf.encoder_
