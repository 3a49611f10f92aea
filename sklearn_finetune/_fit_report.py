"""What a fit says when it ends: a diverged loss, an interrupt, a cap reached before convergence.

Called by ``FoundationEstimator.fit`` once training has ended; each warning's
``stacklevel`` points at the user's call of ``fit``.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from sklearn.exceptions import ConvergenceWarning

if TYPE_CHECKING:
    from ._estimator import FoundationEstimator
    from ._net import FoundationNet
    from ._plan import FitPlan


def warn_if_interrupted(estimator: FoundationEstimator, plan: FitPlan, net: FoundationNet) -> bool:
    """Say so when a ``KeyboardInterrupt`` ended mini-batch training, and what was kept.

    skorch ends its loop on a ``KeyboardInterrupt`` and runs
    ``on_train_end``, so the estimator is fitted and usable: with validation
    data it holds the best epoch's weights, otherwise the last epoch's. A
    callback's hook raising it is how skorch's callbacks end training on
    purpose (``n_iter_no_change``, a diverged loss, skorch's
    ``EarlyStopping`` or any of the user's): the net names that callback in
    ``stopped_by_``, and nothing is said. Otherwise it was Ctrl-C (or a
    job's signal turned into one), and the warning says so.
    """
    if net.stopped_by_ is not None:
        return False
    mid_epoch = "train_loss" not in net.history[-1]  # the interrupt came inside a step
    if not (mid_epoch or (plan.solver != "lbfgs" and estimator.n_iter_ < plan.max_epochs)):
        return False
    if plan.solver == "lbfgs":
        kept = "the head's weights where L-BFGS stopped (its initial ones if it had not begun)"
    elif estimator.best_epoch_ is not None and estimator.restore_best_weights:
        kept = f"the weights of epoch {estimator.best_epoch_}, the best so far"
    else:
        kept = "the weights it had when it stopped"
    warnings.warn(
        f"Training was interrupted (KeyboardInterrupt) during or after epoch "
        f"{estimator.n_iter_} of max_epochs={plan.max_epochs}. The estimator is fitted and "
        f"holds {kept}; n_iter_ and history_ say where it stopped. Call fit again to "
        "train from the start.",
        UserWarning,
        stacklevel=5,
    )
    return True


def check_finite_loss(estimator: FoundationEstimator, net: FoundationNet, plan: FitPlan) -> None:
    """Refuse a fit whose loss diverged, or warn that the best finite epoch is kept."""
    diverged = dict(net.callbacks_)["finite_loss"].diverged_
    if diverged is None:
        return
    epoch, column, value = diverged
    convergence = dict(net.callbacks_).get("convergence")
    best = None if convergence is None else convergence.best_epoch_
    hint = (
        f"Lower lr (now {estimator.lr}), set max_grad_norm, or use precision='32'."
        if plan.solver != "lbfgs"
        else "Scale X (e.g. StandardScaler) or raise weight_decay."
    )
    if best is None or not estimator.restore_best_weights:
        raise ValueError(
            f"Training diverged: {column} is {value} at epoch {epoch}, and no earlier "
            f"epoch's weights were kept. {hint}"
        )
    warnings.warn(
        f"Training diverged: {column} is {value} at epoch {epoch}; training stopped "
        f"and the weights of epoch {best}, the best before it, are kept. {hint}",
        RuntimeWarning,
        stacklevel=5,
    )


def warn_if_not_converged(
    estimator: FoundationEstimator, plan: FitPlan, net: FoundationNet, convergence: Any
) -> None:
    """A ``ConvergenceWarning`` when ``max_epochs`` ended training, as scikit-learn's.

    Mini-batch training that a callback ended (``n_iter_no_change``, or the
    user's own rule such as skorch's ``EarlyStopping``) has met a stopping
    rule, not the cap: no warning. L-BFGS warns when its iterations reached
    the cap, whatever ended the epoch.
    """
    if plan.solver == "lbfgs":
        if estimator.n_iter_ >= plan.max_epochs:
            linear = "Ridge" if estimator._task() == "regression" else "LogisticRegression"
            warnings.warn(
                f"lbfgs failed to converge within max_epochs={plan.max_epochs} "
                f"iterations (largest gradient entry still above tol={estimator.tol}). "
                "Increase max_epochs, or standardise the features: batch_norm=True does, "
                f"so that the probe solves StandardScaler + {linear}'s problem (by torch's "
                f"L-BFGS) instead of {linear}'s on the raw features.",
                ConvergenceWarning,
                stacklevel=5,
            )
        return
    if plan.n_iter_no_change is None or convergence is None or net.stopped_by_ is not None:
        return
    if convergence.best_epoch_ is None:  # never defined: UndefinedMetricWarning said so
        return
    warnings.warn(
        f"max_epochs={plan.max_epochs} was reached before {convergence.monitor} went "
        f"n_iter_no_change={plan.n_iter_no_change} epochs in a row without improving by "
        f"more than tol={estimator.tol}: the optimization has not converged. Increase "
        "max_epochs, or set n_iter_no_change=None to train a fixed number of epochs "
        "without this warning.",
        ConvergenceWarning,
        stacklevel=5,
    )
