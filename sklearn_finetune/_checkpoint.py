"""Pretrained weights into an encoder: state dicts, Lightning checkpoints, safetensors."""

from __future__ import annotations

import os
import pickle
import re
import warnings
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

WeightsSource = str | os.PathLike | Mapping

#: How many names an error or warning lists before it says "and N more".
_LISTED = 8


def _listed(names: list[str]) -> str:
    shown = ", ".join(map(repr, names[:_LISTED]))
    return shown if len(names) <= _LISTED else f"{shown} and {len(names) - _LISTED} more"


def _read(path: Path) -> Any:
    """The file's content, without running any code from it."""
    if not path.is_file():
        raise FileNotFoundError(f"No weights file at {str(path)!r}.")
    if path.suffix == ".safetensors":
        return load_file(path, device="cpu")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        found = f" (it holds {reason.group(1)})" if reason else ""
        raise ValueError(
            f"{str(path)!r} holds Python objects that only running code from the file "
            f"could rebuild{found}, so it was refused (loading uses "
            f"torch.load(weights_only=True)). "
            f"Save the weights alone, torch.save(model.state_dict(), path) or a "
            f".safetensors file; or, if you trust the file, load it yourself with "
            f"torch.load(path, weights_only=False) and pass the resulting dict."
        ) from exc


def _tensors(content: Any, path: str = "") -> dict[str, torch.Tensor]:
    """Every tensor in a nested mapping, under its dotted path."""
    found: dict[str, torch.Tensor] = {}
    for key, value in content.items():
        name = f"{path}{key}"
        if isinstance(value, torch.Tensor):
            found[name] = value
        elif isinstance(value, Mapping):
            found.update(_tensors(value, f"{name}."))
    return found


def checkpoint_tensors(source: WeightsSource) -> dict[str, torch.Tensor]:
    """The named tensors of a weights file or mapping, as :func:`load_weights` sees them.

    A mapping holding a ``"state_dict"`` mapping (PyTorch Lightning, MoCo
    and many others) is read from that; any other nesting (``{"model":
    {...}}``) is flattened with dots (``"model.layer.weight"``). Entries that
    are not tensors (epochs, hyperparameters) are left out.

    Parameters
    ----------
    source : str, path-like or mapping
        A ``.safetensors`` file, a file written by ``torch.save`` (``.pt``,
        ``.pth``, ``.ckpt``, ``.bin``), or an already loaded mapping.

    Returns
    -------
    dict of str to torch.Tensor
    """
    content = source if isinstance(source, Mapping) else _read(Path(source))
    if not isinstance(content, Mapping):
        raise TypeError(
            f"The weights must be a mapping of names to tensors; {source!r} holds a "
            f"{type(content).__name__}."
        )
    if isinstance(content.get("state_dict"), Mapping):
        content = content["state_dict"]
    return _tensors(content)


def _prefix_hints(names: list[str], wanted: set[str]) -> list[str]:
    """Prefixes which, stripped from ``names``, give the most keys in ``wanted``."""
    counts: Counter = Counter()
    for name in names:
        parts = name.split(".")
        for cut in range(len(parts)):
            if ".".join(parts[cut:]) in wanted:
                counts[".".join(parts[:cut]) + "." if cut else ""] += 1
                break
    return [prefix for prefix, _ in counts.most_common(3)]


def load_weights(
    encoder: nn.Module,
    source: WeightsSource,
    *,
    prefix: str = "",
    allow_missing: bool = False,
) -> nn.Module:
    """Load pretrained weights into ``encoder``, checking that every one of them arrives.

    The keys that start with ``prefix`` are selected and the prefix is
    stripped, so the backbone of a larger saved model (a Lightning module's
    ``model.backbone.``, a MoCo ``module.encoder_q.``) loads into the bare
    encoder. Nothing from the file is executed: ``torch.load`` runs with
    ``weights_only=True`` and files holding other Python objects are
    refused. Everything is checked before any weight is copied, so on error
    the encoder is unchanged.

    Read more in the :ref:`User Guide <checkpoints>`.

    Parameters
    ----------
    encoder : torch.nn.Module
        The model to load into, in place (as ``load_state_dict`` does).
    source : str, path-like or mapping
        A ``.safetensors`` file (needs the ``safetensors`` package, in the
        ``hf`` extra), a file written by ``torch.save`` (``.pt``, ``.pth``,
        ``.ckpt``, ``.bin``) or a mapping already loaded; see
        :func:`checkpoint_tensors` for how nested content is read.
    prefix : str, default=""
        Only keys starting with it are loaded, with it removed.
    allow_missing : bool, default=False
        An entry of ``encoder.state_dict()`` that the file does not provide
        is a ``ValueError`` naming it (with the prefixes that would match,
        when some would); ``True`` turns that into a warning and keeps the
        encoder's own values for those.

    Returns
    -------
    torch.nn.Module
        ``encoder``, for chaining.

    Raises
    ------
    ValueError
        For missing keys (unless allowed), shape mismatches, and files that
        would run code.

    Warns
    -----
    UserWarning
        Naming the keys under ``prefix`` that the encoder does not have
        (they are not loaded), and the missing keys when allowed.

    See Also
    --------
    load_estimator : Load a whole fitted estimator written by
        :func:`save_estimator`.
    FoundationClassifier : Takes the loaded encoder, to probe or fine-tune it.
    OnlineProbe : Scores an encoder while it pretrains, before its weights
        are saved.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from sklearn_finetune import load_weights
    >>> trained = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> checkpoint = {"state_dict": {f"model.backbone.{k}": v
    ...                              for k, v in trained[:2].state_dict().items()}}
    >>> encoder = load_weights(nn.Sequential(nn.Linear(4, 8), nn.ReLU()), checkpoint,
    ...                        prefix="model.backbone.")
    >>> torch.equal(encoder[0].weight, trained[0].weight)
    True
    """
    if not isinstance(encoder, nn.Module):
        raise TypeError(f"encoder must be a torch.nn.Module; got {type(encoder).__name__}.")
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a string such as 'model.backbone.'; got {prefix!r}.")
    tensors = checkpoint_tensors(source)
    selected = {
        name[len(prefix) :]: value for name, value in tensors.items() if name.startswith(prefix)
    }
    own = encoder.state_dict()
    missing = [name for name in own if name not in selected]
    unexpected = [name for name in selected if name not in own]
    if missing and not allow_missing:
        hints = [hint for hint in _prefix_hints(list(tensors), set(own)) if hint != prefix]
        hint = (
            f" The keys in the file match the encoder's with prefix "
            f"{' or '.join(map(repr, hints))}."
            if hints
            else ""
        )
        raise ValueError(
            f"{len(missing)} of the encoder's {len(own)} weights are not in the file "
            f"under prefix {prefix!r}: {_listed(missing)}.{hint} Pass the prefix that "
            f"selects the backbone, or allow_missing=True to keep the encoder's own "
            f"values for those."
        )
    mismatched = [
        f"{name} {tuple(selected[name].shape)} vs {tuple(own[name].shape)}"
        for name in own
        if name in selected and selected[name].shape != own[name].shape
    ]
    if mismatched:
        raise ValueError(
            f"Shapes in the file differ from the encoder's (file vs encoder): "
            f"{_listed(mismatched)}. The encoder must be built with the same "
            f"configuration as the one that was saved."
        )
    if missing:
        warnings.warn(
            f"Not in the file, kept as they were: {_listed(missing)}.", UserWarning, stacklevel=2
        )
    if unexpected:
        warnings.warn(
            f"In the file under prefix {prefix!r} but not in the encoder, not loaded: "
            f"{_listed(unexpected)}.",
            UserWarning,
            stacklevel=2,
        )
    encoder.load_state_dict(
        {name: selected[name] for name in own if name in selected}, strict=False
    )
    return encoder
