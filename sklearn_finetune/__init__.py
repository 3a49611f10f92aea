"""Any pretrained PyTorch encoder as a scikit-learn estimator.

>>> from sklearn_finetune import FoundationClassifier, FoundationRegressor
"""

from ._cache import FeatureCache
from ._checkpoint import load_weights
from ._classifier import FoundationClassifier
from ._embedder import FoundationEmbedder
from ._persistence import load_estimator, save_estimator
from ._plotting import HistoryDisplay
from ._probes import OnlineProbe, knn_probe_score, linear_probe_score
from ._regressor import FoundationRegressor
from ._text import Tokenizer

__all__ = [
    "FeatureCache",
    "FoundationClassifier",
    "FoundationEmbedder",
    "FoundationRegressor",
    "HistoryDisplay",
    "OnlineProbe",
    "Tokenizer",
    "knn_probe_score",
    "linear_probe_score",
    "load_estimator",
    "load_weights",
    "save_estimator",
]
__version__ = "0.2.0.dev0"
