"""L1-sparse: cross-entropy on retain plus a decaying L1 penalty on all parameters."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .base import Method
from .config import TrainConfig
from .context import RunContext


@dataclass
class L1SparseConfig(TrainConfig):
    """docs/method.md §3: ``CE + α_t‖θ‖₁`` with ``α_t = α(1 − e/(E−1))`` at epoch ``e`` of ``E`` (``α_t = α``
    when ``E = 1``, or always when ``decay_alpha`` is off); SGD lr 0.01, ``α = 1e-4``, 30 epochs
    (momentum 0.9 and weight decay 5e-4, the shared defaults)."""

    epochs: int = 30
    alpha: float = 1e-4
    decay_alpha: bool = True

    def check(self, fn: str) -> None:
        super().check(fn)
        if self.alpha < 0:
            raise ValueError(f"{fn}: config.alpha must be >= 0, got {self.alpha}")


def l1_norm(model: nn.Module) -> torch.Tensor:
    """``‖θ‖₁`` over every trainable parameter (one fused multi-tensor norm)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.stack(torch._foreach_norm(params, 1)).sum()


def alpha_at(alpha: float, epoch: int, epochs: int, decay: bool) -> float:
    if not decay or epochs <= 1:
        return alpha
    return alpha * (1.0 - epoch / (epochs - 1))


class L1Sparse(Method):
    name = "l1_sparse"

    def regulariser(self, model: nn.Module, epoch: int, ctx: RunContext) -> torch.Tensor | None:
        a = alpha_at(self.cfg.alpha, epoch, self.cfg.epochs, self.cfg.decay_alpha)
        return a * l1_norm(model) if a != 0 else None
