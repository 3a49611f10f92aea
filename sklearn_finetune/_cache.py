"""FeatureCache: frozen-encoder features kept across fits, in memory and optionally on disk."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import stat
import threading
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

#: Default bound on the bytes of features held in memory: 1 GiB.
DEFAULT_MAX_BYTES = 2**30

#: A block file: the samples' digests then their features, as two ``.npy``
#: arrays back to back (a byte-for-byte deterministic format, so two
#: processes that compute the same block write the same file name).
SUFFIX = ".features"

#: The name of a block file: the SHA-256 of its content, then the suffix. A
#: file with another name is not ours: it is never read, changed or deleted.
_BLOCK_NAME = re.compile(rf"[0-9a-f]{{64}}{re.escape(SUFFIX)}")


@dataclass
class _Block:
    """Features of some samples under one encoder key, as computed or read together."""

    key: str
    digests: list[bytes]
    features: np.ndarray
    file: Path | None = None


class FeatureCache:
    """Representations of samples under frozen encoders, shared by every fit that can use them.

    An entry is keyed by the encoder's content (class, module tree, weights,
    output selection and pooling, device type) and by each sample's content,
    so clones made by ``GridSearchCV`` or ``cross_val_score``, and folds that
    overlap, find what an earlier fit computed: each unique sample is encoded
    once per encoder. Estimators take a cache through their ``cache``
    parameter; ``cache=True`` uses :meth:`FeatureCache.default`.

    Parameters
    ----------
    directory : str or path-like or None, default=None
        Also keep the features on disk under this directory (created if
        needed), one subdirectory per encoder key, so that joblib workers (``n_jobs > 1``)
        and later processes share them. Files are written atomically (a
        temporary file renamed into place) and named by the SHA-256 of their
        content; a file whose content does not match its name, or is not two
        plain ``.npy`` arrays of digests and float32 features, is deleted
        with a warning and its samples are encoded again. Nothing on disk is
        ever unpickled, and files not named like ours (temporary files of a
        writer that was killed included) are left alone. A write that fails
        (a full disk, a read-only directory) warns once and the features stay
        in memory only; the fit goes on. Nothing on disk is evicted: delete
        the directory, or call :meth:`clear`, to reclaim the space.
    max_bytes : int, default=2**30
        Bound on the features held in memory. The least recently used blocks
        (the samples one fit or prediction encoded together) are dropped
        first; with a directory they are read back from disk when needed.

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
    """

    _default: ClassVar[FeatureCache | None] = None
    _for_directory: ClassVar[dict[str, FeatureCache]] = {}

    def __init__(
        self, directory: str | os.PathLike | None = None, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(
                f"max_bytes must be a non-negative int (bytes of features kept in memory); "
                f"got {max_bytes!r}."
            )
        self.directory = None if directory is None else _checked_directory(directory)
        self.max_bytes = max_bytes
        self._start_empty()

    def _start_empty(self) -> None:
        self._lock = threading.Lock()
        self._blocks: OrderedDict[int, _Block] = OrderedDict()
        self._index: dict[tuple[str, bytes], tuple[int, int]] = {}
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
        path = str(_checked_directory(directory).absolute())
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
        self._read_new_files(key)
        with self._lock:
            found = {}
            missing: dict[bytes, int] = {}
            for position, digest in enumerate(digests):
                location = self._index.get((key, digest))
                if location is not None:
                    found[position] = location
                elif digest not in missing:
                    missing[digest] = position
            self._touch({block_id for block_id, _ in found.values()})
            gathered = self._gather(found)
        computed = None
        if missing:
            positions = np.fromiter(missing.values(), dtype=np.int64, count=len(missing))
            computed = np.ascontiguousarray(compute(positions), dtype=np.float32)
            if computed.ndim < 2 or len(computed) != len(positions):
                raise ValueError(
                    f"compute must return one row per position; got shape {computed.shape} "
                    f"for {len(positions)} positions."
                )
        row_shape = (
            computed.shape[1:] if computed is not None else next(iter(gathered.values())).shape
        )
        out = np.empty((len(digests), *row_shape), dtype=np.float32)
        for position, row in gathered.items():
            out[position] = row
        if computed is not None:
            row_of = {digest: row for row, digest in enumerate(missing)}
            for position, digest in enumerate(digests):
                if digest in row_of:
                    out[position] = computed[row_of[digest]]
            file = None
            if self.directory is not None:
                file = self._write(self.directory, key, list(missing), computed)
            with self._lock:
                self._add(_Block(key, list(missing), computed, file))
        with self._lock:
            self.hits += len(digests) - len(missing)
            self.misses += len(missing)
        return out

    def clear(self) -> None:
        """Forget everything: the memory layer, the counters and our files under ``directory``."""
        if self.directory is not None and self.directory.exists():
            for file in self.directory.glob(f"*/*{SUFFIX}"):
                if _BLOCK_NAME.fullmatch(file.name) and file.is_file():
                    file.unlink(missing_ok=True)
        with self._lock:
            self._start_empty()

    # Memory layer --------------------------------------------------------------

    def _gather(self, found: dict[int, tuple[int, int]]) -> dict[int, np.ndarray]:
        return {
            position: self._blocks[block_id].features[row]
            for position, (block_id, row) in found.items()
        }

    def _touch(self, block_ids: set[int]) -> None:
        for block_id in block_ids:
            self._blocks.move_to_end(block_id)

    def _add(self, block: _Block) -> None:
        block_id = self._next_id
        self._next_id += 1
        self._blocks[block_id] = block
        self.nbytes += block.features.nbytes
        for row, digest in enumerate(block.digests):
            self._index.setdefault((block.key, digest), (block_id, row))
        if block.file is not None:
            self._files.add(block.file)
        while self.nbytes > self.max_bytes and self._blocks:
            self._evict(next(iter(self._blocks)))

    def _evict(self, block_id: int) -> None:
        block = self._blocks.pop(block_id)
        self.nbytes -= block.features.nbytes
        for digest in block.digests:
            if self._index.get((block.key, digest), (None,))[0] == block_id:
                del self._index[(block.key, digest)]
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
            if not _BLOCK_NAME.fullmatch(file.name):
                continue  # not ours
            try:
                signature = _signature(file)
            except OSError:  # deleted by another process meanwhile
                continue
            with self._lock:
                if file in self._files or self._rejected.get(file) == signature:
                    continue
            block = _read_block(key, file)
            with self._lock:
                if block is None:
                    self._rejected[file] = signature  # warned once, until the file changes
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
        folder = directory / key
        file = folder / f"{hashlib.sha256(data).hexdigest()}{SUFFIX}"
        temporary = folder / f".{file.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if not file.is_file():  # an existing file has this very content: keep it
                with open(temporary, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temporary, file)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)
            with self._lock:
                first, self._unwritable = not self._unwritable, True
            if first:
                warnings.warn(
                    f"Could not write to the feature cache directory {directory} ({exc}); "
                    f"the features are kept in memory only and the fit goes on. Further "
                    f"failed writes are not reported until one succeeds.",
                    RuntimeWarning,
                    stacklevel=3,  # _write, fetch, the caller of fetch
                )
            return None
        with self._lock:
            self._unwritable = False
        return file

    # Pickling: a cache travels as its settings, never as its content -----------

    def __getstate__(self) -> dict[str, Any]:
        return {"directory": self.directory, "max_bytes": self.max_bytes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.directory = state["directory"]
        self.max_bytes = state["max_bytes"]
        self._start_empty()

    def __repr__(self) -> str:
        where = "" if self.directory is None else f"directory={str(self.directory)!r}, "
        return f"FeatureCache({where}max_bytes={self.max_bytes})"


def feature_cache(setting: bool | str | os.PathLike | FeatureCache) -> FeatureCache | None:
    """The cache a ``cache`` parameter names: True the default, a path one on disk, False none."""
    if isinstance(setting, FeatureCache):
        return setting
    if isinstance(setting, (str, os.PathLike)):
        return FeatureCache.at(setting)  # refuses a path that is not a directory
    return FeatureCache.default() if setting else None


def _checked_directory(directory: str | os.PathLike) -> Path:
    if not os.fspath(directory) or os.path.isfile(directory):
        raise ValueError(
            f"The feature cache directory must be a directory path; got {os.fspath(directory)!r}."
        )
    return Path(directory)


def _signature(file: Path) -> tuple[int, int, int]:
    """What tells a changed file from the one seen before: inode, size and mtime."""
    status = file.stat()
    return status.st_ino, status.st_size, status.st_mtime_ns


def _read_block(key: str, file: Path) -> _Block | None:
    """A block read from disk, or None (with a warning) if it cannot be used.

    A damaged file (content not matching its SHA-256 name, or not two plain
    ``.npy`` arrays: uint8 digests, then float32 features with one row per
    digest and nothing after them) is deleted. Arrays are read with
    ``allow_pickle=False``, so a crafted file is refused, never unpickled.
    """
    try:
        mode = file.lstat().st_mode
        if not stat.S_ISREG(mode):  # a FIFO, link or device could hang or lie
            raise OSError(f"not a regular file ({stat.filemode(mode)})")
        data = file.read_bytes()
    except FileNotFoundError:  # deleted by another process meanwhile
        return None
    except OSError as exc:  # a directory, link, FIFO or unreadable: not ours to delete
        warnings.warn(
            f"Ignoring the feature cache entry {file}, which cannot be read ({exc}); its "
            f"samples will be encoded again.",
            RuntimeWarning,
            stacklevel=4,  # _read_block, _read_new_files, fetch, the caller of fetch
        )
        return None
    try:
        if hashlib.sha256(data).hexdigest() != file.name.removesuffix(SUFFIX):
            raise ValueError("content does not match its hash")
        stream = io.BytesIO(data)
        digests = np.lib.format.read_array(stream, allow_pickle=False)
        features = np.lib.format.read_array(stream, allow_pickle=False)
        if digests.dtype != np.uint8 or digests.ndim != 2 or features.dtype != np.float32:
            raise ValueError(
                f"expected uint8 digests and float32 features; got {digests.dtype} of shape "
                f"{digests.shape} and {features.dtype}"
            )
        if features.ndim < 2 or len(features) != len(digests):
            raise ValueError(f"{len(digests)} digests for features of shape {features.shape}")
        if stream.read(1):
            raise ValueError("unexpected bytes after the features")
    except Exception as exc:  # any damage means: recompute, never return it
        warnings.warn(
            f"Ignoring and deleting the damaged feature cache file {file} ({exc}); its "
            f"samples will be encoded again.",
            RuntimeWarning,
            stacklevel=4,
        )
        with contextlib.suppress(OSError):
            file.unlink(missing_ok=True)
        return None
    return _Block(key, [digest.tobytes() for digest in digests], features, file)
