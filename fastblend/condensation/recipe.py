"""The Blend recipe's settings (docs/method.md §1.1-1.3), each computed in one place: the reference
learning rate :func:`blend_lr`, the default clusters per class :func:`default_ipc`, the matcher's seed
:func:`matcher_seed` and the default matcher :func:`make_matcher`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..grouping import check_ipc
from ..models import random_convnet

__all__ = ["IMAGES_PER_CLUSTER", "blend_lr", "default_ipc", "make_matcher", "matcher_seed"]

#: The default grouping's images per cluster (about five: the paper's CIFAR-10 ratio, 5,000 per class at ipc 1,000).
IMAGES_PER_CLUSTER = 5

# lr(ipc) = a·ipc³ + b·ipc² + c·ipc + d, docs/method.md §1.3 (≈1.0 at ipc 2, 0.166 at 10, 100 at 100, 9999 at 1000)
_LR_COEFFS = (-2.397e-6, 0.01265, -0.2558, 1.461)


def blend_lr(ipc: int) -> float:
    """The reference Blend learning rate ``−2.397e−6·ipc³ + 0.01265·ipc² − 0.2558·ipc + 1.461``.

    The cubic is positive for ``1 <= ipc <= 5277``; beyond that it turns negative and a
    ``ValueError`` asks for an explicit ``lr``.
    """
    ipc = check_ipc("blend_lr", ipc)
    a, b, c, d = _LR_COEFFS
    lr = ((a * ipc + b) * ipc + c) * ipc + d
    if lr <= 0:
        raise ValueError(f"blend_lr: the reference formula gives lr = {lr:.4g} <= 0 at ipc {ipc}; "
                         "pass lr=<number> explicitly")
    return lr


def default_ipc(num_images: int, num_classes: int) -> int:
    """Clusters per class when none is given: about :data:`IMAGES_PER_CLUSTER` images per cluster,
    ``max(1, round((num_images // num_classes) / 5))`` (the mean class size, floored, over five)."""
    per_class = max(1, int(num_images) // max(int(num_classes), 1))
    return max(1, round(per_class / IMAGES_PER_CLUSTER))


def matcher_seed(seed: int, round_index: int = 0) -> int:
    """Seed of the Blend matcher ``f_m`` for a condensation seeded with ``seed``.

    Always differs from ``seed`` itself (the grouping extractor's seed), so ``f_m`` and ``f_g`` are
    independent networks; ``round_index`` gives each multi-round re-blend a fresh matcher.
    """
    return (int(seed) * 1_000_003 + 7_919 * (int(round_index) + 1)) % (2**63)


def make_matcher(caller: str, matcher: nn.Module | None, images: torch.Tensor, seed: int, round_index: int,
                 device: torch.device) -> tuple[nn.Module, int | None]:
    """``(the caller's matcher, None)`` after checking it is a module on ``device``, or ``(a fresh random
    ConvNet-3 seeded with matcher_seed(seed, round_index), that seed)``."""
    if matcher is not None:
        if not isinstance(matcher, nn.Module):
            raise TypeError(f"{caller}: matcher must be a torch.nn.Module or None, got {type(matcher).__name__}")
        devices = {p.device for p in matcher.parameters()}
        if devices and devices != {device}:
            raise ValueError(f"{caller}: matcher parameters are on {sorted(map(str, devices))} but the Blend "
                             f"runs on {device}; move it or pass device=")
        return matcher, None
    mseed = matcher_seed(seed, round_index)
    return random_convnet(images.shape[1], images.shape[2], seed=mseed, device=device), mseed
