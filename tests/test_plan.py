"""The fit plan: what one fit decides once (regime, validation data, weights, encoder)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import state_of
from torch import nn

from sklearn_finetune import FoundationClassifier, FoundationRegressor
from sklearn_finetune._classifier import _WEIGHTED_CLASS_COUNTS
from sklearn_finetune._plan import plan_fit, regime_of


@pytest.mark.parametrize(
    "has_encoder, freeze_backbone, unfreeze_at, regime",
    [
        (True, "auto", None, "frozen"),
        (True, True, None, "frozen"),
        (False, True, None, "frozen"),  # a frozen random MLP: random features
        (False, "auto", None, "fine_tune"),
        (True, False, None, "fine_tune"),
        (True, False, 3, "fine_tune"),  # unfreeze_at is ignored without freezing
        (True, "auto", 0, "gradual_unfreezing"),
        (True, True, 2, "gradual_unfreezing"),
    ],
)
def test_regime(has_encoder, freeze_backbone, unfreeze_at, regime):
    encoder = nn.Linear(2, 2) if has_encoder else None
    assert regime_of(encoder, freeze_backbone, unfreeze_at) == regime


def plan(estimator, X, y, sample_weight=None):
    """``fit``'s first steps: validate, then plan, with torch's random state forked."""
    X = estimator._validate_X(X, reset=True)
    y = estimator._validate_y(y)
    with torch.random.fork_rng():
        return plan_fit(estimator, X, y, sample_weight, torch.device("cpu"))


def test_the_encoder_is_shared_when_frozen_copied_when_trained_built_when_none(digits):
    X, y = digits
    encoder = nn.Linear(64, 8)
    assert plan(FoundationClassifier(encoder), X, y).encoder is encoder
    for settings in ({"freeze_backbone": False}, {"unfreeze_at": 1}):
        copied = plan(FoundationClassifier(encoder, **settings), X, y).encoder
        assert copied is not encoder
        for name, value in state_of(encoder).items():
            assert torch.equal(copied.state_dict()[name], value)
    built = plan(FoundationClassifier(), X, y).encoder
    assert isinstance(built, nn.Sequential) and built[1].in_features == 64


def test_blocks_are_found_only_where_a_trained_backbone_needs_them(digits):
    X, y = digits
    linear = nn.Linear(64, 8)  # no blocks: layer_decay cannot apply to it
    assert plan(FoundationClassifier(linear, layer_decay=0.5), X, y).blocks is None  # frozen
    with pytest.raises(ValueError, match="Could not find ordered blocks"):
        plan(FoundationClassifier(linear, layer_decay=0.5, freeze_backbone=False), X, y)
    stack = nn.Sequential(nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 8))
    top_down = FoundationClassifier(stack, unfreeze_at=1, unfreeze_mode="top_down")
    assert plan(top_down, X, y).blocks == [["0.weight", "0.bias"], ["2.weight", "2.bias"]]
    assert plan(FoundationClassifier(stack, unfreeze_at=1), X, y).blocks is None


def test_a_held_out_fraction_is_rows_of_X(digits):
    X, y = digits
    validation = plan(FoundationClassifier(nn.Linear(64, 8), val_split=0.25), X, y).validation
    assert validation and validation.data is None
    assert len(validation.rows) == 100 and len(validation.train) == 300
    assert sorted(np.concatenate([validation.rows, validation.train])) == list(range(400))
    # stratified by class: every digit keeps its share of the held-out rows
    assert np.bincount(y[validation.rows]).min() >= 8
    assert not plan(FoundationClassifier(nn.Linear(64, 8), val_split=0), X, y).validation


def test_weights_have_mean_one_over_the_training_rows_and_carry_to_explicit_validation(digits):
    X, y = digits
    clf = FoundationClassifier(
        nn.Linear(64, 8), val_split=(X[:40], y[:40]), class_weight="balanced"
    )
    sample_weight = np.where(y == 0, 3.0, 1.0)
    fit_plan = plan(clf, X, y, sample_weight)
    _, weights = fit_plan.targets
    # "balanced", counting the classes by sample weight as scikit-learn >= 1.7 does
    counts = np.bincount(y, weights=sample_weight if _WEIGHTED_CLASS_COUNTS else None)
    per_class = counts.sum() / (10 * counts)
    scale = (per_class[y] * sample_weight).mean()
    assert weights == pytest.approx(per_class[y] * sample_weight / scale)
    assert weights.mean() == pytest.approx(1.0)
    assert fit_plan.validation.train is None and fit_plan.validation.rows is None
    _, _, val_weights = fit_plan.validation.data
    # class weights apply to the validation set, on the training rows' scale
    assert val_weights == pytest.approx(per_class[y[:40]] / scale)
    assert fit_plan.n_train == 400


def test_explicit_validation_features_sit_on_the_training_device(digits):
    """The head's validation batches come from a tensor, as the training batches do."""
    X, y = digits
    clf = FoundationClassifier(
        nn.Linear(64, 8), solver="adamw", val_split=(X[:40], y[:40]), max_epochs=2
    )
    clf.fit(X, y)
    valid = clf.net_.train_split.keywords["valid_ds"]
    assert isinstance(valid.X, torch.Tensor) and valid.X.device == clf.device_
    assert len(clf.history_[:, "valid_loss"]) == 2


def test_regressor_plan_standardises_targets(digits):
    X, _ = digits
    y = np.linspace(10, 20, len(X))
    fit_plan = plan(FoundationRegressor(nn.Linear(64, 8), val_split=0), X, y)
    target, weights = fit_plan.targets
    assert target.mean() == pytest.approx(0, abs=1e-6) and target.std() == pytest.approx(1)
    assert np.all(weights == 1)
