"""Faults that start inside the run get errors naming them: the encoder's output, its width."""

from __future__ import annotations

import signal
import warnings

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from skorch.callbacks import Callback, EarlyStopping
from torch import nn

from sklearn_finetune import FoundationClassifier


class NaNEncoder(nn.Module):
    """``Linear(5, 4)`` whose output is NaN."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(5, 4)

    def forward(self, x):
        return self.linear(x) * float("nan")


class ShrinkingEncoder(nn.Module):
    """4 features for its first two calls, then 2."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(5, 4)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        out = self.linear(x)
        return out if self.calls <= 2 else out[:, :2]


@pytest.fixture
def tabular():
    rng = np.random.default_rng(0)
    return rng.normal(size=(120, 5)).astype(np.float32), np.arange(120) % 2


def test_a_frozen_encoder_returning_nan_is_named_before_training(tabular):
    X, y = tabular
    encoder = NaNEncoder()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    with pytest.raises(
        ValueError,
        match=r"encoder \(NaNEncoder\) returned NaN or infinite values "
        r"while encoding X, for 64 of the batch's 64 samples \(of X's rows 0, 1, 2",
    ):
        FoundationClassifier(encoder).fit(X, y)
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, before[key])  # nothing of the user's is modified


def test_a_trained_encoder_returning_nan_is_named_at_the_width_probe(tabular):
    X, y = tabular
    with pytest.raises(
        ValueError,
        match=r"NaNEncoder\) returned NaN or infinite values at the "
        r"width probe",
    ):
        FoundationClassifier(NaNEncoder(), freeze_backbone=False).fit(X, y)


def test_an_encoder_whose_width_changes_names_both_shapes(tabular):
    X, y = tabular
    clf = FoundationClassifier(ShrinkingEncoder(), freeze_backbone=False, max_epochs=1)
    with pytest.raises(ValueError, match=r"shape \(\d+, 2\), but the head was built for 4 "):
        clf.fit(X, y)


class SigintAt(nn.Module):
    """``Linear(5, 4)`` that sends this process SIGINT, as Ctrl-C does, in its ``call``-th step.

    Training calls are counted on the class: fine-tuning trains a copy.
    """

    training_calls = 0

    def __init__(self, call):
        super().__init__()
        self.linear = nn.Linear(5, 4)
        self.call = call

    def forward(self, x):
        if self.training:
            type(self).training_calls += 1
            if type(self).training_calls == self.call:
                signal.raise_signal(signal.SIGINT)
        return self.linear(x)


@pytest.fixture
def ctrl_c_raises():
    """Python's own SIGINT handler: a KeyboardInterrupt in the main thread, as in a script."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_fit_interrupted_by_ctrl_c_keeps_a_usable_estimator_and_says_so(tabular, ctrl_c_raises):
    X, y = tabular
    SigintAt.training_calls = 0
    encoder = SigintAt(call=13)  # 108 training rows in batches of 32: epoch 4's first step
    clf = FoundationClassifier(encoder, freeze_backbone=False, batch_size=32, random_state=0)
    with pytest.warns(UserWarning, match="interrupted .* epoch 4 of max_epochs=200"):
        clf.fit(X, y)
    assert clf.n_iter_ == 4 and "train_loss" not in clf.history_[-1]
    assert clf.net_.stopped_by_ is None and clf.best_epoch_ in (1, 2, 3)
    assert clf.predict_proba(X).shape == (120, 2)


class StopAt(Callback):
    """Ends training at the end of epoch ``epoch``, as skorch's callbacks do: KeyboardInterrupt."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, net, **kwargs):
        if len(net.history) == self.epoch:
            raise KeyboardInterrupt


def test_a_callback_that_ends_training_is_not_reported_as_an_interrupt(tabular):
    X, y = tabular
    clf = FoundationClassifier(
        nn.Linear(5, 4), head="mlp", callbacks=[("enough", StopAt(3))], random_state=0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither "interrupted" nor a ConvergenceWarning
        clf.fit(X, y)
    assert clf.n_iter_ == 3 and clf.net_.stopped_by_ == "enough"
    assert clf.predict_proba(X).shape == (120, 2)


def test_skorchs_early_stopping_ends_a_fit_without_a_warning(tabular):
    X, y = tabular
    clf = FoundationClassifier(
        nn.Linear(5, 4), head="mlp", callbacks=[EarlyStopping(patience=3)], random_state=0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clf.fit(X, y)
    stopping = dict(clf.net_.callbacks_)["EarlyStopping"]
    assert clf.net_.stopped_by_ == "EarlyStopping" and stopping.misses_ == 3
    assert clf.n_iter_ == len(clf.history_) < clf.net_.max_epochs  # where it stopped
    losses = clf.history_[:, "valid_loss"]
    assert min(losses[-3:]) > min(losses[:-3]) * (1 - stopping.threshold)  # 3 epochs, no gain


class NaNAfter(nn.Module):
    """``Linear(5, 4)`` whose output turns NaN from its ``calls``-th call on."""

    def __init__(self, calls):
        super().__init__()
        self.linear = nn.Linear(5, 4)
        self.calls, self.seen = calls, 0

    def forward(self, x):
        self.seen += 1
        out = self.linear(x)
        return out * float("nan") if self.seen >= self.calls else out


def test_a_fine_tuned_encoder_returning_nan_in_a_batch_is_named(tabular):
    X, y = tabular
    encoder = NaNAfter(calls=3)  # the width probe, batch 1, then NaN in batch 2
    clf = FoundationClassifier(encoder, freeze_backbone=False)
    with pytest.raises(
        ValueError,
        match=r"NaNAfter\) returned NaN or infinite values in training "
        r"batch 2 of epoch 1",
    ):
        clf.fit(X, y)
    assert encoder.seen == 0  # the user's encoder never ran: fine-tuning trains a copy


def test_an_interrupted_lbfgs_probe_says_what_it_holds(tabular, monkeypatch):
    X, y = tabular

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C inside scikit-learn's solver

    monkeypatch.setattr(LogisticRegression, "fit", interrupted)
    with pytest.warns(UserWarning, match="interrupted .* L-BFGS stopped"):
        clf = FoundationClassifier(nn.Linear(5, 4)).fit(X, y)
    assert clf.n_iter_ == 0 and clf.predict(X).shape == (120,)


class InfForSomeRows(nn.Module):
    """``Linear(5, 4)``, infinite for samples whose first value is above 2."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(5, 4)

    def forward(self, x):
        out = self.linear(x)
        return torch.where(x[:, :1] > 2, torch.full_like(out, float("inf")), out)


def test_non_finite_features_name_the_rows_of_the_x_passed(tabular):
    X, y = tabular
    X = X.copy()
    X[[7, 50], 0] = 3.0
    keep = X[:, 0] <= 2
    clf = FoundationClassifier(InfForSomeRows()).fit(X[keep], y[keep])  # cached: the others
    rows = ", ".join(map(str, np.flatnonzero(~keep)))  # 7, 50 and the normal draws above 2
    with pytest.raises(ValueError, match=rf"samples \(of X's rows {rows}\)"):
        clf.predict(X)


def test_a_fine_tune_whose_weights_diverge_keeps_the_best_epoch(tabular):
    X, y = tabular

    class BlowUp(Callback):
        def on_epoch_begin(self, net, **kwargs):
            if len(net.history) == 3:
                for group in net.optimizer_.param_groups:
                    group["lr"] = 1e30

    clf = FoundationClassifier(
        nn.Linear(5, 4), freeze_backbone=False, solver="sgd", callbacks=[BlowUp()], random_state=0
    )
    with pytest.warns(RuntimeWarning, match="Training diverged"):
        clf.fit(X, y)
    assert clf.best_epoch_ in (1, 2) and np.isfinite(clf.predict_proba(X)).all()


def test_a_fit_that_raises_leaves_the_fitted_estimator_as_it_was(tabular):
    X, y = tabular
    clf = FoundationClassifier(nn.Linear(5, 4)).fit(X, y)
    classes, proba = clf.classes_.copy(), clf.predict_proba(X)
    with pytest.raises(ValueError, match="returned NaN"):
        clf.set_params(encoder=NaNEncoder()).fit(X, np.where(y == 0, "low", "high"))
    np.testing.assert_array_equal(clf.classes_, classes)
    np.testing.assert_array_equal(clf.predict_proba(X), proba)


def test_a_frozen_encoder_whose_width_changes_is_named(tabular):
    X, y = tabular
    clf = FoundationClassifier(ShrinkingEncoder(), cache=False, inference_batch_size=32)
    with pytest.raises(ValueError, match=r"ShrinkingEncoder\) returned features of shape \(2,\)"):
        clf.fit(X, y)
