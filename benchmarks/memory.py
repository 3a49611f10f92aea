"""Peak memory of a fit on X larger than memory: a memory-mapped X against the same X in memory.

Writes a float32 X of ``--rows`` x ``--features`` (default 500,000 x 1,024:
2 GB) to a ``.npy`` file in a temporary directory (made in ``--dir``, which
is created if missing; the temporary directory is deleted at the end), with a
binary y. Then, each in a fresh child process so that peaks do not mix, it
fits

* ``frozen probe``: ``FoundationClassifier(encoder)``, a small frozen
  encoder (``Linear(features, 32)``, ReLU) and the linear probe on its
  features (X hashed, encoded and cached a block at a time);
* ``fine-tune``: the same with ``freeze_backbone=False, max_epochs=1``
  (batches of ``--batch-size`` rows read from X by index, 10% of the rows
  held out by index);

on X opened with ``np.load(path, mmap_mode="r")`` and, for contrast (unless
``--no-in-memory``), on X loaded whole with ``np.load(path)``. Each child
reports its peak resident set size above its baseline, the resident set
once the imports and the encoder are set up, before X is opened: on Linux
the peak is reset there (``/proc/self/clear_refs``) and read from
``VmHWM``; elsewhere it is ``ru_maxrss``, whose peak then includes the
imports'.
A memory map's pages count in the resident set while they are mapped; the
package hands them back after each read (they stay in the OS page cache,
shared and reclaimable), so what is reported is what the fit itself holds.

Run from the repository root::

    python benchmarks/memory.py                      # 2 GB, about 16 minutes on 2 shared cores
    python benchmarks/memory.py --rows 50000         # 200 MB, to try it out
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

#: The bound that the memory-mapped cases must stay under, above the baseline.
BOUND_MB = 500

CASES = ("frozen probe", "fine-tune")


STATUS = Path("/proc/self/status")


def _status_mb(field: str) -> float:
    for line in STATUS.read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024 / 1e6
    raise KeyError(field)


def start_measuring() -> float:
    """Reset the peak resident set size where Linux allows it; return the baseline in MB."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_mb("VmRSS")
    except OSError:
        return peak_mb()


def peak_mb() -> float:
    """The peak resident set size since :func:`start_measuring`, in MB."""
    if STATUS.exists():
        return _status_mb("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6  # KiB on Linux


def write_data(directory: Path, rows: int, features: int, seed: int = 0) -> tuple[Path, Path]:
    """X (float32, standard normal) as a ``.npy`` file written in blocks, and y (the sign of a
    random projection)."""
    rng = np.random.default_rng(seed)
    x_path, y_path = directory / "X.npy", directory / "y.npy"
    X = np.lib.format.open_memmap(x_path, mode="w+", dtype=np.float32, shape=(rows, features))
    direction = rng.standard_normal(features).astype(np.float32)
    y = np.empty(rows, dtype=np.int64)
    block = max(1, 2**26 // (4 * features))
    for start in range(0, rows, block):
        chunk = rng.standard_normal((min(block, rows - start), features), dtype=np.float32)
        X[start : start + len(chunk)] = chunk
        y[start : start + len(chunk)] = chunk @ direction > 0
    X.flush()
    del X
    np.save(y_path, y)
    return x_path, y_path


def child(case: str, storage: str, x_path: str, y_path: str, batch_size: int) -> None:
    """Fit one case and print its figures as JSON (run in a fresh process)."""
    import torch
    from torch import nn

    from sklearn_finetune import FoundationClassifier

    torch.set_num_threads(os.cpu_count() or 1)
    y = np.load(y_path)
    features = np.load(x_path, mmap_mode="r").shape[1]
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(features, 32), nn.ReLU())
    settings = {"freeze_backbone": False, "max_epochs": 1} if case == "fine-tune" else {}
    model = FoundationClassifier(encoder, batch_size=batch_size, random_state=0, **settings)
    baseline = start_measuring()
    start = time.perf_counter()
    X = np.load(x_path, mmap_mode="r") if storage == "memory-mapped" else np.load(x_path)
    model.fit(X, y)
    accuracy = float((model.predict(X[:10_000]) == y[:10_000]).mean())
    seconds = time.perf_counter() - start
    figures = {"baseline": baseline, "peak": peak_mb() - baseline, "seconds": seconds}
    print(json.dumps({**figures, "accuracy": accuracy}))


def run_case(case: str, storage: str, x_path: Path, y_path: Path, batch_size: int) -> dict:
    command = [sys.executable, __file__, "--child", case, storage, str(x_path), str(y_path)]
    command += ["--batch-size", str(batch_size)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{case} on {storage} X failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--features", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument(
        "--dir",
        default=None,
        help="where to make the temporary directory X is written to (created if missing)",
    )
    parser.add_argument("--no-in-memory", action="store_true", help="skip the in-memory contrast")
    parser.add_argument("--child", nargs=4, metavar=("CASE", "STORAGE", "X", "Y"))
    args = parser.parse_args()
    if args.child:
        child(*args.child, batch_size=args.batch_size)
        return
    if args.dir is not None:  # created if missing; only the temporary directory in it is deleted
        try:
            Path(args.dir).mkdir(parents=True, exist_ok=True)
        except OSError as error:
            parser.error(f"--dir {args.dir}: cannot create it ({error.strerror or error})")
    directory = Path(tempfile.mkdtemp(prefix="sklearn_finetune_memory_", dir=args.dir))
    try:
        start = time.perf_counter()
        x_path, y_path = write_data(directory, args.rows, args.features)
        size_gb = x_path.stat().st_size / 1e9
        print(
            f"X: {args.rows} x {args.features} float32, {size_gb:.2f} GB at {x_path} "
            f"(written in {time.perf_counter() - start:.0f} s); batch_size={args.batch_size}; "
            f"Python {platform.python_version()}, {os.cpu_count()} CPUs\n"
        )
        storages = ["memory-mapped"] + ([] if args.no_in_memory else ["in memory"])
        print(
            "| fit | X | peak RSS above baseline (MB) | bound (MB) | baseline (MB) | "
            "time (s) | accuracy |"
        )
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
        for case in CASES:
            for storage in storages:
                result = run_case(case, storage, x_path, y_path, args.batch_size)
                bound = f"{BOUND_MB}" if storage == "memory-mapped" else "-"
                print(
                    f"| {case} | {storage} | {result['peak']:.0f} | {bound} | "
                    f"{result['baseline']:.0f} | {result['seconds']:.0f} | "
                    f"{result['accuracy']:.3f} |",
                    flush=True,
                )
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
