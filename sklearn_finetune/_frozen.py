"""A frozen backbone's features: X -> (n_samples, width), encoded once, through the cache.

:class:`FrozenEncoding` is what the estimators' fit and predict and
``FoundationEmbedder`` share: one encoder, representation, device and
cache, hashed once, whose ``features`` and ``width`` any X can ask for.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch
from skorch.utils import multi_indexing
from torch import nn
from tqdm.auto import tqdm

from ._batches import batch_tensor
from ._cache import FeatureCache
from ._device import autocast, batch_threads, chooses_threads, counted_flops, forward_flops
from ._encoder import prepare_encoder, preserved_modes
from ._fingerprint import encoder_fingerprint, row_digests
from ._inputs import ModelInput, n_samples
from ._module import (
    attention_mask,
    call_encoder,
    check_batch_axis,
    check_finite_output,
    explained_failure,
    probe_encoder,
)
from ._representation import Representation
from ._streamed import StreamedX


def encode(
    encoder: nn.Module,
    representation: Representation,
    X: ModelInput,
    *,
    device: torch.device,
    batch_size: int,
    precision: str = "32",
    progress: bool = False,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """Run a frozen encoder over X once: eval mode, inference mode, in batches.

    The encoder is used where it is when it already lives on ``device``, and
    a copy is moved there otherwise; its train/eval flags are restored.
    ``precision`` ``"bf16"`` or ``"16"`` runs it under autocast; ``progress``
    shows a tqdm bar over the batches. ``rows`` are X's samples as rows of
    the X the user passed (default: X itself), for the error that names
    samples whose features are not finite. The batches after the first run
    on one CPU thread when the first one's FLOPs are few (see
    :func:`~sklearn_finetune._device.batch_threads`).

    Returns
    -------
    ndarray of shape (n_samples, width), float32
        Or ``(n_samples, tokens, width + 1)`` for ``pooling="attention"``.
    """
    encoder = prepare_encoder(encoder, trainable=False, device=device)
    chunks: list[np.ndarray] = []
    with (
        torch.inference_mode(),
        preserved_modes(encoder),
        autocast(device, precision),
        contextlib.ExitStack() as threads,
    ):
        encoder.eval()
        starts = range(0, n_samples(X), batch_size)
        for start in tqdm(starts, desc="encoding", unit="batch", disable=not progress, leave=False):
            batch = batch_tensor(multi_indexing(X, slice(start, start + batch_size)), device)
            first = not chunks and chooses_threads(device)
            counting = counted_flops() if first else contextlib.nullcontext()
            with explained_failure(batch), counting as counter:
                output = call_encoder(encoder, batch)
            features = representation(output, attention_mask(batch))
            check_batch_axis(features, n_samples(batch), encoder, "while encoding X")
            if counter is not None:  # the first batch's FLOPs choose the threads of the others
                flops = forward_flops(counter, encoder, rows=len(features))
                threads.enter_context(batch_threads(flops, device))
            batch_rows = (
                np.arange(start, start + len(features))
                if rows is None
                else rows[start : start + len(features)]
            )
            chunk = features.float().cpu().numpy()  # checked on the CPU: no extra device sync
            check_finite_output(torch.from_numpy(chunk), encoder, "while encoding X", batch_rows)
            if chunks and chunk.shape[1:] != chunks[0].shape[1:]:
                raise ValueError(
                    f"The encoder ({type(encoder).__name__}) returned features of shape "
                    f"{chunk.shape[1:]} per sample for X's rows {batch_rows[0]}-"
                    f"{batch_rows[-1]}, and {chunks[0].shape[1:]} before: an encoder must "
                    "return the same width for every batch."
                )
            chunks.append(chunk)
    return np.concatenate(chunks)


def cache_key(
    encoder: nn.Module, representation: Representation, device: torch.device, precision: str = "32"
) -> str:
    """The fingerprint under which the cache keeps this encoder's features."""
    return encoder_fingerprint(
        encoder,
        output_key=representation.output_key,
        pooling=representation.pooling,
        device=device,
        precision=precision,
    )


def embed(
    encoder: nn.Module,
    representation: Representation,
    X: ModelInput,
    *,
    device: torch.device,
    batch_size: int,
    cache: FeatureCache | None,
    key: str | None = None,
    precision: str = "32",
    progress: bool = False,
    first_row: int = 0,
) -> np.ndarray:
    """The features of X under a frozen encoder, encoding only what ``cache`` lacks.

    The encoder's weights are hashed once per call (unless ``key``, their
    fingerprint from :func:`cache_key`, is given) and each sample once, so
    that clones, folds and repeated predictions share what was computed.
    Without a cache, X is encoded once, in full. An X read in batches
    (:class:`StreamedX`) is read once, a block at a time: each block is
    hashed, looked up, encoded where the cache lacks it and cached as one
    block (on disk too, with a directory); only the features are held
    whole. When every sample is missing, X itself is encoded (the
    positions are then all of X's rows in order), not a copy of it.
    ``first_row`` is X's first row in the X the user passed (for
    error messages).

    Returns
    -------
    ndarray of shape (n_samples, width), float32
    """
    if isinstance(X, StreamedX):
        if cache is not None and key is None:
            key = cache_key(encoder, representation, device, precision)
        return _embed_blocks(
            encoder,
            representation,
            X,
            device=device,
            batch_size=batch_size,
            cache=cache,
            key=key,
            precision=precision,
            progress=progress,
        )
    if cache is None:
        return encode(
            encoder,
            representation,
            X,
            device=device,
            batch_size=batch_size,
            precision=precision,
            progress=progress,
            rows=np.arange(first_row, first_row + n_samples(X)),
        )
    if key is None:
        key = cache_key(encoder, representation, device, precision)
    return cache.fetch(
        key,
        row_digests(X),
        lambda positions: encode(
            encoder,
            representation,
            X if len(positions) == n_samples(X) else multi_indexing(X, positions),
            device=device,
            batch_size=batch_size,
            precision=precision,
            progress=progress,
            rows=positions + first_row,
        ),
    )


def _embed_blocks(
    encoder: nn.Module, representation: Representation, X: StreamedX, **settings: Any
) -> np.ndarray:
    """:func:`embed` over a :class:`StreamedX`, one block of rows in memory at a time."""
    out: np.ndarray | None = None
    for start, block in X.blocks():
        features = embed(encoder, representation, block, first_row=start, **settings)
        if out is None:
            out = np.empty((len(X), *features.shape[1:]), dtype=np.float32)
        elif features.shape[1:] != out.shape[1:]:
            raise ValueError(
                f"The encoder ({type(encoder).__name__}) returned features of shape "
                f"{features.shape[1:]} per sample for X's rows from {start}, and "
                f"{out.shape[1:]} before: an encoder must return the same width for every "
                "batch."
            )
        out[start : start + len(features)] = features
    assert out is not None  # a StreamedX has at least one sample
    return out


@dataclass(frozen=True)
class FrozenEncoding:
    """A frozen encoder's representation of any X, through a cache.

    The encoder's weights are hashed once, on first use, for all the calls
    of this object (fit encodes X and an explicit validation set with one
    hash).

    Parameters
    ----------
    encoder : torch.nn.Module
        The frozen backbone; never changed (a copy runs where it must move
        to ``device``).
    representation : Representation
        Output selection and pooling.
    device : torch.device
        Where the encoder runs.
    batch_size : int
        Samples per forward pass.
    cache : FeatureCache or None
        Where features are kept; None encodes every call in full.
    precision : {"32", "bf16", "16"}, default="32"
        Autocast dtype of the forward passes.
    progress : bool, default=False
        A tqdm bar over the batches.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from torch import nn
    >>> from sklearn_finetune._frozen import FrozenEncoding
    >>> from sklearn_finetune._representation import Representation
    >>> encoding = FrozenEncoding(nn.Linear(3, 5), Representation(), torch.device("cpu"), 32, None)
    >>> X = np.ones((4, 3), dtype=np.float32)
    >>> encoding.width(X), encoding.features(X).shape
    (5, (4, 5))
    """

    encoder: nn.Module
    representation: Representation
    device: torch.device
    batch_size: int
    cache: FeatureCache | None
    precision: str = "32"
    progress: bool = False

    @cached_property
    def key(self) -> str | None:
        """The encoder's fingerprint in the cache (None without a cache)."""
        if self.cache is None:
            return None
        return cache_key(self.encoder, self.representation, self.device, self.precision)

    def features(self, X: ModelInput) -> np.ndarray:
        """The representation of every sample of X, ``(n_samples, width)`` float32.

        Or ``(n_samples, tokens, width + 1)`` for ``pooling="attention"``.
        """
        return embed(
            self.encoder,
            self.representation,
            X,
            device=self.device,
            batch_size=self.batch_size,
            cache=self.cache,
            key=self.key,
            precision=self.precision,
            progress=self.progress,
        )

    def width(self, X: ModelInput) -> int:
        """The representation's width, from the encoder run on X's first two samples.

        This is where an encoder that cannot take X, or returns no tensor,
        is reported (a ValueError saying what it was given).
        """
        encoder = prepare_encoder(self.encoder, trainable=False, device=self.device)
        return probe_encoder(encoder, self.representation, X, self.device).width
