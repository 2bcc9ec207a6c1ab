"""Where condensation reads training images: an in-memory ``[N, C, H, W]`` tensor or a map-style
``Dataset`` of ``(image, label)`` rows, read a few rows at a time (never all at once).

A Dataset is read through its batched ``__getitems__`` when it has one, else row by row; its labels
come from a ``.labels``/``.targets`` attribute of length ``N`` or one pass over the rows. Also the
source's fingerprint (length, row shape, a content hash of a few rows) that a reduced set saved
without its residual images keeps to check the source it is reopened with.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from .checks import content_keys

__all__ = ["FINGERPRINT_ROWS", "ReorderedRows", "check_fingerprint", "fingerprint", "is_dataset_source",
           "read_rows", "row_keys", "source_labels", "source_length", "source_sample"]

FINGERPRINT_ROWS = 16  # rows hashed into a source's fingerprint, evenly spaced
_READ = 512  # rows per read when a whole source is streamed


def is_dataset_source(data: object) -> bool:
    """A map-style Dataset (with ``__len__``) that condensation streams instead of materialising."""
    return isinstance(data, Dataset) and hasattr(data, "__len__") and not isinstance(data, torch.Tensor)


def source_length(source: object) -> int:
    return int(source.shape[0]) if isinstance(source, torch.Tensor) else len(source)


def _image_of(item: object, caller: str, i: object) -> torch.Tensor:
    x = item[0] if isinstance(item, (tuple, list)) else item
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"{caller}: dataset rows must be (image, label) with a floating image tensor, got "
                        f"{getattr(x, 'dtype', type(x).__name__)} at row {i}")
    return x


def read_rows(source: object, idx: torch.Tensor, caller: str = "read_rows") -> torch.Tensor:
    """``[m, C, H, W]`` images of rows ``idx`` (``[m]`` int64) of a tensor or a Dataset (its
    ``__getitems__`` when it has one). A tensor's rows stay on its device."""
    if isinstance(source, torch.Tensor):
        return source[idx.to(source.device)]
    rows = idx.tolist()
    if not rows:
        first = source_sample(source, caller)
        return first.new_zeros((0,) + tuple(first.shape))
    getitems = getattr(source, "__getitems__", None)
    items = getitems(rows) if callable(getitems) else [source[i] for i in rows]
    return torch.stack([_image_of(it, caller, i) for it, i in zip(items, rows)])


def source_sample(source: object, caller: str = "source_sample") -> torch.Tensor:
    """The first image (``[C, H, W]``)."""
    if isinstance(source, torch.Tensor):
        return source[0]
    return _image_of(source[0], caller, 0)


def source_labels(source: Dataset, caller: str) -> torch.Tensor:
    """``[N]`` labels of a Dataset: its ``.labels``/``.targets`` when that has one per row, else one pass."""
    n = len(source)
    for attr in ("labels", "targets"):
        value = getattr(source, attr, None)
        if value is not None and not callable(value):
            try:
                lab = torch.as_tensor(value)
            except (TypeError, ValueError, RuntimeError):
                continue
            if lab.dim() == 1 and lab.shape[0] == n:
                return lab.cpu()
    out = []
    getitems = getattr(source, "__getitems__", None)
    for s in range(0, n, _READ):
        rows = list(range(s, min(s + _READ, n)))
        items = getitems(rows) if callable(getitems) else [source[i] for i in rows]
        for it, i in zip(items, rows):
            if not isinstance(it, (tuple, list)) or len(it) < 2:
                raise TypeError(f"{caller}: dataset rows must be (image, label) pairs, got {type(it).__name__} "
                                f"at row {i}")
            out.append(int(it[1]))
    return torch.tensor(out, dtype=torch.int64)


def row_keys(source: object, idx: torch.Tensor | None = None, caller: str = "row_keys") -> torch.Tensor:
    """:func:`content_keys` of rows ``idx`` (default all), read ``512`` rows at a time: ``[m]`` int64."""
    if idx is None:
        idx = torch.arange(source_length(source))
    out = torch.empty(idx.numel(), dtype=torch.int64)  # filled in place: no O(N) list of parts on the heap
    for s in range(0, idx.numel(), _READ):
        out[s:s + _READ] = content_keys(read_rows(source, idx[s:s + _READ], caller))
    return out


class ReorderedRows(Dataset):
    """Rows ``order[i]`` of a source as a Dataset of ``(image, 0)`` (the grouping's content order)."""

    def __init__(self, source: object, order: torch.Tensor):
        self.source, self.order = source, order

    def __len__(self) -> int:
        return int(self.order.numel())

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return read_rows(self.source, self.order[i:i + 1])[0], 0

    def __getitems__(self, rows: list[int]) -> list[tuple[torch.Tensor, int]]:
        return [(x, 0) for x in read_rows(self.source, self.order[rows])]


def _fingerprint_rows(n: int) -> torch.Tensor:
    return torch.unique(torch.linspace(0, n - 1, min(n, FINGERPRINT_ROWS)).round().to(torch.int64))


def fingerprint(source: object) -> dict:
    """``{"length", "shape" (one row), "dtype", "rows", "hash"}``: what identifies the training images
    a reduced set's residual rows index (the content hash covers :data:`FINGERPRINT_ROWS` rows evenly
    spaced, the same for a tensor and a Dataset holding the same images)."""
    n = source_length(source)
    rows = _fingerprint_rows(n)
    sample = source_sample(source)
    return {"length": n, "shape": list(sample.shape), "dtype": str(sample.dtype).replace("torch.", ""),
            "rows": rows.tolist(), "hash": int((row_keys(source, rows) * (2 * rows + 1)).sum())}  # position-aware


def check_fingerprint(source: object, expected: dict, where: str) -> None:
    """``ValueError`` (prefixed by ``where``) unless ``source`` matches the ``expected`` fingerprint."""
    if not (isinstance(source, torch.Tensor) or is_dataset_source(source)):
        raise TypeError(f"{where}: source must be the training images tensor or Dataset, got {type(source).__name__}")
    got = fingerprint(source)
    for key, what in (("length", "rows"), ("shape", "row shape"), ("dtype", "dtype"), ("hash", "content hash")):
        if got[key] != expected.get(key):
            raise ValueError(f"{where}: source does not match the training images this set was made from: "
                             f"{what} {got[key]} != {expected.get(key)} (expected {expected.get('length')} rows of "
                             f"{expected.get('shape')} {expected.get('dtype')})")
