"""fastblend's kernels: one module per op (Triton + C++ launcher + torch.library op) and
``reference`` (plain PyTorch). Nothing here imports the rest of the package."""

from .quantile_mmd import quantile_mmd, quantile_transform
from .segment_blend import segment_blend

__all__ = ["quantile_mmd", "quantile_transform", "segment_blend"]
