"""Training losses, one value per sample, so that sample and class weights can scale them.

Each loss maps ``(outputs, targets)`` to a tensor of shape ``(batch,)``; the
net multiplies it by the sample weights and averages (see ``FoundationNet``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: Regression losses by name (the ``loss`` parameter of FoundationRegressor).
REGRESSION_LOSSES = ("squared_error", "huber")


class SoftmaxCrossEntropy(nn.Module):
    """Cross-entropy of a softmax over classes, with optional label smoothing.

    Examples
    --------
    >>> import torch
    >>> from sklearn_finetune._losses import SoftmaxCrossEntropy
    >>> SoftmaxCrossEntropy()(torch.zeros(2, 4), torch.tensor([0, 3]))
    tensor([1.3863, 1.3863])
    """

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits, target, reduction="none", label_smoothing=self.label_smoothing
        )


class SigmoidCrossEntropy(nn.Module):
    """Binary cross-entropy of one sigmoid per label, averaged over the labels (multilabel).

    Label smoothing moves each 0/1 target towards 1/2: ``y * (1 - s) + s / 2``.

    Examples
    --------
    >>> import torch
    >>> from sklearn_finetune._losses import SigmoidCrossEntropy
    >>> SigmoidCrossEntropy()(torch.zeros(1, 3), torch.tensor([[1.0, 0.0, 1.0]]))
    tensor([0.6931])
    """

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target * (1 - self.label_smoothing) + self.label_smoothing / 2
        losses = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        return losses.mean(dim=1)


class RegressionLoss(nn.Module):
    """Squared error or Huber loss, averaged over the targets.

    Parameters
    ----------
    kind : {"squared_error", "huber"}
        ``"huber"`` is quadratic within ``delta`` of the target and linear
        beyond it, so outliers pull less.
    delta : float, default=1.0
        The Huber threshold, in units of the (standardised) target.

    Examples
    --------
    >>> import torch
    >>> from sklearn_finetune._losses import RegressionLoss
    >>> outputs, targets = torch.tensor([[0.5], [3.0]]), torch.zeros(2, 1)
    >>> RegressionLoss("squared_error")(outputs, targets)
    tensor([0.2500, 9.0000])
    >>> RegressionLoss("huber")(outputs, targets)
    tensor([0.1250, 2.5000])
    """

    def __init__(self, kind: str, delta: float = 1.0) -> None:
        super().__init__()
        if kind not in REGRESSION_LOSSES:
            raise ValueError(f"loss must be one of {REGRESSION_LOSSES}; got {kind!r}.")
        self.kind = kind
        self.delta = delta

    def forward(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.kind == "huber":
            losses = F.huber_loss(outputs, target, reduction="none", delta=self.delta)
        else:
            losses = F.mse_loss(outputs, target, reduction="none")
        return losses.mean(dim=1)
