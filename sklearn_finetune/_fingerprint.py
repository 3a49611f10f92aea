"""Content fingerprints: what makes two encoders, or two samples, give the same features.

The feature cache is keyed by content, not by object identity: GridSearchCV
and cross_val_score work on clones (and, with ``n_jobs > 1``, on pickled
copies in other processes) and on overlapping row subsets, so only content
tells that a representation was already computed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from itertools import chain

import numpy as np
import torch
from torch import nn

from ._inputs import n_samples

#: Bumped when what the cache stores or how keys are made changes, so that a
#: directory written by an older version is never read as current.
CACHE_FORMAT = "sklearn_finetune-features-1"

#: Bytes kept of each sample's SHA-256 digest: 128 bits, so that a collision
#: between two of even billions of samples is out of reach.
DIGEST_SIZE = 16

_PLAIN = (bool, int, float, str, type(None))


def _plain_attributes(module: nn.Module) -> Iterable[tuple[str, object]]:
    """Hyperparameters a module keeps as plain attributes (``eps``, ``p``, a scale).

    They can change what ``forward`` computes without showing in the weights.
    """
    for name, value in sorted(vars(module).items()):
        if name.startswith("_") or name == "training":
            continue
        if isinstance(value, _PLAIN) or (
            isinstance(value, tuple) and all(isinstance(item, _PLAIN) for item in value)
        ):
            yield name, value


def _callable_identity(function: Callable) -> str:
    code = getattr(function, "__code__", None)
    body = "" if code is None else f"{code.co_code.hex()}{code.co_consts!r}"
    name = getattr(function, "__qualname__", repr(function))
    return f"{getattr(function, '__module__', '')}.{name}{body}"


def encoder_fingerprint(
    encoder: nn.Module,
    *,
    output_key: str | None,
    pooling: object,
    device: torch.device,
    precision: str = "32",
) -> str:
    """A hex digest of everything that decides the features an encoder produces.

    The encoder's class, its module tree (``repr``), the plain attributes of
    every submodule, the name, dtype, shape and bytes of every parameter and
    buffer, the output selection and pooling, and the device type (a GPU
    rounds differently from a CPU). The weights are hashed once per call, so
    call it once per fit or predict, not per batch. State that ``forward``
    reads from elsewhere (a global, a tensor attribute that is not a
    registered buffer) is not seen.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from sklearn_finetune._fingerprint import encoder_fingerprint
    >>> layer = nn.Linear(3, 2)
    >>> cpu = torch.device("cpu")
    >>> key = encoder_fingerprint(layer, output_key=None, pooling="mean", device=cpu)
    >>> with torch.no_grad():
    ...     _ = layer.weight.add_(1)
    >>> key == encoder_fingerprint(layer, output_key=None, pooling="mean", device=cpu)
    False
    """
    digest = hashlib.sha256()
    module = type(encoder).__module__
    if module == "__mp_main__":  # the user's script, as a spawned worker (dask's, Ray's) imports it
        module = "__main__"
    pooling_identity = _callable_identity(pooling) if callable(pooling) else repr(pooling)
    header = (
        CACHE_FORMAT,
        f"{module}.{type(encoder).__qualname__}",
        repr(encoder),
        f"output_key={output_key!r}",
        f"pooling={pooling_identity}",
        f"device={device.type}",
        f"precision={precision}",
    )
    digest.update("\n".join(header).encode())
    for module_name, module in encoder.named_modules():
        for name, value in _plain_attributes(module):
            digest.update(f"\n{module_name}.{name}={value!r}".encode())
    for name, tensor in chain(encoder.named_parameters(), encoder.named_buffers()):
        tensor = tensor.detach()
        digest.update(f"\n{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).cpu().numpy().data)
    return digest.hexdigest()


def row_digests(X: np.ndarray | Mapping[str, np.ndarray]) -> list[bytes]:
    """One digest per sample of validated input, from its dtype, shape and bytes.

    A dict input hashes each sample's rows of all its arrays, in key order.
    An X read in batches (memmap, dataset) is hashed a block at a time by
    the caller: a block's digests are those of the same rows in memory.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_finetune._fingerprint import row_digests
    >>> a, b, c = row_digests(np.array([[1.0, 2.0], [3.0, 4.0], [1.0, 2.0]], dtype="float32"))
    >>> a == c, a == b
    (True, False)
    """
    named = sorted(X.items()) if isinstance(X, Mapping) else [("", X)]
    header = hashlib.sha256()
    rows = []
    for name, array in named:
        array = np.ascontiguousarray(array)
        header.update(f"{name}:{array.dtype.str}:{array.shape[1:]}\n".encode())
        rows.append(array.reshape(len(array), -1).view(np.uint8))
    digests = []
    for i in range(n_samples(X)):
        digest = header.copy()
        for row in rows:
            digest.update(row[i])
        digests.append(digest.digest()[:DIGEST_SIZE])
    return digests
