"""A backbone's ordered blocks: what layer-wise rates and top-down unfreezing act on."""

from __future__ import annotations

from torch import nn


def _block_list(encoder: nn.Module) -> tuple[str, list[str]] | None:
    """The ``nn.ModuleList``/``nn.Sequential`` with the most children that hold parameters.

    Returns its qualified name and the names of those children, or None when
    no such container has at least two of them. The shallowest container
    wins a tie.
    """
    best = None
    for name, module in encoder.named_modules():
        if not isinstance(module, (nn.ModuleList, nn.Sequential)):
            continue
        children = [
            child_name
            for child_name, child in module.named_children()
            if any(True for _ in child.parameters())
        ]
        if len(children) >= 2 and (best is None or len(children) > len(best[1])):
            best = (name, children)
    return best


def backbone_blocks(encoder: nn.Module) -> list[list[str]]:
    """The encoder's parameter names grouped into blocks, from the input up.

    The blocks are found as fine-tuning recipes (BEiT, MAE, ULMFiT) number
    layers: the ``nn.ModuleList`` or ``nn.Sequential`` with the most children
    that hold parameters (a transformer's layers, a ``Sequential``'s
    layers) gives one block per such child; parameters registered before
    it (embeddings, a stem) form the bottom block and those after it (a
    final norm, a pooler) the top block. Parameters whose ``requires_grad``
    is False are listed too; they stay fixed regardless.

    Parameters
    ----------
    encoder : torch.nn.Module
        The backbone.

    Returns
    -------
    list of list of str
        Parameter names (as in ``encoder.named_parameters()``), bottom block
        first.

    Raises
    ------
    ValueError
        When the encoder has no container of at least two blocks.

    Examples
    --------
    >>> from torch import nn
    >>> from sklearn_finetune._blocks import backbone_blocks
    >>> backbone_blocks(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)))
    [['0.weight', '0.bias'], ['2.weight', '2.bias']]
    """
    found = _block_list(encoder)
    if found is None:
        raise ValueError(
            f"Could not find ordered blocks in the encoder ({type(encoder).__name__}): "
            "layer_decay and unfreeze_mode='top_down' need an nn.ModuleList or "
            "nn.Sequential of at least two layers with parameters (as in "
            "transformers' encoder.layer or a Sequential backbone)."
        )
    container, children = found
    prefix = f"{container}." if container else ""
    index = {child: position for position, child in enumerate(children)}
    before: list[str] = []
    after: list[str] = []
    blocks: list[list[str]] = [[] for _ in children]
    for name, _ in encoder.named_parameters():
        child = name[len(prefix) :].split(".", 1)[0] if name.startswith(prefix) else None
        if child in index:
            blocks[index[child]].append(name)
        elif any(blocks):
            after.append(name)
        else:
            before.append(name)
    return [block for block in (before, *blocks, after) if block]
