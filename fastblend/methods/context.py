"""The run context of one ``unlearn`` call: device, RNG, precision, forwards and optimiser steps.

:class:`RunContext` holds the device and seeded generator, runs forwards under autocast (through
:class:`fastblend.aamu.Forwards`: fused or micro-batched when allowed, no-grad ones under inference mode) and
takes optimiser steps (with a gradient scaler for float16); :func:`make_optimizer` and
:func:`make_scheduler` build the optimiser and learning-rate schedule a config asks for.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
from torch import nn

from .._checks import user_stacklevel
from .._device import warn_slow_cpu_amp
from ..aamu import Forwards
from .config import TrainConfig


class RunContext:
    """Device, RNG, precision and forward helpers for one ``unlearn`` call."""

    def __init__(self, cfg: TrainConfig, device: torch.device, seed: int, progress: bool | None, fn: str):
        self.cfg = cfg
        self.device = device
        self.seed = seed
        self.progress = progress
        self.fn = fn
        self.generator = torch.Generator().manual_seed(seed)
        self.num_classes = 0
        self.info: dict[str, Any] = {}
        self.ddp_options: dict[str, bool] = {}  # a user's DistributedDataParallel options, kept under DDP
        self.trained: nn.Module | None = None  # the model train() trains (retrain/distill: a new one), once prepared
        dtype = None
        if cfg.amp:
            if cfg.amp_dtype == "auto":
                bf16_ok = device.type != "cuda" or torch.cuda.is_bf16_supported()
                dtype = torch.bfloat16 if bf16_ok else torch.float16
            else:
                dtype = getattr(torch, cfg.amp_dtype)
        self.amp_dtype = dtype
        if dtype is not None:
            warn_slow_cpu_amp(device, dtype, f"{fn}: config.amp=True", user_stacklevel())
        self.scaler = torch.amp.GradScaler("cuda") if (dtype == torch.float16 and device.type == "cuda") else None
        # how forwards run (fused / micro-batched when train() allows it for the model)
        self.forwards = Forwards(autocast=self.autocast, prep=self.prep, inference_mode=cfg.inference_mode,
                                 float_logits=True)

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def no_grad(self):
        return torch.inference_mode() if self.cfg.inference_mode else torch.no_grad()

    def place(self, module: nn.Module) -> nn.Module:
        """Move a module (model or teacher) to the device, in channels-last format when asked."""
        module = module.to(self.device)
        return module.to(memory_format=torch.channels_last) if self.cfg.channels_last else module

    def prep(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self, model: nn.Module, *xs: torch.Tensor | None) -> list[torch.Tensor | None]:
        """Float32 logits of each batch (``None`` passes through); one fused forward when allowed.

        Only the first batch (the retain batch) updates running statistics; the later ones (forget
        batches) leave every buffer of the model untouched (:class:`fastblend.aamu.Forwards`)."""
        return self.forwards(model, *xs)

    def frozen_forward(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Float32 logits of a forget batch alone, with gradient, leaving the model's buffers untouched."""
        return self.forwards.frozen(model, x)

    def infer(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Float32 logits without gradient; an ordinary tensor (usable as a constant in autograd).
        Leaves running statistics untouched (unseen batches, teachers)."""
        return self.forwards.infer(model, x)

    def backward_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                      scheduler: torch.optim.lr_scheduler.LRScheduler | None) -> None:
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int, steps_per_epoch: int):
    """Per-step linear warm-up then cosine decay (``schedule="cosine"``), else ``None``."""
    if cfg.schedule == "constant":
        return None
    total = max(1, total_steps)
    warmup = min(cfg.warmup_epochs, cfg.epochs - 1) * steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
