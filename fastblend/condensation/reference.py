"""The literal per-cluster Blend of docs/method.md §1.2–1.3: the test oracle and the benchmark baseline.

Not public API and imported by no module of the package (only tests and benchmarks import it, as
they do ``fastblend.ops.reference``).

One cluster, one blended image, one matcher forward and one backward at a time, the way the
published reference code condenses; the loss of each cluster is divided by K so that the summed
gradients are those of ``L = (1/K) Σ_i (1/D) ‖f_m(x̃_i) − μ_i‖²``, and a single SGD (momentum 0.5)
steps all clusters' weights once per iteration. :func:`condense_reference` is the research code's
post-request Blend: it blends a request's ``K_free`` free clusters, so each steps by ``lr/K_free``;
fastblend's :class:`fastblend.BlendIndex` steps each by ``lr/K_all`` (all non-empty clusters). They
agree when nothing is forgotten, and for a request with ``lr · K_free / K_all`` passed here.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from .._device import synchronize
from .._progress import bar as progress_bar
from ..grouping import Clustering
from .blend import MOMENTUM, BlendResult, check_matcher, embed_fn, matcher_dtype
from .checks import check_clustering, prepare_inputs
from .recipe import blend_lr, make_matcher
from .reduced import ReducedRetainSet

__all__ = ["blend_clusters_reference", "condense_reference"]


def _normalize(w: torch.Tensor, normalize: str) -> torch.Tensor:
    if normalize == "sum":
        return w / w.sum()
    if normalize == "softmax":
        return torch.softmax(w, 0)
    raise ValueError(f"blend_clusters_reference: normalize must be 'sum' or 'softmax', got {normalize!r}")


def _blend_one(members: torch.Tensor, w: torch.Tensor, normalize: str) -> torch.Tensor:
    w_hat = _normalize(w, normalize)
    return (w_hat.reshape((-1,) + (1,) * (members.dim() - 1)) * members).sum(0)


def blend_clusters_reference(x: torch.Tensor, indptr: torch.Tensor, matcher: nn.Module, *, lr: float,
                             iterations: int = 12, normalize: str = "sum", progress: bool = False) -> BlendResult:
    """Same contract as :func:`fastblend.condensation.blend_clusters`, as a Python loop over clusters."""


    bounds = indptr.tolist()
    clusters = [x[s:e] for s, e in zip(bounds[:-1], bounds[1:])]
    k = len(clusters)
    if k == 0:
        empty = x.new_zeros(0)
        return BlendResult(empty, empty, x.new_zeros((0,) + tuple(x.shape[1:])), empty, empty, [])
    if any(c.shape[0] == 0 for c in clusters):
        raise ValueError("blend_clusters_reference: every segment of indptr must be non-empty")
    embed = embed_fn(matcher)
    device = x.device
    synchronize(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        targets = [embed(c).mean(0) for c in clusters]
    weights = [torch.full((c.shape[0],), 1.0 / c.shape[0], dtype=x.dtype, device=device, requires_grad=True)
               for c in clusters]
    opt = torch.optim.SGD(weights, lr=lr, momentum=MOMENTUM, weight_decay=0.0)
    synchronize(device)
    t1 = time.perf_counter()
    history: list[float] = []
    initial_terms = None
    for _ in progress_bar(range(iterations), desc="blend (loop)", progress=progress, leave=False):
        opt.zero_grad(set_to_none=True)
        terms = []
        for members, w, mu in zip(clusters, weights, targets):
            feat = embed(_blend_one(members, w, normalize)[None])[0]
            term = (feat - mu).pow(2).mean()
            (term / k).backward()
            terms.append(term.detach())
        if initial_terms is None:
            initial_terms = torch.stack(terms)
        history.append(float(torch.stack(terms).mean()))
        opt.step()
    synchronize(device)
    t2 = time.perf_counter()
    with torch.no_grad():
        blended = torch.stack([_blend_one(c, w, normalize) for c, w in zip(clusters, weights)])
        final_terms = torch.stack([(embed(b[None])[0] - mu).pow(2).mean() for b, mu in zip(blended, targets)])
        raw = torch.cat([w.detach() for w in weights])
        w_hat = torch.cat([_normalize(w.detach(), normalize) for w in weights])
    synchronize(device)
    t3 = time.perf_counter()
    return BlendResult(weights=raw, normalized_weights=w_hat, blended=blended,
                       initial_terms=initial_terms if initial_terms is not None else final_terms,
                       final_terms=final_terms, loss_history=history, seconds_targets=t1 - t0,
                       seconds_iterations=t2 - t1, seconds_final=t3 - t2)


def condense_reference(images: torch.Tensor, labels: torch.Tensor, forget: object, clustering: Clustering, *,
                       iterations: int = 12, lr: float | str = "reference", normalize: str = "sum",
                       matcher: nn.Module | None = None, seed: int = 0, device: torch.device | str | None = None,
                       progress: bool = False) -> ReducedRetainSet:
    """The research code's post-request Blend with a precomputed clustering, written as loops over clusters.

    Returns the same rows in the same order (blended rows by cluster id, then residual rows).
    """
    images, labels, forget_mask, dev = prepare_inputs("condense_reference", images, labels, forget, iterations, lr,
                                                      normalize, None, device)
    clustering = check_clustering("condense_reference", clustering, labels, None)
    lr_value = blend_lr(clustering.ipc) if lr == "reference" else float(lr)
    forgotten = set(torch.nonzero(forget_mask).flatten().tolist())
    perm, bounds = clustering.perm.cpu().tolist(), clustering.indptr.cpu().tolist()

    t0 = time.perf_counter()
    free, touched, free_members, residual = [], [], [], []
    for c in range(clustering.num_clusters):
        members = perm[bounds[c] : bounds[c + 1]]
        if any(i in forgotten for i in members):
            touched.append(c)
            kept = [i for i in members if i not in forgotten]
            residual += kept
        elif members:
            free.append(c)
            free_members.append(members)
    t1 = time.perf_counter()

    net, mseed = make_matcher("condense_reference", matcher, images, seed, 0, dev)
    dtype = matcher_dtype(net, images.dtype)
    flat = [i for m in free_members for i in m]
    indptr = torch.tensor([0] + [len(m) for m in free_members], dtype=torch.int64).cumsum(0)
    x = images[torch.tensor(flat, dtype=torch.int64, device=images.device)].to(device=dev, dtype=dtype)
    if x.shape[0]:
        check_matcher(net, x[:4], "condense_reference")
    result = blend_clusters_reference(x, indptr, net, lr=lr_value, iterations=iterations, normalize=normalize,
                                      progress=progress)
    synchronize(dev)
    t2 = time.perf_counter()

    n_blend, n_res = len(free), len(residual)
    res_idx = torch.tensor(residual, dtype=torch.int64)
    cc = clustering.cluster_class.cpu()
    retain = int((~forget_mask).sum())
    return ReducedRetainSet(
        images=torch.cat([result.blended.to(device=images.device, dtype=images.dtype),
                          images[res_idx.to(images.device)]]),
        labels=torch.cat([cc[torch.tensor(free, dtype=torch.int64)].to(torch.int64),
                          labels.cpu()[res_idx]]).to(labels.device),
        is_blended=torch.tensor([True] * n_blend + [False] * n_res, dtype=torch.bool),
        source_cluster=torch.tensor(free + [-1] * n_res, dtype=torch.int64),
        source_index=torch.tensor([-1] * n_blend + residual, dtype=torch.int64),
        free_clusters=torch.tensor(free, dtype=torch.int64), touched_clusters=torch.tensor(touched, dtype=torch.int64),
        compression=retain / (n_blend + n_res),
        timings={"features": 0.0, "grouping": 0.0, "split": t1 - t0, "blend": t2 - t1,
                 "blend_targets": result.seconds_targets, "blend_iterations": result.seconds_iterations,
                 "blend_final": result.seconds_final},
        final_loss=result.final_loss, initial_loss=result.initial_loss,
        settings=dict(iterations=iterations, lr=lr_value, normalize=normalize, seed=seed, matcher_seed=mseed,
                      matcher="random_convnet" if mseed is not None else type(net).__name__, ipc=clustering.ipc,
                      chunk_size=None, round=0, device=str(dev), implementation="reference loop"),
        blend_members=torch.tensor(flat, dtype=torch.int64), blend_weights=result.normalized_weights.cpu(),
        blend_indptr=indptr, loss_history=result.loss_history,
    )
