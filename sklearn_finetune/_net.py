"""The skorch nets that run the training loop."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from skorch import NeuralNetClassifier, NeuralNetRegressor
from torch import nn

from ._module import FoundationModule


class _FoundationNetMixin:
    """What the estimators add to skorch's nets.

    The optimizer is offered only what should train (see
    ``FoundationModule``; a net that trains a head alone, on cached features,
    offers all of it), and ``l2_penalty`` adds ``l2_penalty / 2 * ||W||^2``
    over the weight matrices (not the biases) to the training loss, for
    optimizers without a weight decay of their own such as L-BFGS.
    """

    def __init__(self, *args: Any, l2_penalty: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.l2_penalty = l2_penalty

    def get_all_learnable_params(self) -> Iterator[tuple[str, nn.Parameter]]:
        if isinstance(self.module_, FoundationModule):
            return self.module_.trainable_named_parameters()
        return super().get_all_learnable_params()

    def get_loss(self, y_pred: Any, y_true: Any, X: Any = None, training: bool = False) -> torch.Tensor:
        loss = super().get_loss(y_pred, y_true, X=X, training=training)
        if training and self.l2_penalty:
            squares = [
                parameter.pow(2).sum()
                for name, parameter in self.get_all_learnable_params()
                if name.endswith("weight") and parameter.ndim > 1
            ]
            loss = loss + 0.5 * self.l2_penalty * torch.stack(squares).sum()
        return loss


class ClassifierNet(_FoundationNetMixin, NeuralNetClassifier):
    """skorch's classifier net, training a ``FoundationModule`` or a head on features."""


class RegressorNet(_FoundationNetMixin, NeuralNetRegressor):
    """skorch's regressor net, training a ``FoundationModule`` or a head on features."""
