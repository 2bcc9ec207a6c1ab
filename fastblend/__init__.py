"""fastblend: fast kernels for approximate machine unlearning (Blend condensation + A-AMU)."""

from .backend import available_backends, explain
from .data import load_dataset
from .grouping import Clustering, extract_features, group
from .ops import segment_blend

__version__ = "0.1.0"

__all__ = [
    "Clustering",
    "__version__",
    "available_backends",
    "explain",
    "extract_features",
    "group",
    "load_dataset",
    "segment_blend",
]
