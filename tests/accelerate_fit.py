"""Fine-tune on digits in several processes, or in one: what tests/test_accelerate.py runs.

Usage: ``python -m torch.distributed.run --standalone --nproc_per_node 2
tests/accelerate_fit.py OUT`` (CPU processes, gloo), or ``python tests/accelerate_fit.py OUT
--plain`` (no accelerator: the single-process reference). Every process writes its
test-set probabilities, its fit time and a pickle of its fitted estimator under OUT
(named by rank, for the test to compare), and calls
``save_estimator(clf, OUT / f"saved-{rank}")``, which only the main process carries out.
"""

from __future__ import annotations

import os
import pickle
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from skorch.callbacks import Callback
from torch import nn

from sklearn_finetune import FoundationClassifier, save_estimator

#: Training rows: a multiple of the batch size, so that every step's batch splits
#: evenly across two processes (accelerate would pad an uneven last batch).
N_TRAIN, N_VAL, BATCH_SIZE, EPOCHS = 1280, 192, 64, 10


def data() -> tuple[np.ndarray, ...]:
    X, y = load_digits(return_X_y=True)
    X = (X / 16).astype(np.float32)
    order = np.random.RandomState(0).permutation(len(X))
    X, y = X[order], y[order]
    train, val = slice(0, N_TRAIN), slice(N_TRAIN, N_TRAIN + N_VAL)
    test = slice(N_TRAIN + N_VAL, None)
    return X[train], y[train], X[val], y[val], X[test], y[test]


def encoder() -> nn.Module:
    """A small encoder, the same weights in every process (as a pretrained one would be)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU())


class StopAlone(Callback):
    """Ends training after epoch 2 in the process of rank 1 only, as a per-process rule might."""

    def on_epoch_end(self, net, **kwargs):
        if os.environ.get("RANK") == "1" and len(net.history) == 2:
            raise KeyboardInterrupt


def main(out: Path, plain: bool) -> None:
    accelerator = None
    rank = 0
    if not plain:
        from accelerate import Accelerator, DataLoaderConfiguration

        # split_batches: each step's batch of BATCH_SIZE rows is split across the processes
        accelerator = Accelerator(
            cpu=True, dataloader_config=DataLoaderConfiguration(split_batches=True)
        )
        rank = accelerator.process_index
    X, y, X_val, y_val, X_test, _ = data()
    if accelerator is not None:  # a seed each process draws itself is refused before training
        try:
            clf = FoundationClassifier(encoder(), freeze_backbone=False, accelerator=accelerator)
            clf.fit(X, y)
        except ValueError as error:
            (out / f"refused-rank{rank}.txt").write_text(str(error))
        stopped = FoundationClassifier(
            encoder(),
            freeze_backbone=False,
            accelerator=accelerator,
            callbacks=[StopAlone()],
            max_epochs=4,
            random_state=0,
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            stopped.fit(X, y)
        (out / f"epochs-rank{rank}.txt").write_text(f"{len(stopped.history_)}\n")
        interrupted = [str(w.message) for w in caught if "interrupted" in str(w.message)]
        (out / f"stopped-rank{rank}.txt").write_text(f"{stopped.net_.stopped_by_} {interrupted}\n")
    clf = FoundationClassifier(
        encoder(),
        freeze_backbone=False,
        accelerator=accelerator,
        val_split=(X_val, y_val),
        batch_size=BATCH_SIZE,
        lr=1e-2,
        backbone_lr_mult=1.0,
        max_epochs=EPOCHS,
        n_iter_no_change=None,
        random_state=0,
        device="auto",
    )
    torch.optim.AdamW([nn.Parameter(torch.zeros(1))])  # torch's one-off import, not timed
    start = time.perf_counter()
    clf.fit(X, y)
    seconds = time.perf_counter() - start
    name = "plain" if plain else f"rank{rank}"
    np.save(out / f"proba-{name}.npy", clf.predict_proba(X_test))
    (out / f"seconds-{name}.txt").write_text(f"{seconds}\n")
    (out / f"processes-{name}.txt").write_text(
        f"{1 if accelerator is None else accelerator.num_processes}\n"
    )
    with open(out / f"estimator-{name}.pkl", "wb") as file:
        pickle.dump(clf, file)
    clf.set_params(val_split=0.1)  # validation data is not saved; predicting does not need it
    save_estimator(clf, out / f"saved-{name}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), plain="--plain" in sys.argv[2:])
