"""The straightforward per-class k-means that fastblend's grouping is measured against.

Written in the style of the published reference: one class at a time, plain k-means++ seeding, Lloyd
iterations with a vectorised assignment but a Python loop over clusters for the centroid update,
same stopping rule as docs/method.md §1.1 (sum of L2 centroid shifts < tol, at most niter), empty clusters
re-seeded on a random point. Not part of the package: a benchmark baseline only.
"""

from __future__ import annotations

import torch


def straightforward_kmeans(x: torch.Tensor, k: int, niter: int = 100, tol: float = 1e-4,
                           seed: int = 0) -> torch.Tensor:
    """Local cluster id of each row of ``x [n, D]`` (``n > k``), ``[n]`` int64."""
    gen = torch.Generator(device=x.device).manual_seed(seed)
    n = x.shape[0]
    centroids = [x[int(torch.randint(n, (1,), generator=gen))]]
    mind = ((x - centroids[0]) ** 2).sum(1)
    for _ in range(1, k):
        nxt = x[int(torch.multinomial(mind, 1, generator=gen))]
        centroids.append(nxt)
        mind = torch.minimum(mind, ((x - nxt) ** 2).sum(1))
    centroids = torch.stack(centroids)
    for _ in range(niter):
        assign = torch.cdist(x, centroids).argmin(1)
        new = centroids.clone()
        for j in range(k):
            members = x[assign == j]
            if members.shape[0]:
                new[j] = members.mean(0)
            else:
                new[j] = x[int(torch.randint(n, (1,), generator=gen))]
        shift = float((new - centroids).norm(dim=1).sum())
        centroids = new
        if shift < tol:
            break
    return torch.cdist(x, centroids).argmin(1)


def straightforward_group(features: torch.Tensor, labels: torch.Tensor, ipc: int, niter: int = 100,
                          tol: float = 1e-4, seed: int = 0) -> torch.Tensor:
    """Global cluster id ``class * ipc + local`` of every sample, class by class."""
    assignment = torch.empty(labels.numel(), dtype=torch.int64)
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        if idx.numel() <= ipc:
            local = torch.arange(idx.numel())
        else:
            local = straightforward_kmeans(features[idx], ipc, niter, tol, seed + c).cpu()
        assignment[idx] = c * ipc + local
    return assignment
