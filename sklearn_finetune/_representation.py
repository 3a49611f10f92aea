"""From whatever an encoder returns to one (batch, features) tensor.

Two steps, each a plain function so that it can be tested and reused on its
own: :func:`select_output` picks the tensor out of the encoder's output and
:func:`pool` reduces its extra axes, over the real tokens only when the input
came with an ``attention_mask``. :class:`Representation` chains them as a
parameter-free ``nn.Module``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

#: Keys tried, in order, when ``output_key=None`` and the encoder returns a
#: mapping (a dict or a Hugging Face ``ModelOutput``).
DEFAULT_OUTPUT_KEYS = ("feature", "features", "last_hidden_state", "pooler_output")

POOLINGS = ("mean", "max", "cls", "flatten", "attention")

Pooling = str | Callable[[torch.Tensor], torch.Tensor]

_EXPECTED = (
    "a tensor, a tuple or list whose first element is a tensor, or a mapping "
    "(dict or Hugging Face output) holding one"
)


def select_output(output: Any, output_key: str | None = None) -> torch.Tensor:
    """Return the tensor that carries the representation in an encoder's output.

    Parameters
    ----------
    output : torch.Tensor, tuple, list or mapping
        What the encoder's ``forward`` returned.
    output_key : str or None, default=None
        For mapping outputs: the key to take. ``None`` takes the first of
        :data:`DEFAULT_OUTPUT_KEYS` that is present and not None.

    Returns
    -------
    torch.Tensor

    Examples
    --------
    >>> import torch
    >>> from sklearn_finetune._representation import select_output
    >>> out = {"last_hidden_state": torch.zeros(2, 5, 8), "logits": torch.zeros(2, 3)}
    >>> select_output(out).shape
    torch.Size([2, 5, 8])
    """
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        if output_key is not None:
            if output_key not in output:
                raise ValueError(
                    f"output_key={output_key!r} is not in the encoder's output, "
                    f"which has keys {list(output)}."
                )
            found = output[output_key]
        else:
            present = [key for key in DEFAULT_OUTPUT_KEYS if output.get(key) is not None]
            if not present:
                raise ValueError(
                    f"The encoder returned a mapping with keys {list(output)}, none of "
                    f"which is a default representation key {DEFAULT_OUTPUT_KEYS}; set "
                    f"output_key to the one that holds the representation."
                )
            output_key, found = present[0], output[present[0]]
        if not isinstance(found, torch.Tensor):
            raise TypeError(
                f"The encoder's output[{output_key!r}] is a {type(found).__name__}, not a tensor."
            )
        return found
    if isinstance(output, Sequence) and not isinstance(output, str) and output:
        if isinstance(output[0], torch.Tensor):
            return output[0]
        raise TypeError(
            f"The encoder returned a {type(output).__name__} whose first element is "
            f"a {type(output[0]).__name__}; expected {_EXPECTED}."
        )
    raise TypeError(f"The encoder returned a {type(output).__name__}; expected {_EXPECTED}.")


def _mask_for(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
    """The ``(batch, tokens)`` mask as booleans, checked against a 3-D output (None: no mask)."""
    if mask is None or hidden.ndim != 3:
        return None
    if tuple(mask.shape) != tuple(hidden.shape[:2]):
        raise ValueError(
            f"The attention_mask of shape {tuple(mask.shape)} does not match the encoder's "
            f"output of shape {tuple(hidden.shape)} (batch, tokens, features); pass a "
            f"pooling callable for this encoder."
        )
    return mask.bool()


def tokens(hidden: torch.Tensor) -> torch.Tensor:
    """A 3-D output as it is, a 4-D+ channels-first one as ``(batch, positions, channels)``."""
    if hidden.ndim == 3:
        return hidden
    if hidden.ndim > 3:
        return hidden.flatten(2).transpose(1, 2)
    raise ValueError(
        "pooling='attention' attends over tokens or spatial positions; the encoder "
        f"returned shape {tuple(hidden.shape)}, which has neither."
    )


def pool(
    hidden: torch.Tensor, pooling: Pooling = "mean", mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Reduce an encoder output of shape ``(batch, ...)`` to ``(batch, features)``.

    Axis conventions: a 3-D output is ``(batch, tokens, features)`` as in
    transformers; a 4-D or larger one is channels-first ``(batch, channels,
    *spatial)`` as in PyTorch CNNs; 2-D outputs pass through and 1-D ones
    become one feature.

    Parameters
    ----------
    hidden : torch.Tensor
        The selected encoder output.
    pooling : {"mean", "max", "cls", "flatten"} or callable, default="mean"
        ``"mean"``/``"max"`` average/maximise over the tokens (3-D) or the
        spatial axes (4-D+). ``"cls"`` takes the first token of a 3-D output.
        ``"flatten"`` keeps every value. A callable receives the tensor and
        must return ``(batch, features)``: use one for layouts the conventions
        above do not fit, such as a Conv1d's ``(batch, channels, time)``.
    mask : torch.Tensor of shape (batch, tokens) or None, default=None
        Which tokens of a 3-D output are real (1) rather than padding (0),
        as a tokenizer's ``attention_mask``: ``"mean"`` and ``"max"`` use the
        real tokens only. Other outputs and poolings ignore it.

    Returns
    -------
    torch.Tensor of shape (batch, features)

    Examples
    --------
    >>> import torch
    >>> from sklearn_finetune._representation import pool
    >>> pool(torch.ones(4, 7, 16)).shape
    torch.Size([4, 16])
    >>> pool(torch.ones(4, 32, 3, 3), "flatten").shape
    torch.Size([4, 288])
    >>> hidden = torch.tensor([[[1.0], [3.0], [100.0]]])
    >>> pool(hidden, "mean", mask=torch.tensor([[1, 1, 0]]))
    tensor([[2.]])
    """
    if callable(pooling):
        pooled = pooling(hidden)
        if not isinstance(pooled, torch.Tensor) or pooled.ndim != 2:
            got = tuple(pooled.shape) if isinstance(pooled, torch.Tensor) else type(pooled)
            raise ValueError(
                f"The pooling callable must return a (batch, features) tensor; got {got}."
            )
        return pooled
    if hidden.ndim == 0:
        raise ValueError("The encoder returned a scalar; expected one row per sample.")
    if hidden.ndim == 1:
        return hidden.unsqueeze(1)
    if pooling == "flatten":
        return hidden.flatten(1)
    if pooling == "cls":
        if hidden.ndim != 3:
            raise ValueError(
                "pooling='cls' takes the first token of a (batch, tokens, features) "
                f"output; the encoder returned shape {tuple(hidden.shape)}."
            )
        return hidden[:, 0]
    if hidden.ndim == 2:
        return hidden
    mask = _mask_for(hidden, mask)
    axes = (1,) if hidden.ndim == 3 else tuple(range(2, hidden.ndim))
    if pooling == "mean":
        if mask is None:
            return hidden.mean(dim=axes)
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
    if pooling == "max":
        if mask is None:
            return hidden.amax(dim=axes)
        return hidden.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1).nan_to_num(neginf=0.0)
    raise ValueError(f"pooling must be one of {POOLINGS} or a callable; got {pooling!r}.")


class Representation(nn.Module):
    """Encoder output -> ``(batch, features)`` tensor: selection, then pooling.

    With ``pooling="attention"`` the pooling is learned, so it belongs to the
    head (see :class:`~sklearn_finetune._heads.AttentionPooling`): the
    representation is then the tokens, ``(batch, tokens, features + 1)``,
    whose last channel marks the real tokens (1) and the padding (0). That is
    what a frozen backbone's cache holds, and what the head pools.

    Parameters
    ----------
    output_key : str or None, default=None
        See :func:`select_output`.
    pooling : {"mean", "max", "cls", "flatten", "attention"} or callable, default="mean"
        See :func:`pool`.
    """

    def __init__(self, output_key: str | None = None, pooling: Pooling = "mean") -> None:
        super().__init__()
        self.output_key = output_key
        self.pooling = pooling

    def forward(self, output: Any, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Select and pool ``output``; ``mask`` is the batch's ``attention_mask``, if any."""
        hidden = select_output(output, self.output_key)
        if self.pooling != "attention":
            return pool(hidden, self.pooling, mask)
        hidden = tokens(hidden)
        mask = _mask_for(hidden, mask)
        real = hidden.new_ones(hidden.shape[:2]) if mask is None else mask.to(hidden.dtype)
        return torch.cat([hidden, real.unsqueeze(-1)], dim=-1)

    def width(self, representation: torch.Tensor) -> int:
        """The number of features per sample the head pools or takes."""
        if self.pooling == "attention":
            return representation.shape[-1] - 1
        return representation.shape[1]
