"""torch.distributed plumbing shared by every stage: who am I, how to split work, how to gather it.

fastblend never starts processes itself: it uses the default process group when one is initialised
(``torchrun --nproc_per_node=P ...`` followed by ``torch.distributed.init_process_group``, or the
command line, which does that under ``torchrun``) and runs as one process otherwise. Every helper here
is the identity (or a single-rank answer) without a process group, so callers need no branches.

- :func:`is_distributed`, :func:`rank`, :func:`world_size`, :func:`is_main_process`;
- :func:`balanced_shards`: a deterministic split of weighted items (classes by size, clusters by
  member count) over ranks, the same on every rank;
- :func:`all_gather_rows`: concatenate every rank's ``[n_r, ...]`` tensor (sizes may differ) in rank
  order; :func:`all_gather_rows_with_grad` does the same inside autograd (the gradient of each rank's
  rows is the sum over ranks of the gradients that flow into them, so a loss computed identically on
  every rank and averaged by DDP gives the single-process gradient);
- :func:`row_shard`: this rank's contiguous part of a global batch (data parallelism);
- :func:`all_gather_objects`, :func:`broadcast_object`: small picklable values (timings, settings).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ._checks import plain_number

__all__ = ["all_gather_objects", "all_gather_rows", "all_gather_rows_with_grad", "balanced_shards", "barrier",
           "broadcast_object", "is_distributed", "is_main_process", "rank", "row_shard", "world_size"]


def is_distributed() -> bool:
    """``True`` when a default process group with more than one rank is initialised."""
    dist = torch.distributed
    return bool(dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1)


def rank() -> int:
    """This process's rank in the default group (0 without one)."""
    return torch.distributed.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Ranks in the default group (1 without one)."""
    return torch.distributed.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Rank 0 (the one that writes files), or the only process."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (nothing without a process group)."""
    if is_distributed():
        torch.distributed.barrier()


def balanced_shards(weights: Sequence[int] | torch.Tensor, parts: int) -> list[list[int]]:
    """Split items ``0..len(weights)-1`` into ``parts`` lists of roughly equal total weight.

    Greedy longest-processing-time: items by decreasing weight (ties by index) each go to the part
    with the smallest total so far (ties by part index). Deterministic, so every rank computes the
    same split. Each returned list is sorted ascending; a part may be empty when there are fewer
    items than parts.
    """
    parts = plain_number(parts)
    if isinstance(weights, torch.Tensor):
        if weights.is_floating_point() or weights.is_complex() or weights.dim() != 1:
            raise TypeError(f"balanced_shards: weights must be a 1-D integer tensor or a sequence of ints, got "
                            f"{weights.dtype} of shape {list(weights.shape)}")
        weights = weights.tolist()
    if isinstance(parts, bool) or not isinstance(parts, int) or parts < 1:
        raise ValueError(f"balanced_shards: parts must be an int >= 1, got {parts!r}")
    if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence):
        raise TypeError(f"balanced_shards: weights must be a sequence of ints, got {type(weights).__name__}")
    weights = [plain_number(x) for x in weights]
    bad = [x for x in weights if isinstance(x, bool) or not isinstance(x, int)]
    if bad:
        raise TypeError(f"balanced_shards: weights must be ints, got {bad[0]!r}")
    w = [int(x) for x in weights]
    if any(x < 0 for x in w):
        raise ValueError("balanced_shards: weights must be non-negative")
    totals = [0] * parts
    shards: list[list[int]] = [[] for _ in range(parts)]
    for i in sorted(range(len(w)), key=lambda j: (-w[j], j)):
        p = min(range(parts), key=lambda q: (totals[q], q))
        shards[p].append(i)
        totals[p] += w[i]
    return [sorted(s) for s in shards]


def row_shard(n: int) -> slice:
    """This rank's contiguous part of ``n`` rows of a global batch: ``slice(r·n//P, (r+1)·n//P)``.

    Concatenating every rank's part in rank order gives the rows back in their order, so a gather
    (:func:`all_gather_rows`) of per-part results is the global batch's. Parts differ by at most one
    row; a part is empty when ``n < P``. Without a process group: ``slice(0, n)``."""
    n = plain_number(n)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"row_shard: n must be an int >= 0 (rows of the global batch), got {n!r}")
    p, r = world_size(), rank()
    return slice(r * n // p, (r + 1) * n // p)


def _check_rows(fn: str, x: object) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{fn}: x must be a torch.Tensor [N, ...], got {type(x).__name__}")
    if x.dim() == 0:
        raise ValueError(f"{fn}: x must have a row dimension [N, ...], got a 0-d tensor")


def _gather_sizes(n: int, device: torch.device) -> list[int]:
    size = torch.tensor([n], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world_size())]
    torch.distributed.all_gather(sizes, size)
    return [int(s.item()) for s in sizes]


def _gather(x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    x = x.contiguous()
    sizes = _gather_sizes(x.shape[0], x.device)
    top = max(sizes)
    if all(n == top for n in sizes):
        padded = x
    else:
        padded = x.new_zeros((top,) + tuple(x.shape[1:]))
        padded[:x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    torch.distributed.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)]), sizes


def all_gather_rows(x: torch.Tensor) -> torch.Tensor:
    """``cat([x_0, ..., x_{P-1}])`` over ranks along dim 0; every rank's ``x`` must agree on the
    trailing shape and dtype (the row counts may differ; a rank may hold none). Without a process
    group: ``x``. The tensors travel on ``x``'s device (CPU for gloo, the rank's GPU for NCCL)."""
    _check_rows("all_gather_rows", x)
    if not is_distributed():
        return x
    return _gather(x)[0]


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out, sizes = _gather(x)
        ctx.start = sum(sizes[:rank()])
        ctx.n = x.shape[0]
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        torch.distributed.all_reduce(grad)  # gloo and NCCL both have all_reduce (gloo lacks reduce_scatter)
        return grad[ctx.start:ctx.start + ctx.n]


def all_gather_rows_with_grad(x: torch.Tensor) -> torch.Tensor:
    """:func:`all_gather_rows` that autograd can differentiate.

    Backward: every rank's gradient with respect to the gathered tensor is summed over ranks (one
    all-reduce) and each rank keeps its own rows. When every rank computes the same loss from the
    gathered rows, each rank's rows receive ``P`` times the single-process gradient, which DDP's
    gradient averaging divides back by ``P``. Without a process group: ``x`` itself.
    """
    _check_rows("all_gather_rows_with_grad", x)
    if not is_distributed():
        return x
    return _GatherRows.apply(x)


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's picklable ``obj``, in rank order (``[obj]`` without a process group)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s picklable ``obj`` on every rank (``obj`` without a process group)."""
    src = plain_number(src)
    if isinstance(src, bool) or not isinstance(src, int) or not 0 <= src < world_size():
        raise ValueError(f"broadcast_object: src must be a rank in [0, {world_size()}), got {src!r}")
    if not is_distributed():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]
