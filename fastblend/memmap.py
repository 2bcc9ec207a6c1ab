""":class:`MemmapImages`: a labelled image set read from a memory-mapped file (data larger than memory).

The images stay on disk (``.npy`` through ``np.load(mmap_mode="r")``, or a raw file with a given
shape and dtype); the operating system pages in the rows a batch reads, and once a batch is copied
out its pages are unmapped from the process again (``madvise(MADV_DONTNEED)``; they stay in the
page cache), so a pass over the whole file keeps about one batch of it resident, not all of it.
Labels (``[N]`` int64) are held in memory. A map-style ``torch.utils.data.Dataset``: every fastblend stage that takes a
``Dataset`` streams it batch by batch (:func:`fastblend.extract_features`, :func:`fastblend.unlearn`'s
retain set, the metrics). :meth:`MemmapImages.write` creates such a file from tensors or arrays.
"""

from __future__ import annotations

import mmap
import numbers
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ._checks import plain_number
from ._io import make_temp

__all__ = ["MemmapImages", "labels_path"]

_DTYPES = (np.uint8, np.float16, np.float32, np.float64)
_NPY_MAGIC = b"\x93NUMPY"  # how every .npy file begins
_FAULT_AROUND = 1 << 17  # bytes released beyond the rows read (twice Linux's default fault-around window)


def labels_path(path: str | os.PathLike) -> Path:
    """The labels file that goes with an images file: ``train.npy`` -> ``train.labels.npy``."""
    p = Path(path)
    return p.with_name((p.name[:-4] if p.name.endswith(".npy") else p.name) + ".labels.npy")


def _per_channel(value: Any, channels: int, arg: str) -> torch.Tensor | None:
    if value is None:
        return None
    t = torch.as_tensor(value, dtype=torch.float32).reshape(-1)
    if t.numel() == 1:
        t = t.expand(channels)
    if t.numel() != channels or not bool(torch.isfinite(t).all()):
        raise ValueError(f"MemmapImages: {arg} must be one finite number or one per channel ({channels}), "
                         f"got {value!r}")
    return t.clone().view(channels, 1, 1)


def _as_labels(labels: Any, n: int) -> torch.Tensor:
    if isinstance(labels, (str, os.PathLike)):
        if not Path(labels).is_file():
            raise FileNotFoundError(f"MemmapImages: no such labels file {str(labels)!r}")
        labels = np.load(labels, allow_pickle=False)
    y = torch.as_tensor(np.asarray(labels) if not torch.is_tensor(labels) else labels)
    if y.dim() != 1 or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"MemmapImages: labels must be a 1-D integer array, got {y.dtype} of shape {tuple(y.shape)}")
    if y.numel() != n:
        raise ValueError(f"MemmapImages: labels must have one entry per image ({n}), got {y.numel()}")
    y = y.to(torch.int64).cpu()
    if n and int(y.min()) < 0:
        raise ValueError(f"MemmapImages: labels must be >= 0, got {int(y.min())}")
    return y


class MemmapImages(Dataset):
    """Images ``[N, C, H, W]`` in a memory-mapped file, with labels ``[N]``; a map-style ``Dataset``.

    ``dataset[i]`` is ``(image [C, H, W] float32, label int)``; :meth:`take` reads a batch of rows in
    one pass over the file (sorted, contiguous runs as one slice) and ``__getitems__`` (what a
    ``DataLoader`` calls for a batch in torch >= 2.2) uses it.

    Pixel values become float32 as ``x = (raw / divide_by - mean) / std`` (per channel).

    Args:
        path: an ``.npy`` file (read with ``np.load(path, mmap_mode="r")``), or a raw file of
            C-ordered rows when ``shape`` is given.
        labels: ``[N]`` integer labels >= 0 (a tensor, an array, a sequence, or the path of an
            ``.npy`` file). ``None``: read :func:`labels_path` ``(path)`` (``train.labels.npy`` next to
            ``train.npy``), which :meth:`write` creates.
        shape, dtype, offset: a raw file's ``(N, C, H, W)``, element type and header bytes to skip
            (``shape`` given: the file is read raw with ``np.memmap``; ``dtype`` defaults to uint8).
        divide_by: divide raw values by this first; default 255 for uint8 (pixels in [0, 1]), 1 for
            float files.
        mean, std: per-channel (or scalar) normalisation after the division; default none.

    Stored element types: uint8, float16, float32, float64. Workers of a ``DataLoader`` re-open the
    file (the mapping itself is never pickled).
    """

    def __init__(self, path: str | os.PathLike, labels: Any = None, *, shape: Sequence[int] | None = None,
                 dtype: Any = None, offset: int = 0, divide_by: float | None = None,
                 mean: Sequence[float] | float | None = None, std: Sequence[float] | float | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"MemmapImages: no such file {str(self.path)!r}")
        if shape is not None:
            with open(self.path, "rb") as fh:
                if fh.read(6) == _NPY_MAGIC:
                    raise ValueError(f"MemmapImages: {str(self.path)!r} is a .npy file (its header gives the shape and "
                                     "dtype); shape, dtype and offset describe a raw file: leave them out")
            if any(isinstance(s, bool) or not isinstance(s, numbers.Integral) for s in shape):
                raise ValueError(f"MemmapImages: shape must be (N, C, H, W) of ints, got {tuple(shape)}")
            shape = tuple(int(s) for s in shape)
            if len(shape) != 4 or min(shape) < 1:
                raise ValueError(f"MemmapImages: shape must be (N, C, H, W) of positive sizes, got {shape}")
        elif dtype is not None or offset:
            raise ValueError("MemmapImages: dtype and offset describe a raw file; pass shape=(N, C, H, W) too")
        if isinstance(offset, bool) or not isinstance(offset, numbers.Integral) or offset < 0:
            raise ValueError(f"MemmapImages: offset must be an int >= 0, got {offset!r}")
        raw_dtype = np.dtype(dtype if dtype is not None else np.uint8)
        self._raw = (shape, raw_dtype, int(offset)) if shape is not None else None
        self._array: np.ndarray | None = None
        arr = self.array
        if arr.dtype.type not in _DTYPES:
            raise TypeError(f"MemmapImages: images must be stored as uint8, float16, float32 or float64, "
                            f"got {arr.dtype}")
        if arr.ndim != 4:
            raise ValueError(f"MemmapImages: images must be [N, C, H, W], got shape {tuple(arr.shape)} in {self.path}")
        n, channels = int(arr.shape[0]), int(arr.shape[1])
        if n == 0:
            raise ValueError(f"MemmapImages: {self.path} holds no images")
        if divide_by is None:
            divide_by = 255.0 if arr.dtype == np.uint8 else 1.0
        divide_by = plain_number(divide_by)  # numpy numbers too
        if isinstance(divide_by, bool) or not isinstance(divide_by, (int, float)) or not divide_by > 0:
            raise ValueError(f"MemmapImages: divide_by must be a number > 0, got {divide_by!r}")
        self.divide_by = float(divide_by)
        self.mean = _per_channel(mean, channels, "mean")
        self.std = _per_channel(std, channels, "std")
        if self.std is not None and not bool((self.std > 0).all()):
            raise ValueError(f"MemmapImages: std must be > 0, got {std!r}")
        if labels is None:
            labels = labels_path(self.path)
            if not labels.is_file():
                raise FileNotFoundError(f"MemmapImages: labels not given and no labels file {str(labels)!r} "
                                        "(MemmapImages.write creates it)")
        self.labels = _as_labels(labels, n)

    # ---------------------------------------------------------------- the mapping
    @property
    def array(self) -> np.ndarray:
        """The memory-mapped ``[N, C, H, W]`` array (read-only), opened on first use."""
        if self._array is None:
            if self._raw is not None:
                shape, dtype, offset = self._raw
                need = offset + int(np.prod(shape)) * dtype.itemsize
                size = self.path.stat().st_size
                if size < need:
                    raise ValueError(f"MemmapImages: {self.path} has {size} bytes, shape {shape} of {dtype} "
                                     f"after {offset} header bytes needs {need}")
            try:
                if self._raw is None:
                    array = np.load(self.path, mmap_mode="r", allow_pickle=False)
                    if not isinstance(array, np.ndarray):  # an .npz archive
                        raise ValueError(f"it holds a {type(array).__name__}, not one array")
                    self._array = array
                else:
                    self._array = np.memmap(self.path, dtype=dtype, mode="r", offset=offset, shape=shape)
            except (OSError, EOFError, ValueError) as exc:
                hint = "" if self._raw is not None else " (not a .npy file of [N, C, H, W] numbers?)"
                raise ValueError(f"MemmapImages: cannot map {str(self.path)!r}{hint}: {exc}") from exc
        return self._array

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_array"] = None  # a worker re-opens the file instead of receiving a copy of it
        return state

    def _release(self, lo: int, hi: int) -> None:
        """Unmap the pages of rows ``lo..hi`` (inclusive) from this process once they have been copied out
        (the kernel keeps them in its page cache; a later read maps them back in). Without this, every
        row read stays in the resident set until the whole file is resident. No-op where ``madvise``
        is unavailable."""
        arr = self._array
        mm = getattr(arr, "_mmap", None)
        advice = getattr(mmap, "MADV_DONTNEED", None)
        if mm is None or advice is None or not hasattr(mm, "madvise"):
            return
        try:
            base = np.frombuffer(mm, dtype=np.uint8).ctypes.data  # where the mapping starts
        except (TypeError, ValueError, BufferError):
            return
        row = arr.strides[0]
        # widened by the kernel's fault-around window (64 KiB by default): a fault maps the cached
        # neighbouring pages too, on both sides of the rows read
        start = max(0, arr.ctypes.data - base + lo * row - _FAULT_AROUND)
        end = min(arr.ctypes.data - base + (hi + 1) * row + _FAULT_AROUND, len(mm))
        start -= start % mmap.PAGESIZE
        if end > start:
            try:
                mm.madvise(advice, start, end - start)
            except (OSError, ValueError):
                pass

    def _check_size(self, hi: int) -> None:
        """Raise ``ValueError`` if the mapped file no longer holds row ``hi``: reading a page of a mapping
        beyond the end of its (shrunk) file kills the process with ``SIGBUS``. The size is that of the
        file that is mapped (the same inode, even if ``path`` was since replaced), read with one
        ``fstat`` per batch; a file shrunk between this check and the read still faults (the window is
        one batch read)."""
        arr = self._array
        mm = getattr(arr, "_mmap", None)
        if mm is None:
            return
        try:
            size = mm.size()  # fstat of the mapped file
        except (OSError, ValueError):
            return
        need = int(getattr(arr, "offset", 0)) + (hi + 1) * int(arr.strides[0])
        if size < need:
            raise ValueError(f"MemmapImages: {self.path} shrank to {size} bytes after it was opened; row {hi} needs "
                             f"{need} (was the file rewritten in place? open it again once it is complete)")

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(N, C, H, W)``."""
        return tuple(int(s) for s in self.array.shape)

    @property
    def num_classes(self) -> int:
        """``max(labels) + 1``."""
        return int(self.labels.max()) + 1

    # ---------------------------------------------------------------- reads
    def __len__(self) -> int:
        return int(self.labels.numel())

    def _convert(self, raw: np.ndarray) -> torch.Tensor:
        x = torch.empty(raw.shape, dtype=torch.float32)
        x.numpy()[...] = raw  # one pass: read (pages in), convert, copy out of the read-only mapping
        if self.divide_by != 1.0:
            x.div_(self.divide_by)
        if self.mean is not None:
            x.sub_(self.mean)
        if self.std is not None:
            x.div_(self.std)
        return x

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if isinstance(index, torch.Tensor) and index.numel() == 1:
            index = int(index)
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"MemmapImages: index must be an int, got {type(index).__name__} (use take() for a batch)")
        n = len(self)
        i = int(index) + n if index < 0 else int(index)
        if not 0 <= i < n:
            raise IndexError(f"MemmapImages: index {index} out of range for {n} images")
        array = self.array
        self._check_size(i)
        x = self._convert(array[i])
        self._release(i, i)
        return x, int(self.labels[i])

    def take(self, indices: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch: ``(images [B, C, H, W] float32, labels [B] int64)`` of the rows ``indices`` (in that
        order; repeats allowed; a negative index counts from the end, as in ``dataset[i]``). The file is
        read in ascending row order, a contiguous run as one slice."""
        idx = torch.as_tensor(indices).reshape(-1)
        if idx.numel() == 0:  # [] and np.array([]) are float: no rows, whatever their dtype
            idx = idx.to(torch.int64)
        if idx.is_floating_point() or idx.dtype == torch.bool:
            raise TypeError(f"MemmapImages.take: indices must be integers, got {idx.dtype}")
        idx = idx.to(torch.int64).cpu()
        n = len(self)
        if idx.numel() and (int(idx.min()) < -n or int(idx.max()) >= n):
            bad = int(idx.min()) if int(idx.min()) < -n else int(idx.max())
            raise IndexError(f"MemmapImages.take: indices must be in [-{n}, {n}), got {bad}")
        idx = torch.where(idx < 0, idx + n, idx)  # negative counts from the end, as for dataset[i]
        if idx.numel() == 0:
            return torch.empty((0,) + self.shape[1:], dtype=torch.float32), torch.empty(0, dtype=torch.int64)
        rows, order = torch.sort(idx)
        lo, hi = int(rows[0]), int(rows[-1])
        self.array  # noqa: B018 (opens the mapping)
        self._check_size(hi)
        if hi - lo + 1 == rows.numel() and bool((rows[1:] - rows[:-1] == 1).all()):
            raw = self.array[lo:hi + 1]
        else:
            raw = self.array[rows.numpy()]
        x = self._convert(raw)
        del raw
        self._release(lo, hi)
        if order.numel() > 1 and not bool((order[1:] > order[:-1]).all()):
            x = x[torch.argsort(order)]  # back to the requested order
        return x, self.labels[idx]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        """The batch protocol of ``DataLoader`` (torch >= 2.2): one :meth:`take`, split into samples."""
        x, y = self.take(list(indices))
        return list(zip(x.unbind(0), y.tolist()))

    # ---------------------------------------------------------------- writing
    @classmethod
    def write(cls, path: str | os.PathLike, images: Any, labels: Any, *, dtype: Any = None,
              chunk_size: int = 4096, **kwargs: Any) -> MemmapImages:
        """Write ``images [N, C, H, W]`` (a tensor or an array, e.g. another memory map; copied
        ``chunk_size`` rows at a time) to the ``.npy`` file ``path`` and ``labels [N]`` to
        :func:`labels_path` ``(path)``, each atomically; return the :class:`MemmapImages` over them
        (``kwargs``: ``divide_by``, ``mean``, ``std``).

        ``dtype``: the stored type (uint8, float16, float32, float64); default the images' own.
        Floating images are not quantised to uint8 (``TypeError``): scale and round them yourself.
        """
        fn = "MemmapImages.write"
        path = Path(path)
        if not path.name.endswith(".npy"):
            raise ValueError(f"{fn}: path must end with .npy, got {str(path)!r}")
        if not path.parent.is_dir():
            raise FileNotFoundError(f"{fn}: no such folder {str(path.parent)!r}")
        if torch.is_tensor(images):
            images = images.detach().cpu()
            src_dtype = np.dtype(str(images.dtype).replace("torch.", "")) if images.dtype != torch.bfloat16 else None
        elif isinstance(images, np.ndarray):
            src_dtype = images.dtype
        else:
            raise TypeError(f"{fn}: images must be a tensor or a numpy array [N, C, H, W], got {type(images).__name__}")
        if src_dtype is None or src_dtype.type not in _DTYPES:
            raise TypeError(f"{fn}: images must be uint8, float16, float32 or float64, got {images.dtype}")
        if images.ndim != 4 or images.shape[0] == 0:
            raise ValueError(f"{fn}: images must be a non-empty [N, C, H, W], got shape {tuple(images.shape)}")
        out_dtype = np.dtype(dtype) if dtype is not None else src_dtype
        if out_dtype.type not in _DTYPES:
            raise TypeError(f"{fn}: dtype must be uint8, float16, float32 or float64, got {out_dtype}")
        if out_dtype == np.uint8 and src_dtype != np.uint8:
            raise TypeError(f"{fn}: floating images are not quantised to uint8; convert them first")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size < 1:
            raise ValueError(f"{fn}: chunk_size must be an int >= 1, got {chunk_size!r}")
        chunk_size = int(chunk_size)
        n = int(images.shape[0])
        y = _as_labels(labels, n).numpy()
        _atomic_npy(path, lambda tmp: _copy_rows(tmp, images, out_dtype, chunk_size))
        _atomic_npy(labels_path(path), lambda tmp: np.save(tmp, y))
        return cls(path, **kwargs)


def _copy_rows(target: Path, images: Any, dtype: np.dtype, chunk_size: int) -> None:
    out = np.lib.format.open_memmap(target, mode="w+", dtype=dtype, shape=tuple(int(s) for s in images.shape))
    for s in range(0, out.shape[0], chunk_size):
        block = images[s:s + chunk_size]
        out[s:s + block.shape[0]] = block.numpy() if torch.is_tensor(block) else np.asarray(block)
    out.flush()
    del out


def _atomic_npy(path: Path, write) -> None:
    fd, tmp = make_temp(path, suffix=".npy", fn="MemmapImages.write")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
