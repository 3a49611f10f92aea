"""The ``device`` parameter resolved to a torch device that exists here; precisions; threads."""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator

import torch
from torch.utils.flop_counter import FlopCounterMode


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def resolve_device(device: str | torch.device) -> torch.device:
    """Return the torch device to train on.

    ``"auto"`` picks CUDA, then Apple's MPS, then the CPU. A device that is
    named explicitly but not available here falls back to the CPU with a
    warning, so that an estimator configured on a GPU machine still runs on a
    laptop.

    Parameters
    ----------
    device : str or torch.device
        ``"auto"``, or anything ``torch.device`` accepts (``"cpu"``,
        ``"cuda"``, ``"cuda:1"``, ``"mps"``).

    Returns
    -------
    torch.device

    Examples
    --------
    >>> from sklearn_finetune._device import resolve_device
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device={device!r} is not a torch device; use 'auto', 'cpu', 'cuda', "
            f"'cuda:N' or 'mps'."
        ) from exc
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available()
        and (resolved.index is None or resolved.index < torch.cuda.device_count()),
        "mps": _mps_available(),
    }.get(resolved.type, False)
    if not available:
        warnings.warn(
            f"device={device!r} is not available on this machine; training on the CPU instead.",
            UserWarning,
            stacklevel=3,
        )
        return torch.device("cpu")
    if resolved.type == "cuda" and resolved.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return resolved


#: ``precision`` -> the dtype autocast runs in (None: float32, no autocast).
PRECISIONS = {"32": None, "bf16": torch.bfloat16, "16": torch.float16}


#: Torch's random generators are process-wide. Fits, predictions and loads
#: that fork them hold this lock, so that two running in threads of one
#: process (joblib's threading backend, a dask worker with several threads)
#: neither draw from each other's seeded stream nor restore it under each
#: other: in threads they run one at a time, and give what they give alone.
_RANDOM_STATE = threading.RLock()


@contextlib.contextmanager
def forked_random_state(devices: list[int]) -> Iterator[None]:
    """``torch.random.fork_rng(devices)``, held by one thread of the process at a time.

    Parameters
    ----------
    devices : list of int
        The CUDA devices whose generators are restored too (the CPU's always is).

    Examples
    --------
    >>> import torch
    >>> from sklearn_finetune._device import forked_random_state
    >>> before = torch.get_rng_state()
    >>> with forked_random_state([]):
    ...     _ = torch.manual_seed(3)
    >>> bool((torch.get_rng_state() == before).all())
    True
    """
    with _RANDOM_STATE, torch.random.fork_rng(devices=devices):
        yield


def seed_torch(seed: int, device: torch.device) -> None:
    """Seed torch's CPU generator and ``device``'s own, and no other device's.

    ``torch.manual_seed`` would also seed every CUDA device, changing random
    states that a fit on the CPU (whose ``fork_rng`` restores only the CPU's)
    leaves to the user.
    """
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)
    elif device.type == "mps":
        torch.mps.manual_seed(seed)


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse a mixed precision the device cannot run, before training starts.

    Examples
    --------
    >>> import torch
    >>> from sklearn_finetune._device import check_precision
    >>> check_precision("bf16", torch.device("cpu"))
    """
    dtype = PRECISIONS[precision]
    if dtype is None:
        return
    if not torch.amp.is_autocast_available(device.type):
        raise ValueError(
            f"precision={precision!r} needs autocast, which torch does not offer on "
            f"{device.type!r}; use precision='32'."
        )
    if device.type == "cuda" and dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ValueError(
            f"precision='bf16' is not supported by this GPU "
            f"({torch.cuda.get_device_name(device)}); use precision='16' or '32'."
        )


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast to ``precision``'s dtype on ``device``, or nothing for ``"32"``."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


#: Intra-op threads for training a head on cached features on the CPU: its
#: matrices are too small for threads to pay, and on a machine whose cores
#: other work also uses, waiting for a descheduled thread at every operation
#: made such a fit several times slower (see docs/benchmarks.md).
HEAD_THREADS = 1

#: Forward FLOPs of one batch (as ``torch.utils.flop_counter.FlopCounterMode``
#: counts them) below which an encoder trains, encodes and predicts on the CPU
#: on one intra-op thread: its operations are too short for a second thread
#: to pay on an idle machine, and beside busy processes each one waited for a
#: descheduled thread (``benchmarks/threads.py``; docs/benchmarks.md).
SMALL_BATCH_FLOPS = 10**8


@contextlib.contextmanager
def counted_flops() -> Iterator[FlopCounterMode]:
    """Count the FLOPs of the torch operations run inside (``counter.get_total_flops()``).

    Examples
    --------
    >>> import torch
    >>> from sklearn_finetune._device import counted_flops
    >>> with counted_flops() as counter:
    ...     _ = torch.ones(2, 3) @ torch.ones(3, 4)
    >>> counter.get_total_flops()  # 2 x 3 x 4 multiply-adds
    48
    """
    with FlopCounterMode(display=False) as counter:
        yield counter


def forward_flops(counter: FlopCounterMode, module: torch.nn.Module, rows: int) -> int:
    """The FLOPs ``counter`` counted for ``rows`` samples of ``module``: at least 2 per parameter.

    ``FlopCounterMode`` counts matrix products, convolutions and attention,
    but not every operation (a recurrent layer, ``aten::lstm``, counts 0): a
    forward pass costs at least one multiply-add per parameter and sample.

    Examples
    --------
    >>> import torch
    >>> from sklearn_finetune._device import counted_flops, forward_flops
    >>> lstm = torch.nn.LSTM(4, 8, batch_first=True)
    >>> with counted_flops() as counter:
    ...     _ = lstm(torch.ones(2, 5, 4))
    >>> counter.get_total_flops(), forward_flops(counter, lstm, rows=2)
    (0, 1792)
    """
    parameters = sum(parameter.numel() for parameter in module.parameters())
    return max(counter.get_total_flops(), 2 * parameters * rows)


def chooses_threads(device: torch.device) -> bool:
    """Whether :func:`batch_threads` can change anything: on the CPU, with more than one thread.

    Elsewhere (a GPU, a dask worker's single thread) there is nothing to
    count FLOPs for.
    """
    return device.type == "cpu" and torch.get_num_threads() > 1


def batch_threads(
    flops_per_batch: float, device: torch.device
) -> contextlib.AbstractContextManager:
    """One intra-op thread on the CPU for batches below :data:`SMALL_BATCH_FLOPS`, else no change.

    Examples
    --------
    >>> import torch
    >>> from sklearn_finetune._device import batch_threads
    >>> with batch_threads(10**6, torch.device("cpu")):
    ...     torch.get_num_threads()
    1
    """
    if flops_per_batch < SMALL_BATCH_FLOPS:
        return torch_threads(1, device)
    return contextlib.nullcontext()


@contextlib.contextmanager
def torch_threads(n: int, device: torch.device) -> Iterator[None]:
    """Run with ``n`` intra-op threads on the CPU (no change elsewhere), restored on exit.

    Examples
    --------
    >>> import torch
    >>> from sklearn_finetune._device import torch_threads
    >>> before = torch.get_num_threads()
    >>> with torch_threads(1, torch.device("cpu")):
    ...     torch.get_num_threads()
    1
    >>> torch.get_num_threads() == before
    True
    """
    if device.type != "cpu" or torch.get_num_threads() <= n:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
