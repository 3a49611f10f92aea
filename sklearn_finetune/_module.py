"""The network skorch trains: encoder -> representation -> head."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from skorch.utils import multi_indexing
from torch import nn

from ._batches import batch_tensor
from ._device import counted_flops, forward_flops
from ._encoder import preserved_modes
from ._inputs import n_samples
from ._representation import Representation

#: The prefix of the backbone's parameter names in ``FoundationModule``, as
#: skorch's ``optimizer__param_groups`` patterns see them.
ENCODER_PREFIX = "encoder."


def call_encoder(encoder: nn.Module, X: Any) -> Any:
    """Run ``encoder`` on one batch: a dict is passed as keyword arguments."""
    if isinstance(X, Mapping):
        return encoder(**X)
    return encoder(X)


def attention_mask(batch: Any) -> torch.Tensor | None:
    """The ``attention_mask`` entry of a dict batch (a tokenizer's output), else None."""
    return batch.get("attention_mask") if isinstance(batch, Mapping) else None


@contextlib.contextmanager
def explained_failure(batch: Any) -> Iterator[None]:
    """Re-raise an encoder's failure on ``batch`` as a ValueError saying what it was given."""
    try:
        yield
    except Exception as exc:
        if isinstance(batch, Mapping):
            given, hint = "keyword arguments " + ", ".join(map(repr, batch)), ""
        else:
            given = f"a {batch.dtype} tensor of shape {tuple(batch.shape)}"
            hint = (
                ""
                if batch.is_floating_point()
                else " (integer X is passed as it is, for token ids; if the encoder "
                "expects floats, pass X.astype('float32'))"
            )
        raise ValueError(
            f"The encoder failed on samples of X passed as {given}: "
            f"{type(exc).__name__}: {exc}{hint}"
        ) from exc


def check_batch_axis(features: torch.Tensor, n_rows: int, encoder: nn.Module, where: str) -> None:
    """Refuse a representation whose first axis is not the batch's samples.

    Raises
    ------
    ValueError
        Naming the encoder's class, ``where`` it ran, the representation's
        shape and the batch's number of samples (an encoder that flattens or
        reduces over the batch axis, or returns one row for the batch).
    """
    if features.ndim >= 1 and len(features) == n_rows:
        return
    raise ValueError(
        f"The encoder ({type(encoder).__name__}) returned a representation of shape "
        f"{tuple(features.shape)} {where} for a batch of {n_rows} samples: its output's "
        "first axis must be the batch's (one row per sample). Check that the encoder does "
        "not flatten, reduce or reshape across the batch axis."
    )


def check_finite_output(
    features: torch.Tensor,
    encoder: nn.Module,
    where: str,
    rows: Sequence[int] | np.ndarray | None = None,
) -> None:
    """Refuse an encoder output (after the representation) holding NaN or infinity.

    ``rows`` are the batch's samples as rows of the X the user passed (None:
    a shuffled training batch, whose samples are named by position).

    Raises
    ------
    ValueError
        Naming the encoder's class, ``where`` it ran, and how many and which
        samples have non-finite values.
    """
    bad = (~torch.isfinite(features.reshape(len(features), -1)).all(dim=1)).cpu().numpy()
    if not bad.any():
        return
    positions = np.flatnonzero(bad)
    named = positions if rows is None else np.asarray(rows)[positions]
    shown = ", ".join(map(str, named[:5].tolist())) + (", ..." if len(named) > 5 else "")
    which = f"of X's rows {shown}" if rows is not None else f"at positions {shown} of the batch"
    raise ValueError(
        f"The encoder ({type(encoder).__name__}) returned NaN or infinite values {where}, "
        f"for {len(named)} of the batch's {len(features)} samples ({which}). Check the "
        "encoder and its weights (a loaded checkpoint, an overflow in float16), or X."
    )


class EncoderProbe(NamedTuple):
    """What one run of the encoder on two samples tells: see :func:`probe_encoder`."""

    width: int
    flops_per_sample: float


def probe_encoder(
    encoder: nn.Module, representation: Representation, X: Any, device: torch.device
) -> EncoderProbe:
    """Run the encoder once on X's first two samples: the representation's width, and FLOPs.

    The encoder runs in eval mode without gradients and its modes are restored
    afterwards, so the probe changes nothing (no batch-norm statistics move).
    This is also where an encoder that cannot take X, or returns something
    that is not a tensor, is reported, before any training starts. The
    forward FLOPs per sample are counted by torch's ``FlopCounterMode``
    (matrix products, convolutions and attention; they choose the number of
    threads, see :func:`~sklearn_finetune._device.batch_threads`).
    """
    batch = batch_tensor(multi_indexing(X, slice(0, 2)), device)
    with torch.no_grad(), preserved_modes(encoder), counted_flops() as counter:
        encoder.eval()
        with explained_failure(batch):
            output = call_encoder(encoder, batch)
        features = representation(output, attention_mask(batch))
    check_batch_axis(features, n_samples(batch), encoder, "at the width probe")
    check_finite_output(features, encoder, "at the width probe", rows=range(len(features)))
    rows = max(len(features), 1)
    return EncoderProbe(
        representation.width(features), forward_flops(counter, encoder, rows) / rows
    )


class FoundationModule(nn.Module):
    """Encoder, representation and head as one ``nn.Module``.

    Parameters
    ----------
    encoder : torch.nn.Module
        The backbone.
    representation : Representation
        Turns the encoder's output into ``(batch, features)``.
    head : torch.nn.Module
        Maps the representation to the outputs.
    frozen : bool
        A frozen encoder runs without gradients, stays in eval mode whatever
        mode the training loop asks for (batch-norm statistics and dropout do
        not change), and its parameters are not offered to the optimizer.
    """

    def __init__(
        self, encoder: nn.Module, representation: Representation, head: nn.Module, *, frozen: bool
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.representation = representation
        self.head = head
        self.frozen = frozen

    def embed(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The representation of a batch: encoder, then output selection and pooling."""
        with torch.no_grad() if self.frozen else contextlib.nullcontext():
            output = self.encoder(*args, **kwargs)
        return self.representation(output, kwargs.get("attention_mask"))

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        features = self.embed(*args, **kwargs)
        try:
            return self.head(features)
        except RuntimeError as error:
            if "shapes cannot be multiplied" not in str(error):
                raise
            widths = (m.in_features for m in self.head.modules() if hasattr(m, "in_features"))
            raise ValueError(
                f"The encoder ({type(self.encoder).__name__}) returned a representation of "
                f"shape {tuple(features.shape)}, but the head was built for "
                f"{next(widths, 'another number of')} features (the width of its first "
                "samples' representation): an encoder must return the same width for every "
                f"batch ({error})."
            ) from error

    def train(self, mode: bool = True) -> FoundationModule:
        """Set train/eval mode, keeping a frozen encoder in eval mode."""
        self.training = mode
        for name, child in self.named_children():
            child.train(mode and not (self.frozen and name == "encoder"))
        return self

    def trainable_named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """The parameters the optimizer should update, with their names.

        The head's, and the encoder's unless it is frozen. Encoder parameters
        whose ``requires_grad`` is False stay out: that is how part of a
        backbone is kept fixed during fine-tuning.
        """
        for name, parameter in self.named_parameters():
            if not parameter.requires_grad:
                continue
            if self.frozen and name.startswith(ENCODER_PREFIX):
                continue
            yield name, parameter
