"""The embed-once step of a frozen backbone: X -> (n_samples, width) features, through the cache."""

from __future__ import annotations

import numpy as np
import torch
from skorch.utils import multi_indexing, to_tensor
from torch import nn
from tqdm.auto import tqdm

from ._cache import FeatureCache
from ._device import autocast
from ._encoder import prepare_encoder, preserved_modes
from ._fingerprint import encoder_fingerprint, row_digests
from ._module import attention_mask, call_encoder, explained_failure
from ._representation import Representation
from ._validation import ModelInput, n_samples


def encode(
    encoder: nn.Module,
    representation: Representation,
    X: ModelInput,
    *,
    device: torch.device,
    batch_size: int,
    precision: str = "32",
    progress: bool = False,
) -> np.ndarray:
    """Run a frozen encoder over X once: eval mode, inference mode, in batches.

    The encoder is used where it is when it already lives on ``device``, and
    a copy is moved there otherwise; its train/eval flags are restored.
    ``precision`` ``"bf16"`` or ``"16"`` runs it under autocast; ``progress``
    shows a tqdm bar over the batches.

    Returns
    -------
    ndarray of shape (n_samples, width), float32
        Or ``(n_samples, tokens, width + 1)`` for ``pooling="attention"``.
    """
    encoder = prepare_encoder(encoder, trainable=False, device=device)
    chunks = []
    with torch.inference_mode(), preserved_modes(encoder), autocast(device, precision):
        encoder.eval()
        starts = range(0, n_samples(X), batch_size)
        for start in tqdm(starts, desc="encoding", unit="batch", disable=not progress, leave=False):
            batch = to_tensor(multi_indexing(X, slice(start, start + batch_size)), device)
            with explained_failure(batch):
                output = call_encoder(encoder, batch)
            features = representation(output, attention_mask(batch))
            chunks.append(features.float().cpu().numpy())
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
) -> np.ndarray:
    """The features of X under a frozen encoder, encoding only what ``cache`` lacks.

    The encoder's weights are hashed once per call (unless ``key``, their
    fingerprint from :func:`cache_key`, is given) and each sample once, so
    that clones, folds and repeated predictions share what was computed.
    Without a cache, X is encoded once, in full.

    Returns
    -------
    ndarray of shape (n_samples, width), float32
    """
    if cache is None:
        return encode(
            encoder,
            representation,
            X,
            device=device,
            batch_size=batch_size,
            precision=precision,
            progress=progress,
        )
    if key is None:
        key = cache_key(encoder, representation, device, precision)
    return cache.fetch(
        key,
        row_digests(X),
        lambda positions: encode(
            encoder,
            representation,
            multi_indexing(X, positions),
            device=device,
            batch_size=batch_size,
            precision=precision,
            progress=progress,
        ),
    )
