"""Multi-round unlearning (docs/method.md §1.4): :class:`Blender` groups once and condenses after each
cumulative forget request, re-blending every round or reusing the first round's blends."""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from ..grouping import Clustering
from .blend import BlendResult
from .checks import forget_mask, prepare_inputs, resolve_clustering
from .core import assemble_reduced, condense_core
from .reduced import ReducedRetainSet
from .split import Split, split_clusters

__all__ = ["BLENDER_MODES", "Blender"]

BLENDER_MODES = ("cached", "reference")


class Blender:
    """Multi-round unlearning: group once, then condense after each (cumulative) forget request.

    ``mode="reference"`` re-blends every free cluster each round with a fresh matcher (seed
    :func:`matcher_seed` ``(seed, round)``), the paper's protocol. ``mode="cached"`` (option,
    docs/method.md §1.4) blends everything in the first round and afterwards keeps the blends of clusters that
    stay free: clusters touched by the new request lose their blended row and contribute their
    non-forgotten members as residual rows. No matcher runs after the first round; a round costs a
    vectorised re-split plus gathering the output rows. A cached blend is the one computed in the
    first round (its loss was normalised by that round's K, so it can differ slightly from a fresh
    blend with the same matcher).

    The rows of every round's set are ordered exactly as :func:`condense` orders them, so a cached
    round has the same rows (blended vs residual, clusters, training indices) as a fresh split over
    the cumulative forget set. A user-supplied ``matcher`` is used in every round.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, ipc: int | None = None,
                 clustering: Clustering | None = None, mode: str = "cached", iterations: int = 12,
                 lr: float | str = "reference", normalize: str = "sum", matcher: nn.Module | None = None,
                 seed: int = 0, device: torch.device | str | None = None, chunk_size: int | None = None,
                 progress: bool | None = None, backend: str = "auto", amp: bool = False):
        if mode not in BLENDER_MODES:
            raise ValueError(f"Blender: mode must be one of {BLENDER_MODES}, got {mode!r}")
        images, labels, _, dev = prepare_inputs("Blender", images, labels, [], iterations, lr, normalize, chunk_size,
                                                device)
        if matcher is not None and not isinstance(matcher, nn.Module):
            raise TypeError(f"Blender: matcher must be a torch.nn.Module or None, got {type(matcher).__name__}")
        self.clustering, t_feat, t_group, _ = resolve_clustering("Blender", images, labels, ipc, clustering, seed,
                                                                 dev, progress, keep=None)
        self.images, self.labels, self.mode, self.device = images, labels, mode, dev
        self.grouping_timings = {"features": t_feat, "grouping": t_group}
        self._kw = dict(iterations=iterations, lr=lr, normalize=normalize, matcher=matcher, seed=seed,
                        chunk_size=chunk_size, progress=progress, backend=backend, amp=bool(amp))
        self.forgotten = torch.zeros(images.shape[0], dtype=torch.bool)
        self.rounds = 0
        self.current: ReducedRetainSet | None = None
        self._cache: dict | None = None

    def forget(self, indices: object) -> ReducedRetainSet:
        """Add ``indices`` (distinct indices or a ``[N]`` bool mask) to the cumulative forget set and
        return the reduced retain set for it. On error nothing changes."""
        n = self.images.shape[0]
        new = forget_mask("Blender.forget", indices, n)
        cumulative = self.forgotten | new
        if bool(cumulative.all()):
            raise ValueError(f"Blender.forget: the cumulative forget set would cover all {n} images; "
                             "nothing would be retained")
        timings = dict(self.grouping_timings) if self.rounds == 0 else {"features": 0.0, "grouping": 0.0}
        if self.mode == "reference" or self._cache is None:
            reduced, sp, result = condense_core("Blender.forget", self.images, self.labels, cumulative,
                                                self.clustering, round_index=self.rounds, device=self.device,
                                                timings=timings, **self._kw)
            if self.mode == "cached":
                self._cache = self._make_cache(sp, result)
        else:
            reduced = self._from_cache(cumulative, timings)
        reduced.settings.update(mode=self.mode)
        self.forgotten = cumulative
        self.rounds += 1
        self.current = reduced
        return reduced

    def _make_cache(self, sp: Split, result: BlendResult) -> dict:
        k = self.clustering.num_clusters
        n = self.images.shape[0]
        blends = result.blended.to(device=self.images.device, dtype=self.images.dtype)
        slot = torch.full((k,), -1, dtype=torch.int64)
        slot[sp.free_ids] = torch.arange(sp.free_ids.numel())
        w_hat = torch.full((n,), math.nan, dtype=result.normalized_weights.dtype)
        w_hat[sp.member_pos] = result.normalized_weights.detach().cpu()
        init = torch.full((k,), math.nan, dtype=torch.float64)
        final = torch.full((k,), math.nan, dtype=torch.float64)
        init[sp.free_ids] = result.initial_terms.detach().cpu().double()
        final[sp.free_ids] = result.final_terms.detach().cpu().double()
        return dict(blends=blends, slot=slot, w_hat=w_hat, init=init, final=final)

    def _from_cache(self, cumulative: torch.Tensor, timings: dict) -> ReducedRetainSet:
        t0 = time.perf_counter()
        sp = split_clusters(self.clustering, cumulative)
        t1 = time.perf_counter()
        c = self._cache
        slot = c["slot"][sp.free_ids]
        # the free set only shrinks as the forget set grows, so every free cluster has a cached blend
        blended = c["blends"][slot.to(c["blends"].device)]
        w_hat = c["w_hat"][sp.member_pos]
        timings = dict(timings)
        t2 = time.perf_counter()
        timings.update(split=t1 - t0)
        # a cache exists only after round 0, so the previous round's settings describe these blends
        settings = {**self.current.settings, "round": self.rounds, "cached_from_round": 0}
        reduced = assemble_reduced(self.images, self.labels, cumulative, self.clustering, sp, blended, w_hat,
                                   c["init"][sp.free_ids], c["final"][sp.free_ids], timings, settings, [])
        timings["blend"] = time.perf_counter() - t2
        reduced.timings = timings
        return reduced
