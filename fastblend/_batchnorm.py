"""Running-statistics safety for unlearning (imports nothing from the rest of fastblend).

A-AMU runs the model on forget and unseen batches besides the retain batch (docs/method.md §2.4). In
training mode a BatchNorm layer folds every batch's statistics into its running mean and variance, an
``InstanceNorm*(track_running_stats=True)`` likewise, and any module may update its buffers in a
forward pass: forget-set statistics would be written into the model that unlearning is meant to clean.

The rule, for every module in training mode that owns buffers (not only BatchNorm):

- :func:`frozen_running_stats`: within the block the forwards run exactly as usual (BatchNorm
  normalises with the batch's statistics, gradients flow) and every buffer is put back, values and
  identity, when the block ends;
- :func:`guard_recomputation`: a forward recomputed during the backward (activation checkpointing,
  ``torch.utils.checkpoint``) would update the buffers again, this time with the forget batch's
  statistics; once a backward reaches the guarded output, the buffers' values at that moment are
  restored when the backward ends. So running statistics change only in forward passes, and a
  checkpointed model's recomputation moves them no more than its retain forward did.

Neither changes a module's attributes, so an original forward and its recomputation build the same
graph (toggling ``track_running_stats`` made non-reentrant checkpointing raise ``CheckpointError``).
Restores write through ``.data``, which leaves the buffers' autograd version counters alone: graphs
that saved a buffer (BatchNorm saves its running statistics) stay valid for their backward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["frozen_running_stats", "guard_recomputation", "stateful_buffers"]


def stateful_buffers(model: object) -> list[tuple[nn.Module, str, torch.Tensor]]:
    """``(module, name, buffer)`` of every buffer owned by a training-mode module of ``model`` (what a
    forward pass may update); empty for a plain callable or an eval-mode model."""
    if not isinstance(model, nn.Module):
        return []
    return [(m, name, buf) for m in model.modules() if m.training
            for name, buf in m._buffers.items() if buf is not None]


class _Snapshot:
    """The values of some buffers, restorable into the same tensors."""

    def __init__(self, entries: list[tuple[nn.Module, str, torch.Tensor]]) -> None:
        with torch.inference_mode(False), torch.no_grad():
            self.entries = [(m, name, buf, buf.detach().clone()) for m, name, buf in entries]

    def restore(self) -> None:
        with torch.inference_mode(False), torch.no_grad():
            for module, name, buf, saved in self.entries:
                if module._buffers.get(name) is not buf:  # reassigned by the forward: put the original back
                    module._buffers[name] = buf
                buf.data.copy_(saved)  # .data: the version counter stays (saved graphs remain valid)


def _toggled_batchnorm(model: object):
    """The traced form (``torch.compile``): switch training-mode BatchNorm's ``track_running_stats``
    off for the block (what the tracer handles; no recomputation runs inside a compiled graph)."""
    layers = []
    if isinstance(model, nn.Module):
        layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                  and m.training and m.track_running_stats]
    for layer in layers:
        layer.track_running_stats = False
    return layers


@contextlib.contextmanager
def frozen_running_stats(model: object) -> Iterator[None]:
    """Within the block, forwards of ``model`` leave every buffer of its training-mode modules as it
    was (BatchNorm's and tracked InstanceNorm's running statistics, ``num_batches_tracked``, any
    custom module's state); the forwards themselves are unchanged (training-mode BatchNorm
    normalises with the batch's statistics; gradients flow). Eval-mode modules use their running
    statistics as always. Restored on exit, also after an exception. A plain callable or a model
    without such buffers passes through unchanged. Pair it with :func:`guard_recomputation` on the
    block's output when the model may checkpoint activations."""
    if torch.compiler.is_compiling():
        layers = _toggled_batchnorm(model)
        try:
            yield
        finally:
            for layer in layers:
                layer.track_running_stats = True
        return
    entries = stateful_buffers(model)
    snapshot = _Snapshot(entries) if entries else None
    try:
        yield
    finally:
        if snapshot is not None:
            snapshot.restore()


_PENDING: dict[int, _Snapshot] = {}  # graph task id -> the snapshot its end-of-backward callback restores


def guard_recomputation(model: object, output: torch.Tensor) -> None:
    """Keep a backward through ``output`` (the result of a :func:`frozen_running_stats` forward) from
    changing ``model``'s buffers: when the backward reaches ``output``, the training-mode modules'
    buffers are snapshotted (once per backward pass, however many outputs are guarded) and restored
    when the backward ends, undoing what a recomputation (activation checkpointing) wrote into them.
    No-op for an output without gradient, a model without such buffers, or while tracing."""
    if not isinstance(output, torch.Tensor) or not output.requires_grad or torch.compiler.is_compiling():
        return
    entries = stateful_buffers(model)
    if not entries:
        return

    def at_backward(grad: torch.Tensor) -> None:
        task = torch._C._current_graph_task_id()
        if task in _PENDING:
            return
        _PENDING[task] = snapshot = _Snapshot(entries)

        def at_end() -> None:
            _PENDING.pop(task, None)
            snapshot.restore()

        torch.autograd.Variable._execution_engine.queue_callback(at_end)

    output.register_hook(at_backward)
