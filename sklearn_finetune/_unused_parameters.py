"""Warnings for parameters set to a value that this fit does not use.

A grid over a parameter that the chosen regime or solver ignores is a grid
over nothing, and its scores tie; scikit-learn warns the same way (for
instance ``LogisticRegression``'s ``l1_ratio`` without the elastic-net
penalty). Defaults are never warned about: only values the user chose.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._estimator import FoundationEstimator
    from ._optimization import Solver
    from ._plan import Regime


def _changed(estimator: FoundationEstimator, name: str) -> bool:
    """Whether ``name`` differs from its declared default."""
    default: Any = {field.name: field.default for field in dataclasses.fields(type(estimator))}[
        name
    ]
    value: Any = getattr(estimator, name)
    if name == "hidden_dims":
        return tuple(value) != tuple(default)
    return bool(value != default)


def warn_unused_parameters(
    estimator: FoundationEstimator, regime: Regime, solver: Solver, has_validation: bool
) -> None:
    """One ``UserWarning`` per parameter set away from its default that this fit ignores.

    ``lr`` under L-BFGS (line search), ``momentum`` without SGD,
    ``hidden_dims`` and ``dropout`` without the MLP head,
    ``backbone_lr_mult`` and ``layer_decay`` with a frozen backbone, and a
    ``scoring`` other than the loss without validation data.

    Examples
    --------
    >>> import warnings
    >>> from torch import nn
    >>> from sklearn_finetune import FoundationClassifier
    >>> from sklearn_finetune._unused_parameters import warn_unused_parameters
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     probe = FoundationClassifier(nn.Linear(4, 8), lr=0.1)
    ...     warn_unused_parameters(probe, "frozen", "lbfgs", has_validation=False)
    >>> str(caught[0].message).split(":")[0]
    'lr=0.1 has no effect on this fit'
    """
    unused: list[tuple[str, str]] = []
    if solver == "lbfgs" and _changed(estimator, "lr"):
        unused.append(
            (
                "lr",
                "L-BFGS (solver_='lbfgs', the linear probe) takes its steps by line search. "
                "Search weight_decay (LogisticRegression's C) instead, or set solver='adamw' "
                "to train the head by lr",
            )
        )
    if solver != "sgd" and _changed(estimator, "momentum"):
        unused.append(("momentum", f"it is solver='sgd''s, and this fit's solver is {solver!r}"))
    if estimator.head != "mlp":
        for name in ("hidden_dims", "dropout"):
            if _changed(estimator, name):
                unused.append((name, f"it shapes head='mlp', and this head is {estimator.head!r}"))
    if regime == "frozen":
        for name in ("backbone_lr_mult", "layer_decay"):
            if _changed(estimator, name):
                unused.append((name, "the backbone is frozen: only the head trains"))
    if estimator.scoring != "loss" and not has_validation:
        unused.append(
            (
                "scoring",
                f"this fit holds out no validation data (val_split={estimator.val_split!r}, "
                f"solver {solver!r}), so no score picks an epoch. Pass val_split (a fraction "
                "or (X_val, y_val)) to use it, or leave scoring='loss'",
            )
        )
    for name, why in unused:
        warnings.warn(
            f"{name}={getattr(estimator, name)!r} has no effect on this fit: {why}.",
            UserWarning,
            stacklevel=6,  # here, plan_fit, _fit, fit, scikit-learn's wrapper, the caller
        )
