"""The split (F-sampling, docs/method.md §1.2): which clusters a forget set touches, which stay free.

Touched clusters (at least one member forgotten) keep their non-forgotten members as residual
rows; every non-empty free cluster is blended into one image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..grouping import Clustering
from ..ops._common import segment_ids

__all__ = ["Split", "split_clusters"]


@dataclass
class Split:
    """Which clusters are touched by a forget set, and where their members go."""

    touched: torch.Tensor  # [K] bool
    free_ids: torch.Tensor  # [K_free] int64, non-empty free clusters
    touched_ids: torch.Tensor  # [K_touched] int64
    members: torch.Tensor  # [M] int64 training indices of free members, CSR order
    free_indptr: torch.Tensor  # [K_free + 1] int64
    member_pos: torch.Tensor  # [M] int64 positions of those members in the clustering's CSR order
    residual: torch.Tensor  # [R_res] int64 training indices, CSR order


def split_clusters(clustering: Clustering, forget: torch.Tensor) -> Split:
    """Vectorised F-sampling over the CSR layout (CPU index tensors)."""
    indptr = clustering.indptr.cpu()
    perm = clustering.perm.cpu()
    k = indptr.numel() - 1
    sizes = indptr[1:] - indptr[:-1]
    touched = torch.zeros(k, dtype=torch.bool)
    touched[clustering.assignment.cpu()[forget]] = True
    free = ~touched & (sizes > 0)
    seg = segment_ids(indptr, perm.numel())  # cluster of each CSR position
    in_free = free[seg]
    member_pos = torch.nonzero(in_free).flatten()
    free_ids = torch.nonzero(free).flatten()
    free_indptr = torch.zeros(free_ids.numel() + 1, dtype=torch.int64)
    torch.cumsum(sizes[free_ids], 0, out=free_indptr[1:])
    res_pos = touched[seg] & ~forget[perm]
    return Split(touched=touched, free_ids=free_ids, touched_ids=torch.nonzero(touched).flatten(),
                 members=perm[member_pos], free_indptr=free_indptr, member_pos=member_pos,
                 residual=perm[res_pos])
