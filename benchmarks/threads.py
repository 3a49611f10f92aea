"""Training steps on one thread vs torch's default, quiet and beside busy processes.

torch runs each CPU operation on its intra-op thread pool (``torch.get_num_threads()``,
all cores by default). Every parallel operation ends at a barrier; when another
process holds a core, the thread waiting for it is descheduled for a time slice, and
an operation of microseconds takes milliseconds. This script measures, for encoders
from the from-scratch MLP to a MiniLM-sized transformer, the seconds per training
step (forward, backward, AdamW; ``batch_size`` rows) with one thread and with the
default, first with nothing else running, then beside ``--busy`` spinning processes
(one core each), and prints one Markdown table with the forward FLOPs of a step
(``torch.utils.flop_counter.FlopCounterMode``), from which the estimators' thread rule
(``sklearn_finetune._device.SMALL_STEP_FLOPS``) was chosen.

Run it on an otherwise idle machine (check ``uptime``)::

    python benchmarks/threads.py            # about two minutes on two cores
    python benchmarks/threads.py --busy 2 --repeats 5
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from defaults import BusyNeighbours, cpu_name, git_commit, make_cnn

from sklearn_finetune._encoder import mlp_backbone


def mlp(width: int, n_features: int = 64) -> nn.Module:
    return nn.Sequential(
        nn.Linear(n_features, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU()
    )


def bert(hidden: int, layers: int, heads: int) -> nn.Module:
    """A BERT encoder built from a config (random weights), returning the [CLS] state."""
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=30522,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
    )

    class Cls(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = BertModel(config)

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.model(input_ids=input_ids).last_hidden_state[:, 0]

    return Cls()


#: name -> (encoder factory, one batch's input for ``batch_size`` rows)
CASES: dict[str, tuple[Callable[[], nn.Module], Callable[[int], torch.Tensor]]] = {
    "from-scratch MLP, digits (64-128-128)": (
        lambda: mlp_backbone((64,)),
        lambda n: torch.randn(n, 64),
    ),
    "MLP 64-512-512": (lambda: mlp(512), lambda n: torch.randn(n, 64)),
    "MLP 784-2048-2048": (lambda: mlp(2048, 784), lambda n: torch.randn(n, 784)),
    "quickstart CNN, 8x8 digits": (
        lambda: nn.Sequential(make_cnn(), nn.AdaptiveAvgPool2d(1), nn.Flatten()),
        lambda n: torch.randn(n, 1, 8, 8),
    ),
    "BERT 128 x 2 layers, 64 tokens": (
        lambda: bert(128, 2, 2),
        lambda n: torch.randint(0, 30522, (n, 64)),
    ),
    "BERT 384 x 6 layers (MiniLM size), 64 tokens": (
        lambda: bert(384, 6, 12),
        lambda n: torch.randint(0, 30522, (n, 64)),
    ),
}


def forward_flops(encoder: nn.Module, batch: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        encoder(batch)
    return counter.get_total_flops()


def seconds_per_step(encoder: nn.Module, batch: torch.Tensor, threads: int, budget: float) -> float:
    """Mean seconds of one forward/backward/AdamW step over about ``budget`` seconds."""
    torch.set_num_threads(threads)
    head = nn.LazyLinear(10)
    model = nn.Sequential(encoder, head)
    target = torch.randint(0, 10, (len(batch),))
    optimizer = None
    steps, started = 0, time.perf_counter()
    while True:
        loss = nn.functional.cross_entropy(model(batch), target)
        if optimizer is None:
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += 1
        elapsed = time.perf_counter() - started
        if elapsed > budget and steps >= 3:
            return elapsed / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--busy", type=int, default=os.cpu_count(), help="busy processes")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="best of N")
    parser.add_argument("--budget", type=float, default=0.5, help="seconds per measurement")
    args = parser.parse_args()
    default_threads = torch.get_num_threads()
    print(
        f"Machine: {cpu_name()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
        f"(default {default_threads} threads); commit {git_commit()}; batch {args.batch_size}; "
        f"load average before: {os.getloadavg()[0]:.2f}\n"
    )
    rows = []
    for name, (make, make_batch) in CASES.items():
        torch.manual_seed(0)
        encoder, batch = make(), make_batch(args.batch_size)
        flops = forward_flops(encoder, batch)
        times = {}
        for busy in (0, args.busy):
            with BusyNeighbours(busy, "python") if busy else contextlib.nullcontext():
                for threads in (1, default_threads):
                    times[busy, threads] = min(
                        seconds_per_step(encoder, batch, threads, args.budget)
                        for _ in range(args.repeats)
                    )
        torch.set_num_threads(default_threads)
        rows.append((name, flops, times))
        print(f"measured {name}", file=sys.stderr, flush=True)
    d, b = default_threads, args.busy
    print(
        f"| encoder | forward GFLOP per step | ms/step, 1 thread | ms/step, {d} threads "
        f"| time {d} / 1 threads, quiet | ms/step beside {b} busy, 1 thread | same, {d} threads "
        f"| time {d} / 1 threads, busy |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, flops, t in rows:
        print(
            f"| {name} | {flops / 1e9:.4f} | {t[0, 1] * 1e3:.2f} | {t[0, d] * 1e3:.2f} "
            f"| {t[0, d] / t[0, 1]:.2f} | {t[b, 1] * 1e3:.2f} | {t[b, d] * 1e3:.2f} "
            f"| {t[b, d] / t[b, 1]:.2f} |"
        )


if __name__ == "__main__":
    main()
