"""Input checks shared by :meth:`BlendIndex.build`, :func:`condense` and the research-code oracle
(``fastblend.condensation.reference``).

Every check raises ``ValueError``/``TypeError`` naming its ``caller``, and only checks (and adapts the
data forms): the features and the grouping are :mod:`.content_grouping`'s.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from .._checks import as_device, check_finite_images, check_has_data, plain_number
from ..data_adapter import indexed_rows, is_streamed_dataset
from ..grouping import Clustering, check_ipc
from .source import is_dataset_source, source_labels, source_sample

__all__ = ["NORMALIZE_MODES", "as_image_tensors", "check_clustering", "check_ipc", "check_member_chunk", "forget_mask",
           "open_source", "plain_int", "prepare_inputs"]

NORMALIZE_MODES = ("sum", "softmax")


def _check_data(caller: str, images: object, labels: object) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{caller}: images must be a torch.Tensor [N, C, H, W], got {type(images).__name__}")
    if not images.is_floating_point():
        raise TypeError(f"{caller}: images must be a floating tensor (normalised pixels), got {images.dtype}")
    if images.dim() != 4:
        raise ValueError(f"{caller}: images must have shape [N, C, H, W], got {list(images.shape)}")
    check_has_data(caller, "images", images)
    check_has_data(caller, "labels", labels)
    check_finite_images(caller, "", images)  # a NaN or inf pixel makes every blend of its cluster non-finite
    if labels is None:
        raise TypeError(f"{caller}: labels are required with an images tensor (or pass an (images, labels) "
                        "pair, a Dataset or a DataLoader)")
    return images, _check_labels(caller, labels, images.shape[0])


def _check_source(caller: str, source: object, labels: object) -> tuple[object, torch.Tensor]:
    """A streamed Dataset: a floating ``[C, H, W]`` first image and one label per row."""
    if len(source) == 0:
        raise ValueError(f"{caller}: images must hold at least one image (the Dataset is empty)")
    sample = source_sample(source, caller)
    if sample.dim() != 3:
        raise ValueError(f"{caller}: dataset images must have shape [C, H, W], got {list(sample.shape)}")
    return source, _check_labels(caller, labels, len(source))


def _check_labels(caller: str, labels: object, n: int) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor):
        labels = torch.as_tensor(labels)
    if labels.dim() != 1 or labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(f"{caller}: labels must be a 1-d integer tensor [N], got {labels.dtype} "
                        f"of shape {list(labels.shape)}")
    if labels.shape[0] != n:
        raise ValueError(f"{caller}: images and labels must have the same length, got {n} "
                         f"images and {labels.shape[0]} labels")
    if n == 0:
        raise ValueError(f"{caller}: images must hold at least one image")
    labels = labels.to(torch.int64)
    if int(labels.min()) < 0:
        raise ValueError(f"{caller}: labels must be >= 0, got {int(labels.min())}")
    return labels


def forget_mask(caller: str, forget: object, n: int) -> torch.Tensor:
    """``[n]`` bool CPU mask from indices or a mask; duplicates / out-of-range raise."""
    if isinstance(forget, torch.Tensor):
        f = forget.detach().cpu()
    else:
        try:
            f = torch.as_tensor(list(forget) if isinstance(forget, (range, Sequence)) else forget)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(f"{caller}: forget must be indices or a boolean mask, got {type(forget).__name__}"
                            ) from exc
    if f.dtype == torch.bool:
        if f.shape != (n,):
            raise ValueError(f"{caller}: a boolean forget mask must have shape [{n}], got {list(f.shape)}")
        return f.clone()
    if f.numel() == 0:
        return torch.zeros(n, dtype=torch.bool)
    if f.is_floating_point() or f.is_complex():
        raise TypeError(f"{caller}: forget indices must be integers, got {f.dtype}")
    if f.dim() != 1:
        raise ValueError(f"{caller}: forget indices must be 1-d, got shape {list(f.shape)}")
    f = f.to(torch.int64)
    lo, hi = int(f.min()), int(f.max())
    if lo < 0 or hi >= n:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{caller}: forget indices must be in [0, {n}), got {bad}")
    mask = torch.zeros(n, dtype=torch.bool)
    mask[f] = True
    if int(mask.sum()) != f.numel():
        uniq, counts = torch.unique(f, return_counts=True)
        raise ValueError(f"{caller}: forget indices must be distinct; index {int(uniq[counts > 1][0])} "
                         f"appears {int(counts.max())} times")
    return mask


def _as_int(value: object, minimum: int) -> int | None:
    """``int(value)`` for an integer (Python or numpy, not a bool) ``>= minimum``; ``None`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        return None
    return int(value)


def plain_int(value: object) -> object:
    """``int(value)`` for an integer of any kind (numpy's too, not a bool), ``float(value)`` for a numpy
    float (:func:`fastblend._checks.plain_number`); ``value`` itself otherwise (the checks then name it)."""
    value = plain_number(value)
    return int(value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value


def _check_settings(caller: str, iterations: object, lr: object, normalize: object,
                    chunk_size: object) -> None:
    if _as_int(iterations, 0) is None:
        raise ValueError(f"{caller}: iterations must be an int >= 0, got {iterations!r}")
    if isinstance(lr, str):
        if lr != "reference":
            raise ValueError(f"{caller}: lr must be 'reference' or a positive number, got {lr!r}")
    elif isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"{caller}: lr must be 'reference' or a positive number, got {lr!r}")
    if normalize not in NORMALIZE_MODES:
        raise ValueError(f"{caller}: normalize must be one of {NORMALIZE_MODES}, got {normalize!r}")
    if chunk_size is not None and _as_int(chunk_size, 1) is None:
        raise ValueError(f"{caller}: chunk_size must be None or an int >= 1, got {chunk_size!r}")


def check_member_chunk(caller: str, member_chunk: object) -> int | None:
    """``member_chunk`` must be ``None`` or an integer >= 1 (numpy integers too, not a bool); returned
    as a Python int."""
    if member_chunk is not None and (isinstance(member_chunk, bool) or not isinstance(member_chunk, numbers.Integral)
                                     or member_chunk < 1):
        raise ValueError(f"{caller}: member_chunk must be None or an int >= 1 (member images held at once), "
                         f"got {member_chunk!r}")
    return None if member_chunk is None else int(member_chunk)


def check_clustering(caller: str, clustering: object, labels: torch.Tensor, ipc: object) -> Clustering:
    if not isinstance(clustering, Clustering):
        raise TypeError(f"{caller}: clustering must be a fastblend Clustering, got {type(clustering).__name__}")
    n = labels.shape[0]
    if ipc is not None and ipc != clustering.ipc:
        raise ValueError(f"{caller}: ipc={ipc!r} disagrees with the clustering's ipc={clustering.ipc}; "
                         "pass one of them (or matching values)")
    if clustering.assignment.shape != (n,) or clustering.perm.shape != (n,):
        raise ValueError(f"{caller}: clustering covers {clustering.assignment.numel()} samples but there are "
                         f"{n} images")
    try:
        clustering.validate()  # CSR layout, id ranges and perm/indptr/assignment agreement
    except ValueError as exc:
        raise ValueError(f"{caller}: {exc}") from exc
    if not torch.equal(clustering.cluster_class.cpu()[clustering.assignment.cpu()], labels.cpu()):
        raise ValueError(f"{caller}: clustering does not match labels (some image's cluster belongs to "
                         "another class); was it built for these images?")
    return clustering


def as_image_tensors(caller: str, data: object, labels: object) -> tuple[object, object]:
    """``(images, labels)`` from a tensor and its labels, an ``(images, labels)`` pair, a ``Dataset``
    or a ``DataLoader`` (read once; :func:`fastblend.data_adapter.indexed_rows` refuses one whose order
    is not its dataset's, since forget indices must name stable rows). Tensors pass through unchecked
    (``_check_data`` follows)."""
    if isinstance(data, torch.Tensor):
        return data, labels
    if labels is not None:
        raise TypeError(f"{caller}: labels must be None when the data is a {type(data).__name__} "
                        "(the labels come from the data)")
    try:
        return indexed_rows(data, caller)
    except TypeError as exc:
        if isinstance(data, (Dataset, DataLoader, tuple, list)):
            raise  # a data form we take, with bad contents: its own message (e.g. uint8 images)
        raise TypeError(f"{caller}: data must be an images tensor with labels, an (images, labels) pair, a "
                        f"Dataset or a DataLoader, got {type(data).__name__}") from exc


def open_source(caller: str, data: object, labels: object) -> tuple[object, object]:
    """``(source, labels)``: a map-style Dataset that holds no in-memory image tensor is kept as the
    source (streamed; labels from ``.labels``/``.targets`` or one pass over it); anything else goes
    through :func:`as_image_tensors`."""
    if is_streamed_dataset(data):
        if labels is not None:
            raise TypeError(f"{caller}: labels must be None when the data is a {type(data).__name__} "
                            "(the labels come from the data)")
        return data, (source_labels(data, caller) if len(data) else torch.zeros(0, dtype=torch.int64))
    return as_image_tensors(caller, data, labels)


def prepare_inputs(caller: str, images, labels, forget, iterations, lr, normalize, chunk_size, device,
                   member_chunk: object = None):
    """Check the data (a tensor, or a Dataset source with its labels), the Blend settings and
    ``forget``; return ``(images, labels [N] int64, forget mask [N] bool on the CPU, device)``
    (``device`` defaults to the images' device, the CPU for a Dataset)."""
    if is_dataset_source(images):
        images, labels = _check_source(caller, images, labels)
    else:
        images, labels = _check_data(caller, images, labels)
    _check_settings(caller, iterations, lr, normalize, chunk_size)
    check_member_chunk(caller, member_chunk)
    n = labels.shape[0]
    mask = forget_mask(caller, forget, n)
    if bool(mask.all()):
        raise ValueError(f"{caller}: forget covers all {n} images; nothing would be retained")
    home = images.device if isinstance(images, torch.Tensor) else torch.device("cpu")
    dev = as_device(device, caller) or home
    return images, labels, mask, dev
