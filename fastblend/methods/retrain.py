"""Retrain: a freshly initialised model trained on the retain set only (the gold standard).

The forget set is never read: the loop draws no forget batches, and ``unlearn`` neither moves nor
forwards forget data for this method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from .base import Method, RunData, reinitialise
from .config import TrainConfig
from .context import RunContext


@dataclass
class RetrainConfig(TrainConfig):
    """docs/method.md §3: SGD lr 0.1, momentum 0.9, weight decay 5e-4, 5 warm-up epochs then cosine,
    100 epochs, batch 64.

    ``model_factory``: builds the fresh model; default: a copy of the given model whose modules are
    re-initialised with ``reset_parameters()`` under the run's seed.
    """

    epochs: int = 100
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_epochs: int = 5
    model_factory: Callable[[], nn.Module] | None = None


class Retrain(Method):
    name = "retrain"

    def prepare(self, model: nn.Module, data: RunData, ctx: RunContext) -> nn.Module:
        if self.cfg.model_factory is not None:
            return self.cfg.model_factory()
        return reinitialise(model, ctx.seed, ctx.fn)
