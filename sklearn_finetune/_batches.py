"""Mini-batches of an array X (cached features, X in memory or on disk), one indexing each."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, cast

import numpy as np
import torch
from skorch.dataset import Dataset
from skorch.utils import to_tensor
from torch.utils.data import DataLoader, RandomSampler, Sampler, SequentialSampler, Subset
from torch.utils.data import Dataset as TorchDataset

from ._streamed import StreamedX

Targets = Sequence[torch.Tensor]
Batch = tuple[torch.Tensor, "list[torch.Tensor] | None"]


def writable(batch: Any) -> Any:
    """A batch of X (an array or a dict of arrays) whose read-only arrays are copied.

    Torch warns when it makes a tensor over a read-only array ("The given
    NumPy array is not writable"), as ``torch.as_tensor`` and skorch's
    ``to_tensor`` do without copying: a pandas 3 DataFrame's ``to_numpy()``
    is read-only under copy-on-write, and so is an array with
    ``flags.writeable`` False or a ``numpy.memmap`` opened with ``mode="r"``.
    Nothing here writes to X, but copying one batch costs one batch of
    memory, where silencing torch would change the warning filters of the
    user's process (not thread-safe) and use up torch's once-per-process
    warning that the user's own code may need; X is never copied whole.
    Writable arrays, and everything else, are returned as they are.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_finetune._batches import writable
    >>> X = np.zeros((4, 2))
    >>> writable(X) is X  # writable: no copy
    True
    >>> X.flags.writeable = False
    >>> writable(X[:2]).flags.writeable, X.flags.writeable  # a copy; X is unchanged
    (True, False)
    """
    if isinstance(batch, np.ndarray) and not batch.flags.writeable:
        return batch.copy()
    if isinstance(batch, Mapping):
        return {key: writable(value) for key, value in batch.items()}
    return batch


def batch_tensor(batch: Any, device: torch.device | str) -> Any:
    """skorch's ``to_tensor`` of a batch of X, its read-only arrays copied (:func:`writable`)."""
    return to_tensor(writable(batch), device)


class WritableSamples(Dataset):
    """skorch's ``Dataset``, whose samples of a read-only X are copies (see :func:`writable`).

    skorch's own loader (for a dict X, and under accelerate) collates the
    samples with torch's ``default_collate``, which makes a tensor over
    each; a sample is a view of X.
    """

    def transform(self, X: Any, y: Any) -> tuple[Any, Any]:
        return super().transform(writable(X), writable(y))


class _Rows(TorchDataset):
    """X and targets y, a whole batch at a time.

    X is a tensor, or a :class:`StreamedX` read from disk or a read-only
    array, whose batches are copied (by NumPy's indexing) before torch sees
    them. ``index`` maps the dataset's rows to rows of X (the rows of a
    ``Subset``).
    """

    def __init__(
        self,
        X: torch.Tensor | StreamedX | np.ndarray,
        y: Targets | None,
        index: torch.Tensor | None,
    ) -> None:
        self.X = X
        self.y = y
        self.index = index

    def __len__(self) -> int:
        return len(self.X) if self.index is None else len(self.index)

    def __getitem__(self, rows: torch.Tensor) -> Batch:
        if self.index is not None:
            rows = self.index[rows]
        targets = None if self.y is None else [target[rows] for target in self.y]
        if isinstance(self.X, torch.Tensor):
            return self.X[rows], targets
        return to_tensor(self.X[rows.numpy()], "cpu"), targets


class _IndexBatches(Sampler):
    """``BatchSampler(order, batch_size, drop_last)``, yielding index tensors.

    The order is drawn once per epoch, as ``BatchSampler`` draws it, and
    turned into one tensor on the data's device, which is then sliced: no
    per-batch list of ints to convert.
    """

    def __init__(
        self,
        order: RandomSampler | SequentialSampler,
        batch_size: int,
        drop_last: bool,
        device: torch.device,
    ) -> None:
        self.order = order
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.device = device

    def __len__(self) -> int:
        n = len(self.order)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        index = torch.as_tensor(list(self.order), device=self.device)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield index[start : start + self.batch_size]


def feature_batches(
    dataset: Dataset | Subset, batch_size: int, shuffle: bool = False, drop_last: bool = False
) -> DataLoader:
    """A loader that takes each batch of in-memory rows in one indexing operation.

    skorch's default ``DataLoader`` fetches sample by sample and stacks them;
    when X is one array in memory (a frozen backbone's features on the
    device, or an array X fed to a trained backbone), a batch is one
    ``X[indices]`` instead; an X read from disk (a :class:`StreamedX`)
    reads the batch's rows then and only then. skorch's own dataset
    indexing is bypassed too: its per-batch checks cost more than a small
    model's step. The batches,
    and the random numbers drawn to shuffle them, are those of
    ``DataLoader(dataset, batch_size, shuffle, drop_last)``, so the head
    trains exactly as it would with per-sample loading. Pass it as skorch's
    ``iterator_train`` / ``iterator_valid``.

    Parameters
    ----------
    dataset : skorch.dataset.Dataset or torch.utils.data.Subset of one
        Holds ``X`` as a tensor, a NumPy array (a read-only one is indexed
        with NumPy, batch by batch) or a :class:`StreamedX`,
        and ``y`` as a sequence of tensors or arrays (targets and sample
        weights) or None, as skorch builds it from
        ``net.fit(X, y)``; a ``Subset`` (held-out rows) takes its rows.
    batch_size : int
        Samples per batch.
    shuffle : bool, default=False
        Draw a new random order every epoch.
    drop_last : bool, default=False
        Drop the last batch when it is smaller than ``batch_size``.

    Returns
    -------
    torch.utils.data.DataLoader

    Examples
    --------
    >>> import torch
    >>> from skorch.dataset import Dataset
    >>> from sklearn_finetune._batches import feature_batches
    >>> dataset = Dataset(torch.zeros(5, 3), (torch.arange(5), torch.ones(5)))
    >>> [(tuple(X.shape), len(target)) for X, (target, weight) in feature_batches(dataset, 2)]
    [((2, 3), 2), ((2, 3), 2), ((1, 3), 1)]
    """
    index = None
    if isinstance(dataset, Subset):
        index = torch.as_tensor(dataset.indices)
        dataset = cast(Dataset, dataset.dataset)
    X = dataset.X
    read_only = isinstance(X, np.ndarray) and not X.flags.writeable
    if not (read_only or isinstance(X, StreamedX)):  # those are indexed (copied) batch by batch
        X = torch.as_tensor(X)
    device = X.device if isinstance(X, torch.Tensor) else torch.device("cpu")
    y = None if dataset.y is None else [torch.as_tensor(writable(target)) for target in dataset.y]
    rows = _Rows(X, y, None if index is None else index.to(device))
    order = RandomSampler(rows) if shuffle else SequentialSampler(rows)
    batches = _IndexBatches(order, batch_size, drop_last, device)
    return DataLoader(rows, batch_size=None, sampler=batches, collate_fn=_as_is)


def _as_is(batch: Any) -> Any:
    """The batch as ``_Rows`` built it: tensors already (no ``default_convert`` walk)."""
    return batch
