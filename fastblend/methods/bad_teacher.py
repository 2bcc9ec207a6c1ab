"""Bad Teacher (Chundawat et al.): the student follows the trained model (competent teacher) on
retain samples and a randomly initialised copy (incompetent teacher) on forget samples."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .base import Method, RetainTerms, RunData, frozen_copy, kd_loss, reinitialise
from .config import TrainConfig
from .context import RunContext


@dataclass
class BadTeacherConfig(TrainConfig):
    """docs/method.md §3: SGD lr 0.01, ``T = 2``, 20 epochs (momentum 0.9, weight decay 5e-4: shared defaults).

    Each retain batch of ``B`` is joined by a forget batch of ``forget_batch_size`` samples (default
    ``ceil(B·|D_f|/|D_r|)``, the share forget samples have in the reference's shuffled
    retain ∪ forget batches); the loss is the per-sample ``KL_T`` to the sample's teacher, averaged
    over the joined batch. ``incompetent_factory`` builds the incompetent teacher (default: a
    re-initialised copy of the model, seeded by the run's seed + 1).
    """

    epochs: int = 20
    T: float = 2.0
    forget_batch_size: int | None = None
    incompetent_factory: Callable[[], nn.Module] | None = None

    def check(self, fn: str) -> None:
        super().check(fn)
        if not self.T > 0:
            raise ValueError(f"{fn}: config.T must be > 0, got {self.T}")


class BadTeacher(Method):
    name = "bad_teacher"
    uses_forget_batches = True

    def prepare(self, model: nn.Module, data: RunData, ctx: RunContext) -> nn.Module:
        self.competent = ctx.place(frozen_copy(model))
        factory = self.cfg.incompetent_factory
        bad = factory() if factory is not None else reinitialise(model, ctx.seed + 1, ctx.fn)
        self.incompetent = ctx.place(frozen_copy(bad))
        fb = self.forget_batch_size(self.cfg, data)
        self.retain_share = self.cfg.batch_size / (self.cfg.batch_size + fb)
        return model

    def forget_batch_size(self, cfg: TrainConfig, data: RunData) -> int:
        if self.cfg.forget_batch_size:
            return self.cfg.forget_batch_size
        return max(1, math.ceil(cfg.batch_size * len(data.forget) / len(data.retain)))

    def retain_terms(self, model, x, logits, y, epoch, ctx) -> RetainTerms:
        per_sample = kd_loss(logits, ctx.infer(self.competent, x), self.cfg.T, reduction="none")
        return RetainTerms(per_sample, self.retain_share)

    def forget_loss(self, x, logits, y, epoch, ctx) -> torch.Tensor:
        return (1.0 - self.retain_share) * kd_loss(logits, ctx.infer(self.incompetent, x), self.cfg.T)
