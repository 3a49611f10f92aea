"""How an estimator pickles: its state through ``torch.save``, so that it loads without CUDA."""

from __future__ import annotations

import io
import threading
import warnings
from typing import Any

import cloudpickle
import torch

from ._shared_encoders import check_readable, deepcopy_with_own_encoder, with_shared_encoder

#: The key of a pickled estimator's state: its ``__dict__`` as ``torch.save`` bytes.
TORCH_STATE = "_torch_state"

#: Whether this thread is inside an estimator's ``torch.save`` of its state.
_pickling = threading.local()


class TorchPickling:
    """Mixin of the estimators: ``__getstate__``, ``__setstate__`` and ``__deepcopy__``."""

    def _validate_params(self) -> None:
        """Raise first the error of a shared encoder this process could not load (see
        ``_shared_encoders.UnreadableEncoder``), then validate as scikit-learn does."""
        check_readable(self.__dict__.get("encoder"))
        super()._validate_params()  # type: ignore[misc]  # BaseEstimator's

    def __getstate__(self) -> dict[str, Any]:
        """The state, every tensor in it (the encoder's, the net's) written by ``torch.save``.

        Python's pickle would restore a tensor on the device it was saved
        from, so an estimator pickled on a CUDA machine could not be
        unpickled on one without CUDA; ``torch.save`` records where each
        tensor was, and :meth:`__setstate__` maps them to the CPU there.
        Inside that ``torch.save`` (the estimator is reached again from its
        own callbacks) the plain state is pickled: torch's pickler already
        handles every tensor. ``accelerator`` is pickled as None: it is a
        handle on the processes of one launch, which another process has not.
        The pickler is cloudpickle's (what joblib and dask send tasks with):
        an encoder class defined in the user's script (``__main__``) is
        pickled by value, so that worker processes, which cannot import it,
        load it; plain pickle loads the result.
        Unfitted, with a ``FeatureCache(directory, share_encoders=True)`` as
        ``cache``, the encoder is pickled as a reference to its file there
        (see :func:`with_shared_encoder`).
        """
        state = super().__getstate__()  # type: ignore[misc]  # BaseEstimator's
        if state.get("accelerator") is not None:  # a handle on this launch's processes only
            state = {**state, "accelerator": None}
        if getattr(_pickling, "active", False):
            return state
        state = with_shared_encoder(state, fitted="module_" in state)
        buffer = io.BytesIO()
        _pickling.active = True
        try:
            torch.save(state, buffer, pickle_module=cloudpickle)
        finally:
            _pickling.active = False
        return {TORCH_STATE: buffer.getvalue()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Undo :meth:`__getstate__`: tensors saved on a GPU load on the CPU when it has none."""
        if TORCH_STATE in state:
            location = None if torch.cuda.is_available() else "cpu"
            buffer = io.BytesIO(state[TORCH_STATE])
            state = torch.load(buffer, map_location=location, weights_only=False)
        super().__setstate__(state)  # type: ignore[misc]  # BaseEstimator's
        device = self.__dict__.get("device_")
        if device is not None and device.type == "cuda" and not torch.cuda.is_available():
            warnings.warn(
                f"This estimator was fitted on {device}, which this machine does not have; "
                "it predicts on the CPU.",
                UserWarning,
                stacklevel=2,
            )
            self.device_ = torch.device("cpu")

    def __deepcopy__(self, memo: dict[int, Any]) -> TorchPickling:
        """A copy through :meth:`__getstate__`, with its own encoder even if the cache shares it."""
        return deepcopy_with_own_encoder(self, memo)
