"""Prune then fine-tune (Jia et al.): global L1 unstructured pruning of every weight matrix and
convolution kernel, then cross-entropy fine-tuning on the retain set under the mask; the pruning
is made permanent at the end (plain ``weight`` parameters, zeros where pruned, no hooks)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from torch.nn.utils import prune

from .base import Method, RunData
from .config import TrainConfig
from .context import RunContext


@dataclass
class PruneConfig(TrainConfig):
    """``sparsity`` 0.95 of the weights of every parameter named ``weight`` with 2+ dimensions
    (convolutions, linear layers) pruned by global magnitude; then fine-tuning on retain with
    fastblend's defaults (the reference tables are not restated in docs/method.md): SGD lr 0.01,
    momentum 0.9, weight decay 5e-4, 10 epochs."""

    epochs: int = 10
    sparsity: float = 0.95

    def check(self, fn: str) -> None:
        super().check(fn)
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"{fn}: config.sparsity must be in [0, 1), got {self.sparsity}")


def prunable(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in model.modules()
            if isinstance(getattr(m, "weight", None), nn.Parameter) and m.weight.dim() >= 2]


class Prune(Method):
    name = "prune"

    def prepare(self, model: nn.Module, data: RunData, ctx: RunContext) -> nn.Module:
        self.targets = prunable(model)
        if not self.targets:
            raise ValueError(f"{ctx.fn}: prune found no weight with 2+ dimensions to prune")
        prune.global_unstructured(self.targets, pruning_method=prune.L1Unstructured, amount=self.cfg.sparsity)
        return model

    def finish(self, model: nn.Module) -> nn.Module:
        for module, name in self.targets:
            prune.remove(module, name)
        return model
