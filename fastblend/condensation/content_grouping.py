"""The grouping step of the condensing engine (docs/method.md §1.1): features, then per-class k-means, on
the rows in an order fixed by their content (:func:`fastblend.condensation.source.content_order`), so
the same data in any row order gives the same clusters. :meth:`fastblend.BlendIndex.build` calls it.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from .._device import synchronize
from ..features import extract_features
from ..grouping import Clustering, check_ipc, group
from .checks import check_clustering
from .source import ReorderedRows, content_order, row_keys

__all__ = ["extract_streamed", "group_in_content_order", "resolve_clustering"]


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
    if keep not in ("caller", "content", None):
        raise ValueError(f"group_in_content_order: keep must be 'caller', 'content' or None, got {keep!r}")
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
    ipc = check_ipc(caller, ipc)
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
    return extract_features(data, extractor=extractor, batch_size=batch_size, device=device, seed=seed,
                            progress=progress, distributed=distributed)
