"""Grouping and feature extraction under torch.distributed (2 gloo processes) equal one process."""

from __future__ import annotations

import pytest
import torch

import fastblend
from fastblend import distributed as fd
from fastblend import grouping, kmeans
from tests._dist import run_ranks

IPC = 3


def _data():
    """Five classes of unequal size, clustered features (so k-means has something to find)."""
    g = torch.Generator().manual_seed(7)
    sizes = [40, 25, 31, 12, 22]
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
    labels = labels[torch.randperm(labels.numel(), generator=g)]
    centers = torch.randn(len(sizes), IPC, 6, generator=g) * 4
    sub = torch.randint(0, IPC, (labels.numel(),), generator=g)
    feats = centers[labels, sub] + torch.randn(labels.numel(), 6, generator=g)
    return feats, labels


def _runs(small_chunks: bool) -> dict:
    """Every grouping setting of the test; ``small_chunks`` makes the torch k-means run several chunks."""
    if small_chunks:
        kmeans._CHUNK_ELEMENTS = 300  # chunks [40], [31], [25, 22], [12] (class sizes)
    feats, labels = _data()
    out = {}
    for backend in ("torch", "faiss"):
        for balanced in (False, True):
            c = fastblend.group(feats, labels, IPC, backend=backend, seed=11, balanced=balanced)
            out[(backend, balanced)] = (c.assignment, c.objective, c.meta["iterations"])
    return out


def _group_on_rank() -> dict:
    parts = []
    real = grouping.run_torch

    def spy(*args, **kwargs):
        parts.append(kwargs.get("only"))
        return real(*args, **kwargs)

    grouping.run_torch = spy
    out = _runs(small_chunks=True)
    alone = fastblend.group(*_data(), IPC, backend="torch", seed=11, distributed=False)
    return {"runs": out, "parts": parts[0], "alone": alone.assignment, "rank": fd.rank(), **_features()}


def _features() -> dict:
    x = torch.randn(37, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    ds = torch.utils.data.TensorDataset(x, torch.zeros(37, dtype=torch.long))
    seen = []

    def flat(batch):  # a callable extractor that counts the rows this process embeds
        seen.append(batch.shape[0])
        return batch.flatten(1)

    out = {"tensor": fastblend.extract_features(x, batch_size=8, seed=2),
           "dataset": fastblend.extract_features(ds, batch_size=8, seed=2),
           "flat": fastblend.extract_features(x, extractor=flat, batch_size=8), "embedded": sum(seen)}
    seen.clear()  # one batch for two ranks: rank 0 embeds nothing, yet still takes part in the gather
    out["one_batch"] = fastblend.extract_features(x[:5], extractor=flat, batch_size=8)
    out["one_batch_embedded"] = sum(seen)
    return out


def test_sharded_group_and_features_equal_single_process():
    """One pair of processes (starting them is the slow part) checks both."""
    pytest.importorskip("faiss")
    chunk = kmeans._CHUNK_ELEMENTS
    labels = _data()[1]
    try:
        single = _runs(small_chunks=True)
        n_chunks = len(kmeans.torch_chunks([(labels == c).nonzero().flatten() for c in range(5)], IPC, 6))
    finally:
        kmeans._CHUNK_ELEMENTS = chunk
    assert n_chunks == 4  # the test exercises chunk sharding
    ranks = run_ranks(_group_on_rank, 2)
    for r in ranks:
        for key, (assignment, objective, iterations) in single.items():
            got = r["runs"][key]
            assert torch.equal(got[0], assignment), key
            assert torch.equal(got[1], objective), key
            assert got[2] == iterations, key
        assert torch.equal(r["alone"], single[("torch", False)][0])  # distributed=False: no collectives
    # the two ranks ran disjoint chunks that together cover all of them
    p0, p1 = ranks[0]["parts"], ranks[1]["parts"]
    assert p0 and p1 and not set(p0) & set(p1) and sorted(p0 + p1) == list(range(n_chunks))
    # features: each rank embeds half the batches, then all rows are gathered
    ref = _features()
    for r in ranks:
        assert torch.equal(r["tensor"], ref["tensor"]) and torch.equal(r["dataset"], ref["tensor"])
        assert torch.equal(r["flat"], ref["flat"])
    assert [r["embedded"] for r in ranks] == [16, 21]  # batches [0, 2) and [2, 5) of 8 rows
    for r in ranks:  # fewer batches than ranks: still collective, still the single-process features
        assert torch.equal(r["one_batch"], ref["one_batch"])
    assert [r["one_batch_embedded"] for r in ranks] == [0, 5]  # the batch grid puts batch 0 on rank 1


def test_chunk_seeds_keep_the_first_chunk_and_single_chunk_results():
    # chunk 0 draws from the seed itself: one-chunk inputs cluster exactly as before the per-chunk seeds
    assert kmeans.chunk_seed(11, 0) == 11
    assert len({kmeans.chunk_seed(11, j) for j in range(50)}) == 50
    assert kmeans.chunk_seed(11, 1) != kmeans.chunk_seed(12, 0)


def test_distributed_argument_is_checked():
    with pytest.raises(TypeError, match="^group: distributed must be a bool or None"):
        fastblend.group(*_data(), IPC, distributed="yes")
    with pytest.raises(TypeError, match="^extract_features: distributed must be a bool or None"):
        fastblend.extract_features(torch.zeros(2, 1, 8, 8), distributed=1)
