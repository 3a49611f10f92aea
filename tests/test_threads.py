"""Intra-op threads: encoders whose batches are a few FLOPs run on one thread, others on torch's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sklearn_finetune import FoundationClassifier
from sklearn_finetune._device import SMALL_BATCH_FLOPS


class ThreadRecorder(nn.Module):
    """``Linear(in_features, width) -> ReLU``, recording torch's thread count at each forward.

    The record is kept in a list, which the feature cache does not read as a
    hyperparameter of the encoder.
    """

    def __init__(self, in_features: int, width: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(nn.Linear(in_features, width), nn.ReLU())
        self.seen: list[tuple[bool, int, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((self.training, len(x), torch.get_num_threads()))
        return self.layer(x)

    def flops_per_sample(self) -> int:
        linear = self.layer[0]
        return 2 * linear.in_features * linear.out_features


@pytest.fixture
def two_threads():
    """torch on two intra-op threads for the test (whatever this machine's default), restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def large_encoder(batch_size: int) -> ThreadRecorder:
    """An encoder whose batches of ``batch_size`` are twice :data:`SMALL_BATCH_FLOPS`."""
    in_features = 256
    width = -(-2 * SMALL_BATCH_FLOPS // (2 * in_features * batch_size))
    return ThreadRecorder(in_features, width)


def data(n_features: int, n: int = 96) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, n_features)).astype(np.float32), np.arange(n) % 2


def test_a_small_encoder_fine_tunes_and_predicts_on_one_thread(two_threads):
    X, y = data(16)
    encoder = ThreadRecorder(16, 8)
    assert encoder.flops_per_sample() * 32 < SMALL_BATCH_FLOPS
    clf = FoundationClassifier(
        encoder, freeze_backbone=False, batch_size=32, max_epochs=2, val_split=None
    ).fit(X, y)
    trained = clf.encoder_.seen  # the trained copy's record: every training step
    assert {threads for training, _, threads in trained if training} == {1}
    assert torch.get_num_threads() == 2  # restored after fit
    clf.encoder_.seen.clear()
    clf.predict(X)
    assert [threads for _, _, threads in clf.encoder_.seen][-1] == 1
    assert torch.get_num_threads() == 2


def test_a_large_encoder_keeps_torchs_threads(two_threads):
    X, y = data(256, n=64)
    encoder = large_encoder(32)
    clf = FoundationClassifier(
        encoder, freeze_backbone=False, batch_size=32, max_epochs=1, val_split=None
    ).fit(X, y)
    assert {threads for training, _, threads in clf.encoder_.seen if training} == {2}


def test_a_small_frozen_encoder_encodes_its_later_batches_on_one_thread(two_threads):
    """The first batch is counted (on torch's threads); the rest run on one thread."""
    X, y = data(16)
    encoder = ThreadRecorder(16, 8)
    FoundationClassifier(encoder, inference_batch_size=32, cache=False).fit(X, y)
    encoding = [threads for training, rows, threads in encoder.seen if rows == 32]
    assert encoding[:3] == [2, 1, 1]  # X's three batches of 32
    assert torch.get_num_threads() == 2


def test_a_large_frozen_encoder_encodes_on_torchs_threads(two_threads):
    X, y = data(256, n=96)
    encoder = large_encoder(32)
    FoundationClassifier(encoder, inference_batch_size=32, cache=False).fit(X, y)
    assert {threads for _, rows, threads in encoder.seen if rows == 32} == {2}


def test_the_probes_scores_do_not_depend_on_the_processs_blas_threads():
    """A dask worker runs one BLAS thread: the L-BFGS probe scores as in a process with more."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import cross_val_score
    from threadpoolctl import threadpool_limits

    X, y = load_digits(return_X_y=True)
    X = (X / 16).astype(np.float32)
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(64, 128), nn.ReLU())
    probe = FoundationClassifier(encoder, weight_decay=1e-4, random_state=0)  # many iterations
    with threadpool_limits(2):
        many = cross_val_score(probe, X, y, cv=3)
    with threadpool_limits(1):
        one = cross_val_score(probe, X, y, cv=3)
    np.testing.assert_array_equal(many, one)


def test_an_lstm_counts_as_heavy_though_torch_counts_no_flops_for_it(two_threads):
    """``FlopCounterMode`` counts 0 for ``aten::lstm``: the floor of 2 FLOPs per parameter."""
    lstm = nn.LSTM(64, 1024, batch_first=True)  # 4.5M parameters: 2.9e8 FLOPs per 32 rows
    seen: list[int] = []

    class LastState(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = lstm

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(torch.get_num_threads())
            return self.lstm(x)[0][:, -1]

    X = np.random.default_rng(0).normal(size=(96, 3, 64)).astype(np.float32)
    clf = FoundationClassifier(LastState(), inference_batch_size=32, cache=False)
    clf.fit(X, np.arange(96) % 2)
    assert seen[-3:] == [2, 2, 2]
