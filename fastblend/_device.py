"""Device helpers shared by every layer (imports nothing from the rest of fastblend)."""

from __future__ import annotations

import torch
from torch import nn


def synchronize(device: torch.device) -> None:
    """Wait for queued work on ``device`` (a no-op off CUDA): call before reading a clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def module_device(module: object) -> torch.device | None:
    """Device of a module's first parameter (else buffer); ``None`` for a parameterless module or a
    plain callable."""
    if isinstance(module, nn.Module):
        for tensor in module.parameters():
            return tensor.device
        for tensor in module.buffers():
            return tensor.device
    return None
