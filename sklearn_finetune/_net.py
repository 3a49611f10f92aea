"""The skorch nets that run the training loop."""

from __future__ import annotations

from collections.abc import Iterator

from skorch import NeuralNetClassifier, NeuralNetRegressor
from torch import nn


class _TrainableParamsMixin:
    """Offer the optimizer only what should train (see ``FoundationModule``)."""

    def get_all_learnable_params(self) -> Iterator[tuple[str, nn.Parameter]]:
        return self.module_.trainable_named_parameters()


class ClassifierNet(_TrainableParamsMixin, NeuralNetClassifier):
    """skorch's classifier net, training a ``FoundationModule``."""


class RegressorNet(_TrainableParamsMixin, NeuralNetRegressor):
    """skorch's regressor net, training a ``FoundationModule``."""
