"""fastblend's kernels: one module per op (Triton + C++ launcher + torch.library op) and
``reference`` (plain PyTorch). Nothing here imports the rest of the package."""

from .segment_blend import segment_blend

__all__ = ["segment_blend"]
