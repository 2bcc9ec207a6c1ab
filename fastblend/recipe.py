"""The A-AMU recipe's defaults (docs/method.md §2.2-§2.4), in one place.

Every default of the A-AMU loss, its samplers, the step, the drop-in, the accelerated methods' configs
and the loss kernels reads :data:`RECIPE`; nothing else spells these numbers. The recipes that replace some of them
on a request (the whole-class and difficulty-matched ones, docs/method.md §7.6 and §7.10) are
``fastblend.methods.aamu_configs.CLASS_REQUEST`` and ``MATCHED_RECIPE``. Imports nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RECIPE", "AAMURecipe"]


@dataclass(frozen=True)
class AAMURecipe:
    """The paper's A-AMU settings (CIFAR-10 / ResNet-18).

    Attributes:
        lam: weight ``λ`` of the MMD² regulariser.
        k, kappa: sharpness and clamp of the loss-distribution transform ``g`` (§2.2).
        sigma: Gaussian kernel width of the MMD (§2.3).
        steepen: how the retain loss is steepened (``"batch_mean_sq"``: the square of its batch mean).
        transform: how ``g`` ranks the losses (``"per_set"``: each set against itself, the paper's;
            ``"pooled"``: against the union of both sets, an option of docs/method.md §7.3).
        batch_size: the retain batch size ``B``.
        forget_batch_factor, unseen_batch_factor: forget and unseen batches hold this many times ``B``
            samples (4B).
        max_draw: at most this many forget and unseen samples per step, whatever ``B``: the recipe's
            ``4·64`` (so the recipe's own draws are unchanged). A retain batch larger than 64 (a
            codebase's batch of 256) no longer draws ``4B`` of each (docs/method.md §7.3).
        unseen_refresh: a new unseen batch every this many steps (1: every step, the paper's).
        optimizer, lr, weight_decay, epochs: the optimiser: Adam (default betas), lr 2.4e-4, no weight
            decay, one epoch over the (reduced) retain set.
        cinic10_lr: Adam's learning rate on CINIC-10 (the one dataset-specific setting, §2.4).
    """

    lam: float = 34.0
    k: float = 2.0
    kappa: float = 60.0
    sigma: float = 1.0
    steepen: str = "batch_mean_sq"
    transform: str = "per_set"
    batch_size: int = 64
    forget_batch_factor: int = 4
    unseen_batch_factor: int = 4
    max_draw: int = 256
    unseen_refresh: int = 1
    optimizer: str = "adam"
    lr: float = 2.4e-4
    weight_decay: float = 0.0
    epochs: int = 1
    cinic10_lr: float = 1e-4


#: The defaults everything reads.
RECIPE = AAMURecipe()
