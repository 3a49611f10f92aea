"""save_estimator / load_estimator: weights in safetensors, the rest in JSON, no pickle."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import pickle

import numpy as np
import pytest
import torch
import torch.serialization
from safetensors.torch import load_file, save_file
from sklearn.base import clone
from sklearn.datasets import load_breast_cancer, load_diabetes
from torch import nn

from sklearn_finetune import (
    FoundationClassifier,
    FoundationRegressor,
    load_estimator,
    save_estimator,
)
from sklearn_finetune._persistence import CONFIG_FILE, WEIGHTS_FILE


def small_encoder(seed: int = 0, width: int = 16) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, width), nn.BatchNorm1d(width), nn.ReLU())


def round_trip(estimator, tmp_path, encoder=None):
    save_estimator(estimator, tmp_path / "model")
    return load_estimator(tmp_path / "model", encoder=encoder)


def assert_same_predictions(original, loaded, X):
    assert np.array_equal(loaded.predict(X), original.predict(X))
    if hasattr(original, "predict_proba"):
        assert np.array_equal(loaded.predict_proba(X), original.predict_proba(X))


CASES = {
    "linear_probe": dict(),
    "mlp_head": dict(head="mlp", hidden_dims=(8,), max_epochs=3),
    "fine_tuned": dict(freeze_backbone=False, max_epochs=2),
    "gradual_unfreezing": dict(unfreeze_at=1, max_epochs=3, lr_schedule="cosine"),
}


@pytest.mark.parametrize("case", CASES)
def test_classifier_round_trip_predicts_exactly_the_same(case, digits, tmp_path):
    X, y = digits
    clf = FoundationClassifier(small_encoder(), random_state=0, **CASES[case]).fit(X, y)
    # A frozen encoder must be given again; a trained one gives only its architecture,
    # so a freshly initialised one of the same shape must do.
    given = clf.encoder if clf.module_.frozen else small_encoder(seed=1)
    loaded = round_trip(clf, tmp_path, encoder=given)
    assert_same_predictions(clf, loaded, X)
    assert loaded.score(X, y) == clf.score(X, y)
    assert loaded.get_params() == {**clf.get_params(), "encoder": given}
    for name in ("classes_", "solver_", "n_iter_", "best_epoch_", "n_features_in_"):
        assert np.array_equal(getattr(loaded, name), getattr(clf, name)), name
    assert loaded.input_shape_ == clf.input_shape_
    assert loaded.history_.to_list() == clf.history_.to_list()
    assert loaded.net_.module_ is (loaded.module_.head if clf.module_.frozen else loaded.module_)
    assert loaded.encoder_ is (given if clf.module_.frozen else loaded.module_.encoder)


def test_a_frozen_encoder_is_not_stored_but_checked(digits, tmp_path):
    X, y = digits
    clf = FoundationClassifier(small_encoder(), random_state=0).fit(X, y)
    save_estimator(clf, tmp_path)
    assert set(load_file(tmp_path / WEIGHTS_FILE)) == {"head.weight", "head.bias"}
    with pytest.raises(ValueError, match="not the frozen encoder this estimator was fitted"):
        load_estimator(tmp_path, encoder=small_encoder(seed=1))
    with pytest.raises(ValueError, match="fitted with an encoder; pass it"):
        load_estimator(tmp_path)


def test_a_fine_tuned_encoder_is_stored_and_the_given_one_left_alone(digits, tmp_path):
    X, y = digits
    clf = FoundationClassifier(small_encoder(), freeze_backbone=False, max_epochs=2)
    clf.set_params(random_state=0).fit(X, y)
    given = small_encoder(seed=1)
    before = copy.deepcopy(given.state_dict())
    loaded = round_trip(clf, tmp_path, encoder=given)
    assert all(torch.equal(value, given.state_dict()[key]) for key, value in before.items())
    assert loaded.encoder_ is not given
    with pytest.raises(
        ValueError, match=r"'encoder\.0\.weight' \(file \(16, 64\) torch\.float32, model \(8, 64\)"
    ):
        load_estimator(tmp_path / "model", encoder=small_encoder(width=8))


def test_regressor_round_trip_keeps_the_target_scaling(tmp_path):
    X, y = load_diabetes(return_X_y=True)
    Y = np.column_stack([y, -2 * y])
    reg = FoundationRegressor(max_epochs=3, random_state=0).fit(X, Y)  # MLP from scratch
    loaded = round_trip(reg, tmp_path)
    assert_same_predictions(reg, loaded, X)
    assert loaded.score(X, Y) == reg.score(X, Y)
    for name in ("target_mean_", "target_scale_"):
        assert np.array_equal(getattr(loaded, name), getattr(reg, name))
        assert getattr(loaded, name).dtype == np.float64
    with pytest.raises(ValueError, match="fitted with encoder=None"):
        load_estimator(tmp_path / "model", encoder=nn.Linear(10, 4))


def test_from_scratch_with_a_frozen_random_backbone_stores_it(digits, tmp_path):
    X, y = digits
    clf = FoundationClassifier(freeze_backbone=True, random_state=0).fit(X, y)
    assert_same_predictions(clf, round_trip(clf, tmp_path), X)


@pytest.mark.parametrize(
    "labels",
    [
        np.array(["benign", "malignant"]),
        np.array(["benign", "malignant"], dtype=object),
        np.array([-1.0, 2.0]),
        np.array([-1.0, 2.0], dtype=np.float32),
        np.array([False, True]),
        np.array([3, 7], dtype=np.uint8),
    ],
    ids=lambda labels: str(labels.dtype),
)
def test_labels_of_any_json_type_round_trip(labels, tmp_path):
    X, y = load_breast_cancer(return_X_y=True)
    X, y = X[::4, :10], labels[y[::4]]
    clf = FoundationClassifier(nn.Linear(10, 4), random_state=0).fit(X, y)
    loaded = round_trip(clf, tmp_path, encoder=clf.encoder)
    assert loaded.classes_.dtype == clf.classes_.dtype
    assert loaded.classes_.tolist() == clf.classes_.tolist()
    assert_same_predictions(clf, loaded, X)


@pytest.fixture(scope="module")
def probe(digits):
    X, y = digits
    return FoundationClassifier(small_encoder(), random_state=0).fit(X, y)


@pytest.mark.parametrize(
    "param, value",
    [
        ("head", lambda width, n_outputs: nn.Linear(width, n_outputs)),
        ("head", nn.Linear(16, 10)),
        ("pooling", torch.flatten),
        ("callbacks", [object()]),
        ("val_split", (np.zeros((2, 64)), np.zeros(2))),
        ("random_state", np.random.RandomState(0)),
    ],
)
def test_what_json_cannot_hold_is_refused_by_name(probe, param, value, tmp_path):
    estimator = copy.copy(probe).set_params(**{param: value})
    with pytest.raises(ValueError, match=rf"^{param}=.* cannot be saved"):
        save_estimator(estimator, tmp_path)
    assert not (tmp_path / CONFIG_FILE).exists()


def test_labels_json_cannot_hold_are_refused(probe, tmp_path):
    estimator = copy.copy(probe)
    estimator.classes_ = np.arange(10).astype(complex)
    with pytest.raises(ValueError, match="classes_ holds values of dtype complex128"):
        save_estimator(estimator, tmp_path)


def test_an_unfitted_estimator_is_refused(tmp_path):
    with pytest.raises(Exception, match="not fitted"):
        save_estimator(FoundationClassifier(), tmp_path)


def test_loading_runs_no_pickle_and_leaves_the_random_state(probe, digits, tmp_path, monkeypatch):
    save_estimator(probe, tmp_path)

    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling during load_estimator")

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    state = torch.get_rng_state()
    loaded = load_estimator(tmp_path, encoder=probe.encoder)
    assert torch.equal(torch.get_rng_state(), state)
    monkeypatch.undo()
    assert_same_predictions(probe, loaded, digits[0])
    refit = clone(loaded).fit(*digits)  # a full citizen: clones and refits
    assert_same_predictions(probe, refit, digits[0])


def edit_config(path, edit):
    config = json.loads((path / CONFIG_FILE).read_text())
    edit(config)
    (path / CONFIG_FILE).write_text(json.dumps(config))


def rewrite_weights(path, tensors):
    """Replace the weights file and its digest in the JSON: a crafted but consistent pair."""
    save_file(tensors, path / WEIGHTS_FILE, metadata={"format": "pt"})
    digest = hashlib.sha256((path / WEIGHTS_FILE).read_bytes()).hexdigest()
    edit_config(path, lambda config: config.update(weights_sha256=digest))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c.update(format="pickle"), "has format 'pickle'"),
        (lambda c: c.update(estimator="os.system"), "names the estimator 'os.system'"),
        (lambda c: c["params"].update(exec="print"), r"does not take: \['exec'\]"),
        (lambda c: c["params"].update(lr="x"), "The 'lr' parameter"),
        (lambda c: c["fitted"].update(classes_={"pickle": "..."}), "classes_ in the file is"),
    ],
)
def test_a_tampered_config_is_refused(probe, tmp_path, edit, message):
    save_estimator(probe, tmp_path)
    edit_config(tmp_path, edit)
    with pytest.raises(ValueError, match=message):
        load_estimator(tmp_path, encoder=probe.encoder)


def test_weights_that_do_not_fit_are_refused_by_key(probe, tmp_path):
    save_estimator(probe, tmp_path)
    tensors = load_file(tmp_path / WEIGHTS_FILE)
    tensors["head.extra"] = tensors.pop("head.bias")
    tensors["head.weight"] = tensors["head.weight"][:3]
    rewrite_weights(tmp_path, tensors)
    with pytest.raises(ValueError) as error:
        load_estimator(tmp_path, encoder=probe.encoder)
    assert "missing keys: 'head.bias'" in str(error.value)
    assert "unexpected keys: 'head.extra'" in str(error.value)
    assert "mis-shaped keys: 'head.weight' (file (3, 16)" in str(error.value)


def test_another_version_warns(probe, tmp_path):
    save_estimator(probe, tmp_path)
    edit_config(tmp_path, lambda c: c["versions"].update(sklearn_finetune="0.0.1"))
    with pytest.warns(UserWarning, match="saved by sklearn_finetune 0.0.1"):
        load_estimator(tmp_path, encoder=probe.encoder)


@pytest.mark.skipif(torch.cuda.is_available(), reason="simulates a machine without CUDA")
def test_a_file_from_a_cuda_machine_loads_on_the_cpu(probe, digits, tmp_path):
    """The file holds no device: tensors are saved from the CPU, ``device`` is a parameter."""
    save_estimator(probe, tmp_path)
    edit_config(tmp_path, lambda c: c["params"].update(device="cuda"))
    with pytest.warns(UserWarning, match="not available on this machine"):
        loaded = load_estimator(tmp_path, encoder=probe.encoder)
    assert loaded.device == "cuda" and loaded.device_ == torch.device("cpu")
    assert_same_predictions(probe, loaded, digits[0])


@contextlib.contextmanager
def storages_tagged_cuda():
    """Pickle as a CUDA machine does: every storage's location written as ``cuda:0``."""
    original = torch.serialization.location_tag
    torch.serialization.location_tag = lambda storage: "cuda:0"
    try:
        yield
    finally:
        torch.serialization.location_tag = original


@pytest.mark.skipif(torch.cuda.is_available(), reason="simulates a machine without CUDA")
def test_a_pickle_from_a_cuda_machine_loads_on_the_cpu(probe, digits):
    """Every tensor of the pickle (``encoder``, ``module_``, ``encoder_``, the net's) maps to CPU.

    The estimator pickles its state through ``torch.save``, which records
    each tensor's device; here every one is recorded as ``cuda:0``, as on a
    GPU machine, and a bare ``torch.load`` of such bytes would fail here.
    """
    with storages_tagged_cuda():
        data = pickle.dumps(probe)
    loaded = pickle.loads(data)
    assert next(loaded.encoder.parameters()).device.type == "cpu"
    assert_same_predictions(probe, loaded, digits[0])


def test_a_tampered_module_description_never_writes_into_the_given_encoder(digits, tmp_path):
    X, y = digits
    encoder = small_encoder()
    tuned = FoundationClassifier(encoder, freeze_backbone=False, max_epochs=2).fit(X, y)
    save_estimator(tuned, tmp_path)
    edit_config(tmp_path, lambda c: c["module"].update(encoder="anything-else"))
    before = copy.deepcopy(encoder.state_dict())
    with pytest.raises(ValueError, match="module description is not one this package writes"):
        load_estimator(tmp_path, encoder=encoder)
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, before[key])


@pytest.mark.parametrize(
    "edit",
    [
        lambda c: c.pop("params"),
        lambda c: c.update(params=[1, 2]),
        lambda c: c["module"].update(width=10**12),
        lambda c: c["module"].update(width=-1),
        lambda c: c.update(estimator=["x"]),
    ],
)
def test_a_malformed_file_is_a_value_error(probe, tmp_path, edit):
    save_estimator(probe, tmp_path)
    edit_config(tmp_path, edit)
    with pytest.raises(ValueError, match=r"does not hold an estimator|not one this package"):
        load_estimator(tmp_path, encoder=probe.encoder)


def test_damaged_or_non_finite_weights_are_refused(probe, tmp_path):
    save_estimator(probe, tmp_path)
    tensors = load_file(tmp_path / WEIGHTS_FILE)
    tensors = {key: value * float("nan") for key, value in tensors.items()}
    rewrite_weights(tmp_path, tensors)
    with pytest.raises(ValueError, match="hold NaN or infinity"):
        load_estimator(tmp_path, encoder=probe.encoder)
    (tmp_path / WEIGHTS_FILE).write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="SHA-256 differs"):  # a save cut short, or swapped
        load_estimator(tmp_path, encoder=probe.encoder)
    digest = hashlib.sha256(b"not safetensors").hexdigest()
    edit_config(tmp_path, lambda config: config.update(weights_sha256=digest))
    with pytest.raises(ValueError, match="is damaged"):
        load_estimator(tmp_path, encoder=probe.encoder)


def test_a_save_cut_short_between_its_two_files_is_refused(probe, digits, tmp_path):
    """Weights replaced, JSON not yet: the old JSON's digest refuses the new weights."""
    X, y = digits
    save_estimator(probe, tmp_path)
    old_config = (tmp_path / CONFIG_FILE).read_bytes()
    other = FoundationClassifier(probe.encoder, weight_decay=1.0).fit(X, y)
    save_estimator(other, tmp_path)
    (tmp_path / CONFIG_FILE).write_bytes(old_config)
    with pytest.raises(ValueError, match="SHA-256 differs"):
        load_estimator(tmp_path, encoder=probe.encoder)
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind
