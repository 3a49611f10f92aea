"""Encoders shared through a feature cache directory: pickled as a file reference, loaded once.

Under joblib's dask backend every (candidate, fold) task carries a clone of
the estimator, and the encoder inside it travels with each task (joblib's
``scatter`` reaches only a task's top-level arguments). With
``FeatureCache(directory, share_encoders=True)`` an unfitted estimator
pickles its encoder as an :class:`EncoderFile` instead: the path and SHA-256
of ``<directory>/encoders/<sha256>.pt``, which the pickling process writes
once (``torch.save`` of the module, atomically). Unpickling the reference
gives the module itself, loaded from the file by the first task of each
process and shared by the later ones (``fit`` never changes the encoder it
is given).
"""

from __future__ import annotations

import copy
import hashlib
import io
import threading
import warnings
import weakref
from itertools import chain
from pathlib import Path
from typing import Any, TypeVar

import cloudpickle
import torch
from sklearn.base import BaseEstimator
from torch import nn

from ._cache import FeatureCache
from ._cache_files import ENCODER_FOLDER, ENCODER_SUFFIX, write_content_addressed
from ._fingerprint import _plain_attributes

#: The encoders this process loaded from their files, by SHA-256: one per
#: encoder a search shares, kept for the life of the process (a worker's
#: next search, or the rest of this one, finds it here).
LOADED: dict[str, nn.Module] = {}
_loading = threading.Lock()

#: The files this process wrote, per encoder and directory, with the
#: encoder's state then (:func:`_state_signature`): a search pickles the same
#: encoder into every task, and it is serialised and hashed once, not per task.
_WRITTEN: weakref.WeakKeyDictionary[nn.Module, dict[Path, tuple[tuple, EncoderFile]]] = (
    weakref.WeakKeyDictionary()
)

#: Whether this thread is inside a ``copy.deepcopy`` of an estimator.
_copying = threading.local()

Estimator = TypeVar("Estimator", bound=BaseEstimator)


#: What each loaded encoder was when loaded (see :func:`_state_signature`).
_SIGNATURES: dict[str, tuple] = {}


class EncoderFile:
    """What a pickle carries in place of an encoder: the file that holds it, and its SHA-256.

    Unpickled, it is the module itself (:func:`load_shared_encoder`).
    """

    def __init__(self, path: str, sha256: str) -> None:
        self.path = path
        self.sha256 = sha256

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return load_shared_encoder, (self.path, self.sha256)


def with_shared_encoder(state: dict[str, Any], *, fitted: bool) -> dict[str, Any]:
    """An estimator's pickled state, its encoder replaced by an :class:`EncoderFile` if shared.

    Only an unfitted estimator (what a search sends each task) whose
    ``cache`` is a ``FeatureCache`` with ``share_encoders=True``, outside
    ``copy.deepcopy``; ``state`` itself is not changed. If the file cannot
    be written, the encoder stays in the state, with a warning.

    Parameters
    ----------
    state : dict
        The estimator's state, as its ``__getstate__`` would pickle it.
    fitted : bool
        Whether the estimator is fitted: then the state is returned as it is.

    Returns
    -------
    dict
    """
    cache, encoder = state.get("cache"), state.get("encoder")
    if (
        fitted
        or getattr(_copying, "active", False)
        or not isinstance(cache, FeatureCache)
        or not cache.share_encoders
        or cache.directory is None
        or not isinstance(encoder, nn.Module)
    ):
        return state
    reference = _loaded_reference(encoder, cache.directory) or _written(encoder, cache.directory)
    return state if reference is None else {**state, "encoder": reference}


def _loaded_reference(encoder: nn.Module, directory: Path) -> EncoderFile | None:
    """The reference to ``encoder`` if this process loaded it from its file (no hashing again).

    dask's scheduler unpickles every task and pickles it again to send it on;
    a loaded encoder is shared by tasks that never change it, so its content
    is still the file's.
    """
    with _loading:
        sha256 = next((sha for sha, module in LOADED.items() if module is encoder), None)
        if sha256 is None or _SIGNATURES.get(sha256) != _state_signature(encoder):
            return None  # not loaded here, or changed in place since: hashed and written anew
    return EncoderFile(str(directory / ENCODER_FOLDER / f"{sha256}{ENCODER_SUFFIX}"), sha256)


def _written(encoder: nn.Module, directory: Path) -> EncoderFile | None:
    """Write ``torch.save(encoder)`` to its file unless it is there; None if that failed.

    An encoder this process wrote before, unchanged since and whose file is
    still there, is not serialised and hashed again.
    """
    signature = _state_signature(encoder)
    with _loading:
        known = _WRITTEN.get(encoder, {}).get(directory)
    if known is not None and known[0] == signature and Path(known[1].path).is_file():
        return known[1]
    buffer = io.BytesIO()
    torch.save(encoder, buffer, pickle_module=cloudpickle)  # a __main__ class by value
    data = buffer.getvalue()
    folder = directory / ENCODER_FOLDER
    try:
        file = write_content_addressed(data, folder, ENCODER_SUFFIX)
    except OSError as exc:
        warnings.warn(
            f"Could not write the encoder to {folder} ({exc}); the estimator is pickled with "
            f"its encoder, as with share_encoders=False.",
            RuntimeWarning,
            stacklevel=4,  # _written, with_shared_encoder, __getstate__, the pickler
        )
        return None
    reference = EncoderFile(str(file), file.name.removesuffix(ENCODER_SUFFIX))
    with _loading:
        _WRITTEN.setdefault(encoder, {})[directory] = (signature, reference)
    return reference


def load_shared_encoder(path: str, sha256: str) -> nn.Module | UnreadableEncoder:
    """The encoder in ``path``: loaded and checked by the first caller in this process, then kept.

    Parameters
    ----------
    path : str
        The encoder's file, ``<directory>/encoders/<sha256>.pt``.
    sha256 : str
        The SHA-256 of the file's content when it was written.

    Returns
    -------
    torch.nn.Module or UnreadableEncoder
        The same module for every call with ``sha256`` in this process
        (loaded again if someone changed it in place since); an
        :class:`UnreadableEncoder` holding the error (``FileNotFoundError``
        or ``OSError``: the file cannot be read here; ``ValueError``: its
        SHA-256 is not the one written) if it cannot be loaded, which a fit
        raises.
    """
    with _loading:  # the other threads of this process wait, then share the one load
        kept = LOADED.get(sha256)
        if kept is None or _SIGNATURES[sha256] != _state_signature(kept):  # changed in place
            try:
                module = _load(path, sha256)
            except (OSError, ValueError) as error:
                return UnreadableEncoder(path, sha256, error)
            LOADED[sha256], _SIGNATURES[sha256] = module, _state_signature(module)
        return LOADED[sha256]


def _state_signature(module: nn.Module) -> tuple:
    """What an in-place change alters, without hashing weights: tensors' identities and versions.

    Every in-place write to a tensor (an optimizer step, ``copy_``,
    ``load_state_dict``) bumps its version counter; a replaced tensor or
    module changes the identities; plain hyperparameters are compared by value.
    """
    tensors = chain(module.named_parameters(), module.named_buffers())
    return (
        tuple((name, id(tensor), tensor._version) for name, tensor in tensors),
        tuple(
            (name, attribute, repr(value))
            for name, child in module.named_modules()
            for attribute, value in _plain_attributes(child)
        ),
    )


class UnreadableEncoder:
    """What an :class:`EncoderFile` unpickles to where its file cannot be read or is damaged.

    Unpickling does not fail (dask's scheduler, or a pickled search, may
    never need the encoder); a fit raises the error (:func:`check_readable`),
    and pickled again it is the same reference, which another process may read.
    """

    def __init__(self, path: str, sha256: str, error: Exception) -> None:
        self.path, self.sha256, self.error = path, sha256, error

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return load_shared_encoder, (self.path, self.sha256)

    def __repr__(self) -> str:
        return f"UnreadableEncoder({self.path!r})"


def check_readable(encoder: Any) -> None:
    """Raise the error of an encoder whose shared file could not be loaded in this process.

    Raises
    ------
    FileNotFoundError, OSError or ValueError
        The error loading the file met (see :func:`load_shared_encoder`).
    """
    if isinstance(encoder, UnreadableEncoder):
        raise type(encoder.error)(str(encoder.error)) from encoder.error


def _load(path: str, sha256: str) -> nn.Module:
    advice = (
        "An unfitted estimator whose cache is FeatureCache(directory, share_encoders=True) "
        "is pickled with its encoder as this file: every process that unpickles it (each "
        "worker, and dask's scheduler) must read the directory at the same path, and the "
        "file must stay until they have (FeatureCache.clear() deletes it). Otherwise use "
        "share_encoders=False, which pickles the encoder with every task."
    )
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        error = FileNotFoundError if isinstance(exc, FileNotFoundError) else OSError
        raise error(f"Cannot read the shared encoder file {path} ({exc}). {advice}") from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise ValueError(
            f"The shared encoder file {path} does not hold the encoder that was pickled: "
            f"its SHA-256 is {actual}, the name's is {sha256} (the file was changed or "
            f"damaged). {advice}"
        )
    location = None if torch.cuda.is_available() else "cpu"
    return torch.load(io.BytesIO(data), map_location=location, weights_only=False)


def deepcopy_with_own_encoder(estimator: Estimator, memo: dict[int, Any]) -> Estimator:
    """``copy.deepcopy(estimator)`` as without sharing: the copy's encoder is a copy.

    A deep copy never leaves the process, so its encoder is copied, not
    written to the cache directory and shared. Otherwise this is what
    ``copy.deepcopy`` does through ``__reduce_ex__``: the state from
    ``__getstate__``, deep-copied, given to ``__setstate__`` of a new object.
    """
    previous = getattr(_copying, "active", False)
    _copying.active = True
    try:
        state = estimator.__getstate__()
    finally:
        _copying.active = previous
    new = object.__new__(type(estimator))  # as copyreg.__newobj__ (no __new__ of our own)
    memo[id(estimator)] = new
    new.__setstate__(copy.deepcopy(state, memo))
    return new
