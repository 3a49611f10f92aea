"""Linear probe vs fine-tuning: what changes, what must not, and what the optimizer sees."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import BatchNormEncoder, CountingEncoder, assert_same_state, state_of
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from torch import nn

from sklearn_finetune import FoundationClassifier, FoundationRegressor


def test_linear_probe_leaves_backbone_bit_identical(digits, pretrained_encoder):
    X, y = digits
    encoder = pretrained_encoder
    before = state_of(encoder)
    clf = FoundationClassifier(encoder, lr=1e-2, max_epochs=5, random_state=0).fit(X, y)
    # Weights and batch-norm running statistics, of the object and of the one used.
    assert_same_state(before, encoder)
    assert_same_state(before, clf.encoder_)
    assert clf.encoder_ is encoder  # shared, not copied
    assert clf.score(X, y) > 0.8  # the probe did learn


def test_frozen_backbone_stays_in_eval_mode_throughout_training(digits):
    X, y = digits
    encoder = CountingEncoder(BatchNormEncoder())
    FoundationClassifier(encoder, max_epochs=3, random_state=0).fit(X, y)
    # skorch calls module.train() for every training batch; the backbone never follows.
    assert encoder.modes_seen == {False}


def test_fine_tuning_trains_a_copy_and_leaves_the_given_encoder_alone(digits):
    X, y = digits
    encoder = BatchNormEncoder()
    encoder.train()
    before = state_of(encoder)
    clf = FoundationClassifier(encoder, freeze_backbone=False, max_epochs=3, random_state=0)
    clf.fit(X, y)
    assert clf.encoder_ is not encoder
    changed = [
        name
        for name, value in clf.encoder_.state_dict().items()
        if not torch.equal(value, before[name])
    ]
    assert "layers.0.weight" in changed and "layers.1.running_mean" in changed
    assert_same_state(before, encoder)
    assert encoder.training and all(m.training for m in encoder.modules())
    assert all(p.requires_grad for p in encoder.parameters())


@pytest.mark.parametrize("freeze", [True, False])
def test_fit_and_predict_restore_the_encoders_modes_and_flags(digits, freeze):
    X, y = digits
    encoder = BatchNormEncoder()
    encoder.train()
    encoder.layers[3].eval()  # a mixed state must come back exactly
    encoder.layers[0].bias.requires_grad_(False)
    modes = [m.training for m in encoder.modules()]
    flags = [p.requires_grad for p in encoder.parameters()]
    clf = FoundationClassifier(encoder, freeze_backbone=freeze, max_epochs=2, random_state=0)
    clf.fit(X, y).predict(X)
    assert [m.training for m in encoder.modules()] == modes
    assert [p.requires_grad for p in encoder.parameters()] == flags


def test_optimizer_has_backbone_and_head_groups_at_their_rates(digits):
    X, y = digits
    clf = FoundationClassifier(
        BatchNormEncoder(),
        freeze_backbone=False,
        lr=2e-3,
        backbone_lr_mult=0.05,
        weight_decay=0.01,
        max_epochs=1,
        random_state=0,
    ).fit(X, y)
    module = clf.module_
    groups = clf.net_.optimizer_.param_groups
    assert isinstance(clf.net_.optimizer_, torch.optim.AdamW)
    assert [group["lr"] for group in groups] == pytest.approx([2e-3 * 0.05, 2e-3])
    assert [group["weight_decay"] for group in groups] == [0.01, 0.01]
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in module.encoder.parameters()}
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in module.head.parameters()}


def test_frozen_backbone_is_not_in_the_optimizer(digits):
    X, y = digits
    clf = FoundationClassifier(
        BatchNormEncoder(), solver="adamw", lr=5e-3, max_epochs=1, random_state=0
    )
    clf.fit(X, y)
    groups = clf.net_.optimizer_.param_groups
    assert len(groups) == 1 and groups[0]["lr"] == pytest.approx(5e-3)
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in clf.module_.head.parameters()}


def test_parameters_without_requires_grad_stay_fixed_when_fine_tuning(digits):
    X, y = digits
    encoder = BatchNormEncoder()
    encoder.layers[0].requires_grad_(False)
    clf = FoundationClassifier(encoder, freeze_backbone=False, max_epochs=2, random_state=0)
    clf.fit(X, y)
    assert torch.equal(clf.encoder_.layers[0].weight, encoder.layers[0].weight)
    assert not torch.equal(clf.encoder_.layers[1].weight, encoder.layers[1].weight)
    optimized = {id(p) for g in clf.net_.optimizer_.param_groups for p in g["params"]}
    assert id(clf.encoder_.layers[0].weight) not in optimized


def test_freeze_auto_trains_the_built_in_backbone_and_freezes_a_given_one(digits):
    X, y = digits
    scratch = FoundationClassifier(max_epochs=1, random_state=0).fit(X, y)
    assert not scratch.module_.frozen
    assert len(scratch.net_.optimizer_.param_groups) == 2
    given = FoundationClassifier(BatchNormEncoder(), max_epochs=1, random_state=0).fit(X, y)
    assert given.module_.frozen
    random_features = FoundationClassifier(freeze_backbone=True, max_epochs=1).fit(X, y)
    assert random_features.module_.frozen


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_heads(digits, head):
    X, y = digits
    clf = FoundationClassifier(
        BatchNormEncoder(), head=head, hidden_dims=(12, 8), dropout=0.25, max_epochs=1
    ).fit(X, y)
    layers = [m for m in clf.module_.head.modules() if isinstance(m, nn.Linear)]
    dropouts = [m for m in clf.module_.head.modules() if isinstance(m, nn.Dropout)]
    if head == "linear":
        assert [(m.in_features, m.out_features) for m in layers] == [(16, 10)]
        assert not dropouts
    else:
        assert [(m.in_features, m.out_features) for m in layers] == [(16, 12), (12, 8), (8, 10)]
        assert [m.p for m in dropouts] == [0.25, 0.25]
        # Prediction runs the head in eval mode: dropout off, the same answer twice.
        np.testing.assert_array_equal(clf.predict_proba(X), clf.predict_proba(X))


def test_every_fit_starts_from_a_fresh_head_and_is_reproducible(digits):
    X, y = digits
    clf = FoundationClassifier(BatchNormEncoder(), solver="adamw", max_epochs=2, random_state=3)
    first = clf.fit(X, y).predict_proba(X)
    second = clf.fit(X, y).predict_proba(X)  # a warm start would continue from the first
    np.testing.assert_array_equal(first, second)
    other = clone(clf).set_params(random_state=4).fit(X, y).predict_proba(X)
    assert not np.array_equal(first, other)


def test_fit_leaves_torch_global_random_state_alone(digits):
    X, y = digits
    clf = FoundationClassifier(BatchNormEncoder(), max_epochs=1, random_state=0)
    state = torch.random.get_rng_state()
    clf.fit(X, y)
    assert torch.equal(state, torch.random.get_rng_state())


def test_fine_tuning_batch_norm_survives_a_last_batch_of_one(digits):
    X, y = digits
    # 0.8 * 41 = 33 training samples = one batch of 32 and one of 1.
    clf = FoundationClassifier(
        BatchNormEncoder(),
        freeze_backbone=False,
        batch_size=32,
        val_split=0.2,
        max_epochs=2,
        random_state=0,
    )
    clf.fit(X[:41], y[:41] % 2)
    batch_sizes = [
        b["train_batch_size"] for b in clf.history_[-1, "batches"] if "train_batch_size" in b
    ]
    assert batch_sizes == [32]


def test_regressor_fine_tunes_too(digits):
    X, _ = digits
    target = X[:, :8].sum(axis=1)
    encoder = BatchNormEncoder()
    before = state_of(encoder)
    reg = FoundationRegressor(encoder, freeze_backbone=False, max_epochs=2, random_state=0)
    reg.fit(X, target)
    assert_same_state(before, encoder)
    assert not torch.equal(reg.encoder_.layers[0].weight, encoder.layers[0].weight)


@pytest.mark.parametrize("classes", [(0, 1), tuple(range(10))])
def test_lbfgs_linear_probe_solves_logistic_regression(digits, classes):
    """solver="lbfgs" on a frozen encoder is LogisticRegression on its features.

    Softmax over two outputs splits the weight vector in halves, which
    halves the penalty: C = 2 / (weight_decay * n) for two classes, and
    1 / (weight_decay * n) for more.
    """
    X, y = digits
    keep = np.isin(y, classes)
    X, y = X[keep], y[keep]
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(64, 32), nn.Tanh())
    weight_decay = 1e-2
    probe = FoundationClassifier(
        encoder,
        solver="lbfgs",
        weight_decay=weight_decay,
        val_split=0,
        max_epochs=1000,
        tol=1e-7,
        cache=False,
    ).fit(X, y)
    with torch.no_grad():
        features = encoder(torch.as_tensor(X, dtype=torch.float32)).numpy()
    C = (2 if len(classes) == 2 else 1) / (weight_decay * len(X))
    reference = LogisticRegression(C=C, tol=1e-10, max_iter=10_000).fit(features, y)
    np.testing.assert_allclose(probe.predict_proba(X), reference.predict_proba(features), atol=2e-3)
    assert probe.net_.optimizer_ is None  # LogisticRegression itself solved it
    assert len(probe.history_) == 1  # one L-BFGS run, as LogisticRegression's
    assert 0 < probe.n_iter_ < 1000


def test_lbfgs_cannot_fine_tune(digits):
    X, y = digits
    torch.manual_seed(0)
    encoder = CountingEncoder(nn.Linear(64, 16))
    clf = FoundationClassifier(encoder, freeze_backbone=False, solver="lbfgs")
    with pytest.raises(ValueError, match=r"solver='lbfgs'.*frozen backbone"):
        clf.fit(X, y)
    assert encoder.samples_seen == 0


def test_fine_tuning_inside_torch_no_grad_still_trains():
    """A fit called under ``torch.no_grad()`` (a user's evaluation block) trains its backbone."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 8)).astype(np.float32), np.arange(40) % 2
    torch.manual_seed(0)
    encoder = nn.Linear(8, 4)
    with torch.no_grad():
        clf = FoundationClassifier(
            encoder, freeze_backbone=False, max_epochs=2, n_iter_no_change=None
        ).fit(X, y)
    assert not torch.equal(clf.encoder_.weight, encoder.weight)
