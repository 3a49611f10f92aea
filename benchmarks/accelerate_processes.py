"""Fine-tuning in one process and in two (accelerate, gloo on CPUs), side by side.

Runs ``tests/accelerate_fit.py`` (a 64-64-32 MLP encoder fine-tuned on 1,280
of scikit-learn's digits, batches of 64, 10 epochs, one thread per process)
three ways, alternating, ``--rounds`` times:

* **plain**: one process, no accelerator (``python tests/accelerate_fit.py``);
* **accelerate, 1 process**: ``torch.distributed.run --nproc_per_node 1``;
* **accelerate, 2 processes**: ``torch.distributed.run --nproc_per_node 2``.

It prints the median fit time of each (``fit`` only: not the processes'
start-up), the test accuracy, and how many test predictions the two-process
model shares with the plain one. Run from the repository root::

    python benchmarks/accelerate_processes.py --rounds 3
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "accelerate_fit.py"
sys.path.insert(0, str(SCRIPT.parent))
from accelerate_fit import data  # noqa: E402

RUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
WAYS = {
    "plain": ([sys.executable, str(SCRIPT)], ["--plain"], "plain"),
    "accelerate, 1 process": ([*RUN, "--nproc_per_node", "1", str(SCRIPT)], [], "rank0"),
    "accelerate, 2 processes": ([*RUN, "--nproc_per_node", "2", str(SCRIPT)], [], "rank0"),
}


def run(way: str) -> tuple[float, np.ndarray]:
    """One fit the ``way`` named: its seconds and its test-set probabilities."""
    command, flags, name = WAYS[way]
    with tempfile.TemporaryDirectory() as out:
        subprocess.run(
            [*command, out, *flags],
            check=True,
            capture_output=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        seconds = float((Path(out) / f"seconds-{name}.txt").read_text())
        return seconds, np.load(Path(out) / f"proba-{name}.npy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    rounds = parser.parse_args().rounds
    *_, y_test = data()
    seconds: dict[str, list[float]] = {way: [] for way in WAYS}
    proba: dict[str, np.ndarray] = {}
    for _ in range(rounds):
        for way in WAYS:
            took, proba[way] = run(way)
            seconds[way].append(took)
    plain = proba["plain"].argmax(1)
    print(f"{rounds} rounds, fit seconds (median), test accuracy, predictions shared with plain")
    print("| way | fit (s) | x plain | accuracy | same class as plain |")
    print("|---|---:|---:|---:|---:|")
    base = float(np.median(seconds["plain"]))
    for way in WAYS:
        median = float(np.median(seconds[way]))
        predicted = proba[way].argmax(1)
        print(
            f"| {way} | {median:.2f} | {median / base:.1f} | {(predicted == y_test).mean():.3f} "
            f"| {(predicted == plain).mean():.3f} |"
        )


if __name__ == "__main__":
    main()
