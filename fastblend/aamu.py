"""A-AMU: the accelerated unlearning objective (docs/method.md §2) and the samplers that feed it.

``L = steepen(retain loss) + λ · MMD²(g(unseen batch), g(forget batch))``. Any AMU method keeps its
own retain-side per-sample loss; :func:`accelerate` wraps the rest. A complete training loop on the
reduced retain set (``fastblend.condense``)::

    acc = fastblend.accelerate(model, forget_x, forget_y, unseen_x, unseen_y, batch_size=64)
    opt = torch.optim.Adam(model.parameters(), lr=2.4e-4)
    for x, y in DataLoader(reduced_retain, batch_size=64, shuffle=True):
        x, y = x.to(device), y.to(device)
        per_sample = F.cross_entropy(model(x), y, reduction="none")  # the method's retain loss
        out = acc.loss(per_sample)          # draws 4B forget / 4B unseen samples itself
        opt.zero_grad()
        out.total.backward()
        opt.step()

``out.main`` and ``out.mmd`` are the two parts, detached (log them with ``float``); ``out.total``
carries the graph. The forget and unseen forwards leave BatchNorm running statistics untouched.

Data parallel (``torchrun``): wrap the model in ``DistributedDataParallel`` yourself, pass the wrapper
and the *global* ``batch_size`` B, and feed each rank's part of the global retain batch (:class:`Accelerator`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ._batchnorm import frozen_batchnorm_stats
from ._checks import check_has_data, plain_number
from ._device import module_device
from .dataview import check_batch_labels, model_dtype
from .distributed import all_gather_rows, all_gather_rows_with_grad, is_distributed, row_shard
from .ops._dispatch import BACKENDS
from .ops.quantile_mmd import _check_params, quantile_mmd

STEEPEN_MODES = ("batch_mean_sq", "per_sample_sq")


def steepen(per_sample_loss: torch.Tensor, mode: str = "batch_mean_sq") -> torch.Tensor:
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


class AAMULoss(nn.Module):
    """``L = steepen(retain_loss) + λ · MMD²(G_u, G_f)`` (docs/method.md §2.4). The unseen logits are detached.

    ``validate=True`` checks the label ranges on the host in eager mode; under ``torch.compile`` or
    ``torch.export`` that check is skipped, so a compiled step has no graph break either way.
    ``validate=False`` skips it in eager mode too (a hot loop whose labels are known to be valid).
    """

    def __init__(self, lam: float = 34.0, k: float = 2.0, kappa: float = 60.0, sigma: float = 1.0,
                 steepen: str = "batch_mean_sq", backend: str = "auto", validate: bool = True) -> None:
        super().__init__()
        if steepen not in STEEPEN_MODES:
            raise ValueError(f"AAMULoss: steepen must be one of {STEEPEN_MODES}, got {steepen!r}")
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
        mmd = quantile_mmd(forget_logits, forget_labels, unseen_logits.detach(), unseen_labels, self.k,
                           self.kappa, self.sigma, backend=self.backend, validate=self.validate and validate)
        main_part = main if retain_weight == 1.0 else retain_weight * main
        return AAMULossOutput(main_part + self.lam * mmd.to(main.dtype), main.detach(), mmd.detach())

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
        mmd = _quantile_mmd_of_losses(forget_ce, unseen_ce.detach(), self.k, self.kappa, self.sigma)
        main_part = main if retain_weight == 1.0 else retain_weight * main
        return AAMULossOutput(main_part + self.lam * mmd.to(main.dtype), main.detach(), mmd.detach())

    def extra_repr(self) -> str:
        return f"lam={self.lam}, k={self.k}, kappa={self.kappa}, sigma={self.sigma}, steepen={self.steepen!r}"


def _transform_losses(ce: torch.Tensor, k: float, kappa: float) -> torch.Tensor:
    """``g`` of docs/method.md §2.2 from per-sample cross-entropies ``[M]`` (float64, differentiable)."""
    u = torch.log1p(ce.double() + 1e-8)
    d = u[:, None] - u[None, :]
    r = torch.exp(-k * d.clamp_min(0))
    q = torch.where(d > 0, r / (1 + r), torch.full_like(r, 0.5)).mean(1)  # q = 1 - c
    return (-torch.special.ndtri(q)).clamp(-kappa, kappa)


def _quantile_mmd_of_losses(forget_ce: torch.Tensor, unseen_ce: torch.Tensor, k: float, kappa: float,
                            sigma: float) -> torch.Tensor:
    """Biased MMD² (docs/method.md §2.3) between the transformed forget and unseen losses; NaN when any
    loss is not finite (the rule of :func:`quantile_mmd`)."""
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


class Accelerator:
    """Turns any AMU method's retain-side per-sample loss into its accelerated version (docs/method.md §2.4).

    Holds the forget and unseen sets, draws a forget batch of ``forget_batch_factor·batch_size``
    (4B) and an unseen batch of ``unseen_batch_factor·batch_size`` (4B) from the forget batch's
    classes each step, and returns ``steepen(retain loss) + lam · MMD²`` from :meth:`loss`. The
    unseen forward runs under ``torch.no_grad()``; the forget forward carries gradient into
    ``model``. Neither updates BatchNorm running statistics: in training mode both normalise with
    their own batch statistics, as the research code's forwards do, so forget and unseen logits
    are computed alike, but only the caller's retain forward moves the running statistics.

    The labels are checked once (the forget labels here, the class count of the logits in the first
    :meth:`loss`); after that a step reads nothing on the host: on CUDA it never waits for the
    device, and ``torch.compile(model-and-loss, fullgraph=True)`` traces it whole (unseen batches
    follow :meth:`UnseenSampler.sample`'s rule, ``validate=False``).

    Args:
        model: the model being unlearned (called on image batches, returns ``[n, C]`` logits).
        forget_x, forget_y: ``[F, ...]`` images and ``[F]`` int64 labels of ``D_f``.
        unseen_x, unseen_y: ``[U, ...]`` images and ``[U]`` int64 labels of ``D_u``.
        batch_size: the retain batch size B; :meth:`loss` refuses a retain loss of more than B samples.
        lam, k, kappa, sigma, steepen, backend: see :class:`AAMULoss` (checked here).
        seed: seeds both samplers.
        forget_batch_factor, unseen_batch_factor: forget / unseen batches hold this many times
            ``batch_size`` samples (4 in the reference, as in the method configs).

    Images of another floating dtype than the model's parameters (float16, bfloat16, float64) are
    cast to the model's dtype once, here; integer labels are required (float labels are refused).

    Under ``torch.distributed`` (P > 1 ranks) data parallel means a ``DistributedDataParallel`` model
    (a plain model is trained by each rank alone, e.g. one seed per rank): pass the wrapper and the
    global ``batch_size``; each rank passes the per-sample losses of its part of the global retain
    batch. Every rank draws the same global forget/unseen indices and forwards its
    :func:`~fastblend.distributed.row_shard` of them; retain losses and forget logits are gathered
    with autograd, so every rank computes the whole batch's loss and each rank's rows get ``P``
    times their gradient, which DDP's averaging divides back: single-process steps up to float
    reassociation. Training-mode BatchNorm normalises each rank's part alone (or use ``SyncBatchNorm``).
    """

    def __init__(self, model: nn.Module, forget_x: torch.Tensor, forget_y: torch.Tensor, unseen_x: torch.Tensor,
                 unseen_y: torch.Tensor, batch_size: int = 64, lam: float = 34.0, k: float = 2.0,
                 kappa: float = 60.0, sigma: float = 1.0, steepen: str = "batch_mean_sq", backend: str = "auto",
                 seed: int = 0, forget_batch_factor: int = 4, unseen_batch_factor: int = 4) -> None:
        fn = "Accelerator"
        batch_size, lam, k, kappa, sigma, seed, forget_batch_factor, unseen_batch_factor = map(
            plain_number, (batch_size, lam, k, kappa, sigma, seed, forget_batch_factor, unseen_batch_factor))
        check_has_data(fn, "forget and unseen images and labels", forget_x, forget_y, unseen_x, unseen_y)
        self.batch_size = _check_batch_size(fn, batch_size)
        if not isinstance(model, nn.Module):
            raise TypeError(f"{fn}: model must be a torch.nn.Module, got {type(model).__name__}")
        _check_loss_params(fn, lam, k, kappa, sigma, backend)
        for name, factor in (("forget_batch_factor", forget_batch_factor),
                             ("unseen_batch_factor", unseen_batch_factor)):
            if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
                raise ValueError(f"{fn}: {name} must be an int >= 1, got {factor!r}")
        for name, x, y in (("forget", forget_x, forget_y), ("unseen", unseen_x, unseen_y)):
            if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
                raise TypeError(f"{fn}: {name}_x and {name}_y must be tensors")
            if not x.is_floating_point():
                raise TypeError(f"{fn}: {name}_x must be floating-point images, got {x.dtype}")
            if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
                raise TypeError(f"{fn}: {name}_y must be integer class labels, got {y.dtype} (float labels "
                                "would be truncated)")
            if y.dim() != 1 or x.dim() < 1 or x.shape[0] != y.shape[0]:
                raise ValueError(f"{fn}: {name}_x and {name}_y must have the same length, got "
                                 f"{x.shape[0] if x.dim() else 0} and {list(y.shape)}")
            if y.numel() and int(y.min()) < 0:
                raise ValueError(f"{fn}: {name}_y must be >= 0, got {int(y.min())}")
        dtype = model_dtype(model)
        if dtype is not None:  # images run in the network's dtype (documented in the class docstring)
            forget_x, unseen_x = forget_x.to(dtype), unseen_x.to(dtype)
        self.model = model
        self.forget_x, self.forget_y = forget_x, forget_y.long()
        self.unseen_x, self.unseen_y = unseen_x, unseen_y.long()
        self.criterion = AAMULoss(lam, k, kappa, sigma, steepen, backend)
        self.forget_sampler = ForgetSampler(forget_x.shape[0], forget_batch_factor * batch_size, seed=seed,
                                            device=forget_y.device)
        self.unseen_sampler = UnseenSampler(self.unseen_y, unseen_batch_factor * batch_size, seed=seed + 1)
        self.unseen_sampler.check_labels(self.forget_y, fn, "forget_y")  # once: loss() samples with validate=False
        self._labels_checked = False  # quantile_mmd's label check needs the logits: the first loss() runs it

    def loss(self, retain_per_sample_loss: torch.Tensor) -> AAMULossOutput:
        """``AAMULossOutput(total, main, mmd)`` for one step; backpropagate ``total``.

        ``retain_per_sample_loss``: ``[b]`` floating, ``1 <= b <= batch_size`` (the method's
        per-sample retain loss, e.g. ``F.cross_entropy(..., reduction="none")``)."""
        if isinstance(retain_per_sample_loss, torch.Tensor) and retain_per_sample_loss.dim() == 1 \
                and retain_per_sample_loss.numel() > self.batch_size:
            raise ValueError(f"Accelerator.loss: retain_per_sample_loss has {retain_per_sample_loss.numel()} "
                             f"samples but the accelerator was built with batch_size={self.batch_size}; pass "
                             "the retain batch size to accelerate(batch_size=...) so the forget/unseen batches "
                             "are sized for it")
        device = module_device(self.model) or self.forget_x.device
        fi = self.forget_sampler.sample()
        if is_distributed() and isinstance(self.model, DistributedDataParallel):
            return self._sharded_loss(retain_per_sample_loss, fi, device)
        fx, fy = self.forget_x[fi].to(device), self.forget_y[fi].to(device)
        ui = self.unseen_sampler.sample(self.forget_y[fi], validate=False)
        ux, uy = self.unseen_x[ui.to(self.unseen_x.device)].to(device), self.unseen_y[ui].to(device)
        with frozen_batchnorm_stats(self.model):
            forget_logits = self.model(fx)
            with torch.no_grad():
                unseen_logits = self.model(ux)
        validate, self._labels_checked = not self._labels_checked, True
        return self.criterion(retain_per_sample_loss, forget_logits, fy, unseen_logits, uy, validate=validate)

    def _sharded_loss(self, retain: torch.Tensor, fi: torch.Tensor, device: torch.device) -> AAMULossOutput:
        """:meth:`loss` of one data-parallel step: this rank forwards its part of the global forget and
        unseen batches; the loss is computed, identically on every rank, on the gathered batches."""
        retain = all_gather_rows_with_grad(retain)
        if retain.numel() > self.batch_size:
            raise ValueError(f"Accelerator.loss: the ranks' retain_per_sample_loss hold {retain.numel()} samples "
                             f"together but the accelerator was built with batch_size={self.batch_size}; under "
                             "torch.distributed pass the global retain batch size")
        ui = self.unseen_sampler.sample(self.forget_y[fi], validate=False)
        fy, uy = self.forget_y[fi].to(device), self.unseen_y[ui].to(device)
        fx = self.forget_x[fi[row_shard(fi.numel())]].to(device)
        ux = self.unseen_x[ui[row_shard(ui.numel())].to(self.unseen_x.device)].to(device)
        parts = row_shard(fi.numel()), row_shard(ui.numel())
        with frozen_batchnorm_stats(self.model):
            forget_logits = self.model(fx)
            with torch.no_grad():
                plain = self.model.module if isinstance(self.model, DistributedDataParallel) else self.model
                unseen_logits = plain(ux)
        if not self._labels_checked:  # what quantile_mmd's validation does on one process, once
            for name, labels in (("forget", fy), ("unseen", uy)):  # (>= 0 was checked at construction)
                check_batch_labels(labels, forget_logits.shape[1], name, "Accelerator.loss")
            self._labels_checked = True
        # the transform needs only each sample's loss: gather M losses per set, not M x C logits
        forget_ce = all_gather_rows_with_grad(F.cross_entropy(forget_logits.double(), fy[parts[0]], reduction="none"))
        unseen_ce = all_gather_rows(F.cross_entropy(unseen_logits.double(), uy[parts[1]], reduction="none"))
        return self.criterion.from_losses(retain, forget_ce, unseen_ce)


def accelerate(model: nn.Module, forget_x: object, forget_y: object = None, unseen_x: torch.Tensor | None = None,
               unseen_y: torch.Tensor | None = None, **kwargs) -> Accelerator:
    """The documented way to accelerate any AMU method: see the module docstring and :class:`Accelerator`
    (``kwargs``: ``batch_size``, ``lam``, ``k``, ``kappa``, ``sigma``, ``steepen``, ``backend``, ``seed``,
    ``forget_batch_factor``, ``unseen_batch_factor``).

    Either ``accelerate(model, forget_x, forget_y, unseen_x, unseen_y)`` with tensors, or
    ``accelerate(model, forget, unseen)`` with each set a ``DataLoader``, a ``Dataset`` or an
    ``(images, labels)`` pair (read into memory once)."""
    if unseen_x is None and unseen_y is None and forget_y is not None and not isinstance(forget_x, torch.Tensor):
        from .dataview import as_data

        forget = as_data(forget_x, "forget", "accelerate").materialise("accelerate")
        unseen = as_data(forget_y, "unseen", "accelerate").materialise("accelerate")
        forget_x, forget_y, unseen_x, unseen_y = forget.images, forget.labels, unseen.images, unseen.labels
    return Accelerator(model, forget_x, forget_y, unseen_x, unseen_y, **kwargs)
