"""scikit-learn's own solvers for the linear probe: ``LogisticRegression`` and ``Ridge``."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge
from threadpoolctl import ThreadpoolController
from torch import nn

#: ``solve(head, features, target, weight)``: fits ``head`` in place and
#: returns the iterations run, or None when it cannot solve this problem (the
#: net then runs torch's L-BFGS on the same objective).
LinearSolver = Callable[[nn.Linear, torch.Tensor, torch.Tensor, torch.Tensor], "int | None"]


@functools.cache
def _controller() -> ThreadpoolController:
    """threadpoolctl's view of the loaded BLAS libraries, found once (a search costs ~2 ms)."""
    return ThreadpoolController()


def one_blas_thread() -> Any:
    """A context in which BLAS (numpy's, scipy's) runs on one thread."""
    return _controller().limit(limits=1, user_api="blas")


def _uniform_weight(weight: torch.Tensor) -> tuple[float, np.ndarray | None]:
    """``(scale, None)`` when every sample weight equals ``scale``, else ``(1.0, weights)``.

    scikit-learn's solvers run faster without ``sample_weight`` (LogisticRegression
    about 5%, on the digits); a uniform weight is a factor on the whole loss,
    which the caller folds into ``C`` or ``alpha``.
    """
    values = weight.detach().cpu().double().numpy()
    if len(values) and values[0] > 0 and (values == values[0]).all():
        return float(values[0]), None
    return 1.0, values


@dataclass(frozen=True)
class LogisticRegressionSolver:
    """Solve a softmax linear head's L2-penalised cross-entropy with ``LogisticRegression``.

    The head's objective is ``mean_i(w_i * CE_i) + penalty / 2 * ||W||^2``
    (biases unpenalised) over n training rows with sample weights ``w_i``;
    ``LogisticRegression(C)`` minimises ``C * sum_i(w_i * CE_i) + ||W||^2 / 2``,
    the same objective for ``C = 1 / (penalty * n)``. With two classes
    scikit-learn fits one vector ``w``, carried by the head's two rows as
    ``(-w/2, w/2)`` (the same probabilities, half the squared norm), so
    ``C = 2 / (penalty * n)``. scikit-learn's L-BFGS (scipy's, with its
    ``tol`` and ``max_iter``) is the reference a linear probe is compared
    with, and on CPU it is several times faster than ``torch.optim.LBFGS``
    on a problem this small. It runs on one BLAS thread, as the head's
    other steps run on one torch thread: the same scores whatever the
    threads of the process (a dask worker runs one), and no waiting for
    descheduled threads on a busy machine.

    Calling it, ``solve(head, features, target, weight)``, sets the
    ``nn.Linear`` head's weight, shape (n_classes, n_features), and bias
    from features (n_samples, n_features), class indices (n_samples,) and
    sample weights (n_samples,), and returns the iterations run; or returns
    None, the head untouched, when a class is missing from ``target``,
    which ``LogisticRegression`` cannot represent. (A class, not a closure,
    so that a fitted net pickles.)

    Parameters
    ----------
    penalty : float
        ``weight_decay`` of the head's objective, > 0.
    tol : float
        ``LogisticRegression``'s ``tol``.
    max_iter : int
        ``LogisticRegression``'s ``max_iter`` (the estimator's
        ``max_epochs``).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from sklearn_finetune._probe_solver import LogisticRegressionSolver
    >>> solve = LogisticRegressionSolver(penalty=0.01, tol=1e-4, max_iter=100)
    >>> features = torch.randn(30, 4)
    >>> target = (features[:, 0] > 0).long()
    >>> solve(nn.Linear(4, 2), features, target, torch.ones(30)) > 0
    True
    """

    penalty: float
    tol: float
    max_iter: int

    def __call__(
        self, head: nn.Linear, features: torch.Tensor, target: torch.Tensor, weight: torch.Tensor
    ) -> int | None:
        n_classes = head.out_features
        y = target.cpu().numpy()
        if len(np.unique(y)) != n_classes:
            return None
        scale = 2.0 if n_classes == 2 else 1.0
        uniform, sample_weight = _uniform_weight(weight)
        C = scale * uniform / (self.penalty * len(y))
        model = LogisticRegression(C=C, tol=self.tol, max_iter=self.max_iter)
        with warnings.catch_warnings(), one_blas_thread():
            warnings.simplefilter("ignore", ConvergenceWarning)  # the estimator warns, in its terms
            model.fit(features.cpu().numpy(), y, sample_weight=sample_weight)
        coef, intercept = model.coef_, model.intercept_
        if n_classes == 2:
            coef = np.concatenate([-coef, coef]) / 2
            intercept = np.concatenate([-intercept, intercept]) / 2
        with torch.no_grad():
            head.weight.copy_(torch.as_tensor(coef))
            head.bias.copy_(torch.as_tensor(intercept))
        return int(model.n_iter_[0])


@dataclass(frozen=True)
class RidgeSolver:
    """Solve a linear regression head's L2-penalised squared error with ``Ridge``, in closed form.

    The head's objective is ``mean_i(w_i * mean_j(r_ij^2)) + penalty / 2 *
    ||W||^2`` over n rows and k targets (residuals ``r``, biases
    unpenalised); ``Ridge(alpha)`` minimises ``sum_i(w_i * ||r_i||^2) + alpha
    * ||W||^2``, the same objective for ``alpha = penalty * n * k / 2``.
    Features and targets are taken in float64, as ``Ridge()`` takes a user's
    float64 array. Calling it, ``solve(head, features, target, weight)``,
    sets the ``nn.Linear`` head's weight, shape (k, n_features), and bias from
    features (n, n_features), targets (n, k) and sample weights (n,), and
    returns 1 (one solve: the probe's ``n_iter_``).

    Parameters
    ----------
    penalty : float
        ``weight_decay`` of the head's objective, > 0.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from sklearn_finetune._probe_solver import RidgeSolver
    >>> features = torch.randn(30, 4)
    >>> target = features[:, :1] * 2.0
    >>> head = nn.Linear(4, 1)
    >>> RidgeSolver(penalty=1e-6)(head, features, target, torch.ones(30))
    1
    >>> round(head.weight[0, 0].item(), 2)
    2.0
    """

    penalty: float

    def __call__(
        self, head: nn.Linear, features: torch.Tensor, target: torch.Tensor, weight: torch.Tensor
    ) -> int:
        y = target.cpu().double().numpy().reshape(len(target), -1)
        uniform, sample_weight = _uniform_weight(weight)
        alpha = self.penalty * len(y) * y.shape[1] / (2 * uniform)
        with one_blas_thread():
            model = Ridge(alpha=alpha).fit(
                features.cpu().double().numpy(), y, sample_weight=sample_weight
            )
        with torch.no_grad():
            head.weight.copy_(torch.as_tensor(model.coef_.reshape(head.weight.shape)))
            head.bias.copy_(torch.as_tensor(np.ravel(model.intercept_)))
        return 1
