"""Images: judge a pretrained CNN's features on digits it never saw, by every protocol
===================================================================================

On scikit-learn's 8x8 digit images, a small CNN is pretrained (supervised)
on the digits 0-4 while an :class:`~sklearn_finetune.OnlineProbe` follows how well its
features separate the digits 5-9. The weights are saved as a
``.safetensors`` file and loaded into a fresh CNN with :func:`~sklearn_finetune.load_weights`.
On the digits 5-9, scored by 5-fold cross-validation: the linear probe
(:func:`~sklearn_finetune.linear_probe_score`, weight decay searched inside each fold), the k-NN
probe, the frozen features in an RBF support-vector machine
(:class:`~sklearn_finetune.FoundationEmbedder` in a pipeline), and learned attention pooling over
the 8x8 feature map against mean pooling:

.. code-block:: bash

    pip install -e ".[examples]"
    python examples/images.py

It prints a Markdown table and draws the online probe's scores during
pretraining beside each protocol's accuracy. It runs when the site is built
(10 to 42 s in site builds on two cores shared with other jobs, 97 s in a
run while they were busiest): the table and figures below are that build's.
Recorded at commit ``4cd9df1`` (the same code as this version's):

.. code-block:: text

    | protocol                               | accuracy | seconds |
    | -------------------------------------- | -------- | ------- |
    | linear probe (linear_probe_score)      |    0.925 |     2.9 |
    | k-NN probe (knn_probe_score)           |    0.800 |     0.1 |
    | FoundationEmbedder + SVC, C searched   |    0.915 |     1.5 |
    | L-BFGS linear head, mean pooling       |    0.887 |     0.2 |
    | L-BFGS linear head, max pooling        |    0.818 |     0.2 |
    | L-BFGS linear head, attention pooling  |    0.898 |     1.2 |

The online probe on the digits 5-9 read 0.898, 0.877, 0.864 and 0.887 after
pretraining epochs 5, 10, 15 and 20.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from functools import partial
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.svm import SVC
from torch import nn

from sklearn_finetune import (
    FeatureCache,
    FoundationClassifier,
    FoundationEmbedder,
    OnlineProbe,
    knn_probe_score,
    linear_probe_score,
    load_weights,
)


def make_encoder() -> nn.Module:
    """A small CNN; its (batch, 32, 8, 8) feature maps are pooled to 32 features."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
    )


def main() -> None:
    # Pretraining stops at max_epochs=20, and the attention-pooling probe's L-BFGS at
    # its cap in some folds: a ConvergenceWarning each time. The table shows what they score.
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    torch.manual_seed(0)
    X, y = load_digits(return_X_y=True)
    images = (X / 16.0).reshape(-1, 1, 8, 8).astype(np.float32)
    seen, unseen = y < 5, y >= 5

    probe = OnlineProbe(images[unseen], y[unseen], every=5, encoder="encoder")
    pretraining = FoundationClassifier(
        make_encoder(),
        freeze_backbone=False,
        backbone_lr_mult=1.0,
        max_epochs=20,
        callbacks=[("online_probe", probe)],
        random_state=0,
    ).fit(images[seen], y[seen])
    online = [row["online_probe"] for row in pretraining.history_ if "online_probe" in row]
    print(
        "Pretraining on digits 0-4; linear probe on digits 5-9 every 5 epochs: "
        + " -> ".join(f"{score:.3f}" for score in online)
    )

    with tempfile.TemporaryDirectory() as folder:
        from safetensors.torch import save_file

        path = Path(folder) / "cnn.safetensors"
        save_file(pretraining.encoder_.state_dict(), path)
        encoder = load_weights(make_encoder(), path)

    X_new, y_new = images[unseen], y[unseen]
    cache = FeatureCache()
    svm = GridSearchCV(
        make_pipeline(FoundationEmbedder(encoder, cache=cache), SVC()),
        {"svc__C": [0.1, 1, 10, 100]},
    )
    protocols = {
        "linear probe (linear_probe_score)": lambda: linear_probe_score(
            encoder, X_new, y_new, cache=cache, random_state=0
        ),
        "k-NN probe (knn_probe_score)": lambda: knn_probe_score(encoder, X_new, y_new, cache=cache),
        "FoundationEmbedder + SVC, C searched": lambda: cross_val_score(svm, X_new, y_new),
        **{
            f"L-BFGS linear head, {pooling} pooling": partial(
                cross_val_score,
                FoundationClassifier(
                    encoder,
                    pooling=pooling,
                    solver="lbfgs",
                    batch_norm=True,
                    weight_decay=1e-2,
                    val_split=0,
                    cache=cache,
                    random_state=0,
                ),
                X_new,
                y_new,
            )
            for pooling in ("mean", "max", "attention")
        },
    }
    print(f"\nDigits 5-9 ({len(X_new)} images), 5-fold accuracy\n")
    print(f"| {'protocol':<38} | accuracy | seconds |")
    print(f"| {'-' * 38} | -------- | ------- |")
    results = {}
    for name, score in protocols.items():
        started = time.perf_counter()
        results[name] = scores = np.asarray(score())
        print(f"| {name:<38} | {np.mean(scores):8.3f} | {time.perf_counter() - started:7.1f} |")

    _, (left, right) = plt.subplots(1, 2, figsize=(11, 3.5), layout="constrained")
    epochs = [row["epoch"] for row in pretraining.history_ if "online_probe" in row]
    left.plot(epochs, online, marker="o")
    left.set_xticks(epochs)
    left.set_xlabel("pretraining epoch (digits 0-4)")
    left.set_ylabel("linear probe accuracy, digits 5-9")
    left.set_title("OnlineProbe during pretraining")
    names = list(results)[::-1]
    right.barh(
        names,
        [results[name].mean() for name in names],
        xerr=[results[name].std() for name in names],
        capsize=3,
    )
    right.set_xlim(min(results[name].mean() for name in names) - 0.1, 1.0)
    right.set_xlabel("5-fold accuracy on the digits 5-9 (mean ± std)")
    right.set_title("The pretrained CNN judged by every protocol")
    plt.show()


if __name__ == "__main__":
    main()
