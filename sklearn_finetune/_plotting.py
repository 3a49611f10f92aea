"""HistoryDisplay: the training history of a fitted estimator, plotted (matplotlib optional)."""

from __future__ import annotations

from typing import Any

from sklearn.utils.validation import check_is_fitted

#: The score plotted beside the losses when ``scoring`` is the loss itself.
DEFAULT_SCORES = ("valid_accuracy", "valid_r2")


def _pyplot() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(
            "HistoryDisplay needs matplotlib: pip install 'sklearn-finetune[plot]' "
            "(or pip install matplotlib)."
        ) from exc
    return plt


class HistoryDisplay:
    """Training and validation loss per epoch, with a validation score on a second axis.

    Build it with :meth:`from_estimator`. The best epoch (``best_epoch_``,
    whose weights a fit with ``restore_best_weights`` keeps) is marked by a
    vertical line. Needs matplotlib (the ``plot`` extra).

    Read more in the :ref:`User Guide <history-display>`.

    Parameters
    ----------
    history : skorch.History
        One row per epoch, as in ``history_``.
    score : str or None, default=None
        A history column to plot on the right axis, e.g. ``"valid_roc_auc"``.
    best_epoch : int or None, default=None
        The epoch to mark.

    Attributes
    ----------
    ax_ : matplotlib.axes.Axes
        The losses' axes.
    score_ax_ : matplotlib.axes.Axes or None
        The score's axes (a twin of ``ax_``).
    figure_ : matplotlib.figure.Figure
        The figure holding them.
    lines_ : dict of str to matplotlib.lines.Line2D
        The plotted curves by history column.

    See Also
    --------
    FoundationClassifier : Its ``history_`` and ``best_epoch_``.
    FoundationRegressor : The same for regression.
    OnlineProbe : Adds an ``online_probe`` column to plot as ``score``.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from sklearn.datasets import load_digits
    >>> from torch import nn
    >>> from sklearn_finetune import FoundationClassifier, HistoryDisplay
    >>> X, y = load_digits(return_X_y=True)
    >>> clf = FoundationClassifier(nn.Linear(64, 16), solver="adamw", max_epochs=3)
    >>> clf = clf.fit(X / 16, y)
    >>> sorted(HistoryDisplay.from_estimator(clf, score="valid_roc_auc").lines_)
    ['train_loss', 'valid_loss', 'valid_roc_auc']
    """

    def __init__(
        self, *, history: Any, score: str | None = None, best_epoch: int | None = None
    ) -> None:
        self.history = history
        self.score = score
        self.best_epoch = best_epoch

    def plot(self, ax: Any = None) -> HistoryDisplay:
        """Draw the curves on ``ax`` (a new figure when None).

        Parameters
        ----------
        ax : matplotlib.axes.Axes or None, default=None
            Where to draw the losses.

        Returns
        -------
        HistoryDisplay
            ``self``, with ``ax_``, ``score_ax_``, ``figure_`` and ``lines_`` set.
        """
        plt = _pyplot()
        if ax is None:
            _, ax = plt.subplots()
        epochs = self.history[:, "epoch"]
        self.lines_ = {}
        for column in ("train_loss", "valid_loss"):
            if column in self.history[-1]:
                (self.lines_[column],) = ax.plot(epochs, self.history[:, column], label=column)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        self.score_ax_ = None
        if self.score is not None:
            self.score_ax_ = ax.twinx()
            (self.lines_[self.score],) = self.score_ax_.plot(
                epochs, self.history[:, self.score], color="tab:green", label=self.score
            )
            self.score_ax_.set_ylabel(self.score)
        if self.best_epoch is not None:
            ax.axvline(self.best_epoch, color="grey", linestyle=":", label="best epoch")
        handles = list(ax.get_lines())
        if self.score_ax_ is not None:
            handles += self.score_ax_.get_lines()
        ax.legend(handles=handles, loc="best")
        self.ax_, self.figure_ = ax, ax.figure
        return self

    @classmethod
    def from_estimator(
        cls, estimator: Any, *, score: str | None = None, ax: Any = None
    ) -> HistoryDisplay:
        """Plot a fitted FoundationClassifier's or FoundationRegressor's ``history_``.

        Parameters
        ----------
        estimator : FoundationClassifier or FoundationRegressor
            Fitted.
        score : str or None, default=None
            The history column for the right axis. None: ``valid_<scoring>``
            when ``scoring`` is not the loss, else ``valid_accuracy`` or
            ``valid_r2``; nothing without validation data.
        ax : matplotlib.axes.Axes or None, default=None
            Where to draw the losses.

        Returns
        -------
        HistoryDisplay
        """
        check_is_fitted(estimator, "history_")
        history = estimator.history_
        if score is None:
            candidates: tuple[str, ...] = DEFAULT_SCORES
            if estimator.scoring != "loss":
                candidates = (f"valid_{estimator.scoring}",)
            score = next((name for name in candidates if name in history[-1]), None)
        elif score not in history[-1]:
            raise ValueError(
                f"score={score!r} is not in the history; its columns are "
                f"{sorted(k for k in history[-1] if k != 'batches')}."
            )
        return cls(history=history, score=score, best_epoch=estimator.best_epoch_).plot(ax)
