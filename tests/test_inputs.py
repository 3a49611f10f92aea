"""The inputs the estimators take, the targets they return, and the errors bad input gets."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import BatchNormEncoder, CountingEncoder
from sklearn.metrics import r2_score
from torch import nn

from sklearn_finetune import FoundationClassifier, FoundationRegressor


class TwoInputEncoder(nn.Module):
    """Takes named inputs, like a Hugging Face model: token ids and a mask."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(20, 8)

    def forward(self, input_ids, attention_mask):
        hidden = self.embedding(input_ids) * attention_mask.unsqueeze(-1)
        return {"last_hidden_state": hidden}


def test_images_of_any_rank(digits):
    X, y = digits
    images = X.reshape(-1, 1, 8, 8)
    encoder = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())
    clf = FoundationClassifier(encoder, max_epochs=1).fit(images, y)
    assert clf.input_shape_ == (1, 8, 8)
    assert not hasattr(clf, "n_features_in_")
    assert clf.predict(images[:5]).shape == (5,)
    with pytest.raises(ValueError, match="number of axes must match"):
        clf.predict(X[:5].reshape(-1, 8, 8))


def test_dataframe_input_records_feature_names(digits):
    X, y = digits
    frame = pd.DataFrame(X[:, :10], columns=[f"pixel{i}" for i in range(10)])
    frame["pixel0"] = frame["pixel0"].astype(int)  # mixed column dtypes become float32
    clf = FoundationClassifier(nn.Linear(10, 4), max_epochs=1).fit(frame, y)
    assert list(clf.feature_names_in_) == list(frame.columns)
    assert clf.n_features_in_ == 10
    with pytest.raises(ValueError, match="feature names"):
        clf.predict(frame.rename(columns={"pixel0": "other"}))


def test_torch_tensor_input_matches_numpy_input(digits):
    X, y = digits
    from_numpy = FoundationClassifier(nn.Linear(64, 4), max_epochs=2, random_state=0).fit(X, y)
    from_tensor = FoundationClassifier(nn.Linear(64, 4), max_epochs=2, random_state=0)
    from_tensor.set_params(encoder=from_numpy.encoder).fit(torch.tensor(X), y)
    np.testing.assert_array_equal(
        from_numpy.predict_proba(X), from_tensor.predict_proba(torch.tensor(X))
    )


def test_dict_input_is_passed_as_keyword_arguments():
    rng = np.random.default_rng(0)
    X = {
        "input_ids": rng.integers(0, 20, size=(30, 6)),
        "attention_mask": np.ones((30, 6), dtype=np.int64),
    }
    y = np.arange(30) % 3
    clf = FoundationClassifier(TwoInputEncoder(), max_epochs=1).fit(X, y)
    assert clf.input_shape_ == {"input_ids": (6,), "attention_mask": (6,)}
    # Another padding length is fine for an encoder that pools over tokens.
    shorter = {key: value[:4, :3] for key, value in X.items()}
    assert clf.predict(shorter).shape == (4,)
    with pytest.raises(ValueError, match="keys"):
        clf.predict({"input_ids": X["input_ids"]})
    with pytest.raises(ValueError, match="was a dict at fit time"):
        clf.predict(X["input_ids"])


def test_labels_of_any_type_come_back_as_given(digits):
    X, y = digits
    names = np.array(
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    )
    for labels in (names[y], pd.Series(names[y], dtype="category"), y + 100):
        clf = FoundationClassifier(nn.Linear(64, 8), max_epochs=2, random_state=0).fit(X, labels)
        expected = np.unique(np.asarray(labels))
        np.testing.assert_array_equal(clf.classes_, expected)
        predicted = clf.predict(X)
        assert set(predicted) <= set(expected)
        # Columns of predict_proba follow classes_.
        proba = clf.predict_proba(X)
        np.testing.assert_array_equal(clf.classes_[proba.argmax(1)], predicted)


def test_regression_targets_are_standardised_and_restored():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 3))
    y = np.column_stack([5000 + 1000 * X[:, 0], -0.01 * X[:, 1]])
    reg = FoundationRegressor(nn.Identity(), lr=1e-2, max_epochs=40, val_split=0, random_state=0)
    reg.fit(X, y)
    np.testing.assert_allclose(reg.target_mean_, y.mean(0))
    predicted = reg.predict(X)
    assert predicted.shape == (300, 2)
    assert r2_score(y, predicted, multioutput="raw_values") == pytest.approx([1, 1], abs=0.01)
    single = FoundationRegressor(nn.Identity(), lr=1e-2, max_epochs=40, val_split=0).fit(X, y[:, 0])
    assert single.predict(X).shape == (300,)
    assert single.score(X, y[:, 0]) > 0.99


def test_inputs_are_not_modified(digits):
    X, y = digits
    X_float32 = X.astype(np.float32)
    copies = [X_float32.copy(), y.copy()]
    FoundationClassifier(BatchNormEncoder(), max_epochs=1).fit(X_float32, y)
    np.testing.assert_array_equal(X_float32, copies[0])
    np.testing.assert_array_equal(y, copies[1])
    frame = pd.DataFrame(X)
    frame_copy = frame.copy()
    FoundationClassifier(max_epochs=1).fit(frame, y)
    pd.testing.assert_frame_equal(frame, frame_copy)


def _with(X, row, col, value):
    X = X.copy()
    X[row, col] = value
    return X


@pytest.mark.parametrize(
    ("make_X", "make_y", "error", "match"),
    [
        (lambda X: _with(X, 3, 5, np.nan), lambda y: y, ValueError, "NaN"),
        (lambda X: _with(X, 3, 5, np.inf), lambda y: y, ValueError, "infinity"),
        (lambda X: X[:10], lambda y: y[:12], ValueError, "same number of samples"),
        (lambda X: X[:0], lambda y: y[:0], ValueError, "0 sample"),
        (lambda X: X[:10], lambda y: np.zeros(10), ValueError, "at least 2 classes"),
        (lambda X: X[:, 0], lambda y: y, ValueError, "Expected 2D array"),
        (
            lambda X: np.full(X.shape, "pixel", dtype=object),
            lambda y: y,
            ValueError,
            "could not convert",
        ),
        (lambda X: X, lambda y: y + 0.5, ValueError, "Unknown label type"),
        (lambda X: X, lambda y: None, ValueError, "requires y"),
        (
            lambda X: {"x": X, "mask": X[:-1]},
            lambda y: y,
            ValueError,
            "same length|one row per sample",
        ),
        (lambda X: {}, lambda y: y, ValueError, "empty dict"),
    ],
)
def test_bad_input_fails_before_the_encoder_runs(digits, make_X, make_y, error, match):
    X, y = digits
    encoder = CountingEncoder(nn.Linear(64, 4))
    with pytest.raises(error, match=match):
        FoundationClassifier(encoder, max_epochs=1).fit(make_X(X), make_y(y))
    assert encoder.samples_seen == 0


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"head": "transformer"}, "'head' parameter"),
        ({"freeze_backbone": "yes"}, "'freeze_backbone' parameter"),
        ({"lr": 0}, "'lr' parameter"),
        ({"val_split": 1.5}, "'val_split' parameter"),
        ({"pooling": "sum"}, "'pooling' parameter"),
        ({"encoder": "bert-base"}, "'encoder' parameter"),
        ({"head": "mlp", "hidden_dims": (8, 0)}, "hidden_dims must be a sequence of positive"),
        ({"val_split": (1, 2, 3)}, "must be \\(X_val, y_val\\)"),
        ({"device": "gpu:0"}, "not a torch device"),
        ({"solver": "rmsprop"}, "'solver' parameter"),
        ({"scoring": "auc"}, "'scoring' parameter"),
        ({"scoring": "r2"}, "scoring='r2' is not a validation score of FoundationClassifier"),
        ({"unfreeze_at": 1}, "unfreeze_at=1 is not below max_epochs=1"),
        ({"unfreeze_mode": "bottom_up"}, "'unfreeze_mode' parameter"),
        ({"solver": "lbfgs", "lr_schedule": "cosine"}, "does not take lr_schedule='cosine'"),
        ({"solver": "lbfgs", "precision": "16"}, "does not take precision='16'"),
        ({"solver": "lbfgs", "unfreeze_at": 0}, "solver='lbfgs' trains the head"),
        ({"lr_schedule": "linear"}, "'lr_schedule' parameter"),
        ({"layer_decay": 0}, "'layer_decay' parameter"),
        ({"layer_decay": 0.5, "freeze_backbone": False}, "Could not find ordered blocks"),
        ({"momentum": 1.5}, "'momentum' parameter"),
        ({"max_grad_norm": 0}, "'max_grad_norm' parameter"),
        ({"precision": "8"}, "'precision' parameter"),
        ({"class_weight": "auto"}, "'class_weight' parameter"),
        ({"class_weight": {"cat": 2.0}}, "cat"),
        ({"label_smoothing": 1.0}, "'label_smoothing' parameter"),
        ({"head": nn.Linear(4, 3)}, "must map \\(batch, 4\\) to \\(batch, 10\\)"),
        ({"head": lambda width, n: "linear"}, "must return a torch.nn.Module; got str"),
        ({"callbacks": "print"}, "'callbacks' parameter"),
        ({"inference_batch_size": 0}, "'inference_batch_size' parameter"),
        ({"cache": 1}, "'cache' parameter"),
    ],
)
def test_bad_parameters_fail_before_training(digits, params, match):
    X, y = digits
    clf = FoundationClassifier(nn.Linear(64, 4), max_epochs=1).set_params(**params)
    with pytest.raises((ValueError, TypeError), match=match):
        clf.fit(X, y)
    assert not hasattr(clf, "net_")


def test_predict_checks_fitted_state_and_feature_count(digits):
    X, y = digits
    clf = FoundationClassifier(nn.Linear(64, 4), max_epochs=1)
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        clf.predict(X)
    clf.fit(X, y)
    with pytest.raises(
        ValueError, match="X has 63 features, but FoundationClassifier is expecting 64"
    ):
        clf.predict(X[:, :63])


def test_integer_token_ids_keep_their_dtype():
    ids = np.random.default_rng(0).integers(0, 20, size=(30, 5))
    encoder = nn.Sequential(nn.Embedding(20, 4))
    clf = FoundationClassifier(encoder, max_epochs=1).fit(ids, np.arange(30) % 2)
    assert clf.predict(ids).shape == (30,)


def test_an_encoder_that_mixes_the_batch_axis_is_named_before_training():
    """Flattening over the batch gives no row per sample: said at the encoder, in either regime."""
    X = np.random.default_rng(0).normal(size=(150, 13)).astype(np.float32)
    y = np.arange(150) % 3
    with pytest.raises(ValueError, match=r"\(Flatten\).*while encoding X for a batch of 64"):
        FoundationClassifier(nn.Flatten(0)).fit(X, y)
    with pytest.raises(ValueError, match=r"encoder \(Flatten\).*at the width probe.*first axis"):
        FoundationClassifier(nn.Flatten(0), freeze_backbone=False).fit(X, y)


def test_a_bad_X_val_is_named_as_X_val():
    X = np.random.default_rng(0).normal(size=(60, 13)).astype(np.float32)
    y = np.arange(60) % 2
    with pytest.raises(ValueError, match=r"^val_split's X_val does not match X: X has 4 features"):
        FoundationClassifier(nn.Linear(13, 4), val_split=(X[:5, :4], y[:5])).fit(X, y)


READ_ONLY_X = textwrap.dedent(
    """
    import warnings

    import numpy as np
    import pandas as pd
    import torch
    from torch import nn

    from sklearn_finetune import FoundationClassifier, FoundationEmbedder, FoundationRegressor

    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(5, 4)

        def forward(self, a, b):
            return self.linear(a + b)

    def read_only(array):
        array = array.copy()
        array.flags.writeable = False
        return array

    rng = np.random.default_rng(0)
    X = read_only(rng.normal(size=(60, 5)).astype(np.float32))
    y = read_only(np.arange(60) % 2)
    frame = pd.DataFrame(X, columns=list("abcde"))
    assert not frame.to_numpy().flags.writeable  # pandas 3: copy-on-write
    inputs = {"a": X, "b": read_only(X[::-1])}
    warnings.simplefilter("error")  # torch warns once per process: the first one fails
    for data in (X, frame):
        regimes = [
            dict(encoder=nn.Linear(5, 4)),
            dict(encoder=nn.Linear(5, 4), head="mlp", max_epochs=2, val_split=(data, y)),
            dict(encoder=nn.Linear(5, 4), freeze_backbone=False, max_epochs=2, val_split=0.2),
            dict(encoder=nn.Linear(5, 4), unfreeze_at=1, max_epochs=2),
            dict(encoder=None, max_epochs=2, val_split=(data, y)),
        ]
        for settings in regimes:
            FoundationClassifier(**settings, n_iter_no_change=None).fit(data, y).predict(data)
        FoundationEmbedder(nn.Linear(5, 4)).fit_transform(data)
    settings = dict(freeze_backbone=False, max_epochs=2, n_iter_no_change=None)
    FoundationRegressor(nn.Linear(5, 4), **settings).fit(X, X[:, 0]).predict(X)
    FoundationClassifier(TwoInputs(), val_split=(inputs, y), **settings).fit(inputs, y).predict(
        inputs
    )
    assert not X.flags.writeable and not y.flags.writeable and not inputs["b"].flags.writeable
    assert not frame.to_numpy().flags.writeable
    """
)


def test_read_only_x_and_pandas_frames_get_no_warning_from_torch(tmp_path):
    """A read-only X (a pandas 3 frame's values) is never written: torch's warning is not shown.

    torch warns once per process ("The given NumPy array is not writable"),
    so the paths run in a fresh one, where the first warning fails it.
    """
    script = tmp_path / "read_only.py"
    script.write_text(READ_ONLY_X)
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
