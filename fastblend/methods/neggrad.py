"""NegGrad+: descend on the retain cross-entropy while ascending on the forget cross-entropy."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import Method, RunData
from .config import TrainConfig
from .context import RunContext

#: how far NegGrad+'s forget term ascends (:attr:`NegGradPlusConfig.ascent`)
ASCENTS = ("unbounded", "chance")


@dataclass
class NegGradPlusConfig(TrainConfig):
    """``loss = CE(retain batch) − β·CE(forget batch)``, one forget batch per retain step.

    NegGrad+ is not in the reference code (docs/method.md §3), so these are fastblend's defaults: SGD lr 0.01,
    momentum 0.9, weight decay 5e-4, 5 epochs, ``β = 0.05`` (the ``α·L_r − (1−α)·L_f`` form of
    Kurmanji et al. with ``α ≈ 0.95``, divided by ``α``). ``forget_batch_size``: default ``batch_size``.

    ``ascent``: ``"unbounded"`` (the method as published): the forget term is unbounded below, so large
    ``β`` or many epochs can diverge, and it keeps raising the loss of images already misclassified.
    ``"chance"``: a forget image's ascent stops once its true-class probability is at or below chance,
    ``CE ≥ log C`` (``C`` classes): ``−β · mean_i CE_i · [CE_i < log C]`` (the mean over the whole batch,
    so ``β`` keeps its scale), docs/method.md §7.6. ``C`` is the width of the model's logits. The
    whole-class recipe of ``a_neggrad_plus`` sets ``"chance"`` unless the caller set ``ascent`` (a key of a
    dict config; in a config instance a field left at its default counts as not set).
    """

    epochs: int = 5
    beta: float = 0.05
    forget_batch_size: int | None = None
    ascent: str = "unbounded"

    def check(self, fn: str) -> None:
        super().check(fn)
        if self.beta < 0:
            raise ValueError(f"{fn}: config.beta must be >= 0, got {self.beta}")
        if self.ascent not in ASCENTS:
            raise ValueError(f"{fn}: config.ascent must be one of {ASCENTS}, got {self.ascent!r}")


class NegGradPlus(Method):
    name = "neggrad_plus"
    uses_forget_batches = True

    def forget_batch_size(self, cfg: TrainConfig, data: RunData) -> int:
        return self.cfg.forget_batch_size or cfg.batch_size

    def forget_loss(self, x: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, epoch: int,
                    ctx: RunContext) -> torch.Tensor:
        if self.cfg.ascent == "unbounded":
            return -self.cfg.beta * F.cross_entropy(logits, y)
        ce = F.cross_entropy(logits, y, reduction="none")
        below = (ce.detach() < math.log(logits.shape[1])).to(ce.dtype)  # still above chance on its class
        return -self.cfg.beta * (ce * below).mean()
