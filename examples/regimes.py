"""Fine-tuning regimes side by side: probe, unfreezing, layer decay, early stopping
================================================================================

On scikit-learn's 8x8 digit images a small CNN is pretrained on the digits
0-4. On the digits 5-9 each regime below is one setting of the same
``FoundationClassifier``, scored by 5-fold ``cross_validate`` on accuracy,
macro F1, one-vs-rest AUROC and the validation ECE of its last fit; the
table also gives the epoch each regime kept (``best_epoch_``) and its
training time. The linear probe at the defaults is ``LogisticRegression()``'s
problem solved by L-BFGS on all of X, without validation data, so it has no
validation ECE and no best epoch (``n/a``). A bar chart shows the accuracies.

Run it with ``python examples/regimes.py`` (about two minutes on two cores).
"""

from __future__ import annotations

import time

import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import cross_validate
from torch import nn

from sklearn_finetune import FoundationClassifier

REGIMES = {
    "linear probe": {},
    "MLP probe": dict(head="mlp", dropout=0.2),
    "full fine-tune": dict(freeze_backbone=False),
    "unfreeze at epoch 5": dict(unfreeze_at=5),
    "unfreeze top-down from 5": dict(unfreeze_at=5, unfreeze_mode="top_down"),
    "layer decay 0.5 + warmup cosine": dict(
        freeze_backbone=False,
        layer_decay=0.5,
        lr_schedule="warmup_cosine",
        warmup_epochs=2,
        max_grad_norm=1.0,
    ),
    "fine-tune, AUROC early stopping": dict(
        freeze_backbone=False, scoring="roc_auc", n_iter_no_change=5
    ),
}


def make_encoder() -> nn.Module:
    """A small CNN of four blocks; its feature maps are average-pooled to 32 features."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
    )


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table whose columns line up in a terminal too (numbers to the right)."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = [header, ["-" * width for width in widths], *rows]
    return "\n".join(
        "| "
        + " | ".join(
            cell.ljust(width) if j == 0 else cell.rjust(width)
            for j, (cell, width) in enumerate(zip(line, widths, strict=True))
        )
        + " |"
        for line in lines
    )


def main() -> None:
    torch.manual_seed(0)
    X, y = load_digits(return_X_y=True)
    images = (X / 16.0).reshape(-1, 1, 8, 8).astype(np.float32)
    seen = y < 5
    pretrained = (
        FoundationClassifier(
            make_encoder(), freeze_backbone=False, backbone_lr_mult=1.0, random_state=0
        )
        .fit(images[seen], y[seen])
        .encoder_
    )

    header = ["regime", "accuracy", "macro F1", "AUROC", "ECE", "best epoch", "s/fit"]
    rows, accuracies = [], {}
    for name, params in REGIMES.items():
        estimator = FoundationClassifier(pretrained, lr=3e-3, random_state=0, **params)
        start = time.perf_counter()
        result = cross_validate(
            estimator,
            images[~seen],
            y[~seen],
            cv=5,
            return_estimator=True,
            scoring=["accuracy", "f1_macro", "roc_auc_ovr"],
        )
        seconds = (time.perf_counter() - start) / 5
        fits = result["estimator"]
        # The L-BFGS probe trains on all of X, as LogisticRegression: no validation
        # data, so no validation ECE and no best epoch (best_epoch_ is None).
        validated = [fit for fit in fits if fit.best_epoch_ is not None]
        ece = [fit.history_[fit.best_epoch_ - 1, "valid_ece"] for fit in validated]
        best = [fit.best_epoch_ for fit in validated]
        accuracies[name] = accuracy = result["test_accuracy"]
        rows.append(
            [
                name,
                f"{accuracy.mean():.3f} ± {accuracy.std():.3f}",
                f"{result['test_f1_macro'].mean():.3f}",
                f"{result['test_roc_auc_ovr'].mean():.3f}",
                f"{np.mean(ece):.3f}" if validated else "n/a",
                f"{np.mean(best):.1f}" if validated else "n/a",
                f"{seconds:.1f}",
            ]
        )
    print(markdown_table(header, rows))

    _, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    names = list(accuracies)[::-1]  # the first regime on top
    means = [accuracies[name].mean() for name in names]
    ax.barh(names, means, xerr=[accuracies[name].std() for name in names], capsize=3)
    left = min(means) - 0.1
    for position, mean in enumerate(means):  # at the bars' left end, clear of the error bars
        ax.text(left + 0.005, position, f"{mean:.3f}", ha="left", va="center", color="white")
    ax.set_xlim(left, 1.0)
    ax.set_xlabel("5-fold accuracy on the digits 5-9 (mean ± std)")
    ax.set_title("One FoundationClassifier, seven regimes")
    plt.show()


if __name__ == "__main__":
    main()
