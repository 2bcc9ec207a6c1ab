"""Fine-tune (CF, "catastrophic forgetting"): cross-entropy on the retain set, from the trained model."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Method
from .config import TrainConfig


@dataclass
class FinetuneConfig(TrainConfig):
    """docs/method.md §3: SGD lr 0.04, momentum 0.502, weight decay 0.0014, 5 warm-up epochs then cosine,
    50 epochs, batch 64."""

    epochs: int = 50
    lr: float = 0.04
    momentum: float = 0.502
    weight_decay: float = 0.0014
    schedule: str = "cosine"
    warmup_epochs: int = 5


class Finetune(Method):
    """Minimise ``CE(f(x_r), y_r)`` over retain batches (the default :class:`Method` hooks)."""

    name = "finetune"
