"""Which backend runs each op, and why.

``backend="auto"`` (the default of every op) picks Triton for CUDA tensors and the C++
extension for CPU tensors, falling back to PyTorch. Environment variables:

* ``FASTBLEND_BACKEND=triton|cpp|torch|auto`` replaces ``"auto"``; an explicit ``backend=`` wins.
* ``FASTBLEND_NO_CPP=1`` behaves as if the C++ extension were not built.
* ``TRITON_INTERPRET=1`` (set before fastblend is imported) lets the Triton backend run on CPU
  tensors in Triton's interpreter; ``"auto"`` never picks it.
"""

from __future__ import annotations

from .ops._dispatch import (
    BACKENDS,
    Explanation,
    cpp_extension,
    cpp_unavailable_reason,
    op_names,
    resolve,
    triton_unavailable_reason,
)
from .ops._dispatch import explain as _explain


def explain(op_name: str, *tensors: object, backend: str = "auto") -> Explanation:
    """Say which backend would run ``op_name`` on ``tensors`` and why each other one would not.

    >>> print(fastblend.explain("segment_blend", x, w, indptr))   # doctest: +SKIP
    segment_blend: runs on backend 'cpp'
      triton: Triton kernels need CUDA tensors (or TRITON_INTERPRET=1 for the slow interpreter)
      torch: available, lower priority
    """
    return _explain(op_name, *tensors, backend=backend)


def available_backends() -> dict[str, str | None]:
    """Each backend mapped to ``None`` if it can run at all here, else the reason it cannot."""
    return {"triton": triton_unavailable_reason(), "cpp": cpp_unavailable_reason(), "torch": None}


__all__ = ["BACKENDS", "Explanation", "available_backends", "cpp_extension", "explain", "op_names", "resolve"]
