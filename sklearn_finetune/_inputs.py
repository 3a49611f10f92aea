"""Check X and turn it into what the module is fed: an array, or a dict of arrays.

The rules, in one place:

* numpy arrays of any rank ``(n_samples, ...)`` with at least two axes, numeric
  pandas DataFrames, torch tensors (moved to the CPU), and dicts of
  equal-length arrays (passed to the encoder as keyword arguments);
* X larger than memory: a ``numpy.memmap``, a Hugging Face ``datasets.Dataset``
  or a torch ``Dataset``, kept where it is and read in batches
  (:class:`~sklearn_finetune._streamed.StreamedX`), never copied whole;
* floating data becomes float32; integer and boolean arrays (token ids,
  masks) keep their dtype for an encoder you pass, while DataFrames and
  everything fed to the built-in MLP become float32;
* NaN and infinity are refused, and so are values float32 cannot hold and
  empty inputs (no samples, or samples that hold no values);
* at predict time a 2-D X must have ``n_features_in_`` columns, any other X
  the same number of axes (encoders that pool accept other lengths and image
  sizes), and a dict the same keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import sparse
from sklearn.utils.validation import check_array, validate_data

from ._streamed import StreamedX, is_streamed_input, tensor_to_numpy, to_model_dtype

ModelInput = np.ndarray | dict[str, np.ndarray] | StreamedX


def _check_sample_size(array: np.ndarray, name: str = "X") -> None:
    """Refuse an array of three or more axes whose samples hold no values.

    scikit-learn's ``check_array`` refuses 2-D arrays without features, not
    these: an encoder would return nothing (or NaN, pooled over no tokens).
    """
    if array.ndim > 2 and 0 in array.shape[1:]:
        raise ValueError(
            f"{name} has samples of shape {array.shape[1:]}, which hold no values "
            f"(shape {array.shape}); every axis after the first must have length 1 or more."
        )


def _describe(X: ModelInput) -> str:
    if isinstance(X, StreamedX):
        layout = X.layout
        if isinstance(layout, dict):
            return f"{X.kind} with inputs " + ", ".join(map(repr, layout))
        return f"{X.kind} of samples of shape {layout}"
    if isinstance(X, Mapping):
        return "a dict with keys " + ", ".join(map(repr, X))
    return f"an array of shape {X.shape}"


def _refuse_dict_for_mlp(keys: Any) -> None:
    raise ValueError(
        "X is a dict (or a dataset of several columns), but encoder=None builds an MLP "
        "that takes one array. Pass an encoder whose forward accepts the keyword "
        f"arguments {', '.join(map(repr, keys))}, or pass X as an array."
    )


def _validate_dict(X: Mapping, *, for_mlp: bool) -> dict[str, np.ndarray]:
    if for_mlp:
        _refuse_dict_for_mlp(X)
    if not X:
        raise ValueError("X is an empty dict; it must map input names to arrays.")
    arrays = {}
    for key, value in X.items():
        if not isinstance(key, str):
            raise TypeError(
                f"The keys of a dict X are passed to the encoder as keyword "
                f"arguments, so they must be strings; got {key!r}."
            )
        if isinstance(value, torch.Tensor):
            value = tensor_to_numpy(value)
        value = check_array(
            value, allow_nd=True, ensure_2d=False, dtype="numeric", input_name=f"X[{key!r}]"
        )
        _check_sample_size(value, f"X[{key!r}]")
        arrays[key] = to_model_dtype(value, f"X[{key!r}]")
    lengths = {key: len(value) for key, value in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(
            f"The arrays in a dict X must all have one row per sample; got lengths {lengths}."
        )
    return arrays


def _forget_2d_attributes(estimator: Any) -> None:
    for name in ("n_features_in_", "feature_names_in_"):
        if hasattr(estimator, name):
            delattr(estimator, name)


def _validate_streamed(estimator: Any, X: Any, *, reset: bool, for_mlp: bool) -> StreamedX:
    """A memmap or a dataset as a :class:`StreamedX`, checked in one pass over blocks of it."""
    X = StreamedX(X, for_mlp=for_mlp)
    layout = X.layout
    shapes = layout.values() if isinstance(layout, dict) else [layout]
    if isinstance(layout, dict) and for_mlp:
        _refuse_dict_for_mlp(layout)
    if any(len(shape) == 0 for shape in shapes):
        raise ValueError(
            f"X ({X.kind}) has samples that are single numbers (shape ()); each sample "
            "must be an array of at least one axis, as a 2-D X's rows are."
        )
    if any(0 in shape for shape in shapes):
        raise ValueError(
            f"X ({X.kind}) has samples of shape {layout}, which hold no values; every "
            "axis of a sample must have length 1 or more."
        )
    if not isinstance(layout, dict) and len(layout) == 1:
        validate_data(estimator, X, reset=reset, skip_check_array=True)
    elif reset:
        _forget_2d_attributes(estimator)
    X.check_values()
    return X


def validate_X(estimator: Any, X: Any, *, reset: bool, for_mlp: bool) -> ModelInput:
    """Check X and return it as float32/integer numpy data the module can take.

    Parameters
    ----------
    estimator : FoundationClassifier or FoundationRegressor
        Receives ``n_features_in_``, ``feature_names_in_`` (2-D input) and
        ``input_shape_`` when ``reset`` is true, and is checked against them
        otherwise.
    X : array-like, DataFrame, torch.Tensor, dict of those, memmap or Dataset
        The input. A ``numpy.memmap``, a ``datasets.Dataset`` or a torch
        ``Dataset`` is not read into memory: it is checked in one pass over
        blocks of it and returned as a :class:`StreamedX`.
    reset : bool
        True in ``fit``; False in ``predict`` and friends.
    for_mlp : bool
        True when the built-in MLP backbone is used (``encoder=None``): all
        input becomes float32 and must be one array.

    Returns
    -------
    numpy.ndarray, dict of numpy.ndarray, or StreamedX
    """
    if X is None:
        raise ValueError(
            "X is None; pass the input as an array, a DataFrame, a tensor or a dict of arrays."
        )
    if sparse.issparse(X):  # before the Mapping test: scipy's dok_array is a dict
        raise TypeError(
            f"Sparse data was passed as X ({type(X).__name__}), but encoders take dense "
            f"input; convert it with X.toarray()."
        )
    shape: Any
    if is_streamed_input(X):
        X = _validate_streamed(estimator, X, reset=reset, for_mlp=for_mlp)
        shape = X.layout
    elif isinstance(X, Mapping):
        X = _validate_dict(X, for_mlp=for_mlp)
        if reset:
            _forget_2d_attributes(estimator)
        shape = {key: value.shape[1:] for key, value in X.items()}
    else:
        if isinstance(X, torch.Tensor):
            X = tensor_to_numpy(X)
        elif not hasattr(X, "ndim"):
            X = np.asarray(X)
        dtype = np.float32 if for_mlp or isinstance(X, pd.DataFrame) else "numeric"
        if X.ndim <= 2:
            X = validate_data(estimator, X, reset=reset, dtype=dtype)
        else:
            X = check_array(X, allow_nd=True, dtype=dtype, estimator=estimator, input_name="X")
            _check_sample_size(X)
            if reset:
                _forget_2d_attributes(estimator)
        X = to_model_dtype(X)
        shape = X.shape[1:]
    if reset:
        estimator.input_shape_ = shape
    else:
        _check_same_layout(estimator.input_shape_, shape, X)
    return X


def _check_same_layout(fitted: Any, given: Any, X: ModelInput) -> None:
    if isinstance(fitted, dict) != isinstance(given, dict):
        expected = "a dict" if isinstance(fitted, dict) else "an array"
        raise ValueError(
            f"X was {expected} at fit time but is {_describe(X)} now; pass X in the "
            f"form the estimator was fitted on."
        )
    if isinstance(fitted, dict):
        if set(fitted) != set(given):
            raise ValueError(
                f"X has keys {sorted(given)}, but the estimator was fitted on keys "
                f"{sorted(fitted)}."
            )
        pairs = [(fitted[key], given[key], f"X[{key!r}]") for key in fitted]
    else:
        pairs = [(fitted, given, "X")]
    for fitted_shape, given_shape, name in pairs:
        if len(fitted_shape) != len(given_shape):
            raise ValueError(
                f"{name} has samples of shape {tuple(given_shape)}, but the estimator "
                f"was fitted on samples of shape {tuple(fitted_shape)}: the number of "
                f"axes must match."
            )


def n_samples(X: ModelInput | Mapping[str, Any]) -> int:
    """Number of samples in validated input."""
    if isinstance(X, Mapping):
        return len(next(iter(X.values())))
    return len(X)
