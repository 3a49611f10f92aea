"""Text in: a scikit-learn transformer from a list of strings to a tokenizer's dict of arrays."""

from __future__ import annotations

import os
from collections.abc import Sequence
from numbers import Integral
from typing import Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils._param_validation import HasMethods, Interval
from sklearn.utils.validation import check_is_fitted


def _texts(X: Any) -> list[str]:
    """X as a list of strings: a list, a 1-D array, a Series, or one column of a 2-D table."""
    if isinstance(X, (str, bytes)):
        raise TypeError(
            "X is a single string; pass a list (or 1-D array) of texts, one per sample."
        )
    array = np.asarray(X, dtype=object)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise ValueError(
            f"X must hold one text per sample: a list, a 1-D array or one column; got "
            f"shape {array.shape}."
        )
    if len(array) == 0:
        raise ValueError("X holds no text; at least one sample is required.")
    for position, text in enumerate(array):
        if not isinstance(text, str):
            raise TypeError(
                f"Every sample of X must be a str; X[{position}] is a "
                f"{type(text).__name__} ({text!r})."
            )
    return array.tolist()


class Tokenizer(TransformerMixin, BaseEstimator):
    """Turn texts into the dict of token arrays a Hugging Face encoder takes.

    The first step of a text pipeline: ``make_pipeline(Tokenizer(path),
    FoundationClassifier(model))`` fits on a list of strings, and
    ``GridSearchCV`` splits the texts and searches over both steps. Every
    output is padded (and longer texts truncated) to ``max_length`` tokens,
    so that all calls give arrays of one width: the same sentence always
    becomes the same row, which lets a frozen encoder's feature cache find
    it again in every fold and candidate. The estimator's pooling uses
    ``attention_mask`` to ignore the padding.

    Read more in the :ref:`User Guide <tokenizer>`.

    Parameters
    ----------
    tokenizer : str, path-like or tokenizer
        A local directory holding a Hugging Face tokenizer (loaded at
        ``fit`` with ``AutoTokenizer.from_pretrained``, never downloaded),
        or a tokenizer object. Needs the ``transformers`` package (the
        ``hf`` extra).
    max_length : int, default=128
        Tokens per text, special tokens included.

    Attributes
    ----------
    tokenizer_ : transformers.PreTrainedTokenizerBase
        The loaded tokenizer.
    truncated_ : float
        The fraction of the texts seen by ``fit`` that were longer than
        ``max_length`` and were cut.

    See Also
    --------
    FoundationClassifier : The next step of a text pipeline; its ``pooling``
        reads ``attention_mask``.
    FoundationEmbedder : The sentence embeddings as features.
    linear_probe_score : Takes the tokenizer's output (a dict of arrays) as X.

    Examples
    --------
    >>> from pathlib import Path
    >>> from tempfile import mkdtemp
    >>> from transformers import BertTokenizerFast
    >>> from sklearn_finetune import Tokenizer
    >>> vocab = Path(mkdtemp()) / "vocab.txt"
    >>> _ = vocab.write_text("\\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "good", "film"]))
    >>> tokens = Tokenizer(BertTokenizerFast(str(vocab)), max_length=6).fit_transform(["good film"])
    >>> tokens["input_ids"], tokens["attention_mask"]
    (array([[2, 4, 5, 3, 0, 0]]), array([[1, 1, 1, 1, 0, 0]]))
    """

    _parameter_constraints: ClassVar[dict[str, list]] = {
        "tokenizer": [str, os.PathLike, HasMethods(["__call__", "decode"])],
        "max_length": [Interval(Integral, 1, None, closed="left")],
    }

    def __init__(self, tokenizer: Any, *, max_length: int = 128) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X: Sequence[str], y: Any = None) -> Tokenizer:
        """Load the tokenizer and check X.

        Parameters
        ----------
        X : list of str, 1-D array of str or one column of them
            The texts.
        y : None
            Ignored.

        Returns
        -------
        self
        """
        texts = _texts(X)
        if isinstance(self.tokenizer, (str, os.PathLike)):
            try:
                from transformers import AutoTokenizer
            except ImportError as exc:
                raise ImportError(
                    "Tokenizer loads Hugging Face tokenizers with the transformers package: "
                    "pip install 'sklearn-finetune[hf]'."
                ) from exc
            if not os.path.isdir(self.tokenizer):
                raise ValueError(
                    f"tokenizer={os.fspath(self.tokenizer)!r} is not a local directory; pass "
                    f"the folder that holds the tokenizer's files (nothing is downloaded)."
                )
            self.tokenizer_ = AutoTokenizer.from_pretrained(self.tokenizer, local_files_only=True)
        else:
            self.tokenizer_ = self.tokenizer
        lengths = self.tokenizer_(texts, truncation=False, return_length=True)["length"]
        self.truncated_ = float(np.mean(np.asarray(lengths) > self.max_length))
        return self

    def transform(self, X: Sequence[str]) -> dict[str, np.ndarray]:
        """Tokenize the texts into arrays of shape ``(n_samples, max_length)``.

        Parameters
        ----------
        X : list of str, 1-D array of str or one column of them
            The texts.

        Returns
        -------
        dict of str to ndarray
            The tokenizer's outputs (``input_ids``, ``attention_mask`` and,
            for BERT-style models, ``token_type_ids``), int64.
        """
        check_is_fitted(self, "tokenizer_")
        tokens = self.tokenizer_(
            _texts(X),
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_tensors="np",
        )
        return {name: np.asarray(values, dtype=np.int64) for name, values in tokens.items()}

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.string = True
        tags.input_tags.two_d_array = False
        return tags
