"""Sharded Blend on 2 gloo processes: every rank returns the single-process result."""

from __future__ import annotations

import pytest
import torch

from fastblend import distributed as fd
from fastblend.condensation import BlendIndex, condense
from tests._dist import run_ranks

FORGET = [0, 7, 30, 31, 55]


def _data():
    g = torch.Generator().manual_seed(3)
    return torch.randn(84, 3, 16, 16, generator=g), torch.arange(84) % 3


def _condense(member_chunk=None, distributed=True):
    x, y = _data()
    r = condense(x, y, FORGET, ipc=4, iterations=2, seed=0, progress=False, member_chunk=member_chunk,
                 distributed=distributed)
    idx = BlendIndex.build(x, y, ipc=4, iterations=2, seed=0, member_chunk=member_chunk, distributed=distributed)
    return {"blends": r.blends, "weights": r.blend_weights, "history": r.loss_history, "final": r.final_loss,
            "source_index": r.source_index, "ranks": r.settings["ranks"], "index_blends": idx.blends,
            "index_weights": idx.blend_weights, "index_history": idx.loss_history,
            "index_final": idx.final_terms}


def _on_rank(member_chunk):
    """The collective condense and build on every rank, then rank 0 alone with ``distributed=False``
    (rank 1 goes straight to the barrier: any collective on rank 0 would wait for it forever)."""
    out = _condense(member_chunk)
    out["alone"] = _condense(distributed=False) if fd.rank() == 0 else None
    fd.barrier()
    return out


def test_sharded_blend_on_two_ranks_equals_single_process():
    single = _condense()
    ranks = run_ranks(_on_rank, 2, 12)  # member_chunk=12: chunks within each rank's shard too
    alone = ranks[0]["alone"]  # features, grouping and Blend on one rank only: the single-process result
    assert alone["ranks"] == 1
    assert torch.equal(alone["source_index"], single["source_index"])
    for key in ("blends", "weights", "index_blends", "index_weights", "index_final"):
        torch.testing.assert_close(alone[key], single[key], rtol=1e-5, atol=1e-6, equal_nan=True)
    assert [r["ranks"] for r in ranks] == [2, 2]
    for got in ranks:
        assert torch.equal(got["source_index"], single["source_index"])
        for key in ("blends", "weights", "index_blends", "index_weights", "index_final"):
            torch.testing.assert_close(got[key], single[key], rtol=1e-5, atol=1e-6, equal_nan=True)
        for key in ("history", "index_history"):
            assert got[key] == pytest.approx(single[key], rel=1e-5)
        assert got["final"] == pytest.approx(single["final"], rel=1e-5)
    assert torch.equal(ranks[0]["blends"], ranks[1]["blends"])
    assert ranks[0]["history"] == ranks[1]["history"]
