"""Per-class grouping of docs/method.md §1.1: features of a random ConvNet-3, k-means per class -> CSR clusters.

Two steps, kept separate so each can be timed, cached and reused:

* :func:`extract_features` embeds images with a frozen network (by default the seeded random
  ConvNet-3 ``f_g`` of docs/method.md §1.1) in large no-grad batches.
* :func:`group` runs k-means with ``k = ipc`` within every class and returns a :class:`Clustering`
  (global cluster id ``class * ipc + local id``, the CSR layout ``perm``/``indptr``, the class of each
  cluster, sizes, per-class k-means objective, wall time).

k-means backends (``backend=``; implemented in :mod:`fastblend.kmeans`):

* ``"faiss"``: ``faiss.Clustering`` per class with every point used (FAISS's default subsampling to
  ``k * 256`` points is switched off) and k-means++ initialisation: fastblend's greedy k-means++
  passed in as starting centroids (default), or with ``init="k-means++"`` FAISS's own plain
  k-means++ where the installed version has it. The assignment
  index is a GPU index when FAISS has GPU support and the features are on CUDA (FAISS's clustering
  keeps the points on the host; only the assignment search runs on the device). FAISS stops when
  the objective no longer changes and re-fills empty clusters by splitting large ones.
* ``"torch"``: a batched k-means on the features' device that runs all classes at once (classes are
  zero-padded to a common size and processed in memory-bounded chunks). Reference semantics of
  docs/method.md §1.1: (greedy) k-means++ initialisation, at most ``niter`` Lloyd iterations, stop when the sum over a
  class's centroids of the L2 centroid shift is ``< tol``, empty clusters re-seeded on random points.
  No Python loop over clusters in the Lloyd iterations (k-means++ seeding is sequential by nature).
* ``"auto"``: ``"faiss"`` when FAISS imports (and, for CUDA features, has GPU support), else
  ``"torch"``; :attr:`Clustering.backend` records which one ran.

Defined behaviour of the edge cases:

* A class with ``n <= ipc`` images: every image is its own cluster (local ids ``0 .. n-1`` in index
  order); the class's remaining ``ipc - n`` clusters are empty. ``ipc = 1`` puts each class in one
  cluster without running k-means.
* Classes absent from ``labels`` (``num_classes`` defaults to ``max(labels) + 1``): all their
  clusters are empty, objective 0.
* Duplicate images: identical feature vectors always share a cluster (ties go to the lowest
  centroid index). A class with fewer distinct vectors than ``ipc`` therefore ends with some empty
  clusters: empty clusters are re-seeded only on points that are not already at their centroid,
  and stay empty when there is none.
* Empty clusters are legal everywhere downstream (``indptr`` has equal consecutive entries).

The objective reported is, per class, the within-cluster sum of squared Euclidean distances of the
returned partition to its cluster means, computed in float64 (independent of the backend, so the
backends and scikit-learn can be compared on it).

``balanced=True`` (option, off by default) bounds every cluster of a class to at most
``ceil(n / ipc)`` members: after the unconstrained k-means, Lloyd iterations continue with a
capacity-constrained assignment (every unassigned point proposes to its nearest non-full centroid;
each centroid accepts its closest proposals up to its remaining capacity; repeat).
"""

from __future__ import annotations

import numbers
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import distributed as dist
from ._checks import plain_number
from ._device import synchronize
from ._io import atomic_save, load_torch
from .features import extract_features  # noqa: F401  (its public home is here too)
from .kmeans import class_means, cluster_objective, faiss_has_gpu, faiss_module, run_faiss, run_torch, torch_chunks

_FORMAT = "fastblend.Clustering"
_FORMAT_VERSION = 1
_GROUP_BACKENDS = ("auto", "faiss", "torch")
_INITS = ("greedy-k-means++", "k-means++")
_FAISS_HINT = "`pip install faiss-cpu` (or a faiss-gpu build)"


# ------------------------------------------------------------------------------------------------
# Clustering
# ------------------------------------------------------------------------------------------------
@dataclass
class Clustering:
    """A per-class clustering in CSR form (all tensors on the CPU).

    Attributes:
        assignment: ``[N]`` int64 global cluster id of each sample, ``class * ipc + local id``.
        perm: ``[N]`` int64 permutation that sorts samples by cluster (stable within a cluster).
        indptr: ``[K+1]`` int64 offsets into ``perm``; cluster ``c`` holds samples
            ``perm[indptr[c]:indptr[c+1]]``. ``K = num_classes * ipc``; empty clusters are allowed.
        cluster_class: ``[K]`` int64 class of each cluster (``c // ipc``).
        ipc: clusters per class.
        num_classes: number of classes (``K / ipc``).
        objective: ``[num_classes]`` float64 k-means objective (within-cluster sum of squared
            distances to the cluster means) per class.
        seconds: wall time of the grouping.
        backend: which k-means backend produced it (``"faiss"``, ``"faiss-gpu"``, ``"torch"``; with
            ``"+balanced"`` appended for ``balanced=True``).
        meta: settings and diagnostics (seed, niter, tol, balanced, Lloyd iterations per class).
    """

    assignment: torch.Tensor
    perm: torch.Tensor
    indptr: torch.Tensor
    cluster_class: torch.Tensor
    ipc: int
    num_classes: int
    objective: torch.Tensor
    seconds: float = 0.0
    backend: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def num_clusters(self) -> int:
        """``K``: the number of clusters over all classes (``len(indptr) - 1``)."""
        return int(self.indptr.numel() - 1)

    @property
    def num_samples(self) -> int:
        """``N``: the number of clustered samples."""
        return int(self.assignment.numel())

    @property
    def sizes(self) -> torch.Tensor:
        """``[K]`` int64 number of samples in each cluster."""
        return self.indptr[1:] - self.indptr[:-1]

    def members(self, cluster: int) -> torch.Tensor:
        """Sample indices of one cluster, ``[size]`` int64."""
        return self.perm[self.indptr[cluster]:self.indptr[cluster + 1]]

    def validate(self) -> None:
        """Check that the fields are consistent with each other; raise ``ValueError`` if not."""
        k = self.num_classes * self.ipc
        n = self.assignment.numel()
        problems = []
        if self.indptr.shape != (k + 1,) or self.cluster_class.shape != (k,):
            problems.append(f"indptr/cluster_class must have {k + 1}/{k} entries")
        elif self.perm.shape != (n,) or int(self.indptr[0]) != 0 or int(self.indptr[-1]) != n:
            problems.append("perm must have N entries and indptr must run from 0 to N")
        elif bool((self.indptr[1:] < self.indptr[:-1]).any()):
            problems.append("indptr must be non-decreasing")
        elif n and (int(self.assignment.min()) < 0 or int(self.assignment.max()) >= k):
            problems.append(f"assignment must lie in [0, {k})")
        elif not torch.equal(self.assignment[self.perm],
                             torch.repeat_interleave(torch.arange(k), self.sizes)):
            problems.append("perm/indptr do not match assignment")
        if self.objective.shape != (self.num_classes,):
            problems.append(f"objective must have {self.num_classes} entries")
        if problems:
            raise ValueError("Clustering: inconsistent fields: " + "; ".join(problems))

    def save(self, path: str | Path) -> None:
        """Write to ``path`` atomically (a ``torch.save`` file holding only tensors and plain values)."""
        state = {name: getattr(self, name) for name in self.__dataclass_fields__}
        state = {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in state.items()}
        atomic_save({"format": _FORMAT, "version": _FORMAT_VERSION, "fields": state}, path)

    @classmethod
    def load(cls, path: str | Path) -> Clustering:
        """Read a file written by :meth:`save` (safe loading: no arbitrary objects are unpickled)."""
        blob = load_torch(path, "Clustering.load")
        if not isinstance(blob, dict) or blob.get("format") != _FORMAT:
            raise ValueError(f"Clustering.load: {path} is not a saved fastblend Clustering")
        if blob.get("version") != _FORMAT_VERSION:
            raise ValueError(f"Clustering.load: {path} has format version {blob.get('version')}, "
                             f"this fastblend reads version {_FORMAT_VERSION}")
        fields = blob["fields"]
        missing = set(cls.__dataclass_fields__) - set(fields)
        if missing:
            raise ValueError(f"Clustering.load: {path} lacks fields {sorted(missing)}")
        out = cls(**{k: fields[k] for k in cls.__dataclass_fields__})
        try:
            out.validate()
        except (ValueError, TypeError, AttributeError) as exc:
            raise ValueError(f"Clustering.load: {path}: {exc}") from exc
        return out


# ------------------------------------------------------------------------------------------------
# Input validation
# ------------------------------------------------------------------------------------------------
def check_ipc(caller: str, ipc: object) -> int:
    """``ipc`` (clusters per class) as a Python int: an integer >= 1 (numpy's too, not a bool), else a
    ``ValueError`` naming ``caller``. The one check of ``ipc`` that grouping, the Blend learning rate
    and the condensing engine share."""
    if isinstance(ipc, bool) or not isinstance(ipc, numbers.Integral) or ipc < 1:
        raise ValueError(f"{caller}: ipc must be a positive int, got {ipc!r}")
    return int(ipc)


def _check_group_inputs(features, labels, ipc, backend, niter, tol, num_classes):
    name = "group"
    if not isinstance(features, torch.Tensor):
        try:
            features = torch.as_tensor(features)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(f"group: features must be a tensor or array, got {type(features).__name__}") from exc
    if features.dim() != 2:
        raise ValueError(f"{name}: features must be 2-D [N, D], got shape {tuple(features.shape)}")
    if not features.is_floating_point():
        raise TypeError(f"{name}: features must be floating point, got {features.dtype}")
    if features.shape[0] == 0 or features.shape[1] == 0:
        raise ValueError(f"{name}: features must be non-empty [N, D], got shape {tuple(features.shape)}")
    if not all(bool(torch.isfinite(part).all()) for part in features.split(8192)):  # no [N, D] mask at once
        raise ValueError(f"{name}: features must be finite (found NaN or inf)")
    if not isinstance(labels, torch.Tensor):
        try:
            labels = torch.as_tensor(labels)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(f"group: labels must be a tensor or array, got {type(labels).__name__}") from exc
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{name}: labels must be an integer tensor, got {labels.dtype}")
    if labels.dim() != 1 or labels.shape[0] != features.shape[0]:
        raise ValueError(f"{name}: labels must be [N] with N = {features.shape[0]} (rows of features), "
                         f"got shape {tuple(labels.shape)}")
    labels = labels.to("cpu", torch.int64)
    if int(labels.min()) < 0:
        raise ValueError(f"{name}: labels must be >= 0, got {int(labels.min())}")
    ipc = check_ipc(name, ipc)
    if backend not in _GROUP_BACKENDS:
        raise ValueError(f"{name}: backend must be one of {_GROUP_BACKENDS}, got {backend!r}")
    if isinstance(niter, bool) or not isinstance(niter, numbers.Integral) or niter < 1:
        raise ValueError(f"{name}: niter must be an int >= 1, got {niter!r}")
    if not isinstance(tol, (int, float)) or isinstance(tol, bool) or not tol >= 0:
        raise ValueError(f"{name}: tol must be a number >= 0, got {tol!r}")
    present = int(labels.max()) + 1
    if num_classes is None:
        num_classes = present
    elif isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < present:
        raise ValueError(f"{name}: num_classes must be an int >= max(labels) + 1 = {present}, got {num_classes!r}")
    _check_cluster_count(name, num_classes, ipc, features.shape[0])
    return features, labels, int(num_classes)


_MAX_EMPTY_CLUSTERS = 1 << 22  # tables of K clusters are allocated up front: bound K by what can be filled


def _check_cluster_count(name: str, num_classes: int, ipc: int, n: int) -> None:
    """Refuse ``K = num_classes * ipc`` far beyond ``N`` (at most N clusters can be non-empty) before any
    O(K) table is allocated: an ``ipc`` of 2**40, or one label of 10**6, would otherwise take gigabytes."""
    k = num_classes * ipc
    if k > max(8 * n, _MAX_EMPTY_CLUSTERS):
        raise ValueError(f"{name}: num_classes * ipc = {num_classes} * {ipc} = {k} clusters for N = {n} samples; "
                         f"at most N can be non-empty (check ipc and the largest label, {num_classes - 1})")


# ------------------------------------------------------------------------------------------------
# group
# ------------------------------------------------------------------------------------------------
def group(features: torch.Tensor, labels: torch.Tensor, ipc: int, backend: str = "auto", seed: int = 0,
          niter: int = 100, tol: float = 1e-4, balanced: bool = False, num_classes: int | None = None,
          init: str = "greedy-k-means++", progress: bool | None = None, *,
          distributed: bool | None = None) -> Clustering:
    """k-means with ``k = ipc`` within every class (docs/method.md §1.1) -> :class:`Clustering`.

    Args:
        features: ``[N, D]`` floating-point features (e.g. from :func:`extract_features`), any
            device; must be finite. The torch backend runs on their device.
        labels: ``[N]`` integer class labels ``>= 0`` (any device).
        ipc: clusters per class, ``>= 1``.
        backend: ``"auto"``, ``"faiss"`` or ``"torch"`` (see the module docstring).
        seed: seed of every random choice (k-means++ draws, re-seeding); same seed, same result.
        niter: at most this many Lloyd iterations per class.
        tol: stop a class when the sum of its centroids' L2 shifts is below this (torch backend;
            FAISS stops when its objective stops changing).
        balanced: bound each cluster of a class of ``n`` images to ``ceil(n / ipc)`` members.
        num_classes: number of classes; default ``max(labels) + 1``. Classes without samples get
            empty clusters.
        init: ``"greedy-k-means++"`` (default; ``2 + ln(ipc)`` candidates per draw, keep the best,
            as scikit-learn's ``KMeans``) or ``"k-means++"`` (one candidate per draw, the textbook
            rule; FAISS's native implementation on the faiss backend). Greedy seeding costs about
            twice as much and reaches a 1-3% lower objective at ipc 10-100.
        progress: show a tqdm progress bar; ``None``: off unless ``FASTBLEND_PROGRESS=1`` (``fastblend._progress``).
        distributed: split the classes over the ranks of the default process group (balanced by
            class size; the torch backend splits its chunks of classes), cluster each rank's part and
            all-gather, so every rank returns the whole clustering, equal to the single-process one.
            Under a process group every rank must make the same call (collective: same features,
            labels and settings; it communicates whatever the data, so a call on one rank alone
            waits for the others); pass ``distributed=False`` to run one on a single rank.
            ``None``: when :func:`fastblend.distributed.is_distributed`.

    Returns:
        A :class:`Clustering` with CPU tensors; ``backend`` says which k-means ran.

    k-means++ seeding draws rows by position, so the clusters depend on the order of the rows;
    :class:`fastblend.BlendIndex` (and :func:`fastblend.condense`, which builds one) group in an order fixed by the
    images' content, which removes that dependence. Warns when ``ipc`` exceeds a class's size.
    """
    ipc, seed, niter, tol, num_classes = map(plain_number, (ipc, seed, niter, tol, num_classes))  # numpy's too
    features, labels, num_classes = _check_group_inputs(features, labels, ipc, backend, niter, tol, num_classes)
    ipc, niter = int(ipc), int(niter)  # numpy integers too
    if not isinstance(balanced, bool):
        raise TypeError(f"group: balanced must be a bool, got {type(balanced).__name__}")
    if init not in _INITS:
        raise ValueError(f"group: init must be one of {_INITS}, got {init!r}")
    if distributed is not None and not isinstance(distributed, bool):
        raise TypeError(f"group: distributed must be a bool or None, got {type(distributed).__name__}")
    shard = dist.is_distributed() if distributed is None else (distributed and dist.is_distributed())
    faiss = None
    if backend in ("auto", "faiss"):
        faiss = faiss_module()
        if faiss is None and backend == "faiss":
            raise ImportError(f"group: backend='faiss' needs FAISS; install it with {_FAISS_HINT}, "
                              "or use backend='torch'")
        if backend == "auto" and faiss is not None and features.is_cuda and not faiss_has_gpu(faiss):
            faiss = None  # the on-device torch k-means beats copying to a CPU-only FAISS
    synchronize(features.device)
    start = time.perf_counter()

    n = labels.numel()
    order = torch.argsort(labels, stable=True)
    class_sizes = torch.bincount(labels, minlength=num_classes)
    members_all = torch.split(order, class_sizes.tolist())
    local = torch.empty(n, dtype=torch.int64)
    iterations = [0] * num_classes
    # Classes with at most ipc images: one image per cluster, no k-means.
    for idx in members_all:
        if 0 < idx.numel() <= ipc:
            local[idx] = torch.arange(idx.numel())
    small = [(c, n_c) for c, n_c in enumerate(class_sizes.tolist()) if 0 < n_c < ipc]
    if small:
        named = ", ".join(f"class {c} ({n_c} images)" for c, n_c in small[:5]) + (" ..." if len(small) > 5 else "")
        warnings.warn(f"group: ipc={ipc} is larger than {len(small)} class(es): {named}; each of their images "
                      "becomes its own cluster, so those classes are not condensed. Choose ipc well below the "
                      "smallest class size (about a fifth of it keeps ~5 images per cluster)", stacklevel=2)
    todo = [c for c in range(num_classes) if class_sizes[c] > ipc]
    members = [members_all[c] for c in todo]

    used = "faiss" if faiss is not None else "torch"
    if members:
        if faiss is not None:
            only = _my_part(members, None, shard)
            results, iters, used = run_faiss(faiss, features, members, ipc, niter, seed, progress, init, only=only)
        else:
            only = _my_part(members, torch_chunks(members, ipc, features.shape[1]), shard)
            results, iters = run_torch(features, members, ipc, niter, tol, seed, False, progress,
                                        seeding=init, only=only)
        if shard:
            results, iters = _gather_parts(results, iters)
        if balanced:
            init = []
            for idx, a in zip(members, results):
                init.append(class_means(features.index_select(0, idx.to(features.device)),
                                         a.to(features.device), ipc))
            # Same centring as _pack, so the centroids live in the packed coordinates.
            init = [m - features.index_select(0, idx.to(features.device)).to(torch.float64).mean(0)
                    for m, idx in zip(init, members)]
            only = _my_part(members, torch_chunks(members, ipc, features.shape[1]), shard)
            results, more = run_torch(features, members, ipc, niter, tol, seed + 1, True, progress,
                                       init=[m.to(torch.float32) for m in init], only=only)
            if shard:
                results, more = _gather_parts(results, more)
            iters = [a + b for a, b in zip(iters, more)]
            used += "+balanced"
        for c, idx, a, it in zip(todo, members, results, iters):
            local[idx] = a
            iterations[c] = it
    elif shard:  # nothing to cluster, but a call under a process group communicates whatever the data
        _gather_parts([], [])

    assignment = labels * ipc + local
    k_total = num_classes * ipc
    perm = torch.argsort(assignment, stable=True)
    indptr = torch.zeros(k_total + 1, dtype=torch.int64)
    indptr[1:] = torch.cumsum(torch.bincount(assignment, minlength=k_total), 0)
    objective = cluster_objective(features, labels, assignment, num_classes, k_total)
    synchronize(features.device)
    seconds = time.perf_counter() - start
    return Clustering(
        assignment=assignment, perm=perm, indptr=indptr,
        cluster_class=torch.arange(k_total, dtype=torch.int64) // ipc,
        ipc=ipc, num_classes=num_classes, objective=objective, seconds=seconds, backend=used,
        meta={"seed": seed, "niter": niter, "tol": float(tol), "balanced": balanced, "init": init,
              "iterations": iterations, "device": str(features.device)},
    )


def _my_part(members: list[torch.Tensor], chunks: list[list[int]] | None, shard: bool) -> list[int] | None:
    """This rank's share of the work: class positions (``chunks=None``) or chunk ids, balanced by the
    number of points (:func:`fastblend.distributed.balanced_shards`); ``None`` (all) without sharding."""
    if not shard:
        return None
    if chunks is None:
        weights = [m.numel() for m in members]
    else:
        weights = [sum(members[c].numel() for c in chunk) for chunk in chunks]
    return dist.balanced_shards(weights, dist.world_size())[dist.rank()]


def _gather_parts(results: list, iters: list[int]) -> tuple[list[torch.Tensor], list[int]]:
    """Every rank's local assignments (``None`` where another rank ran the class) merged on all ranks."""
    mine = {c: (a, iters[c]) for c, a in enumerate(results) if a is not None}
    for part in dist.all_gather_objects(mine):
        for c, (a, it) in part.items():
            results[c], iters[c] = a, it
    return results, iters
