"""Distillation: a fresh student learns the trained model's outputs on the retain set only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch.nn.functional as F
from torch import nn

from .base import Method, RetainTerms, RunData, frozen_copy, kd_loss, reinitialise
from .config import TrainConfig
from .context import RunContext


@dataclass
class DistillConfig(TrainConfig):
    """Per-sample loss ``kd_weight·KL_T(student‖teacher) + (1 − kd_weight)·CE`` on retain batches.

    docs/method.md refers to the reference tables for this baseline without restating them; fastblend's
    defaults follow Retrain's schedule at half the epochs: SGD lr 0.1, momentum 0.9, weight decay
    5e-4, 5 warm-up epochs then cosine, 50 epochs, ``T = 4``, ``kd_weight = 1``. ``model_factory``
    builds the student (default: a re-initialised copy of the model, seeded by the run's seed).
    """

    epochs: int = 50
    lr: float = 0.1
    schedule: str = "cosine"
    warmup_epochs: int = 5
    T: float = 4.0
    kd_weight: float = 1.0
    model_factory: Callable[[], nn.Module] | None = None

    def check(self, fn: str) -> None:
        super().check(fn)
        if not self.T > 0:
            raise ValueError(f"{fn}: config.T must be > 0, got {self.T}")
        if not 0.0 <= self.kd_weight <= 1.0:
            raise ValueError(f"{fn}: config.kd_weight must be in [0, 1], got {self.kd_weight}")


class Distill(Method):
    name = "distill"

    def prepare(self, model: nn.Module, data: RunData, ctx: RunContext) -> nn.Module:
        self.teacher = ctx.place(frozen_copy(model))
        return self.cfg.model_factory() if self.cfg.model_factory else reinitialise(model, ctx.seed, ctx.fn)

    def retain_terms(self, model, x, logits, y, epoch, ctx) -> RetainTerms:
        w = self.cfg.kd_weight
        per_sample = w * kd_loss(logits, ctx.infer(self.teacher, x), self.cfg.T, reduction="none")
        if w < 1.0:
            per_sample = per_sample + (1.0 - w) * F.cross_entropy(logits, y, reduction="none")
        return RetainTerms(per_sample)
