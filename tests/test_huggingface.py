"""Real Hugging Face models and tokenizers, built from a config and a vocabulary (no download)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from conftest import assert_same_state, state_of
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline

from sklearn_finetune import (
    FeatureCache,
    FoundationClassifier,
    OnlineProbe,
    Tokenizer,
    knn_probe_score,
    linear_probe_score,
)

transformers = pytest.importorskip("transformers")

NEGATIVE = ["dull", "boring", "awful", "flat", "tedious", "weak", "bland", "poor"]
POSITIVE = ["great", "moving", "superb", "witty", "sharp", "warm", "bold", "fine"]
NEUTRAL = ["the", "film", "plot", "cast", "is", "and", "a", "story"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *NEGATIVE, *POSITIVE, *NEUTRAL]


@pytest.fixture(scope="module")
def tiny_bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    return transformers.BertModel(config)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """A real BERT word-piece tokenizer saved to a folder, as from_pretrained finds one."""
    folder = tmp_path_factory.mktemp("tokenizer")
    (folder / "vocab.txt").write_text("\n".join(VOCAB))
    transformers.BertTokenizerFast(str(folder / "vocab.txt")).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def reviews():
    """Short 'reviews' of 3 to 9 words; the label is whether positive words are in the majority."""
    rng = np.random.default_rng(0)
    texts, labels = [], []
    for i in range(80):
        label = i % 2
        words = list(rng.choice(NEUTRAL, size=rng.integers(1, 4)))
        words += list(rng.choice(POSITIVE if label else NEGATIVE, size=rng.integers(2, 6)))
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(label)
    return texts, np.array(labels)


@pytest.fixture(scope="module")
def tokens(tokenizer_dir, reviews):
    texts, y = reviews
    return Tokenizer(tokenizer_dir, max_length=12).fit_transform(texts), y


def _reference(model, batch, output_key, pooling):
    """The representation computed by hand from the model's output object."""
    out = model.eval()(**batch)
    mask = batch["attention_mask"].unsqueeze(-1).float()
    hidden = out.last_hidden_state
    return {
        (None, "mean"): (hidden * mask).sum(1) / mask.sum(1),
        (None, "max"): hidden.masked_fill(mask == 0, -torch.inf).amax(1),
        (None, "cls"): hidden[:, 0],
        ("pooler_output", "mean"): out.pooler_output,
    }[output_key, pooling]


@pytest.mark.parametrize(
    ("output_key", "pooling"),
    [(None, "mean"), (None, "max"), (None, "cls"), ("pooler_output", "mean")],
)
def test_poolings_of_bert_outputs_use_the_attention_mask(tiny_bert, tokens, output_key, pooling):
    X, y = tokens
    assert (X["attention_mask"] == 0).any()  # there is padding to ignore
    before = state_of(tiny_bert)
    clf = FoundationClassifier(tiny_bert, output_key=output_key, pooling=pooling, max_epochs=2)
    clf.fit(X, y)
    assert_same_state(before, tiny_bert)
    batch = {key: torch.as_tensor(value[:6]) for key, value in X.items()}
    with torch.no_grad():
        expected = _reference(tiny_bert, batch, output_key, pooling)
        torch.testing.assert_close(clf.module_.embed(**batch), expected)
    # The cached features the head trained on are the same representation.
    encoding = clf._frozen_encoding(clf.encoder_, clf.module_.representation, clf.device_, None)
    features = torch.as_tensor(encoding.features(X))
    torch.testing.assert_close(features[:6], expected)


def test_padding_does_not_change_the_masked_mean(tiny_bert, tokenizer_dir, reviews):
    texts, y = reviews
    short, long = (
        Tokenizer(tokenizer_dir, max_length=n).fit_transform(texts[:5]) for n in (12, 24)
    )
    clf = FoundationClassifier(tiny_bert, max_epochs=1, cache=False).fit(short, y[:5])
    embed = clf.module_.embed
    with torch.no_grad():
        a = embed(**{k: torch.as_tensor(v) for k, v in short.items()})
        b = embed(**{k: torch.as_tensor(v) for k, v in long.items()})
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_text_pipeline_through_grid_search(tiny_bert, tokenizer_dir, reviews):
    texts, y = reviews
    cache = FeatureCache()
    pipeline = make_pipeline(
        Tokenizer(tokenizer_dir, max_length=12),
        FoundationClassifier(tiny_bert, max_epochs=40, lr=1e-2, cache=cache, random_state=0),
    )
    grid = {
        "tokenizer__max_length": [10, 12],
        "foundationclassifier__head": ["linear", "mlp"],
        "foundationclassifier__pooling": ["mean", "attention"],
    }
    search = GridSearchCV(pipeline, grid, cv=3, error_score="raise").fit(texts, y)
    scores = search.cv_results_["mean_test_score"]
    assert len(scores) == 8 and np.isfinite(scores).all()
    assert search.best_score_ > 0.7  # the words carry the label, even through a random BERT
    # Each distinct (sentence, max_length, pooling) was encoded once across folds and candidates.
    assert cache.misses <= 2 * 2 * len(set(texts))
    predicted = search.predict(["great witty film", "dull and boring plot"])
    assert predicted.shape == (2,)
    restored = pickle.loads(pickle.dumps(search.best_estimator_))
    np.testing.assert_array_equal(restored.predict(texts), search.predict(texts))


def test_probes_split_tokenized_text(tiny_bert, tokens):
    """The probes take a Tokenizer's dict output, which cross_val_score alone cannot split."""
    X, y = tokens
    linear = linear_probe_score(tiny_bert, X, y, cv=4, weight_decay=1e-2, cache=FeatureCache())
    knn = knn_probe_score(tiny_bert, X, y, n_neighbors=5, cv=4)
    assert linear.shape == knn.shape == (4,)
    assert linear.mean() > 0.7 and knn.mean() > 0.7
    probe = OnlineProbe(X, y, cv=2)
    assert probe(tiny_bert) == probe.scores_[0] > 0.7


def test_fine_tuning_bert_from_text_trains_a_copy(tiny_bert, tokenizer_dir, reviews):
    texts, y = reviews
    before = state_of(tiny_bert)
    pipeline = make_pipeline(
        Tokenizer(tokenizer_dir, max_length=12),
        FoundationClassifier(
            tiny_bert, freeze_backbone=False, max_epochs=2, val_split=0, random_state=0
        ),
    ).fit(texts, y)
    assert_same_state(before, tiny_bert)
    moved = pipeline[-1].encoder_.embeddings.word_embeddings.weight
    assert not torch.equal(moved, tiny_bert.embeddings.word_embeddings.weight)


def test_attention_pooling_belongs_to_the_head(tiny_bert, tokens):
    X, y = tokens
    clf = FoundationClassifier(tiny_bert, pooling="attention", max_epochs=20, lr=1e-2).fit(X, y)
    pooling = clf.module_.head[0]
    assert isinstance(pooling, torch.nn.Module) and type(pooling).__name__ == "AttentionPooling"
    assert pooling.score.weight.abs().sum() > 0  # learned (it starts at zero)
    trained = {name for name, _ in clf.module_.trainable_named_parameters()}
    assert trained == {"head.0.score.weight", "head.0.score.bias", "head.1.weight", "head.1.bias"}
    # Padding gets no weight: changing the padded tokens' ids changes nothing.
    batch = {key: torch.as_tensor(value[:8]) for key, value in X.items()}
    noisy = dict(batch, input_ids=torch.where(batch["attention_mask"] == 1, batch["input_ids"], 7))
    with torch.no_grad():
        torch.testing.assert_close(clf.module_(**batch), clf.module_(**noisy), atol=1e-5, rtol=0)


def test_tokenizer_input_errors(tokenizer_dir, tmp_path):
    tokenizer = Tokenizer(tokenizer_dir, max_length=4)
    with pytest.raises(TypeError, match="single string"):
        tokenizer.fit("great film")
    with pytest.raises(TypeError, match=r"X\[1\] is a int"):
        tokenizer.fit(["great film", 3])
    with pytest.raises(ValueError, match="not a local directory"):
        Tokenizer(str(tmp_path / "absent")).fit(["great"])
    with pytest.raises(ValueError, match="max_length"):
        Tokenizer(tokenizer_dir, max_length=0).fit(["great"])
    fitted = tokenizer.fit(["great film", "the plot is dull and boring"])
    assert fitted.truncated_ == 0.5
    assert fitted.transform(np.array([["great"], ["dull"]], dtype=object))["input_ids"].shape == (
        2,
        4,
    )
