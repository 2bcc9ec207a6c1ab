"""Helpers shared by the op files: the optional Triton import, dtype codes of the C++ extension,
accumulation dtypes and the CSR segment helpers of the torch backends.

The oracle (``reference.py``) keeps its own plain-PyTorch code and imports nothing from here.
"""

from __future__ import annotations

import torch

try:  # Triton is optional: kernels are defined only when it imports (never compiled here).
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the environment
    triton = None
    tl = None

# the C++ extension's dtype codes (enum DType in csrc/common.h)
DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}
SUPPORTED_DTYPES = tuple(DTYPE_CODE)


def acc_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any tensor is float64, else float32 (16-bit inputs accumulate in float32)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def segment_ids(indptr: torch.Tensor, n: int | None = None) -> torch.Tensor:
    """Segment id of each row of a CSR layout: ``[N]`` int64."""
    sizes = indptr[1:] - indptr[:-1]
    return torch.repeat_interleave(torch.arange(sizes.numel(), device=indptr.device), sizes, output_size=n)


def bounded_indptr(indptr: torch.Tensor, n: int) -> torch.Tensor:
    """``indptr`` made contiguous and forced into a valid CSR layout over ``n`` rows (clamped to
    ``[0, n]``, non-decreasing, first 0, last ``n``) on the device, without a host sync.

    Unchanged for a valid layout. The Triton kernels index through ``indptr`` without bounds checks,
    so their launchers pass it through this: an invalid layout given with ``validate=False`` then
    yields unspecified values, never an out-of-bounds access.
    """
    bounded = torch.cummax(indptr.clamp(0, n), 0).values
    if bounded.numel() > 0:
        bounded[-1] = n
        bounded[0] = 0
    return bounded.contiguous()


def bounded_labels(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``labels`` made contiguous and clamped to ``[0, num_classes)`` on the device (no host sync):
    what the Triton launchers hand their kernels, which gather ``logits[i, labels[i]]`` unchecked."""
    return labels.clamp(0, num_classes - 1).contiguous()


def normalize_segment_weights(weights: torch.Tensor, indptr: torch.Tensor, normalize: str) -> torch.Tensor:
    """``ŵ`` of ``segment_blend``; a zero-sum segment gives zeros under ``"sum"``."""
    k = indptr.numel() - 1
    seg = segment_ids(indptr, weights.shape[0])
    if normalize == "none":
        return weights
    if normalize == "sum":
        total = torch.zeros(k, dtype=weights.dtype, device=weights.device).index_add(0, seg, weights)
        zero = total == 0
        safe = torch.where(zero, torch.ones_like(total), total)
        return torch.where(zero[seg], torch.zeros_like(weights), weights / safe[seg])
    if normalize == "softmax":
        peak = torch.full((k,), float("-inf"), dtype=weights.dtype, device=weights.device)
        peak = peak.scatter_reduce(0, seg, weights, reduce="amax", include_self=True)
        e = torch.exp(weights - peak[seg])
        z = torch.zeros(k, dtype=weights.dtype, device=weights.device).index_add(0, seg, e)
        return e / z[seg]
    raise ValueError(f"normalize must be 'sum', 'softmax' or 'none'; got {normalize!r}")
