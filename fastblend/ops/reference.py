"""Plain-PyTorch versions of every fastblend op: the test oracle and the benchmark baseline.

Written for clarity and differentiated by autograd. Independent of the fast paths: it imports
nothing from them and no module of the package imports it (only tests and benchmarks do).
"""

from __future__ import annotations

import math

import torch

from ..recipe import RECIPE


def segment_ids(indptr: torch.Tensor, n: int | None = None) -> torch.Tensor:
    """Segment id of each row of a CSR layout: ``[N]`` int64."""
    sizes = indptr[1:] - indptr[:-1]
    return torch.repeat_interleave(torch.arange(sizes.numel(), device=indptr.device), sizes, output_size=n)


def normalize_segment_weights(weights: torch.Tensor, indptr: torch.Tensor, normalize: str) -> torch.Tensor:
    """``ŵ`` of :func:`segment_blend`; a zero-sum segment gives zeros under ``"sum"``."""
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


def segment_blend(x: torch.Tensor, weights: torch.Tensor, indptr: torch.Tensor,
                  normalize: str = "sum") -> torch.Tensor:
    """``out[k] = Σ_{i in segment k} ŵ_i x_i`` via ``index_add`` (the best eager formulation)."""
    k = indptr.numel() - 1
    w_hat = normalize_segment_weights(weights, indptr, normalize)
    seg = segment_ids(indptr, x.shape[0])
    flat = x.reshape(x.shape[0], math.prod(x.shape[1:]))
    out = torch.zeros((k, flat.shape[1]), dtype=torch.promote_types(x.dtype, w_hat.dtype), device=x.device)
    out = out.index_add(0, seg, w_hat.to(out.dtype)[:, None] * flat.to(out.dtype))
    return out.to(x.dtype).reshape((k,) + tuple(x.shape[1:]))


def segment_blend_loop(x: torch.Tensor, weights: torch.Tensor, indptr: torch.Tensor,
                       normalize: str = "sum") -> torch.Tensor:
    """One Python iteration per segment, the way the published reference blends clusters."""
    rows = []
    bounds = indptr.tolist()
    for s, e in zip(bounds[:-1], bounds[1:]):
        w = weights[s:e]
        if normalize == "sum":
            total = w.sum()
            w = w / total if e > s and total != 0 else torch.zeros_like(w)
        elif normalize == "softmax":
            w = torch.softmax(w, 0)
        rows.append((w.reshape((-1,) + (1,) * (x.dim() - 1)) * x[s:e]).sum(0))
    if not rows:
        return x.new_zeros((0,) + tuple(x.shape[1:]))
    return torch.stack(rows)


def quantile_transform(logits: torch.Tensor, labels: torch.Tensor, k: float = RECIPE.k,
                       kappa: float = RECIPE.kappa) -> torch.Tensor:
    """docs/method.md §2.2 literally: ``g = clamp(Φ⁻¹((1/M) Σ_j σ(k·relu(u_i − u_j))), −κ, κ)`` with
    ``u = log(1 + CE + 1e-8)``. ``[M, C]`` logits, ``[M]`` labels -> ``[M]`` in the logits' dtype.

    ``relu`` has subgradient 0 at 0, so tied losses (and the diagonal ``j = i``) pass no gradient
    through the soft CDF; ``clamp`` passes none at or beyond ``±κ``.
    """
    loss = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    u = torch.log(1 + loss + 1e-8)
    c = torch.sigmoid(k * torch.relu(u[:, None] - u[None, :])).mean(1)
    return torch.clamp(2**0.5 * torch.erfinv(2 * c - 1), -kappa, kappa)


def gaussian_kernel_mean(a: torch.Tensor, b: torch.Tensor, sigma: float = RECIPE.sigma) -> torch.Tensor:
    """``mean_{i,j} exp(−(a_i − b_j)² / (2σ²))``."""
    return torch.exp(-((a[:, None] - b[None, :]) ** 2) / (2 * sigma**2)).mean()


def quantile_mmd(forget_logits: torch.Tensor, forget_labels: torch.Tensor, unseen_logits: torch.Tensor,
                 unseen_labels: torch.Tensor, k: float = RECIPE.k, kappa: float = RECIPE.kappa,
                 sigma: float = RECIPE.sigma, detach_unseen: bool = True) -> torch.Tensor:
    """docs/method.md §2.3 literally: biased MMD² between ``g`` of the unseen set (detached unless
    ``detach_unseen=False``) and ``g`` of the forget set, Gaussian kernel of width ``sigma``."""
    if detach_unseen:
        unseen_logits = unseen_logits.detach()
    gf = quantile_transform(forget_logits, forget_labels, k, kappa)
    gu = quantile_transform(unseen_logits, unseen_labels, k, kappa)
    return (gaussian_kernel_mean(gu, gu, sigma) + gaussian_kernel_mean(gf, gf, sigma)
            - 2 * gaussian_kernel_mean(gu, gf, sigma))
