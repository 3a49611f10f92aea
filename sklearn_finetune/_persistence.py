"""Fitted estimators saved and loaded without pickle: weights in safetensors, the rest in JSON.

A saved estimator is a directory of two files: ``weights.safetensors`` (the
trained tensors) and ``estimator.json`` (the parameters, the fitted
attributes, the training history, the versions). Loading reads data only:
the estimator's class is looked up by name in a fixed table, the model is
rebuilt by this package's own code from the parameters, and the tensors must
fit it exactly. No pickle, no ``eval``, no import of a name read from a file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from sklearn.utils.validation import check_is_fitted
from skorch.history import History
from torch import nn

from ._checkpoint import _listed
from ._classifier import FoundationClassifier
from ._device import forked_random_state, resolve_device
from ._encoder import mlp_backbone, prepare_encoder, preserved_modes
from ._estimator import FoundationEstimator, loader_settings
from ._fingerprint import encoder_fingerprint
from ._json_values import decode_value, encode_value, history_json
from ._module import FoundationModule
from ._net import build_net
from ._plan import FitPlan, Validation
from ._regressor import FoundationRegressor
from ._representation import Representation

#: The widest representation a file may describe: a crafted width would
#: otherwise make the loader allocate a head of any size.
MAX_WIDTH = 2**24

#: Written into every ``estimator.json``; a file of another format is refused.
FORMAT = "sklearn_finetune-estimator-1"
CONFIG_FILE = "estimator.json"
WEIGHTS_FILE = "weights.safetensors"

#: The only classes a file can name: looked up here, never imported.
ESTIMATORS: dict[str, type[FoundationEstimator]] = {
    cls.__name__: cls for cls in (FoundationClassifier, FoundationRegressor)
}

#: Fitted attributes stored in the JSON file, by class, then those every estimator has.
FITTED = {
    "FoundationClassifier": ("classes_", "multilabel_"),
    "FoundationRegressor": ("n_outputs_", "target_mean_", "target_scale_"),
}
SHARED_FITTED = ("input_shape_", "solver_", "n_iter_", "best_epoch_")
OPTIONAL_FITTED = ("n_features_in_", "feature_names_in_")

#: How the encoder is restored: ``"built"``, the MLP of ``encoder=None``,
#: weights in the file; ``"stored"``, the given encoder's architecture with
#: the file's weights (it trained); ``"given"``, the given frozen encoder
#: itself, not in the file, checked by fingerprint.
EncoderKind = str


def _encoder_kind(estimator: FoundationEstimator) -> EncoderKind:
    if estimator.encoder is None:
        return "built"
    return "given" if estimator.module_.frozen else "stored"


def _fingerprint(encoder: nn.Module, estimator: FoundationEstimator) -> str:
    """The frozen encoder's digest; device-independent, so a GPU-fitted probe loads on a CPU."""
    return encoder_fingerprint(
        encoder,
        output_key=estimator.output_key,
        pooling=estimator.pooling,
        device=torch.device("cpu"),
    )


def _head_width(head: nn.Module) -> int:
    """The representation width a built-in head takes: its first linear layer's input."""
    return next(m.in_features for m in head.modules() if isinstance(m, nn.Linear))


def _tensors_to_save(module: FoundationModule, kind: EncoderKind) -> dict[str, torch.Tensor]:
    """The module's tensors on the CPU, without the given frozen encoder's, none sharing memory."""
    tensors = {}
    storages = set()
    for name, value in module.state_dict().items():
        if kind == "given" and not name.startswith("head."):
            continue
        if not isinstance(value, torch.Tensor):
            raise ValueError(
                f"The model's state {name!r} is a {type(value).__name__}, not a tensor; "
                "only tensors can be saved."
            )
        tensor = value.detach().cpu().contiguous()
        if tensor.untyped_storage().data_ptr() in storages:  # tied weights: a copy each
            tensor = tensor.clone()
        storages.add(tensor.untyped_storage().data_ptr())
        tensors[name] = tensor
    return tensors


def save_estimator(estimator: FoundationEstimator, path: str | os.PathLike) -> None:
    """Save a fitted estimator as safetensors weights and JSON, to load without pickle.

    ``path`` becomes a directory holding ``weights.safetensors`` (the
    trained tensors, on the CPU) and ``estimator.json`` (the parameters,
    the fitted attributes such as ``classes_`` and the target scaling, the
    history, and the versions). A frozen encoder is not stored, only a
    fingerprint of it: :func:`load_estimator` is given the encoder again and
    refuses a different one. A fine-tuned encoder, and the MLP of
    ``encoder=None``, are stored. ``cache`` is stored as ``True`` unless it
    is ``False`` (a path or a ``FeatureCache`` belongs to this machine).
    ``accelerator`` is stored as None; with one set, only its main process
    writes (as ``Accelerator.save``), and the others return at once: call
    ``accelerator.wait_for_everyone()`` before another process reads it.

    Read more in the :ref:`User Guide <saving>`.

    Parameters
    ----------
    estimator : FoundationClassifier or FoundationRegressor
        A fitted estimator whose parameters JSON can hold: a ``head``,
        ``pooling`` or ``solver`` given as code, ``callbacks``, a ``val_split``
        of data or a ``RandomState`` are refused with a ValueError naming
        them, as are labels other than ints, floats, bools and strings.
    path : str or path-like
        The directory to write (created if needed; the two files are
        replaced if present).

    See Also
    --------
    load_estimator : Load what this function saved.
    load_weights : Load only an encoder's pretrained weights (a state dict,
        a Lightning checkpoint, a safetensors file).
    FoundationClassifier : One of the estimators it saves.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from sklearn.datasets import load_digits
    >>> from torch import nn
    >>> from sklearn_finetune import FoundationClassifier, load_estimator, save_estimator
    >>> X, y = load_digits(return_X_y=True)
    >>> encoder = nn.Sequential(nn.Linear(64, 32), nn.ReLU())  # a pretrained one in practice
    >>> clf = FoundationClassifier(encoder, random_state=0).fit(X / 16, y)
    >>> with tempfile.TemporaryDirectory() as directory:
    ...     save_estimator(clf, directory)
    ...     loaded = load_estimator(directory, encoder=encoder)
    >>> np.array_equal(loaded.predict_proba(X / 16), clf.predict_proba(X / 16))
    True
    """
    from . import __version__

    check_is_fitted(estimator, "net_")
    name = type(estimator).__name__
    if ESTIMATORS.get(name) is not type(estimator):
        raise TypeError(
            f"save_estimator saves {' and '.join(ESTIMATORS)}; got {type(estimator).__qualname__}."
        )
    params = estimator.get_params(deep=False)
    del params["encoder"]
    params["cache"] = params["cache"] is not False
    accelerator = params["accelerator"]
    params["accelerator"] = None  # a handle on this launch's processes, not a setting
    kind = _encoder_kind(estimator)
    fitted = {
        attribute: encode_value(getattr(estimator, attribute), attribute, arrays=True)
        for attribute in (*FITTED[name], *SHARED_FITTED, *OPTIONAL_FITTED)
        if hasattr(estimator, attribute)
    }
    config = {
        "format": FORMAT,
        "estimator": name,
        "versions": {
            "sklearn_finetune": __version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
        },
        "params": {key: encode_value(value, key) for key, value in params.items()},
        "fitted": fitted,
        "module": {
            "encoder": kind,
            "frozen": estimator.module_.frozen,
            "width": _head_width(estimator.module_.head),
            "encoder_fingerprint": (
                _fingerprint(estimator.encoder_, estimator) if kind == "given" else None
            ),
        },
        "history": [
            history_json(entry, f"[{epoch}]") for epoch, entry in enumerate(estimator.history_)
        ],
    }
    weights = safetensors.torch.save(
        _tensors_to_save(estimator.module_, kind), metadata={"format": "pt"}
    )
    config["weights_sha256"] = hashlib.sha256(weights).hexdigest()
    if accelerator is not None and not accelerator.is_main_process:
        return  # one process writes, as accelerate's Accelerator.save
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    # Each file is replaced whole (written beside it, then renamed), the weights
    # first: a save cut short leaves the old JSON, whose digest refuses new weights.
    _replace(directory / WEIGHTS_FILE, weights)
    _replace(directory / CONFIG_FILE, json.dumps(config, indent=1).encode("utf-8"))


def _replace(file: Path, content: bytes) -> None:
    """Write ``content`` to ``file`` atomically: a temporary file beside it, then a rename."""
    temporary = file.with_name(f".{file.name}.{os.getpid()}.tmp")
    try:
        temporary.write_bytes(content)
        os.replace(temporary, file)
    finally:
        temporary.unlink(missing_ok=True)


def _read_config(directory: Path) -> dict[str, Any]:
    missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{str(directory)!r} is not a saved estimator: {' and '.join(missing)} "
            "missing (save_estimator writes a directory holding both)."
        )
    config = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else None
        raise ValueError(
            f"{str(directory / CONFIG_FILE)!r} has format {found!r}; this version of "
            f"sklearn_finetune reads {FORMAT!r}."
        )
    if config.get("estimator") not in ESTIMATORS:
        raise ValueError(
            f"{str(directory / CONFIG_FILE)!r} names the estimator "
            f"{config.get('estimator')!r:.80}; only {sorted(ESTIMATORS)} are loaded."
        )
    return config


def _check_tensors(
    found: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], path: Path
) -> None:
    """Refuse tensors that do not fit the rebuilt model, naming every key that differs."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    misfit = [
        f"{key!r} (file {tuple(found[key].shape)} {found[key].dtype}, model "
        f"{tuple(expected[key].shape)} {expected[key].dtype})"
        for key in sorted(set(found) & set(expected))
        if found[key].shape != expected[key].shape or found[key].dtype != expected[key].dtype
    ]

    def more(names: list[str]) -> str:
        return f" and {len(names) - 8} more" if len(names) > 8 else ""

    problems = [
        f"{label}: {listed}"
        for label, names, listed in (
            ("missing keys", missing, _listed(missing)),
            ("unexpected keys", unexpected, _listed(unexpected)),
            ("mis-shaped keys", misfit, ", ".join(misfit[:8]) + more(misfit)),
        )
        if names
    ]
    if problems:
        raise ValueError(
            f"The weights in {str(path)!r} do not fit the model rebuilt from its parameters "
            f"and the given encoder; {'; '.join(problems)}. Pass the encoder (architecture) "
            "the estimator was fitted with."
        )


def _inference_plan(
    estimator: FoundationEstimator,
    backbone: nn.Module,
    representation: Representation,
    *,
    frozen: bool,
    device: torch.device,
) -> FitPlan:
    """A plan for :func:`build_net` to rebuild a net that predicts; it will not train."""
    return FitPlan(
        regime="frozen" if frozen else "fine_tune",
        solver=estimator.solver_,
        weight_decay=0.0,
        max_epochs=1,
        n_iter_no_change=None,
        encoder=backbone,
        representation=representation,
        device=device,
        cache=None,
        targets=(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)),
        validation=Validation(),
        blocks=None,
    )


def load_estimator(
    path: str | os.PathLike, encoder: nn.Module | None = None
) -> FoundationEstimator:
    """Load an estimator written by :func:`save_estimator`, running no code from the files.

    The class is looked up by name among this package's estimators, the
    model is rebuilt from the stored parameters (and ``encoder``), and the
    stored tensors must fit it exactly: missing, unexpected and mis-shaped
    keys are named in a ValueError. ``device="auto"`` resolves here; a
    device this machine lacks falls back to the CPU with a warning.

    Read more in the :ref:`User Guide <saving>`.

    Parameters
    ----------
    path : str or path-like
        The directory :func:`save_estimator` wrote.
    encoder : torch.nn.Module or None, default=None
        The ``encoder`` the estimator was fitted with. Required unless it
        was fitted with ``encoder=None``. A frozen encoder is used as it is
        and must be the same one (same structure, weights and settings, by
        fingerprint); a fine-tuned one gives the architecture, and a copy
        of it receives the stored weights. It becomes the loaded
        estimator's ``encoder`` parameter, which a refit starts from.

    Returns
    -------
    FoundationClassifier or FoundationRegressor
        Fitted: ``predict``, ``predict_proba``, ``score`` and ``net_`` work
        as after ``fit`` (the net is rebuilt to predict; its optimizer
        starts afresh).

    See Also
    --------
    save_estimator : Write the directory this function reads.
    load_weights : Load only an encoder's pretrained weights (a state dict,
        a Lightning checkpoint, a safetensors file).
    FoundationRegressor : One of the estimators it rebuilds.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from sklearn.datasets import load_diabetes
    >>> from sklearn_finetune import FoundationRegressor, load_estimator, save_estimator
    >>> X, y = load_diabetes(return_X_y=True)
    >>> reg = FoundationRegressor(max_epochs=5, random_state=0).fit(X, y)  # MLP from scratch
    >>> with tempfile.TemporaryDirectory() as directory:
    ...     save_estimator(reg, directory)
    ...     loaded = load_estimator(directory)
    >>> np.array_equal(loaded.predict(X), reg.predict(X)), loaded.n_iter_
    (True, 5)
    """
    if encoder is not None and not isinstance(encoder, nn.Module):
        raise TypeError(f"encoder must be a torch.nn.Module or None; got {type(encoder).__name__}.")
    try:
        return _load(Path(path), encoder)
    except (KeyError, AttributeError, TypeError, IndexError, RecursionError) as error:
        raise ValueError(
            f"{str(path)!r} does not hold an estimator this version can load: its "
            f"estimator.json is malformed ({type(error).__name__}: {error})."
        ) from error
    except safetensors.SafetensorError as error:
        raise ValueError(
            f"{str(path)!r} does not hold an estimator this version can load: its "
            f"{WEIGHTS_FILE} is damaged ({error})."
        ) from error


def _load(directory: Path, encoder: nn.Module | None) -> FoundationEstimator:
    """:func:`load_estimator`'s work; a malformed file surfaces as the errors it wraps."""
    from . import __version__

    config = _read_config(directory)
    cls = ESTIMATORS[config["estimator"]]
    params = {name: decode_value(value, name) for name, value in config["params"].items()}
    unknown = sorted((set(params) - set(cls._get_param_names())) | ({"encoder"} & set(params)))
    if unknown:
        raise ValueError(f"The file sets parameters {cls.__name__} does not take: {unknown}.")
    saved_version = config["versions"]["sklearn_finetune"]
    if saved_version != __version__:
        warnings.warn(
            f"This estimator was saved by sklearn_finetune {saved_version} and is loaded by "
            f"{__version__}; its predictions may differ. Refit it, or load it with "
            f"sklearn_finetune=={saved_version}.",
            UserWarning,
            stacklevel=2,
        )
    estimator = cls(encoder=encoder, **params)
    estimator._validate_params()
    names = (*FITTED[cls.__name__], *SHARED_FITTED)
    fitted = config["fitted"]
    if not set(names) <= set(fitted) or not set(fitted) <= {*names, *OPTIONAL_FITTED}:
        raise ValueError(f"The file's fitted attributes {sorted(fitted)} are not {cls.__name__}'s.")
    for name, value in fitted.items():
        setattr(estimator, name, decode_value(value, name))
    spec = config["module"]
    kind, frozen, width = spec["encoder"], spec["frozen"], spec["width"]
    consistent = (kind == "given" and frozen is True) or (
        kind in ("built", "stored") and isinstance(frozen, bool) and (kind == "built" or not frozen)
    )
    if not consistent or type(width) is not int or not 0 < width <= MAX_WIDTH:
        raise ValueError(
            f"The file's module description is not one this package writes: encoder={kind!r}, "
            f"frozen={frozen!r}, width={width!r}."
        )
    if (kind == "built") != (encoder is None):
        raise ValueError(
            "This estimator was fitted with encoder=None (its MLP is in the file): call "
            "load_estimator without an encoder."
            if kind == "built"
            else "This estimator was fitted with an encoder; pass it: "
            "load_estimator(path, encoder=...)."
        )
    if kind == "given":
        assert encoder is not None
        if _fingerprint(encoder, estimator) != spec["encoder_fingerprint"]:
            raise ValueError(
                "The encoder given is not the frozen encoder this estimator was fitted with "
                "(its structure, weights or plain attributes differ, by fingerprint). A "
                "frozen encoder is not stored in the file: pass the same pretrained encoder."
            )
    device = resolve_device(estimator.device)
    weights = (directory / WEIGHTS_FILE).read_bytes()
    if hashlib.sha256(weights).hexdigest() != config["weights_sha256"]:
        raise ValueError(
            f"{str(directory / WEIGHTS_FILE)!r} is not the weights file {CONFIG_FILE} was "
            "saved with (its SHA-256 differs): a save was cut short, or a file was replaced. "
            "Save the estimator again."
        )
    tensors = safetensors.torch.load(weights)
    not_finite = sorted(
        key
        for key, value in tensors.items()
        if value.is_floating_point() and not value.isfinite().all()
    )
    if not_finite:
        raise ValueError(
            f"The weights in {directory / WEIGHTS_FILE} hold NaN or infinity: "
            f"{_listed(not_finite)}."
        )
    # Building the layers draws their initial weights: keep the caller's torch random state.
    user_encoder = contextlib.nullcontext() if encoder is None else preserved_modes(encoder)
    with forked_random_state([]), user_encoder:
        backbone: nn.Module
        if encoder is None:  # kind "built", checked above
            backbone = mlp_backbone(estimator.input_shape_).to(device)
        elif kind == "stored":
            backbone = prepare_encoder(encoder, trainable=True, device=device)
        else:
            backbone = encoder
        head = estimator._build_head(width, device)
        representation = Representation(estimator.output_key, estimator.pooling)
        module = FoundationModule(backbone, representation, head, frozen=frozen)
        expected = {
            key: value
            for key, value in module.state_dict().items()
            if kind != "given" or key.startswith("head.")
        }
        _check_tensors(tensors, expected, directory / WEIGHTS_FILE)
        if kind == "given":
            head.load_state_dict(
                {key.removeprefix("head."): value for key, value in tensors.items()}
            )
        else:
            module.load_state_dict(tensors)
        settings = loader_settings(
            frozen=module.frozen, array_input=not isinstance(estimator.input_shape_, dict)
        )
        trained = head if module.frozen else module
        plan = _inference_plan(
            estimator, backbone, representation, frozen=module.frozen, device=device
        )
        net = build_net(estimator, plan, trained, train_split=None, **settings).initialize()
        module.eval()
    net.history = History(config["history"])
    estimator.module_ = module
    estimator.net_ = net
    estimator.encoder_ = backbone
    estimator.history_ = net.history
    estimator.device_ = device
    return estimator
