"""Mini-batches of a feature matrix that already sits on the device, for skorch's loop."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from skorch.dataset import Dataset
from torch.utils.data import BatchSampler, RandomSampler


class TensorBatches:
    """A ``DataLoader`` stand-in for skorch's ``iterator_train``/``iterator_valid``.

    A ``DataLoader`` fetches and collates sample by sample; once the frozen
    backbone's features are one tensor on the device, a batch is one
    indexing operation instead. Batches are drawn in the order a
    ``DataLoader(dataset, batch_size, shuffle, drop_last)`` would draw them
    (the same ``RandomSampler``, seeded from torch's global generator), so
    the head trains exactly as it would on per-sample loading.

    Parameters
    ----------
    dataset : skorch.dataset.Dataset
        Holds ``X`` (a tensor) and ``y`` (a tensor or None), as skorch builds
        it from ``net.fit(X, y)``.
    batch_size : int
        Samples per batch.
    shuffle : bool, default=False
        Draw a new random order every epoch.
    drop_last : bool, default=False
        Drop the last batch when it is smaller than ``batch_size``.

    Examples
    --------
    >>> import torch
    >>> from skorch.dataset import Dataset
    >>> from sklearn_finetune._batches import TensorBatches
    >>> batches = TensorBatches(Dataset(torch.zeros(5, 3), torch.arange(5)), batch_size=2)
    >>> [tuple(X.shape) for X, y in batches]
    [(2, 3), (2, 3), (1, 3)]
    """

    def __init__(
        self, dataset: Dataset, batch_size: int, shuffle: bool = False, drop_last: bool = False
    ) -> None:
        if not isinstance(dataset.X, torch.Tensor):
            raise TypeError(f"TensorBatches needs a tensor X; got {type(dataset.X).__name__}.")
        self.X = dataset.X
        self.y = dataset.y
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last

    def __len__(self) -> int:
        n = len(self.X)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        if not self.shuffle:
            for start in range(0, len(self) * self.batch_size, self.batch_size):
                stop = start + self.batch_size
                yield self.X[start:stop], None if self.y is None else self.y[start:stop]
            return
        batches = BatchSampler(RandomSampler(range(len(self.X))), self.batch_size, self.drop_last)
        for indices in batches:
            index = torch.as_tensor(indices, device=self.X.device)
            yield self.X[index], None if self.y is None else self.y[index]
