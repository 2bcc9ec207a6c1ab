"""Feature extraction of docs/method.md §1.1: embed images with a frozen network in no-grad batches.

:func:`extract_features` takes images as one tensor, as a map-style ``Dataset`` of ``(image, label)``
(streamed through a ``DataLoader``: one batch of images in memory at a time, plus the ``[N, D]``
features) or as a ``DataLoader`` that reads its dataset in order. Under ``torch.distributed`` (a default process
group of more than one rank) the batches are split over the ranks in contiguous runs and the features
all-gathered, so every rank returns the single-process ``[N, D]``. Re-exported by
:mod:`fastblend.grouping`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from . import distributed as dist
from ._checks import plain_number
from ._device import module_device
from .data_adapter import order_error, reads_in_dataset_order, stream_batches

__all__ = ["extract_features"]


def _check_images(images: torch.Tensor, name: str, where: str = "") -> torch.Tensor:
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.dim() != 4:
        raise ValueError(f"{name}: images must be [N, C, H, W] (or [N, H, W]), got shape {tuple(images.shape)}{where}")
    if not images.is_floating_point():
        raise TypeError(f"{name}: images must be a floating-point tensor (normalised pixels), "
                        f"got {images.dtype}{where}")
    return images


def _batch_images(batch: Any, name: str) -> torch.Tensor:
    """The images of one loader batch: the batch itself or its first element (``(images, labels, ...)``)."""
    if isinstance(batch, (tuple, list)) and batch:
        batch = batch[0]
    if not isinstance(batch, torch.Tensor):
        raise TypeError(f"{name}: a Dataset or DataLoader must yield images or (images, labels, ...) tensors, "
                        f"got a batch of {type(batch).__name__}")
    return _check_images(batch, name, " in a batch")


def _source(images: Any, batch_size: int, name: str) -> tuple[str, int]:
    """Check ``images`` and return ``(kind, N)``; ``N`` is an upper bound for a ``DataLoader``."""
    if isinstance(images, torch.Tensor):
        images = _check_images(images, name)
        n = int(images.shape[0])
        kind = "tensor"
    elif isinstance(images, DataLoader):
        if not reads_in_dataset_order(images):
            raise order_error(images, name, "the features would not come back in the data's order")
        try:
            n = len(images.sampler)  # an upper bound (drop_last, a custom batch sampler): trimmed at the end
        except TypeError:
            n = 0  # an iterable dataset without a length: the features grow as they come
        kind = "loader"
    elif isinstance(images, Dataset):
        if not callable(getattr(images, "__len__", None)):
            raise TypeError(f"{name}: a Dataset must be map-style (with __len__); wrap an iterable one in a DataLoader")
        n = len(images)
        kind = "dataset"
    else:
        raise TypeError(f"{name}: images must be a torch.Tensor, a map-style Dataset or a DataLoader, got "
                        f"{type(images).__name__}")
    if n == 0 and kind != "loader":
        raise ValueError(f"{name}: images must hold at least one image, got "
                         f"{'shape ' + str(tuple(images.shape)) if kind == 'tensor' else 'an empty Dataset'}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"{name}: batch_size must be an int >= 1, got {batch_size!r}")
    return kind, n


def _rows(n: int, batch_size: int, shard: bool) -> tuple[int, int]:
    """This rank's rows ``[lo, hi)``: whole batches of the single-process batch grid, in contiguous runs."""
    if not shard:
        return 0, n
    nb = -(-n // batch_size)
    r, p = dist.rank(), dist.world_size()
    return min(n, (r * nb // p) * batch_size), min(n, ((r + 1) * nb // p) * batch_size)


def _gather(out: torch.Tensor) -> torch.Tensor:
    """All ranks' feature rows in rank order, on ``out``'s device (moved for the backend's device)."""
    backend = str(torch.distributed.get_backend())
    wire = out.device
    if "nccl" in backend and not out.is_cuda:
        wire = torch.device("cuda", torch.cuda.current_device())
    elif "nccl" not in backend and out.is_cuda:
        wire = torch.device("cpu")
    return dist.all_gather_rows(out.to(wire)).to(out.device)


def extract_features(images: torch.Tensor | Dataset | DataLoader, extractor: nn.Module | Callable | None = None,
                     batch_size: int = 512, device: torch.device | str | None = None, seed: int = 0,
                     progress: bool | None = None, *, num_workers: int = 0,
                     distributed: bool | None = None) -> torch.Tensor:
    """Embed ``images`` with a frozen network in no-grad batches.

    Args:
        images: ``[N, C, H, W]`` floating-point images (``[N, H, W]`` is read as one channel), on
            any device; or a map-style ``Dataset`` whose items are images or ``(image, label, ...)``
            (e.g. :class:`fastblend.MemmapImages`; read ``batch_size`` items at a time through a
            ``DataLoader``, in index order); or a ``DataLoader`` that reads its dataset in the dataset's
            own order (the default sampler, ``shuffle=False``; see
            :func:`fastblend.data_adapter.reads_in_dataset_order`). Each batch is moved to ``device`` and
            cast to the extractor's floating dtype (float16/bfloat16/float64 images run on the float32
            default network).
        extractor: a module with an ``embed(x)`` method (used; e.g. fastblend's models) or any
            callable mapping ``[B, C, H, W]`` to ``[B, ...]`` features (flattened). ``None``: the
            seeded random ConvNet-3 ``f_g`` of docs/method.md §1.1, ``fastblend.models.random_convnet(C, H,
            seed)`` (1 or 3 channels, square, at least 8 px; 28 or 32 px in docs/method.md), run in
            channels-last memory format. A given extractor is used as is (not moved, not switched to eval mode).
        batch_size: images per forward pass (and per read of a ``Dataset``).
        device: where the forward runs. Default: the extractor's device (its first parameter), or
            the images' device for the default extractor (the CPU for a ``Dataset``/``DataLoader``).
        seed: seed of the default extractor (ignored when ``extractor`` is given).
        progress: show a tqdm progress bar; ``None``: off unless ``FASTBLEND_PROGRESS=1`` (``fastblend._progress``).
        num_workers: processes reading a ``Dataset`` ahead (``DataLoader(num_workers=...)``); batches
            are pinned when ``device`` is CUDA.
        distributed: split the batches over the ranks of the default process group and all-gather
            the features (every rank must call with the same data and extractor). ``None``: when
            :func:`fastblend.distributed.is_distributed`; a ``DataLoader`` is never split. Under a
            process group every rank must make the same call (collective: it communicates whatever
            ``N`` and ``batch_size``, a rank left without a batch included); pass
            ``distributed=False`` to run one on a single rank.

    Returns:
        ``[N, D]`` float32 features on ``device``, identical for the three input forms of the same
        images (the same batches run) and with or without ``distributed``.
    """
    batch_size, seed, num_workers = map(plain_number, (batch_size, seed, num_workers))  # numpy integers too
    name = "extract_features"
    kind, n = _source(images, batch_size, name)
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"{name}: num_workers must be an int >= 0, got {num_workers!r}")
    if distributed is not None and not isinstance(distributed, bool):
        raise TypeError(f"{name}: distributed must be a bool or None, got {type(distributed).__name__}")
    src_device = images.device if kind == "tensor" else torch.device("cpu")
    if extractor is None:
        dev = torch.device(device) if device is not None else src_device
    else:
        if not callable(extractor):
            raise TypeError(f"{name}: extractor must be an nn.Module or a callable, got {type(extractor).__name__}")
        dev = torch.device(device) if device is not None else (module_device(extractor) or src_device)
    if kind == "tensor":
        images = _check_images(images, name)
    shard = (dist.is_distributed() if distributed is None else distributed) and kind != "loader"
    shard = shard and dist.is_distributed()
    lo, hi = _rows(n, batch_size, shard)
    # fewer batches than ranks: some rank embeds nothing and learns the width D from the others
    some_rank_idle = shard and -(-n // batch_size) < dist.world_size()

    def batches() -> Iterator[torch.Tensor]:
        if kind == "tensor":
            for s in range(lo, hi, batch_size):
                yield images[s:min(s + batch_size, hi)]
        else:
            loader = images if kind == "loader" else stream_batches(
                images, torch.arange(lo, hi), batch_size, num_workers, pin_memory=dev.type == "cuda")
            for batch in loader:
                yield _batch_images(batch, name)

    from ._progress import bar as progress_bar

    forward = net_dtype = None
    memory_format = torch.preserve_format
    out: torch.Tensor | None = None
    filled = 0
    with progress_bar(total=(hi - lo) or None, desc=name, unit="img", progress=progress) as bar, \
            torch.inference_mode():
        for raw in batches():
            if forward is None:
                extractor, memory_format = _resolve_extractor(extractor, raw, dev, seed, name)
                forward = extractor.embed if callable(getattr(extractor, "embed", None)) else extractor
                params = extractor.parameters() if isinstance(extractor, nn.Module) else iter(())
                net_dtype = next((p.dtype for p in params if p.is_floating_point()), None)  # images are cast to it
            batch = raw.to(dev, net_dtype, non_blocking=True, memory_format=memory_format)
            emb = forward(batch)
            if not isinstance(emb, torch.Tensor) or emb.shape[0] != batch.shape[0]:
                raise ValueError(f"{name}: the extractor must return a tensor with one row per image, "
                                 f"got {type(emb).__name__} {tuple(getattr(emb, 'shape', ()))}")
            emb = emb.reshape(emb.shape[0], -1)
            if out is None or filled + emb.shape[0] > out.shape[0]:
                # Allocated outside autograd's inference-tensor rules would forbid later in-place use.
                with torch.inference_mode(False):
                    grown = torch.empty(max(hi - lo, 2 * filled + emb.shape[0]), emb.shape[1], dtype=torch.float32,
                                        device=emb.device)
                    if out is not None:
                        grown[:filled].copy_(out[:filled])
                    out = grown
            out[filled:filled + emb.shape[0]].copy_(emb)
            filled += emb.shape[0]
            bar.update(batch.shape[0])
    if some_rank_idle:
        widths = dist.all_gather_objects(None if out is None else int(out.shape[1]))
        if out is None:
            out = torch.empty(0, next(w for w in widths if w is not None), dtype=torch.float32, device=dev)
    if out is None:
        raise ValueError(f"{name}: images must hold at least one image, got a DataLoader that yields none")
    if filled < out.shape[0]:
        out = out[:filled].clone()
    return _gather(out) if shard else out


def _resolve_extractor(extractor, first: torch.Tensor, dev: torch.device, seed: int, name: str):
    """The extractor and memory format for batches shaped like ``first`` (builds the default one)."""
    if extractor is not None:
        return extractor, torch.preserve_format
    _, channels, height, width = first.shape
    # docs/method.md §5 sizes are 28 and 32 px; ConvNet-3's three 2x2 pools work down to 8 px (e.g. digits)
    if channels not in (1, 3) or height != width or height < 8:
        raise ValueError(f"{name}: the default extractor takes 1- or 3-channel square images of at least 8x8 "
                         f"(ConvNet-3; 28x28 and 32x32 in docs/method.md), got {channels}x{height}x{width}; "
                         "pass extractor= for other inputs")
    from .models import random_convnet

    # Channels-last runs the convolutions without layout conversions (oneDNN / cuDNN).
    return random_convnet(channels, height, seed, device=dev).to(memory_format=torch.channels_last), \
        torch.channels_last
