"""FeatureCache: frozen-encoder features kept across fits, in memory and optionally on disk."""

from __future__ import annotations

import io
import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ._cache_files import (
    BLOCK_NAME,
    ENCODER_FOLDER,
    ENCODER_NAME,
    SUFFIX,
    Block,
    encoding_lock,
    read_block,
    signature,
    write_content_addressed,
)

#: Default bound on the bytes of features held in memory: 1 GiB.
DEFAULT_MAX_BYTES = 2**30

#: The location of a digest the memory layer does not hold.
_MISSING = (-1, -1)


class FeatureCache:
    """Representations of samples under frozen encoders, shared by every fit that can use them.

    An entry is keyed by the encoder's content (class, module tree, weights,
    output selection and pooling, device type) and by each sample's content,
    so clones made by ``GridSearchCV`` or ``cross_val_score``, and folds that
    overlap, find what an earlier fit computed: each unique sample is encoded
    once per encoder. Estimators take a cache through their ``cache``
    parameter; ``cache=True`` uses :meth:`FeatureCache.default`. Read more in
    the :ref:`User Guide <embed-once>`.

    Parameters
    ----------
    directory : str or path-like or None, default=None
        Also keep the features on disk under this directory (created if needed; a
        relative path is made absolute here, in the process that builds the cache,
        so that workers with another working directory use the same folder), one
        subdirectory per encoder key, so that joblib workers (``n_jobs > 1``) and
        later processes share them. Files are written atomically (a temporary file
        renamed into place) and named by the SHA-256 of their content; a file whose
        content does not match its name, or is not two plain ``.npy`` arrays of
        digests and float32 features, is deleted with a warning and its samples are
        encoded again. No feature file is ever unpickled, and files not named like
        ours (temporary files of a writer that was killed included) are left alone.
        A process that must encode samples under an encoder holds that encoder's
        lock (``flock`` on ``<key>/.lock``, released by the system if the process
        dies) while it reads the others' new files, encodes what is still missing
        and writes its block: workers of one search that need the same rows at once
        encode them once between them. A write that fails (a full disk, a read-only
        directory) warns once and the features stay in memory only; the fit goes on.
        Nothing on disk is evicted: delete the directory, or call :meth:`clear`, to
        reclaim the space.
    max_bytes : int, default=2**30
        Bound on the features held in memory. The least recently used blocks
        (the samples one fit or prediction encoded together) are dropped
        first; with a directory they are read back from disk when needed.
    share_encoders : bool, default=False
        Send an estimator's encoder to each process once, through the
        directory, rather than with every task of a search. An unfitted
        estimator (or ``FoundationEmbedder``) whose ``cache`` is this cache
        pickles its encoder as a reference (the path and SHA-256 of
        ``<directory>/encoders/<sha256>.pt``, which the pickling process
        writes once, atomically, with ``torch.save``); in each process that
        unpickles such estimators, the first loads the file, checks its
        SHA-256 and keeps the module for the life of the process, and the
        others share it (``fit`` never changes the encoder it is given). So
        every worker must read the directory at the same path: where the
        file is missing, unpickling still succeeds and ``fit`` raises
        ``FileNotFoundError`` (``ValueError`` if its content changed), naming
        the file; dask's scheduler passes the reference on without reading
        it. An encoder changed in place after it was loaded is written
        again, never sent as its stale file, when the change went through
        torch's in-place operations (an optimizer step, ``load_state_dict``,
        ``copy_``), which bump the weights' version counters; a write through
        ``.data`` or a NumPy view of a weight does not, so pickle a
        ``copy.deepcopy`` of an encoder changed that way. The file is unpickled
        (``torch.load``) only if its SHA-256 is the one in the estimator's
        own pickle; if it cannot be written, the estimator is pickled with
        its encoder, with a warning. Fitted estimators, ``clone``
        and ``copy.deepcopy`` are as without it; :meth:`clear` deletes the
        files too. Requires ``directory``: a ``ValueError`` otherwise.

    Attributes
    ----------
    hits, misses : int
        Samples found in the cache, and samples that had to be encoded.
    nbytes : int
        Bytes of features held in memory.

    See Also
    --------
    FoundationEmbedder : the cached features as a transformer.
    FoundationClassifier : its ``cache`` parameter.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_finetune import FeatureCache
    >>> cache = FeatureCache(max_bytes=2**20)
    >>> encode = lambda rows: np.ones((len(rows), 4), dtype="float32")
    >>> cache.fetch("encoder-key", [b"a", b"b"], encode).shape
    (2, 4)
    >>> _ = cache.fetch("encoder-key", [b"b", b"c"], encode)
    >>> cache.hits, cache.misses
    (1, 3)

    With ``share_encoders=True`` what a search sends each task stays small:

    >>> import pickle, tempfile
    >>> from torch import nn
    >>> from sklearn_finetune import FoundationClassifier
    >>> shared = FeatureCache(tempfile.mkdtemp(), share_encoders=True)
    >>> task = pickle.dumps(FoundationClassifier(nn.Linear(64, 1024), cache=shared))
    >>> len(task) < 10_000  # the encoder's 266 KB of weights went to shared.directory
    True
    """

    _default: ClassVar[FeatureCache | None] = None
    _for_directory: ClassVar[dict[str, FeatureCache]] = {}

    def __init__(
        self,
        directory: str | os.PathLike | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        share_encoders: bool = False,
    ) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(
                f"max_bytes must be a non-negative int (bytes of features kept in memory); "
                f"got {max_bytes!r}."
            )
        if not isinstance(share_encoders, bool):
            raise TypeError(f"share_encoders must be True or False; got {share_encoders!r}.")
        if share_encoders and directory is None:
            raise ValueError(
                "share_encoders=True needs a directory that every worker reads: the encoder "
                "is written there once instead of travelling with each task. Pass "
                "FeatureCache(directory, share_encoders=True), or leave share_encoders=False."
            )
        self.directory = None if directory is None else _checked_directory(directory)
        self.max_bytes = max_bytes
        self.share_encoders = share_encoders
        self._start_empty()

    def _start_empty(self) -> None:
        self._lock = threading.Lock()
        self._blocks: OrderedDict[int, Block] = OrderedDict()
        #: key -> sample digest -> (block id, row in the block)
        self._index: dict[str, dict[bytes, tuple[int, int]]] = {}
        self._files: set[Path] = set()
        self._rejected: dict[Path, tuple[int, int, int]] = {}
        self._unwritable = False
        self._next_id = 0
        self.nbytes = 0
        self.hits = 0
        self.misses = 0

    @classmethod
    def default(cls) -> FeatureCache:
        """The process-wide in-memory cache that ``cache=True`` uses."""
        if cls._default is None:
            cls._default = cls()
        return cls._default

    @classmethod
    def at(cls, directory: str | os.PathLike) -> FeatureCache:
        """The process-wide cache for ``directory``, as ``cache="some/dir"`` uses.

        Every estimator given the same directory shares one in-memory layer
        in front of it.

        Parameters
        ----------
        directory : str or path-like
            The folder holding the features on disk (created when first written).

        Returns
        -------
        FeatureCache
        """
        path = str(_checked_directory(directory))
        if path not in cls._for_directory:
            cls._for_directory[path] = cls(path)
        return cls._for_directory[path]

    def fetch(
        self, key: str, digests: Sequence[bytes], compute: Callable[[np.ndarray], np.ndarray]
    ) -> np.ndarray:
        """The features of the samples with these digests, computing only the missing ones.

        Parameters
        ----------
        key : str
            The encoder's fingerprint.
        digests : sequence of bytes
            One content digest per sample.
        compute : callable
            Called at most once, with the positions (into ``digests``) of the
            samples to encode, one per distinct missing digest; returns
            their features as an array of shape ``(len(positions), width)``
            (or ``(len(positions), tokens, width)``: rows of any shape).

        Returns
        -------
        ndarray of shape (len(digests), ...)
        """
        found, unseen = self._look_up(key, digests)
        if unseen and self.directory is not None:
            # Other processes (and threads) encoding under this key wait here,
            # then find what this one wrote instead of encoding it again.
            with encoding_lock(self.directory / key):
                found, unseen = self._look_up(key, digests)
                computed, n_encoded = self._compute(key, digests, unseen, compute)
        else:
            computed, n_encoded = self._compute(key, digests, unseen, compute)
        row_shape = computed.shape[1:] if computed is not None else found[0][1].shape[1:]
        out = np.empty((len(digests), *row_shape), dtype=np.float32)
        for positions, features, rows in found:
            out[positions] = features[rows]
        if computed is not None:
            out[unseen] = computed
        with self._lock:
            self.hits += len(digests) - n_encoded
            self.misses += n_encoded
        return out

    def _look_up(
        self, key: str, digests: Sequence[bytes]
    ) -> tuple[list[tuple[np.ndarray, np.ndarray, np.ndarray]], list[int]]:
        """The rows found (``(positions, features, rows)`` per block) and the positions not found.

        Block files that other processes wrote under ``key`` since the last
        look are read first.
        """
        self._read_new_files(key)
        with self._lock:
            index = self._index.get(key, {})
            locations = [index.get(digest, _MISSING) for digest in digests]
            table = np.array(locations, dtype=np.int64).reshape(len(locations), 2)
            hit = table[:, 0] >= 0
            positions = np.flatnonzero(hit)
            gathered = self._gather(positions, table[hit])
        return gathered, np.flatnonzero(~hit).tolist()

    def _compute(
        self,
        key: str,
        digests: Sequence[bytes],
        unseen: list[int],
        compute: Callable[[np.ndarray], np.ndarray],
    ) -> tuple[np.ndarray | None, int]:
        """Encode the distinct samples at ``unseen`` and keep them (in memory, and on disk).

        Returns each unseen position's row (None if there are none) and how
        many distinct samples were encoded.
        """
        if not unseen:
            return None, 0
        missing: dict[bytes, int] = {}
        for position in unseen:
            missing.setdefault(digests[position], position)
        positions = np.fromiter(missing.values(), dtype=np.int64, count=len(missing))
        computed = np.ascontiguousarray(compute(positions), dtype=np.float32)
        if computed.ndim < 2 or len(computed) != len(positions):
            raise ValueError(
                f"compute must return one row per position; got shape {computed.shape} "
                f"for {len(positions)} positions."
            )
        file = None
        if self.directory is not None:
            file = self._write(self.directory, key, list(missing), computed)
        with self._lock:
            self._add(Block(key, list(missing), computed, file))
        row_of = {digest: row for row, digest in enumerate(missing)}
        return computed[[row_of[digests[position]] for position in unseen]], len(missing)

    def clear(self) -> None:
        """Forget everything: the memory layer, the counters and our files under ``directory``.

        Our files are the feature blocks and the encoders that
        ``share_encoders`` wrote, whichever cache object wrote them.
        """
        if self.directory is not None and self.directory.exists():
            for file in self.directory.glob(f"*/*{SUFFIX}"):
                if BLOCK_NAME.fullmatch(file.name) and file.is_file():
                    file.unlink(missing_ok=True)
            for file in (self.directory / ENCODER_FOLDER).glob("*"):
                if ENCODER_NAME.fullmatch(file.name) and file.is_file():
                    file.unlink(missing_ok=True)
        with self._lock:
            self._start_empty()

    # Memory layer --------------------------------------------------------------

    def _gather(
        self, positions: np.ndarray, locations: np.ndarray
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``(positions, features, rows)`` per block, for found positions and their locations.

        ``locations`` holds a ``(block id, row)`` pair per position; ``out[positions]
        = features[rows]`` copies a block's rows at once. The blocks are
        marked as just used.
        """
        if not len(positions):
            return []
        order = np.argsort(locations[:, 0], kind="stable")
        positions, locations = positions[order], locations[order]
        block_ids, starts = np.unique(locations[:, 0], return_index=True)
        self._touch(block_ids.tolist())
        ends = [*starts[1:], len(positions)]
        return [
            (positions[start:end], self._blocks[block_id].features, locations[start:end, 1])
            for block_id, start, end in zip(block_ids.tolist(), starts, ends, strict=True)
        ]

    def _touch(self, block_ids: list[int]) -> None:
        for block_id in block_ids:
            self._blocks.move_to_end(block_id)

    def _add(self, block: Block) -> None:
        block_id = self._next_id
        self._next_id += 1
        self._blocks[block_id] = block
        self.nbytes += block.features.nbytes
        index = self._index.setdefault(block.key, {})
        for row, digest in enumerate(block.digests):
            index.setdefault(digest, (block_id, row))
        if block.file is not None:
            self._files.add(block.file)
        while self.nbytes > self.max_bytes and self._blocks:
            self._evict(next(iter(self._blocks)))

    def _evict(self, block_id: int) -> None:
        block = self._blocks.pop(block_id)
        self.nbytes -= block.features.nbytes
        index = self._index.get(block.key, {})
        for digest in block.digests:
            if index.get(digest, _MISSING)[0] == block_id:
                del index[digest]
        if not index:
            self._index.pop(block.key, None)
        if block.file is not None:
            self._files.discard(block.file)

    # Disk layer ----------------------------------------------------------------

    def _read_new_files(self, key: str) -> None:
        """Load the files under ``directory/key`` that this process has not read yet."""
        if self.directory is None:
            return
        folder = self.directory / key
        if not folder.is_dir():
            return
        for file in sorted(folder.glob(f"*{SUFFIX}")):
            if not BLOCK_NAME.fullmatch(file.name):
                continue  # not ours
            try:
                file_signature = signature(file)
            except OSError:  # deleted by another process meanwhile
                continue
            with self._lock:
                if file in self._files or self._rejected.get(file) == file_signature:
                    continue
            block = read_block(key, file)
            with self._lock:
                if block is None:
                    self._rejected[file] = file_signature  # warned once, until the file changes
                elif file not in self._files:
                    self._add(block)

    def _write(
        self, directory: Path, key: str, digests: list[bytes], features: np.ndarray
    ) -> Path | None:
        """Write one block atomically, named by the hash of its bytes; None if it failed.

        A failed write (a full disk, a read-only directory, a directory where
        the file should go) leaves no file behind and warns once, until a
        write succeeds again: the caller keeps the block in memory only.
        """
        buffer = io.BytesIO()
        np.save(buffer, np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(len(digests), -1))
        np.save(buffer, features, allow_pickle=False)
        data = buffer.getvalue()
        try:
            file = write_content_addressed(data, directory / key, SUFFIX)
        except OSError as exc:
            with self._lock:
                first, self._unwritable = not self._unwritable, True
            if first:
                warnings.warn(
                    f"Could not write to the feature cache directory {directory} ({exc}); "
                    f"the features are kept in memory only and the fit goes on. Further "
                    f"failed writes are not reported until one succeeds.",
                    RuntimeWarning,
                    stacklevel=4,  # _write, _compute, fetch, the caller of fetch
                )
            return None
        with self._lock:
            self._unwritable = False
        return file

    # Pickling: a cache travels as its settings, never as its content -----------

    def __getstate__(self) -> dict[str, Any]:
        return {
            "directory": self.directory,
            "max_bytes": self.max_bytes,
            "share_encoders": self.share_encoders,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.directory = state["directory"]
        self.max_bytes = state["max_bytes"]
        self.share_encoders = state.get("share_encoders", False)  # pickled before it existed
        self._start_empty()

    def __repr__(self) -> str:
        where = "" if self.directory is None else f"directory={str(self.directory)!r}, "
        shares = ", share_encoders=True" if self.share_encoders else ""
        return f"FeatureCache({where}max_bytes={self.max_bytes}{shares})"


def feature_cache(setting: bool | str | os.PathLike | FeatureCache) -> FeatureCache | None:
    """The cache a ``cache`` parameter names: True the default, a path one on disk, False none."""
    if isinstance(setting, FeatureCache):
        return setting
    if isinstance(setting, (str, os.PathLike)):
        return FeatureCache.at(setting)  # refuses a path that is not a directory
    return FeatureCache.default() if setting else None


def _checked_directory(directory: str | os.PathLike) -> Path:
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(
            f"The feature cache directory must be a str or path-like; got "
            f"{type(directory).__name__} {directory!r}."
        )
    if not os.fspath(directory) or os.path.isfile(directory):
        raise ValueError(
            f"The feature cache directory must be a directory path; got {os.fspath(directory)!r}."
        )
    return Path(directory).absolute()  # where it is made: workers elsewhere get the same path
