"""Selective Synaptic Dampening (Foster et al.): a one-shot edit, no training.

Per parameter element, importance ``I = mean over batches of (∂L_batch/∂θ)²`` with ``L`` the
batch-mean cross-entropy, computed once on the forget set (``I_f``) and once on the full training
set, retain ∪ forget (``I_d``). Elements with ``I_f > α·I_d`` are selected and multiplied by
``min(λ·I_d / I_f, 1)``; the rest are untouched. (The published reference code swaps the two
importances; docs/method.md §3 says not to, and fastblend does not.)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data_adapter import DataView
from .base import RunData, TrainOutcome
from .config import RuntimeConfig
from .context import RunContext


@dataclass
class SSDConfig(RuntimeConfig):
    """docs/method.md §3: ``alpha`` (selection threshold) 10, ``lam`` (dampening constant) 1; importances
    from batches of ``batch_size`` (they depend on it: the square of a batch-mean gradient).
    The model is in eval mode while importances are computed. The run settings (``amp``,
    ``channels_last``, ...) are those of :class:`~fastblend.methods.config.RuntimeConfig`."""

    alpha: float = 10.0
    lam: float = 1.0
    batch_size: int = 64

    def check(self, fn: str) -> None:
        super().check(fn)
        if not self.alpha > 0:
            raise ValueError(f"{fn}: config.alpha must be > 0, got {self.alpha}")
        if not self.lam > 0:
            raise ValueError(f"{fn}: config.lam must be > 0, got {self.lam}")
        if self.batch_size < 1:
            raise ValueError(f"{fn}: config.batch_size must be >= 1, got {self.batch_size}")
        if self.amp_dtype not in ("auto", "bfloat16", "float16"):
            raise ValueError(f"{fn}: config.amp_dtype must be 'auto', 'bfloat16' or 'float16', got {self.amp_dtype!r}")


def importance(model: nn.Module, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], ctx: RunContext
               ) -> tuple[list[torch.Tensor], int]:
    """Mean over ``batches`` of the squared gradient of the batch-mean cross-entropy, one float32
    tensor per trainable parameter; and the number of batches."""
    params = [p for p in model.parameters() if p.requires_grad]
    acc = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    n = 0
    for x, y in batches:
        model.zero_grad(set_to_none=True)
        (logits,) = ctx.forward(model, x)
        F.cross_entropy(logits, y).backward()
        grads = [p.grad.float() if p.grad is not None else torch.zeros_like(a) for p, a in zip(params, acc)]
        torch._foreach_addcmul_(acc, grads, grads)
        n += 1
    model.zero_grad(set_to_none=True)
    if n:
        torch._foreach_div_(acc, float(n))
    return acc, n


def _union_batches(retain: DataView, forget: DataView, batch_size: int, ctx: RunContext
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled batches of retain ∪ forget without concatenating the two sets in memory."""
    if retain.loader is not None:  # a DataLoader: its own batches (a streamed Dataset is read by index below)
        yield from retain.batches(batch_size, ctx.generator, ctx.device, ctx.fn)
        yield from forget.batches(batch_size, ctx.generator, ctx.device, ctx.fn)
        return
    nr = len(retain)
    order = torch.randperm(nr + len(forget), generator=ctx.generator)
    for start in range(0, order.numel(), batch_size):
        idx = order[start:start + batch_size]
        in_r = idx < nr
        xr, yr = retain.take(idx[in_r], ctx.device)
        xf, yf = forget.take(idx[~in_r] - nr, ctx.device)
        yield torch.cat([xr, xf]), torch.cat([yr, yf])


@torch.no_grad()
def dampen(model: nn.Module, imp_forget: list[torch.Tensor], imp_full: list[torch.Tensor], alpha: float,
           lam: float) -> int:
    """Apply the SSD rule in place; returns how many parameter elements were selected."""
    params = [p for p in model.parameters() if p.requires_grad]
    selected = 0
    for p, i_f, i_d in zip(params, imp_forget, imp_full):
        sel = i_f > alpha * i_d
        # i_f > alpha·i_d >= 0 where selected, so the division is safe where it is used
        factor = torch.where(sel, (lam * i_d / torch.where(sel, i_f, torch.ones_like(i_f))).clamp(max=1.0),
                             torch.ones_like(i_f))
        p.mul_(factor.to(p.dtype))
        selected += int(sel.sum())
    return selected


def run_ssd(model: nn.Module, data: RunData, cfg: SSDConfig, ctx: RunContext) -> TrainOutcome:
    model = ctx.place(model)
    was_training = model.training
    model.eval()
    imp_f, nf = importance(model, data.forget.batches(cfg.batch_size, ctx.generator, ctx.device, ctx.fn), ctx)
    imp_d, nd = importance(model, _union_batches(data.retain, data.forget, cfg.batch_size, ctx), ctx)
    ctx.info["ssd_selected"] = dampen(model, imp_f, imp_d, cfg.alpha, cfg.lam)
    ctx.info["ssd_total"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    model.train(was_training)
    return TrainOutcome(model, [], nf + nd)


__all__ = ["SSDConfig", "dampen", "importance", "run_ssd"]
