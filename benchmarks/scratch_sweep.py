"""How the from-scratch defaults (``encoder=None``) were chosen: a sweep on five datasets.

Each candidate setting of ``FoundationClassifier`` / ``FoundationRegressor``
(``encoder=None``, everything else at the defaults) is scored by 5-fold
cross-validation after a ``StandardScaler``, on the same folds as
``MLPClassifier()`` / ``MLPRegressor()`` and ``LogisticRegression()`` /
``Ridge()``, on the five datasets of ``benchmarks/defaults.py`` (part 2).
One Markdown table: the score per dataset, the mean, and the total time of
each candidate. Run from the repository root::

    python benchmarks/scratch_sweep.py            # ~10 min on two cores
    python benchmarks/scratch_sweep.py --folds 3  # quicker
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from defaults import git_commit, scratch_datasets  # this folder: run as python benchmarks/...
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import KFold, StratifiedKFold, cross_val_score
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_finetune import FoundationClassifier, FoundationRegressor

#: Candidates: changes from the defaults (the first row is the defaults).
CANDIDATES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "lr=3e-3": {"lr": 3e-3},
    "lr=1e-2": {"lr": 1e-2},
    "batch_size=64": {"batch_size": 64},
    "batch_size=16": {"batch_size": 16},
    "lr=3e-3, batch_size=64": {"lr": 3e-3, "batch_size": 64},
    "n_iter_no_change=20": {"n_iter_no_change": 20},
    "val_split=0.2": {"val_split": 0.2},
}


def model_for(name: str, classification: bool) -> BaseEstimator:
    """A candidate of ours, or a scikit-learn baseline (``"MLP"``, ``"linear"``)."""
    if name == "MLP":
        return MLPClassifier(random_state=0) if classification else MLPRegressor(random_state=0)
    if name == "linear":
        return LogisticRegression() if classification else Ridge()
    estimator = FoundationClassifier if classification else FoundationRegressor
    return estimator(random_state=0, **CANDIDATES[name])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--only", nargs="*", help="candidates to run (default: all)")
    args = parser.parse_args(argv)
    names = [*(args.only or CANDIDATES), "MLP", "linear"]
    datasets = scratch_datasets()
    print(f"Commit {git_commit()}; {args.folds}-fold CV, StandardScaler + model.\n")
    print("| candidate | " + " | ".join(name for name, *_ in datasets) + " | mean | time (s) |")
    print("|---|" + "---:|" * (len(datasets) + 2))
    for name in names:
        scores, seconds = [], 0.0
        for _, X, y, classification in datasets:
            splitter = StratifiedKFold if classification else KFold
            cv = splitter(args.folds, shuffle=True, random_state=0)
            pipeline = make_pipeline(StandardScaler(), model_for(name, classification))
            started = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                scores.append(cross_val_score(pipeline, X, y, cv=cv).mean())
            seconds += time.perf_counter() - started
        cells = " | ".join(f"{score:.4f}" for score in scores)
        print(f"| {name} | {cells} | {np.mean(scores):.4f} | {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
