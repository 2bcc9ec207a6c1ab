"""The Blend shared out over the ranks of a ``torch.distributed`` process group (docs/method.md §1.3).

The Blend loss ``L = (1/K) Σ_i (1/D) ‖f_m(x̃_i) − μ_i‖²`` is a sum of independent per-cluster terms
and SGD with momentum acts on each cluster's weights alone, so optimising the clusters in parts
gives the same blends as optimising all ``K`` together, provided every term keeps the global
``1/K`` scale (``blend_clusters(loss_clusters=K)``). :func:`blend_sharded` shares the clusters out
over the ranks, balanced by member count (:func:`fastblend.distributed.balanced_shards`); each rank
blends its shard in chunks (:func:`fastblend.condensation.blend.blend_chunked`) and the results are
all-gathered, so every rank returns the single-process result.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import distributed as dist
from .blend import BlendResult, Fetch, blend_chunked

__all__ = ["blend_sharded"]


def _comm_device(device: torch.device) -> torch.device:
    """Where collectives run: the rank's GPU under NCCL, else the CPU (gloo)."""
    backend = torch.distributed.get_backend() if dist.is_distributed() else "gloo"
    return device if backend == "nccl" and device.type == "cuda" else torch.device("cpu")


def _member_positions(indptr: torch.Tensor, clusters: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR positions of the members of ``clusters`` (in that order) and their own ``[k+1]`` offsets."""
    sizes = (indptr[1:] - indptr[:-1])[clusters]
    own = torch.zeros(clusters.numel() + 1, dtype=torch.int64)
    torch.cumsum(sizes, 0, out=own[1:])
    total = int(own[-1])
    return (indptr[clusters].repeat_interleave(sizes, output_size=total) + torch.arange(total)
            - own[:-1].repeat_interleave(sizes, output_size=total)), own


def blend_sharded(fetch: Fetch, indptr: torch.Tensor, matcher: nn.Module, *, member_chunk: int | None,
                  device: torch.device, sample_shape: tuple, dtype: torch.dtype,
                  member_features: Fetch | None = None, **kw) -> BlendResult:
    """:func:`blend_chunked` with the clusters shared out over the ranks of the default process group.

    Each rank blends the clusters :func:`fastblend.distributed.balanced_shards` gives it (by member
    count; every term scaled by the global K) and reads only their members; blends, weights, terms and
    history are then all-gathered, so every rank returns the same :class:`BlendResult`, in CSR order,
    as a single process. ``sample_shape``/``dtype`` shape an empty shard's blends. A collective: under
    a process group every rank must make the same call, and it communicates whatever the data (an
    empty shard, or no cluster at all, still gathers). Without a process group: :func:`blend_chunked`.
    """
    indptr = indptr.cpu()
    k = indptr.numel() - 1
    if not dist.is_distributed():
        return blend_chunked(fetch, indptr, matcher, member_chunk=member_chunk, loss_clusters=k, device=device,
                             member_features=member_features, **kw)
    sizes = indptr[1:] - indptr[:-1]
    shards = [torch.tensor(s, dtype=torch.int64) for s in dist.balanced_shards(sizes, dist.world_size())]
    mine = shards[dist.rank()]
    # CSR positions of this rank's members, and the shard's own CSR offsets
    positions, my_indptr = _member_positions(indptr, mine)

    def local_fetch(p: torch.Tensor) -> torch.Tensor:
        return fetch(positions[p])

    local_feats = None if member_features is None else (lambda p: member_features(positions[p]))
    part = blend_chunked(local_fetch, my_indptr, matcher, member_chunk=member_chunk, loss_clusters=k, device=device,
                         member_features=local_feats, **kw)
    if part.blended.dim() != len(sample_shape) + 1:  # an empty shard
        part.blended = torch.zeros((0,) + tuple(sample_shape), dtype=dtype, device=device)
    comm = _comm_device(device)

    def gather(t: torch.Tensor) -> torch.Tensor:
        return dist.all_gather_rows(t.detach().to(comm)).to(device)

    order = torch.cat(shards)  # gathered row -> cluster id
    inv = torch.empty_like(order)
    inv[order] = torch.arange(k)
    all_pos = torch.cat([_member_positions(indptr, s)[0] for s in shards])
    m_inv = torch.empty_like(all_pos)
    m_inv[all_pos] = torch.arange(all_pos.numel())
    wdtype = part.weights.dtype if part.weights.numel() else dtype
    weights = gather(part.weights.to(wdtype))[m_inv.to(device)]
    w_hat = gather(part.normalized_weights.to(wdtype))[m_inv.to(device)]
    tdtype = part.final_terms.dtype if part.final_terms.numel() else dtype
    blended = gather(part.blended.to(dtype))[inv.to(device)]
    initial = gather(part.initial_terms.to(tdtype))[inv.to(device)]
    final = gather(part.final_terms.to(tdtype))[inv.to(device)]
    info = dist.all_gather_objects((part.loss_history, part.seconds_targets, part.seconds_iterations,
                                    part.seconds_final))
    histories = [h for h, *_ in info if h]
    history = [sum(vals) for vals in zip(*histories)] if histories else []
    return BlendResult(weights=weights, normalized_weights=w_hat, blended=blended, initial_terms=initial,
                       final_terms=final, loss_history=history,
                       seconds_targets=max(i[1] for i in info), seconds_iterations=max(i[2] for i in info),
                       seconds_final=max(i[3] for i in info))
