"""The estimators among scikit-learn's tools: pipelines, searches, cloning, pickling, validation."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from conftest import BatchNormEncoder, assert_same_state, state_of
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from sklearn_finetune import FoundationClassifier, FoundationRegressor


def to_unit_range(pixels):
    return pixels / 16.0


def test_pipeline_with_a_pretrained_encoder(digits, pretrained_encoder):
    X, y = digits
    raw_pixels = X * 16.0
    pipe = make_pipeline(
        FunctionTransformer(to_unit_range),
        FoundationClassifier(pretrained_encoder, lr=1e-2, max_epochs=3, random_state=0),
    )
    assert pipe.fit(raw_pixels, y).score(raw_pixels, y) > 0.9
    assert pipe.predict_proba(raw_pixels[:4]).shape == (4, 10)


def test_pipeline_training_from_scratch(digits):
    X, y = digits
    pipe = make_pipeline(StandardScaler(), FoundationClassifier(max_epochs=10, random_state=0))
    assert pipe.fit(X, y).score(X, y) > 0.9


def test_grid_search_over_head_and_lr_shares_the_frozen_encoder(digits, pretrained_encoder):
    X, y = digits
    before = state_of(pretrained_encoder)
    search = GridSearchCV(
        FoundationClassifier(pretrained_encoder, solver="adamw", max_epochs=3, random_state=0),
        {"head": ["linear", "mlp"], "lr": [1e-3, 1e-2]},
        cv=3,
    ).fit(X, y)
    assert len(search.cv_results_["params"]) == 4
    assert search.best_params_["lr"] == 1e-2  # 3 epochs: the larger rate learns more
    assert search.best_estimator_.encoder is pretrained_encoder
    assert search.best_estimator_.encoder_ is pretrained_encoder
    assert_same_state(before, pretrained_encoder)


def test_grid_search_over_the_regime_copies_only_what_it_trains(digits, pretrained_encoder):
    X, y = digits
    before = state_of(pretrained_encoder)
    search = GridSearchCV(
        FoundationClassifier(pretrained_encoder, max_epochs=2, random_state=0),
        {"freeze_backbone": [True, False]},
        cv=2,
        refit=False,
    ).fit(X, y)
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))
    assert_same_state(before, pretrained_encoder)


def test_cross_val_score_is_the_linear_probe_benchmark(digits, pretrained_encoder):
    X, y = digits
    scores = cross_val_score(
        FoundationClassifier(pretrained_encoder, lr=1e-2, max_epochs=10, random_state=0), X, y, cv=5
    )
    assert scores.shape == (5,)
    assert scores.mean() > 0.85  # the first 400 digits are what the encoder was trained on


def test_clone_shares_the_encoder_and_copies_everything_else():
    encoder = BatchNormEncoder()
    clf = FoundationClassifier(encoder, hidden_dims=[8, 4], random_state=np.random.RandomState(0))
    copy = clone(clf)
    assert copy.encoder is encoder
    assert copy.hidden_dims == [8, 4] and copy.hidden_dims is not clf.hidden_dims
    assert copy.get_params()["random_state"] is not clf.random_state
    assert {k: v for k, v in copy.get_params().items() if k not in ("encoder", "random_state")} == {
        k: v for k, v in clf.get_params().items() if k not in ("encoder", "random_state")
    }


@pytest.mark.parametrize("freeze", [True, False])
def test_pickle_round_trip_predicts_the_same(digits, freeze):
    X, y = digits
    clf = FoundationClassifier(BatchNormEncoder(), freeze_backbone=freeze, max_epochs=2)
    clf.fit(X, y)
    loaded = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
    np.testing.assert_array_equal(loaded.predict(X), clf.predict(X))
    assert (loaded.encoder_ is loaded.encoder) == freeze


def test_regressor_pickle_and_score(digits):
    X, _ = digits
    target = X[:, 10] * 3 - X[:, 20]
    reg = FoundationRegressor(max_epochs=3, random_state=0).fit(X, target)
    loaded = pickle.loads(pickle.dumps(reg))
    np.testing.assert_array_equal(loaded.predict(X), reg.predict(X))
    assert loaded.score(X, target) == reg.score(X, target)


class RowRecorder(torch.nn.Module):
    """Reads the row id in column 0 and records the ids it sees in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(1, 4)
        self.eval_rows: list[int] = []

    def forward(self, x):
        if not self.training:
            self.eval_rows += x[:, 0].long().tolist()
        return self.linear(x[:, 1:])


def test_validation_split_is_stratified_and_logged():
    y = np.repeat(np.arange(4), [40, 40, 80, 40])
    X = np.column_stack([np.arange(200), np.random.default_rng(0).normal(size=200)])
    clf = FoundationClassifier(RowRecorder(), freeze_backbone=False, max_epochs=2, val_split=0.25)
    clf.fit(X, y)
    assert len(clf.history_) == 2
    for key in ("train_loss", "valid_loss", "valid_accuracy"):
        assert np.all(np.isfinite(clf.history_[:, key]))
    # The fitted copy recorded each epoch's validation pass: 50 rows, 25% of every class.
    validation_rows = clf.encoder_.eval_rows[-50:]
    assert len(set(validation_rows)) == 50
    np.testing.assert_array_equal(np.bincount(y[validation_rows]), [10, 10, 20, 10])


def test_no_validation_split_and_explicit_validation_data(digits):
    X, y = digits
    none = FoundationClassifier(BatchNormEncoder(), max_epochs=1, val_split=None).fit(X, y)
    assert "valid_loss" not in none.history_[-1]
    zero = FoundationClassifier(BatchNormEncoder(), max_epochs=1, val_split=0).fit(X, y)
    assert "valid_loss" not in zero.history_[-1]
    explicit = FoundationClassifier(BatchNormEncoder(), max_epochs=1, val_split=(X[:50], y[:50]))
    explicit.fit(X[50:], y[50:])
    assert 0 <= explicit.history_[-1, "valid_accuracy"] <= 1
    with pytest.raises(ValueError, match="labels not seen in y"):
        FoundationClassifier(max_epochs=1, val_split=(X[:5], y[:5] + 10)).fit(X, y)


def test_regressor_logs_validation_r2(digits):
    X, _ = digits
    target = X[:, 10] * 3 - X[:, 20]
    reg = FoundationRegressor(max_epochs=2, random_state=0).fit(X, target)
    assert np.isfinite(reg.history_[-1, "valid_r2"])


def test_val_split_leaving_no_training_sample_is_an_error():
    with pytest.raises(ValueError, match="leaves no sample to train on"):
        FoundationRegressor(max_epochs=1).fit(np.ones((1, 2)), np.ones(1))


def test_same_random_state_same_predictions(digits):
    X, y = digits
    encoder = BatchNormEncoder()
    params = dict(freeze_backbone=False, head="mlp", dropout=0.3, max_epochs=2, random_state=7)
    first = FoundationClassifier(encoder, **params).fit(X, y).predict_proba(X)
    second = FoundationClassifier(encoder, **params).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(first, second)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_an_unavailable_device_falls_back_to_cpu_with_a_warning(digits):
    X, y = digits
    clf = FoundationClassifier(BatchNormEncoder(), device="cuda", max_epochs=1)
    with pytest.warns(UserWarning, match="not available on this machine"):
        clf.fit(X, y)
    assert clf.device_ == torch.device("cpu")
    assert clf.device == "cuda"  # the parameter is left as given


def test_verbose_prints_the_epoch_table(digits, capsys):
    X, y = digits
    FoundationClassifier(BatchNormEncoder(), solver="adamw", max_epochs=2).fit(X, y)
    assert capsys.readouterr().out == ""
    FoundationClassifier(BatchNormEncoder(), solver="adamw", max_epochs=2, verbose=1).fit(X, y)
    table = capsys.readouterr().out
    assert "train_loss" in table and "valid_accuracy" in table
    assert len([line for line in table.splitlines() if line.strip().startswith(("1 ", "2 "))]) == 2


def test_fits_in_threads_give_what_they_give_one_after_another(digits):
    """joblib's threading backend (as in a dask worker with several threads): same scores.

    Torch's random generator is process-wide; fits in threads that seed and
    restore it at once drew from each other's streams (different scores on
    every run) until they were made to take turns.
    """
    import joblib

    X, y = digits
    X, y = X[:300] / 16, y[:300]
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU())
    estimator = FoundationClassifier(
        encoder, freeze_backbone=False, head="mlp", random_state=0, max_epochs=3
    )
    one_after_another = cross_val_score(estimator, X, y, cv=4)
    with joblib.parallel_backend("threading"):
        for _ in range(2):
            in_threads = cross_val_score(estimator, X, y, cv=4, n_jobs=2)
            np.testing.assert_array_equal(in_threads, one_after_another)
