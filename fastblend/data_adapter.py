"""The one data adapter: every data argument of the library -> what its engines read.

Tensors, ``(images, labels)`` pairs, a ``ReducedRetainSet``, ``Subset``/``TensorDataset``/any map-style
``Dataset`` (a :class:`fastblend.memmap.MemmapImages` too) and ``DataLoader``\\ s come in here and leave
as one :class:`DataView` (:func:`as_data`), as in-memory tensors (:func:`as_tensors`), or, where forget
indices name rows, as the rows in the dataset's own order (:func:`indexed_rows`). One predicate per
question: :func:`is_streamed_dataset` (read in batches, never whole?), :func:`reads_in_dataset_order`
(does a loader yield its dataset's rows in the dataset's order?).

A :class:`DataView` serves its seeded batches on a device (:class:`CyclicBatches` endlessly). A
map-style ``Dataset`` that is not already tensors is streamed, never read whole: each pass draws the
same seeded permutation as in-memory data and reads its batches through a ``DataLoader``
(:func:`stream_batches`, :func:`fetch_batch`), so the batches equal those of the same data held as
tensors. A ``DataLoader`` is streamed as is (its own order, shuffling and transforms), except one over
an ``IterableDataset``, which has no length to stream by and is read once, into memory. Also the
checks on data arguments (disjoint retain/forget, labels within the model's output width) and
:func:`model_device`. Imports nothing else from fastblend but ``_device`` and ``memmap``, so every
engine builds on it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
    Subset,
    TensorDataset,
    default_collate,
)

from ._checks import check_has_data, plain_number, user_stacklevel
from ._device import module_device
from .memmap import MemmapImages


def _is_reduced_set(obj: Any) -> bool:
    """A ``ReducedRetainSet`` (duck-typed: this layer does not import ``fastblend.condensation``): ``labels``
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
        self.first_batch_rows: int | None = None  # set by probe on a loader: its first batch's rows

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
        """The same data in memory (iterates a loader once, with its collate function and its dataset's
        transforms). A loader that only shuffles its map-style dataset (torch's ``RandomSampler`` over every item,
        without replacement) is read in the dataset's order: the rows are the same set, and a rerun with the same
        seed sees them in the same order (the shuffled order would change with the global RNG)."""
        if self.images is not None:
            return self
        xs, ys = [], []
        source = self.loader if self.dataset is None else self._stream(torch.arange(len(self)), 512, False)
        if self.dataset is None and _only_shuffles(self.loader):
            loader = self.loader
            source = DataLoader(loader.dataset, batch_size=loader.batch_size, shuffle=False,
                                num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                                pin_memory=loader.pin_memory, worker_init_fn=loader.worker_init_fn,
                                generator=loader.generator, timeout=loader.timeout,  # the workers' seeds: the loader's
                                multiprocessing_context=loader.multiprocessing_context if loader.num_workers else None)
        for batch in source:
            x, y = _unpack_batch(batch, self.name, fn)
            xs.append(x)
            ys.append(y)
        if not xs:
            if self.dataset is None and getattr(self.loader, "drop_last", False) and _has_rows(self.loader.dataset):
                raise ValueError(f"{fn}: {self.name} is empty: its DataLoader drops its last partial batch "
                                 f"(drop_last=True) and its batch size {self.loader.batch_size} is larger than its "
                                 f"{len(self.loader.dataset)} rows; pass drop_last=False or a smaller batch")
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
                self.first_batch_rows = int(x.shape[0])  # a loader's batch size where it declares none
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


def _check_pair(x: torch.Tensor, y: torch.Tensor, name: str, fn: str, where: str = "") -> None:
    """The checks every ``(images, labels)`` pair meets, in memory or one loader batch (``where``):
    floating images, 1-D integer labels >= 0, one per image."""
    if not x.is_floating_point():
        raise TypeError(f"{fn}: {name} images must be a floating-point tensor, got {x.dtype}{where}")
    if y.dim() == 0 and where and not (y.is_floating_point() or y.is_complex() or y.dtype == torch.bool):
        raise ValueError(f"{fn}: {name}'s DataLoader yields one image and one scalar label at a time, not "
                         "batches (batch_size=None); give it a batch_size, or pass its dataset")
    if y.dim() != 1 or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"{fn}: {name} labels must be a 1-D integer tensor, got {y.dtype} of shape "
                        f"{tuple(y.shape)}{where}" + (" (float labels would be truncated)"
                                                      if y.is_floating_point() else ""))
    if x.dim() < 1 or x.shape[0] != y.shape[0]:
        raise ValueError(f"{fn}: {name}{where} has {x.shape[0] if x.dim() else 0} images but {y.shape[0]} labels")
    if y.numel() and y.device.type != "meta" and int(y.min()) < 0:
        raise ValueError(f"{fn}: {name} labels must be >= 0, got {int(y.min())}")


def declared_batch_size(loader: DataLoader) -> int | None:
    """The batch size a ``DataLoader`` declares: its own, else its batch sampler's; ``None`` when it declares none
    (a batch sampler without one, pre-batched items)."""
    batch = plain_number(loader.batch_size if loader.batch_size is not None
                         else getattr(loader.batch_sampler, "batch_size", None))
    return batch if isinstance(batch, int) and not isinstance(batch, bool) else None


def _unpack_batch(batch: Any, name: str, fn: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)`` of one loader batch, held to the checks of in-memory data."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 2 and torch.is_tensor(batch[0]) and torch.is_tensor(batch[1]):
        x, y = batch[0], batch[1]
        _check_pair(x, y, name, fn, " in a batch")
        return x, y.long()
    raise TypeError(f"{fn}: {name} batches must be (images, labels, ...) tuples of tensors; got {type(batch).__name__}")


def _tensor_view(name: str, images: Any, labels: Any, indices: Any, reduced: bool, fn: str) -> DataView:
    if not torch.is_tensor(images) or not torch.is_tensor(labels):
        raise TypeError(f"{fn}: {name}: images and labels must be tensors; got {type(images).__name__} and "
                        f"{type(labels).__name__}")
    _check_pair(images, labels, name, fn)
    if images.device != labels.device:
        raise ValueError(f"{fn}: {name} images are on {images.device} but labels on {labels.device}; "
                         "expected one device")
    check_has_data(fn, f"{name} images and labels", images, labels)
    if labels.shape[0] == 0:
        raise ValueError(f"{fn}: {name} is empty")
    if indices is not None:
        indices = torch.as_tensor(indices).reshape(-1).long().cpu()
        if indices.shape[0] != labels.shape[0]:
            raise ValueError(f"{fn}: {name} indices have length {indices.shape[0]}, expected {labels.shape[0]}")
    return DataView(name, images, labels.long(), None, indices, reduced)


def is_streamed_dataset(obj: Any) -> bool:
    """Whether ``obj`` is a map-style ``Dataset`` (with a length) that holds no in-memory image tensor,
    e.g. a :class:`fastblend.MemmapImages`: read in batches, never whole. A ``TensorDataset`` and a
    dataset with an ``images`` tensor are in memory already; an ``IterableDataset`` has no rows to index."""
    return (isinstance(obj, Dataset) and not isinstance(obj, (TensorDataset, IterableDataset))
            and callable(getattr(obj, "__len__", None)) and not torch.is_tensor(getattr(obj, "images", None)))


def _has_rows(data: Any) -> bool:
    """Whether ``data`` has a length above 0 (``False`` where it has none)."""
    try:
        return len(data) > 0
    except TypeError:
        return False


def _only_shuffles(loader: DataLoader) -> bool:
    """Whether ``loader`` reads every item of its map-style dataset once in a random order: torch's
    ``RandomSampler`` without replacement over the whole dataset, in torch's ``BatchSampler`` (``shuffle=True``,
    ``drop_last=False``)."""
    if isinstance(loader.dataset, IterableDataset) or loader.batch_size is None or loader.batch_sampler is None \
            or type(loader.batch_sampler) is not BatchSampler or loader.batch_sampler.drop_last:
        return False  # drop_last drops a random few (the loader's own reading decides which); a batch sampler of the
        # caller's (batch_size None) is the caller's
    sampler = loader.batch_sampler.sampler
    return (type(sampler) is RandomSampler and not sampler.replacement
            and sampler.num_samples == len(loader.dataset))


def warn_partial_read(loader: DataLoader | None, rows: int, name: str, fn: str) -> None:
    """Warn when a ``loader`` over a sized map-style dataset (batched by the loader) yielded ``rows`` rows, not one
    per item (a ``drop_last`` or a sampler of its own): for the forget set a row left out is neither forgotten nor
    retained."""
    if loader is None or isinstance(loader.dataset, IterableDataset) or loader.batch_sampler is None:
        return  # an iterable dataset has no size to compare with; a pre-batched one (batch_size=None) holds
        # several rows an item
    try:
        size = len(loader.dataset)
    except TypeError:
        return
    sampler = getattr(loader.batch_sampler, "sampler", None)
    if rows != size:
        warnings.warn(f"{fn}: the {name} DataLoader yielded {rows} rows for its dataset's {size} items (drop_last or "
                      f"its sampler): what it yielded is treated as the {name} set; pass the whole set once (a "
                      "DataLoader with shuffle=False, the dataset, or tensors) to use every row", UserWarning,
                      stacklevel=user_stacklevel())
    elif getattr(sampler, "replacement", False) is True:  # RandomSampler(replacement=True), WeightedRandomSampler
        warnings.warn(f"{fn}: the {name} DataLoader's {type(sampler).__name__} draws with replacement: its {rows} "
                      f"rows repeat some of the dataset's {size} items and miss others, and what it yielded is "
                      f"treated as the {name} set; pass the whole set once (a DataLoader with shuffle=False, the "
                      "dataset, or tensors) to use every row once", UserWarning, stacklevel=user_stacklevel())


def reads_in_dataset_order(loader: DataLoader) -> bool:
    """Whether ``loader`` yields its dataset's items in the dataset's own order, each at most once: a
    map-style dataset read by torch's ``SequentialSampler`` (directly with ``batch_size=None``, or inside
    torch's ``BatchSampler``), or an ``IterableDataset`` read by one process. Any other sampler (random,
    subset, weighted, distributed, a custom one) and a custom batch sampler answer ``False``: their order
    is theirs, not the dataset's."""
    if isinstance(loader.dataset, IterableDataset):
        return loader.num_workers == 0  # several workers interleave (or repeat) the dataset's order
    sampler = loader.sampler
    if loader.batch_sampler is not None:
        if type(loader.batch_sampler) is not BatchSampler:
            return False
        sampler = loader.batch_sampler.sampler
    return type(sampler) is SequentialSampler


def materialises_in_order(loader: DataLoader) -> bool:
    """Whether :meth:`DataView.materialise` reads ``loader`` into memory in its dataset's own order, each item once:
    :func:`reads_in_dataset_order`, or a loader that only shuffles (read in the dataset's order instead)."""
    return reads_in_dataset_order(loader) or _only_shuffles(loader)


def order_error(loader: DataLoader, caller: str, why: str) -> ValueError:
    """The ``ValueError`` for a loader that :func:`reads_in_dataset_order` refuses: names its sampler and ``why``."""
    used = loader.batch_sampler if loader.batch_sampler is not None else loader.sampler
    inner = getattr(used, "sampler", None)
    named = type(used).__name__ + (f"({type(inner).__name__})" if inner is not None else "")
    return ValueError(f"{caller}: the DataLoader reads its dataset through {named}, not in the dataset's own "
                      f"order, so {why}; pass a DataLoader with the default sampler (shuffle=False), its "
                      "dataset, or tensors")


def read_forget(data: Any, fn: str, why_ordered: str | None = None) -> DataView:
    """The forget set in memory (:meth:`DataView.materialise`; ``data`` in any form :func:`as_data` takes). A
    ``DataLoader`` that does not read each item of its dataset once, in the dataset's order or only shuffled
    (:func:`materialises_in_order`), is refused when ``why_ordered`` says why its rows must line up with something
    else; one that yields other than one row per item, or draws with replacement, warns
    (:func:`warn_partial_read`): a row left out is neither forgotten nor retained."""
    if why_ordered is not None and isinstance(data, DataLoader) and not materialises_in_order(data):
        raise order_error(data, fn, why_ordered)  # before as_data, which reads an IterableDataset's loader at once
    view = as_data(data, "forget", fn)
    loader = view.loader if view.images is None and view.dataset is None else None
    if why_ordered is not None and loader is not None and not materialises_in_order(loader):
        raise order_error(loader, fn, why_ordered)
    out = view.materialise(fn)
    warn_partial_read(loader, len(out), "forget", fn)
    return out


def as_tensors(obj: Any, name: str, fn: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images [N, ...] floating, labels [N] int64)`` of any data argument :func:`as_data` takes, read
    into memory once (a ``DataLoader`` with its own sampler and transforms; one that only shuffles is read in its
    dataset's order, :meth:`DataView.materialise`). A forget loader that yields fewer rows than its dataset holds
    warns (:func:`warn_partial_read`)."""
    view = read_forget(obj, fn) if name == "forget" else as_data(obj, name, fn).materialise(fn)
    return view.images, view.labels


def indexed_rows(data: Any, caller: str, name: str = "data") -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)`` in memory, row ``i`` being the dataset's row ``i``: what forget indices name.

    A ``DataLoader`` must read every row of a map-style dataset in the dataset's own order
    (:func:`reads_in_dataset_order`); a pre-batched one (``batch_size=None``, each item a batch) gives
    its items' rows one after another. Refused with a ``ValueError``: any other order (a shuffling or
    subset sampler, a custom batch sampler), a loader that skips rows (``drop_last``, a shorter
    sampler), and a loader over an ``IterableDataset`` (its rows have no index for forget to name).
    Any other data argument goes through :func:`as_tensors`."""
    loader = isinstance(data, DataLoader)
    if isinstance(data.dataset if loader else data, IterableDataset):
        raise ValueError(f"{caller}: {name} is {'a DataLoader over ' if loader else ''}an "
                         "IterableDataset, whose rows have no index for forget indices to name; pass a map-style "
                         "Dataset (or a DataLoader over one), or tensors")
    if not loader:
        return as_tensors(data, name, caller)
    if not reads_in_dataset_order(data):
        raise order_error(data, caller, "forget indices would name other rows than the dataset's")
    n = len(data.dataset)
    if data.batch_size is None and len(data.sampler) != n:
        raise ValueError(f"{caller}: the DataLoader reads {len(data.sampler)} of its dataset's {n} items; every "
                         "training row is needed")
    view = DataView(name, loader=data).materialise(caller)
    if data.batch_size is not None and len(view) != n:
        raise ValueError(f"{caller}: the DataLoader yielded {len(view)} of its dataset's {n} rows (drop_last?); "
                         "every training row is needed")
    return view.images, view.labels


def as_data(obj: Any, name: str, fn: str) -> DataView:
    """Normalise a data argument: a pair ``(images, labels)`` or triple ``(images, labels,
    training_indices)`` of tensors, a ``ReducedRetainSet`` (anything with ``images``, ``labels``
    and ``is_blended``), a ``Subset``, a ``TensorDataset``, a dataset with ``images``/``labels``
    tensors, any other map-style ``Dataset`` (streamed: see :class:`DataView`; a ``Subset`` of one
    too) or a ``DataLoader`` (streamed as is; one over an ``IterableDataset`` is read once, into memory)."""
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
        if isinstance(obj.dataset, IterableDataset):  # no length to stream by: read once, in its own order
            return DataView(name, loader=obj).materialise(fn)
        # a loader over a Blend-reduced set is one: the base methods warn about it and info says so
        return DataView(name, loader=obj, reduced=_is_reduced_set(obj.dataset))
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
    if is_streamed_dataset(obj):
        if len(obj) == 0:
            raise ValueError(f"{fn}: {name} is empty")
        return DataView(name, dataset=obj)
    if isinstance(obj, IterableDataset):
        raise TypeError(f"{fn}: {name} is an IterableDataset; pass a DataLoader over it (read once, into memory)")
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
    if view.labels is not None:
        check_batch_labels(view.labels, num_classes, view.name, fn)


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
