"""The reduced retain set: what a condensation returns (a ``torch`` Dataset), and its save/load.

It holds the blended images and, for every residual row, the training index it comes from; residual
rows are served from the training images (the *source*: a tensor or a map-style Dataset), never copied,
until an in-memory ``.images`` is asked for.
"""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import InitVar, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .._io import CHECKSUM_KEY, atomic_save, checksum_status, load_torch, with_checksum
from .source import check_fingerprint, fingerprint, read_rows, source_length, source_sample

__all__ = ["ReducedRetainSet"]

_NOT_SAVED = ("source",)


@dataclass(eq=False, repr=False)
class ReducedRetainSet(Dataset):
    """Residual images ∪ one blended image per free cluster (docs/method.md §1.2); a ``torch`` Dataset.

    Rows are ordered: blended rows by cluster id, then residual rows by cluster id (and by position
    in the clustering's CSR order within a cluster). Row ``i`` is ``(image [C, H, W], label)``; a
    residual row's image is read from ``source`` at ``source_index[i]`` when it is asked for
    (``__getitems__`` reads a batch with the source's own batched fetch).

    Attributes:
        images: ``[R, C, H, W]`` every row in memory, in the dtype/device of the training images. Built
            on first use (and kept) from ``blends`` and a tensor ``source``; a set whose source is a
            Dataset has none (``AttributeError`` saying so): read it as a Dataset (``set[i]``, a
            ``DataLoader``) or take an in-memory copy with :meth:`materialise`. Passing ``images``
            to the constructor gives a plain in-memory set.
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
        blends: ``[K_free, C, H, W]`` the blended rows' images, in row order (``None`` for a set
            built from ``images``).
        source: the training images (``[N, C, H, W]`` tensor or Dataset of ``(image, label)``) the
            residual rows are read from; not saved.
    """

    images: InitVar[torch.Tensor | None]
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
    blends: torch.Tensor | None = None
    source: Any = None

    def __post_init__(self, images: torch.Tensor | None) -> None:
        self._images = images
        if images is None:
            if self.blends is None:
                raise TypeError("ReducedRetainSet: pass images (every row) or blends (and a source for the "
                                "residual rows)")
            if self.blends.shape[0] != self.num_blended:
                raise ValueError(f"ReducedRetainSet: blends holds {self.blends.shape[0]} images for "
                                 f"{self.num_blended} blended rows")
            if self.num_residual and self.source is None:
                raise ValueError(f"ReducedRetainSet: source is required to serve the {self.num_residual} "
                                 "residual rows (the training images tensor or Dataset)")
        self._slot = torch.cumsum(self.is_blended.to(torch.int64), 0) - 1  # row -> index into blends

    def _all_rows(self) -> torch.Tensor:
        if self._images is None:
            if self.num_residual and not isinstance(self.source, torch.Tensor):
                raise AttributeError(
                    f"ReducedRetainSet.images: this set serves its {self.num_residual} residual rows from a "
                    f"{type(self.source).__name__} source and holds no image tensor; read it as a Dataset "
                    "(set[i], a DataLoader) or call .materialise() for an in-memory copy")
            self._images = self._rows(torch.arange(len(self)))
        return self._images

    def _rows(self, rows: torch.Tensor) -> torch.Tensor:
        """``[m, C, H, W]`` images of rows ``rows`` (``[m]`` int64): blends and source reads."""
        if self._images is not None:
            return self._images[rows.to(self._images.device)]
        blended = self.is_blended[rows]
        out = self.blends.new_empty((rows.numel(),) + tuple(self._row_shape()))
        if bool(blended.any()):
            out[blended.to(out.device)] = self.blends[self._slot[rows[blended]].to(self.blends.device)]
        if not bool(blended.all()):
            res = rows[~blended]
            out[(~blended).to(out.device)] = read_rows(self.source, self.source_index[res],
                                                       "ReducedRetainSet").to(out.device, out.dtype)
        return out

    def _row_shape(self) -> tuple:
        if self._images is not None:
            return tuple(self._images.shape[1:])
        if self.blends is not None and self.blends.dim() > 1 and (self.blends.shape[0] or self.source is None):
            return tuple(self.blends.shape[1:])
        return tuple(source_sample(self.source).shape)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def _index(self, i: int) -> int:
        n = len(self)
        if isinstance(i, torch.Tensor) and i.numel() == 1 and not i.is_floating_point() and i.dtype != torch.bool:
            i = int(i)
        if isinstance(i, bool) or not isinstance(i, numbers.Integral):
            raise TypeError(f"ReducedRetainSet: row index must be an int, got {type(i).__name__} {i!r}")
        i = int(i)
        if not -n <= i < n:
            raise IndexError(f"ReducedRetainSet: row {i} out of range for {n} rows")
        return i % n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._images is not None and isinstance(i, slice):
            return self._images[i], self.labels[i]
        i = self._index(i)
        if self._images is not None:
            return self._images[i], self.labels[i]
        return self._rows(torch.tensor([i]))[0], self.labels[i]

    def __getitems__(self, rows: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Rows ``rows`` in one read of the source (what a ``DataLoader`` calls for a batch)."""
        idx = torch.tensor([self._index(i) for i in rows], dtype=torch.int64)
        return list(zip(self._rows(idx), self.labels[idx]))

    @property
    def num_blended(self) -> int:
        """Rows that are blends (one per free cluster)."""
        return int(self.is_blended.sum())

    @property
    def num_residual(self) -> int:
        """Rows that are raw retain images (the members of touched clusters)."""
        return len(self) - self.num_blended

    @property
    def in_memory(self) -> bool:
        """``True`` when ``.images`` needs no Dataset read (built, or the source is a tensor)."""
        return self._images is not None or self.num_residual == 0 or isinstance(self.source, torch.Tensor)

    def materialise(self) -> ReducedRetainSet:
        """An in-memory copy (every residual row read from the source once)."""
        state = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("blends", "source")}
        return type(self)(images=self._rows(torch.arange(len(self))), **state)

    def __repr__(self) -> str:
        """Sizes, compression and timings; never the tensors."""
        shape = "x".join(map(str, self._row_shape()))
        times = ", ".join(f"{k}={v:.3g}s" for k, v in self.timings.items()
                          if k in ("features", "grouping", "split", "blend", "request", "index") and v)
        return (f"ReducedRetainSet(rows={len(self)}, blended={self.num_blended}, residual={self.num_residual}, "
                f"images={shape}, compression={self.compression:.2f}x, timings={{{times}}})")

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images [R, C, H, W], labels [R] int64)`` in memory (see ``images``)."""
        return self._all_rows(), self.labels

    def save(self, path: str | Path, *, with_residual: bool | None = None) -> None:
        """Write to ``path`` atomically (a temporary file renamed into place).

        ``with_residual=True`` writes every row's image (self-contained; what an in-memory set writes
        by default); ``False`` writes the blends, the residual rows' training indices and the
        source's fingerprint (length, row shape, dtype, hashes of the labels and images) but no residual
        image (the default when the source is a Dataset): :meth:`load` then needs ``source=``. The file
        carries a SHA-256 checksum of its content, verified by :meth:`load`.
        """
        if with_residual is None:
            with_residual = self.in_memory
        state = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _NOT_SAVED}
        if with_residual:
            state.pop("blends")
            state["images"] = self._rows(torch.arange(len(self))) if self._images is None else self._images
        else:
            state["blends"] = self._rows(torch.nonzero(self.is_blended).flatten())
            if self.num_residual and self.source is None:
                raise ValueError("ReducedRetainSet.save: with_residual=False needs the source of the residual "
                                 "rows (this set holds only images)")
            if self.source is not None:  # also without residual rows: the blends' members index it (§7.7)
                state["source_fingerprint"] = fingerprint(self.source)
        state = {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else plain(v)) for k, v in state.items()}
        atomic_save(with_checksum(state), path, fn="ReducedRetainSet.save")

    @classmethod
    def load(cls, path: str | Path, source: object = None) -> ReducedRetainSet:
        """Read a file written by :meth:`save` (safe loading); every field is checked, the content
        checksum verified (a file altered after it was written raises ``ValueError``; one written before
        checksums loads with a ``RuntimeWarning`` that it was not verified) and every error names the file.
        A file saved without its residual images needs ``source``: the training images (``[N, C, H, W]``
        tensor or the Dataset) the set was made from, checked against the saved fingerprint; a
        self-contained file ignores ``source``. A file saved without residual images that has no residual
        rows needs no ``source`` but keeps one that matches its fingerprint: the matched target
        (docs/method.md §7.7) reads the blends' members from it."""
        fn = "ReducedRetainSet.load"
        state = load_torch(path, fn)
        if (not isinstance(state, dict) or not {"labels", "is_blended"} <= set(state)
                or not ({"images"} & set(state) or {"blends"} & set(state))):
            raise ValueError(f"{fn}: {path} does not hold a saved ReducedRetainSet")
        verified = checksum_status(state)
        fp = state.get("source_fingerprint")
        names = {f.name for f in fields(cls)} | {"images"}
        state = {k: v for k, v in state.items() if k in names}
        _check_state(state, f"{fn}: {path}")
        if verified is False:
            raise ValueError(f"{fn}: {path} is corrupt: its content checksum ({CHECKSUM_KEY}) does not match (the "
                             "file changed after it was written); make the reduced set again")
        if verified is None:
            warnings.warn(f"{fn}: {path} has no checksum (written by an earlier fastblend); loaded unverified: "
                          "save it again to add one", RuntimeWarning, stacklevel=2)
        if "images" in state:
            state.pop("blends", None)
            return cls(**state)
        n_res = int((~state["is_blended"]).sum())
        if not n_res and source is not None:  # kept for what reads the blends' members (the matched target)
            if not isinstance(fp, dict):
                warnings.warn(f"{fn}: {path} has no residual rows and no fingerprint of its source (written by an "
                              "earlier fastblend), so source= cannot be checked and is not kept; save the set "
                              "again from one that has its source", RuntimeWarning, stacklevel=2)
                source = None
            else:
                check_fingerprint(source, fp, f"{fn}: {path}")
        if n_res:
            if source is None:
                raise ValueError(f"{fn}: {path} holds no residual images ({n_res} residual rows index the training "
                                 f"images); pass source= (the [N, C, H, W] tensor or Dataset of "
                                 f"{(fp or {}).get('length')} rows it was made from)")
            if not isinstance(fp, dict):
                raise ValueError(f"{fn}: {path} lacks the fingerprint of its source")
            check_fingerprint(source, fp, f"{fn}: {path}")
            top = int(state["source_index"].max())
            if top >= source_length(source):
                raise ValueError(f"{fn}: {path} indexes training row {top} but source has {source_length(source)}")
        return cls(images=None, source=source, **state)


def plain(value: Any) -> Any:
    """``value`` with numpy scalars (e.g. a ``member_chunk`` given as ``np.int64``) made Python numbers,
    through dicts, lists and tuples: what safe loading (``weights_only``) reads back."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    return value


_ROW_FIELDS = {"labels": torch.int64, "is_blended": torch.bool, "source_cluster": torch.int64,
               "source_index": torch.int64}


def _check_state(state: dict, where: str) -> None:
    """Types and shapes of a loaded ReducedRetainSet's fields (``where`` prefixes every error)."""
    key = "images" if "images" in state else "blends"
    images = state[key]
    if not isinstance(images, torch.Tensor) or not images.is_floating_point() or images.dim() < 2:
        raise ValueError(f"{where}: {key} must be a floating tensor [R, ...], got "
                         f"{getattr(images, 'dtype', type(images).__name__)}")
    labels = state.get("labels")
    rows = images.shape[0] if key == "images" else (labels.shape[0] if isinstance(labels, torch.Tensor) else -1)
    for name, dtype in _ROW_FIELDS.items():
        value = state.get(name)
        if not isinstance(value, torch.Tensor) or value.dtype != dtype or tuple(value.shape) != (rows,):
            got = f"{value.dtype} {list(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"{where}: {name} must be a {dtype} tensor of shape [{rows}] (one per image), got {got}")
    if key == "blends" and images.shape[0] != int(state["is_blended"].sum()):
        raise ValueError(f"{where}: blends holds {images.shape[0]} images for {int(state['is_blended'].sum())} "
                         "blended rows")
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


def _images_property(self: ReducedRetainSet) -> torch.Tensor:
    return self._all_rows()


# set after the dataclass is made, so that ``images`` stays the constructor's first argument
ReducedRetainSet.images = property(_images_property, doc="``[R, C, H, W]`` every row in memory (see the class).")
