"""BatchNorm safety for unlearning (imports nothing from the rest of fastblend).

A-AMU runs the model on forget and unseen batches besides the retain batch (docs/method.md §2.4). In
training mode a BatchNorm layer would fold those batches' statistics into its running mean and
variance, writing forget-set statistics into the model that unlearning is meant to clean.
:func:`frozen_batchnorm_stats` lets such a forward normalise with its own batch statistics, as the
research code's training-mode forward does, while leaving every running statistic untouched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

__all__ = ["frozen_batchnorm_stats"]


@contextlib.contextmanager
def frozen_batchnorm_stats(model: object) -> Iterator[None]:
    """Within the block, training-mode BatchNorm layers of ``model`` normalise with the batch's
    statistics (gradients flow as usual) but do not update ``running_mean``, ``running_var`` or
    ``num_batches_tracked``; eval-mode layers use their running statistics as always.

    Implemented by switching ``track_running_stats`` off for the block on the layers that had it on
    and were training (restored on exit, also after an exception). A plain callable or a model
    without BatchNorm passes through unchanged. Forwards recomputed later (activation
    checkpointing) run outside the block.
    """
    layers = []
    if isinstance(model, nn.Module):
        layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                  and m.training and m.track_running_stats]
    for layer in layers:
        layer.track_running_stats = False
    try:
        yield
    finally:
        for layer in layers:
            layer.track_running_stats = True
