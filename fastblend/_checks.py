"""Argument checks shared by every public entry point: numbers of any numeric kind, devices, tensors
that hold data. A leaf: imports torch, numpy and the standard library only.

- :func:`plain_number`: a numpy integer or float (``np.int64(2)``, ``np.float32(0.1)``) becomes the
  Python ``int``/``float`` the checks and torch expect, so every setting that takes a Python number
  takes numpy's too (a bool, numpy's included, stays what it is and is refused where a number is due).
- :func:`as_device`: a device argument checked once, with one message for a string torch does not
  know (``"gpu0"``) and for the meta device (which holds no data to compute on).
- :func:`check_has_data`: a tensor on the meta device refused by name before torch fails inside.
- :func:`user_stacklevel`: the ``stacklevel`` that attributes a warning to the first caller outside fastblend.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np
import torch

__all__ = ["as_device", "check_finite_images", "check_has_data", "plain_number", "plain_numbers", "user_stacklevel"]

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
_TORCH = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep  # nn.Module.__call__ between a user and a criterion


def plain_number(value: Any) -> Any:
    """``int(value)`` for a numpy integer, ``float(value)`` for a numpy float; ``value`` itself otherwise
    (a Python number, a bool of either kind, anything else: the caller's checks then name it)."""
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def plain_numbers(values: dict) -> dict:
    """``values`` with :func:`plain_number` applied to each value (a config dict's overrides)."""
    return {k: plain_number(v) for k, v in values.items()}


def as_device(device: Any, fn: str, arg: str = "device") -> torch.device | None:
    """``device`` (``None``, a ``torch.device``, a string such as ``"cuda:1"`` or a CUDA ordinal) as a
    ``torch.device`` (``None`` stays ``None``). A string torch does not parse (``"gpu0"``), another type,
    or the meta device raises ``ValueError``/``TypeError`` starting with ``fn`` and naming ``arg``."""
    if device is None:
        return None
    if isinstance(device, bool):
        raise TypeError(f"{fn}: {arg} must be a torch.device, a string such as 'cpu' or 'cuda:0', or None; "
                        f"got {device!r}")
    device = plain_number(device)
    if not isinstance(device, (str, int, torch.device)):
        raise TypeError(f"{fn}: {arg} must be a torch.device, a string such as 'cpu' or 'cuda:0', or None; "
                        f"got {type(device).__name__}")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"{fn}: {arg} {device!r} is not a device; expected e.g. 'cpu', 'cuda' or 'cuda:0'") from None
    if dev.type == "meta":
        raise ValueError(f"{fn}: {arg} 'meta' holds no data to compute on; expected e.g. 'cpu' or 'cuda'")
    if dev.type == "cuda":  # torch's own error comes later, from deep inside ("Found no NVIDIA driver")
        if not torch.cuda.is_available():
            raise ValueError(f"{fn}: {arg} {str(dev)!r} but torch sees no CUDA device here "
                             "(torch.cuda.is_available() is False); use 'cpu' or None")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{fn}: {arg} {str(dev)!r} but torch sees {torch.cuda.device_count()} CUDA device(s)")
    return dev


def check_has_data(fn: str, name: str, *tensors: Any) -> None:
    """Refuse a tensor on the meta device (shapes without data): ``ValueError`` naming ``fn`` and
    ``name``. Other values pass (their own checks name them)."""
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.device.type == "meta":
            raise ValueError(f"{fn}: {name} must hold data, got a meta tensor (a shape without data); pass "
                             "tensors on e.g. 'cpu' or 'cuda'")


def user_stacklevel() -> int:
    """For ``warnings.warn`` called by the function that calls this: the ``stacklevel`` of the first frame outside
    the fastblend package and torch (the user's line, however deep inside fastblend the warning is raised, and
    through ``nn.Module.__call__``), so that the warning names the caller's code and the default filter shows it
    once per caller's line."""
    frame, level = sys._getframe(1), 1  # the function that will call warnings.warn is level 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith((_PACKAGE, _TORCH)):
        frame, level = frame.f_back, level + 1
    return level


def check_finite_images(fn: str, name: str, images: torch.Tensor) -> None:
    """Refuse NaN or inf pixels in ``images`` (``[N, ...]``) with a ``ValueError`` naming ``name`` (``""``: just
    "images") and the first bad row (not an error about losses, logits or blends from deep inside): one float32 sum
    per row finds candidate rows, each checked exactly (a sum can overflow without a bad pixel)."""
    if images.numel() == 0 or not images.is_floating_point() or images.device.type == "meta":
        return
    sums = images.reshape(images.shape[0], -1).sum(1, dtype=torch.float32)
    for row in torch.nonzero(~torch.isfinite(sums)).flatten().tolist():
        if not bool(torch.isfinite(images[row]).all()):
            raise ValueError(f"{fn}: {name + ' ' if name else ''}images must be finite; row {row} holds NaN or inf")
