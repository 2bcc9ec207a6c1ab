"""The :func:`condense` entry point: one forget request in, a :class:`ReducedRetainSet` out.

Also the round core (split, matcher, Blend, row assembly) that :class:`fastblend.condense.Blender`
shares, and the small public helpers :func:`blend_lr` and :func:`matcher_seed`.
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from .._device import synchronize
from ..distributed import is_distributed, world_size
from ..grouping import Clustering
from ..ops._dispatch import backend_for
from .blend import BlendResult, check_matcher, matcher_dtype
from .checks import open_source, plain_int, prepare_inputs, resolve_clustering
from .chunked import blend_chunked, blend_sharded
from .reduced import ReducedRetainSet
from .source import read_rows, source_sample
from .split import Split, split_clusters

__all__ = ["assemble_reduced", "blend_lr", "condense", "condense_core", "make_matcher", "matcher_seed"]

# lr(ipc) = a·ipc³ + b·ipc² + c·ipc + d, docs/method.md §1.3 (≈1.0 at ipc 2, 0.166 at 10, 100 at 100, 9999 at 1000)
_LR_COEFFS = (-2.397e-6, 0.01265, -0.2558, 1.461)


def blend_lr(ipc: int) -> float:
    """The reference Blend learning rate ``−2.397e−6·ipc³ + 0.01265·ipc² − 0.2558·ipc + 1.461``.

    The cubic is positive for ``1 <= ipc <= 5277``; beyond that it turns negative and a
    ``ValueError`` asks for an explicit ``lr``.
    """
    if isinstance(ipc, bool) or not isinstance(ipc, int) or ipc < 1:
        raise ValueError(f"blend_lr: ipc must be a positive int, got {ipc!r}")
    a, b, c, d = _LR_COEFFS
    lr = ((a * ipc + b) * ipc + c) * ipc + d
    if lr <= 0:
        raise ValueError(f"blend_lr: the reference formula gives lr = {lr:.4g} <= 0 at ipc {ipc}; "
                         "pass lr=<number> explicitly")
    return lr


def matcher_seed(seed: int, round_index: int = 0) -> int:
    """Seed of the Blend matcher ``f_m`` for a condensation seeded with ``seed``.

    Always differs from ``seed`` itself (the grouping extractor's seed), so ``f_m`` and ``f_g`` are
    independent networks; ``round_index`` gives each multi-round re-blend a fresh matcher.
    """
    return (int(seed) * 1_000_003 + 7_919 * (int(round_index) + 1)) % (2**63)


def make_matcher(caller: str, matcher: nn.Module | None, images: torch.Tensor, seed: int, round_index: int,
                 device: torch.device) -> tuple[nn.Module, int | None]:
    """``(the caller's matcher, None)`` after checking it is a module on ``device``, or ``(a fresh random
    ConvNet-3 seeded with matcher_seed(seed, round_index), that seed)``."""
    if matcher is not None:
        if not isinstance(matcher, nn.Module):
            raise TypeError(f"{caller}: matcher must be a torch.nn.Module or None, got {type(matcher).__name__}")
        devices = {p.device for p in matcher.parameters()}
        if devices and devices != {device}:
            raise ValueError(f"{caller}: matcher parameters are on {sorted(map(str, devices))} but the Blend "
                             f"runs on {device}; move it or pass device=")
        return matcher, None
    from ..models import random_convnet

    mseed = matcher_seed(seed, round_index)
    return random_convnet(images.shape[1], images.shape[2], seed=mseed, device=device), mseed


def condense_core(caller: str, images: object, labels: torch.Tensor, forget: torch.Tensor,
                  clustering: Clustering, *, iterations: int, lr: object, normalize: str,
                  matcher: nn.Module | None, seed: int, round_index: int, device: torch.device,
                  chunk_size: int | None, progress: bool | None, backend: str,
                  timings: dict, features: torch.Tensor | None = None,
                  net: nn.Module | None = None, amp: bool = False, member_chunk: int | None = None,
                  distributed: bool = True, feature_rows: torch.Tensor | None = None,
                  ) -> tuple[ReducedRetainSet, Split, BlendResult]:
    """One condensation of checked inputs for the ``[N]`` bool ``forget`` mask: split, matcher, Blend,
    rows. ``images`` is the source (a tensor or a Dataset, read ``member_chunk`` members at a time);
    ``net`` is the shared grouping network (``condense(share_network=True)``), ``features`` its
    embeddings, row ``feature_rows[i]`` (default ``i``) for training image ``i``; ``timings`` holds
    the grouping's seconds; ``distributed``: shard the clusters over the ranks of a process group.
    Returns the reduced set, the split and the raw Blend result."""
    lr_value = blend_lr(clustering.ipc) if lr == "reference" else float(lr)
    t0 = time.perf_counter()
    sp = split_clusters(clustering, forget)
    t1 = time.perf_counter()

    sample = source_sample(images, caller)
    shared_network = net is not None  # only condense(share_network=True) hands its network in
    if net is None:
        net, mseed = make_matcher(caller, matcher, sample[None], seed, round_index, device)
    else:
        mseed = matcher_seed(seed, round_index) if matcher is None else None
    dtype = matcher_dtype(net, sample.dtype)
    synchronize(device)
    t2 = time.perf_counter()
    members = sp.members

    def fetch(pos: torch.Tensor) -> torch.Tensor:
        return read_rows(images, members[pos], caller).to(device=device, dtype=dtype)

    if members.numel():
        check_matcher(net, fetch(torch.arange(min(4, members.numel()))), caller)
    member_features = None
    if features is not None:
        def member_features(pos: torch.Tensor) -> torch.Tensor:
            rows = members[pos] if feature_rows is None else feature_rows[members[pos]]
            return features[rows.to(features.device)]
    sharded = distributed and is_distributed()
    result = blend_sharded(fetch, sp.free_indptr, net, member_chunk=member_chunk, device=device,
                           sample_shape=tuple(sample.shape), dtype=dtype, member_features=member_features,
                           lr=lr_value, iterations=iterations, normalize=normalize, chunk_size=chunk_size,
                           backend=backend, progress=progress, amp=amp) if sharded else \
        blend_chunked(fetch, sp.free_indptr, net, member_chunk=member_chunk, loss_clusters=sp.free_ids.numel(),
                      device=device, lr=lr_value, iterations=iterations, normalize=normalize, chunk_size=chunk_size,
                      backend=backend, progress=progress, member_features=member_features, amp=amp)
    synchronize(device)
    t3 = time.perf_counter()
    timings = dict(timings)
    timings.update(split=t1 - t0, blend=t3 - t2, blend_targets=result.seconds_targets,
                   blend_iterations=result.seconds_iterations, blend_final=result.seconds_final)
    settings = dict(iterations=iterations, lr=lr_value, normalize=normalize, seed=seed, matcher_seed=mseed,
                    shared_network=shared_network, amp=amp,
                    matcher="random_convnet" if mseed is not None else type(net).__name__, ipc=clustering.ipc,
                    chunk_size=chunk_size, member_chunk=member_chunk, ranks=world_size() if sharded else 1,
                    round=round_index, device=str(device),
                    backends={"grouping": clustering.backend,
                              "segment_blend": backend_for("segment_blend", device, backend)})
    reduced = assemble_reduced(images, labels, forget, clustering, sp, result.blended, result.normalized_weights,
                               result.initial_terms, result.final_terms, timings, settings, result.loss_history)
    return reduced, sp, result


def assemble_reduced(images, labels, forget, clustering, sp: Split, blended, w_hat, initial_terms, final_terms,
                     timings, settings, history) -> ReducedRetainSet:
    """The reduced set's rows: the blends of ``sp.free_ids`` first, then the ``sp.residual`` rows,
    served from ``images`` (the source: a tensor or a Dataset), not copied."""
    n_blend, n_res = sp.free_ids.numel(), sp.residual.numel()
    sample = source_sample(images)
    home = images.device if isinstance(images, torch.Tensor) else torch.device("cpu")
    blends = blended.detach().to(device=home, dtype=sample.dtype).reshape((n_blend,) + tuple(sample.shape))
    cc = clustering.cluster_class.cpu().to(torch.int64)
    out_labels = torch.cat([cc[sp.free_ids], labels.cpu()[sp.residual]]).to(labels.device)
    minus = torch.full((n_res,), -1, dtype=torch.int64)
    retain = int(forget.numel() - forget.sum())
    rows = n_blend + n_res
    return ReducedRetainSet(
        images=None, blends=blends, source=images, labels=out_labels,
        is_blended=torch.cat([torch.ones(n_blend, dtype=torch.bool), torch.zeros(n_res, dtype=torch.bool)]),
        source_cluster=torch.cat([sp.free_ids, minus]),
        source_index=torch.cat([torch.full((n_blend,), -1, dtype=torch.int64), sp.residual]),
        free_clusters=sp.free_ids, touched_clusters=sp.touched_ids,
        compression=retain / rows if rows else math.nan, timings=timings,
        final_loss=float(final_terms.mean()) if final_terms.numel() else math.nan,
        initial_loss=float(initial_terms.mean()) if initial_terms.numel() else math.nan,
        settings=settings, blend_members=sp.members, blend_weights=w_hat.detach().cpu(),
        blend_indptr=sp.free_indptr, loss_history=list(history))


def condense(images: object, labels: torch.Tensor | None = None, forget: object = None, *, ipc: int | None = None,
             clustering: Clustering | None = None, iterations: int = 12, lr: float | str = "reference",
             normalize: str = "sum", matcher: nn.Module | None = None, seed: int = 0,
             device: torch.device | str | None = None, chunk_size: int | None = None,
             progress: bool | None = None,
             backend: str = "auto", share_network: bool = False,
             features: torch.Tensor | None = None, amp: bool = False, member_chunk: int | None = None,
             distributed: bool = True) -> ReducedRetainSet:
    """Condense the retain set after a forget request (docs/method.md §1.2–1.3).

    Args:
        images: ``[N, C, H, W]`` floating training images (normalised pixels), any floating dtype, cast
            to the networks' dtype where they run (the reduced set keeps the images' dtype); or the whole
            training set as an ``(images, labels)`` pair, a ``TensorDataset`` or a non-shuffling
            ``DataLoader`` (read once into memory), or a map-style ``Dataset`` of ``(image, label)``
            rows, which is **streamed**: features, content hashes and each Blend chunk's members are
            read a batch at a time (its ``__getitems__`` when it has one), its labels come from a
            ``.labels``/``.targets`` attribute or one pass, and the reduced set serves its residual
            rows from it (then ``labels`` is omitted: ``condense(train_set, forget, ipc=...)``).
        labels: ``[N]`` integer labels.
        forget: training indices (tensor/list/array, distinct) or a ``[N]`` bool mask.
        ipc: clusters per class; with no ``clustering`` the images are grouped here
            (``extract_features`` + ``group`` with ``seed``, timed as ``features`` / ``grouping``),
            in an order fixed by the images' content, so the same data in another row order gives
            the same reduced set (rows named by their new indices).
        clustering: a precomputed :class:`fastblend.grouping.Clustering` of these images.
        iterations: Blend optimiser steps (12 for unlearning, 20 in the condensation comparison).
        lr: ``"reference"`` (:func:`blend_lr` of the clustering's ipc) or a positive number.
        normalize: ``"sum"`` (reference) or ``"softmax"`` (option).
        matcher: per-sample network used as ``f_m`` (its ``embed`` if it has one); default: a fresh
            random ConvNet-3 seeded with :func:`matcher_seed` ``(seed)``, independent of the grouping
            extractor. Matchers with batch statistics are refused (see :func:`check_matcher`).
        seed: seeds the grouping (when done here) and the default matcher.
        device: where grouping and Blend run (default: the images' device); outputs stay on the
            images' device.
        chunk_size: blended images per matcher forward/backward; ``None`` runs all K at once on a
            GPU and small cache-friendly batches on a CPU (:func:`default_chunk_size`). A ConvNet-3
            keeps about 1.4 MB of activations per 32x32 float32 image, so on a GPU pass e.g. 512 to
            bound memory at large ipc; the result is the same.
        progress: show tqdm bars; ``None``: off unless ``FASTBLEND_PROGRESS=1`` (``fastblend._progress``).
        backend: :func:`fastblend.segment_blend` backend.
        share_network: **option, a departure from the reference** (which uses two independent random
            networks): one random network serves as the grouping extractor and as the matcher, so a
            single feature extraction gives both the grouping's features and Blend's targets
            ``μ_i`` (one forward pass over the free clusters' members saved). With a ``clustering``,
            pass the ``features`` it was computed from (``f_m`` of every image); without them the
            targets come from the shared network's forward over the free members.
        features: ``[N, D]`` embeddings of ``images`` by the matcher (only with ``share_network``).
        amp: **option, changes numerics**: the matcher runs in bfloat16 under ``torch.autocast``
            (see :func:`blend_clusters`); off by default.
        member_chunk: the most member images the Blend holds at once: the free clusters are
            optimised one chunk at a time (all iterations per chunk; a cluster larger than this is
            a chunk of its own), each loss term keeping the global ``1/K``, so the blends, weights
            and loss history are those of the all-at-once Blend (float tolerance) while the Blend's
            memory is bounded by the chunk. ``None``: every free member at once.
        distributed: under ``torch.distributed`` (a process group with more than one rank), share
            the free clusters out over the ranks by member count, blend each rank's share and
            all-gather the results, so every rank returns the single-process reduced set; the
            feature extraction and the grouping done here are shared out the same way. Under a
            process group every rank must make the same call (collective); pass ``distributed=False``
            to run one on a single rank (no communication: it extracts, groups and blends everything
            itself).

    Returns:
        :class:`ReducedRetainSet`: blended rows first, then the residual rows (served from
        ``images``, not copied).
    """
    if not isinstance(images, torch.Tensor) and forget is None:
        forget, labels = labels, None  # condense(train_set, forget, ...)
    if not isinstance(distributed, bool):
        raise TypeError(f"condense: distributed must be a bool, got {type(distributed).__name__}")
    ipc, iterations, chunk_size, member_chunk, lr, seed = map(plain_int, (ipc, iterations, chunk_size, member_chunk,
                                                                         lr, seed))
    images, labels = open_source("condense", images, labels)
    if forget is None:
        raise ValueError("condense: forget is required (training indices or a [N] bool mask)")
    images, labels, mask, dev = prepare_inputs("condense", images, labels, forget, iterations, lr, normalize,
                                               chunk_size, device, member_chunk)
    if features is not None and not share_network:
        raise ValueError("condense: features are only used with share_network=True")
    net = None
    if share_network:
        net, _ = make_matcher("condense", matcher, source_sample(images)[None], seed, 0, dev)
        if features is not None and (not isinstance(features, torch.Tensor) or features.dim() != 2
                                     or features.shape[0] != labels.shape[0]):
            raise ValueError(f"condense: features must be a [N, D] tensor with N = {labels.shape[0]}, got "
                             f"{getattr(features, 'shape', type(features).__name__)}")
    reuse = share_network and features is None  # the grouping's features serve as Blend targets
    clustering, t_feat, t_group, feats = resolve_clustering("condense", images, labels, ipc, clustering, seed,
                                                            dev, progress, extractor=net,
                                                            keep="content" if reuse else None,
                                                            distributed=None if distributed else False)
    feature_rows = None
    if reuse and feats is not None:
        # features extracted for the grouping, kept in content order (no reordered copy); with a given
        # clustering and no features the Blend embeds only the free clusters' members with the shared
        # network (fewer images than all N)
        features, feature_rows = feats
    del feats
    reduced, _, _ = condense_core("condense", images, labels, mask, clustering, iterations=iterations, lr=lr,
                                  normalize=normalize, matcher=matcher, seed=seed, round_index=0, device=dev,
                                  chunk_size=chunk_size, progress=progress, backend=backend,
                                  timings={"features": t_feat, "grouping": t_group},
                                  features=features, net=net, amp=bool(amp), member_chunk=member_chunk,
                                  distributed=distributed, feature_rows=feature_rows)
    return reduced
