"""A real Hugging Face model, built from a config (no download), as the encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import assert_same_state, state_of
from sklearn_finetune import FoundationClassifier

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16,
    )
    return transformers.BertModel(config)


@pytest.fixture(scope="module")
def tokens():
    """Two classes of 'sentences': token ids from the low or the high half of the vocabulary."""
    rng = np.random.default_rng(0)
    y = np.arange(60) % 2
    input_ids = rng.integers(1, 25, size=(60, 8)) + 25 * y[:, None]
    attention_mask = np.ones_like(input_ids)
    attention_mask[::3, 6:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}, y


@pytest.mark.parametrize(
    ("output_key", "expected"),
    [
        (None, lambda out: out.pooler_output),
        ("last_hidden_state", lambda out: out.last_hidden_state.mean(1)),
    ],
)
def test_bert_output_object_and_dict_input(tiny_bert, tokens, output_key, expected):
    X, y = tokens
    before = state_of(tiny_bert)
    clf = FoundationClassifier(tiny_bert, output_key=output_key, max_epochs=2).fit(X, y)
    assert set(clf.predict(X)) <= {0, 1}
    assert_same_state(before, tiny_bert)
    # The head was trained on exactly the tensor the key names.
    batch = {key: torch.as_tensor(value[:4]) for key, value in X.items()}
    with torch.no_grad():
        reference = expected(tiny_bert.eval()(**batch))
        torch.testing.assert_close(clf.module_.embed(**batch), reference)


def test_bert_fine_tuning_trains_a_copy(tiny_bert, tokens):
    X, y = tokens
    before = state_of(tiny_bert)
    clf = FoundationClassifier(
        tiny_bert, freeze_backbone=False, max_epochs=2, val_split=0, random_state=0
    ).fit(X, y)
    assert_same_state(before, tiny_bert)
    moved = clf.encoder_.embeddings.word_embeddings.weight
    assert not torch.equal(moved, tiny_bert.embeddings.word_embeddings.weight)
