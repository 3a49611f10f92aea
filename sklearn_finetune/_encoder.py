"""The backbone a fit runs: the user's encoder (shared when frozen, copied when trained, its
modes restored, shared by clones) or an MLP built for ``encoder=None``."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from math import prod
from typing import Any

import torch
from sklearn.base import BaseEstimator, clone
from torch import nn

from ._heads import mlp_layers


@contextmanager
def preserved_modes(module: nn.Module) -> Iterator[nn.Module]:
    """Restore the train/eval flag of every submodule of ``module`` on exit.

    Training and prediction switch modes (a frozen backbone is put in eval
    mode); this keeps the caller's own encoder exactly as it was handed in.

    Examples
    --------
    >>> from torch import nn
    >>> from sklearn_finetune._encoder import preserved_modes
    >>> net = nn.Sequential(nn.Linear(2, 2), nn.Dropout())
    >>> with preserved_modes(net):
    ...     _ = net.eval()
    >>> net.training
    True
    """
    modes = [(submodule, submodule.training) for submodule in module.modules()]
    try:
        yield module
    finally:
        for submodule, training in modes:
            submodule.training = training


def module_device(module: nn.Module) -> torch.device | None:
    """The device of the module's first parameter or buffer; None if it has neither."""
    for parameter in module.parameters():
        return parameter.device
    for buffer in module.buffers():
        return buffer.device
    return None


def prepare_encoder(encoder: nn.Module, *, trainable: bool, device: torch.device) -> nn.Module:
    """The encoder the estimator will run: the caller's object, or a copy.

    A frozen encoder that already lives on ``device`` is shared by reference:
    nothing will change its weights, so copying a large model would only cost
    time and memory. An encoder that will be trained, or that must move to
    another device, is deep-copied first, so the caller's object never
    changes.

    Parameters
    ----------
    encoder : torch.nn.Module
        The encoder passed to the estimator.
    trainable : bool
        Whether the backbone's weights will be updated.
    device : torch.device
        Where training runs.

    Returns
    -------
    torch.nn.Module
    """
    current = module_device(encoder)
    if not trainable and (current is None or current == device):
        return encoder
    return copy.deepcopy(encoder).to(device)


def mlp_backbone(sample_shape: Sequence[int]) -> nn.Sequential:
    """A small MLP encoder sized from the data, for ``encoder=None``.

    Flattens each sample and applies two ReLU layers of width
    ``clip(2 * n_features, 32, 256)``.

    Examples
    --------
    >>> from sklearn_finetune._encoder import mlp_backbone
    >>> mlp_backbone((1, 8, 8))[1]
    Linear(in_features=64, out_features=128, bias=True)
    """
    n_features = prod(sample_shape)
    width = min(256, max(32, 2 * n_features))
    return nn.Sequential(nn.Flatten(), *mlp_layers(n_features, (width, width)))


def clone_sharing(estimator: BaseEstimator, shared: tuple[str, ...] = ("encoder", "cache")) -> Any:
    """An unfitted copy of ``estimator`` that shares the ``shared`` parameters' objects.

    ``fit`` never changes the encoder it is given (a trained backbone is
    copied at fit time), so sharing it is safe, and it saves GridSearchCV
    and cross_val_score a deep copy of a possibly large model per candidate
    and fold. The cache is shared for the same reason a cache exists. Every
    other parameter is cloned as :func:`sklearn.base.clone` would, and so
    are metadata requests and the ``set_output`` configuration.
    """
    params = estimator.get_params(deep=False)
    kept = {name: params.pop(name) for name in shared}
    new = type(estimator)(**kept, **{k: clone(v, safe=False) for k, v in params.items()})
    for state in ("_metadata_request", "_sklearn_output_config"):
        if hasattr(estimator, state):
            setattr(new, state, copy.deepcopy(getattr(estimator, state)))
    return new
