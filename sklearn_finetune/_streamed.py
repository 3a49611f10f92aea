"""X larger than memory: memory-mapped arrays, Hugging Face and torch datasets, read in batches.

:class:`StreamedX` wraps the X a user passed and reads it a batch of rows
at a time, converting each batch as an in-memory X would be converted
(floating data to float32, values float32 cannot hold refused). Nothing
here reads all of X at once: the checks that must see every value (NaN and
infinity, samples of another shape) run over X in blocks of
:data:`BLOCK_BYTES`, and the frozen encoding and the training loop index
it by rows.

* A ``numpy.memmap`` (``np.memmap``, ``np.load(..., mmap_mode="r")``) is
  indexed by rows; the pages read are handed back to the operating system
  after each read (``madvise(MADV_DONTNEED)``; they stay in its page cache),
  so they do not add to the process's resident memory. A copy-on-write map
  (``mode="c"``) keeps its pages: they may hold changes of the caller's.
* A Hugging Face ``datasets.Dataset`` is read in NumPy format; its columns
  are the inputs (one column: an array X; several: a dict X, passed to the
  encoder as keyword arguments).
* A torch ``Dataset`` (with ``__len__``) yields one sample per index: a
  tensor, an array, or a dict of those (inputs only: y is passed to ``fit``).
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Iterator, Mapping
from typing import Any, cast

import numpy as np
import torch

#: Bytes of X read at a time by the passes over all of it (checks, hashing,
#: frozen encoding): 32 MiB. A block is also what the feature cache stores
#: (and writes to disk) as one entry.
BLOCK_BYTES = 32 * 2**20

#: Bytes of a memory map read between two hand-backs of its pages to the OS.
RELEASE_BYTES = 8 * 2**20

#: The largest magnitude float32, the precision the model computes in, holds.
_FLOAT32_MAX = float(np.finfo(np.float32).max)

Batch = np.ndarray | dict[str, np.ndarray]
Rows = slice | np.ndarray


def is_streamed_input(X: Any) -> bool:
    """Whether X is read in batches: a memmap, a ``datasets.Dataset`` or a torch ``Dataset``."""
    return isinstance(X, (np.memmap, torch.utils.data.Dataset)) or (
        type(X).__module__.startswith("datasets.") and type(X).__name__.endswith("Dataset")
    )


def tensor_to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A tensor as a NumPy array on the CPU, floating point as float32."""
    tensor = tensor.detach().cpu()
    if tensor.is_floating_point():
        tensor = tensor.float()
    return tensor.numpy()


def to_model_dtype(array: np.ndarray, name: str = "X") -> np.ndarray:
    """Floating data as float32; values float32 cannot hold are refused, not made infinite."""
    if not np.issubdtype(array.dtype, np.floating):
        return array
    if array.dtype.itemsize > 4 and array.size:
        largest = max(-float(array.min()), float(array.max()))
        if largest > _FLOAT32_MAX:
            raise ValueError(
                f"{name} has values too large for float32, the precision the model "
                f"computes in: the largest magnitude is {largest:.3g}, float32 holds up "
                f"to {_FLOAT32_MAX:.3g}. Rescale it first, e.g. with StandardScaler."
            )
    return array.astype(np.float32, copy=False)


def _release_pages(array: np.memmap) -> None:
    """Hand a shared memory map's pages back to the OS (a private ``mode="c"`` map keeps them)."""
    handle = getattr(array, "_mmap", None)
    if handle is not None and array.mode != "c" and hasattr(mmap, "MADV_DONTNEED"):
        handle.madvise(mmap.MADV_DONTNEED)


def _memmap_reader(array: np.memmap) -> Callable[[Rows], Batch]:
    row_bytes = max(1, array[:1].nbytes)
    step = max(1, RELEASE_BYTES // row_bytes)

    def read(rows: Rows) -> np.ndarray:
        if not isinstance(rows, slice):
            batch = np.asarray(array[rows])  # an index array: numpy copies the rows
            _release_pages(array)
            return batch
        view = array[rows]
        batch = np.empty(view.shape, dtype=view.dtype)
        for start in range(0, len(view), step):
            batch[start : start + step] = view[start : start + step]
            _release_pages(array)
        return batch

    return read


def _datasets_reader(dataset: Any) -> Callable[[Rows], Batch]:
    table = dataset.with_format("numpy")
    columns = list(dataset.column_names)

    def read(rows: Rows) -> Batch:
        batch = table[rows if isinstance(rows, slice) else rows.tolist()]
        arrays = {column: np.asarray(batch[column]) for column in columns}
        return arrays[columns[0]] if len(columns) == 1 else arrays

    return read


def _as_array(value: Any, index: int, what: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return tensor_to_numpy(value)
    if isinstance(value, np.ndarray):
        return value
    hint = (
        " If it is an (input, target) pair, pass a dataset of the inputs only and y to fit."
        if isinstance(value, tuple)
        else ""
    )
    raise TypeError(
        f"The items of a torch Dataset X must be tensors, arrays or dicts of them (the "
        f"inputs of one sample); {what} of item {index} is a {type(value).__name__}.{hint}"
    )


def _item(item: Any, index: int) -> np.ndarray | dict[str, np.ndarray]:
    if isinstance(item, Mapping):
        return {key: _as_array(value, index, f"key {key!r}") for key, value in item.items()}
    return _as_array(item, index, "the value")


def _stack_arrays(samples: list[Any], indices: list[int], name: str) -> np.ndarray:
    first = samples[0]
    for sample, index in zip(samples, indices, strict=True):
        if sample.shape != first.shape:
            raise ValueError(
                f"{name} has samples of different shapes: {sample.shape} at item {index}, "
                f"{first.shape} at item {indices[0]}; every sample must have the same shape."
            )
    return np.stack(samples)


def _stack(samples: list[Any], indices: list[int]) -> Batch:
    first = samples[0]
    if not isinstance(first, dict):
        for sample, index in zip(samples, indices, strict=True):
            if isinstance(sample, dict):
                raise ValueError(
                    f"Item {index} of the torch Dataset X is a dict, item {indices[0]} is "
                    "not; every item must have the same form."
                )
        return _stack_arrays(samples, indices, "The torch Dataset X")
    for sample, index in zip(samples, indices, strict=True):
        if not isinstance(sample, dict) or set(sample) != set(first):
            raise ValueError(
                f"Item {index} of the torch Dataset X is not a dict with the keys "
                f"{sorted(first)} of item {indices[0]}; every item must have the same form."
            )
    return {
        key: _stack_arrays([s[key] for s in samples], indices, f"X[{key!r}] (a torch Dataset)")
        for key in first
    }


def _torch_reader(dataset: Any) -> Callable[[Rows], Batch]:
    def read(rows: Rows) -> Batch:
        indices = (
            list(range(*rows.indices(len(dataset)))) if isinstance(rows, slice) else rows.tolist()
        )
        getitems = getattr(dataset, "__getitems__", None)
        items = getitems(indices) if getitems is not None else [dataset[i] for i in indices]
        return _stack([_item(item, i) for item, i in zip(items, indices, strict=True)], indices)

    return read


def _convert(array: np.ndarray, name: str, *, for_mlp: bool) -> np.ndarray:
    """One batch as the model takes it: float32 floats (refusing what float32 cannot hold)."""
    if array.dtype == object:
        raise ValueError(
            f"{name} holds samples of different shapes (or non-numeric values); every "
            "sample must be a numeric array of one shape."
        )
    if array.dtype.kind not in "biuf":
        raise TypeError(
            f"{name} has dtype {array.dtype}; encoders take numeric input (floats, or "
            f"integer token ids). Drop or encode the non-numeric data first."
        )
    array = to_model_dtype(array, name)
    return array.astype(np.float32, copy=False) if for_mlp else array


def _article(word: str) -> str:
    """``"an"`` before a vowel sound, else ``"a"`` (``"an IterableDataset"``, ``"a UserData"``)."""
    lower = word.lower()
    if lower.startswith(("uni", "use", "usa", "usi", "uti", "eu", "one")):
        return "a"
    return "an" if lower[:1] in ("a", "e", "i", "o", "u") else "a"


class StreamedX:
    """An X read a batch of rows at a time, each batch converted as an in-memory X would be.

    Indexing with a slice or an array of row numbers returns those rows as
    a float32 (or integer) array, or a dict of them; with an int, one
    sample.

    Parameters
    ----------
    source : numpy.memmap, datasets.Dataset or torch.utils.data.Dataset
        The data; never changed, nor read in full at once.
    for_mlp : bool, default=False
        Turn every input into float32 (the built-in MLP backbone).

    Attributes
    ----------
    layout : tuple or dict of tuple
        The shape of one sample (a dict of shapes for several inputs).

    Raises
    ------
    TypeError
        X has no ``__len__``, or items or columns that are not numeric arrays.
    ValueError
        X is empty, or a ``datasets.Dataset`` has a column of single numbers
        (a label column left in).

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> from sklearn_finetune._streamed import StreamedX
    >>> class Squares(torch.utils.data.Dataset):
    ...     def __len__(self):
    ...         return 4
    ...     def __getitem__(self, i):
    ...         return torch.full((3,), float(i * i), dtype=torch.float64)
    >>> X = StreamedX(Squares())
    >>> X.shape, X[np.array([3, 1])].tolist()
    ((4, 3), [[9.0, 9.0, 9.0], [1.0, 1.0, 1.0]])
    """

    def __init__(self, source: Any, *, for_mlp: bool = False) -> None:
        if not hasattr(source, "__len__"):
            name = type(source).__name__
            raise TypeError(
                f"X is {_article(name)} {name} (it has no __len__): pass a map-style "
                "Dataset, with a length and items by index, so that batches can be drawn "
                "from it."
            )
        self.source = source
        self.for_mlp = for_mlp
        self._read = self._reader(source)
        if len(source) == 0:
            raise ValueError(f"X ({self.kind}) has no samples; at least one is required.")
        first = self._read(slice(0, 1))
        self.layout = (
            {key: value.shape[1:] for key, value in first.items()}
            if isinstance(first, dict)
            else first.shape[1:]
        )
        self._refuse_scalar_columns(first)
        self[0:1]  # refuses non-numeric or ragged data before anything runs

    def _refuse_scalar_columns(self, first: Batch) -> None:
        """Refuse a ``datasets.Dataset`` column of single numbers: a label column left in.

        A column of other single values (strings) is refused for its dtype.
        """
        if isinstance(self.source, (np.memmap, torch.utils.data.Dataset)):
            return
        columns = list(self.source.column_names)
        arrays = first if isinstance(first, dict) else {columns[0]: first}
        scalar = [
            column
            for column in columns
            if arrays[column].shape[1:] == () and arrays[column].dtype.kind in "biuf"
        ]
        if not scalar:
            return
        inputs = [column for column in columns if column not in scalar]
        named = ", ".join(repr(column) for column in scalar)
        one = len(scalar) == 1
        if inputs:
            fix = (
                f"If {named} {'is not an input' if one else 'are not inputs'} (a label "
                "column left in, say), "
                f"drop {'it' if one else 'them'} with X.remove_columns({scalar!r}) or keep "
                f"only the inputs with X.select_columns({inputs!r}), and pass y to fit."
            )
        else:
            fix = "Put the features in one column of arrays, one array per sample."
        raise ValueError(
            f"X (a datasets.Dataset) has {'a column' if one else 'columns'} of single "
            f"numbers (shape ()): {named}. Every column of a datasets.Dataset X is an input "
            "of the encoder, and each sample of an input must be an array of at least one "
            f"axis. {fix}"
        )

    @property
    def kind(self) -> str:
        """What X is, in words, for messages."""
        if isinstance(self.source, np.memmap):
            return "a memory-mapped array"
        if isinstance(self.source, torch.utils.data.Dataset):
            return "a torch Dataset"
        return "a datasets.Dataset"

    def _reader(self, source: Any) -> Callable[[Rows], Batch]:
        if isinstance(source, np.memmap):
            return _memmap_reader(source)
        if isinstance(source, torch.utils.data.Dataset):
            return _torch_reader(source)
        return _datasets_reader(source)

    @property
    def shape(self) -> tuple[int, ...]:
        """``(n_samples, *sample_shape)``, for scikit-learn's ``n_features_in_`` (array layout)."""
        if isinstance(self.layout, dict):
            raise AttributeError("a dict X has no shape")
        return (len(self), *self.layout)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, rows: int | Rows) -> Batch:
        if isinstance(rows, (int, np.integer)):
            batch = self[np.array([rows])]
            if isinstance(batch, dict):
                return {key: value[0] for key, value in batch.items()}
            return batch[0]
        if not isinstance(rows, slice):
            rows = np.asarray(rows)
        batch = self._read(rows)
        layout = self.layout
        if isinstance(batch, dict) and isinstance(layout, dict):
            return {
                key: self._checked(value, layout[key], f"X[{key!r}]")
                for key, value in batch.items()
            }
        return self._checked(cast(np.ndarray, batch), layout, "X")

    def _checked(self, array: np.ndarray, shape: Any, name: str) -> np.ndarray:
        array = _convert(array, f"{name} ({self.kind})", for_mlp=self.for_mlp)
        if array.shape[1:] != shape:
            raise ValueError(
                f"{name} ({self.kind}) has samples of shape {array.shape[1:]} and of shape "
                f"{shape}: every sample must have the same shape."
            )
        return array

    def blocks(self) -> Iterator[tuple[int, Batch]]:
        """``(start, rows)`` of all of X, a block of about :data:`BLOCK_BYTES` at a time."""
        first = self[0:1]
        arrays = first.values() if isinstance(first, dict) else [first]
        row_bytes = max(1, sum(array.nbytes for array in arrays))
        size = max(1, BLOCK_BYTES // row_bytes)
        for start in range(0, len(self), size):
            yield start, self[start : start + size]

    def check_values(self) -> None:
        """Refuse NaN, infinity and ragged samples anywhere in X: one pass, in blocks."""
        for start, batch in self.blocks():
            named = batch.items() if isinstance(batch, dict) else [("", batch)]
            for key, array in named:
                if array.dtype.kind != "f":
                    continue
                finite = np.isfinite(array.reshape(len(array), -1)).all(axis=1)
                if not finite.all():
                    name = f"X[{key!r}]" if key else "X"
                    row = start + int(np.argmin(finite))
                    raise ValueError(
                        f"Input {name} ({self.kind}) contains NaN or infinity, first in row "
                        f"{row}; replace or drop those samples."
                    )
