"""Input checks shared by :func:`condense`, :class:`Blender` and ``fastblend.condense_reference``.

Every check raises ``ValueError``/``TypeError`` naming its ``caller``; :func:`resolve_clustering`
also builds the clustering (features + grouping) when the caller passed only ``ipc``.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Sequence

import torch
from torch import nn

from .._checks import as_device, check_has_data, plain_number
from .._device import synchronize
from ..grouping import Clustering

__all__ = ["NORMALIZE_MODES", "as_image_tensors", "check_clustering", "content_keys", "content_order",
           "extract_streamed", "forget_mask", "group_in_content_order", "open_source", "plain_int", "prepare_inputs",
           "resolve_clustering"]

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
    _check_finite(caller, images)
    if labels is None:
        raise TypeError(f"{caller}: labels are required with an images tensor (or pass an (images, labels) "
                        "pair, a Dataset or a DataLoader)")
    return images, _check_labels(caller, labels, images.shape[0])


def _check_finite(caller: str, images: torch.Tensor) -> None:
    """Refuse NaN or inf pixels (they make every blend of their cluster non-finite): one float32 sum per
    row finds candidate rows (a non-finite pixel makes its row's sum non-finite), checked exactly."""
    if images.numel() == 0:
        return
    sums = images.reshape(images.shape[0], -1).sum(1, dtype=torch.float32)
    rows = torch.nonzero(~torch.isfinite(sums)).flatten()
    for row in rows.tolist():  # a sum that overflowed is not a bad pixel: check the row itself
        if not bool(torch.isfinite(images[row]).all()):
            raise ValueError(f"{caller}: images must be finite; row {row} holds NaN or inf")


def _check_source(caller: str, source: object, labels: object) -> tuple[object, torch.Tensor]:
    """A streamed Dataset: a floating ``[C, H, W]`` first image and one label per row."""
    from .source import source_sample

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
    or a ``DataLoader`` (read once, in its own order; a shuffling loader is refused, since forget
    indices must name stable rows). Tensors pass through unchecked (``_check_data`` follows)."""
    if isinstance(data, torch.Tensor):
        return data, labels
    from torch.utils.data import DataLoader, Dataset, RandomSampler

    from ..dataview import as_data

    if labels is not None:
        raise TypeError(f"{caller}: labels must be None when the data is a {type(data).__name__} "
                        "(the labels come from the data)")
    if isinstance(data, DataLoader):
        if isinstance(data.sampler, RandomSampler):
            raise ValueError(f"{caller}: the DataLoader shuffles (shuffle=True), so its rows have no stable "
                             "index for forget; pass a loader with shuffle=False, its dataset, or tensors")
        view = as_data(data, "data", caller).materialise(caller)
        if len(view) != len(data.dataset):
            raise ValueError(f"{caller}: the DataLoader yielded {len(view)} of its dataset's {len(data.dataset)} "
                             "rows (drop_last?); every training row is needed")
    else:
        try:
            view = as_data(data, "data", caller).materialise(caller)
        except TypeError as exc:
            if isinstance(data, (Dataset, tuple, list)):
                raise  # a data form we take, with bad contents: its own message (e.g. uint8 images)
            raise TypeError(f"{caller}: data must be an images tensor with labels, an (images, labels) pair, a "
                            f"Dataset or a DataLoader, got {type(data).__name__}") from exc
    return view.images, view.labels


def open_source(caller: str, data: object, labels: object) -> tuple[object, object]:
    """``(source, labels)``: a map-style Dataset that holds no in-memory image tensor is kept as the
    source (streamed; labels from ``.labels``/``.targets`` or one pass over it); anything else goes
    through :func:`as_image_tensors`."""
    from torch.utils.data import TensorDataset

    from .source import is_dataset_source, source_labels

    if (is_dataset_source(data) and not isinstance(data, TensorDataset)
            and not torch.is_tensor(getattr(data, "images", None))):
        if labels is not None:
            raise TypeError(f"{caller}: labels must be None when the data is a {type(data).__name__} "
                            "(the labels come from the data)")
        return data, (source_labels(data, caller) if len(data) else torch.zeros(0, dtype=torch.int64))
    return as_image_tensors(caller, data, labels)


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


def group_in_content_order(images: torch.Tensor, labels: torch.Tensor, ipc: int, seed: int,
                           features: torch.Tensor | None, feature_fn, keep: str | None = "caller", *,
                           caller: str = "group_in_content_order", distributed: bool | None = None,
                           ) -> tuple[Clustering, object, float, float]:
    """Features (``feature_fn(images in content order)`` unless given) and :func:`fastblend.group` on
    the rows in :func:`content_order`, mapped back to the caller's row order: the same data in any
    row order gives the same clusters. Returns ``(clustering, features, seconds of features,
    seconds of grouping)``; ``keep`` says which features come back: ``"caller"``: ``[N, D]`` in the
    caller's row order (the given ``features`` themselves when they were given), ``"content"``:
    ``(features in content order [N, D], row -> content position [N] int64)`` (no reordered copy),
    ``None``: ``None`` (the features are freed as soon as the clustering exists). ``caller`` names
    the function in errors about the rows; ``distributed`` goes to :func:`fastblend.group` (``False``:
    no collective; ``feature_fn`` gets the same choice from its caller)."""
    from ..grouping import group

    if keep not in ("caller", "content", None):
        raise ValueError(f"group_in_content_order: keep must be 'caller', 'content' or None, got {keep!r}")
    from .source import ReorderedRows, row_keys

    if isinstance(images, torch.Tensor):
        order = content_order(images)
        if images.device.type == "cpu":  # read in content order batch by batch: no reordered copy of the images
            ordered = lambda: ReorderedRows(images, order)  # noqa: E731
        else:
            ordered = lambda: images[order.to(images.device)]  # noqa: E731
    else:  # a Dataset source: keys and features streamed in content order
        order = torch.argsort(row_keys(images, caller=caller), stable=True)
        ordered = lambda: ReorderedRows(images, order)  # noqa: E731
    t0 = time.perf_counter()
    if features is None:
        feats_sorted = feature_fn(ordered())
    else:
        feats_sorted = features[order.to(features.device)]
    synchronize(feats_sorted.device)
    t1 = time.perf_counter()
    sorted_clustering = group(feats_sorted, labels.cpu()[order], ipc, seed=seed, distributed=distributed)
    t2 = time.perf_counter()
    clustering = sorted_clustering
    assignment = torch.empty_like(clustering.assignment)
    assignment[order] = clustering.assignment
    clustering.assignment, clustering.perm = assignment, order[clustering.perm]
    if keep is None:
        return clustering, None, t1 - t0, t2 - t1
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel())
    if keep == "content":
        return clustering, (feats_sorted, inverse), t1 - t0, t2 - t1
    if features is not None:  # a permutation and its inverse: the caller's own rows, bit for bit
        return clustering, features, t1 - t0, t2 - t1
    return clustering, feats_sorted[inverse.to(feats_sorted.device)], t1 - t0, t2 - t1


def resolve_clustering(caller: str, images: torch.Tensor, labels: torch.Tensor, ipc: object,
                       clustering: Clustering | None, seed: int, device: torch.device,
                       progress: bool | None, extractor: nn.Module | None = None, keep: str | None = "caller",
                       distributed: bool | None = None) -> tuple[Clustering, float, float, object]:
    """The caller's clustering, or extract features + group in :func:`content_order` (invariant to
    the row order; seconds of both returned, and the features when they were extracted here, as
    :func:`group_in_content_order` ``keep`` says: only what the caller uses is kept). ``distributed``
    goes to :func:`fastblend.extract_features` and :func:`fastblend.group` (``False``: no collective)."""
    if clustering is not None:
        return check_clustering(caller, clustering, labels, ipc), 0.0, 0.0, None
    if ipc is None:
        raise ValueError(f"{caller}: pass ipc (clusters per class) or a precomputed clustering")
    ipc_arg = ipc
    ipc = _as_int(ipc, 1)
    if ipc is None:
        raise ValueError(f"{caller}: ipc must be a positive int, got {ipc_arg!r}")
    synchronize(device)
    clustering, feats, t_feat, t_group = group_in_content_order(
        images, labels, ipc, seed, None,
        lambda x: extract_streamed(x, extractor=extractor, device=device, seed=seed, progress=progress,
                                   distributed=distributed), keep=keep, caller=caller, distributed=distributed)
    return check_clustering(caller, clustering, labels, ipc), t_feat, t_group, feats


def extract_streamed(data: object, extractor: nn.Module | None, device: torch.device, seed: int,
                     progress: bool | None, batch_size: int = 512, distributed: bool | None = None) -> torch.Tensor:
    """``extract_features`` of a tensor or a Dataset of ``(image, label)`` rows: ``[N, D]`` float32
    (a Dataset is read ``batch_size`` rows at a time; the same batches, so the same features, as the
    tensor path; ``distributed`` as in :func:`fastblend.extract_features`)."""
    from ..features import extract_features

    return extract_features(data, extractor=extractor, batch_size=batch_size, device=device, seed=seed,
                            progress=progress, distributed=distributed)


def prepare_inputs(caller: str, images, labels, forget, iterations, lr, normalize, chunk_size, device,
                   member_chunk: object = None):
    """Check the data (a tensor, or a Dataset source with its labels), the Blend settings and
    ``forget``; return ``(images, labels [N] int64, forget mask [N] bool on the CPU, device)``
    (``device`` defaults to the images' device, the CPU for a Dataset)."""
    from .source import is_dataset_source

    if is_dataset_source(images):
        images, labels = _check_source(caller, images, labels)
    else:
        images, labels = _check_data(caller, images, labels)
    _check_settings(caller, iterations, lr, normalize, chunk_size)
    from .chunked import check_member_chunk

    check_member_chunk(caller, member_chunk)
    n = labels.shape[0]
    mask = forget_mask(caller, forget, n)
    if bool(mask.all()):
        raise ValueError(f"{caller}: forget covers all {n} images; nothing would be retained")
    home = images.device if isinstance(images, torch.Tensor) else torch.device("cpu")
    dev = as_device(device, caller) or home
    return images, labels, mask, dev
