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
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import nn

from ._batchnorm import frozen_batchnorm_stats
from ._device import module_device
from .ops.quantile_mmd import quantile_mmd

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
    """``L = steepen(retain_loss) + λ · MMD²(G_u, G_f)`` (docs/method.md §2.4). The unseen logits are detached."""

    def __init__(self, lam: float = 34.0, k: float = 2.0, kappa: float = 60.0, sigma: float = 1.0,
                 steepen: str = "batch_mean_sq", backend: str = "auto") -> None:
        super().__init__()
        if steepen not in STEEPEN_MODES:
            raise ValueError(f"AAMULoss: steepen must be one of {STEEPEN_MODES}, got {steepen!r}")
        if not isinstance(lam, (int, float)) or isinstance(lam, bool) or not lam >= 0:
            raise ValueError(f"AAMULoss: lam must be a number >= 0, got {lam!r}")
        self.lam, self.k, self.kappa, self.sigma = float(lam), float(k), float(kappa), float(sigma)
        self.steepen, self.backend = steepen, backend

    def forward(self, retain_loss: torch.Tensor, forget_logits: torch.Tensor, forget_labels: torch.Tensor,
                unseen_logits: torch.Tensor, unseen_labels: torch.Tensor,
                retain_weight: float = 1.0) -> AAMULossOutput:
        """``retain_loss`` ``[B]`` per-sample; logits ``[M_f, C]`` / ``[M_u, C]``, labels int64;
        ``retain_weight`` scales the steepened retain loss in ``total`` (a method's own weight, e.g.
        SCRUB's 0.99)."""
        main = steepen(retain_loss, self.steepen)
        mmd = quantile_mmd(forget_logits, forget_labels, unseen_logits.detach(), unseen_labels, self.k,
                           self.kappa, self.sigma, backend=self.backend)
        main_part = main if retain_weight == 1.0 else retain_weight * main
        return AAMULossOutput(main_part + self.lam * mmd.to(main.dtype), main.detach(), mmd.detach())

    def extra_repr(self) -> str:
        return f"lam={self.lam}, k={self.k}, kappa={self.kappa}, sigma={self.sigma}, steepen={self.steepen!r}"


def _generator(seed: int, device: torch.device) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen


def _check_batch_size(fn: str, batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"{fn}: batch_size must be an int >= 1, got {batch_size!r}")
    return batch_size


class ForgetSampler:
    """Forget batches drawn uniformly without replacement from ``D_f`` (all of it when smaller).

    Args:
        forget: the number of forget samples ``n`` (indices ``0..n-1``) or a ``[n]`` int64 tensor of
            indices.
        batch_size: samples per draw (docs/method.md §2.4: 4B).
        seed: seeds the sampler's own ``torch.Generator``.
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
        elif isinstance(forget, int) and not isinstance(forget, bool):
            if forget < 0:
                raise ValueError(f"{fn}: forget count must be >= 0, got {forget}")
            indices = torch.arange(forget)
        else:
            raise TypeError(f"{fn}: forget must be an int count or an index tensor, got {type(forget).__name__}")
        if indices.numel() == 0:
            raise ValueError(f"{fn}: the forget set is empty; nothing to unlearn")
        self.batch_size = _check_batch_size(fn, batch_size)
        self.device = torch.device(device) if device is not None else indices.device
        self.indices = indices.to(self.device)
        self._gen = _generator(seed, self.device)

    def __len__(self) -> int:
        return -(-self.indices.numel() // self.batch_size)

    def sample(self) -> torch.Tensor:
        n = self.indices.numel()
        perm = torch.randperm(n, generator=self._gen, device=self.device)
        return self.indices[perm[: self.batch_size]]

    def __iter__(self) -> Iterator[torch.Tensor]:
        perm = torch.randperm(self.indices.numel(), generator=self._gen, device=self.device)
        yield from (self.indices[chunk] for chunk in perm.split(self.batch_size))


class UnseenSampler:
    """Unseen batches restricted to the classes present in the forget batch (docs/method.md §2.4).

    Per-class index tables (the pool sorted by class, CSR offsets) are built once on the pool's
    device; a draw picks ``batch_size`` distinct positions in the concatenation of the allowed
    classes' ranges (all of them when fewer) and maps them back with ``searchsorted``: no Python
    scan of the pool.

    Args:
        unseen_labels: ``[N]`` int64 labels of the unseen pool.
        batch_size: samples per draw (4B).
        num_classes: class count (default ``max label + 1``).
        seed: seeds the sampler's own ``torch.Generator``.
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
        self._gen = _generator(seed, self.device)

    def sample(self, forget_labels: torch.Tensor) -> torch.Tensor:
        """``[min(batch_size, pool size of the allowed classes)]`` int64 indices into the pool."""
        fn = "UnseenSampler.sample"
        if not isinstance(forget_labels, torch.Tensor) or forget_labels.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"{fn}: forget_labels must be an integer tensor")
        fl = forget_labels.to(self.device).long().reshape(-1)
        if fl.numel() == 0:
            raise ValueError(f"{fn}: forget_labels is empty")
        if int(fl.min()) < 0 or int(fl.max()) >= self.num_classes:
            raise ValueError(f"{fn}: forget_labels must be in [0, {self.num_classes}), got values outside")
        present = torch.bincount(fl, minlength=self.num_classes) > 0
        allowed = torch.where(present, self.counts, torch.zeros_like(self.counts))
        ends = torch.cumsum(allowed, 0)
        total = int(ends[-1])
        if total == 0:
            classes = torch.nonzero(present).flatten().tolist()
            raise ValueError(f"{fn}: the unseen pool holds none of the forget classes {classes}")
        offsets = torch.randperm(total, generator=self._gen, device=self.device)[: self.batch_size]
        cls = torch.searchsorted(ends, offsets, right=True)
        pos = self.indptr[cls] + offsets - (ends[cls] - allowed[cls])
        return self.order[pos]


class Accelerator:
    """Turns any AMU method's retain-side per-sample loss into its accelerated version (docs/method.md §2.4).

    Holds the forget and unseen sets, draws a forget batch of ``forget_batch_factor·batch_size``
    (4B) and an unseen batch of ``unseen_batch_factor·batch_size`` (4B) from the forget batch's
    classes each step, and returns ``steepen(retain loss) + lam · MMD²`` from :meth:`loss`. The
    unseen forward runs under ``torch.no_grad()``; the forget forward carries gradient into
    ``model``. Neither updates BatchNorm running statistics: in training mode both normalise with
    their own batch statistics, as the research code's forwards do, so forget and unseen logits
    are computed alike, but only the caller's retain forward moves the running statistics.

    Args:
        model: the model being unlearned (called on image batches, returns ``[n, C]`` logits).
        forget_x, forget_y: ``[F, ...]`` images and ``[F]`` int64 labels of ``D_f``.
        unseen_x, unseen_y: ``[U, ...]`` images and ``[U]`` int64 labels of ``D_u``.
        batch_size: the retain batch size B; :meth:`loss` refuses a retain loss of more than B samples.
        lam, k, kappa, sigma, steepen, backend: see :class:`AAMULoss`.
        seed: seeds both samplers.
        forget_batch_factor, unseen_batch_factor: forget / unseen batches hold this many times
            ``batch_size`` samples (4 in the reference, as in the method configs).
    """

    def __init__(self, model: nn.Module, forget_x: torch.Tensor, forget_y: torch.Tensor, unseen_x: torch.Tensor,
                 unseen_y: torch.Tensor, batch_size: int = 64, lam: float = 34.0, k: float = 2.0,
                 kappa: float = 60.0, sigma: float = 1.0, steepen: str = "batch_mean_sq", backend: str = "auto",
                 seed: int = 0, forget_batch_factor: int = 4, unseen_batch_factor: int = 4) -> None:
        fn = "Accelerator"
        self.batch_size = _check_batch_size(fn, batch_size)
        for name, factor in (("forget_batch_factor", forget_batch_factor),
                             ("unseen_batch_factor", unseen_batch_factor)):
            if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
                raise ValueError(f"{fn}: {name} must be an int >= 1, got {factor!r}")
        for name, x, y in (("forget", forget_x, forget_y), ("unseen", unseen_x, unseen_y)):
            if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
                raise TypeError(f"{fn}: {name}_x and {name}_y must be tensors")
            if y.dim() != 1 or x.shape[0] != y.shape[0]:
                raise ValueError(f"{fn}: {name}_x and {name}_y must have the same length, got "
                                 f"{x.shape[0]} and {list(y.shape)}")
        self.model = model
        self.forget_x, self.forget_y = forget_x, forget_y.long()
        self.unseen_x, self.unseen_y = unseen_x, unseen_y.long()
        self.criterion = AAMULoss(lam, k, kappa, sigma, steepen, backend)
        self.forget_sampler = ForgetSampler(forget_x.shape[0], forget_batch_factor * batch_size, seed=seed,
                                            device=forget_y.device)
        self.unseen_sampler = UnseenSampler(self.unseen_y, unseen_batch_factor * batch_size, seed=seed + 1)

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
        fx, fy = self.forget_x[fi].to(device), self.forget_y[fi].to(device)
        ui = self.unseen_sampler.sample(self.forget_y[fi])
        ux, uy = self.unseen_x[ui.to(self.unseen_x.device)].to(device), self.unseen_y[ui].to(device)
        with frozen_batchnorm_stats(self.model):
            forget_logits = self.model(fx)
            with torch.no_grad():
                unseen_logits = self.model(ux)
        return self.criterion(retain_per_sample_loss, forget_logits, fy, unseen_logits, uy)


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
