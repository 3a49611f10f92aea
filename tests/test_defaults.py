"""Defaults: the solver chosen by the regime, convergence the scikit-learn way, undefined scores."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.exceptions import ConvergenceWarning, UndefinedMetricWarning
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.preprocessing import StandardScaler
from skorch.callbacks import Callback
from torch import nn

from sklearn_finetune import FoundationClassifier, FoundationRegressor
from sklearn_finetune._probe_solver import LogisticRegressionSolver, RidgeSolver


def features_of(encoder, X):
    with torch.no_grad():
        return encoder(torch.as_tensor(X, dtype=torch.float32)).numpy()


@pytest.mark.parametrize(
    "params, solver",
    [
        ({}, "lbfgs"),  # the linear probe
        ({"batch_norm": True}, "lbfgs"),
        ({"head": "mlp"}, "adamw"),
        ({"freeze_backbone": False}, "adamw"),
        ({"unfreeze_at": 1}, "adamw"),
        ({"lr_schedule": "cosine"}, "adamw"),
        ({"pooling": "attention"}, "adamw"),
        ({"head": nn.Linear(4, 10)}, "adamw"),
        ({"solver": "sgd"}, "sgd"),
        ({"solver": "adamw"}, "adamw"),
    ],
)
def test_solver_follows_the_regime(digits, params, solver):
    X, y = digits
    encoder = nn.Sequential(nn.Linear(64, 8), nn.Unflatten(1, (2, 4)))  # tokens, for attention
    clf = FoundationClassifier(encoder, max_epochs=2, **params).fit(X, y)
    assert clf.solver_ == solver
    optimizer = clf.net_.optimizer_
    if params == {}:  # a plain linear head: LogisticRegression solves it, no torch optimizer
        assert optimizer is None and clf.n_iter_ > 0
    else:
        assert isinstance(optimizer, torch.optim.LBFGS) == (solver == "lbfgs")
    has_validation = "valid_loss" in clf.history_[-1]
    assert has_validation == (solver != "lbfgs")  # val_split="auto"


def test_default_probe_is_logistic_regression_on_the_features():
    """At the defaults the probe solves LogisticRegression()'s problem, on all the rows."""
    X, y = load_breast_cancer(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(30, 64), nn.Tanh())
    probe = FoundationClassifier(encoder, random_state=0).fit(X, y)
    features = features_of(encoder, X)
    reference = LogisticRegression().fit(features, y)
    # LogisticRegression itself solves the probe on CPU: the same model, its
    # binary w carried by the head's two rows as (-w/2, w/2).
    expected = reference.predict_proba(features)
    np.testing.assert_allclose(probe.predict_proba(X), expected, atol=1e-5)
    np.testing.assert_array_equal(probe.predict(X), reference.predict(features))
    weight = probe.module_.head.weight.detach().numpy()
    np.testing.assert_allclose(weight[1] - weight[0], reference.coef_[0], rtol=1e-5, atol=1e-6)
    assert probe.solver_ == "lbfgs" and len(probe.history_) == 1
    assert probe.n_iter_ == reference.n_iter_[0] < 100  # max_epochs="auto": max_iter=100


def test_multiclass_probe_with_weights_is_logistic_regression(digits):
    """Class and sample weights reach LogisticRegression, on three or more classes."""
    X, y = digits
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(64, 16), nn.Tanh())
    weights = np.random.default_rng(0).uniform(0.5, 2.0, len(y))
    probe = FoundationClassifier(encoder, class_weight="balanced", tol=1e-6)
    probe.fit(X / 16, y, sample_weight=weights)
    features = features_of(encoder, X / 16)
    reference = LogisticRegression(class_weight="balanced", tol=1e-6, max_iter=100)
    reference.fit(features, y, sample_weight=weights)
    # The same objective; weights scaled to mean 1 take scipy's L-BFGS along a
    # slightly different path (as they would LogisticRegression's own).
    np.testing.assert_allclose(
        probe.predict_proba(X / 16), reference.predict_proba(features), atol=2e-3
    )


def test_probe_missing_a_class_in_training_falls_back_to_torch_lbfgs():
    """A class held out entirely: LogisticRegression cannot hold it; torch's L-BFGS can."""
    features = torch.randn(40, 3)
    target = torch.arange(40) % 2  # classes 0 and 1 of a three-class head
    head = nn.Linear(3, 3)
    before = head.weight.detach().clone()
    solve = LogisticRegressionSolver(penalty=0.1, tol=1e-4, max_iter=100)
    assert solve(head, features, target, torch.ones(40)) is None
    assert torch.equal(head.weight, before)
    # In a fit: a class of one sample that the random validation split takes.
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 4)), np.r_[np.zeros(30), np.ones(29), 2]
    for seed in range(20):
        clf = FoundationClassifier(nn.Linear(4, 3), val_split=0.3, random_state=seed).fit(X, y)
        if clf.net_.optimizer_ is not None:  # the split left class 2 out of training
            break
    assert isinstance(clf.net_.optimizer_, torch.optim.LBFGS)
    assert clf.n_iter_ > 0 and np.isfinite(clf.predict_proba(X)).all()


@pytest.mark.parametrize("scale", [0.25, 1.0, 3.0])
def test_uniform_weights_are_folded_into_the_penalty(scale):
    """Equal sample weights reach scikit-learn as C or alpha, not as sample_weight.

    (scikit-learn's solvers are faster without sample_weight.) The solution
    must be the one the weights would give.
    """
    rng = np.random.default_rng(0)
    features = rng.normal(size=(80, 5))  # float64: both solve to tol=1e-10
    labels = (features[:, 0] + 0.5 * rng.normal(size=80) > 0).astype(np.int64)
    weight = torch.full((80,), scale)
    penalty = 0.05
    head = nn.Linear(5, 2)
    solve = LogisticRegressionSolver(penalty=penalty, tol=1e-10, max_iter=1000)
    solve(head, torch.as_tensor(features), torch.as_tensor(labels), weight)
    reference = LogisticRegression(C=2 / (penalty * 80), tol=1e-10, max_iter=1000)
    reference.fit(features, labels, sample_weight=np.full(80, scale))
    w = head.weight.detach().numpy()
    np.testing.assert_allclose(w[1] - w[0], reference.coef_[0], rtol=1e-4)

    target = features @ np.arange(1.0, 6.0) + rng.normal(size=80)
    head = nn.Linear(5, 1)
    RidgeSolver(penalty=penalty)(
        head, torch.as_tensor(features), torch.as_tensor(target[:, None]), weight
    )
    reference = Ridge(alpha=penalty * 80 / 2)
    reference.fit(features, target, sample_weight=np.full(80, scale))
    np.testing.assert_allclose(head.weight.detach().numpy()[0], reference.coef_, rtol=1e-5)


def test_default_regression_probe_is_ridge_on_the_features():
    X, y = load_diabetes(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(10, 32), nn.Tanh())
    probe = FoundationRegressor(encoder, random_state=0).fit(X, y)
    reference = Ridge().fit(features_of(encoder, X), y)
    # Ridge itself solves the probe on CPU; the head then predicts in float32
    np.testing.assert_allclose(
        probe.predict(X), reference.predict(features_of(encoder, X)), rtol=1e-5, atol=1e-3
    )
    assert probe.solver_ == "lbfgs" and probe.n_iter_ == 1 and probe.net_.optimizer_ is None
    huber = FoundationRegressor(encoder, loss="huber").fit(X, y)  # not Ridge's problem: torch
    assert isinstance(huber.net_.optimizer_, torch.optim.LBFGS)


def test_multilabel_probe_penalty_is_one_logistic_regression_per_label(digits):
    X, y = digits
    Y = np.stack([y % 2, y >= 5], axis=1).astype(int)
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(64, 16), nn.Tanh())
    probe = FoundationClassifier(encoder, tol=1e-6).fit(X / 16, Y)
    features = features_of(encoder, X / 16)
    for label in range(2):
        reference = LogisticRegression(tol=1e-8).fit(features, Y[:, label])
        np.testing.assert_allclose(
            probe.predict_proba(X / 16)[:, label],
            reference.predict_proba(features)[:, 1],
            atol=2e-3,
        )


def test_lbfgs_cap_warns_as_logistic_regression_does(digits):
    X, y = digits
    clf = FoundationClassifier(nn.Linear(64, 8), max_epochs=3)
    with pytest.warns(ConvergenceWarning, match="lbfgs failed to converge within max_epochs=3"):
        clf.fit(X, y)
    assert clf.n_iter_ == 3


def test_n_iter_and_convergence_warning_for_mini_batches(digits):
    X, y = digits
    clf = FoundationClassifier(nn.Linear(64, 8), freeze_backbone=False, max_epochs=2)
    with pytest.warns(ConvergenceWarning, match="max_epochs=2 was reached"):
        clf.fit(X, y)
    assert clf.n_iter_ == 2 == len(clf.history_)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        fixed = clf.set_params(n_iter_no_change=None).fit(X, y)  # a fixed budget: no warning
    assert fixed.n_iter_ == 2


def test_training_stops_after_n_iter_no_change_epochs_without_a_tol_improvement(digits):
    X, y = digits
    clf = FoundationClassifier(
        nn.Linear(64, 8), solver="adamw", lr=0.05, n_iter_no_change=4, tol=0.5, max_epochs=50
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # stopped early: converged
        clf.fit(X, y)
    # tol=0.5 in loss units: after the first epochs nothing improves by that much
    assert clf.n_iter_ < 50 and clf.n_iter_ == len(clf.history_)


def test_without_validation_the_training_loss_is_monitored(digits):
    X, y = digits
    clf = FoundationClassifier(
        nn.Linear(64, 8), solver="adamw", val_split=0, n_iter_no_change=2, tol=10.0, max_epochs=20
    ).fit(X, y)
    assert clf.n_iter_ == 3  # the first epoch sets the best; two more fail to beat it by 10
    assert clf.best_epoch_ is None


def test_explicit_adamw_trains_as_before(digits):
    """solver="adamw" with the old defaults' settings: 30 epochs, 20% held out, mini-batches."""
    X, y = digits
    clf = FoundationClassifier(
        nn.Linear(64, 8),
        solver="adamw",
        lr=1e-3,
        batch_size=32,
        weight_decay=0.0,
        max_epochs=30,
        n_iter_no_change=None,
        val_split=0.2,
        random_state=0,
    ).fit(X / 16, y)
    assert isinstance(clf.net_.optimizer_, torch.optim.AdamW) and clf.n_iter_ == 30
    assert clf.history_[0, "train_batch_count"] == 10  # 320 rows in batches of 32
    assert clf.net_.optimizer_.param_groups[0]["weight_decay"] == 0.0
    assert len(clf.history_[:, "valid_loss"]) == 30
    assert clf.history_[-1, "train_loss"] < clf.history_[0, "train_loss"]


def test_patience_is_deprecated_for_n_iter_no_change(digits):
    X, y = digits
    clf = FoundationClassifier(nn.Linear(64, 8), solver="adamw", patience=2, tol=10.0)
    with pytest.warns(FutureWarning, match="use n_iter_no_change"):
        clf.fit(X, y)
    assert clf.n_iter_ == 3


@pytest.mark.parametrize("n_classes", [2, 3])
def test_an_undefined_validation_score_never_ends_training(digits, n_classes):
    """ROC AUC on a validation set missing a class is NaN: warned once, never counted."""
    X, y = digits
    keep = y < n_classes
    X, y = X[keep], y[keep]
    X_val, y_val = X[y == 0][:20], y[y == 0][:20]  # one class only
    clf = FoundationClassifier(
        nn.Linear(64, 8),
        solver="adamw",
        scoring="roc_auc",
        n_iter_no_change=3,
        val_split=(X_val, y_val),
        max_epochs=15,
    )
    with pytest.warns(UndefinedMetricWarning, match="valid_roc_auc is nan at epoch 1") as record:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(X, y)
    assert sum(issubclass(w.category, UndefinedMetricWarning) for w in record) == 1
    assert np.isnan(clf.history_[:, "valid_roc_auc"]).all()
    assert clf.n_iter_ == 15  # NaN epochs are not misses: training ran to max_epochs
    assert clf.best_epoch_ is None


def test_patience_and_n_iter_no_change_together_are_refused(digits):
    X, y = digits
    clf = FoundationClassifier(nn.Linear(64, 8), patience=3, n_iter_no_change=5)
    with pytest.raises(ValueError, match="patience=3 and n_iter_no_change=5 were both given"):
        clf.fit(X, y)


def test_a_score_defined_in_some_epochs_only_picks_the_best_defined_epoch(digits):
    """A NaN epoch between defined ones neither resets nor counts; the best is a defined one."""
    from sklearn_finetune._callbacks import Convergence

    class History(list):
        def __getitem__(self, key):
            row, column = key
            return list.__getitem__(self, row)[column]

    class Net:
        history = History()
        module_ = nn.Linear(1, 1)

    net = Net()
    watch = Convergence(
        "valid_roc_auc", lower_is_better=False, tol=0.0, n_iter_no_change=2, restore_best=False
    )
    watch.on_train_begin(net)
    with pytest.warns(UndefinedMetricWarning):
        for epoch, score in enumerate([0.6, np.nan, 0.7, np.nan, 0.65], start=1):
            net.history.append({"epoch": epoch, "valid_roc_auc": score})
            watch.on_epoch_end(net)
    assert watch.best_epoch_ == 3 and watch.misses_ == 1 and not watch.stopped_early_


def test_standardising_probe_predicts_with_the_training_statistics():
    """batch_norm=True + L-BFGS is StandardScaler + LogisticRegression, at predict too."""
    X, y = load_breast_cancer(return_X_y=True)
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(30, 32), nn.ReLU())  # raw X: features of large spread
    probe = FoundationClassifier(encoder, batch_norm=True, tol=1e-6, random_state=0).fit(X, y)
    features = features_of(encoder, X)
    scaled = StandardScaler().fit(features)
    reference = LogisticRegression(C=1.0, tol=1e-8, max_iter=1000).fit(
        scaled.transform(features), y
    )
    norm = probe.module_.head[0]
    np.testing.assert_allclose(norm.running_mean.numpy(), scaled.mean_, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        probe.predict_proba(X), reference.predict_proba(scaled.transform(features)), atol=5e-3
    )


def test_multilabel_probe_solves_each_label_to_tol():
    """The loss is averaged over labels: L-BFGS's gradient tolerance is divided by their number."""
    X, y = load_breast_cancer(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    Y = np.stack([y, X[:, 0] > 0, X[:, 1] > 0], axis=1).astype(int)
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(30, 16), nn.Tanh())
    probe = FoundationClassifier(encoder, random_state=0).fit(X, Y)  # the default tol
    features = features_of(encoder, X)
    for label in range(3):
        reference = LogisticRegression(tol=1e-10, max_iter=10_000).fit(features, Y[:, label])
        np.testing.assert_allclose(
            probe.predict_proba(X)[:, label], reference.predict_proba(features)[:, 1], atol=1e-2
        )


def test_no_convergence_warning_when_the_score_was_never_defined(digits):
    X, y = digits
    X_val, y_val = X[y == 1][:10], y[y == 1][:10]
    clf = FoundationClassifier(
        nn.Linear(64, 8), head="mlp", scoring="roc_auc", val_split=(X_val, y_val), max_epochs=4
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clf.fit(X, y)
    categories = [w.category for w in caught]
    assert UndefinedMetricWarning in categories and ConvergenceWarning not in categories


def test_a_score_without_validation_data_warns_that_it_has_no_effect(digits):
    X, y = digits
    with pytest.warns(UserWarning, match="scoring='roc_auc' has no effect"):
        FoundationClassifier(nn.Linear(64, 8), scoring="roc_auc").fit(X, y)  # the L-BFGS probe
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        FoundationClassifier(nn.Linear(64, 8), scoring="roc_auc", val_split=0.2).fit(X, y)


class BlowUpAt(Callback):
    """Sets a learning rate that makes the loss non-finite from epoch ``epoch`` on."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_begin(self, net, **kwargs):
        if len(net.history) == self.epoch:
            for group in net.optimizer_.param_groups:
                group["lr"] = 1e30


def test_a_diverged_loss_stops_training_and_keeps_the_best_finite_epoch(digits):
    X, y = digits
    clf = FoundationClassifier(
        nn.Linear(64, 8), head="mlp", solver="sgd", callbacks=[BlowUpAt(3)], random_state=0
    )
    with pytest.warns(RuntimeWarning, match=r"Training diverged: \w+_loss is (nan|inf) at epoch"):
        clf.fit(X, y)
    assert len(clf.history_) <= 4 and clf.best_epoch_ in (1, 2)
    assert np.isfinite(clf.predict_proba(X)).all()


def test_a_loss_that_is_never_finite_is_refused(digits):
    X, y = digits
    clf = FoundationClassifier(nn.Linear(64, 8), head="mlp", solver="sgd", lr=1e30, val_split=0)
    with pytest.raises(ValueError, match="Training diverged: train_loss is nan at epoch 1"):
        clf.fit(X, y)
    assert not hasattr(clf, "net_")


@pytest.mark.parametrize(
    "params",
    [
        {"lr": 0.1},  # the L-BFGS probe takes its steps by line search
        {"momentum": 0.5},  # not SGD
        {"hidden_dims": (16,)},  # a linear head
        {"dropout": 0.2},
        {"backbone_lr_mult": 1.0},  # a frozen backbone
        {"layer_decay": 0.5},
    ],
)
def test_a_parameter_this_fit_ignores_is_warned_about(digits, params):
    """A grid over a parameter the fit ignores would be a grid over nothing: say so."""
    X, y = digits
    [(name, value)] = params.items()
    with pytest.warns(
        UserWarning, match=rf"^{re.escape(f'{name}={value!r}')} has no effect on this fit: "
    ):
        FoundationClassifier(nn.Linear(64, 8), **params).fit(X, y)


def test_parameters_that_a_fit_uses_are_not_warned_about(digits):
    X, y = digits
    used = [
        {},  # the defaults: nothing was chosen
        {"solver": "adamw", "lr": 0.01},
        {"solver": "sgd", "momentum": 0.5},
        {"head": "mlp", "hidden_dims": (16,), "dropout": 0.1},
        {"freeze_backbone": False, "backbone_lr_mult": 1.0},
    ]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*has no effect")
        for params in used:
            FoundationClassifier(nn.Linear(64, 8), max_epochs=2, **params).fit(X, y)
