"""A-AMU: the accelerated unlearning objective (docs/method.md §2) and the one step that applies it.

``L = steepen(retain loss) + λ · MMD²(g(unseen batch), g(forget batch))``. Any AMU method keeps its
own retain-side per-sample loss; :class:`AAMUStep` adds the rest: it draws the forget and unseen
batches (:class:`ForgetSampler`, :class:`UnseenSampler`), forwards them without touching the model's
running statistics (:class:`Forwards`), gathers under data parallel and evaluates :class:`AAMULoss`.

The ways in, from the most packaged to the most manual (each a thin layer over :class:`AAMUStep`):

1. ``fastblend.unlearn("a_finetune", model, reduced_retain, forget, unseen)``: the paper's methods,
   whole (``a_sparse``, ``a_scrub``, ... likewise), with the recipe ``config.request`` picks (docs/method.md §7.6,
   §7.10);
2. ``fastblend.prepare_unlearning(model, retain, forget, unseen)``: a reduced-retain loader and a
   criterion for an existing loader-based loop (:mod:`fastblend.dropin`);
3. ``fastblend.AAMUStep(model, forget, unseen)``: ``step.loss(per_sample_retain_loss)`` in a
   hand-written loop (also under ``DistributedDataParallel``);
4. the parts: :class:`AAMULoss` (given the forget and unseen logits), :func:`steepen`,
   :func:`fastblend.quantile_mmd` and the samplers, for a step of your own.

The recipe's defaults (λ, k, κ, σ, batch size, batch factors, optimiser) are
:data:`fastblend.recipe.RECIPE`.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ._batchnorm import frozen_running_stats, guard_recomputation, stateful_buffers
from ._checks import plain_number
from ._device import module_device
from .data_adapter import as_data, cast_to_model, check_batch_labels, model_dtype, read_forget
from .distributed import all_gather_rows, all_gather_rows_with_grad, is_distributed, row_shard
from .metrics import true_class_log_odds
from .ops._dispatch import BACKENDS
from .ops.quantile_mmd import _check_params, quantile_mmd
from .recipe import RECIPE

STEEPEN_MODES = ("batch_mean_sq", "per_sample_sq")
#: how the loss-quantile transform ``g`` ranks the losses (docs/method.md §2.2, §7.3): ``"per_set"`` (the
#: paper's: each set against itself, blind to a shift of all its losses) or ``"pooled"`` (both sets against
#: their union, so a forget set whose losses sit below the unseen set's is pulled up to them)
TRANSFORM_MODES = ("per_set", "pooled")


def steepen(per_sample_loss: torch.Tensor, mode: str = RECIPE.steepen) -> torch.Tensor:
    """Steepened primary loss (docs/method.md §2.1): ``mean(ℓ)²`` (``"batch_mean_sq"``, reference) or
    ``mean(ℓ²)`` (``"per_sample_sq"``). ``[B]`` floating -> 0-d tensor of the same dtype."""
    if not isinstance(per_sample_loss, torch.Tensor) or not per_sample_loss.is_floating_point():
        raise TypeError(f"steepen: per_sample_loss must be a floating torch.Tensor, got "
                        f"{getattr(per_sample_loss, 'dtype', type(per_sample_loss).__name__)}")
    if per_sample_loss.dim() != 1 or per_sample_loss.numel() == 0:
        raise ValueError(f"steepen: per_sample_loss must have shape [B] with B >= 1 (use reduction='none'), "
                         f"got {list(per_sample_loss.shape)}")
    if mode == "batch_mean_sq":
        return per_sample_loss.mean() ** 2
    if mode == "per_sample_sq":
        return (per_sample_loss**2).mean()
    raise ValueError(f"steepen: mode must be one of {STEEPEN_MODES}, got {mode!r}")


class AAMULossOutput(NamedTuple):
    """``total = retain_weight * main + lam * mmd``; all 0-d tensors. ``total`` carries the autograd
    graph; ``main`` (the steepened retain loss) and ``mmd`` are detached, for logging."""

    total: torch.Tensor
    main: torch.Tensor
    mmd: torch.Tensor


def check_odds_weight(fn: str, value: Any, name: str = "odds_weight") -> float:
    """``value`` as a float, or a ``ValueError`` naming ``fn`` and ``name``: an optional term's weight (the log-odds
    term's, the held-out anchor's) is a finite number >= 0."""
    value = plain_number(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{fn}: {name} must be a finite number >= 0, got {value!r}")
    return float(value)


def odds_of_loss(ce: torch.Tensor) -> torch.Tensor:
    """The true-class log-odds ``φ = log p − log(1 − p)`` (float64, clamped to ``[−100, 100]`` as the MIA's
    :func:`fastblend.metrics.true_class_log_odds`) from the cross-entropy ``ℓ = −log p``:
    ``φ = −ℓ − log(1 − e^{−ℓ})``. A loss that is exactly 0 in float64 (a logit margin above about 37) is
    floored at the smallest normal float64, so it gets ``φ ≈ 100`` and no gradient: where logits are at hand,
    :func:`fastblend.metrics.true_class_log_odds` of float64 logits is exact with a bounded gradient."""
    ce = ce.double().clamp_min(torch.finfo(torch.float64).tiny)
    return (-ce - torch.log(-torch.expm1(-ce))).clamp(-100.0, 100.0)


def odds_gap(forget_odds: torch.Tensor, target_odds: torch.Tensor) -> torch.Tensor:
    """``W₂²`` between two sets of true-class log-odds (``[M_f]``, ``[M_t]``), float64: the mean squared gap
    between the forget set's ``i``-th smallest value and the target set's value at the same level
    ``(i + ½)/M_f`` (position ``(i + ½)·M_t/M_f − ½`` in the sorted target, linearly interpolated and clamped
    to its ends: one to one when the sizes are equal). ``target_odds`` is detached."""
    f = forget_odds.double().sort().values
    t = target_odds.detach().double().sort().values
    n, m = f.numel(), t.numel()
    if m != n:
        pos = ((torch.arange(n, dtype=torch.float64, device=t.device) + 0.5) * (m / n) - 0.5).clamp(0, m - 1)
        lo = pos.floor().long()
        hi = (lo + 1).clamp(max=m - 1)
        w = pos - lo.double()
        t = t[lo] * (1.0 - w) + t[hi] * w
    return ((f - t) ** 2).mean()


#: how the log-odds term pairs the forget images with the target (docs/method.md §7.8, §7.10)
ODDS_PAIRINGS = ("quantile", "image")


def odds_excess(forget_odds: torch.Tensor, target_odds: torch.Tensor) -> torch.Tensor:
    """The mean over the forget images of ``max(0, φ_i − φ*_i)²`` (float64): how far each image's true-class
    log-odds ``φ_i`` stays above its own target ``φ*_i`` (same length, row to row; ``target_odds`` detached).
    One-sided: an image already at or below its target adds nothing and gets no gradient (docs/method.md §7.10)."""
    if forget_odds.shape != target_odds.shape:
        raise ValueError(f"odds_excess: forget_odds and target_odds must have the same shape, got "
                         f"{tuple(forget_odds.shape)} and {tuple(target_odds.shape)}")
    gap = (forget_odds.double() - target_odds.detach().double().to(forget_odds.device)).clamp(min=0)
    return (gap ** 2).mean()


class AAMULoss(nn.Module):
    """``L = steepen(retain_loss) + λ · MMD²(G_u, G_f)`` (docs/method.md §2.4). The unseen logits are detached.

    ``transform="pooled"`` (an option, docs/method.md §7.3) ranks both sets' losses against their
    union instead of each set against itself; it runs in float64 torch (no fused kernel).

    ``odds_weight`` ``μ > 0`` (an option, docs/method.md §7.8) adds ``μ · W₂²(φ_f, φ_u)``: the squared 1-D
    Wasserstein distance between the forget and unseen batches' true-class log-odds ``φ = log p_y − log(1 − p_y)``
    (:func:`odds_gap`; from the logits in float64, from the losses in :meth:`from_losses`), the statistic the
    membership attack ranks (§4.3). The
    transform's ``log(1 + ℓ)`` compresses every confident sample to about 0, so the MMD cannot see a forget set
    that stays more confident than its target; this term can.

    ``validate=True`` checks the label ranges on the host in eager mode; under ``torch.compile`` or
    ``torch.export`` that check is skipped, so a compiled step has no graph break either way.
    ``validate=False`` skips it in eager mode too (a hot loop whose labels are known to be valid).
    """

    def __init__(self, lam: float = RECIPE.lam, k: float = RECIPE.k, kappa: float = RECIPE.kappa,
                 sigma: float = RECIPE.sigma, steepen: str = RECIPE.steepen, backend: str = "auto",
                 validate: bool = True, transform: str = RECIPE.transform, odds_weight: float = 0.0) -> None:
        super().__init__()
        self.odds_weight = check_odds_weight("AAMULoss", odds_weight)
        _check_steepen("AAMULoss", steepen)
        _check_transform("AAMULoss", transform)
        self.transform = transform
        _check_loss_params("AAMULoss", lam, k, kappa, sigma, backend)
        self.lam, self.k, self.kappa, self.sigma = float(lam), float(k), float(kappa), float(sigma)
        if not isinstance(validate, bool):
            raise TypeError(f"AAMULoss: validate must be a bool, got {type(validate).__name__}")
        self.steepen, self.backend, self.validate = steepen, backend, validate

    def forward(self, retain_loss: torch.Tensor, forget_logits: torch.Tensor, forget_labels: torch.Tensor,
                unseen_logits: torch.Tensor, unseen_labels: torch.Tensor, retain_weight: float = 1.0, *,
                validate: bool = True) -> AAMULossOutput:
        """``retain_loss`` ``[B]`` per-sample; logits ``[M_f, C]`` / ``[M_u, C]``, labels int64;
        ``retain_weight`` scales the steepened retain loss in ``total`` (a method's own weight, e.g.
        SCRUB's 0.99). ``validate=False`` skips :func:`quantile_mmd`'s host-side label check (a hot
        loop after one check). ``main`` and ``mmd`` are detached (for logging); ``total`` carries the graph."""
        main = steepen(retain_loss, self.steepen)
        if self.transform == "pooled":
            if self.validate and validate:
                for name, logits, labels in (("forget", forget_logits, forget_labels),
                                             ("unseen", unseen_logits, unseen_labels)):
                    check_batch_labels(labels, logits.shape[1], name, "AAMULoss")
            forget_ce = F.cross_entropy(forget_logits.double(), forget_labels, reduction="none")
            unseen_ce = F.cross_entropy(unseen_logits.detach().double(), unseen_labels, reduction="none")
            mmd = _quantile_mmd_of_losses(forget_ce, unseen_ce, self.k, self.kappa, self.sigma, pooled=True)
        else:
            mmd = quantile_mmd(forget_logits, forget_labels, unseen_logits.detach(), unseen_labels, self.k,
                               self.kappa, self.sigma, backend=self.backend, validate=self.validate and validate)
        main_part = main if retain_weight == 1.0 else retain_weight * main
        total = main_part + self.lam * mmd.to(main.dtype)
        if self.odds_weight:  # from the logits: exact where p_y rounds to 1
            gap = odds_gap(true_class_log_odds(forget_logits.double(), forget_labels),
                           true_class_log_odds(unseen_logits.detach().double(), unseen_labels))
            total = total + self.odds_weight * gap.to(main.dtype)
        return AAMULossOutput(total, main.detach(), mmd.detach())

    def from_losses(self, retain_loss: torch.Tensor, forget_ce: torch.Tensor, unseen_ce: torch.Tensor,
                    retain_weight: float = 1.0) -> AAMULossOutput:
        """:meth:`forward` from the forget and unseen sets' per-sample cross-entropies ``[M_f]`` / ``[M_u]``
        instead of their logits: the transform and the MMD need nothing else (docs/method.md §2.2), so
        data-parallel training gathers ``M`` losses per set rather than ``M x C`` logits. Pure torch in
        float64 (the same formulas as the ``torch`` backend of :func:`quantile_mmd`); ``unseen_ce`` is
        detached."""
        for name, ce in (("forget_ce", forget_ce), ("unseen_ce", unseen_ce)):
            if not isinstance(ce, torch.Tensor) or ce.dim() != 1 or not ce.is_floating_point() or ce.numel() == 0:
                raise ValueError(f"AAMULoss.from_losses: {name} must be a non-empty 1-D floating tensor of per-sample "
                                 f"losses, got {getattr(ce, 'shape', type(ce).__name__)}")
        main = steepen(retain_loss, self.steepen)
        mmd = _quantile_mmd_of_losses(forget_ce, unseen_ce.detach(), self.k, self.kappa, self.sigma,
                                      pooled=self.transform == "pooled")
        main_part = main if retain_weight == 1.0 else retain_weight * main
        total = main_part + self.lam * mmd.to(main.dtype)
        if self.odds_weight:
            total = total + self.odds_weight * odds_gap(odds_of_loss(forget_ce), odds_of_loss(unseen_ce)).to(main.dtype)
        return AAMULossOutput(total, main.detach(), mmd.detach())

    def extra_repr(self) -> str:
        extra = "" if self.transform == "per_set" else f", transform={self.transform!r}"
        extra += f", odds_weight={self.odds_weight}" if self.odds_weight else ""
        return f"lam={self.lam}, k={self.k}, kappa={self.kappa}, sigma={self.sigma}, steepen={self.steepen!r}{extra}"


def _check_transform(fn: str, transform: str) -> None:
    if not isinstance(transform, str) or transform not in TRANSFORM_MODES:
        raise ValueError(f"{fn}: transform must be one of {TRANSFORM_MODES}, got {transform!r}")


def _transform_losses(ce: torch.Tensor, k: float, kappa: float) -> torch.Tensor:
    """``g`` of docs/method.md §2.2 from per-sample cross-entropies ``[M]`` (float64, differentiable)."""
    u = torch.log1p(ce.double() + 1e-8)
    d = u[:, None] - u[None, :]
    r = torch.exp(-k * d.clamp_min(0))
    q = torch.where(d > 0, r / (1 + r), torch.full_like(r, 0.5)).mean(1)  # q = 1 - c
    return (-torch.special.ndtri(q)).clamp(-kappa, kappa)


def _quantile_mmd_of_losses(forget_ce: torch.Tensor, unseen_ce: torch.Tensor, k: float, kappa: float,
                            sigma: float, pooled: bool = False) -> torch.Tensor:
    """Biased MMD² (docs/method.md §2.3) between the transformed forget and unseen losses; NaN when any
    loss is not finite (the rule of :func:`quantile_mmd`). ``pooled``: transform the union of both sets
    at once (each loss ranked against both sets, §7.3) instead of each set on its own."""
    if pooled:
        g = _transform_losses(torch.cat([unseen_ce, forget_ce]), k, kappa)
    else:
        g = torch.cat([_transform_losses(unseen_ce, k, kappa), _transform_losses(forget_ce, k, kappa)])
    mu, mf = unseen_ce.numel(), forget_ce.numel()
    w = torch.cat([g.new_full((mu,), 1.0 / mu), g.new_full((mf,), -1.0 / mf)])
    d = g[:, None] - g[None, :]
    mmd = (w[:, None] * w[None, :] * torch.expm1(-d * d / (2 * sigma**2))).sum().clamp_min(0.0)  # as the op
    finite = torch.isfinite(forget_ce).all() & torch.isfinite(unseen_ce).all()
    return torch.where(finite, mmd, torch.full_like(mmd, math.nan))


def _check_loss_params(fn: str, lam: float, k: float, kappa: float, sigma: float, backend: str) -> None:
    """Check the A-AMU settings at construction, so a bad one fails here and not at the first step."""
    if isinstance(lam, bool) or not isinstance(lam, (int, float)):
        raise TypeError(f"{fn}: lam must be a number, got {type(lam).__name__}")
    if not math.isfinite(lam) or lam < 0:
        raise ValueError(f"{fn}: lam must be a finite number >= 0, got {lam!r}")
    _check_params(fn, k, kappa, sigma)
    if not isinstance(backend, str) or backend not in BACKENDS + ("auto",):
        raise ValueError(f"{fn}: backend must be one of 'auto', {', '.join(map(repr, BACKENDS))}; got {backend!r}")


def _check_steepen(fn: str, steepen: Any) -> None:
    if not isinstance(steepen, str) or steepen not in STEEPEN_MODES:
        raise ValueError(f"{fn}: steepen must be one of {STEEPEN_MODES}, got {steepen!r}")


def check_step_settings(fn: str, lam: Any, k: Any, kappa: Any, sigma: Any, backend: str, forget_batch_factor: Any,
                        unseen_batch_factor: Any, max_draw: Any, steepen: Any = None) -> None:
    """Check the A-AMU step's settings (``steepen`` too unless ``None``) under ``fn``'s name, so a caller that
    builds something expensive first (the drop-in's Blend index) refuses a bad one before it."""
    lam, k, kappa, sigma, forget_batch_factor, unseen_batch_factor, max_draw = map(
        plain_number, (lam, k, kappa, sigma, forget_batch_factor, unseen_batch_factor, max_draw))
    _check_loss_params(fn, lam, k, kappa, sigma, backend)
    if steepen is not None:
        _check_steepen(fn, steepen)
    for name, value in (("forget_batch_factor", forget_batch_factor), ("unseen_batch_factor", unseen_batch_factor)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{fn}: {name} must be an int >= 1, got {value!r}")
    if max_draw is not None and (isinstance(max_draw, bool) or not isinstance(max_draw, int) or max_draw < 1):
        raise ValueError(f"{fn}: max_draw must be an int >= 1 or None (no cap), got {max_draw!r}")


_MASK32 = 0xFFFFFFFF


def _mix32(x):
    """A bijection of ``[0, 2^32)`` with good avalanche (xorshift-multiply; multipliers < 2^31, so every
    product fits in int64): works on Python ints and on int64 tensors alike."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x2C1B3C6D) & _MASK32
    return x ^ (x >> 16)


class _CounterRNG:
    """Counter-based random keys: draw ``t`` of a stream seeded ``seed`` gives element ``i`` the key
    ``mix(mix(i ^ a_t) ^ b_t)``, where ``a_t``, ``b_t`` are mixed from the seed and ``t`` on the device.

    Unlike a ``torch.Generator`` this never leaves the device (the counter ``t`` is a 0-d device tensor
    incremented in place), so a draw neither synchronises with the host on CUDA nor breaks a
    ``torch.compile(fullgraph=True)`` graph. The keys of one draw are distinct (``mix`` is a
    bijection), so ordering by key is a uniformly shuffled permutation without ties."""

    def __init__(self, seed: int, device: torch.device) -> None:
        self.seed = _mix32(int(seed) & _MASK32)
        self.counter = torch.zeros((), dtype=torch.int64, device=device)

    def keys(self, n: int) -> torch.Tensor:
        """``[n]`` int64 keys in ``[0, 2^32)``, distinct, for the next draw."""
        t = self.counter & _MASK32
        a = _mix32(t ^ self.seed)
        b = _mix32(a ^ 0x5BD1E995)
        self.counter += 1
        return _mix32(_mix32(torch.arange(n, device=self.counter.device) ^ a) ^ b)


def _check_batch_size(fn: str, batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"{fn}: batch_size must be an int >= 1, got {batch_size!r}")
    return batch_size


_MAX_FORGET = 2**31 - 1  # forget sets are indexed and ranked whole on each draw


class ForgetSampler:
    """Forget batches drawn uniformly without replacement from ``D_f`` (all of it when smaller).

    Args:
        forget: the number of forget samples ``n`` (indices ``0..n-1``) or a ``[n]`` int64 tensor of
            indices.
        batch_size: samples per draw (docs/method.md §2.4: 4B).
        seed: seeds the sampler's own random stream (a counter on ``device``; never the global RNG).
        device: where the returned indices live (default: that of ``forget``, else CPU).

    ``sample()`` returns ``[min(batch_size, n)]`` int64 indices; iterating yields one epoch (a
    permutation split into batches).
    """

    def __init__(self, forget: int | torch.Tensor, batch_size: int, seed: int = 0,
                 device: torch.device | str | None = None) -> None:
        fn = "ForgetSampler"
        if isinstance(forget, torch.Tensor):
            if forget.dtype not in (torch.int64, torch.int32) or forget.dim() != 1:
                raise TypeError(f"{fn}: forget must be a count or a 1-D integer index tensor, got "
                                f"{forget.dtype} of shape {list(forget.shape)}")
            indices = forget.long()
            if indices.numel() and int(indices.min()) < 0:
                raise ValueError(f"{fn}: forget indices must be >= 0, got {int(indices.min())}")
            dups = indices.numel() - indices.unique().numel()
            if dups:
                raise ValueError(f"{fn}: forget indices must be distinct, got {dups} duplicates (a duplicated "
                                 "sample would be drawn twice as often)")
        elif isinstance(forget, int) and not isinstance(forget, bool):
            if forget < 0:
                raise ValueError(f"{fn}: forget count must be >= 0, got {forget}")
            if forget > _MAX_FORGET:
                raise ValueError(f"{fn}: forget count must be at most {_MAX_FORGET} (every draw ranks all forget "
                                 f"samples on the device), got {forget}")
            indices = torch.arange(forget)
        else:
            raise TypeError(f"{fn}: forget must be an int count or an index tensor, got {type(forget).__name__}")
        if indices.numel() == 0:
            raise ValueError(f"{fn}: the forget set is empty; nothing to unlearn")
        self.batch_size = _check_batch_size(fn, batch_size)
        self.device = torch.device(device) if device is not None else indices.device
        self.indices = indices.to(self.device)
        self._rng = _CounterRNG(seed, self.device)

    def __len__(self) -> int:
        return -(-self.indices.numel() // self.batch_size)

    def sample(self) -> torch.Tensor:
        """``[min(batch_size, n)]`` distinct indices; no host synchronisation (fixed size, device RNG)."""
        n = self.indices.numel()
        pick = torch.topk(self._rng.keys(n), min(self.batch_size, n), largest=False).indices
        return self.indices[pick]

    def __iter__(self) -> Iterator[torch.Tensor]:
        perm = torch.argsort(self._rng.keys(self.indices.numel()))
        yield from (self.indices[chunk] for chunk in perm.split(self.batch_size))


class UnseenSampler:
    """Unseen batches restricted to the classes present in the forget batch (docs/method.md §2.4).

    The pool is sorted by class once (``order``; ``counts`` per class and CSR offsets ``indptr``). A
    draw keys every pool sample with the sampler's counter-based device RNG, puts the allowed
    classes' samples first and takes the ``batch_size`` smallest keys: fixed-size tensors only, so
    :meth:`sample` with ``validate=False`` never synchronises with the host on CUDA and traces
    under ``torch.compile(fullgraph=True)`` (the rule for fewer allowed samples than the batch is in
    :meth:`sample`).

    Args:
        unseen_labels: ``[N]`` int64 labels of the unseen pool.
        batch_size: samples per draw (4B).
        num_classes: class count (default ``max label + 1``).
        seed: seeds the sampler's own random stream (never the global RNG).
    """

    def __init__(self, unseen_labels: torch.Tensor, batch_size: int, num_classes: int | None = None,
                 seed: int = 0) -> None:
        fn = "UnseenSampler"
        if not isinstance(unseen_labels, torch.Tensor) or unseen_labels.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"{fn}: unseen_labels must be an integer tensor")
        if unseen_labels.dim() != 1 or unseen_labels.numel() == 0:
            raise ValueError(f"{fn}: unseen_labels must have shape [N] with N >= 1, got {list(unseen_labels.shape)}")
        labels = unseen_labels.long()
        lo, hi = int(labels.min()), int(labels.max())
        self.num_classes = hi + 1 if num_classes is None else int(num_classes)
        if lo < 0 or hi >= self.num_classes:
            raise ValueError(f"{fn}: unseen_labels must be in [0, {self.num_classes}), got {lo if lo < 0 else hi}")
        self.batch_size = _check_batch_size(fn, batch_size)
        self.device = labels.device
        self.order = torch.argsort(labels, stable=True)
        self.counts = torch.bincount(labels, minlength=self.num_classes)
        self.indptr = torch.cat([self.counts.new_zeros(1), torch.cumsum(self.counts, 0)])
        self._sorted_labels = labels[self.order]
        self._rng = _CounterRNG(seed, self.device)

    def sample(self, forget_labels: torch.Tensor, *, validate: bool = True) -> torch.Tensor:
        """``[batch_size]`` int64 indices into the pool, drawn from the classes in ``forget_labels``.

        Without replacement while the allowed classes hold at least ``batch_size`` samples; when they
        hold fewer (``T``), every allowed sample is taken once in random order and the order repeats
        until ``batch_size`` are drawn (position ``j`` holds draw ``j mod T``), so the output size never
        depends on the data. ``validate`` checks the labels' range and that some allowed sample
        exists, reading ``forget_labels`` on the host; with ``validate=False`` (a hot loop, once the
        labels are known to be valid) nothing synchronises with the host, and a batch whose classes
        the pool lacks entirely is drawn from the whole pool.
        """
        fn = "UnseenSampler.sample"
        if not isinstance(forget_labels, torch.Tensor) or forget_labels.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"{fn}: forget_labels must be an integer tensor")
        fl = forget_labels.to(self.device).long().reshape(-1)
        if fl.numel() == 0:
            raise ValueError(f"{fn}: forget_labels is empty")
        if validate:
            self.check_labels(fl, fn)
        present = torch.zeros(self.num_classes, dtype=torch.bool, device=self.device).index_fill_(0, fl, True)
        allowed = present[self._sorted_labels]
        total = allowed.sum()
        allowed = allowed | (total == 0)  # no allowed sample at all: the whole pool
        total = torch.where(total == 0, allowed.numel(), total)
        # allowed samples first (their keys < 2^32), in the random order of their keys
        keys = self._rng.keys(allowed.numel()) + torch.where(allowed, 0, 1 << 32)
        first = torch.topk(keys, min(self.batch_size, allowed.numel()), largest=False).indices
        pos = first[torch.arange(self.batch_size, device=self.device) % total]
        return self.order[pos]

    def check_labels(self, forget_labels: torch.Tensor, fn: str = "UnseenSampler.check_labels",
                     name: str = "forget_labels") -> None:
        """Raise ``ValueError`` unless every label is in ``[0, num_classes)`` and the pool holds at least
        one of their classes (reads them on the host): run once over the whole forget set before a loop
        that samples with ``validate=False``. ``fn`` and ``name`` name the caller and the argument."""
        fl = forget_labels.to(self.device).long().reshape(-1)
        lo, hi = int(fl.min()), int(fl.max())
        if lo < 0 or hi >= self.num_classes:
            raise ValueError(f"{fn}: {name} must be in [0, {self.num_classes}), got {lo if lo < 0 else hi}")
        present = torch.zeros(self.num_classes, dtype=torch.bool, device=self.device).index_fill_(0, fl, True)
        if int(self.counts[present].sum()) == 0:
            classes = torch.nonzero(present).flatten().tolist()
            raise ValueError(f"{fn}: the unseen pool holds none of the forget classes {classes}")


class Forwards:
    """How a training step runs the model: which forwards update running statistics, fused or
    micro-batched forwards, and the precision and memory format of every forward.

    ``forwards(model, first, *more)`` returns the logits of each batch (``None`` passes through): the
    first batch (a step's retain batch) is an ordinary training forward; the others (forget batches)
    run under :func:`~fastblend._batchnorm.frozen_running_stats` and leave every buffer of the
    model's training-mode modules untouched, also when a recomputation replays them in the backward.
    :meth:`frozen` is one such forward alone and :meth:`infer` one without gradient (unseen batches,
    teachers).

    Args:
        fuse: run all batches of a call in one forward (only for models whose outputs do not depend on
            the rest of their batch and that hold no state: see :meth:`for_model`).
        micro_batch: run forwards that need gradients in micro-batches of this many samples, each
            recomputed in the backward (activation checkpointing); ``0``: off.
        autocast: a callable returning the context manager of every forward (``torch.autocast``).
        prep: applied to each batch before the model (e.g. channels-last).
        inference_mode: forwards without gradient run under ``torch.inference_mode`` (their logits
            are cloned into ordinary tensors) instead of ``torch.no_grad``.
        float_logits: cast logits to float32 (the methods' precision rule under autocast).
    """

    def __init__(self, fuse: bool = False, micro_batch: int = 0, autocast=None, prep=None,
                 inference_mode: bool = False, float_logits: bool = False) -> None:
        self.fuse, self.micro = bool(fuse), int(micro_batch)
        self._autocast = autocast if autocast is not None else contextlib.nullcontext
        self._prep = prep
        self.inference_mode, self.float_logits = inference_mode, float_logits

    def for_model(self, model: nn.Module, fn: str, stacklevel: int = 3) -> Forwards:
        """Turn ``fuse`` and ``micro_batch`` off, with a warning naming ``fn``, where they would change
        what ``model`` computes: a training-mode BatchNorm makes each output depend on its batch, and a
        training-mode module with buffers (running statistics) would take the forget samples of a
        fused forward into them or update them once per micro-batch."""
        stateful = has_batch_statistics(model) or bool(stateful_buffers(model))
        if stateful:
            for name, on in (("fuse_forward", self.fuse), ("micro_batch", self.micro)):
                if on:
                    warnings.warn(f"{fn}: {name} ignored: the model has BatchNorm or running statistics in "
                                  f"training mode, so a {'fused' if name == 'fuse_forward' else 'split'} forward "
                                  "would change its outputs or its statistics", stacklevel=stacklevel)
            self.fuse, self.micro = False, 0
        return self

    def _logits(self, out: torch.Tensor) -> torch.Tensor:
        return out.float() if self.float_logits else out

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        return self._prep(x) if self._prep is not None else x

    def _grad_forward(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        x = self._input(x)
        if not self.micro or x.shape[0] <= self.micro:
            return model(x)
        from torch.utils.checkpoint import checkpoint

        return torch.cat([checkpoint(model, x[s : s + self.micro], use_reentrant=False)
                          for s in range(0, x.shape[0], self.micro)])

    def __call__(self, model: nn.Module, *xs: torch.Tensor | None) -> list[torch.Tensor | None]:
        present = [x for x in xs if x is not None]
        with self._autocast():
            if self.fuse and len(present) > 1:
                out = self._logits(self._grad_forward(model, torch.cat(present)))
                parts = iter(out.split([x.shape[0] for x in present]))
            else:
                outs = [self._logits(self._grad_forward(model, present[0]))] if present else []
                if len(present) > 1:
                    with frozen_running_stats(model):
                        more = [self._logits(self._grad_forward(model, x)) for x in present[1:]]
                    guard_recomputation(model, more[0])
                    outs += more
                parts = iter(outs)
        return [next(parts) if x is not None else None for x in xs]

    def frozen(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Logits of ``x`` with gradient, leaving the model's buffers untouched (a forget batch alone)."""
        with self._autocast(), frozen_running_stats(model):
            out = self._logits(self._grad_forward(model, x))
        guard_recomputation(model, out)
        return out

    def infer(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Logits without gradient, an ordinary tensor; the model's buffers untouched."""
        no_grad = torch.inference_mode() if self.inference_mode else torch.no_grad()
        with frozen_running_stats(model), no_grad, self._autocast():
            out = self._logits(model(self._input(x)))
        return out.clone() if self.inference_mode else out


def has_batch_statistics(model: nn.Module) -> bool:
    """Whether a training-mode BatchNorm makes some output depend on the rest of its batch."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in model.modules())


class ForgetBatch(NamedTuple):
    """A step's forget batch: ``x`` / ``y`` the part this process forwards (all of it on one
    process), ``logits`` their logits once forwarded, ``labels`` the whole batch's labels and ``size``
    its sample count (under data parallel each rank forwards its :func:`~fastblend.distributed.row_shard`)."""

    x: torch.Tensor
    y: torch.Tensor
    logits: torch.Tensor | None
    labels: torch.Tensor
    size: int
    #: the whole batch's rows of the forget set (int64 ``[size]``, the same on every rank)
    index: torch.Tensor | None = None


def check_odds_pairing(fn: str, value: Any, name: str = "odds_pairing", target: str | None = None,
                       target_name: str = "target") -> str:
    """``value`` if it is one of :data:`ODDS_PAIRINGS`, else a ``ValueError`` naming ``fn`` and ``name``; given the
    regulariser's ``target`` (named ``target_name``), also refuses ``"image"`` with any target but the fixed matched
    one, whose images the per-image targets come from."""
    if not isinstance(value, str) or value not in ODDS_PAIRINGS:
        raise ValueError(f"{fn}: {name} must be one of {ODDS_PAIRINGS}, got {value!r}")
    if value == "image" and target is not None and target != "matched_fixed":
        raise ValueError(f"{fn}: {name}='image' compares each forget image with its matched held-out image under the "
                         f"untouched model, which needs {target_name}='matched_fixed', got {target_name}={target!r}")
    return value


def _check_odds_target(fn: str, target: Any, pairing: str, n_forget: int) -> torch.Tensor | None:
    """``forget_odds_target`` checked against ``odds_pairing``: ``[n_forget]`` finite floating (float64) for
    ``"image"``, absent otherwise."""
    if pairing != "image":
        if target is not None:
            raise ValueError(f"{fn}: forget_odds_target is read only with odds_pairing='image', got odds_pairing="
                             f"{pairing!r}; pass odds_pairing='image' or leave forget_odds_target out")
        return None
    if target is None:
        raise ValueError(f"{fn}: odds_pairing='image' needs forget_odds_target, one target log-odds per forget image "
                         f"([{n_forget}] floating; e.g. the untouched model's on each forget image's "
                         "difficulty-matched held-out image, fastblend.matched_unseen)")
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"{fn}: forget_odds_target must be a floating torch.Tensor [{n_forget}], got "
                        f"{type(target).__name__}")
    if target.dim() != 1 or target.shape[0] != n_forget or not target.is_floating_point():
        raise ValueError(f"{fn}: forget_odds_target must be a floating [N_f] tensor with one value per forget image "
                         f"({n_forget}), got {target.dtype} of shape {list(target.shape)}")
    if not bool(torch.isfinite(target).all()):
        raise ValueError(f"{fn}: forget_odds_target must be finite")
    return target.detach().double()


def _check_anchor(fn: str, anchor: Any, model: nn.Module, shape: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """``anchor`` checked: ``(images [N_a, *shape] floating, cast to the model's dtype; logits [N_a, C] finite)``,
    ``shape`` the forget images' own."""
    if anchor is None:
        raise TypeError(f"{fn}: anchor_weight > 0 needs anchor=(images, logits): held-out images and their logits "
                        "under the untouched model, two tensors")
    if not (isinstance(anchor, (tuple, list)) and len(anchor) == 2
            and all(isinstance(t, torch.Tensor) for t in anchor)):
        raise TypeError(f"{fn}: anchor must be (images, logits): held-out images and their logits under the untouched "
                        f"model, two tensors; got {type(anchor).__name__}")
    x, z = anchor
    if x.dim() < 2 or not x.is_floating_point() or x.shape[0] < 1:
        raise ValueError(f"{fn}: anchor images must be a floating [N_a, ...] tensor with N_a >= 1, got {x.dtype} of "
                         f"shape {list(x.shape)}")
    if tuple(x.shape[1:]) != shape:
        raise ValueError(f"{fn}: anchor images are {list(x.shape[1:])} but the forget images {list(shape)}")
    if z.dim() != 2 or z.shape[0] != x.shape[0] or not z.is_floating_point():
        raise ValueError(f"{fn}: anchor logits must be a floating [N_a, C] tensor with one row per anchor image "
                         f"({x.shape[0]}), got {z.dtype} of shape {list(z.shape)}")
    if not bool(torch.isfinite(z).all()):
        raise ValueError(f"{fn}: anchor logits must be finite")
    dtype = model_dtype(model)
    return (x.to(dtype) if dtype is not None and dtype.is_floating_point else x), z.detach()


class AAMUStep:
    """The A-AMU step (docs/method.md §2.4), the one implementation that every way in runs: the
    packaged accelerated methods (``unlearn("a_*")``), the drop-in's criterion
    (:func:`fastblend.prepare_unlearning`), a hand-written loop and data-parallel training.

    Each step draws a forget batch of ``forget_batch_factor·batch_size`` samples (without
    replacement; all of ``D_f`` when smaller) and an unseen batch of ``unseen_batch_factor·batch_size``
    from the forget batch's classes, each at most ``max_draw`` samples (the recipe's 4·64: a larger
    retain batch draws no more; ``forget_draw`` and ``unseen_draw`` hold the sizes), forwards them
    (the forget batch with gradient, the unseen batch without) and returns
    ``retain_weight·steepen(retain loss) + lam·MMD²`` from :meth:`loss`. Neither forward changes the
    model's buffers (BatchNorm's or any training-mode module's running statistics, also under
    activation checkpointing): in training mode they normalise with their own batch statistics, as
    the research code's forwards do, and only the caller's retain forward moves the statistics.

    A hand-written loop (on the reduced retain set of :func:`fastblend.condense`)::

        step = fastblend.AAMUStep(model, (forget_x, forget_y), (unseen_x, unseen_y), batch_size=64)
        opt = torch.optim.Adam(model.parameters(), lr=2.4e-4)
        for x, y in DataLoader(reduced_retain, batch_size=64, shuffle=True):
            per_sample = F.cross_entropy(model(x), y, reduction="none")  # the method's retain loss
            out = step.loss(per_sample)
            opt.zero_grad(); out.total.backward(); opt.step()

    ``out.main`` and ``out.mmd`` are the two parts, detached (log them with ``float``); ``out.total``
    carries the graph. To forward the retain and forget batches together (``fuse_forward``) call
    ``logits, forget = step.forward(model, x)`` first; :meth:`loss` then uses that forget batch.

    The labels are checked once (the forget labels here, the class count of the logits in the first
    :meth:`loss`); after that a step reads nothing on the host: on CUDA it never waits for the
    device, and ``torch.compile(model-and-loss, fullgraph=True)`` traces it whole.

    Args:
        model: the model being unlearned (image batches -> ``[n, C]`` logits), or its
            ``DistributedDataParallel`` wrapper (see below).
        forget, unseen: ``D_f`` and ``D_u``: each an ``(images [N, ...], labels [N] int64)`` pair, a
            ``Dataset`` or a ``DataLoader`` (read into memory once). Images are served in the model's
            floating dtype.
        batch_size: the retain batch size B; :meth:`loss` refuses a retain loss of more than B samples.
        lam, k, kappa, sigma, steepen, backend: see :class:`AAMULoss`.
        seed: seeds both samplers (their own device-side streams; never the global RNG).
        forget_batch_factor, unseen_batch_factor: forget / unseen batches hold this many times B.
        max_draw: the most forget and unseen samples a step draws (each), ``None`` for no cap; default
            :data:`fastblend.recipe.RECIPE`'s 256 = 4·64, so the recipe's draws are the paper's and a
            retain batch of 256 draws 256 of each, not 1,024 (docs/method.md §7.3).
        unseen_refresh: draw and forward a new unseen batch every this many steps and reuse its logits
            in between (1: every step, the paper's; > 1 departs from docs/method.md §2.4: the unseen
            losses are up to ``unseen_refresh - 1`` steps stale and follow the refresh step's classes).
        unseen_logits: ``[N_u, C]`` fixed logits of the unseen rows (e.g. the untouched model's): the unseen
            batches are then not forwarded and the regulariser's target stays where these put it, instead of
            moving with the model being trained (docs/method.md §7.7, ``target="matched_fixed"``).
        odds_weight: weight of the log-odds term of :class:`AAMULoss` (0: off, the paper's; docs/method.md §7.8).
        odds_pairing, forget_odds_target: how the log-odds term pairs the forget images with the target.
            ``"quantile"`` (default): the forget batch's sorted log-odds against the unseen batch's (``W₂²``,
            §7.8). ``"image"`` (docs/method.md §7.10): each forget image against its own target log-odds,
            ``forget_odds_target`` (``[N_f]``, one finite value per forget row in the forget set's own order, so
            a forget ``DataLoader`` must read its dataset in order; e.g. the untouched model's on the held-out
            image matched to it by difficulty), one-sided: ``odds_weight · mean_i max(0, φ_i − φ*_i)²``
            over the forget batch (:func:`odds_excess`); it then replaces the quantile match.
        anchor, anchor_weight: the held-out anchor (docs/method.md §7.9; an option, off by default): ``anchor`` is
            ``(images [N_a, ...], logits [N_a, C])``, held-out images the model never trained on and their fixed
            logits under the untouched model; each :meth:`loss` forwards ``min(batch_size, N_a)`` of them (drawn
            without replacement, seeded; the model's buffers untouched) and adds ``anchor_weight · KL(p₀ ‖ p)``
            between the untouched model's and the current model's predictions on them: forgetting the forget
            set should not change how the model treats images it never saw. Under ``torch.distributed`` each
            rank forwards its row shard of the same draw and the rows' KL are gathered, as the forget rows are.
        fuse_forward, micro_batch: see :class:`Forwards` (used by :meth:`forward`; turned off with a
            warning for models whose BatchNorm or running statistics they would affect).
        num_classes: the class count (default: the largest unseen label + 1).
        forwards: how forwards run (precision, memory format); default plain forwards with
            ``fuse_forward`` / ``micro_batch``. :func:`fastblend.unlearn` passes its run's.

    The recipe's defaults are :data:`fastblend.recipe.RECIPE`.

    Data parallel (``torch.distributed`` with P > 1 ranks and a ``DistributedDataParallel`` model;
    a plain model is trained by each rank alone): pass the wrapper and the *global* ``batch_size``,
    and on each rank the per-sample losses of its part of the global retain batch. Every rank draws
    the same global forget/unseen indices and forwards its :func:`~fastblend.distributed.row_shard`
    of them; retain and forget losses are gathered with autograd, so every rank computes the whole
    batch's loss and each rank's rows get ``P`` times their gradient, which DDP's averaging divides
    back: single-process steps up to float reassociation. Training-mode BatchNorm normalises each
    rank's part alone (or use ``SyncBatchNorm``).
    """

    def __init__(self, model: nn.Module, forget: Any, unseen: Any, *, batch_size: int = RECIPE.batch_size,
                 lam: float = RECIPE.lam, k: float = RECIPE.k, kappa: float = RECIPE.kappa,
                 sigma: float = RECIPE.sigma, steepen: str = RECIPE.steepen, backend: str = "auto", seed: int = 0,
                 forget_batch_factor: int = RECIPE.forget_batch_factor,
                 unseen_batch_factor: int = RECIPE.unseen_batch_factor, max_draw: int | None = RECIPE.max_draw,
                 unseen_refresh: int = RECIPE.unseen_refresh, fuse_forward: bool = False, micro_batch: int = 0,
                 num_classes: int | None = None, forwards: Forwards | None = None, fn: str = "AAMUStep",
                 transform: str = RECIPE.transform, unseen_logits: torch.Tensor | None = None,
                 odds_weight: float = 0.0, anchor: Any = None, anchor_weight: float = 0.0,
                 odds_pairing: str = "quantile", forget_odds_target: torch.Tensor | None = None) -> None:
        self.fn = fn
        self.loss_name = f"{fn}.loss" if fn == "AAMUStep" else fn  # how loss() names itself in errors
        (batch_size, lam, k, kappa, sigma, seed, forget_batch_factor, unseen_batch_factor, unseen_refresh,
         micro_batch, max_draw) = map(plain_number, (batch_size, lam, k, kappa, sigma, seed, forget_batch_factor,
                                                     unseen_batch_factor, unseen_refresh, micro_batch, max_draw))
        self.batch_size = _check_batch_size(fn, batch_size)
        if not isinstance(model, nn.Module):
            raise TypeError(f"{fn}: model must be a torch.nn.Module, got {type(model).__name__}")
        check_step_settings(fn, lam, k, kappa, sigma, backend, forget_batch_factor, unseen_batch_factor, max_draw)
        if isinstance(unseen_refresh, bool) or not isinstance(unseen_refresh, int) or unseen_refresh < 1:
            raise ValueError(f"{fn}: unseen_refresh must be an int >= 1, got {unseen_refresh!r}")
        if not isinstance(fuse_forward, bool):
            raise TypeError(f"{fn}: fuse_forward must be a bool, got {type(fuse_forward).__name__}")
        if isinstance(micro_batch, bool) or not isinstance(micro_batch, int) or micro_batch < 0:
            raise ValueError(f"{fn}: micro_batch must be an int >= 0 (0 = off), got {micro_batch!r}")
        self.model = model
        self.parallel = is_distributed() and isinstance(model, DistributedDataParallel)
        self._plain = model.module if isinstance(model, DistributedDataParallel) else model
        self.forget = read_forget(forget, fn, "forget_odds_target's rows would be paired with the rows of one "
                                  "shuffled pass (odds_pairing='image')" if odds_pairing == "image" else None)
        self.unseen = as_data(unseen, "unseen", fn).materialise(fn)
        for view in (self.forget, self.unseen):
            cast_to_model(view, self._plain)  # batches are served in the network's dtype
        _check_transform(fn, transform)
        odds_weight = check_odds_weight(fn, odds_weight)
        self.odds_pairing = check_odds_pairing(fn, odds_pairing)
        #: the per-image log-odds term's weight (``odds_pairing="image"``; 0 otherwise) and its targets
        self.image_odds_weight = odds_weight if odds_pairing == "image" else 0.0
        self.forget_odds_target = _check_odds_target(fn, forget_odds_target, odds_pairing, len(self.forget))
        if self.forget_odds_target is not None:  # where the batch's rows are drawn: a step reads it without a sync
            self.forget_odds_target = self.forget_odds_target.to(self.forget.images.device)
        self.criterion = AAMULoss(lam, k, kappa, sigma, steepen, backend, transform=transform,
                                  odds_weight=0.0 if odds_pairing == "image" else odds_weight)
        if self.criterion.odds_weight and unseen_logits is None:
            warnings.warn(f"{fn}: odds_weight > 0 against a target that moves with the model being trained (no "
                          "unseen_logits): the forget set chases it down, which collapsed the model in "
                          "docs/method.md §7.8's measurements; use a fixed target (config.target='matched_fixed', "
                          "or unseen_logits=)", UserWarning, stacklevel=3)
        #: the draw settings as given (``forget_draw`` and ``unseen_draw`` are what they come to)
        self.forget_batch_factor, self.unseen_batch_factor, self.max_draw = (forget_batch_factor, unseen_batch_factor,
                                                                             max_draw)
        cap = max_draw if max_draw is not None else math.inf
        #: samples per forget draw (factor·B capped at ``max_draw`` and at the forget set) and per unseen draw
        self.forget_draw = int(min(forget_batch_factor * batch_size, cap, len(self.forget)))
        self.unseen_draw = int(min(unseen_batch_factor * batch_size, cap))
        self.forget_sampler = ForgetSampler(len(self.forget), self.forget_draw, seed=seed,
                                            device=self.forget.images.device)
        self.unseen_sampler = UnseenSampler(self.unseen.labels, self.unseen_draw, num_classes=num_classes,
                                            seed=seed + 1)
        self.unseen_sampler.check_labels(self.forget.labels, fn, "forget labels")  # once: steps sample sync-free
        self.unseen_refresh = unseen_refresh
        self.anchor_weight = check_odds_weight(fn, anchor_weight, "anchor_weight")
        self.anchor_loss: torch.Tensor | None = None  # the latest step's KL term, detached (before its weight)
        self._anchor = None
        if anchor is not None or self.anchor_weight:  # checked whenever given; used when its weight is > 0
            checked = _check_anchor(fn, anchor, self._plain, tuple(self.forget.images.shape[1:]))
            self._anchor = checked if self.anchor_weight else None
        if self.anchor_weight:
            n_anchor = self._anchor[0].shape[0]
            self.anchor_sampler = ForgetSampler(n_anchor, min(self.batch_size, n_anchor), seed=seed + 2,
                                                device=self._anchor[0].device)
        self.unseen_logits = None  # fixed logits of the unseen rows: the target does not move with the model
        if unseen_logits is not None:
            if not isinstance(unseen_logits, torch.Tensor):
                raise TypeError(f"{fn}: unseen_logits must be a floating [N_u, C] tensor (or None), got "
                                f"{type(unseen_logits).__name__}")
            if unseen_logits.dim() != 2 or unseen_logits.shape[0] != len(self.unseen) \
                    or not unseen_logits.is_floating_point():
                raise ValueError(f"{fn}: unseen_logits must be a floating [N_u, C] tensor with one row per unseen "
                                 f"image ({len(self.unseen)}), got {unseen_logits.dtype} of shape "
                                 f"{list(unseen_logits.shape)}")
            top = int(self.unseen.labels.max()) if len(self.unseen) else -1
            if unseen_logits.shape[1] <= top:  # checked here: the data-parallel path never reaches the loss's check
                raise ValueError(f"{fn}: unseen_logits has {unseen_logits.shape[1]} columns but the unseen labels "
                                 f"go up to {top}; it needs one column per class (the model's output width)")
            if not bool(torch.isfinite(unseen_logits).all()):
                raise ValueError(f"{fn}: unseen_logits must be finite")
            self.unseen_logits = unseen_logits.detach()
        if forwards is None:
            forwards = Forwards(fuse_forward, micro_batch).for_model(self._plain, fn, stacklevel=3)
        self.forwards = forwards
        self._forget: ForgetBatch | None = None  # drawn and forwarded by forward(), used by the next loss()
        self._unseen: tuple | None = None  # (logits, or gathered losses under data parallel; labels; age)
        self._unseen_labels: torch.Tensor | None = None  # the latest unseen batch's labels (the one-off check)
        self._labels_checked = False  # quantile_mmd's label check needs the logits: the first loss() runs it

    def _device(self) -> torch.device:
        return module_device(self._plain) or self.forget.images.device

    def draw_forget(self, device: torch.device | None = None) -> ForgetBatch:
        """The next forget batch (this process's part of it under data parallel), not yet forwarded."""
        device = device if device is not None else self._device()
        fi = self.forget_sampler.sample()
        if not self.parallel:
            x, y = self.forget.take(fi, device)
            return ForgetBatch(x, y, None, y, fi.numel(), fi)
        x, y = self.forget.take(fi[row_shard(fi.numel())], device)
        labels = self.forget.labels[fi.to(self.forget.labels.device)].to(device)
        return ForgetBatch(x, y, None, labels, fi.numel(), fi)

    def forward(self, net: nn.Module, retain_x: torch.Tensor,
                device: torch.device | None = None) -> tuple[torch.Tensor, ForgetBatch]:
        """Draw this step's forget batch and forward it with the retain batch ``retain_x`` through
        ``net`` (the model, or the wrapper that trains it): ``(retain logits, forget batch with its
        logits)``, fused into one forward when ``fuse_forward`` allows. The next :meth:`loss` uses
        this forget batch."""
        forget = self.draw_forget(device)
        logits_r, logits_f = self.forwards(net, retain_x, forget.x)
        self._forget = forget._replace(logits=logits_f)
        return logits_r, self._forget

    def _unseen_part(self, labels: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The unseen batch's logits and labels (its gathered per-sample losses and ``None`` under data
        parallel), drawn for the forget batch's ``labels`` and forwarded every ``unseen_refresh`` steps."""
        if self._unseen is None or self._unseen[2] == self.unseen_refresh:
            ui = self.unseen_sampler.sample(labels, validate=False)
            if self.unseen_logits is not None:  # a fixed target: no forward; every rank holds the whole batch
                fixed = self.unseen_logits[ui.to(self.unseen_logits.device)].to(device)
                y_u = self.unseen.labels[ui.to(self.unseen.labels.device)].to(device)
                if not self.parallel:
                    self._unseen = (fixed, y_u, 0)
                else:
                    self._unseen_labels = y_u
                    self._unseen = (F.cross_entropy(fixed.double(), y_u, reduction="none"), None, 0)
            elif not self.parallel:
                x_u, y_u = self.unseen.take(ui, device)
                self._unseen = (self.forwards.infer(self._plain, x_u), y_u, 0)
            else:  # the unseen part's losses (the transform needs no more), gathered
                self._unseen_labels = self.unseen.labels[ui.to(self.unseen.labels.device)]
                x_u, y_u = self.unseen.take(ui[row_shard(ui.numel())], device)
                ce_u = F.cross_entropy(self.forwards.infer(self._plain, x_u).double(), y_u, reduction="none")
                self._unseen = (all_gather_rows(ce_u), None, 0)
        logits_u, y_u, age = self._unseen
        self._unseen = (logits_u, y_u, age + 1)
        return logits_u, y_u

    def _anchor_term(self, device: torch.device) -> torch.Tensor:
        """``KL(p₀ ‖ p)`` (batch mean) on a fresh draw of the anchor images: their fixed logits under the
        untouched model against the current model's, forwarded with gradient and the buffers untouched."""
        x, z0 = self._anchor
        ai = self.anchor_sampler.sample()
        if self.parallel:  # every rank draws the same batch and forwards its part; the rows' KL are gathered
            ai = ai[row_shard(ai.numel())]
        z = self.forwards.frozen(self.model, x[ai.to(x.device)].to(device))
        ref = F.log_softmax(z0[ai.to(z0.device)].to(device, torch.float32), 1)
        if not self.parallel:
            kl = F.kl_div(F.log_softmax(z.float(), 1), ref, log_target=True, reduction="batchmean")
        else:  # the batch mean of the gathered rows, the same on every rank (each rank's rows get P times their
            # gradient through the gather, which DDP's average divides back), as the A-AMU loss's rows
            rows = F.kl_div(F.log_softmax(z.float(), 1), ref, log_target=True, reduction="none").sum(1)
            kl = all_gather_rows_with_grad(rows).mean()
        self.anchor_loss = kl.detach()
        return kl

    def loss(self, retain_per_sample_loss: torch.Tensor, retain_weight: float = 1.0) -> AAMULossOutput:
        """``AAMULossOutput(total, main, mmd)`` for one step; backpropagate ``total``.

        ``retain_per_sample_loss``: ``[b]`` floating, ``1 <= b <= batch_size`` (the method's per-sample
        retain loss, e.g. ``F.cross_entropy(..., reduction="none")``; under data parallel this rank's
        part). ``retain_weight`` scales the steepened retain loss (a method's own weight, e.g. SCRUB's
        0.99). Uses the forget batch of a preceding :meth:`forward`, else draws and forwards one."""
        fn = self.loss_name
        retain = retain_per_sample_loss
        if not self.parallel and isinstance(retain, torch.Tensor) and retain.dim() == 1 \
                and retain.numel() > self.batch_size:
            raise ValueError(f"{fn}: retain_per_sample_loss has {retain.numel()} samples but the step was built "
                             f"with batch_size={self.batch_size}; pass the retain batch size as batch_size so the "
                             "forget/unseen batches are sized for it")
        forget, self._forget = self._forget, None
        if forget is None:
            forget = self.draw_forget()
            forget = forget._replace(logits=self.forwards.frozen(self.model, forget.x))
        device = forget.logits.device
        if not self._labels_checked:  # the model's classes, known only now
            for name, fixed in (("unseen_logits", self.unseen_logits),
                                ("anchor logits", None if self._anchor is None else self._anchor[1])):
                if fixed is not None and fixed.shape[1] != forget.logits.shape[1]:
                    raise ValueError(f"{fn}: {name} has {fixed.shape[1]} columns but the model gives "
                                     f"{forget.logits.shape[1]} logits per image; pass the fixed logits of this "
                                     "model's classes")
        if not self.parallel:
            logits_u, y_u = self._unseen_part(forget.labels, device)
            validate, self._labels_checked = not self._labels_checked, True
            out = self.criterion(retain, forget.logits, forget.labels, logits_u, y_u, retain_weight=retain_weight,
                                 validate=validate)
            if self.image_odds_weight:  # from the logits: exact where p_y rounds to 1
                out = self._with_image_odds(out, true_class_log_odds(forget.logits.double(), forget.labels), forget)
            if self._anchor is None:
                return out
            return out._replace(total=out.total + self.anchor_weight * self._anchor_term(device).to(out.total.dtype))
        retain = all_gather_rows_with_grad(retain)
        if retain.numel() > self.batch_size:
            raise ValueError(f"{fn}: the ranks' retain_per_sample_loss hold {retain.numel()} samples together but "
                             f"the step was built with batch_size={self.batch_size}; under torch.distributed pass "
                             "the global retain batch size")
        unseen_ce, _ = self._unseen_part(forget.labels, device)
        if not self._labels_checked:  # what quantile_mmd's validation does on one process, once
            for name, labels in (("forget", forget.labels), ("unseen", self._unseen_labels)):
                check_batch_labels(labels, forget.logits.shape[1], name, fn)
            self._labels_checked = True
        # the transform needs only each sample's loss: M losses per set cross the ranks, not M x C logits
        forget_ce = all_gather_rows_with_grad(F.cross_entropy(forget.logits.double(), forget.y, reduction="none"))
        out = self.criterion.from_losses(retain, forget_ce, unseen_ce, retain_weight=retain_weight)
        if self.image_odds_weight:  # the gathered rows are the whole batch's, in the order of its index
            out = self._with_image_odds(out, odds_of_loss(forget_ce), forget)
        if self._anchor is None:
            return out
        return out._replace(total=out.total + self.anchor_weight * self._anchor_term(device).to(out.total.dtype))

    def _with_image_odds(self, out: AAMULossOutput, forget_odds: torch.Tensor, forget: ForgetBatch) -> AAMULossOutput:
        """``out`` plus the per-image log-odds term (``odds_pairing="image"``): ``odds_weight`` times the mean
        squared excess of the forget batch's log-odds ``forget_odds`` (``[size]``) over their own targets."""
        excess = odds_excess(forget_odds, self.forget_odds_target[forget.index.to(self.forget_odds_target.device)])
        return out._replace(total=out.total + self.image_odds_weight * excess.to(out.total.dtype))
