"""The trainable layers on top of the representation: prediction heads and attention pooling."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn

#: What the ``head`` parameter accepts besides a name: a module, or a
#: factory called with the representation size and the number of outputs.
HeadSpec = str | nn.Module | Callable[[int, int], nn.Module]

HEADS = ("linear", "mlp")


def mlp_layers(
    in_features: int, hidden_dims: Sequence[int], dropout: float = 0.0, batch_norm: bool = False
) -> list[nn.Module]:
    """Linear (-> BatchNorm1d) -> ReLU (-> Dropout) blocks, one per entry of ``hidden_dims``.

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
        layers.append(nn.Linear(in_features, width))
        if batch_norm:
            layers.append(nn.BatchNorm1d(width))
        layers.append(nn.ReLU())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        in_features = width
    return layers


def build_head(
    kind: HeadSpec,
    in_features: int,
    out_features: int,
    *,
    hidden_dims: Sequence[int] = (64, 32),
    dropout: float = 0.0,
    batch_norm: bool = False,
) -> nn.Module:
    """A freshly initialised head mapping the representation to the outputs.

    Layers keep PyTorch's initialisation: ``nn.Linear`` weights and biases
    uniform in ``[-1/sqrt(fan_in), 1/sqrt(fan_in)]``, batch norm at scale 1
    and shift 0.

    Parameters
    ----------
    kind : {"linear", "mlp"}, torch.nn.Module or callable
        ``"linear"``: one ``nn.Linear`` (the linear probe). ``"mlp"``: the
        blocks of :func:`mlp_layers` on ``hidden_dims``, ``dropout`` and
        ``batch_norm``, then a linear output layer. A module: a deep copy of
        it, as it is (the other arguments do not apply). A callable:
        ``kind(in_features, out_features)`` returns the module. Either must
        map ``(batch, in_features)`` to ``(batch, out_features)``.
    in_features, out_features : int
        Representation size and number of outputs (classes or targets).
    hidden_dims : sequence of int, default=(64, 32)
        Widths of the MLP's hidden layers; ignored by the linear head.
    dropout : float, default=0.0
        Dropout after each hidden layer of the MLP; ignored by the linear head.
    batch_norm : bool, default=False
        MLP: ``BatchNorm1d`` after each hidden linear layer. Linear: a
        ``BatchNorm1d(affine=False)`` that standardises the representation
        before the linear layer (the linear-probe recipe of MAE).

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
        linear = nn.Linear(in_features, out_features)
        return (
            # momentum=None: the running statistics are the average over every
            # batch seen, which for fixed inputs (cached features) is their
            # exact mean and variance, after one full batch (L-BFGS) as after
            # an epoch of mini-batches.
            nn.Sequential(nn.BatchNorm1d(in_features, affine=False, momentum=None), linear)
            if batch_norm
            else linear
        )
    if kind == "mlp":
        layers = mlp_layers(in_features, hidden_dims, dropout, batch_norm)
        width = hidden_dims[-1] if len(hidden_dims) else in_features
        return nn.Sequential(*layers, nn.Linear(width, out_features))
    if isinstance(kind, str):
        raise ValueError(f"head must be one of {HEADS}, a module or a callable; got {kind!r}.")
    return _checked_head(
        copy.deepcopy(kind) if isinstance(kind, nn.Module) else kind(in_features, out_features),
        in_features,
        out_features,
    )


def _checked_head(head: object, in_features: int, out_features: int) -> nn.Module:
    """``head`` itself, once it has mapped a batch of zeros to the right shape."""
    if not isinstance(head, nn.Module):
        raise TypeError(
            f"head(in_features, n_outputs) must return a torch.nn.Module; got "
            f"{type(head).__name__}."
        )
    was_training = head.training
    head.eval()
    try:
        with torch.no_grad():
            parameter = next(head.parameters(), None)
            device = "cpu" if parameter is None else parameter.device
            output = head(torch.zeros(2, in_features, device=device))
    except Exception as exc:
        raise ValueError(
            f"The head failed on a batch of representations of shape (2, {in_features}): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    finally:
        head.train(was_training)
    if not isinstance(output, torch.Tensor) or tuple(output.shape) != (2, out_features):
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ValueError(
            f"The head must map (batch, {in_features}) to (batch, {out_features}) (one "
            f"output per class or target); it returned {shape} for a batch of 2."
        )
    return head


class AttentionPooling(nn.Module):
    """A learned weighted mean over tokens: the first layer of the head for ``pooling="attention"``.

    Each real token gets a score ``w . h_t + b``; the softmax of the scores
    over the sample's real tokens weights their mean (attention-based
    pooling, Ilse et al. 2018). ``w`` starts at zero, so training starts
    from the plain mean over the real tokens. Padding never gets weight.

    Parameters
    ----------
    in_features : int
        Features per token.

    Examples
    --------
    >>> import torch
    >>> from sklearn_finetune._heads import AttentionPooling
    >>> tokens = torch.tensor([[[1.0, 1.0], [3.0, 1.0], [100.0, 0.0]]])  # last channel: real?
    >>> AttentionPooling(1)(tokens)
    tensor([[2.]], grad_fn=<SumBackward1>)
    """

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.score = nn.Linear(in_features, 1)
        nn.init.zeros_(self.score.weight)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(batch, tokens, in_features + 1)`` -> ``(batch, in_features)``.

        The last input channel is 1 for real tokens, 0 for padding.
        """
        hidden, real = tokens[..., :-1], tokens[..., -1] > 0
        scores = self.score(hidden).squeeze(-1).masked_fill(~real, float("-inf"))
        weights = torch.softmax(scores, dim=1).nan_to_num(0.0)  # a sample of padding only: zeros
        return (weights.unsqueeze(-1) * hidden).sum(1)
