"""The feature cache's files: one block of samples per file, and the lock per encoder key."""

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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock

#: A block file: the samples' digests then their features, as two ``.npy``
#: arrays back to back (a byte-for-byte deterministic format, so two
#: processes that compute the same block write the same file name).
SUFFIX = ".features"

#: The name of a block file: the SHA-256 of its content, then the suffix. A
#: file with another name is not ours: it is never read, changed or deleted.
#: The lock file in each encoder key's folder (see :func:`_encoding_lock`).
LOCK_NAME = ".lock"

BLOCK_NAME = re.compile(rf"[0-9a-f]{{64}}{re.escape(SUFFIX)}")

#: Where ``FeatureCache(directory, share_encoders=True)`` keeps the encoders
#: that unfitted estimators are pickled with (``<folder>/<sha256>.pt``, see
#: ``_shared_encoders``): not a 64-digit encoder key, so never read as features.
ENCODER_FOLDER = "encoders"
ENCODER_SUFFIX = ".pt"
ENCODER_NAME = re.compile(rf"[0-9a-f]{{64}}{re.escape(ENCODER_SUFFIX)}")


@dataclass
class Block:
    """Features of some samples under one encoder key, as computed or read together."""

    key: str
    digests: list[bytes]
    features: np.ndarray
    file: Path | None = None


@contextlib.contextmanager
def encoding_lock(folder: Path) -> Iterator[None]:
    """Hold the operating system's lock on ``folder/.lock``; nothing if it cannot be had.

    ``flock`` on Unix, ``LockFileEx`` on Windows (``filelock``'s native locks,
    never a lock file whose mere presence means "locked"): the system
    releases it when its process dies, so a killed worker leaves no stale
    lock behind. The wait has no timeout: a holder is encoding the samples
    the waiter would encode. A directory where the lock cannot be taken
    (read-only, or a file system without locks) runs unlocked: the write
    that follows warns if the directory cannot be written. So does a fetch
    under the same key from inside ``compute`` (this thread holds the lock).
    """
    held = _held_folders.__dict__.setdefault("folders", set())
    lock: FileLock | None = None
    if folder not in held:
        try:
            lock = _os_lock(folder / LOCK_NAME)
            folder.mkdir(parents=True, exist_ok=True)
            lock.acquire()
        except (OSError, NotImplementedError):
            lock = None
    if lock is None:
        yield
        return
    held.add(folder)
    try:
        yield
    finally:
        held.discard(folder)
        lock.release()


def _os_lock(path: Path) -> FileLock:
    """``filelock``'s lock on ``path``, never its soft (lock-file) fallback.

    Recent ``filelock`` falls back to a lock file on file systems without
    ``flock`` unless told not to; such a file would outlive a killed owner.
    Older versions have no fallback (nor the argument).
    """
    try:
        return FileLock(path, fallback_to_soft=False)
    except TypeError:
        return FileLock(path)


#: The key folders whose lock this thread holds.
_held_folders = threading.local()


def write_content_addressed(data: bytes, folder: Path, suffix: str) -> Path:
    """Write ``data`` to ``folder/<its SHA-256><suffix>`` atomically, unless that file exists.

    The bytes go to a temporary file beside it, synced, then renamed into
    place, so that no reader (another worker) sees a partial file. A write
    that fails leaves no temporary file behind and raises its ``OSError``.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from sklearn_finetune._cache_files import write_content_addressed
    >>> file = write_content_addressed(b"abc", Path(tempfile.mkdtemp()), ".bin")
    >>> file.name[:16], file.read_bytes()
    ('ba7816bf8f01cfea', b'abc')
    """
    file = folder / f"{hashlib.sha256(data).hexdigest()}{suffix}"
    if file.is_file():  # an existing file has this very content: keep it
        return file
    temporary = folder / f".{file.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, file)
    except OSError:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise
    return file


def signature(file: Path) -> tuple[int, int, int]:
    """What tells a changed file from the one seen before: inode, size and mtime."""
    status = file.stat()
    return status.st_ino, status.st_size, status.st_mtime_ns


def read_block(key: str, file: Path) -> Block | None:
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
            stacklevel=5,  # _read_block, _read_new_files, _look_up, fetch, its caller
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
            stacklevel=5,
        )
        with contextlib.suppress(OSError):
            file.unlink(missing_ok=True)
        return None
    return Block(key, [digest.tobytes() for digest in digests], features, file)
