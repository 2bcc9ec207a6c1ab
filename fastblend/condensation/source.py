"""Where condensation reads training images: an in-memory ``[N, C, H, W]`` tensor or a map-style
``Dataset`` of ``(image, label)`` rows, read a few rows at a time (never all at once).

A Dataset is read through its batched ``__getitems__`` when it has one, else row by row; its labels
come from a ``.labels``/``.targets`` attribute of length ``N`` or one pass over the rows. Also the
source's fingerprint (length, row shape, dtype, SHA-256 of the labels and of every image byte up to
256 MiB, else of 8,192 evenly spaced rows) that an index or a reduced set saved without its
residual images keeps to check the source it is reopened with, and the content keys that fix the
grouping's row order and find rows by content.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .._io import hashed_rows
from ..data_adapter import dataset_items

__all__ = ["FINGERPRINT_KIND", "ReorderedRows", "check_fingerprint", "content_keys", "content_order", "fingerprint",
           "is_dataset_source", "read_rows", "row_keys", "source_labels", "source_length", "source_sample"]

FINGERPRINT_KIND = 2  # every image byte up to a cap (fastblend._io.hashed_rows), and the labels
_READ = 512  # rows per read when a whole source is streamed


_HASH_SEED = 0x5EED_B1E4D


def content_keys(images: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """``[N]`` int64 CPU hash of each row's bytes: a fixed random linear form over the bit patterns in
    wrapping int64 arithmetic, exact, so it depends neither on the row order nor on the batch."""
    flat = images.reshape(images.shape[0], -1)
    int_dtype = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.int8}[flat.element_size()]
    gen = torch.Generator().manual_seed(_HASH_SEED)
    mult = (torch.randint(-(2**62), 2**62, (flat.shape[1],), generator=gen, dtype=torch.int64) | 1).to(flat.device)
    keys = torch.empty(flat.shape[0], dtype=torch.int64, device=flat.device)
    for s in range(0, flat.shape[0], chunk):
        keys[s:s + chunk] = (flat[s:s + chunk].contiguous().view(int_dtype).to(torch.int64) * mult).sum(1)
    return keys.cpu()


def content_order(images: torch.Tensor) -> torch.Tensor:
    """``[N]`` int64 permutation sorting the rows of ``images`` by :func:`content_keys`.

    Feeding features and k-means in this order makes the grouping (k-means++ seeding picks
    positions) depend on the data only, not on the order of its rows; equal rows are interchangeable.
    """
    return torch.argsort(content_keys(images), stable=True)


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
    items = dataset_items(source, rows)
    return _stack(source, [_image_of(it, caller, i) for it, i in zip(items, rows)], rows, caller)


def _stack(source: object, images: list[torch.Tensor], rows: list[int], caller: str) -> torch.Tensor:
    """``torch.stack(images)``; rows of different shapes raise a ``ValueError`` naming the first odd row
    and the shape expected (row 0's)."""
    if all(x.shape == images[0].shape for x in images):
        return torch.stack(images)
    expected = tuple(source_sample(source, caller).shape)
    for x, i in zip(images, rows):
        if tuple(x.shape) != expected:
            raise ValueError(f"{caller}: every dataset row must hold an image of one shape; row {i} has "
                             f"{list(x.shape)}, expected {list(expected)} (the shape of row 0)")
    raise ValueError(f"{caller}: every dataset row must hold an image of one shape; rows {rows[0]}..{rows[-1]} "
                     "differ")


def source_sample(source: object, caller: str = "source_sample") -> torch.Tensor:
    """The first image (``[C, H, W]``)."""
    if isinstance(source, torch.Tensor):
        return source[0]
    return _image_of(source[0], caller, 0)


def _attribute_labels(source: object, integers_only: bool = False) -> torch.Tensor | None:
    """A Dataset's ``.labels``/``.targets`` (CPU) when it holds one value per row (an integer one with
    ``integers_only``), read without the images; ``None`` otherwise."""
    n = len(source)
    for attr in ("labels", "targets"):
        value = getattr(source, attr, None)
        if value is None or callable(value):
            continue
        try:
            lab = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError):
            continue
        if lab.dim() == 1 and lab.shape[0] == n and not (integers_only and lab.is_floating_point()):
            return lab.cpu()
    return None


def source_labels(source: Dataset, caller: str) -> torch.Tensor:
    """``[N]`` labels of a Dataset: its ``.labels``/``.targets`` when that has one per row, else one pass."""
    n = len(source)
    lab = _attribute_labels(source)
    if lab is not None:
        return lab
    out = []
    for s in range(0, n, _READ):
        rows = list(range(s, min(s + _READ, n)))
        items = dataset_items(source, rows)
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


def _update(h: Any, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    if t.numel():
        h.update(memoryview(t.view(torch.uint8).reshape(-1).numpy()))


def fingerprint(source: object) -> dict:
    """What identifies the training images a saved index or reduced set indexes (kind 2):
    ``{"kind", "length", "shape" (one row), "dtype", "rows", "images", "labels", "label_rows"}``.

    ``images`` is the SHA-256 of the image bytes (as the source returns them: a tensor's rows, a
    Dataset's images) of the rows :func:`fastblend._io.hashed_rows` picks: every row up to 256 MiB, else
    8,192 evenly spaced rows, always the first and the last (``rows``: ``"all"`` or ``"sample"``),
    read :data:`_READ` rows at a time (a Dataset is streamed, never held whole); the
    same for a tensor and a Dataset holding the same images. ``labels`` (a Dataset only; ``None`` for
    a tensor) is the SHA-256 of the int64 labels: all of them from a ``.labels``/``.targets``
    attribute or when every row is read, else the hashed rows' (``label_rows``).
    """
    n = source_length(source)
    sample = source_sample(source)
    rows = hashed_rows(n, sample.numel() * sample.element_size())
    idx = torch.arange(n) if rows is None else rows
    h_img = hashlib.sha256(f"{tuple(sample.shape)}|{sample.dtype}|{n}|".encode())
    labels = None if isinstance(source, torch.Tensor) else _attribute_labels(source, integers_only=True)
    labels = None if labels is None else labels.to(torch.int64)
    from_rows: list[int] | None = None if isinstance(source, torch.Tensor) or labels is not None else []
    for s in range(0, idx.numel(), _READ):
        part = idx[s:s + _READ]
        if isinstance(source, torch.Tensor):
            _update(h_img, source[part.to(source.device)])
            continue
        rows_list = part.tolist()
        items = dataset_items(source, rows_list)
        images = []
        for it, i in zip(items, rows_list):
            images.append(_image_of(it, "fingerprint", i))
            if from_rows is not None:
                if isinstance(it, (tuple, list)) and len(it) >= 2:
                    from_rows.append(int(it[1]))
                else:
                    from_rows = None
        _update(h_img, _stack(source, images, rows_list, "fingerprint"))
    if from_rows is not None:
        labels = torch.tensor(from_rows, dtype=torch.int64)
    label_rows = None if labels is None else ("all" if labels.numel() == n else "sample")
    return {"kind": FINGERPRINT_KIND, "length": n, "shape": list(sample.shape),
            "dtype": str(sample.dtype).replace("torch.", ""), "rows": "all" if rows is None else "sample",
            "images": h_img.hexdigest(),
            "labels": None if labels is None else hashlib.sha256(labels.numpy().tobytes()).hexdigest(),
            "label_rows": label_rows}


def _mismatch(where: str, what: str, got: object, want: object, expected: dict) -> ValueError:
    return ValueError(f"{where}: source does not match the training images this set was made from: "
                      f"{what} {got} != {want} (expected {expected.get('length')} rows of "
                      f"{expected.get('shape')} {expected.get('dtype')})")


def check_fingerprint(source: object, expected: dict, where: str) -> None:
    """``ValueError`` (prefixed by ``where``) unless ``source`` matches the ``expected`` fingerprint:
    length, row shape and dtype first, then the content hashes (of the images; of the labels when
    both sides have them over the same rows)."""
    if not (isinstance(source, torch.Tensor) or is_dataset_source(source)):
        raise TypeError(f"{where}: source must be the training images tensor or Dataset, got {type(source).__name__}")
    kind = expected.get("kind")
    if kind is None:
        raise ValueError(f"{where}: the saved source fingerprint is missing or unreadable; rebuild the file from "
                         "its training images")
    if kind != FINGERPRINT_KIND:
        raise ValueError(f"{where}: the saved source fingerprint is of kind {kind!r}, this fastblend checks kind "
                         f"{FINGERPRINT_KIND}; rebuild the file with this version")
    n = source_length(source)
    sample = source_sample(source)
    cheap = {"length": n, "shape": list(sample.shape), "dtype": str(sample.dtype).replace("torch.", "")}
    for key, what in (("length", "rows"), ("shape", "row shape"), ("dtype", "dtype")):
        if cheap[key] != expected.get(key):
            raise _mismatch(where, what, cheap[key], expected.get(key), expected)
    got = fingerprint(source)
    if got["images"] != expected.get("images"):
        raise _mismatch(where, "content hash", got["images"][:16], str(expected.get("images"))[:16], expected)
    if (got["labels"] is not None and expected.get("labels") is not None
            and got["label_rows"] == expected.get("label_rows") and got["labels"] != expected["labels"]):
        raise _mismatch(where, "labels hash", got["labels"][:16], str(expected["labels"])[:16], expected)
