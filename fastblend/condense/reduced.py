"""The reduced retain set: what a condensation returns (a ``torch`` Dataset), and its save/load."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from torch.utils.data import Dataset

from .._io import atomic_save, load_torch

__all__ = ["ReducedRetainSet"]


@dataclass(eq=False, repr=False)
class ReducedRetainSet(Dataset):
    """Residual images ∪ one blended image per free cluster (docs/method.md §1.2); a ``torch`` Dataset.

    Rows are ordered: blended rows by cluster id, then residual rows by cluster id (and by position
    in the clustering's CSR order within a cluster).

    Attributes:
        images: ``[R, C, H, W]`` in the dtype/device of the training images.
        labels: ``[R]`` int64.
        is_blended: ``[R]`` bool.
        source_cluster: ``[R]`` int64 cluster of a blended row, ``-1`` for residual rows.
        source_index: ``[R]`` int64 training index of a residual row, ``-1`` for blended rows.
        free_clusters: ``[K_free]`` int64 ids of the blended (free, non-empty) clusters.
        touched_clusters: ``[K_touched]`` int64 ids of the clusters with a forgotten member.
        compression: ``len(real retain set) / R``.
        timings: seconds per stage: ``features``, ``grouping``, ``split``, ``blend`` (plus detail keys).
        final_loss: matching loss ``L`` of the output blends (``nan`` when no cluster is free).
        initial_loss: ``L`` at initialisation (the cluster means).
        settings: how it was made (iterations, lr, normalize, seeds, round, ...); ``settings["backends"]``
            names the backend of each stage (``grouping``: the clustering's k-means backend,
            ``segment_blend``: the Blend op's).
        blend_members: ``[M]`` int64 training indices of the free clusters' members, CSR order.
        blend_weights: ``[M]`` final normalised weights ``ŵ`` aligned with ``blend_members``.
        blend_indptr: ``[K_free + 1]`` int64 CSR offsets of the free clusters into those two.
        loss_history: ``L`` before each optimiser step.
    """

    images: torch.Tensor
    labels: torch.Tensor
    is_blended: torch.Tensor
    source_cluster: torch.Tensor
    source_index: torch.Tensor
    free_clusters: torch.Tensor
    touched_clusters: torch.Tensor
    compression: float
    timings: dict = field(default_factory=dict)
    final_loss: float = math.nan
    initial_loss: float = math.nan
    settings: dict = field(default_factory=dict)
    blend_members: torch.Tensor | None = None
    blend_weights: torch.Tensor | None = None
    blend_indptr: torch.Tensor | None = None
    loss_history: list = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]

    @property
    def num_blended(self) -> int:
        return int(self.is_blended.sum())

    @property
    def num_residual(self) -> int:
        return len(self) - self.num_blended

    def __repr__(self) -> str:
        """Sizes, compression and timings; never the tensors."""
        shape = "x".join(map(str, self.images.shape[1:]))
        times = ", ".join(f"{k}={v:.3g}s" for k, v in self.timings.items()
                          if k in ("features", "grouping", "split", "blend", "request", "index") and v)
        return (f"ReducedRetainSet(rows={len(self)}, blended={self.num_blended}, residual={self.num_residual}, "
                f"images={shape}, compression={self.compression:.2f}x, timings={{{times}}})")

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images [R, C, H, W], labels [R] int64)``."""
        return self.images, self.labels

    def save(self, path: str | Path) -> None:
        """Write to ``path`` atomically (a temporary file renamed into place)."""
        state = {f.name: getattr(self, f.name) for f in fields(self)}
        state = {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in state.items()}
        atomic_save(state, path)

    @classmethod
    def load(cls, path: str | Path) -> ReducedRetainSet:
        """Read a file written by :meth:`save` (safe loading); every field is checked and every error
        names the file."""
        fn = "ReducedRetainSet.load"
        state = load_torch(path, fn)
        if not isinstance(state, dict) or not {"images", "labels", "is_blended"} <= set(state):
            raise ValueError(f"{fn}: {path} does not hold a saved ReducedRetainSet")
        names = {f.name for f in fields(cls)}
        state = {k: v for k, v in state.items() if k in names}
        _check_state(state, f"{fn}: {path}")
        return cls(**state)


_ROW_FIELDS = {"labels": torch.int64, "is_blended": torch.bool, "source_cluster": torch.int64,
               "source_index": torch.int64}


def _check_state(state: dict, where: str) -> None:
    """Types and shapes of a loaded ReducedRetainSet's fields (``where`` prefixes every error)."""
    images = state["images"]
    if not isinstance(images, torch.Tensor) or not images.is_floating_point() or images.dim() < 2:
        raise ValueError(f"{where}: images must be a floating tensor [R, ...], got "
                         f"{getattr(images, 'dtype', type(images).__name__)}")
    rows = images.shape[0]
    for name, dtype in _ROW_FIELDS.items():
        value = state.get(name)
        if not isinstance(value, torch.Tensor) or value.dtype != dtype or tuple(value.shape) != (rows,):
            got = f"{value.dtype} {list(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"{where}: {name} must be a {dtype} tensor of shape [{rows}] (one per image), got {got}")
    for name in ("free_clusters", "touched_clusters"):
        value = state.get(name)
        if not isinstance(value, torch.Tensor) or value.dtype != torch.int64 or value.dim() != 1:
            raise ValueError(f"{where}: {name} must be a 1-D int64 tensor")
    for name in ("compression", "final_loss", "initial_loss"):
        value = state.get(name, 0.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: {name} must be a number, got {type(value).__name__}")
    for name, kind in (("timings", dict), ("settings", dict), ("loss_history", list)):
        if not isinstance(state.get(name, kind()), kind):
            raise ValueError(f"{where}: {name} must be a {kind.__name__}, got {type(state[name]).__name__}")
    blend = [state.get(n) for n in ("blend_members", "blend_weights", "blend_indptr")]
    if any(v is not None for v in blend):
        if not all(isinstance(v, torch.Tensor) and v.dim() == 1 for v in blend) or blend[0].shape != blend[1].shape:
            raise ValueError(f"{where}: blend_members, blend_weights and blend_indptr must be 1-D tensors, the "
                             "first two of one length")
