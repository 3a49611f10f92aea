"""``FeatureCache(directory, share_encoders=True)``: an unfitted estimator pickles its encoder
as a reference to a file in the directory, which each process loads once.

The search on a dask cluster that uses it is in ``test_distributed.py``.
"""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import BatchNormEncoder, assert_same_state, state_of
from sklearn.base import clone
from torch import nn

from sklearn_finetune import FeatureCache, FoundationClassifier, FoundationEmbedder
from sklearn_finetune._fingerprint import encoder_fingerprint
from sklearn_finetune._shared_encoders import LOADED


def encoder(width: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width))


def encoder_files(directory: Path) -> list[Path]:
    folder = directory / "encoders"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def test_share_encoders_needs_a_directory_and_a_bool(tmp_path):
    with pytest.raises(ValueError, match="share_encoders=True needs a directory"):
        FeatureCache(share_encoders=True)
    with pytest.raises(TypeError, match="share_encoders must be True or False; got 'yes'"):
        FeatureCache(tmp_path, share_encoders="yes")
    cache = FeatureCache(tmp_path, share_encoders=True)
    assert "share_encoders=True" in repr(cache)
    assert pickle.loads(pickle.dumps(cache)).share_encoders is True
    assert FeatureCache(tmp_path).share_encoders is False


@pytest.mark.parametrize("estimator_class", [FoundationClassifier, FoundationEmbedder])
def test_a_pickled_task_does_not_grow_with_the_encoder(tmp_path, estimator_class):
    """What GridSearchCV sends each task, a clone, is a few KB however large the encoder."""
    cache = FeatureCache(tmp_path, share_encoders=True)
    small, large = encoder(16), encoder(1024)  # 5 KB and 4.5 MB of weights
    large_bytes = len(pickle.dumps(large))
    shared = {e: len(pickle.dumps(clone(estimator_class(e, cache=cache)))) for e in (small, large)}
    whole = len(pickle.dumps(clone(estimator_class(large, cache=FeatureCache(tmp_path)))))
    assert shared[small] < 8_000 and shared[large] < 8_000, shared
    assert abs(shared[large] - shared[small]) < 100, shared  # the reference, not the weights
    assert whole > large_bytes > 4_000_000
    assert len(encoder_files(tmp_path)) == 2  # one file per encoder, written once
    before = [(file, file.stat().st_mtime_ns) for file in encoder_files(tmp_path)]
    pickle.dumps(clone(estimator_class(large, cache=cache)))
    assert [(file, file.stat().st_mtime_ns) for file in encoder_files(tmp_path)] == before


def test_unpickled_estimators_share_one_loaded_encoder_with_the_original_cache_key(
    digits, tmp_path
):
    X, y = digits
    given = BatchNormEncoder()
    given.eval()
    before = state_of(given)
    cache = FeatureCache(tmp_path, share_encoders=True)
    clf = FoundationClassifier(given, cache=cache, max_epochs=2, random_state=0)
    first, second = (pickle.loads(pickle.dumps(clone(clf))) for _ in range(2))
    [file] = encoder_files(tmp_path)
    assert first.encoder is second.encoder is LOADED[file.stem]
    assert first.encoder is not given and not first.encoder.training
    assert_same_state(before, first.encoder)
    cpu = torch.device("cpu")

    def key(module: nn.Module) -> str:
        return encoder_fingerprint(module, output_key=None, pooling="mean", device=cpu)

    assert key(first.encoder) == key(given)  # the feature cache's key: its files are found
    expected = clf.fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(first.fit(X, y).predict_proba(X), expected)
    assert first.cache.misses == 0  # its features were read from the directory
    assert_same_state(before, second.encoder)  # fit left the shared encoder alone


def test_a_loaded_encoder_is_pickled_again_as_its_reference_without_writing(tmp_path):
    """As dask's scheduler does with every task: unpickle, then pickle again to send it on."""
    cache = FeatureCache(tmp_path, share_encoders=True)
    task = pickle.dumps(FoundationClassifier(encoder(8, seed=5), cache=cache))
    loaded = pickle.loads(task)
    [file] = encoder_files(tmp_path)
    file.unlink()  # not read, not written again: the reference is the one it was loaded from
    again = pickle.dumps(loaded)
    assert not encoder_files(tmp_path) and len(again) < 8_000
    assert pickle.loads(again).encoder is loaded.encoder


def test_a_missing_or_changed_encoder_file_is_an_error_of_fit_naming_it(tmp_path, digits):
    """Unpickling never fails (dask's scheduler need not read the directory): fit raises."""
    X, y = digits
    cache = FeatureCache(tmp_path, share_encoders=True)
    task = pickle.dumps(FoundationClassifier(encoder(8, seed=1), cache=cache))
    [file] = encoder_files(tmp_path)
    content = file.read_bytes()
    file.write_bytes(content[:-1] + bytes([content[-1] ^ 1]))
    with pytest.raises(ValueError, match=rf"{file}.*does not hold the encoder that was pickled"):
        pickle.loads(task).fit(X, y)
    file.unlink()
    unread = pickle.loads(task)
    with pytest.raises(FileNotFoundError, match=rf"{file}.*share_encoders=False"):
        unread.fit(X, y)
    assert file.stem not in LOADED
    resent = pickle.dumps(unread)  # as the scheduler sends it on: the same reference
    file.write_bytes(content)  # where the next process can read it
    assert isinstance(pickle.loads(resent).encoder, nn.Sequential)
    assert len(resent) < 8_000


def test_an_encoder_changed_in_place_after_loading_is_written_again(tmp_path):
    cache = FeatureCache(tmp_path, share_encoders=True)
    task = pickle.dumps(FoundationClassifier(encoder(8, seed=2), cache=cache))
    loaded = pickle.loads(task)
    with torch.no_grad():
        for parameter in loaded.encoder.parameters():
            parameter.zero_()
    changed = pickle.loads(pickle.dumps(clone(loaded)))
    assert len(encoder_files(tmp_path)) == 2  # the changed weights have a file of their own
    assert all((p == 0).all() for p in changed.encoder.parameters())
    original = pickle.loads(task)  # the first file again, not the module changed since
    assert_same_state(state_of(encoder(8, seed=2)), original.encoder)


def test_a_deepcopy_of_an_encoder_changed_through_data_is_sent_as_changed(tmp_path):
    """The documented remedy for writes that bypass version counters (``.data``)."""
    cache = FeatureCache(tmp_path, share_encoders=True)
    given = encoder(8, seed=3)
    pickle.dumps(FoundationClassifier(given, cache=cache))
    for parameter in given.parameters():
        parameter.data.zero_()  # no version counter moves
    sent = pickle.loads(pickle.dumps(FoundationClassifier(copy.deepcopy(given), cache=cache)))
    assert len(encoder_files(tmp_path)) == 2
    assert all((p == 0).all() for p in sent.encoder.parameters())


def test_a_fitted_estimator_pickles_its_encoder_and_loads_elsewhere_without_the_file(
    digits, tmp_path
):
    X, y = digits
    cache = FeatureCache(tmp_path / "features", share_encoders=True)
    clf = FoundationClassifier(encoder(512), cache=cache, max_epochs=2, random_state=0).fit(X, y)
    data = pickle.dumps(clf)
    assert len(data) > len(pickle.dumps(clf.encoder)) and not encoder_files(cache.directory)
    (tmp_path / "model.pkl").write_bytes(data)
    np.save(tmp_path / "X.npy", X)
    script = textwrap.dedent(
        f"""
        import pickle, numpy as np
        clf = pickle.loads(open({str(tmp_path / "model.pkl")!r}, "rb").read())
        X = np.load({str(tmp_path / "X.npy")!r})
        np.save({str(tmp_path / "proba.npy")!r}, clf.predict_proba(X))
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    np.testing.assert_array_equal(np.load(tmp_path / "proba.npy"), clf.predict_proba(X))


def test_deepcopy_and_clone_are_as_without_sharing(tmp_path):
    cache = FeatureCache(tmp_path, share_encoders=True)
    given = encoder(8, seed=2)
    for estimator_class in (FoundationClassifier, FoundationEmbedder):
        estimator = estimator_class(given, cache=cache)
        copied = copy.deepcopy(estimator)
        assert copied.encoder is not given and copied.cache is not cache
        assert_same_state(state_of(given), copied.encoder)
        assert clone(estimator).encoder is given
    assert not encoder_files(tmp_path)  # nothing written: a copy never leaves the process


def test_an_unwritable_directory_pickles_the_encoder_with_a_warning(tmp_path):
    (tmp_path / "encoders").write_text("a file where the folder should be")
    cache = FeatureCache(tmp_path, share_encoders=True)
    given = encoder(64, seed=3)
    with pytest.warns(RuntimeWarning, match="Could not write the encoder to"):
        data = pickle.dumps(FoundationClassifier(given, cache=cache))
    assert len(data) > len(pickle.dumps(given))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_same_state(state_of(given), pickle.loads(data).encoder)


def test_clear_deletes_the_encoder_files(tmp_path):
    cache = FeatureCache(tmp_path, share_encoders=True)
    pickle.dumps(FoundationClassifier(encoder(8, seed=4), cache=cache))
    (tmp_path / "encoders" / "notes.txt").write_text("not ours")
    assert len(encoder_files(tmp_path)) == 2
    cache.clear()
    assert [file.name for file in encoder_files(tmp_path)] == ["notes.txt"]


def test_a_search_serialises_and_hashes_its_encoder_once_until_it_changes(tmp_path, monkeypatch):
    """Every task pickles the same encoder: it is written once, re-written only once changed."""
    import sklearn_finetune._shared_encoders as shared

    saved: list[str] = []
    save = torch.save

    def counting_save(obj, *args, **kwargs):
        if isinstance(obj, nn.Module):
            saved.append(type(obj).__name__)
        return save(obj, *args, **kwargs)

    monkeypatch.setattr(shared.torch, "save", counting_save)
    cache = FeatureCache(tmp_path, share_encoders=True)
    given = encoder(16, seed=3)
    clf = FoundationClassifier(given, cache=cache)
    tasks = [pickle.dumps(clone(clf)) for _ in range(4)]
    assert len(saved) == 1 and len(set(tasks)) == 1
    with torch.no_grad():
        next(given.parameters()).add_(1.0)
    pickle.dumps(clone(clf))
    assert len(saved) == 2 and len(encoder_files(tmp_path)) == 2
    for file in encoder_files(tmp_path):
        file.unlink()
    pickle.dumps(clone(clf))  # its file was deleted (clear()): written again
    assert len(saved) == 3 and len(encoder_files(tmp_path)) == 1
