"""The condensing engine (docs/method.md §1.2-1.4): a Blend index of a training set, grouped and blended
once; each forget request is a split and a gather.

Grouping does not depend on the forget request, and neither does a free cluster's blend: the Blend
loss is a sum of independent per-cluster terms (docs/method.md §1.3), so a cluster's blend depends
only on its members, the matcher and the step size. :meth:`BlendIndex.build` therefore computes,
once per training set, the features, the clustering and a blend for **every** non-empty cluster;
:meth:`BlendIndex.reduce` answers a request (a single one, or the cumulative forget set of several
rounds) by selecting the blends of the clusters it leaves free and the raw residual images of the
ones it touches: no network runs, only the split and a gather. :func:`condense` is the same engine
in one call (build, then reduce).

Which blends fastblend means: the index's. The Blend averages its loss over the ``K_all`` non-empty
clusters blended together, so each cluster steps by ``lr/K_all`` whatever the request; the research
code blends only a request's ``K_free`` free clusters and steps each by ``lr/K_free``. The two agree
exactly when nothing is forgotten, and for a request with ``lr · K_free / K_all`` given to the
research code (its oracle: ``fastblend.condensation.reference``).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from .._device import synchronize
from .._io import CHECKSUM_KEY, LOAD_ERRORS, atomic_save, checksum_status, with_checksum
from ..distributed import is_distributed, world_size
from ..grouping import Clustering
from ..ops._dispatch import backend_for
from .blend import blend_chunked, check_matcher, matcher_dtype
from .checks import check_clustering, check_ipc, check_member_chunk, forget_mask, open_source, plain_int, prepare_inputs
from .content_grouping import group_in_content_order, resolve_clustering
from .recipe import blend_lr, make_matcher
from .reduced import ReducedRetainSet, plain
from .sharded import blend_sharded
from .source import check_fingerprint, fingerprint, is_dataset_source, read_rows, source_length, source_sample
from .split import Split, split_clusters

__all__ = ["BlendIndex", "condense"]

class _NeedsSource(ValueError):
    """A saved index whose training images are a Dataset the caller must pass back."""


_FORMAT = "fastblend.BlendIndex"
_FORMAT_VERSION = 2  # 2: carries a content checksum (fastblend._io.with_checksum); 1 (before) still loads


@dataclass(eq=False, repr=False)
class BlendIndex:
    """Features, clustering and one blend per non-empty cluster of a training set (docs/method.md §1.4):
    fastblend's condensing engine.

    Build it with :meth:`build` (once per training set), answer forget requests with :meth:`reduce`
    (milliseconds; for multi-round unlearning pass each round's cumulative forget set), keep it with
    :meth:`save` / :meth:`load`. :func:`condense` builds one and answers one request in one call.

    Attributes:
        images: ``[N, C, H, W]`` the training images, or the map-style Dataset of ``(image, label)``
            rows the index was built from (kept, not copied); residual rows are served from them.
        labels: ``[N]`` int64.
        clustering: the per-class :class:`fastblend.Clustering` of the images.
        blends: ``[K, C, H, W]`` one blend per cluster in the images' dtype/device (zeros for an empty
            cluster).
        blend_weights: ``[N]`` normalised member weights ``ŵ`` in the clustering's CSR order
            (aligned with ``clustering.perm``).
        initial_terms, final_terms: ``[K]`` float per-cluster matching terms at the start and for the
            stored blend (``nan`` for an empty cluster).
        features: ``[N, D]`` float32 grouping features (``None`` when a clustering was given).
        loss_history: the Blend loss ``L`` (mean over all ``K_all`` blended clusters) before each step.
        settings: how it was built (ipc, iterations, lr, normalize, seed, matcher seed, ...).
        timings: seconds of the build: ``features``, ``grouping``, ``blend`` (with its parts
            ``blend_targets``, ``blend_iterations``, ``blend_final``) and ``total``.
    """

    images: torch.Tensor | Dataset
    labels: torch.Tensor
    clustering: Clustering
    blends: torch.Tensor
    blend_weights: torch.Tensor
    initial_terms: torch.Tensor
    final_terms: torch.Tensor
    features: torch.Tensor | None = None
    loss_history: list = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)

    @classmethod
    def build(cls, data: object, labels: torch.Tensor | None = None, *, ipc: int | None = None,
              iterations: int = 12, lr: float | str = "reference", normalize: str = "sum",
              matcher: nn.Module | None = None, seed: int = 0, device: torch.device | str | None = None,
              chunk_size: int | None = None, progress: bool | None = False, backend: str = "auto",
              features: torch.Tensor | None = None, clustering: Clustering | None = None,
              amp: bool = False, member_chunk: int | None = None, distributed: bool = True,
              share_network: bool = False) -> BlendIndex:
        """Group the training set and blend every non-empty cluster, once.

        Args:
            data: ``[N, C, H, W]`` floating training images (normalised pixels, any floating dtype,
                cast to the networks' dtype where they run; the blends keep the images' dtype), then
                ``labels`` ``[N]`` int; or an ``(images, labels)`` pair, a ``TensorDataset`` or a
                non-shuffling ``DataLoader`` (read once into memory), or a map-style ``Dataset`` of
                ``(image, label)`` rows, which is **streamed**: features, content hashes and each
                Blend chunk's members are read a batch at a time (its ``__getitems__`` when it has
                one), its labels come from a ``.labels``/``.targets`` attribute or one pass, and it is
                kept (not copied) as the index's ``images``, from which reduced sets serve residual rows.
            labels: ``[N]`` integer labels (only with an images tensor).
            ipc: clusters per class (needed unless ``clustering`` is given); the images are grouped
                here (features + :func:`fastblend.group` with ``seed``) in an order fixed by their
                content, so the same data in another row order gives the same index.
            iterations: Blend optimiser steps (12 for unlearning, 20 in the condensation comparison).
            lr: ``"reference"`` (:func:`fastblend.condensation.blend_lr` of the clustering's ipc) or a
                positive number; each cluster steps by ``lr / K_all`` (module docstring).
            normalize: ``"sum"`` (reference) or ``"softmax"`` (option).
            matcher: per-sample network used as ``f_m`` (its ``embed`` if it has one); default: a fresh
                random ConvNet-3 seeded with :func:`fastblend.condensation.matcher_seed` ``(seed)``,
                independent of the grouping extractor. Matchers with batch statistics are refused
                (:func:`fastblend.condensation.check_matcher`).
            seed: seeds the grouping and the default matcher.
            device: where features, grouping and Blend run (default: the images' device, the CPU
                for a Dataset); the blends stay on the images' device.
            chunk_size: blended images per matcher forward/backward; ``None`` runs all at once on a
                GPU and small cache-friendly batches on a CPU (the result is the same).
            progress: tqdm bars; ``None``: off unless ``FASTBLEND_PROGRESS=1``.
            backend: :func:`fastblend.segment_blend` backend.
            features: ``[N, D]`` grouping features of ``data`` already computed (grouped here); with
                ``share_network``, the shared network's features, which are then also the Blend's
                targets.
            clustering: a precomputed :class:`fastblend.Clustering` of ``data`` (no features, no grouping).
            amp: **option, changes numerics**: the matcher runs in bfloat16 under ``torch.autocast``.
            member_chunk: the most member images the Blend holds at once: the clusters are optimised
                one chunk at a time, each loss term keeping the global ``1/K``, so the blends are
                those of the all-at-once Blend (float tolerance) in bounded memory.
            distributed: under ``torch.distributed`` (more than one rank), share features, grouping
                and the clusters out over the ranks and all-gather, so every rank gets the whole
                index. Every rank must make the same call (collective); ``False`` runs it on one rank.
            share_network: **option, a departure from the reference** (two independent random
                networks): one random network is both the grouping extractor and the matcher, so one
                feature extraction gives the grouping's features and the Blend's targets ``μ_i``.
        """
        index, _ = _build("BlendIndex.build", data, labels, None, ipc=ipc, iterations=iterations, lr=lr,
                          normalize=normalize, matcher=matcher, seed=seed, device=device, chunk_size=chunk_size,
                          progress=progress, backend=backend, features=features, clustering=clustering, amp=amp,
                          member_chunk=member_chunk, distributed=distributed, share_network=share_network,
                          keep_features=True)
        return index

    # ------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_blends(self) -> int:
        """Non-empty clusters (each has a stored blend)."""
        return int((self.clustering.sizes > 0).sum())

    def __repr__(self) -> str:
        c, h, w = source_sample(self.images).shape
        return (f"BlendIndex(N={len(self)}, images={c}x{h}x{w}, ipc={self.clustering.ipc}, "
                f"classes={self.clustering.num_classes}, blends={self.num_blends}, "
                f"build={self.timings.get('total', math.nan):.2f}s)")

    def reduce(self, forget: object) -> ReducedRetainSet:
        """The reduced retain set after forgetting ``forget`` (distinct training indices or a ``[N]``
        bool mask).

        Rows: the stored blends of the free non-empty clusters (by cluster id), then the
        non-forgotten members of the touched clusters (CSR order). Forgetting a whole class touches
        all its clusters, so it leaves no residual from it. **Multi-round unlearning**: pass each
        round's cumulative forget set (everything forgotten so far); the clusters that stay free keep
        their blends, the ones a round touches give their remaining members as residual rows.
        ``timings`` holds this request's ``split``, ``assemble`` and ``request`` (their sum) seconds,
        ``features``/``grouping``/``blend`` at 0 (not in the request path) and the index build apart,
        as ``index`` (with ``index_features``, ``index_grouping``, ``index_blend``).
        """
        fn = "BlendIndex.reduce"
        t0 = time.perf_counter()
        mask = forget_mask(fn, forget, len(self))
        if bool(mask.all()):
            raise ValueError(f"{fn}: forget covers all {len(self)} images; nothing would be retained")
        return self._request(mask, t0)

    def _request(self, mask: torch.Tensor, t0: float) -> ReducedRetainSet:
        """The reduced set for a checked ``[N]`` bool forget mask (``t0``: when the request began)."""
        sp = split_clusters(self.clustering, mask)
        t1 = time.perf_counter()
        blended = self.blends[sp.free_ids.to(self.blends.device)]
        timings = dict(features=0.0, grouping=0.0, split=t1 - t0, blend=0.0,
                       index=self.timings.get("total", 0.0),
                       **{f"index_{k}": self.timings.get(k, 0.0) for k in ("features", "grouping", "blend")})
        settings = dict(self.settings, source="BlendIndex", round=0)
        reduced = _assemble_reduced(self.images, self.labels, mask, self.clustering, sp, blended,
                                    self.blend_weights[sp.member_pos], self.initial_terms[sp.free_ids],
                                    self.final_terms[sp.free_ids], timings, settings, self.loss_history)
        t2 = time.perf_counter()
        reduced.timings.update(assemble=t2 - t1, request=t2 - t0)
        return reduced

    # ------------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the index to ``path`` atomically: a temporary file in the same folder, renamed into
        place, with a SHA-256 checksum of its content that :meth:`load` verifies. A tensor of training
        images is written with it; a Dataset is not (its fingerprint is: length, row shape, dtype,
        hashes of the labels and of the images) and :meth:`load` needs ``source=``."""
        path = Path(path)
        state = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "clustering"}
        if not isinstance(self.images, torch.Tensor):
            state["images"] = None
            state["source_fingerprint"] = fingerprint(self.images)
        state = {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else plain(v)) for k, v in state.items()}
        clustering = {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else plain(v))
                      for k, v in vars(self.clustering).items()}
        blob = {"format": _FORMAT, "version": _FORMAT_VERSION, "fields": state, "clustering": clustering}
        atomic_save(with_checksum(blob), path, fn="BlendIndex.save")

    @classmethod
    def load(cls, path: str | Path, source: object = None) -> BlendIndex:
        """Read a file written by :meth:`save` (safe loading), check that its fields agree and verify its
        content checksum: a file altered after it was written (flipped bytes) raises ``ValueError``
        naming it. A file written before checksums (format version 1) loads with a ``RuntimeWarning``
        that it was not verified (save it again to add one). An index saved from a Dataset needs
        ``source``: that Dataset (checked against the saved fingerprint); for an index that holds its
        images tensor, ``source`` may only be that same tensor (then the index uses it, on its device;
        other images raise ``ValueError``)."""
        return cls._load(path, source, old_files="warn")

    @classmethod
    def _load(cls, path: str | Path, source: object = None, *, old_files: str = "warn") -> BlendIndex:
        """:meth:`load`; ``old_files="refuse"`` (the cache's) refuses a file without a checksum too."""
        fn = "BlendIndex.load"
        try:
            blob = torch.load(Path(path), map_location="cpu", weights_only=True)
        except (OSError, *LOAD_ERRORS) as exc:
            raise ValueError(f"{fn}: cannot read {path}: {exc}") from exc
        if not isinstance(blob, dict) or blob.get("format") != _FORMAT:
            raise ValueError(f"{fn}: {path} is not a saved fastblend BlendIndex")
        if blob.get("version") not in (1, _FORMAT_VERSION):
            raise ValueError(f"{fn}: {path} has format version {blob.get('version')}, this fastblend reads "
                             f"versions 1 and {_FORMAT_VERSION}")
        verified = checksum_status(blob)  # acted on once the fields are known to be well formed
        state, cstate = blob.get("fields"), blob.get("clustering")
        names = [f.name for f in fields(cls) if f.name != "clustering"]
        if not isinstance(state, dict) or not isinstance(cstate, dict):
            raise ValueError(f"{fn}: {path} lacks its fields or its clustering")
        missing = sorted(set(names) - set(state)) + sorted(set(Clustering.__dataclass_fields__) - set(cstate))
        if missing:
            raise ValueError(f"{fn}: {path} lacks fields {missing}")
        try:
            clustering = Clustering(**{k: cstate[k] for k in Clustering.__dataclass_fields__})
            images, labels = state["images"], state["labels"]
            if images is None:
                fp = state.get("source_fingerprint")
                if source is None:
                    raise _NeedsSource(f"{fn}: {path} was built from a Dataset and holds no training images; "
                                       f"pass source= (the Dataset of {(fp or {}).get('length')} rows)")
                if not (isinstance(source, torch.Tensor) or is_dataset_source(source)):
                    raise _NeedsSource(f"{fn}: source must be the training images tensor or Dataset, got "
                                       f"{type(source).__name__}")
                check_fingerprint(source, fp if isinstance(fp, dict) else {}, f"{fn}: {path}")
                images = state["images"] = source
            elif source is not None:  # the file holds the images: source= must be those very images
                if not isinstance(source, torch.Tensor) or not isinstance(images, torch.Tensor):
                    raise _NeedsSource(f"{fn}: {path} holds its own training images (a tensor); source= is for an "
                                       f"index built from a Dataset: leave it out, got {type(source).__name__}")
                if (source.shape != images.shape or source.dtype != images.dtype or source.device.type == "meta"
                        or not torch.equal(source.detach().cpu(), images)):
                    raise _NeedsSource(f"{fn}: {path}: source does not match the training images saved in the file "
                                       f"({list(images.shape)} {images.dtype}); leave source= out to use those")
                images = state["images"] = source  # the same images, where the caller keeps them (e.g. a GPU)
                state["blends"] = state["blends"].to(source.device)
            check_clustering(fn, clustering, labels, None)
            n, k = source_length(images), clustering.num_clusters
            for name, shape in (("blends", (k,) + tuple(source_sample(images).shape)), ("blend_weights", (n,)),
                                ("initial_terms", (k,)), ("final_terms", (k,))):
                if tuple(state[name].shape) != shape:
                    raise ValueError(f"{name} has shape {list(state[name].shape)}, expected {list(shape)}")
        except _NeedsSource:
            raise
        except (ValueError, TypeError, AttributeError) as exc:
            if f"{fn}: {path}: source does not match" in str(exc):
                raise
            raise ValueError(f"{fn}: {path} holds an inconsistent index: {exc}") from exc
        if verified is False or (verified is None and (blob.get("version") != 1 or old_files == "refuse")):
            raise ValueError(f"{fn}: {path} is corrupt: its content checksum ({CHECKSUM_KEY}) does not match "
                             "(the file changed after it was written); rebuild the index and save it again")
        if verified is None:
            warnings.warn(f"{fn}: {path} has no checksum (written by an earlier fastblend); loaded unverified: "
                          "save it again to add one", RuntimeWarning, stacklevel=2)
        return cls(clustering=clustering, **{k: state[k] for k in names})


def _build(fn: str, data: object, labels: object, forget: object, *, ipc: object, iterations: object, lr: object,
           normalize: object, matcher: nn.Module | None, seed: int, device: object, chunk_size: object,
           progress: bool | None, backend: str, features: torch.Tensor | None, clustering: Clustering | None,
           amp: bool, member_chunk: object, distributed: object, share_network: bool,
           keep_features: bool) -> tuple[BlendIndex, torch.Tensor]:
    """:meth:`BlendIndex.build` for ``fn`` (the name errors carry), checking ``forget`` (``None``: no
    request) with the data before any work. Returns the index and the ``[N]`` bool forget mask.
    ``keep_features``: the index keeps the grouping features (else they are freed before the Blend)."""
    t_start = time.perf_counter()
    if not isinstance(distributed, bool):
        raise TypeError(f"{fn}: distributed must be a bool, got {type(distributed).__name__}")
    if not isinstance(share_network, bool):
        raise TypeError(f"{fn}: share_network must be a bool, got {type(share_network).__name__}")
    member_chunk = check_member_chunk(fn, member_chunk)
    ipc, iterations, chunk_size, lr, seed = map(plain_int, (ipc, iterations, chunk_size, lr, seed))  # numpy numbers too
    images, labels = open_source(fn, data, labels)
    images, labels, mask, dev = prepare_inputs(fn, images, labels, [] if forget is None else forget, iterations, lr,
                                               normalize, chunk_size, device, member_chunk)
    n = labels.shape[0]
    if features is not None and (not isinstance(features, torch.Tensor) or features.dim() != 2
                                 or features.shape[0] != n):
        raise ValueError(f"{fn}: features must be a [N, D] tensor with N = {n}, got "
                         f"{getattr(features, 'shape', type(features).__name__)}")
    sample = source_sample(images, fn)
    net = mseed = None
    if share_network:  # one network: the grouping's extractor and the matcher
        net, mseed = make_matcher(fn, matcher, sample[None], seed, 0, dev)
    shard_all = None if distributed else False  # features and grouping: False means no collective
    targets = feature_rows = None  # the shared network's features of every row: the Blend's targets
    if clustering is not None:
        clustering = check_clustering(fn, clustering, labels, ipc)
        feats, t_feat, t_group = None, 0.0, 0.0
        if share_network:
            targets = features  # none given: the Blend embeds the free members with the shared network
    elif features is not None:
        ipc = check_ipc(fn, ipc)
        clustering, feats, t_feat, t_group = group_in_content_order(images, labels, ipc, seed, features, None,
                                                                    keep="caller" if keep_features else None,
                                                                    caller=fn, distributed=shard_all)
        clustering = check_clustering(fn, clustering, labels, ipc)
        if share_network:
            targets = features
    else:
        keep = "content" if share_network else ("caller" if keep_features else None)
        clustering, t_feat, t_group, feats = resolve_clustering(fn, images, labels, ipc, None, seed, dev, progress,
                                                                extractor=net, keep=keep, distributed=shard_all)
        if share_network:  # kept once, in content order (no reordered copy during the Blend)
            (targets, feature_rows), feats = feats, None
    lr_value = blend_lr(clustering.ipc) if lr == "reference" else float(lr)
    everything_free = split_clusters(clustering, torch.zeros(n, dtype=torch.bool))
    if net is None:
        net, mseed = make_matcher(fn, matcher, sample[None], seed, 0, dev)
    dtype = matcher_dtype(net, sample.dtype)
    members = everything_free.members
    synchronize(dev)
    t0 = time.perf_counter()

    def fetch(pos: torch.Tensor) -> torch.Tensor:
        return read_rows(images, members[pos], fn).to(device=dev, dtype=dtype)

    member_features = None
    if targets is not None:
        def member_features(pos: torch.Tensor) -> torch.Tensor:
            rows = members[pos] if feature_rows is None else feature_rows[members[pos]]
            return targets[rows.to(targets.device)]

    check_matcher(net, fetch(torch.arange(min(4, members.numel()))), fn)
    blend_kw = dict(lr=lr_value, iterations=iterations, normalize=normalize, chunk_size=chunk_size,
                    backend=backend, progress=progress, amp=bool(amp), member_features=member_features)
    sharded = distributed and is_distributed()
    if sharded:
        result = blend_sharded(fetch, everything_free.free_indptr, net, member_chunk=member_chunk, device=dev,
                               sample_shape=tuple(sample.shape), dtype=dtype, **blend_kw)
    else:
        result = blend_chunked(fetch, everything_free.free_indptr, net, member_chunk=member_chunk,
                               loss_clusters=everything_free.free_ids.numel(), device=dev, **blend_kw)
    synchronize(dev)
    t_blend = time.perf_counter() - t0
    if share_network and keep_features and feature_rows is not None:
        feats = targets[feature_rows.to(targets.device)]  # the grouping features in row order, after the Blend
    k = clustering.num_clusters
    ids = everything_free.free_ids
    home = images.device if isinstance(images, torch.Tensor) else torch.device("cpu")
    blends = torch.zeros((k,) + tuple(sample.shape), dtype=sample.dtype, device=home)
    blends[ids.to(home)] = result.blended.to(device=home, dtype=sample.dtype)
    initial = torch.full((k,), math.nan, dtype=torch.float64)
    final = torch.full((k,), math.nan, dtype=torch.float64)
    initial[ids] = result.initial_terms.detach().cpu().double()
    final[ids] = result.final_terms.detach().cpu().double()
    settings = dict(ipc=clustering.ipc, iterations=iterations, lr=lr_value, normalize=normalize, seed=seed,
                    matcher_seed=mseed, matcher="random_convnet" if mseed is not None else type(net).__name__,
                    chunk_size=chunk_size, member_chunk=member_chunk, ranks=world_size() if sharded else 1,
                    amp=bool(amp), device=str(dev), loss_clusters=int(ids.numel()),
                    grouping_backend=clustering.backend, shared_network=share_network,
                    backends={"grouping": clustering.backend,
                              "segment_blend": backend_for("segment_blend", dev, backend)})
    timings = dict(features=t_feat, grouping=t_group, blend=t_blend, blend_targets=result.seconds_targets,
                   blend_iterations=result.seconds_iterations, blend_final=result.seconds_final,
                   total=time.perf_counter() - t_start)
    index = BlendIndex(images=images, labels=labels, clustering=clustering, blends=blends,
                       blend_weights=result.normalized_weights.detach().cpu(), initial_terms=initial,
                       final_terms=final, features=feats if keep_features else None,
                       loss_history=list(result.loss_history), settings=settings, timings=timings)
    return index, mask


def _assemble_reduced(images, labels, forget, clustering, sp: Split, blended, w_hat, initial_terms, final_terms,
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
             progress: bool | None = None, backend: str = "auto", share_network: bool = False,
             features: torch.Tensor | None = None, amp: bool = False, member_chunk: int | None = None,
             distributed: bool = True) -> ReducedRetainSet:
    """Build a :class:`BlendIndex` and answer one forget request, in one call (docs/method.md §1.2-1.4):
    ``BlendIndex.build(images, labels, ...).reduce(forget)``, the same engine and the same rows.

    Keep the index instead (:meth:`BlendIndex.build`, then :meth:`BlendIndex.reduce` per request)
    when more than one request will come: this call blends every non-empty cluster, the ones the
    request touches too, so its blends are the index's (each cluster steps by ``lr / K_all``; the
    module docstring says how that relates to the research code).

    Args:
        images, labels: the training set, in any form :meth:`BlendIndex.build` takes; with a pair, a
            Dataset or a DataLoader, omit ``labels``: ``condense(train_set, forget, ipc=...)``.
        forget: distinct training indices (tensor/list/array) or a ``[N]`` bool mask.
        ipc, clustering, iterations, lr, normalize, matcher, seed, device, chunk_size, progress,
            backend, amp, member_chunk, distributed, share_network: as in :meth:`BlendIndex.build`.
        features: ``[N, D]`` features of ``images`` by the shared network (only with
            ``share_network``): the grouping's features and the Blend's targets.

    Returns:
        :class:`ReducedRetainSet`: blended rows first, then the residual rows (served from the
        training images, not copied); ``timings`` holds the build's ``features``, ``grouping`` and
        ``blend`` seconds and the request's ``split``.
    """
    fn = "condense"
    if not isinstance(images, torch.Tensor) and forget is None:
        forget, labels = labels, None  # condense(train_set, forget, ...)
    if forget is None:
        raise ValueError(f"{fn}: forget is required (training indices or a [N] bool mask)")
    if features is not None and not share_network:
        raise ValueError(f"{fn}: features are only used with share_network=True")
    index, mask = _build(fn, images, labels, forget, ipc=ipc, iterations=iterations, lr=lr, normalize=normalize,
                         matcher=matcher, seed=seed, device=device, chunk_size=chunk_size, progress=progress,
                         backend=backend, features=features, clustering=clustering, amp=amp,
                         member_chunk=member_chunk, distributed=distributed, share_network=share_network,
                         keep_features=False)
    reduced = index._request(mask, time.perf_counter())
    reduced.timings.update({k: index.timings[k] for k in ("features", "grouping", "blend", "blend_targets",
                                                          "blend_iterations", "blend_final")})
    for key in [k for k in reduced.timings if k == "index" or k.startswith("index_")]:
        del reduced.timings[key]
    reduced.settings["source"] = "condense"
    return reduced
