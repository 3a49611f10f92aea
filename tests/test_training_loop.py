"""The training loop's settings: solvers, schedules, clipping, precision, early stopping, heads."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from conftest import state_of
from skorch.callbacks import Callback
from torch import nn

from sklearn_finetune import FoundationClassifier, FoundationRegressor
from sklearn_finetune._optimization import WarmupCosine


class HeadSnapshots(Callback):
    """Keeps a copy of the trained module's state after every epoch."""

    def on_train_begin(self, net, **kwargs):
        self.snapshots_ = []

    def on_epoch_end(self, net, **kwargs):
        self.snapshots_.append(state_of(net.module_))


class GradientNorms(Callback):
    """Records the global gradient norm that reaches the optimizer at every step."""

    def on_train_begin(self, net, **kwargs):
        self.norms_ = []

    def on_grad_computed(self, net, named_parameters, **kwargs):
        grads = [p.grad.norm() for _, p in named_parameters if p.grad is not None]
        self.norms_.append(float(torch.stack(grads).norm()))


@pytest.mark.parametrize(
    ("solver", "optimizer", "settings"),
    [
        ("adam", torch.optim.Adam, {"weight_decay": 0.01}),
        ("sgd", torch.optim.SGD, {"momentum": 0.8}),
        (torch.optim.RMSprop, torch.optim.RMSprop, {}),
        (functools.partial(torch.optim.RMSprop, alpha=0.9), torch.optim.RMSprop, {"alpha": 0.9}),
    ],
)
def test_solver_picks_the_optimizer_and_its_settings(digits, solver, optimizer, settings):
    X, y = digits
    clf = FoundationClassifier(
        nn.Linear(64, 8),
        freeze_backbone=False,
        solver=solver,
        lr=0.02,
        backbone_lr_mult=0.5,
        max_epochs=1,
        random_state=0,
        **{k: v for k, v in settings.items() if k != "alpha"},
    ).fit(X, y)
    assert type(clf.net_.optimizer_) is optimizer
    backbone, head = clf.net_.optimizer_.param_groups
    assert (backbone["lr"], head["lr"]) == pytest.approx((0.01, 0.02))
    for name, value in settings.items():
        assert head[name] == value


def test_warmup_cosine_rates_follow_the_schedule_per_batch(digits):
    X, y = digits
    clf = FoundationClassifier(
        nn.Linear(64, 8),
        lr=0.1,
        lr_schedule="warmup_cosine",
        warmup_epochs=2,
        max_epochs=6,
        batch_size=40,
        val_split=0,
        random_state=0,
    ).fit(X, y)
    rates = np.concatenate(
        [[batch["event_lr"] for batch in epoch["batches"]] for epoch in clf.history_]
    )
    factor = WarmupCosine(total_steps=60, warmup_steps=20)  # 400 / 40 = 10 steps per epoch
    np.testing.assert_allclose(rates, [0.1 * factor(step) for step in range(60)], rtol=1e-6)
    assert rates.argmax() == 19 and rates[-1] < 0.001


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [("step", [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]), ("cosine", None)],
)
def test_epoch_and_batch_schedules(digits, schedule, expected):
    X, y = digits
    clf = FoundationClassifier(
        nn.Linear(64, 8), lr=0.1, lr_schedule=schedule, max_epochs=6, random_state=0
    ).fit(X, y)
    if expected is not None:
        np.testing.assert_allclose(clf.history_[:, "event_lr"], expected)
    else:
        first_rates = [epoch["batches"][0]["event_lr"] for epoch in clf.history_]
        assert first_rates[0] == pytest.approx(0.1) and np.all(np.diff(first_rates) < 0)


def test_plateau_schedule_divides_the_rate_when_the_loss_stalls(digits):
    X, y = digits
    clf = FoundationClassifier(
        nn.Linear(64, 8),
        solver="sgd",
        momentum=0,
        lr=1e-6,
        lr_schedule="plateau",
        max_epochs=8,
        random_state=0,
    ).fit(X, y)
    # At this rate the loss cannot improve by torch's relative threshold (1e-4):
    # after the first epoch and three without improvement (plateau patience 2), the rate
    # is divided by 10, and again three epochs later.
    np.testing.assert_allclose(
        clf.history_[:, "event_lr"], [1e-6] * 4 + [1e-7] * 3 + [1e-8], rtol=1e-6
    )


def test_gradients_are_clipped_before_the_step(digits):
    X, y = digits

    def norms(**params):
        clf = FoundationClassifier(
            nn.Linear(64, 8),
            freeze_backbone=False,
            lr=0.5,
            max_epochs=2,
            callbacks=[("norms", GradientNorms())],
            random_state=0,
            **params,
        ).fit(X, y)
        return dict(clf.net_.callbacks_)["norms"].norms_

    assert max(norms()) > 0.5
    assert max(norms(max_grad_norm=0.5)) <= 0.5 + 1e-5


class AutocastProbe(nn.Module):
    """A linear encoder that records the dtype its matmul ran in."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(64, 8)
        self.dtypes: list[torch.dtype] = []

    def forward(self, x):
        out = self.linear(x)
        self.dtypes.append(out.dtype)
        return out


@pytest.mark.parametrize("precision", ["bf16", "16"])
@pytest.mark.parametrize("freeze", [True, False])
def test_mixed_precision_runs_forward_passes_under_autocast(digits, precision, freeze):
    X, y = digits
    encoder = AutocastProbe()
    clf = FoundationClassifier(
        encoder,
        freeze_backbone=freeze,
        precision=precision,
        max_epochs=2,
        cache=False,
        device="cpu",
        random_state=0,
    ).fit(X, y)
    dtype = {"bf16": torch.bfloat16, "16": torch.float16}[precision]
    # Fine-tuning first runs the encoder once in float32, to size the head.
    seen = set(encoder.dtypes if freeze else clf.encoder_.dtypes[1:])
    assert seen == {dtype}
    proba = clf.predict_proba(X)
    assert proba.dtype == np.float32 and np.allclose(proba.sum(axis=1), 1, atol=1e-3)
    assert (clf.net_.grad_scaler_ is not None) == (precision == "16")
    assert np.isfinite(clf.history_[:, "train_loss"]).all()


def overfitting_classifier(**params):
    """An MLP head with a high rate on 100 samples: validation loss soon rises."""
    torch.manual_seed(0)
    encoder = nn.Linear(64, 32)
    settings = dict(
        head="mlp", hidden_dims=(256,), lr=0.05, max_epochs=25, val_split=0.5, random_state=0
    )
    return FoundationClassifier(encoder, **{**settings, **params})


def test_restored_weights_are_the_best_epochs_not_the_last(digits):
    X, y = digits[0][:100], digits[1][:100]
    clf = overfitting_classifier(callbacks=[("snapshots", HeadSnapshots())]).fit(X, y)
    losses = clf.history_[:, "valid_loss"]
    snapshots = dict(clf.net_.callbacks_)["snapshots"].snapshots_
    best = clf.best_epoch_
    assert best == 1 + int(np.argmin(losses)) and best < len(losses)  # the last epoch is worse
    final = state_of(clf.net_.module_)
    assert all(torch.equal(final[k], v) for k, v in snapshots[best - 1].items())
    assert not all(torch.equal(final[k], v) for k, v in snapshots[-1].items())

    last = overfitting_classifier(restore_best_weights=False).fit(X, y)
    assert last.best_epoch_ == best
    assert not np.allclose(last.predict_proba(X), clf.predict_proba(X), atol=1e-3)


def test_early_stopping_stops_after_n_iter_no_change_epochs_without_improvement(digits):
    X, y = digits[0][:100], digits[1][:100]
    clf = overfitting_classifier(n_iter_no_change=3, max_epochs=100).fit(X, y)
    assert len(clf.history_) == clf.best_epoch_ + 3 < 100


def test_scoring_picks_the_best_epoch_by_that_score(digits):
    X, y = digits[0][:100], digits[1][:100]
    clf = overfitting_classifier(scoring="ece").fit(X, y)
    ece = clf.history_[:, "valid_ece"]
    assert ece[clf.best_epoch_ - 1] == pytest.approx(min(ece), rel=1e-3)
    auc = overfitting_classifier(scoring="roc_auc").fit(X, y)
    assert auc.history_[auc.best_epoch_ - 1, "valid_roc_auc"] == pytest.approx(
        max(auc.history_[:, "valid_roc_auc"]), rel=1e-3
    )


def test_no_validation_data_keeps_the_last_weights(digits):
    X, y = digits
    clf = FoundationClassifier(nn.Linear(64, 8), val_split=0, max_epochs=2).fit(X, y)
    assert clf.best_epoch_ is None
    assert "valid_loss" not in clf.history_[-1]


def test_regressor_records_scores_on_the_original_scale():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4)).astype(np.float32)
    y = 1000 * X[:, 0] + 5000
    reg = FoundationRegressor(nn.Identity(), solver="adamw", lr=0.05, max_epochs=20, random_state=0)
    reg.fit(X, y)
    assert reg.history_[-1, "valid_r2"] > 0.9
    assert 0 < reg.history_[-1, "valid_mae"] < reg.history_[-1, "valid_rmse"] * 1.3
    assert reg.history_[-1, "valid_rmse"] > 1  # thousands scale, not standardised


def test_head_as_module_or_factory(digits):
    X, y = digits
    given = nn.Sequential(nn.Linear(8, 10))
    before = state_of(given)
    clf = FoundationClassifier(nn.Linear(64, 8), head=given, max_epochs=2, random_state=0).fit(X, y)
    assert clf.module_.head is not given
    assert all(torch.equal(v, state_of(given)[k]) for k, v in before.items())
    calls = []

    def factory(width, n_outputs):
        calls.append((width, n_outputs))
        return nn.Sequential(nn.Linear(width, 4), nn.Tanh(), nn.Linear(4, n_outputs))

    clf = FoundationClassifier(nn.Linear(64, 8), head=factory, max_epochs=2).fit(X, y)
    assert calls == [(8, 10)] and isinstance(clf.module_.head[1], nn.Tanh)


def test_batch_norm_heads(digits):
    X, y = digits
    linear = FoundationClassifier(nn.Linear(64, 8), batch_norm=True, max_epochs=1).fit(X, y)
    norm, layer = linear.module_.head
    assert isinstance(norm, nn.BatchNorm1d) and not norm.affine and isinstance(layer, nn.Linear)
    mlp = FoundationClassifier(
        nn.Linear(64, 8), head="mlp", hidden_dims=(16,), batch_norm=True, max_epochs=1
    ).fit(X, y)
    assert [type(m).__name__ for m in mlp.module_.head] == [
        "Linear",
        "BatchNorm1d",
        "ReLU",
        "Linear",
    ]


def test_verbose_2_shows_progress_bars(digits, capsys):
    X, y = digits
    FoundationClassifier(nn.Linear(64, 8), max_epochs=1, verbose=2, cache=False).fit(X, y)
    captured = capsys.readouterr()
    assert "train_loss" in captured.out
    assert "it/s" in captured.err or "batch" in captured.err


@pytest.mark.parametrize(
    "params",
    [
        dict(unfreeze_at=1, unfreeze_mode="top_down", layer_decay=0.8, lr_schedule="warmup_cosine"),
        dict(lr_schedule="plateau", class_weight="balanced", n_iter_no_change=2, precision="bf16"),
    ],
)
def test_fitted_estimators_with_callbacks_pickle(digits, params):
    import pickle

    X, y = digits
    encoder = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16))
    clf = FoundationClassifier(encoder, max_epochs=3, random_state=0, **params).fit(X, y)
    again = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(again.predict_proba(X), clf.predict_proba(X))
    assert again.best_epoch_ == clf.best_epoch_
