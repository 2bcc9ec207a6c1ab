"""The data adapter of ``unlearn`` and the metrics: any data argument -> one :class:`DataView`.

:func:`as_data` accepts tensor pairs/triples, a ``ReducedRetainSet``, ``Subset``/``TensorDataset``/
any map-style ``Dataset`` or a ``DataLoader``; a :class:`DataView` serves its seeded batches on a
device (:class:`CyclicBatches` endlessly). A map-style ``Dataset`` that is not already tensors (e.g. a
:class:`fastblend.memmap.MemmapImages`) is streamed, never read whole: each pass draws the same seeded
permutation as in-memory data and reads its batches through a ``DataLoader`` (:func:`stream_batches`,
:func:`fetch_batch`), so the batches equal those of the same data held as tensors. Also the checks on
data arguments (disjoint retain/forget, labels within the model's output width) and
:func:`model_device`. Imports nothing else from fastblend but ``_device`` and ``memmap``, so both
``fastblend.methods`` and ``fastblend.metrics`` build on it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, Subset, TensorDataset, default_collate

from ._checks import check_has_data
from ._device import module_device
from .memmap import MemmapImages


def _is_reduced_set(obj: Any) -> bool:
    """A ``ReducedRetainSet`` (duck-typed: this layer does not import ``fastblend.condense``): ``labels``
    and ``is_blended``, and ``images`` or, for a set served from a Dataset (whose ``images`` raises),
    ``in_memory``."""
    return (hasattr(obj, "labels") and hasattr(obj, "is_blended")
            and (hasattr(type(obj), "in_memory") or hasattr(obj, "images")))


def _reduced_view(obj: Any, name: str, fn: str) -> DataView:
    """A reduced retain set as a view that keeps its rows' training indices (``source_index``): in
    memory when its images need no Dataset read, else streamed (its residual rows read from its source)."""
    src = getattr(obj, "source_index", None)
    if getattr(obj, "in_memory", True):
        return _tensor_view(name, obj.images, obj.labels, src, True, fn)
    if len(obj) == 0:
        raise ValueError(f"{fn}: {name} is empty")
    if src is not None:
        src = torch.as_tensor(src).reshape(-1).long().cpu()
        if src.shape[0] != len(obj):
            raise ValueError(f"{fn}: {name} source_index has length {src.shape[0]}, expected {len(obj)}")
    return DataView(name, indices=src, reduced=True, dataset=obj)


# ------------------------------------------------------------------------------------------------
# streaming a map-style Dataset
# ------------------------------------------------------------------------------------------------
def dataset_items(dataset: Dataset, rows: Sequence[int]) -> list:
    """Items ``rows`` of a map-style ``dataset``: one batched ``__getitems__`` call where it has one,
    else one by one."""
    getitems = getattr(dataset, "__getitems__", None)
    return getitems(list(rows)) if callable(getitems) else [dataset[i] for i in rows]


def fetch_batch(dataset: Dataset, indices: Sequence[int]) -> Any:
    """Items ``indices`` of a map-style ``dataset``, collated (``default_collate``): one
    :meth:`MemmapImages.take` read, the dataset's ``__getitems__`` where it has one, else item by item."""
    if isinstance(dataset, MemmapImages):
        return dataset.take(indices)
    return default_collate(dataset_items(dataset, indices))


class _BatchReader(Dataset):
    """Item ``[i, j, ...]`` is the collated batch of those items of ``dataset`` (so that a
    ``DataLoader`` with ``batch_size=None`` reads whole batches, in workers if asked)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, indices: Sequence[int]) -> Any:
        return fetch_batch(self.dataset, indices)


PartFn = Callable[[int], slice]


def _part_of(idx: torch.Tensor, part: PartFn | None) -> torch.Tensor:
    """``idx[part(len(idx))]``: the rows of one global batch that this rank reads (all without ``part``)."""
    return idx if part is None else idx[part(idx.numel())]


class _Slices(Sampler):
    """Consecutive slices of ``order`` (``[N]`` int64) as index lists; with ``part``, each slice's part
    (an empty part is read as the slice's first row, which the consumer drops: a batch must hold a row)."""

    def __init__(self, order: torch.Tensor, batch_size: int, part: PartFn | None = None):
        self.order, self.batch_size, self.part = order, batch_size, part

    def __len__(self) -> int:
        return math.ceil(self.order.numel() / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        for s in range(0, self.order.numel(), self.batch_size):
            idx = self.order[s:s + self.batch_size]
            rows = _part_of(idx, self.part)
            yield (rows if rows.numel() else idx[:1]).tolist()


def stream_batches(dataset: Dataset, order: torch.Tensor, batch_size: int, num_workers: int = 0,
                   pin_memory: bool = False, part: PartFn | None = None) -> DataLoader:
    """A ``DataLoader`` that yields the collated batches ``dataset[order[s:s + batch_size]]`` in
    sequence (with ``part``, only each batch's part: see :class:`_Slices`); ``num_workers`` processes
    read ahead, ``pin_memory`` pins each batch (for CUDA)."""
    return DataLoader(_BatchReader(dataset), sampler=_Slices(order.cpu(), batch_size, part), batch_size=None,
                      num_workers=num_workers, pin_memory=pin_memory)


class DataView:
    """One data argument of ``unlearn`` (retain, forget or unseen), normalised.

    Either in memory (``images [N, ...]`` floating point, ``labels [N]`` int64, on one device), a
    ``DataLoader`` streamed as is, or a map-style ``dataset`` streamed in seeded batches (read by
    ``num_workers`` processes; pinned when the batches go to CUDA). ``indices [N]`` int64 holds each
    row's index in the training set where it is known (``-1`` where not, e.g. a blended image), for
    the disjointness check.
    """

    def __init__(self, name: str, images: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                 loader: DataLoader | None = None, indices: torch.Tensor | None = None, reduced: bool = False,
                 dataset: Dataset | None = None, num_workers: int = 0):
        self.name = name
        self.images = images
        self.labels = labels
        self.loader = loader
        self.dataset = dataset
        self.num_workers = num_workers
        self.indices = indices
        self.reduced = reduced
        self.num_classes: int | None = None  # set by check_label_range: a loader's batches are checked too
        self.image_dtype: torch.dtype | None = None  # set by cast_to_model: batches arrive in the model's dtype

    @property
    def in_memory(self) -> bool:
        return self.images is not None

    def __len__(self) -> int:
        if self.images is not None:
            return int(self.images.shape[0])
        return len(self.dataset if self.dataset is not None else self.loader.dataset)

    def num_batches(self, batch_size: int) -> int:
        if self.images is not None or self.dataset is not None:
            return math.ceil(len(self) / batch_size)
        return len(self.loader)

    def to(self, device: torch.device) -> DataView:
        if self.images is None or self.images.device == device:
            return self
        moved = DataView(self.name, self.images.to(device), self.labels.to(device), None, self.indices, self.reduced)
        moved.num_classes, moved.image_dtype = self.num_classes, self.image_dtype
        return moved

    def materialise(self, fn: str) -> DataView:
        """The same data in memory (iterates a loader once; its own shuffling and transforms apply)."""
        if self.images is not None:
            return self
        xs, ys = [], []
        source = self.loader if self.dataset is None else self._stream(torch.arange(len(self)), 512, False)
        for batch in source:
            x, y = _unpack_batch(batch, self.name, fn)
            xs.append(x)
            ys.append(y)
        if not xs:
            raise ValueError(f"{fn}: {self.name} is empty")
        return _tensor_view(self.name, torch.cat(xs), torch.cat(ys), self.indices, self.reduced, fn)

    def probe(self, fn: str) -> torch.Tensor:
        """The first image as a ``[1, ...]`` batch (a loader's first batch is read); ``ValueError``
        if there is none."""
        if self.images is not None:
            return self.images[:1]
        if self.dataset is not None:
            return _unpack_batch(fetch_batch(self.dataset, [0]), self.name, fn)[0]
        for batch in self.loader:
            x, _ = _unpack_batch(batch, self.name, fn)
            if x.shape[0]:
                return x[:1]
        raise ValueError(f"{fn}: {self.name} is empty (its DataLoader yields no samples)")

    def _stream(self, order: torch.Tensor, batch_size: int, pin_memory: bool, part: PartFn | None = None) -> DataLoader:
        return stream_batches(self.dataset, order, batch_size, self.num_workers, pin_memory, part)

    @property
    def indexable(self) -> bool:
        """Whether its batches are drawn by index (in memory or a streamed dataset), so that a rank can
        read only its part of each one; a ``DataLoader`` view yields whole batches."""
        return self.images is not None or self.dataset is not None

    def take(self, idx: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``idx`` as ``(images, labels)`` on ``device`` (a streamed dataset reads just those items)."""
        if self.images is None:
            x, y = _unpack_batch(fetch_batch(self.dataset, idx.tolist()), self.name, "take")
            if self.num_classes is not None:
                check_batch_labels(y, self.num_classes, self.name, "take")
            return x.to(device, self.image_dtype, non_blocking=True), y.to(device, non_blocking=True)
        idx = idx.to(self.images.device)
        return (self.images[idx].to(device, self.image_dtype, non_blocking=True),
                self.labels[idx].to(device, non_blocking=True))

    def batches(self, batch_size: int, generator: torch.Generator, device: torch.device, fn: str,
                shuffle: bool = True, part: PartFn | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of ``(images, labels)`` on ``device``: a seeded permutation per call (in memory or
        a streamed dataset: the same batches), or the loader's own order. ``part(n)`` (only where
        :attr:`indexable`) selects the rows of each ``n``-row batch to read and yield, e.g. a rank's
        ``row_shard`` under torch.distributed: the other rows are never read."""
        if part is not None and not self.indexable:
            raise ValueError(f"{fn}: {self.name} is a DataLoader; its batches cannot be read in parts")
        if self.images is None:
            source = self.loader
            n = len(self)
            if self.dataset is not None:
                order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
                source = self._stream(order, batch_size, device.type == "cuda", part)
            for i, batch in enumerate(source):
                x, y = _unpack_batch(batch, self.name, fn)
                if part is not None:
                    rows = part(min(batch_size, n - i * batch_size))
                    if rows.stop <= rows.start:  # an empty part: _Slices read one row to keep the batch
                        x, y = x[:0], y[:0]
                if self.num_classes is not None:
                    check_batch_labels(y, self.num_classes, self.name, fn)
                yield x.to(device, self.image_dtype, non_blocking=True), y.to(device, non_blocking=True)
            return
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        order = order.to(self.images.device)
        for start in range(0, n, batch_size):
            yield self.take(_part_of(order[start:start + batch_size], part), device)


class CyclicBatches:
    """Endless batches from an in-memory view: a fresh seeded permutation each time it runs out."""

    def __init__(self, view: DataView, batch_size: int, generator: torch.Generator, device: torch.device):
        self.view, self.batch_size, self.generator, self.device = view, min(batch_size, len(view)), generator, device
        self._order = torch.empty(0, dtype=torch.long)
        self._pos = 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._pos + self.batch_size > self._order.numel():
            self._order = torch.randperm(len(self.view), generator=self.generator)
            self._pos = 0
        idx = self._order[self._pos:self._pos + self.batch_size]
        self._pos += self.batch_size
        return self.view.take(idx, self.device)


def _unpack_batch(batch: Any, name: str, fn: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)`` of one loader batch, held to the checks of in-memory data (floating images,
    1-D integer labels >= 0, one per image)."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 2 and torch.is_tensor(batch[0]) and torch.is_tensor(batch[1]):
        x, y = batch[0], batch[1]
        if not x.is_floating_point():
            raise TypeError(f"{fn}: {name} images must be a floating-point tensor, got {x.dtype} in a batch")
        if y.dim() != 1 or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise TypeError(f"{fn}: {name} labels must be a 1-D integer tensor, got {y.dtype} of shape "
                            f"{tuple(y.shape)} in a batch (float labels would be truncated)")
        if x.dim() < 1 or x.shape[0] != y.shape[0]:
            raise ValueError(f"{fn}: {name} batch has {x.shape[0] if x.dim() else 0} images but {y.shape[0]} labels")
        if y.numel() and y.device.type != "meta" and int(y.min()) < 0:
            raise ValueError(f"{fn}: {name} labels must be >= 0, got {int(y.min())}")
        return x, y.long()
    raise TypeError(f"{fn}: {name} batches must be (images, labels, ...) tuples of tensors; got {type(batch).__name__}")


def _tensor_view(name: str, images: Any, labels: Any, indices: Any, reduced: bool, fn: str) -> DataView:
    if not torch.is_tensor(images) or not torch.is_tensor(labels):
        raise TypeError(f"{fn}: {name}: images and labels must be tensors; got {type(images).__name__} and "
                        f"{type(labels).__name__}")
    if not images.is_floating_point():
        raise TypeError(f"{fn}: {name} images must be a floating-point tensor, got {images.dtype}")
    if labels.dim() != 1 or labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(f"{fn}: {name} labels must be a 1-D integer tensor, got {labels.dtype} of shape "
                        f"{tuple(labels.shape)}")
    if images.dim() < 1 or images.shape[0] != labels.shape[0]:
        n_images = images.shape[0] if images.dim() else 0
        raise ValueError(f"{fn}: {name} has {n_images} images but {labels.shape[0]} labels")
    if images.device != labels.device:
        raise ValueError(f"{fn}: {name} images are on {images.device} but labels on {labels.device}; "
                         "expected one device")
    check_has_data(fn, f"{name} images and labels", images, labels)
    if labels.shape[0] == 0:
        raise ValueError(f"{fn}: {name} is empty")
    if labels.device.type != "meta" and int(labels.min()) < 0:
        raise ValueError(f"{fn}: {name} labels must be >= 0, got {int(labels.min())}")
    if indices is not None:
        indices = torch.as_tensor(indices).reshape(-1).long().cpu()
        if indices.shape[0] != labels.shape[0]:
            raise ValueError(f"{fn}: {name} indices have length {indices.shape[0]}, expected {labels.shape[0]}")
    return DataView(name, images, labels.long(), None, indices, reduced)


def as_data(obj: Any, name: str, fn: str) -> DataView:
    """Normalise a data argument: a pair ``(images, labels)`` or triple ``(images, labels,
    training_indices)`` of tensors, a ``ReducedRetainSet`` (anything with ``images``, ``labels``
    and ``is_blended``), a ``Subset``, a ``TensorDataset``, a dataset with ``images``/``labels``
    tensors, any other map-style ``Dataset`` (streamed: see :class:`DataView`; a ``Subset`` of one
    too) or a ``DataLoader``."""
    if isinstance(obj, DataView):
        return obj
    if obj is None:
        raise ValueError(f"{fn}: {name} is required, got None")
    if isinstance(obj, (tuple, list)):
        if len(obj) not in (2, 3):
            raise ValueError(f"{fn}: {name} must be (images, labels) or (images, labels, indices); got a "
                             f"sequence of length {len(obj)}")
        return _tensor_view(name, obj[0], obj[1], obj[2] if len(obj) == 3 else None, False, fn)
    if isinstance(obj, DataLoader):
        return DataView(name, loader=obj)
    if _is_reduced_set(obj):
        return _reduced_view(obj, name, fn)
    if isinstance(obj, Subset):
        base = as_data(obj.dataset, name, fn)
        idx = torch.as_tensor(list(obj.indices), dtype=torch.long)
        if idx.numel() == 0:
            raise ValueError(f"{fn}: {name} is empty")
        train_idx = base.indices[idx] if base.indices is not None else idx
        if base.dataset is not None:  # a Subset of a streamed dataset is streamed too
            return DataView(name, indices=train_idx, reduced=base.reduced, dataset=obj)
        base = base.materialise(fn)
        return _tensor_view(name, base.images[idx.to(base.images.device)], base.labels[idx.to(base.labels.device)],
                            train_idx, base.reduced, fn)
    if isinstance(obj, TensorDataset):
        if len(obj.tensors) < 2:
            raise ValueError(f"{fn}: {name} TensorDataset must hold (images, labels, ...)")
        return _tensor_view(name, obj.tensors[0], obj.tensors[1], None, False, fn)
    if torch.is_tensor(getattr(obj, "images", None)) and torch.is_tensor(getattr(obj, "labels", None)):
        return _tensor_view(name, obj.images, obj.labels, getattr(obj, "indices", None), False, fn)
    if isinstance(obj, Dataset):
        if len(obj) == 0:
            raise ValueError(f"{fn}: {name} is empty")
        return DataView(name, dataset=obj)
    raise TypeError(f"{fn}: {name} must be a pair (images, labels) of tensors, a torch Dataset, a DataLoader or a "
                    f"ReducedRetainSet; got {type(obj).__name__}")


def check_disjoint(retain: DataView, forget: DataView, fn: str) -> None:
    """Raise if training indices are known for both sets and some index is in both."""
    if retain.indices is None or forget.indices is None:
        return
    r = retain.indices[retain.indices >= 0]
    f = forget.indices[forget.indices >= 0]
    both = f[torch.isin(f, r)]
    if both.numel():
        raise ValueError(f"{fn}: retain and forget must be disjoint, but {both.numel()} training indices are in "
                         f"both (e.g. {both[:5].tolist()})")


def check_batch_labels(labels: torch.Tensor, num_classes: int, name: str, fn: str) -> None:
    if labels.numel() and labels.device.type != "meta" and int(labels.max()) >= num_classes:
        raise ValueError(f"{fn}: {name} labels must be in [0, {num_classes}) (the model's output width), "
                         f"got {int(labels.max())}")


def check_label_range(view: DataView, num_classes: int, fn: str) -> None:
    """Raise if a label is ``>= num_classes``; a loader's batches are checked as they stream."""
    view.num_classes = num_classes
    if view.labels is None or view.labels.device.type == "meta":
        return
    top = int(view.labels.max())
    if top >= num_classes:
        raise ValueError(f"{fn}: {view.name} labels must be in [0, {num_classes}) (the model's output width), "
                         f"got {top}")


def model_dtype(model: nn.Module) -> torch.dtype | None:
    """The dtype of ``model``'s first floating parameter (``None`` for a parameterless model)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), None)


def cast_to_model(view: DataView, model: nn.Module) -> None:
    """Serve ``view``'s images in ``model``'s floating dtype (float16/bfloat16/float64 images run on a
    float32 network, cast batch by batch)."""
    view.image_dtype = model_dtype(model)


def model_device(model: nn.Module) -> torch.device:
    """Where ``model``'s parameters live (CPU for a parameterless model)."""
    return module_device(model) or torch.device("cpu")
