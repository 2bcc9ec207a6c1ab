"""fastblend.distributed: sharding and gathers, alone and on 2 gloo processes."""

from __future__ import annotations

import pytest
import torch

from fastblend import distributed as fd
from tests._dist import run_ranks


def test_single_process_helpers_are_identities():
    x = torch.randn(3, 2, requires_grad=True)
    assert not fd.is_distributed()
    assert (fd.rank(), fd.world_size(), fd.is_main_process()) == (0, 1, True)
    assert fd.all_gather_rows(x) is x
    assert fd.all_gather_rows_with_grad(x) is x
    assert fd.all_gather_objects({"a": 1}) == [{"a": 1}]
    assert fd.broadcast_object(5) == 5
    fd.barrier()


def test_balanced_shards_balance_and_cover():
    weights = [50, 3, 3, 20, 20, 10, 1, 0]
    shards = fd.balanced_shards(weights, 3)
    assert sorted(i for s in shards for i in s) == list(range(len(weights)))
    totals = [sum(weights[i] for i in s) for s in shards]
    assert max(totals) - min(totals) <= max(weights)
    assert totals == [50, 27, 30] or max(totals) == 50  # LPT: the 50 alone
    assert fd.balanced_shards(weights, 3) == shards  # deterministic
    assert fd.balanced_shards([4], 3) == [[0], [], []]
    assert fd.balanced_shards(torch.tensor([2, 2]), 2) == [[0], [1]]


@pytest.mark.parametrize("parts", [0, -1, 1.5, True])
def test_balanced_shards_refuses_bad_parts(parts):
    with pytest.raises(ValueError, match="parts"):
        fd.balanced_shards([1, 2], parts)


def test_balanced_shards_refuses_negative_weight():
    with pytest.raises(ValueError, match="non-negative"):
        fd.balanced_shards([1, -2], 2)


# ---- two gloo processes ---------------------------------------------------------------------------
def _rows(r: int) -> torch.Tensor:
    # rank 0 holds 3 rows, rank 1 holds 1: unequal sizes on purpose
    g = torch.Generator().manual_seed(100 + r)
    return torch.randn(3 if r == 0 else 1, 2, generator=g, dtype=torch.float64)


def _loss(rows: torch.Tensor) -> torch.Tensor:
    # couples the rows (like the MMD): not a sum of per-row terms
    return (rows.sum(0) ** 2).sum() + rows.prod()


def _gather_on_rank():
    r = fd.rank()
    x = _rows(r).requires_grad_(True)
    gathered = fd.all_gather_rows_with_grad(x)
    loss = _loss(gathered)
    loss.backward()
    return {"rank": r, "world": fd.world_size(), "gathered": gathered.detach(), "grad": x.grad,
            "plain": fd.all_gather_rows(x.detach()), "objects": fd.all_gather_objects(("r", r)),
            "bcast": fd.broadcast_object(f"from {r}")}


def test_gather_with_grad_on_two_ranks_matches_one_process():
    out = run_ranks(_gather_on_rank, 2)
    full = torch.cat([_rows(0), _rows(1)]).requires_grad_(True)
    _loss(full).backward()
    for r, res in enumerate(out):
        assert res["rank"] == r and res["world"] == 2
        torch.testing.assert_close(res["gathered"], full.detach(), rtol=0, atol=0)
        torch.testing.assert_close(res["plain"], full.detach(), rtol=0, atol=0)
        assert res["objects"] == [("r", 0), ("r", 1)]
        assert res["bcast"] == "from 0"
    # each rank's rows get P times the single-process gradient (DDP's averaging divides it back)
    torch.testing.assert_close(out[0]["grad"], 2 * full.grad[:3])
    torch.testing.assert_close(out[1]["grad"], 2 * full.grad[3:])


def _raise_on_rank_one():
    if fd.rank() == 1:
        raise ValueError("boom on rank 1")
    return 0


def test_run_ranks_reports_a_rank_failure():
    with pytest.raises(AssertionError, match="boom on rank 1"):
        run_ranks(_raise_on_rank_one, 2)
