"""Quickstart: pretrain an encoder, then probe, fine-tune and train from scratch
=============================================================================

On scikit-learn's 8x8 digit images: a small CNN is trained on the digits 0-4,
standing in for a pretrained backbone. On the digits 5-9, which it has never
seen, five estimators are scored with 5-fold ``cross_val_score``:

* a linear probe on the frozen pretrained encoder at the defaults, which is
  ``LogisticRegression()`` fitted on features encoded once, beside the
  baseline it replaces: the features of ``FoundationEmbedder`` fed to
  ``LogisticRegression()``; the two agree to the digit,
* the same probe trained by mini-batch AdamW (``solver="adamw"``),
* full fine-tuning of the pretrained encoder (backbone at lr * 0.1),
* the same CNN trained from scratch,
* a linear probe on the same CNN with random weights (the usual baseline).

Run it with ``python examples/quickstart.py`` (about one minute on two
cores). At commit 3ee9917, run by the README's command in a fresh
virtualenv: probe 0.894, embedder + ``LogisticRegression()`` 0.894 (both
stop at 100 iterations on these features, with the same warning, silenced
here), AdamW probe 0.835, full fine-tune 0.965, from scratch 0.964, probe
of the random CNN 0.383.
"""

from __future__ import annotations

import time
import warnings

import matplotlib.pyplot as plt
import torch
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from torch import nn

from sklearn_finetune import FoundationClassifier, FoundationEmbedder, HistoryDisplay


def make_encoder() -> nn.Module:
    """A small CNN; its (batch, 32, 8, 8) feature maps are average-pooled to 32 features."""
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
    # The AdamW fits here (probe, fine-tune, from scratch) often reach max_epochs
    # with the validation loss still creeping down, and the probe and
    # LogisticRegression() stop at their 100 iterations on these unscaled
    # features: a ConvergenceWarning per fold. The table shows what they score.
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    torch.manual_seed(0)  # the encoders built here; each fit is seeded by random_state
    X, y = load_digits(return_X_y=True)
    images = (X / 16.0).reshape(-1, 1, 8, 8)
    seen = y < 5

    pretraining = FoundationClassifier(
        make_encoder(), freeze_backbone=False, backbone_lr_mult=1.0, random_state=0
    ).fit(images[seen], y[seen])
    pretrained = pretraining.encoder_
    print(
        f"Pretrained on digits 0-4: validation accuracy "
        f"{pretraining.history_[-1, 'valid_accuracy']:.3f}\n"
    )

    candidates = {
        "linear probe, pretrained": FoundationClassifier(pretrained, random_state=0),
        "embedder + LogisticRegression": make_pipeline(
            FoundationEmbedder(pretrained), LogisticRegression()
        ),
        "linear probe, AdamW": FoundationClassifier(pretrained, solver="adamw", random_state=0),
        "full fine-tune, pretrained": FoundationClassifier(
            pretrained, freeze_backbone=False, random_state=0
        ),
        "from scratch": FoundationClassifier(
            make_encoder(), freeze_backbone=False, backbone_lr_mult=1.0, random_state=0
        ),
        "linear probe, random init": FoundationClassifier(make_encoder(), random_state=0),
    }
    X_new, y_new = images[~seen], y[~seen]
    print(f"Digits 5-9 ({len(y_new)} images), 5-fold cross_val_score:\n")
    rows = []
    for name, estimator in candidates.items():
        start = time.perf_counter()
        scores = cross_val_score(estimator, X_new, y_new, cv=5)
        seconds = time.perf_counter() - start
        rows.append([name, f"{scores.mean():.3f} ± {scores.std():.3f}", f"{seconds:.1f}"])
    print(markdown_table(["estimator", "accuracy", "seconds"], rows))

    # The pretraining run: losses per epoch, validation accuracy, and the epoch kept.
    display = HistoryDisplay.from_estimator(pretraining)
    display.ax_.set_title("Pretraining the CNN on the digits 0-4")
    lines = [*display.ax_.get_lines(), *display.score_ax_.get_lines()]
    display.ax_.legend(handles=lines, loc="center right")  # clear of all four curves
    plt.show()


if __name__ == "__main__":
    main()
