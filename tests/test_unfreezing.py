"""Gradual unfreezing and layer-wise learning rates: what trains when, and at which rate."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import BatchNormEncoder, state_of
from sklearn.model_selection import GridSearchCV
from skorch.callbacks import Callback
from torch import nn

from sklearn_finetune import FoundationClassifier
from sklearn_finetune._blocks import backbone_blocks


class EncoderSnapshots(Callback):
    """Keeps a copy of the encoder's state after every epoch."""

    def on_train_begin(self, net, **kwargs):
        self.snapshots_ = [state_of(net.module_.encoder)]

    def on_epoch_end(self, net, **kwargs):
        self.snapshots_.append(state_of(net.module_.encoder))


def changed(before, after):
    return {name for name, value in before.items() if not torch.equal(value, after[name])}


def three_layers():
    return nn.Sequential(
        nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 16)
    )


def test_backbone_is_unchanged_before_unfreeze_at_and_trains_after(digits):
    X, y = digits
    encoder = BatchNormEncoder()
    given = state_of(encoder)
    snapshots = EncoderSnapshots()
    clf = FoundationClassifier(
        encoder, unfreeze_at=2, max_epochs=4, lr=1e-2, callbacks=[snapshots], random_state=0
    ).fit(X, y)
    states = dict(clf.net_.callbacks_)["EncoderSnapshots"].snapshots_
    # Epochs 1 and 2: no weight and no batch-norm statistic moves (eval mode, no gradient).
    assert changed(states[0], states[1]) == changed(states[0], states[2]) == set()
    # Epochs 3 and 4: the backbone trains, statistics included.
    assert {"layers.0.weight", "layers.1.running_mean"} <= changed(states[2], states[3])
    assert changed(states[3], states[4])
    # The encoder passed in is untouched, and so is the callback object passed in.
    assert changed(given, state_of(encoder)) == set()
    assert not hasattr(snapshots, "snapshots_")
    assert clf.encoder_ is not encoder and not clf.module_.frozen


def test_backbone_group_is_in_the_optimizer_at_its_rate_from_the_start(digits):
    X, y = digits
    clf = FoundationClassifier(
        BatchNormEncoder(),
        unfreeze_at=1,
        max_epochs=2,
        lr=1e-2,
        backbone_lr_mult=0.1,
        random_state=0,
    ).fit(X, y)
    backbone, head = clf.net_.optimizer_.param_groups
    assert backbone["lr"] == pytest.approx(1e-3) and head["lr"] == pytest.approx(1e-2)
    assert {id(p) for p in backbone["params"]} == {id(p) for p in clf.encoder_.parameters()}


def test_top_down_unfreezes_one_block_per_epoch_from_the_top(digits):
    X, y = digits
    clf = FoundationClassifier(
        three_layers(),
        unfreeze_at=1,
        unfreeze_mode="top_down",
        max_epochs=4,
        lr=1e-2,
        callbacks=[("snapshots", EncoderSnapshots())],
        random_state=0,
    ).fit(X, y)
    states = dict(clf.net_.callbacks_)["snapshots"].snapshots_
    layer = {0: {"0.weight", "0.bias"}, 2: {"2.weight", "2.bias"}, 4: {"4.weight", "4.bias"}}
    assert changed(states[0], states[1]) == set()
    assert changed(states[1], states[2]) == layer[4]
    assert changed(states[2], states[3]) == layer[4] | layer[2]
    assert changed(states[3], states[4]) == layer[4] | layer[2] | layer[0]
    assert all(p.requires_grad for p in clf.encoder_.parameters())


def test_unfreezing_keeps_parameters_the_user_fixed_fixed(digits):
    X, y = digits
    encoder = three_layers()
    encoder[0].weight.requires_grad_(False)
    clf = FoundationClassifier(
        encoder, unfreeze_at=1, unfreeze_mode="top_down", max_epochs=4, random_state=0
    ).fit(X, y)
    assert torch.equal(clf.encoder_[0].weight, encoder[0].weight)
    assert not clf.encoder_[0].weight.requires_grad
    assert not torch.equal(clf.encoder_[0].bias, encoder[0].bias)


def test_layer_decay_rates_are_a_geometric_series_over_blocks(digits):
    X, y = digits
    clf = FoundationClassifier(
        three_layers(),
        freeze_backbone=False,
        lr=1e-2,
        backbone_lr_mult=0.5,
        layer_decay=0.5,
        max_epochs=1,
        random_state=0,
    ).fit(X, y)
    groups = clf.net_.optimizer_.param_groups
    assert [g["lr"] for g in groups] == pytest.approx([1.25e-3, 2.5e-3, 5e-3, 1e-2])
    encoder = clf.encoder_
    for group, layer in zip(
        groups, (encoder[0], encoder[2], encoder[4], clf.module_.head), strict=True
    ):
        assert {id(p) for p in group["params"]} == {id(p) for p in layer.parameters()}


def test_transformer_blocks_are_embeddings_layers_and_pooler():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
    )
    blocks = backbone_blocks(transformers.BertModel(config))
    assert len(blocks) == 5
    assert all(name.startswith("embeddings.") for name in blocks[0])
    for depth in range(3):
        assert all(name.startswith(f"encoder.layer.{depth}.") for name in blocks[depth + 1])
    assert all(name.startswith("pooler.") for name in blocks[4])


def test_grid_search_over_freezing_unfreezing_and_head(digits):
    X, y = digits
    search = GridSearchCV(
        FoundationClassifier(BatchNormEncoder(), max_epochs=3, random_state=0),
        {"freeze_backbone": [True, False], "unfreeze_at": [None, 1], "head": ["linear", "mlp"]},
        cv=2,
        error_score="raise",
    ).fit(X, y)
    scores = search.cv_results_["mean_test_score"]
    assert len(scores) == 8 and np.isfinite(scores).all()
