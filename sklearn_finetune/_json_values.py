"""Parameters, fitted attributes and training history as plain JSON, and back: data only.

What :mod:`._persistence` writes beside the weights. Values JSON holds
exactly (numbers, strings, bools, None) pass as they are; tuples, dicts and
NumPy arrays are tagged so that they come back as they were; anything else
(a module, a callable, an object) is refused with what to do, because
loading must run no code.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

#: What a label or an object-array entry may be: JSON holds these exactly.
PLAIN = (bool, int, float, str)

#: Why a parameter that JSON cannot hold is refused, and what to do.
HINTS = {
    "head": "a head given as a module or a factory is code; only 'linear' and 'mlp' "
    "are rebuilt from a file. Use pickle for such an estimator, and only with people you trust",
    "pooling": "a pooling function is code; only the named poolings are rebuilt from a file",
    "solver": "an optimizer given as a callable is code; refit with a named solver to save",
    "callbacks": "callbacks are code, and predicting does not need them: "
    "set_params(callbacks=None) before saving",
    "val_split": "it holds validation data, which predicting does not need: "
    "set_params(val_split=0.1) (any fraction) before saving",
    "random_state": "only an int or None is stored: set_params(random_state=0) before saving",
}


def refuse(name: str, value: Any) -> ValueError:
    hint = HINTS.get(name, "a saved estimator holds numbers, strings, lists, tuples and dicts")
    shown = " ".join(repr(value).split())
    return ValueError(
        f"{name}={shown:.80} ({type(value).__name__}) cannot be saved: {hint}. "
        "Saving writes JSON and safetensors only, so that loading runs no code."
    )


def encode_array(array: np.ndarray, name: str) -> dict[str, Any]:
    values = array.ravel().tolist()
    if array.dtype.kind == "O" and all(type(value) in PLAIN for value in values):
        dtype = "object"
    elif array.dtype.kind in "biufU":
        dtype = array.dtype.str
    else:
        raise ValueError(
            f"{name} holds values of dtype {array.dtype}, which cannot be saved: a saved "
            "estimator holds ints, floats, bools and strings (JSON keeps them exactly). "
            "Encode such labels as strings or ints before fitting."
        )
    return {"dtype": dtype, "shape": list(array.shape), "values": values}


def decode_array(content: Any, name: str) -> np.ndarray:
    dtype = np.dtype(content["dtype"])
    values = content["values"]
    if dtype.kind not in "biufUO" or (
        dtype.kind == "O" and not all(type(value) in PLAIN for value in values)
    ):
        raise ValueError(f"{name} in the file has values of dtype {dtype}, which is not loaded.")
    return np.array(values, dtype=dtype).reshape(content["shape"])


def encode_value(value: Any, name: str, *, arrays: bool = False) -> Any:
    """``value`` as JSON: tuples, dicts (any plain keys) and ``arrays`` tagged; the rest refused."""
    if isinstance(value, np.generic) and value.dtype.kind in "biufU":
        return value.item()
    if value is None or type(value) in PLAIN:
        return value
    if isinstance(value, torch.device):
        return str(value)
    if isinstance(value, list):
        return [encode_value(item, name, arrays=arrays) for item in value]
    if isinstance(value, tuple):
        return {"tuple": [encode_value(item, name, arrays=arrays) for item in value]}
    if isinstance(value, dict):
        pairs = [
            [encode_value(k, name), encode_value(v, name, arrays=arrays)] for k, v in value.items()
        ]
        return {"dict": pairs}
    if arrays and isinstance(value, np.ndarray):
        return {"array": encode_array(value, name)}
    raise refuse(name, value)


def decode_value(value: Any, name: str) -> Any:
    """Undo :func:`encode_value`: data only."""
    if isinstance(value, list):
        return [decode_value(item, name) for item in value]
    if not isinstance(value, dict):
        return value
    if len(value) != 1 or next(iter(value)) not in ("tuple", "dict", "array"):
        raise ValueError(f"{name} in the file is malformed: {value!r:.80}.")
    ((tag, content),) = value.items()
    if tag == "array":
        return decode_array(content, name)
    if tag == "tuple":
        return tuple(decode_value(item, name) for item in content)
    return {decode_value(k, name): decode_value(v, name) for k, v in content}


def history_json(value: Any, where: str) -> Any:
    """A history entry as plain JSON, as skorch's ``History.to_file`` writes it."""
    if isinstance(value, np.generic) and value.dtype.kind in "biufU":
        return value.item()
    if value is None or isinstance(value, PLAIN):
        return value
    if isinstance(value, list | tuple):
        return [history_json(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        return {key: history_json(item, f"{where}[{key!r}]") for key, item in value.items()}
    raise ValueError(
        f"history_{where} is a {type(value).__name__}, which cannot be saved: the history "
        "holds numbers, strings, lists and dicts (a callback recorded something else; "
        "record plain numbers instead)."
    )
