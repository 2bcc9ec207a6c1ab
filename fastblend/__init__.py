"""fastblend: fast kernels for approximate machine unlearning (Blend condensation + A-AMU)."""

from .backend import available_backends, explain
from .ops import segment_blend

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "available_backends",
    "explain",
    "segment_blend",
]
