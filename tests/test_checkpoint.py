"""load_weights: Lightning checkpoints, state dicts and safetensors into a bare encoder."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import BatchNormEncoder, assert_same_state, state_of
from torch import nn

from sklearn_finetune import FeatureCache, FoundationClassifier, load_weights


class LitClassifier(nn.Module):
    """The layout of a LightningModule: ``self.model.backbone`` and ``self.model.head``."""

    def __init__(self) -> None:
        super().__init__()
        self.model = nn.ModuleDict({"backbone": BatchNormEncoder(), "head": nn.Linear(16, 10)})


@pytest.fixture
def lit_checkpoint(tmp_path):
    """A checkpoint as Lightning writes it: prefixed state_dict keys, optimizer state, metadata."""
    torch.manual_seed(1)
    lit = LitClassifier()
    lit.model["backbone"](torch.randn(32, 64))  # move the batch-norm statistics off their defaults
    optimizer = torch.optim.AdamW(lit.parameters())
    path = tmp_path / "epoch=4-step=100.ckpt"
    torch.save(
        {
            "epoch": 4,
            "global_step": 100,
            "pytorch-lightning_version": "2.4.0",
            "state_dict": lit.state_dict(),
            "optimizer_states": [optimizer.state_dict()],
            "lr_schedulers": [],
            "hyper_parameters": {"lr": 1e-3, "hidden": [16]},
        },
        path,
    )
    return path, lit.model["backbone"]


def test_lightning_checkpoint_loads_into_the_backbone(lit_checkpoint, digits):
    path, trained = lit_checkpoint
    encoder = BatchNormEncoder()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every key under the prefix is the encoder's
        assert load_weights(encoder, path, prefix="model.backbone.") is encoder
    assert_same_state(state_of(trained), encoder)  # weights and batch-norm statistics
    X, y = digits
    clf = FoundationClassifier(encoder, max_epochs=2, random_state=0).fit(X, y)
    assert clf.encoder_ is encoder


def test_a_wrong_prefix_fails_naming_the_missing_keys_and_the_right_prefix(lit_checkpoint):
    path, _ = lit_checkpoint
    encoder = BatchNormEncoder()
    before = state_of(encoder)
    with pytest.raises(ValueError) as error:
        load_weights(encoder, path, prefix="backbone.")
    message = str(error.value)
    assert "7 of the encoder's 7 weights are not in the file under prefix 'backbone.'" in message
    assert "'layers.0.weight'" in message and "'layers.1.running_mean'" in message
    assert "prefix 'model.backbone.'" in message
    assert_same_state(before, encoder)
    with pytest.raises(ValueError, match=r"prefix 'model\.backbone\.'"):
        load_weights(encoder, path)  # no prefix: the Lightning module's own keys


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "full_model.pt"
    torch.save({"model": BatchNormEncoder()}, path)  # a pickled module, not its weights
    encoder = BatchNormEncoder()
    before = state_of(encoder)
    with pytest.raises(
        ValueError, match=r"holds conftest.BatchNormEncoder.*refused .*weights_only=True"
    ):
        load_weights(encoder, path)
    assert_same_state(before, encoder)


def test_safetensors_and_plain_state_dicts(tmp_path):
    from safetensors.torch import save_file

    source = BatchNormEncoder()
    save_file(source.state_dict(), tmp_path / "encoder.safetensors")
    torch.save(source.state_dict(), tmp_path / "encoder.pt")
    torch.save({"model": source.state_dict(), "epoch": 9}, tmp_path / "mae_style.pth")
    for path, prefix in [
        ("encoder.safetensors", ""),
        ("encoder.pt", ""),
        ("mae_style.pth", "model."),
    ]:
        encoder = load_weights(BatchNormEncoder(), tmp_path / path, prefix=prefix)
        assert_same_state(state_of(source), encoder)


def test_unexpected_keys_are_named_and_missing_ones_can_be_allowed():
    source = BatchNormEncoder().state_dict()
    extra = {**source, "projector.weight": torch.zeros(3)}
    with pytest.warns(UserWarning, match=r"not in the encoder, not loaded: 'projector.weight'"):
        load_weights(BatchNormEncoder(), extra)
    partial = {key: value for key, value in source.items() if not key.startswith("layers.1.")}
    encoder = BatchNormEncoder()
    own_norm = state_of(encoder.layers[1])
    with pytest.warns(UserWarning, match=r"kept as they were: 'layers.1.weight'"):
        load_weights(encoder, partial, allow_missing=True)
    assert_same_state(own_norm, encoder.layers[1])
    assert torch.equal(encoder.layers[0].weight, source["layers.0.weight"])


def test_shape_mismatch_and_bad_arguments_change_nothing(tmp_path):
    encoder = BatchNormEncoder()
    before = state_of(encoder)
    with pytest.raises(ValueError, match=r"layers.0.weight \(32, 64\) vs \(16, 64\)"):
        load_weights(encoder, BatchNormEncoder(width=32).state_dict())
    assert_same_state(before, encoder)
    with pytest.raises(FileNotFoundError, match="No weights file"):
        load_weights(encoder, tmp_path / "absent.ckpt")
    with pytest.raises(TypeError, match="prefix must be a string"):
        load_weights(encoder, {}, prefix=None)
    with pytest.raises(TypeError, match=r"encoder must be a torch\.nn\.Module"):
        load_weights(encoder.state_dict(), {})
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(TypeError, match="mapping of names to tensors"):
        load_weights(encoder, tmp_path / "list.pt")


def test_a_hugging_face_save_loads_into_a_fresh_model(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
    )
    torch.manual_seed(0)
    saved = transformers.BertModel(config)
    saved.save_pretrained(tmp_path)
    torch.manual_seed(1)
    fresh = transformers.BertModel(config)
    load_weights(fresh, tmp_path / "model.safetensors")
    assert_same_state(state_of(saved), fresh)


def test_a_grid_search_compares_checkpoints(tmp_path, digits):
    """The documented way to compare checkpoints: encoders loaded once, searched as a parameter."""
    from sklearn.model_selection import GridSearchCV

    X, y = digits
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        path = tmp_path / f"seed{seed}.ckpt"
        state = {f"encoder.{k}": v for k, v in BatchNormEncoder().state_dict().items()}
        torch.save({"state_dict": state}, path)
        paths.append(path)
    encoders = [load_weights(BatchNormEncoder(), path, prefix="encoder.") for path in paths]
    cache = FeatureCache()
    search = GridSearchCV(
        FoundationClassifier(max_epochs=2, cache=cache),
        {"encoder": encoders},
        cv=2,
        error_score="raise",
    ).fit(X, y)
    assert len(search.cv_results_["mean_test_score"]) == 2
    # GridSearchCV copies the values of a grid, but the cache knows them by content:
    # each checkpoint's encoder ran once over the data, across folds and the refit.
    assert cache.misses == 2 * len(X)
    best = search.best_params_["encoder"]
    assert_same_state(state_of(best), search.best_estimator_.encoder_)
