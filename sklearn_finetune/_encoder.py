"""How the user's encoder is held: shared when frozen, copied when trained, its modes restored."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


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
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
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
