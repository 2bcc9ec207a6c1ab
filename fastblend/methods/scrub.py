"""SCRUB (Kurmanji et al.): a student, initialised as the trained model, alternates max-steps that
push it away from the frozen original (teacher) on the forget set and min-steps that keep it close
to the teacher and correct on the retain set."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import Method, RetainTerms, RunData, frozen_copy, kd_loss
from .config import TrainConfig
from .context import RunContext


@dataclass
class ScrubConfig(TrainConfig):
    """docs/method.md §3: SGD lr 0.01, momentum 0.9, weight decay 5e-4, 15 epochs, ``T = 2``.

    Each epoch ``e < max_epochs`` (5; ``None``: every epoch) starts with one pass over the forget set
    minimising ``−forget_weight·KL_T(student‖teacher)``; then a pass over the retain set minimising
    ``ce_weight·CE + kl_weight·KL_T`` (0.99 and 0.001). ``forget_batch_size``: default ``batch_size``.
    """

    epochs: int = 15
    T: float = 2.0
    max_epochs: int | None = 5
    forget_weight: float = 1.0
    ce_weight: float = 0.99
    kl_weight: float = 0.001
    forget_batch_size: int | None = None

    def check(self, fn: str) -> None:
        super().check(fn)
        if not self.T > 0:
            raise ValueError(f"{fn}: config.T must be > 0, got {self.T}")


class Scrub(Method):
    name = "scrub"

    def prepare(self, model: nn.Module, data: RunData, ctx: RunContext) -> nn.Module:
        self.teacher = ctx.place(frozen_copy(model))
        return model

    def _max_epoch(self, epoch: int) -> bool:
        return self.cfg.max_epochs is None or epoch < self.cfg.max_epochs

    def _forget_batch(self) -> int:
        return self.cfg.forget_batch_size or self.cfg.batch_size

    def extra_steps_per_epoch(self, cfg: TrainConfig, data: RunData, epoch: int) -> int:
        return math.ceil(len(data.forget) / self._forget_batch()) if self._max_epoch(epoch) else 0

    def before_epoch(self, model, epoch, data, ctx, step):
        total = torch.zeros((), device=ctx.device)
        n = 0
        if not self._max_epoch(epoch):
            return total, n
        for x, _ in data.forget.batches(self._forget_batch(), ctx.generator, ctx.device, ctx.fn):
            logits = ctx.frozen_forward(model, x)  # no forget-set statistics into the model's running statistics
            loss = -self.cfg.forget_weight * kd_loss(logits, ctx.infer(self.teacher, x), self.cfg.T)
            step(loss)
            total = total + loss.detach()
            n += 1
        return total, n

    def retain_terms(self, model, x, logits, y, epoch, ctx) -> RetainTerms:
        kl = kd_loss(logits, ctx.infer(self.teacher, x), self.cfg.T)
        return RetainTerms(F.cross_entropy(logits, y, reduction="none"), self.cfg.ce_weight, self.cfg.kl_weight * kl)
