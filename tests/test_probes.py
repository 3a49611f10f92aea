"""Linear, k-NN and online probes: the protocols for judging a representation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import BatchNormEncoder, CountingEncoder, assert_same_state, state_of
from sklearn.datasets import load_diabetes
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from skorch import NeuralNet
from torch import nn

from sklearn_finetune import (
    FeatureCache,
    FoundationEmbedder,
    OnlineProbe,
    knn_probe_score,
    linear_probe_score,
)


def test_linear_probe_is_standard_scaler_then_logistic_regression(pretrained_encoder, digits):
    X, y = digits
    weight_decay = 1e-3
    counting = CountingEncoder(pretrained_encoder)
    scores = linear_probe_score(
        counting, X, y, cv=5, weight_decay=weight_decay, cache=FeatureCache(), max_epochs=50
    )
    assert counting.samples_seen == len(X)  # one encoder pass for all five folds
    n_train = len(X) * 4 // 5
    reference = cross_val_score(
        make_pipeline(
            FoundationEmbedder(pretrained_encoder),
            StandardScaler(),
            LogisticRegression(C=1 / (weight_decay * n_train), max_iter=2000),
        ),
        X,
        y,
        cv=5,
    )
    assert scores.shape == (5,)
    np.testing.assert_allclose(scores, reference, atol=0.02)
    assert scores.mean() > 0.85


def test_a_sequence_of_weight_decays_is_searched_inside_each_fold(pretrained_encoder, digits):
    """An absurd penalty (all weights near zero: chance level) is never the inner search's pick."""
    X, y = digits
    cache = FeatureCache()
    tuned = linear_probe_score(
        pretrained_encoder, X, y, cv=3, weight_decay=[1e-3, 1e3], cache=cache
    )
    fixed = linear_probe_score(pretrained_encoder, X, y, cv=3, weight_decay=1e-3, cache=cache)
    crushed = linear_probe_score(pretrained_encoder, X, y, cv=3, weight_decay=1e3, cache=cache)
    np.testing.assert_array_equal(tuned, fixed)
    assert crushed.mean() < 0.5 < fixed.mean()


def test_linear_probe_of_continuous_targets_is_a_regression():
    X, y = load_diabetes(return_X_y=True)
    X = (X - X.mean(axis=0)) / X.std(axis=0)  # well conditioned: L-BFGS stops at tol
    y = (y - y.mean()) / y.std()  # float values that are not all integers: continuous
    encoder = nn.Sequential(nn.Linear(10, 32), nn.Tanh())
    scores = linear_probe_score(encoder, X, y, cv=3, scoring="r2", weight_decay=1e-2)
    assert scores.shape == (3,) and (scores > 0.3).all()


def test_linear_probe_refuses_other_regimes(pretrained_encoder, digits):
    X, y = digits
    with pytest.raises(TypeError, match=r"does not take \['freeze_backbone', 'head'\]"):
        linear_probe_score(pretrained_encoder, X, y, head="mlp", freeze_backbone=False)


def test_knn_probe_votes_as_dino(pretrained_encoder, digits):
    """Cosine neighbours voting with exp(similarity / 0.07), checked by hand on one split."""
    X, y = digits
    train, test = np.arange(300), np.arange(300, 400)
    scores = knn_probe_score(pretrained_encoder, X, y, n_neighbors=10, cv=[(train, test)])
    features = FoundationEmbedder(pretrained_encoder).fit_transform(X)
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    similarity = unit[test] @ unit[train].T
    predicted = []
    for row in similarity:
        nearest = np.argsort(-row)[:10]
        votes = np.zeros(10)
        np.add.at(votes, y[train][nearest], np.exp(row[nearest] / 0.07))
        predicted.append(votes.argmax())
    assert scores[0] == pytest.approx(np.mean(np.array(predicted) == y[test]))
    assert scores[0] > 0.8


class AutoEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = BatchNormEncoder()
        self.decoder = nn.Linear(16, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def _pretrain(X: np.ndarray, callbacks: list) -> NeuralNet:
    torch.manual_seed(0)
    net = NeuralNet(
        AutoEncoder,
        criterion=nn.MSELoss,
        max_epochs=4,
        lr=0.05,
        train_split=None,
        callbacks=callbacks,
        verbose=0,
    )
    return net.fit(X.astype(np.float32), X.astype(np.float32))


def test_online_probe_in_a_skorch_pretraining_run_changes_nothing(digits):
    X, y = digits
    probe = OnlineProbe(X, y, every=2, encoder="encoder", cv=2)
    probed = _pretrain(X, [("probe", probe)])
    unprobed = _pretrain(X, [])
    # The probed run trained exactly as the unprobed one: same weights, same losses.
    assert_same_state(state_of(unprobed.module_), probed.module_)
    assert probed.history[:, "train_loss"] == unprobed.history[:, "train_loss"]
    recorded = [row.get("online_probe") for row in probed.history]
    assert recorded[0] is None and recorded[2] is None
    assert recorded[1] == probe.scores_[0] and recorded[3] == probe.scores_[1]
    assert all(0.5 < score <= 1 for score in probe.scores_)


def test_online_probe_leaves_gradients_modes_and_random_state_untouched(digits):
    X, y = digits
    encoder = BatchNormEncoder().train()
    loss = encoder(torch.as_tensor(X[:32], dtype=torch.float32)).pow(2).mean()
    loss.backward()
    grads = {name: p.grad.clone() for name, p in encoder.named_parameters()}
    before = state_of(encoder)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    score = OnlineProbe(X, y, cv=2)(encoder)
    assert 0 < score <= 1
    for name, parameter in encoder.named_parameters():
        assert torch.equal(parameter.grad, grads[name]), f"{name}.grad changed"
    assert_same_state(before, encoder)  # weights and batch-norm statistics
    assert encoder.training and all(module.training for module in encoder.modules())
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.random.get_state()[1].tolist() == numpy_state[1].tolist()


def test_online_probe_rejects_a_bad_period(digits):
    X, y = digits
    with pytest.raises(ValueError, match="every must be a positive integer"):
        _pretrain(X, [OnlineProbe(X, y, every=0)])


def test_online_probe_settings_reach_the_probe(digits):
    """A callable locates the encoder, probe_params and scoring reach linear_probe_score."""
    X, y = digits
    probe = OnlineProbe(
        X,
        y,
        every=4,
        encoder=lambda net: net.module_.encoder,
        cv=2,
        scoring="balanced_accuracy",
        name="crushed_probe",
        probe_params={"weight_decay": 1e3},
    )
    net = _pretrain(X, [probe])
    scores = net.history[:, "crushed_probe"]
    assert len(scores) == 1 and scores == probe.scores_
    assert scores[0] < 0.5  # an absurd penalty: the weight decay given was used


class ItemDataset(torch.utils.data.Dataset):
    """A torch Dataset of X's rows, one sample per item."""

    def __init__(self, X: np.ndarray) -> None:
        self.X = X

    def __len__(self) -> int:
        return len(self.X)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.X[index]


@pytest.mark.parametrize("probe_score", [linear_probe_score, knn_probe_score])
def test_probes_split_datasets_by_row_as_they_split_arrays(probe_score, digits):
    """scikit-learn cannot index a ``datasets.Dataset``: the probes select its rows by number."""
    datasets = pytest.importorskip("datasets")
    X, y = digits
    X, y = X[:300], y[:300]
    encoder = BatchNormEncoder()
    # the linear probe's batch-norm head is trained by torch's L-BFGS from a random start
    seeded = {"random_state": 0} if probe_score is linear_probe_score else {}
    on_array = probe_score(encoder, X, y, cv=3, **seeded)
    table = datasets.Dataset.from_dict({"pixels": X})
    np.testing.assert_allclose(probe_score(encoder, table, y, cv=3, **seeded), on_array)
    np.testing.assert_allclose(probe_score(encoder, ItemDataset(X), y, cv=3, **seeded), on_array)
