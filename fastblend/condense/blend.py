"""Blend condensation of the retain set (SPEC §1.2–1.4).

After a forget request, every cluster of the grouping is either **touched** (at least one member is
forgotten) or **free**. Touched clusters keep their non-forgotten members as raw images (the
*residual*); each non-empty free cluster is condensed into one blended image
``x̃_i = Σ_j (w_ij / Σ_k w_ik) X_ij`` whose per-member scalar weights are optimised so that a
frozen random matcher network ``f_m`` sees the blend like the mean of its members:

    L = (1/K) Σ_i (1/D) ‖f_m(x̃_i) − μ_i‖²,   μ_i = mean_j f_m(X_ij),

SGD with momentum 0.5 and the reference learning rate ``lr(ipc)``, 12 iterations by default.

The matcher has no batch statistics, so ``L`` is a sum of independent per-cluster terms and all K
clusters are optimised together: one :func:`fastblend.segment_blend` over the CSR layout of the free
clusters plus one batched forward/backward of ``f_m`` per iteration (optionally in chunks, which is
exact because the terms are independent). ``fastblend.condense_reference`` holds the literal
per-cluster loop that this reproduces.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .._device import synchronize
from ..grouping import Clustering
from ..ops import segment_blend
from ..ops.reference import normalize_segment_weights
from .checks import prepare_inputs, resolve_clustering
from .reduced import ReducedRetainSet
from .split import Split, split_clusters

__all__ = [
    "BlendResult",
    "blend_clusters",
    "blend_lr",
    "check_matcher",
    "condense",
    "matcher_seed",
]

MOMENTUM = 0.5
# lr(ipc) = a·ipc³ + b·ipc² + c·ipc + d, SPEC §1.3 (≈1.0 at ipc 2, 0.166 at 10, 100 at 100, 9999 at 1000)
_LR_COEFFS = (-2.397e-6, 0.01265, -0.2558, 1.461)
_TARGET_BATCH = 512  # inference batch for the targets when no chunk_size is given (GPU)
# On a CPU small matcher batches keep a ConvNet-3's activations in cache: measured on a 2-core
# AVX-512 machine, forward + input-gradient backward costs ~0.9-1.0 ms per 32x32 image in batches
# of 8-16 against ~1.9 ms in one batch of 420.
CPU_CHUNK = 16


def default_chunk_size(k: int, device: torch.device) -> int:
    """Blends per matcher pass when ``chunk_size`` is not given: all ``k`` at once on a GPU,
    :data:`CPU_CHUNK` on a CPU (same result either way: the loss terms are independent)."""
    return max(1, k if device.type == "cuda" else min(k, CPU_CHUNK))


# --------------------------------------------------------------------------------------------
# Small public helpers
# --------------------------------------------------------------------------------------------
def blend_lr(ipc: int) -> float:
    """The reference Blend learning rate ``−2.397e−6·ipc³ + 0.01265·ipc² − 0.2558·ipc + 1.461``.

    The cubic is positive for ``1 <= ipc <= 5277``; beyond that it turns negative and a
    ``ValueError`` asks for an explicit ``lr``.
    """
    if isinstance(ipc, bool) or not isinstance(ipc, int) or ipc < 1:
        raise ValueError(f"blend_lr: ipc must be a positive int, got {ipc!r}")
    a, b, c, d = _LR_COEFFS
    lr = ((a * ipc + b) * ipc + c) * ipc + d
    if lr <= 0:
        raise ValueError(f"blend_lr: the reference formula gives lr = {lr:.4g} <= 0 at ipc {ipc}; "
                         "pass lr=<number> explicitly")
    return lr


def matcher_seed(seed: int, round_index: int = 0) -> int:
    """Seed of the Blend matcher ``f_m`` for a condensation seeded with ``seed``.

    Always differs from ``seed`` itself (the grouping extractor's seed), so ``f_m`` and ``f_g`` are
    independent networks; ``round_index`` gives each multi-round re-blend a fresh matcher.
    """
    return (int(seed) * 1_000_003 + 7_919 * (int(round_index) + 1)) % (2**63)


def _embed_fn(matcher: nn.Module, amp: bool = False,
              device: torch.device | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    embed = getattr(matcher, "embed", None)
    fn = embed if callable(embed) else matcher
    if not amp:
        return lambda x: fn(x).flatten(1)

    def mixed(x: torch.Tensor) -> torch.Tensor:
        # bfloat16 matcher arithmetic, float32 in and out (targets, loss and gradients stay float32)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = fn(x)
        return out.flatten(1).float()

    return mixed


def _matcher_dtype(matcher: nn.Module, fallback: torch.dtype) -> torch.dtype:
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
    embed = _embed_fn(matcher)
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


# --------------------------------------------------------------------------------------------
# The batched Blend optimisation
# --------------------------------------------------------------------------------------------
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


def blend_clusters(x: torch.Tensor, indptr: torch.Tensor, matcher: nn.Module, *, lr: float,
                   iterations: int = 12, normalize: str = "sum", chunk_size: int | None = None,
                   backend: str = "auto", progress: bool = False,
                   member_features: torch.Tensor | None = None, amp: bool = False) -> BlendResult:
    """Blend every CSR segment of ``x`` into one image (SPEC §1.3), all segments at once.

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
            demo Blend 1.2x faster; on GPUs it is the tensor-core path.

    Each iteration is one ``segment_blend`` over all clusters and one batched matcher
    forward/backward over the K blends; there is no Python loop over clusters.
    """
    from tqdm.auto import tqdm

    device = x.device
    m, k = x.shape[0], indptr.numel() - 1
    if k == 0:
        empty = x.new_zeros(0)
        return BlendResult(empty, empty, x.new_zeros((0,) + tuple(x.shape[1:])), empty, empty, [])
    sizes = indptr[1:] - indptr[:-1]
    if bool((sizes <= 0).any()):
        raise ValueError("blend_clusters: every segment of indptr must be non-empty (drop empty clusters)")
    embed = _embed_fn(matcher, amp, device)
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
    scale = 1.0 / (k * targets.shape[1])
    w = (1.0 / sizes.to(x.dtype)).repeat_interleave(sizes, output_size=m).requires_grad_(True)
    opt = torch.optim.SGD([w], lr=lr, momentum=MOMENTUM, weight_decay=0.0)
    synchronize(device)
    t1 = time.perf_counter()
    sums: list[torch.Tensor] = []  # kept on the device: no host sync inside the loop
    initial_terms = None
    for _ in tqdm(range(iterations), desc="blend", disable=not progress, leave=False):
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


# --------------------------------------------------------------------------------------------
# condense
# --------------------------------------------------------------------------------------------
def _make_matcher(caller: str, matcher: nn.Module | None, images: torch.Tensor, seed: int, round_index: int,
                  device: torch.device) -> tuple[nn.Module, int | None]:
    if matcher is not None:
        if not isinstance(matcher, nn.Module):
            raise TypeError(f"{caller}: matcher must be a torch.nn.Module or None, got {type(matcher).__name__}")
        devices = {p.device for p in matcher.parameters()}
        if devices and devices != {device}:
            raise ValueError(f"{caller}: matcher parameters are on {sorted(map(str, devices))} but the Blend "
                             f"runs on {device}; move it or pass device=")
        return matcher, None
    from ..models import random_convnet

    mseed = matcher_seed(seed, round_index)
    return random_convnet(images.shape[1], images.shape[2], seed=mseed, device=device), mseed


def condense_core(caller: str, images: torch.Tensor, labels: torch.Tensor, forget: torch.Tensor,
                   clustering: Clustering, *, iterations: int, lr: object, normalize: str,
                   matcher: nn.Module | None, seed: int, round_index: int, device: torch.device,
                   chunk_size: int | None, progress: bool, backend: str,
                   timings: dict, features: torch.Tensor | None = None,
                   net: nn.Module | None = None, amp: bool = False) -> tuple[ReducedRetainSet, Split, BlendResult]:
    lr_value = blend_lr(clustering.ipc) if lr == "reference" else float(lr)
    t0 = time.perf_counter()
    sp = split_clusters(clustering, forget)
    t1 = time.perf_counter()

    shared_network = net is not None  # only condense(share_network=True) hands its network in
    if net is None:
        net, mseed = _make_matcher(caller, matcher, images, seed, round_index, device)
    else:
        mseed = matcher_seed(seed, round_index) if matcher is None else None
    dtype = _matcher_dtype(net, images.dtype)
    synchronize(device)
    t2 = time.perf_counter()
    x = images[sp.members.to(images.device)].to(device=device, dtype=dtype)
    if x.shape[0]:
        check_matcher(net, x[:4], caller)
    member_features = features[sp.members.to(features.device)] if features is not None else None
    result = blend_clusters(x, sp.free_indptr.to(device), net, lr=lr_value, iterations=iterations,
                            normalize=normalize, chunk_size=chunk_size, backend=backend, progress=progress,
                            member_features=member_features, amp=amp)
    del x
    synchronize(device)
    t3 = time.perf_counter()
    timings = dict(timings)
    timings.update(split=t1 - t0, blend=t3 - t2, blend_targets=result.seconds_targets,
                   blend_iterations=result.seconds_iterations, blend_final=result.seconds_final)
    settings = dict(iterations=iterations, lr=lr_value, normalize=normalize, seed=seed, matcher_seed=mseed,
                    shared_network=shared_network, amp=amp,
                    matcher="random_convnet" if mseed is not None else type(net).__name__, ipc=clustering.ipc,
                    chunk_size=chunk_size, round=round_index, device=str(device))
    reduced = assemble_reduced(images, labels, forget, clustering, sp, result.blended, result.normalized_weights,
                        result.initial_terms, result.final_terms, timings, settings, result.loss_history)
    return reduced, sp, result


def assemble_reduced(images, labels, forget, clustering, sp: Split, blended, w_hat, initial_terms, final_terms,
              timings, settings, history) -> ReducedRetainSet:
    n_blend, n_res = sp.free_ids.numel(), sp.residual.numel()
    out_images = torch.cat([blended.to(device=images.device, dtype=images.dtype),
                            images[sp.residual.to(images.device)]])
    cc = clustering.cluster_class.cpu().to(torch.int64)
    out_labels = torch.cat([cc[sp.free_ids], labels.cpu()[sp.residual]]).to(labels.device)
    minus = torch.full((n_res,), -1, dtype=torch.int64)
    retain = int(forget.numel() - forget.sum())
    rows = n_blend + n_res
    return ReducedRetainSet(
        images=out_images, labels=out_labels,
        is_blended=torch.cat([torch.ones(n_blend, dtype=torch.bool), torch.zeros(n_res, dtype=torch.bool)]),
        source_cluster=torch.cat([sp.free_ids, minus]),
        source_index=torch.cat([torch.full((n_blend,), -1, dtype=torch.int64), sp.residual]),
        free_clusters=sp.free_ids, touched_clusters=sp.touched_ids,
        compression=retain / rows if rows else math.nan, timings=timings,
        final_loss=float(final_terms.mean()) if final_terms.numel() else math.nan,
        initial_loss=float(initial_terms.mean()) if initial_terms.numel() else math.nan,
        settings=settings, blend_members=sp.members, blend_weights=w_hat.detach().cpu(),
        blend_indptr=sp.free_indptr, loss_history=list(history))


def condense(images: torch.Tensor, labels: torch.Tensor, forget: object, *, ipc: int | None = None,
             clustering: Clustering | None = None, iterations: int = 12, lr: float | str = "reference",
             normalize: str = "sum", matcher: nn.Module | None = None, seed: int = 0,
             device: torch.device | str | None = None, chunk_size: int | None = None, progress: bool = True,
             backend: str = "auto", share_network: bool = False,
             features: torch.Tensor | None = None, amp: bool = False) -> ReducedRetainSet:
    """Condense the retain set after a forget request (SPEC §1.2–1.3).

    Args:
        images: ``[N, C, H, W]`` floating training images (normalised pixels).
        labels: ``[N]`` integer labels.
        forget: training indices (tensor/list/array, distinct) or a ``[N]`` bool mask.
        ipc: clusters per class; with no ``clustering`` the images are grouped here
            (``extract_features`` + ``group`` with ``seed``, timed as ``features`` / ``grouping``).
        clustering: a precomputed :class:`fastblend.grouping.Clustering` of these images.
        iterations: Blend optimiser steps (12 for unlearning, 20 in the condensation comparison).
        lr: ``"reference"`` (:func:`blend_lr` of the clustering's ipc) or a positive number.
        normalize: ``"sum"`` (reference) or ``"softmax"`` (option).
        matcher: per-sample network used as ``f_m`` (its ``embed`` if it has one); default: a fresh
            random ConvNet-3 seeded with :func:`matcher_seed` ``(seed)``, independent of the grouping
            extractor. Matchers with batch statistics are refused (see :func:`check_matcher`).
        seed: seeds the grouping (when done here) and the default matcher.
        device: where grouping and Blend run (default: the images' device); outputs stay on the
            images' device.
        chunk_size: blended images per matcher forward/backward; ``None`` runs all K at once on a
            GPU and small cache-friendly batches on a CPU (:func:`default_chunk_size`). A ConvNet-3
            keeps about 1.4 MB of activations per 32x32 float32 image, so on a GPU pass e.g. 512 to
            bound memory at large ipc; the result is the same.
        progress: show tqdm bars.
        backend: :func:`fastblend.segment_blend` backend.
        share_network: **option, a departure from the reference** (which uses two independent random
            networks): one random network serves as the grouping extractor and as the matcher, so a
            single feature extraction gives both the grouping's features and Blend's targets
            ``μ_i`` (one forward pass over the free clusters' members saved). With a ``clustering``,
            pass the ``features`` it was computed from (``f_m`` of every image); without them the
            targets come from the shared network's forward over the free members.
        features: ``[N, D]`` embeddings of ``images`` by the matcher (only with ``share_network``).
        amp: **option, changes numerics**: the matcher runs in bfloat16 under ``torch.autocast``
            (see :func:`blend_clusters`); off by default.

    Returns:
        :class:`ReducedRetainSet`: blended rows first, then the residual rows.
    """
    images, labels, mask, dev = prepare_inputs("condense", images, labels, forget, iterations, lr, normalize,
                                         chunk_size, device)
    if features is not None and not share_network:
        raise ValueError("condense: features are only used with share_network=True")
    net = None
    if share_network:
        net, _ = _make_matcher("condense", matcher, images, seed, 0, dev)
        if features is not None and (not isinstance(features, torch.Tensor) or features.dim() != 2
                                     or features.shape[0] != images.shape[0]):
            raise ValueError(f"condense: features must be a [N, D] tensor with N = {images.shape[0]}, got "
                             f"{getattr(features, 'shape', type(features).__name__)}")
    clustering, t_feat, t_group, feats = resolve_clustering("condense", images, labels, ipc, clustering, seed,
                                                             dev, progress, extractor=net)
    if share_network and features is None:
        # features extracted for the grouping; with a given clustering and no features the Blend embeds
        # only the free clusters' members with the shared network (fewer images than all N)
        features = feats
    reduced, _, _ = condense_core("condense", images, labels, mask, clustering, iterations=iterations, lr=lr,
                                   normalize=normalize, matcher=matcher, seed=seed, round_index=0, device=dev,
                                   chunk_size=chunk_size, progress=progress, backend=backend,
                                   timings={"features": t_feat, "grouping": t_group},
                                   features=features, net=net, amp=bool(amp))
    return reduced
