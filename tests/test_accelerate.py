"""``accelerator``: fine-tuning on several processes through Hugging Face accelerate.

The two-process test launches ``tests/accelerate_fit.py`` with torchrun (two CPU
processes, gloo) and compares it with the same fit in one plain process; the
other tests check, in this process, what the parameter refuses and that a
single-process accelerator's mixed precision is the one that trains.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.base import clone
from torch import nn

from sklearn_finetune import FoundationClassifier, load_estimator, save_estimator

accelerate = pytest.importorskip("accelerate")
from accelerate.state import AcceleratorState  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from accelerate_fit import data, encoder, main  # noqa: E402

SCRIPT = Path(__file__).parent / "accelerate_fit.py"
#: torchrun with two CPU processes (accelerate launch starts CPU processes through MPI only).
LAUNCH = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


@pytest.fixture
def accelerator_of():
    """Make a real ``Accelerator``; accelerate's process-wide state is reset after the test."""

    def make(**settings):
        AcceleratorState._reset_state(reset_partial_state=True)
        return accelerate.Accelerator(cpu=True, **settings)

    yield make
    AcceleratorState._reset_state(reset_partial_state=True)


def test_two_processes_train_as_one_and_the_result_is_a_plain_estimator(tmp_path):
    """Two CPU processes (gloo) fine-tune like one; ranks agree and stop together; rank 0 saves.

    Each step's batch of 64 rows is split 32/32 across the processes
    (``split_batches``) and DistributedDataParallel averages the two halves'
    gradients: the mean of two 32-row means is the 64-row mean, so each
    step's gradient is the one-process gradient up to float rounding. The
    runs still differ in the order the rows are drawn (accelerate shuffles
    with a generator it keeps in sync across the processes, not the one a
    plain DataLoader draws from), so the models are two fits of the same
    recipe on differently shuffled rows. Measured here (10 epochs): 96.3%
    of the 325 test predictions agree, accuracies 0.963 and 0.966,
    first-epoch training losses 1.7198 and 1.7183; one-process fits with
    seeds 1-3 agree with seed 0's on 96.6-97.8%, accuracies 0.960-0.966.
    Tolerances: accuracies within 0.03 (both above 0.9), predicted classes
    agreeing on 93% (what seeds give, less a margin for other CPUs' float
    rounding), first-epoch loss within 2% (each process stepping on its
    own 64 rows, without ``split_batches``, was 21% off).
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [*LAUNCH, str(SCRIPT), str(tmp_path)],
        check=True,
        env=env,
        timeout=300,
        capture_output=True,
    )
    main(tmp_path, plain=True)  # the same fit in this process, without an accelerator
    *_, X_test, y_test = data()
    rank0, rank1, plain = (
        np.load(tmp_path / f"proba-{n}.npy") for n in ("rank0", "rank1", "plain")
    )
    assert (tmp_path / "processes-rank0.txt").read_text().strip() == "2"
    np.testing.assert_array_equal(rank0, rank1)  # the replicas stayed identical
    accuracy_two = (rank0.argmax(1) == y_test).mean()
    accuracy_one = (plain.argmax(1) == y_test).mean()
    assert accuracy_two > 0.9 and abs(accuracy_two - accuracy_one) <= 0.03
    assert (rank0.argmax(1) == plain.argmax(1)).mean() >= 0.93
    with open(tmp_path / "estimator-rank0.pkl", "rb") as file:
        two = pickle.load(file)
    with open(tmp_path / "estimator-plain.pkl", "rb") as file:
        one = pickle.load(file)
    first_two, first_one = two.history_[0]["train_loss"], one.history_[0]["train_loss"]
    assert abs(first_two - first_one) <= 0.02 * first_one
    # Unwrapped and plain: it predicts here, in one process, without the accelerator.
    assert two.accelerator is None and two.net_.accelerator is None
    assert type(two.module_).__name__ == "FoundationModule"
    np.testing.assert_allclose(two.predict_proba(X_test), rank0, atol=1e-6)
    assert (tmp_path / "saved-rank0").is_dir() and not (tmp_path / "saved-rank1").exists()
    loaded = load_estimator(tmp_path / "saved-rank0", encoder=encoder())  # fine-tuned one stored
    np.testing.assert_allclose(loaded.predict_proba(X_test), rank0, atol=1e-6)
    for rank in (0, 1):  # a seed each process would draw itself is refused before training
        assert "random_state" in (tmp_path / f"refused-rank{rank}.txt").read_text()
        # a callback that stopped rank 1 alone after epoch 2 stopped both there, named in both,
        # and neither says it was interrupted
        assert (tmp_path / f"epochs-rank{rank}.txt").read_text().strip() == "2"
        assert (tmp_path / f"stopped-rank{rank}.txt").read_text().strip() == "StopAlone []"


def test_single_process_accelerator_trains_in_its_mixed_precision(accelerator_of, tmp_path):
    """The accelerator's autocast is the one training runs under; prediction is precision's."""
    accelerator = accelerator_of(mixed_precision="bf16")
    X, y, *_ = data()
    model = encoder()
    dtypes: list[torch.dtype] = []

    def record(module, inputs, output):
        if isinstance(module, torch.nn.Linear):
            dtypes.append(output.dtype)

    hook = torch.nn.modules.module.register_module_forward_hook(record)  # not on the modules
    clf = FoundationClassifier(
        model,
        freeze_backbone=False,
        accelerator=accelerator,
        max_epochs=2,
        val_split=0.1,
        random_state=0,
    ).fit(X[:256], y[:256])
    training = dtypes[:]
    dtypes.clear()
    proba = clf.predict_proba(X[:50])
    hook.remove()
    assert torch.bfloat16 in training and set(dtypes) == {torch.float32}  # precision="32"
    assert clf.net_.accelerator is None and clf.accelerator is accelerator
    assert clone(clf).accelerator is accelerator  # shared, as the encoder is
    restored = pickle.loads(pickle.dumps(clf))
    assert restored.accelerator is None
    np.testing.assert_array_equal(restored.predict_proba(X[:50]), proba)
    save_estimator(clf, tmp_path / "saved")
    np.testing.assert_allclose(
        load_estimator(tmp_path / "saved", encoder=encoder()).predict_proba(X[:50]),
        proba,
        atol=1e-6,
    )


@pytest.mark.parametrize(
    "mixed, settings, message",
    [
        ("no", {}, "backbone is frozen"),
        ("no", {"unfreeze_at": 1, "max_epochs": 2}, "unfrozen gradually"),
        (
            "no",
            {"unfreeze_at": 0, "unfreeze_mode": "top_down", "max_epochs": 2},
            r"unfrozen gradually \(unfreeze_at=0, unfreeze_mode='top_down'\)",
        ),
        ("bf16", {"freeze_backbone": False, "precision": "16"}, "contradicts the accelerator's"),
        (
            "no",
            {"freeze_backbone": False, "precision": "bf16"},
            r"Leave precision='32', or create the Accelerator with mixed_precision='bf16'",
        ),
        ("no", {"freeze_backbone": False, "device": "cuda"}, "the accelerator places"),
        ("no", {"freeze_backbone": False, "device": "meta"}, "the accelerator places"),
    ],
)
def test_contradictory_settings_are_refused_before_training(
    accelerator_of, mixed, settings, message
):
    X, y, *_ = data()
    model = encoder()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    clf = FoundationClassifier(model, accelerator=accelerator_of(mixed_precision=mixed), **settings)
    with pytest.raises(ValueError, match=message):
        clf.fit(X[:100], y[:100])
    assert not hasattr(clf, "net_")
    assert all(torch.equal(before[name], t) for name, t in model.state_dict().items())


@pytest.mark.parametrize(
    ("mixed", "precision", "options"),
    [
        ("no", "bf16", ["'32'", "'bf16'"]),
        ("no", "16", ["'32'", "'fp16'"]),
        ("bf16", "16", ["'32'", "'bf16'"]),
    ],
)
def test_the_precision_error_names_each_option_once(accelerator_of, mixed, precision, options):
    X, y, *_ = data()
    accelerator = accelerator_of(mixed_precision=mixed)
    clf = FoundationClassifier(
        encoder(), freeze_backbone=False, precision=precision, accelerator=accelerator
    )
    with pytest.raises(ValueError, match="contradicts the accelerator's") as caught:
        clf.fit(X[:100], y[:100])
    advice = str(caught.value).split("the accelerator's. ")[1]
    for option in options:
        assert advice.count(option) == 1, (option, advice)


def test_unfreeze_at_0_is_full_fine_tuning_and_is_accepted(accelerator_of):
    """``freeze_backbone=True, unfreeze_at=0`` trains as ``freeze_backbone=False`` does."""
    X, y, *_ = data()
    probas = []
    for settings in ({"freeze_backbone": True, "unfreeze_at": 0}, {"freeze_backbone": False}):
        clf = FoundationClassifier(
            encoder(),
            accelerator=accelerator_of(),
            max_epochs=2,
            val_split=0.1,
            random_state=0,
            **settings,
        ).fit(X[:256], y[:256])
        assert clf.net_.accelerator is None
        assert "unfreezing" not in dict(clf.net_.callbacks_)  # it would reach through DDP
        probas.append(clf.predict_proba(X[:50]))
    np.testing.assert_array_equal(probas[0], probas[1])


class FailsInEpoch(nn.Module):
    """A linear encoder whose forward raises from its ``after``-th training call on."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 8)
        self.after = after
        self.calls = 0

    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.calls >= self.after:
                raise RuntimeError("the encoder failed in training")
        return self.linear(x)


def test_a_fit_that_raises_in_training_leaves_the_accelerator_empty(accelerator_of):
    """The failed fit's model, optimizer and loader are not kept by the user's accelerator."""
    X, y, *_ = data()
    accelerator = accelerator_of()
    clf = FoundationClassifier(
        FailsInEpoch(after=3), freeze_backbone=False, accelerator=accelerator, max_epochs=2
    )
    with pytest.raises(RuntimeError, match="the encoder failed in training"):
        clf.fit(X[:256], y[:256])
    assert not hasattr(clf, "net_")
    assert accelerator._models == [] and accelerator._optimizers == []
    assert accelerator._dataloaders == []
    refit = FoundationClassifier(
        encoder(), freeze_backbone=False, accelerator=accelerator, max_epochs=1
    ).fit(X[:256], y[:256])
    assert refit.net_.accelerator is None and accelerator._models == []


def test_an_accelerator_is_an_object_with_accelerates_methods():
    X, y, *_ = data()
    with pytest.raises(ValueError, match="accelerator"):
        FoundationClassifier(encoder(), accelerator="cuda").fit(X[:100], y[:100])


def test_an_accelerator_that_does_not_span_the_launched_processes_is_refused(
    accelerator_of, monkeypatch
):
    """Under torchrun on CPUs, ``Accelerator()`` without ``cpu=True`` runs each process alone."""
    X, y, *_ = data()
    accelerator = accelerator_of()
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun --nproc_per_node 2 sets it
    clf = FoundationClassifier(
        encoder(), freeze_backbone=False, accelerator=accelerator, random_state=0
    )
    with pytest.raises(ValueError, match="WORLD_SIZE=2 launched processes"):
        clf.fit(X[:100], y[:100])
