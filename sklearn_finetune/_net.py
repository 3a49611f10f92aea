"""The skorch nets that run the training loop."""

from __future__ import annotations

from collections.abc import Iterator

from skorch import NeuralNetClassifier, NeuralNetRegressor
from torch import nn

from ._module import FoundationModule


class _TrainableParamsMixin:
    """Offer the optimizer only what should train (see ``FoundationModule``).

    A net that trains a head alone, on cached features, offers all of it.
    """

    def get_all_learnable_params(self) -> Iterator[tuple[str, nn.Parameter]]:
        if isinstance(self.module_, FoundationModule):
            return self.module_.trainable_named_parameters()
        return super().get_all_learnable_params()


class ClassifierNet(_TrainableParamsMixin, NeuralNetClassifier):
    """skorch's classifier net, training a ``FoundationModule``."""


class RegressorNet(_TrainableParamsMixin, NeuralNetRegressor):
    """skorch's regressor net, training a ``FoundationModule``."""
