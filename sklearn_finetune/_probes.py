"""The standard protocols for judging a representation: linear probe, k-NN probe, online probe."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils.multiclass import type_of_target
from skorch.callbacks import Callback
from torch import nn

from ._cache import FeatureCache
from ._classifier import FoundationClassifier
from ._embedder import FoundationEmbedder
from ._encoder import module_device
from ._inputs import n_samples
from ._regressor import FoundationRegressor
from ._streamed import is_streamed_input

#: The L2 strengths linear_probe_score searches by default.
WEIGHT_DECAYS = (1e-4, 1e-3, 1e-2, 1e-1)

#: DINO's k-NN temperature: neighbours vote with weight exp(similarity / T).
KNN_TEMPERATURE = 0.07


def _is_regression(y: Any) -> bool:
    return type_of_target(y) in ("continuous", "continuous-multioutput")


def take_rows(rows: np.ndarray, data: Any) -> Any:
    """The given rows of X: of every array of a dict X, or a Dataset's rows, read later."""
    if isinstance(data, Mapping):
        return {key: np.asarray(value)[rows] for key, value in data.items()}
    if isinstance(data, torch.utils.data.Dataset):
        return torch.utils.data.Subset(data, rows.tolist())
    return data.select(rows)  # a datasets.Dataset: records the rows, reads nothing


def _cross_validated(
    model: Any, X: Any, y: Any, grid: dict[str, list] | None = None, **kwargs: Any
) -> np.ndarray:
    """``cross_val_score``, for X it cannot split too: a dict (a tokenizer's output), a Dataset.

    Such X is split by row number: the folds are drawn over ``arange(n)``
    and a first step takes those rows of every array, or of the Dataset
    (without reading them). With ``grid``, each outer fold picks the model's
    parameters by an inner 3-fold grid search.
    """
    if isinstance(X, Mapping) or (is_streamed_input(X) and not isinstance(X, np.memmap)):
        rows = FunctionTransformer(take_rows, kw_args={"data": X})
        name = type(model).__name__.lower()
        model, X = make_pipeline(rows, model), np.arange(n_samples(X))
        grid = grid and {f"{name}__{key}": values for key, values in grid.items()}
    if grid:
        model = GridSearchCV(model, grid, cv=3)
    return cross_val_score(model, X, y, **kwargs)


def linear_probe_score(
    encoder: nn.Module,
    X: Any,
    y: Any,
    *,
    weight_decay: float | Sequence[float] = WEIGHT_DECAYS,
    cv: Any = 5,
    scoring: Any = None,
    n_jobs: int | None = None,
    **params: Any,
) -> np.ndarray:
    """The linear-probe benchmark: a frozen encoder, a linear head, cross-validated.

    Each fold fits a :class:`FoundationClassifier` (a :class:`FoundationRegressor`
    when y is continuous by :func:`sklearn.utils.multiclass.type_of_target`:
    floats that are not all whole numbers) with a frozen backbone and a linear head trained by
    full-batch L-BFGS on the features standardised by the training fold
    (``batch_norm=True``: MAE's linear-probe recipe), which is
    ``StandardScaler`` then ``LogisticRegression`` (or least squares) on the
    features. Through the feature cache each sample is encoded once for all
    folds.

    Read more in the :ref:`User Guide <linear-probe-score>`.

    Parameters
    ----------
    encoder : torch.nn.Module
        The representation to judge; never changed.
    X, y : array-like, dict
        Input and labels (or targets), as for the estimators. A dict X (a
        :class:`Tokenizer`'s output) is split into folds by rows.
    weight_decay : float or sequence of float, default=(1e-4, 1e-3, 1e-2, 1e-1)
        The L2 penalty of the linear head (``weight_decay`` of the
        estimator, see ``solver="lbfgs"``). A sequence is searched inside
        each outer fold by an inner 3-fold grid search (the CLIP and
        SentEval protocol); a float fixes it.
    cv : int, cross-validation generator or iterable, default=5
        As for :func:`sklearn.model_selection.cross_val_score` (stratified
        folds for classification).
    scoring : str, callable or None, default=None
        As for ``cross_val_score``; None is accuracy (R² for regression).
    n_jobs : int or None, default=None
        Folds fitted in parallel.
    **params
        Estimator parameters that override the probe's defaults
        (``solver="lbfgs"``, ``batch_norm=True``, ``val_split=0``), such as
        ``output_key``, ``pooling``, ``cache``, ``device`` or
        ``random_state``. The backbone is always
        frozen and the head always linear.

    Returns
    -------
    ndarray of shape (n_splits,)
        One score per fold, as ``cross_val_score`` returns.

    See Also
    --------
    knn_probe_score : The k-nearest-neighbour protocol.
    OnlineProbe : This probe, every few epochs while an encoder pretrains.
    FoundationEmbedder : The same features for any scikit-learn model.
    FoundationClassifier : The estimator each fold fits.

    Examples
    --------
    >>> import numpy as np
    >>> from torch import nn
    >>> from sklearn_finetune import linear_probe_score
    >>> X, y = np.random.default_rng(0).normal(size=(60, 8)), np.arange(60) % 2
    >>> linear_probe_score(nn.Linear(8, 16), X, y, cv=3, weight_decay=1e-2).shape
    (3,)
    """
    fixed = {"freeze_backbone", "head", "unfreeze_at"} & set(params)
    if fixed:
        raise TypeError(
            f"linear_probe_score always trains a linear head on a frozen backbone; it does "
            f"not take {sorted(fixed)}. Use cross_val_score with FoundationClassifier for "
            f"other regimes."
        )
    settings = {"solver": "lbfgs", "batch_norm": True, "val_split": 0, **params}
    estimator_class = FoundationRegressor if _is_regression(y) else FoundationClassifier
    probe = estimator_class(encoder, freeze_backbone=True, head="linear", **settings)
    grid = None
    if isinstance(weight_decay, (Sequence, np.ndarray)):
        grid = {"weight_decay": [float(value) for value in weight_decay]}
    else:
        probe.set_params(weight_decay=weight_decay)
    return _cross_validated(probe, X, y, grid, cv=cv, scoring=scoring, n_jobs=n_jobs)


def temperature_weights(distances: np.ndarray) -> np.ndarray:
    """DINO's vote weights from cosine distances: ``exp(similarity / 0.07)``, up to a constant."""
    return np.exp(-np.asarray(distances) / KNN_TEMPERATURE)


def knn_probe_score(
    encoder: nn.Module,
    X: Any,
    y: Any,
    *,
    n_neighbors: int = 20,
    cv: Any = 5,
    scoring: Any = None,
    n_jobs: int | None = None,
    **embedder_params: Any,
) -> np.ndarray:
    """The k-nearest-neighbour probe of a representation, cross-validated.

    The protocol of DINO and most self-supervised papers beside the linear
    probe: each test sample takes the ``n_neighbors`` training samples
    nearest in cosine similarity, which vote with weight ``exp(similarity /
    0.07)``. Nothing is trained, so it judges the geometry of the
    representation itself. Continuous y is predicted as the weighted mean
    of the neighbours' targets.

    Read more in the :ref:`User Guide <knn-probe-score>`.

    Parameters
    ----------
    encoder : torch.nn.Module
        The representation to judge; never changed.
    X, y : array-like, dict
        Input and labels (or targets).
    n_neighbors : int, default=20
        Neighbours per vote (DINO uses 20).
    cv, scoring, n_jobs
        As for :func:`linear_probe_score`.
    **embedder_params
        Parameters of :class:`FoundationEmbedder` (``output_key``,
        ``pooling``, ``batch_size``, ``cache``, ``device``...).

    Returns
    -------
    ndarray of shape (n_splits,)

    See Also
    --------
    linear_probe_score : The linear-probe protocol.
    FoundationEmbedder : The same features in a pipeline, e.g. before
        :class:`~sklearn.neighbors.KNeighborsClassifier`.
    FeatureCache : Shared with :func:`linear_probe_score` through ``cache``,
        so each sample is encoded once for both probes.

    Examples
    --------
    >>> import numpy as np
    >>> from torch import nn
    >>> from sklearn_finetune import knn_probe_score
    >>> X, y = np.random.default_rng(0).normal(size=(60, 8)), np.arange(60) % 2
    >>> knn_probe_score(nn.Linear(8, 16), X, y, n_neighbors=5, cv=3).shape
    (3,)
    """
    neighbours = KNeighborsRegressor if _is_regression(y) else KNeighborsClassifier
    pipeline = make_pipeline(
        FoundationEmbedder(encoder, **embedder_params),
        neighbours(n_neighbors=n_neighbors, metric="cosine", weights=temperature_weights),
    )
    return _cross_validated(pipeline, X, y, cv=cv, scoring=scoring, n_jobs=n_jobs)


class OnlineProbe(Callback):
    """Score an encoder by a linear probe while it pretrains, without touching its training.

    As a skorch callback, it scores the net's encoder every ``every`` epochs
    and records the mean score in the net's history under ``name``. From any
    other training loop (Lightning, plain PyTorch) call it:
    ``score = probe(encoder)``. Either way the encoder runs in eval and
    inference mode: no gradient reaches it (its ``.grad`` are as they
    were), its train/eval flags and batch-norm statistics are restored, and
    torch's and NumPy's random states are left as they were, so a probed run
    trains exactly as an unprobed one.

    Read more in the :ref:`User Guide <online-probe>`.

    Parameters
    ----------
    X, y : array-like, dict
        The labelled set.
    every : int, default=1
        Score after every ``every``-th epoch (skorch).
    encoder : str or callable or None, default=None
        Where the encoder is in a skorch net: None is ``net.module_``, a
        dotted name an attribute path under it (``"backbone"``), a callable
        ``encoder(net)`` returns it.
    cv : int or cross-validation generator, default=3
        The probe's cross-validation (see :func:`linear_probe_score`).
    scoring : str, callable or None, default=None
        As for ``cross_val_score``; None is accuracy (R² for regression).
    name : str, default="online_probe"
        The history key.
    probe_params : dict or None, default=None
        More parameters of :func:`linear_probe_score` (``output_key``,
        ``pooling``, ``weight_decay``...). By default the probe runs on the
        encoder's own device with ``random_state=0`` and ``weight_decay=1e-2``
        (not searched: the trend over epochs is what it is for), and keeps
        no features between calls.

    Attributes
    ----------
    scores_ : list of float
        Every score computed, in order.

    See Also
    --------
    linear_probe_score : The probe each call runs.
    HistoryDisplay : Plot the history, ``online_probe`` column included.
    load_weights : Load the pretrained weights into a fresh encoder.

    Examples
    --------
    >>> import numpy as np
    >>> from torch import nn
    >>> from sklearn_finetune import OnlineProbe
    >>> X, y = np.random.default_rng(0).normal(size=(60, 8)), np.arange(60) % 2
    >>> probe = OnlineProbe(X, y, cv=2)
    >>> encoder = nn.Linear(8, 16)
    >>> for epoch in range(2):  # your pretraining loop
    ...     score = probe(encoder)
    >>> len(probe.scores_)
    2
    """

    def __init__(
        self,
        X: Any,
        y: Any,
        *,
        every: int = 1,
        encoder: str | Callable[[Any], nn.Module] | None = None,
        cv: Any = 3,
        scoring: Any = None,
        name: str = "online_probe",
        probe_params: dict[str, Any] | None = None,
    ) -> None:
        self.X = X
        self.y = y
        self.every = every
        self.encoder = encoder
        self.cv = cv
        self.scoring = scoring
        self.name = name
        self.probe_params = probe_params

    def initialize(self) -> OnlineProbe:
        if isinstance(self.every, bool) or not (isinstance(self.every, int) and self.every >= 1):
            raise ValueError(f"every must be a positive integer; got {self.every!r}.")
        self.scores_: list[float] = []
        return self

    def __call__(self, encoder: nn.Module) -> float:
        """Probe ``encoder`` now, outside a training loop: the mean cross-validated score.

        What the callback runs every ``every`` epochs, callable on its own
        (in a plain PyTorch loop, a Lightning hook): ``linear_probe_score``
        of ``encoder`` on ``X, y`` with ``cv``, ``scoring`` and
        ``probe_params`` (by default on the encoder's device, with
        ``random_state=0`` and ``weight_decay=1e-2``). The score is appended
        to ``scores_``.

        Parameters
        ----------
        encoder : torch.nn.Module
            The encoder to probe; not changed (it is frozen for the probe).

        Returns
        -------
        float
            The mean of the folds' scores.
        """
        if not hasattr(self, "scores_"):
            self.initialize()
        device = module_device(encoder)
        settings = {
            "cache": FeatureCache(),
            "device": "cpu" if device is None else device,
            "random_state": 0,
            "weight_decay": 1e-2,
            **(self.probe_params or {}),
        }
        scores = linear_probe_score(
            encoder, self.X, self.y, cv=self.cv, scoring=self.scoring, **settings
        )
        self.scores_.append(float(np.mean(scores)))
        return self.scores_[-1]

    def on_epoch_end(self, net: Any, **kwargs: Any) -> None:
        """skorch's hook: every ``every`` epochs, record the probe score in ``net.history``.

        Parameters
        ----------
        net : skorch.NeuralNet
            The net being trained; the encoder is found in ``net.module_``.
        **kwargs
            skorch's other arguments, unused.
        """
        if len(net.history) % self.every == 0:
            net.history.record(self.name, self(self._encoder_of(net)))

    def _encoder_of(self, net: Any) -> nn.Module:
        if callable(self.encoder):
            return self.encoder(net)
        module = net.module_
        if self.encoder:
            for attribute in self.encoder.split("."):
                module = getattr(module, attribute)
        return module
