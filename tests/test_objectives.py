"""What the loss is: sample and class weights, label smoothing, Huber, multilabel targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.model_selection import cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.class_weight import compute_class_weight
from skorch.callbacks import Callback
from torch import nn

from sklearn_finetune import FoundationClassifier, FoundationRegressor


class BatchWeights(Callback):
    """Records the targets and loss weights of every training batch."""

    def on_train_begin(self, net, **kwargs):
        self.targets_, self.weights_ = [], []

    def on_batch_end(self, net, batch, training, **kwargs):
        if training:
            target, weight = batch[1]
            self.targets_.append(target.cpu())
            self.weights_.append(weight.cpu())


def lbfgs_probe(encoder, **params):
    """A deterministic linear probe: full-batch L-BFGS on all of X, run to convergence.

    Two fits of the same objective agree to L-BFGS's tolerance (about 1e-4 in
    probability here), not bit for bit.
    """
    settings = dict(solver="lbfgs", weight_decay=1e-3, val_split=0, max_epochs=10, random_state=0)
    return FoundationClassifier(encoder, **{**settings, **params})


def test_balanced_class_weight_is_sklearns(digits):
    X, y = digits
    keep = (y != 3) | (np.arange(len(y)) % 4 == 0)  # make class 3 rare
    X, y = X[keep], y[keep]
    clf = FoundationClassifier(
        nn.Linear(64, 8),
        class_weight="balanced",
        val_split=0,
        max_epochs=1,
        callbacks=[("weights", BatchWeights())],
        random_state=0,
    ).fit(X, y)
    record = dict(clf.net_.callbacks_)["weights"]
    targets, weights = torch.cat(record.targets_).numpy(), torch.cat(record.weights_).numpy()
    expected = compute_class_weight("balanced", classes=np.unique(y), y=y)
    expected = expected / expected[y].mean()  # scaled to mean 1 over the training rows
    np.testing.assert_allclose(weights, expected[targets], rtol=1e-6)
    assert weights[targets == 3].min() > 3 * weights[targets == 0].max()


def test_sample_weight_zero_is_training_without_the_sample(digits, pretrained_encoder):
    X, y = digits
    weight = np.where(np.arange(len(y)) % 3 == 0, 0.0, 1.0)
    weighted = lbfgs_probe(pretrained_encoder).fit(X, y, sample_weight=weight)
    subset = lbfgs_probe(pretrained_encoder).fit(X[weight > 0], y[weight > 0])
    np.testing.assert_allclose(weighted.predict_proba(X), subset.predict_proba(X), atol=1e-3)


def test_integer_sample_weight_is_repeating_the_sample(digits, pretrained_encoder):
    X, y = digits
    weight = np.where(np.arange(len(y)) % 2 == 0, 2.0, 1.0)
    weighted = lbfgs_probe(pretrained_encoder).fit(X, y, sample_weight=weight)
    repeated = np.repeat(np.arange(len(y)), weight.astype(int))
    duplicated = lbfgs_probe(pretrained_encoder).fit(X[repeated], y[repeated])
    np.testing.assert_allclose(weighted.predict_proba(X), duplicated.predict_proba(X), atol=1e-3)


def test_sample_weight_routes_through_pipelines_and_cross_validation(digits, pretrained_encoder):
    X, y = digits
    no_zeros = np.where(y == 0, 0.0, 1.0)  # the zeros count for nothing
    pipe = make_pipeline(StandardScaler(), FoundationClassifier(pretrained_encoder, random_state=0))
    pipe.fit(X, y, foundationclassifier__sample_weight=no_zeros)
    assert 0 not in pipe.predict(X)
    predicted = cross_val_predict(
        FoundationClassifier(pretrained_encoder, random_state=0),
        X,
        y,
        cv=3,
        params={"sample_weight": no_zeros},
    )
    assert 0 not in predicted and (predicted == y)[y != 0].mean() > 0.8


@pytest.mark.parametrize(
    ("sample_weight", "match"),
    [
        (-np.ones(400), "Negative values in data passed to `sample_weight`"),
        (np.ones(3), "sample_weight.shape == \\(3,\\), expected \\(400,\\)"),
        (np.zeros(400), "Sample weights must contain at least one non-zero number"),
    ],
)
def test_bad_sample_weight_fails_before_training(digits, sample_weight, match):
    X, y = digits
    clf = FoundationClassifier(nn.Linear(64, 4))
    with pytest.raises(ValueError, match=match):
        clf.fit(X, y, sample_weight=sample_weight)
    assert not hasattr(clf, "net_")


def test_label_smoothing_caps_the_confidence(digits, pretrained_encoder):
    X, y = digits
    sharp = lbfgs_probe(pretrained_encoder, max_epochs=30).fit(X, y)
    smooth = lbfgs_probe(pretrained_encoder, max_epochs=30, label_smoothing=0.3).fit(X, y)
    # The smoothed target puts 1 - 0.3 + 0.3 / 10 = 0.73 on the true class: a
    # perfect fit's mean confidence, which a linear probe approaches from below.
    assert sharp.predict_proba(X).max(axis=1).mean() > 0.95
    assert 0.6 < smooth.predict_proba(X).max(axis=1).mean() < 0.74
    assert smooth.score(X, y) > 0.9


def test_huber_loss_resists_outliers():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 5)).astype(np.float32)
    y = X @ np.array([1.0, -2.0, 0.5, 0.0, 3.0]) + 0.1 * rng.normal(size=300)
    outliers = rng.random(300) < 0.1
    y_dirty = np.where(outliers, y + 40.0, y)

    def fit(loss):
        return FoundationRegressor(
            nn.Identity(), loss=loss, solver="lbfgs", val_split=0, max_epochs=20, random_state=0
        ).fit(X, y_dirty)

    def clean_error(reg):
        return np.mean((reg.predict(X) - y)[~outliers] ** 2)

    assert clean_error(fit("huber")) < 0.25 * clean_error(fit("squared_error"))


def digit_labels(y):
    """Three labels per digit: even, greater than 5, a loop in its shape (0, 6, 8, 9)."""
    return np.stack([y % 2 == 0, y > 5, np.isin(y, [0, 6, 8, 9])], axis=1).astype(int)


def test_multilabel_targets_give_one_sigmoid_per_label(digits, pretrained_encoder):
    X, y = digits
    Y = digit_labels(y)
    clf = FoundationClassifier(pretrained_encoder, solver="adamw", lr=1e-2, random_state=0)
    clf.fit(X, Y)
    assert clf.multilabel_ and list(clf.classes_) == [0, 1, 2]
    proba = clf.predict_proba(X)
    predicted = clf.predict(X)
    assert proba.shape == predicted.shape == (400, 3)
    assert not np.allclose(proba.sum(axis=1), 1)  # independent labels, not a softmax
    np.testing.assert_array_equal(predicted, (proba >= 0.5).astype(int))
    assert set(np.unique(predicted)) == {0, 1}
    assert (predicted == Y).mean() > 0.85
    assert clf.score(X, Y) == pytest.approx((predicted == Y).all(axis=1).mean())
    for column in ("valid_roc_auc", "valid_f1_macro", "valid_average_precision"):
        assert 0.5 < clf.history_[-1, column] <= 1


def test_multilabel_validation_data_and_errors(digits):
    X, y = digits
    Y = digit_labels(y)
    clf = FoundationClassifier(
        nn.Linear(64, 8), solver="adamw", max_epochs=2, val_split=(X[:50], Y[:50])
    )
    assert len(clf.fit(X, Y).history_[:, "valid_accuracy"]) == 2
    with pytest.raises(ValueError, match="y_val has 2 labels; y has 3"):
        clf.set_params(val_split=(X[:50], Y[:50, :2])).fit(X, Y)
    with pytest.raises(ValueError, match="class_weight does not apply to multilabel y"):
        FoundationClassifier(nn.Linear(64, 8), class_weight="balanced").fit(X, Y)


def test_calibration_and_bagging_wrap_the_estimator(digits, pretrained_encoder):
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.ensemble import BaggingClassifier

    X, y = digits
    probe = FoundationClassifier(pretrained_encoder, lr=1e-2, random_state=0)
    calibrated = CalibratedClassifierCV(probe, cv=3, method="sigmoid").fit(X[:300], y[:300])
    proba = calibrated.predict_proba(X[300:])
    assert proba.shape == (100, 10) and np.allclose(proba.sum(axis=1), 1)
    assert calibrated.score(X[300:], y[300:]) > 0.8
    # Bagging draws bootstrap samples as integer sample weights, which the loss honours.
    bagged = BaggingClassifier(probe, n_estimators=3, random_state=0).fit(X[:300], y[:300])
    members = np.stack([m.predict_proba(X[300:]) for m in bagged.estimators_])
    assert members.std(axis=0).mean() > 0  # the spread is the uncertainty estimate
    assert bagged.score(X[300:], y[300:]) > 0.8


def test_class_weight_dict_weighs_the_named_labels(digits, pretrained_encoder):
    X, y = digits
    labels = np.where(y == 0, "zero", "other")
    ignore_zero = lbfgs_probe(pretrained_encoder, class_weight={"zero": 0.0}).fit(X, labels)
    assert set(ignore_zero.predict(X)) == {"other"}
    plain = lbfgs_probe(pretrained_encoder, class_weight={"zero": 1.0}).fit(X, labels)
    assert (plain.predict(X) == "zero").sum() > 30


def test_bad_regression_loss_fails_before_training(digits):
    X, y = digits
    reg = FoundationRegressor(nn.Linear(64, 4), loss="absolute_error")
    with pytest.raises(ValueError, match="'loss' parameter"):
        reg.fit(X, y.astype(float))
    with pytest.raises(ValueError, match="scoring='accuracy' is not a validation score"):
        reg.set_params(loss="huber", scoring="accuracy").fit(X, y.astype(float))
    assert not hasattr(reg, "net_")
