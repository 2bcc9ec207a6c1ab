"""The batched Blend optimisation (docs/method.md §1.3): :func:`blend_clusters` and its matching terms.

Each free cluster ``i`` becomes ``x̃_i = Σ_j ŵ_ij X_ij``, its per-member weights optimised (SGD,
momentum 0.5) so that a frozen matcher ``f_m`` sees the blend like the mean of its members:

    L = (1/K) Σ_i (1/D) ‖f_m(x̃_i) − μ_i‖²,   μ_i = mean_j f_m(X_ij).

The matcher has no batch statistics (:func:`check_matcher` enforces it), so ``L`` is a sum of
independent per-cluster terms and all K clusters are optimised together: one
:func:`fastblend.segment_blend` over the CSR layout of the free clusters plus one batched
forward/backward of ``f_m`` per iteration (optionally in chunks, which is exact because the terms
are independent). :func:`blend_chunked` runs it one chunk of clusters at a time (``member_chunk``),
each term keeping the global ``1/K``. ``fastblend.condensation.reference`` holds the literal
per-cluster loop that this reproduces (the test oracle).
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .._checks import user_stacklevel
from .._device import synchronize, warn_slow_cpu_amp
from .._progress import bar as progress_bar
from ..ops import segment_blend
from ..ops._common import normalize_segment_weights
from .checks import check_member_chunk

__all__ = ["CPU_CHUNK", "MOMENTUM", "BlendResult", "blend_chunked", "blend_clusters", "check_matcher",
           "default_chunk_size", "embed_fn", "matcher_dtype", "plan_chunks"]

Fetch = Callable[[torch.Tensor], torch.Tensor]  # [m] int64 CSR positions -> [m, C, H, W] member images

MOMENTUM = 0.5
_TARGET_BATCH = 512  # inference batch for the targets when no chunk_size is given (GPU)
# On a CPU small matcher batches keep a ConvNet-3's activations in cache: measured on a 2-core
# AVX-512 machine, forward + input-gradient backward costs ~0.9-1.0 ms per 32x32 image in batches
# of 8-16 against ~1.9 ms in one batch of 420.
CPU_CHUNK = 16


def default_chunk_size(k: int, device: torch.device) -> int:
    """Blends per matcher pass when ``chunk_size`` is not given: all ``k`` at once on a GPU,
    :data:`CPU_CHUNK` on a CPU (same result either way: the loss terms are independent)."""
    return max(1, k if device.type == "cuda" else min(k, CPU_CHUNK))


def embed_fn(matcher: nn.Module, amp: bool = False,
             device: torch.device | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """``f_m`` as a function ``[B, C, H, W] -> [B, D]``: the matcher's ``embed`` if it has one, else its
    output, flattened; with ``amp`` it runs in bfloat16 on ``device`` and returns float32."""
    embed = getattr(matcher, "embed", None)
    fn = embed if callable(embed) else matcher
    if not amp:
        return lambda x: fn(x).flatten(1)
    warn_slow_cpu_amp(device, torch.bfloat16, "Blend's amp=True (condense, BlendIndex.build, blend)", user_stacklevel())

    def mixed(x: torch.Tensor) -> torch.Tensor:
        # bfloat16 matcher arithmetic, float32 in and out (targets, loss and gradients stay float32)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = fn(x)
        return out.flatten(1).float()

    return mixed


def matcher_dtype(matcher: nn.Module, fallback: torch.dtype) -> torch.dtype:
    """The dtype of the matcher's first floating parameter (``fallback`` when it has none)."""
    for p in matcher.parameters():
        if p.is_floating_point():
            return p.dtype
    return fallback


def check_matcher(matcher: nn.Module, probe: torch.Tensor, caller: str = "check_matcher") -> None:
    """Refuse a matcher whose output for a sample depends on the rest of its batch.

    The batched Blend equals the per-cluster optimisation only when ``f_m(batch)[i] == f_m(x_i)``.
    BatchNorm in training mode breaks that by construction (it is refused without running it, so
    its running statistics are not touched); any other module is tested empirically on ``probe``
    (``[B, C, H, W]``, a few real images): the batched output must match sample-by-sample outputs.
    """
    if not isinstance(matcher, nn.Module):
        raise TypeError(f"{caller}: matcher must be a torch.nn.Module, got {type(matcher).__name__}")
    for name, module in matcher.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training:
            raise ValueError(
                f"{caller}: matcher module {name or type(module).__name__!r} is a BatchNorm in training mode; "
                "its batch statistics make each blended image's features depend on the other clusters "
                "in the batch, so the batched Blend would not equal the per-cluster optimisation. "
                "Call matcher.eval() or use a network without batch statistics (e.g. instance/group norm)")
    if probe.shape[0] < 2:
        probe = torch.cat([probe, 0.5 - probe.flip(-1)])
    embed = embed_fn(matcher)
    with torch.no_grad():
        together = embed(probe)
        alone = torch.cat([embed(probe[i : i + 1]) for i in range(probe.shape[0])])
    if together.shape != alone.shape:
        raise ValueError(f"{caller}: matcher output shape depends on the batch size "
                         f"({list(together.shape)} batched vs {list(alone.shape)} one at a time)")
    scale = float(alone.abs().max()) if alone.numel() else 0.0
    tol = (1e-9 if together.dtype == torch.float64 else 1e-4) * max(scale, 1.0)
    diff = float((together - alone).abs().max()) if alone.numel() else 0.0
    if not math.isfinite(diff) or diff > tol:
        raise ValueError(
            f"{caller}: the matcher's output for a sample depends on the rest of its batch (or is random): "
            f"batched vs one-at-a-time features differ by {diff:.3g} (tolerance {tol:.3g}). The batched "
            "Blend needs a per-sample matcher (eval mode, no batch statistics, no dropout)")


@dataclass
class BlendResult:
    """What a Blend optimisation returns (batched or reference loop).

    Attributes:
        weights: ``[M]`` raw optimised weights (CSR order of the blended clusters).
        normalized_weights: ``[M]`` ``ŵ`` (sum or softmax normalised within each cluster).
        blended: ``[K, C, H, W]`` blends with the final weights.
        initial_terms / final_terms: ``[K]`` per-cluster ``‖f_m(x̃_i) − μ_i‖² / D`` at the start and
            for the output (``L`` is their mean).
        loss_history: ``L`` before each optimiser step.
        seconds_targets / seconds_iterations / seconds_final: wall time of the target pass, of the
            optimisation loop and of the final blend + loss evaluation.
    """

    weights: torch.Tensor
    normalized_weights: torch.Tensor
    blended: torch.Tensor
    initial_terms: torch.Tensor
    final_terms: torch.Tensor
    loss_history: list
    seconds_targets: float = 0.0
    seconds_iterations: float = 0.0
    seconds_final: float = 0.0

    @property
    def initial_loss(self) -> float:
        return float(self.initial_terms.mean()) if self.initial_terms.numel() else math.nan

    @property
    def final_loss(self) -> float:
        return float(self.final_terms.mean()) if self.final_terms.numel() else math.nan


def _segment_mean_targets(embed, x: torch.Tensor, indptr: torch.Tensor, batch: int,
                          backend: str) -> torch.Tensor:
    """``μ_i = mean_j f_m(X_ij)``: batched embeddings, then a segment mean (equal weights)."""
    with torch.no_grad():
        emb = torch.cat([embed(x[s : s + batch]) for s in range(0, x.shape[0], batch)])
        ones = torch.ones(x.shape[0], dtype=emb.dtype, device=emb.device)
        return segment_blend(emb, ones, indptr, "sum", backend, validate=False)


def _matching_grad(embed, blended: torch.Tensor, targets: torch.Tensor, chunk: int,
                   scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of ``scale · Σ_i ‖f_m(x̃_i) − μ_i‖²`` w.r.t. the blends, and the per-cluster
    ``‖·‖²`` terms; chunk by chunk (exact: the terms are independent)."""
    grad = torch.empty_like(blended)
    terms = torch.empty(blended.shape[0], dtype=blended.dtype, device=blended.device)
    for s in range(0, blended.shape[0], chunk):
        xc = blended[s : s + chunk].detach().requires_grad_(True)
        with torch.enable_grad():
            sq = (embed(xc) - targets[s : s + chunk]).pow(2).sum(1)
            (grad[s : s + chunk],) = torch.autograd.grad(sq.sum() * scale, xc)
        terms[s : s + chunk] = sq.detach()
    return grad, terms


def _matching_terms(embed, blended: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
    """Per-cluster ``‖f_m(x̃_i) − μ_i‖²`` without gradient."""
    with torch.no_grad():
        parts = [(embed(blended[s : s + chunk]) - targets[s : s + chunk]).pow(2).sum(1)
                 for s in range(0, blended.shape[0], chunk)]
    return torch.cat(parts)


def _check_blend_inputs(x: torch.Tensor, indptr: torch.Tensor, matcher: nn.Module, lr: float,
                        iterations: int) -> None:
    """The argument checks of :func:`blend_clusters` (reads ``indptr`` on the host: O(K))."""
    fn = "blend_clusters"
    if not isinstance(x, torch.Tensor) or not isinstance(indptr, torch.Tensor):
        bad = "x" if not isinstance(x, torch.Tensor) else "indptr"
        raise TypeError(f"{fn}: {bad} must be a torch.Tensor, got {type(x if bad == 'x' else indptr).__name__}")
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"{fn}: x must be a floating [M, C, H, W] tensor, got {x.dtype} {list(x.shape)}")
    if indptr.dtype != torch.int64 or indptr.dim() != 1 or indptr.numel() < 1:
        raise ValueError(f"{fn}: indptr must be a 1-D int64 tensor of K+1 offsets, got {indptr.dtype} "
                         f"{list(indptr.shape)}")
    if indptr.device != x.device:
        raise ValueError(f"{fn}: indptr must be on x's device {x.device}, got {indptr.device}")
    if not isinstance(matcher, nn.Module):
        raise TypeError(f"{fn}: matcher must be a torch.nn.Module, got {type(matcher).__name__}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"{fn}: lr must be a finite number > 0, got {lr!r}")
    if isinstance(iterations, bool) or not isinstance(iterations, numbers.Integral) or iterations < 0:
        raise ValueError(f"{fn}: iterations must be an int >= 0, got {iterations!r}")
    bounds = indptr.cpu()
    if int(bounds[0]) != 0 or int(bounds[-1]) != x.shape[0]:
        raise ValueError(f"{fn}: indptr must start at 0 and end at M = {x.shape[0]} (rows of x), got "
                         f"indptr[0] = {int(bounds[0])}, indptr[-1] = {int(bounds[-1])}")
    if bool((bounds[1:] <= bounds[:-1]).any()):
        raise ValueError(f"{fn}: indptr must be strictly increasing: every segment must be non-empty "
                         "(drop empty clusters)")


def blend_clusters(x: torch.Tensor, indptr: torch.Tensor, matcher: nn.Module, *, lr: float,
                   iterations: int = 12, normalize: str = "sum", chunk_size: int | None = None,
                   backend: str = "auto", progress: bool | None = None,
                   member_features: torch.Tensor | None = None, amp: bool = False,
                   loss_clusters: int | None = None, member_chunk: int | None = None) -> BlendResult:
    """Blend every CSR segment of ``x`` into one image (docs/method.md §1.3), all segments at once.

    Args:
        x: ``[M, C, H, W]`` member images sorted by cluster, in the matcher's dtype and device.
        indptr: ``[K+1]`` int64 offsets (on ``x``'s device); every segment must be non-empty.
        matcher: frozen per-sample network; its ``embed`` (else its output), flattened, is ``f_m``.
        lr: SGD learning rate (momentum 0.5, no weight decay).
        iterations: optimiser steps.
        normalize: ``"sum"`` (reference) or ``"softmax"``.
        chunk_size: blended images per matcher forward/backward (``None``: :func:`default_chunk_size`,
            all K at once on a GPU, a cache-sized batch on a CPU). Chunking is exact and bounds the
            matcher's activation memory.
        backend: :func:`fastblend.segment_blend` backend.
        member_features: ``[M, D]`` ``f_m(x)`` of the members, already computed (the shared-network
            option of :func:`condense`); the targets are their segment means instead of a new forward.
        amp: run the matcher in bfloat16 under ``torch.autocast`` (**option, changes numerics**;
            the weights, blends, targets and loss stay float32). On a 2-core AMD EPYC with AVX-512
            bf16 the matcher's forward+backward is ~1.7x faster per image in isolation and the whole
            demo Blend 1.2x faster; on GPUs it is the tensor-core path. On a CPU without native bfloat16
            (AVX2 only) it is emulated, about 10x slower for the demo's matcher, and warns.
        loss_clusters: the ``K`` of the loss's ``1/K`` scale (default: the segments of ``x``). A
            part of a larger Blend passes the whole Blend's K, so that its clusters get exactly the
            steps they get when all are optimised together (``loss_history`` then holds this part's
            share of ``L``).
        member_chunk: optimise the clusters in chunks of at most this many member images, the whole
            optimisation (all iterations) one chunk at a time (a cluster larger than that is a chunk
            of its own), each term keeping the global ``1/K``: the same blends, weights and terms
            (float tolerance), the history summed over chunks. ``None``: all at once. Bounds the
            optimisation's working memory (weights, blends, gradients) by the chunk; :func:`condense`
            and :meth:`BlendIndex.build` also read only the chunk's images from their source.

    Each iteration is one ``segment_blend`` over all clusters and one batched matcher
    forward/backward over the K blends; there is no Python loop over clusters.
    """
    _check_blend_inputs(x, indptr, matcher, lr, iterations)
    device = x.device
    m, k = x.shape[0], indptr.numel() - 1
    if loss_clusters is not None and (isinstance(loss_clusters, bool) or not isinstance(loss_clusters, numbers.Integral)
                                      or loss_clusters < k):
        raise ValueError(f"blend_clusters: loss_clusters must be an int >= K = {k} (the clusters of x), got "
                         f"{loss_clusters!r}")
    if member_chunk is not None:
        check_member_chunk("blend_clusters", member_chunk)
        if member_chunk < m:
            if member_features is not None and (member_features.dim() != 2 or member_features.shape[0] != m):
                raise ValueError(f"blend_clusters: member_features must have shape [M, D] = [{m}, D], got "
                                 f"{list(member_features.shape)}")
            feats = None if member_features is None else (lambda p: member_features[p.to(member_features.device)])
            return blend_chunked(lambda p: x[p.to(device)], indptr, matcher, member_chunk=member_chunk,
                                 loss_clusters=loss_clusters or k, device=device, lr=lr, iterations=iterations,
                                 normalize=normalize, chunk_size=chunk_size, backend=backend, progress=progress,
                                 member_features=feats, amp=amp)
    if k == 0:
        empty = x.new_zeros(0)
        return BlendResult(empty, empty, x.new_zeros((0,) + tuple(x.shape[1:])), empty, empty, [])
    sizes = indptr[1:] - indptr[:-1]
    embed = embed_fn(matcher, amp, device)
    chunk = chunk_size or default_chunk_size(k, device)
    synchronize(device)
    t0 = time.perf_counter()
    if member_features is not None:
        if member_features.dim() != 2 or member_features.shape[0] != m:
            raise ValueError(f"blend_clusters: member_features must have shape [M, D] = [{m}, D], got "
                             f"{list(member_features.shape)}")
        feats = member_features.to(device=device, dtype=x.dtype)
        targets = segment_blend(feats, torch.ones(m, dtype=x.dtype, device=device), indptr, "sum", backend,
                                validate=False)
    else:
        batch = chunk_size or (_TARGET_BATCH if device.type == "cuda" else CPU_CHUNK)
        targets = _segment_mean_targets(embed, x, indptr, batch, backend)
    scale = 1.0 / ((loss_clusters or k) * targets.shape[1])
    w = (1.0 / sizes.to(x.dtype)).repeat_interleave(sizes, output_size=m).requires_grad_(True)
    opt = torch.optim.SGD([w], lr=lr, momentum=MOMENTUM, weight_decay=0.0)
    synchronize(device)
    t1 = time.perf_counter()
    sums: list[torch.Tensor] = []  # kept on the device: no host sync inside the loop
    initial_terms = None
    for _ in progress_bar(range(iterations), desc="blend", progress=progress, leave=False):
        opt.zero_grad(set_to_none=True)
        blended = segment_blend(x, w, indptr, normalize, backend, validate=False)
        g, terms = _matching_grad(embed, blended, targets, chunk, scale)
        (w.grad,) = torch.autograd.grad(blended, w, g)
        opt.step()
        if initial_terms is None:
            initial_terms = terms / targets.shape[1]
        sums.append(terms.sum())
    synchronize(device)
    t2 = time.perf_counter()
    history = (torch.stack(sums) * scale).tolist() if sums else []
    with torch.no_grad():
        blended = segment_blend(x, w, indptr, normalize, backend, validate=False)
        final_terms = _matching_terms(embed, blended, targets, chunk) / targets.shape[1]
        w_hat = normalize_segment_weights(w.detach(), indptr, normalize)
    if initial_terms is None:
        initial_terms = final_terms
    synchronize(device)
    t3 = time.perf_counter()
    return BlendResult(weights=w.detach(), normalized_weights=w_hat, blended=blended, initial_terms=initial_terms,
                       final_terms=final_terms, loss_history=history, seconds_targets=t1 - t0,
                       seconds_iterations=t2 - t1, seconds_final=t3 - t2)


def plan_chunks(sizes: torch.Tensor, member_chunk: int | None) -> list[tuple[int, int]]:
    """Contiguous cluster ranges ``[(k0, k1), ...]`` covering ``0..K``, each holding at most
    ``member_chunk`` members (a larger cluster alone); ``None``: one range."""
    k = int(sizes.numel())
    if k == 0:
        return []
    if member_chunk is None:
        return [(0, k)]
    out, start, held = [], 0, 0
    for i, s in enumerate(sizes.tolist()):
        if i > start and held + s > member_chunk:
            out.append((start, i))
            start, held = i, 0
        held += s
    out.append((start, k))
    return out


def blend_chunked(fetch: Fetch, indptr: torch.Tensor, matcher: nn.Module, *, member_chunk: int | None,
                  loss_clusters: int, device: torch.device, lr: float, iterations: int = 12,
                  normalize: str = "sum", chunk_size: int | None = None, backend: str = "auto",
                  progress: bool | None = None, member_features: Fetch | None = None,
                  amp: bool = False) -> BlendResult:
    """:func:`blend_clusters` over the CSR layout ``indptr`` (``[K+1]`` int64, CPU), one chunk of
    clusters at a time.

    ``fetch(positions)`` returns the members at CSR ``positions`` (``[m]`` int64, CPU) as
    ``[m, C, H, W]`` images on ``device`` in the matcher's dtype; ``member_features(positions)``
    (optional) their ``[m, D]`` matcher features. Each term is scaled by ``1/loss_clusters`` (the
    global K). Returns the clusters' results concatenated in CSR order, the history summed over chunks.
    """
    indptr = indptr.cpu()
    sizes = indptr[1:] - indptr[:-1]
    parts: list[BlendResult] = []
    for k0, k1 in plan_chunks(sizes, member_chunk):
        lo, hi = int(indptr[k0]), int(indptr[k1])
        pos = torch.arange(lo, hi, dtype=torch.int64)
        x = fetch(pos)
        feats = member_features(pos) if member_features is not None else None
        parts.append(blend_clusters(x, (indptr[k0:k1 + 1] - lo).to(x.device), matcher, lr=lr, iterations=iterations,
                                    normalize=normalize, chunk_size=chunk_size, backend=backend, progress=progress,
                                    member_features=feats, amp=amp, loss_clusters=loss_clusters))
        del x, feats
    if len(parts) == 1:
        return parts[0]
    if not parts:
        empty = torch.zeros(0, device=device)
        return BlendResult(empty, empty, empty, empty, empty, [])
    history = [sum(vals) for vals in zip(*(p.loss_history for p in parts))]
    return BlendResult(weights=torch.cat([p.weights for p in parts]),
                       normalized_weights=torch.cat([p.normalized_weights for p in parts]),
                       blended=torch.cat([p.blended for p in parts]),
                       initial_terms=torch.cat([p.initial_terms for p in parts]),
                       final_terms=torch.cat([p.final_terms for p in parts]), loss_history=history,
                       seconds_targets=sum(p.seconds_targets for p in parts),
                       seconds_iterations=sum(p.seconds_iterations for p in parts),
                       seconds_final=sum(p.seconds_final for p in parts))
