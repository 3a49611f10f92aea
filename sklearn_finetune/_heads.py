"""The trainable layers: prediction heads, and the MLP backbone used when no encoder is given."""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

from torch import nn

HEADS = ("linear", "mlp")


def mlp_layers(in_features: int, hidden_dims: Sequence[int], dropout: float = 0.0) -> list[nn.Module]:
    """Linear -> ReLU (-> Dropout) blocks, one per entry of ``hidden_dims``.

    Examples
    --------
    >>> from sklearn_finetune._heads import mlp_layers
    >>> mlp_layers(8, (4,), dropout=0.5)
    [Linear(in_features=8, out_features=4, bias=True), ReLU(), Dropout(p=0.5, inplace=False)]
    """
    if isinstance(hidden_dims, (str, bytes)) or not all(
        isinstance(width, int) and not isinstance(width, bool) and width > 0
        for width in hidden_dims
    ):
        raise ValueError(
            f"hidden_dims must be a sequence of positive integers; got {hidden_dims!r}."
        )
    layers: list[nn.Module] = []
    for width in hidden_dims:
        layers += [nn.Linear(in_features, width), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        in_features = width
    return layers


def build_head(
    kind: str,
    in_features: int,
    out_features: int,
    *,
    hidden_dims: Sequence[int] = (64, 32),
    dropout: float = 0.0,
) -> nn.Module:
    """A freshly initialised head mapping the representation to the outputs.

    Parameters
    ----------
    kind : {"linear", "mlp"}
        ``"linear"``: one ``nn.Linear`` (the linear probe). ``"mlp"``: the
        blocks of :func:`mlp_layers` on ``hidden_dims`` and ``dropout``, then a
        linear output layer.
    in_features, out_features : int
        Representation size and number of outputs (classes or targets).
    hidden_dims : sequence of int, default=(64, 32)
        Widths of the MLP's hidden layers; ignored by the linear head.
    dropout : float, default=0.0
        Dropout after each hidden layer of the MLP; ignored by the linear head.

    Returns
    -------
    torch.nn.Module

    Examples
    --------
    >>> from sklearn_finetune._heads import build_head
    >>> build_head("linear", 16, 3)
    Linear(in_features=16, out_features=3, bias=True)
    """
    if kind == "linear":
        return nn.Linear(in_features, out_features)
    if kind == "mlp":
        layers = mlp_layers(in_features, hidden_dims, dropout)
        width = hidden_dims[-1] if len(hidden_dims) else in_features
        return nn.Sequential(*layers, nn.Linear(width, out_features))
    raise ValueError(f"head must be one of {HEADS}; got {kind!r}.")


def mlp_backbone(sample_shape: Sequence[int]) -> nn.Sequential:
    """A small MLP encoder sized from the data, for ``encoder=None``.

    Flattens each sample and applies two ReLU layers of width
    ``clip(2 * n_features, 32, 256)``.

    Examples
    --------
    >>> from sklearn_finetune._heads import mlp_backbone
    >>> mlp_backbone((1, 8, 8))[1]
    Linear(in_features=64, out_features=128, bias=True)
    """
    n_features = prod(sample_shape)
    width = min(256, max(32, 2 * n_features))
    return nn.Sequential(nn.Flatten(), *mlp_layers(n_features, (width, width)))
