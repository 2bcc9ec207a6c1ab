"""A-AMU under DistributedDataParallel on 2 gloo processes: the same numbers as one process."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import fastblend
from fastblend import distributed as fd
from tests._dist import run_ranks

C = 3  # classes
B = 5  # global retain batch: 2 + 3 rows on 2 ranks (unequal parts on purpose)


def _data(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sets = {}
    for name, n in (("retain", 23), ("forget", 17), ("unseen", 30)):
        sets[f"{name}_x"] = torch.randn(n, 1, 6, 6, generator=g)
        sets[f"{name}_y"] = torch.arange(n) % C
    return sets


def _model() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, C))


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _on_each_rank() -> dict:
    """Everything the tests below compare, in one 2-process run (spawning ranks is the slow part)."""
    return {"mmd": _gathered_mmd(), "accelerator": _accelerated_steps(True), "refused": _local_batch_size(),
            "batchnorm": _unlearned_batchnorm(), "streamed": _unlearned_streamed(),
            "plain": _accelerated_steps(False), "unused": _unused_parameter(),
            "image_odds": _accelerated_steps(True, image_odds=True),
            "anchor": _accelerated_steps(True, anchor=True), "matched": _unlearned_matched(True),
            "autostop": _auto_stopped(), "direct_stop": _direct_stop(), "sharded_loader": _sharded_loader(),
            **{m: _unlearned(m, wrap=(m == "finetune")) for m in METHODS}}


@pytest.fixture(scope="module")
def ranks() -> list[dict]:
    return run_ranks(_on_each_rank, 2)


# ---- (a) the MMD of gathered rows ------------------------------------------------------------------
def _logits(m: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, C, generator=g, dtype=torch.float64), torch.arange(m) % C


def _gathered_mmd():
    (zf, yf), (zu, yu) = _logits(11, 1), _logits(9, 2)  # the global batches, the same on every rank
    part = fd.row_shard(zf.shape[0])
    local = zf[part].clone().requires_grad_(True)
    unseen = fd.all_gather_rows(zu[fd.row_shard(zu.shape[0])])
    mmd = fastblend.quantile_mmd(fd.all_gather_rows_with_grad(local), yf, unseen, yu, backend="torch")
    mmd.backward()
    return float(mmd), local.grad, (part.start, part.stop)


def test_mmd_of_gathered_rows_equals_single_process(ranks):
    results = [r["mmd"] for r in ranks]
    (zf, yf), (zu, yu) = _logits(11, 1), _logits(9, 2)
    whole = zf.clone().requires_grad_(True)
    ref = fastblend.quantile_mmd(whole, yf, zu, yu, backend="torch")
    ref.backward()
    ref = ref.detach()
    for value, grad, (start, stop) in results:
        assert value == float(ref)  # float64 and the same rows in the same order: bit for bit
        # each rank's rows receive P times their single-process gradient (DDP averages it back)
        torch.testing.assert_close(grad, 2 * whole.grad[start:stop])
    assert results[0][2] == (0, 5) and results[1][2] == (5, 11)


# ---- (b) AAMUStep steps with a user-wrapped DDP model ---------------------------------------------
STEPS = 3


def _accelerated_steps(distributed: bool, image_odds: bool = False, anchor: bool = False) -> list[torch.Tensor]:
    d = _data()
    model = _model()
    net = DistributedDataParallel(model) if distributed else model
    # the per-image log-odds term (docs/method.md §7.10): each forget row against its own target, read by row index
    odds = {"odds_weight": 0.5, "odds_pairing": "image",
            "forget_odds_target": torch.linspace(-2, 1, 17, dtype=torch.float64)} if image_odds else {}
    if anchor:  # the held-out anchor (§7.9): the unseen images and fixed logits of another model, so it pulls at once
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(9)
            other = nn.Sequential(nn.Flatten(), nn.Linear(36, C))
        with torch.no_grad():
            odds.update(anchor=(d["unseen_x"], other(d["unseen_x"])), anchor_weight=2.0)
    acc = fastblend.AAMUStep(net, (d["forget_x"], d["forget_y"]), (d["unseen_x"], d["unseen_y"]), batch_size=B,
                             seed=7, forget_batch_factor=3, unseen_batch_factor=3, **odds)  # 15 rows: 7 + 8
    opt = torch.optim.SGD(model.parameters(), lr=0.5)  # plain SGD: a wrong gradient scale shows at once
    for step in range(STEPS):
        idx = torch.arange(step * B, (step + 1) * B)
        part = fd.row_shard(B) if distributed else slice(0, B)
        x, y = d["retain_x"][idx][part], d["retain_y"][idx][part]
        out = acc.loss(F.cross_entropy(net(x), y, reduction="none"))
        opt.zero_grad()
        out.total.backward()
        opt.step()
    return _params(model)


def test_aamu_step_under_ddp_equals_single_process(ranks):
    single = _accelerated_steps(False)
    start = _params(_model())
    assert any(not torch.equal(a, b) for a, b in zip(single, start))  # training moved the weights
    for params in (r["accelerator"] for r in ranks):
        for got, want in zip(params, single):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_the_per_image_odds_term_under_ddp_equals_single_process(ranks):
    single = _accelerated_steps(False, image_odds=True)
    without = _accelerated_steps(False)
    assert any(not torch.allclose(a, b) for a, b in zip(single, without))  # the term changed the steps
    for params in (r["image_odds"] for r in ranks):
        for got, want in zip(params, single):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_the_anchor_under_ddp_equals_single_process(ranks):
    single = _accelerated_steps(False, anchor=True)
    without = _accelerated_steps(False)
    assert any(not torch.allclose(a, b) for a, b in zip(single, without))  # the anchor changed the steps
    for params in (r["anchor"] for r in ranks):
        for got, want in zip(params, single):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def _unlearned_matched(wrap: bool) -> list[torch.Tensor]:
    """unlearn with the difficulty-matched recipe (fixed matched target, per-image log-odds, anchor; §7.10)."""
    d = _data()
    model = _model()
    cfg = {**fastblend.matched_recipe("a_finetune"), "epochs": 1, "batch_size": B, "forget_batch_factor": 3}
    res = fastblend.unlearn("a_finetune", DistributedDataParallel(model) if wrap else model,
                            (d["retain_x"], d["retain_y"]), (d["forget_x"], d["forget_y"]),
                            unseen=(d["unseen_x"], d["unseen_y"]), config=cfg, seed=4)
    assert res.info["anchor"]["rows"] == 30
    return _params(res.model) + [torch.tensor(res.losses), torch.tensor(res.steps)]


def test_the_matched_recipe_under_ddp_equals_single_process(ranks):
    single = _unlearned_matched(False)
    for r, out in enumerate(ranks):
        for got, want in zip(out["matched"], single):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=f"rank {r}")


def test_a_plain_model_under_a_process_group_trains_alone_on_each_rank(ranks):
    single = _accelerated_steps(False)  # one process; on each rank the same whole batches, no DDP wrapper
    for params in (r["plain"] for r in ranks):
        for got, want in zip(params, single):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_aamu_step_refuses_a_local_batch_size_under_ddp(ranks):
    assert "global retain batch size" in ranks[0]["refused"]


def _local_batch_size() -> str:
    d = _data()
    net = DistributedDataParallel(_model())
    acc = fastblend.AAMUStep(net, (d["forget_x"], d["forget_y"]), (d["unseen_x"], d["unseen_y"]), batch_size=3)
    try:
        acc.loss(F.cross_entropy(net(d["retain_x"][:3]), d["retain_y"][:3], reduction="none"))
    except ValueError as exc:
        return str(exc)
    return ""


def test_unlearn_refuses_a_retain_loader_sharded_by_a_distributed_sampler(ranks):
    # unlearn keeps each rank's part of every global retain batch: a loader whose DistributedSampler gives each rank
    # other rows would lose most of them. With batches above the step's B it used to be refused only from inside the
    # step; once the loader's batch became B it ran on half the rows without a word
    for r in ranks:
        assert "DistributedSampler" in r["sharded_loader"] and r["sharded_loader"].startswith("unlearn: ")


def _sharded_loader() -> str:
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
    d = _data()
    data = TensorDataset(d["retain_x"], d["retain_y"])
    loader = DataLoader(data, batch_size=8, sampler=DistributedSampler(data, shuffle=False))
    try:
        fastblend.unlearn("a_finetune", _model(), loader, (d["forget_x"], d["forget_y"]),
                          unseen=(d["unseen_x"], d["unseen_y"]), config={"epochs": 1})
    except ValueError as exc:
        return str(exc)
    return ""


# ---- (c) unlearn(...) under DDP ------------------------------------------------------------------------
METHODS = ("a_finetune", "finetune", "a_neggrad_plus")


def _unlearned(method: str, wrap: bool, **more) -> list[torch.Tensor]:
    d = _data()
    model = _model()
    if wrap:
        model = DistributedDataParallel(model)
    cfg = {"epochs": 1, "batch_size": B, "optimizer": "sgd", "lr": 0.2, "momentum": 0.0, "weight_decay": 0.0,
           "schedule": "constant", "warmup_epochs": 0, **more}
    if method.startswith("a_"):
        cfg.update(forget_batch_factor=3, unseen_batch_factor=3)
    res = fastblend.unlearn(method, model, (d["retain_x"], d["retain_y"]), (d["forget_x"], d["forget_y"]),
                            unseen=(d["unseen_x"], d["unseen_y"]), config=cfg, seed=4)
    assert not isinstance(res.model, DistributedDataParallel)
    return _params(res.model) + [torch.tensor(res.losses), torch.tensor(res.steps)]


def test_unlearn_under_ddp_equals_single_process(ranks):
    for method in METHODS:
        single = _unlearned(method, wrap=False)
        for r, out in enumerate(ranks):
            assert len(out[method]) == len(single)
            for got, want in zip(out[method], single):
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=f"{method} rank {r}")


class _CountingRetain(torch.utils.data.Dataset):
    """The retain tensors as a map-style Dataset that counts the rows read (a streamed retain set)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y, self.read = x, y, 0

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int):
        self.read += 1
        return self.x[i], int(self.y[i])


def _unlearned_streamed() -> tuple[list[torch.Tensor], int]:
    d = _data()
    retain = _CountingRetain(d["retain_x"], d["retain_y"])
    cfg = {"epochs": 1, "batch_size": B, "optimizer": "sgd", "lr": 0.2, "momentum": 0.0, "weight_decay": 0.0,
           "schedule": "constant", "warmup_epochs": 0, "forget_batch_factor": 3, "unseen_batch_factor": 3,
           "request": "sample"}  # a Dataset without a labels attribute: "auto" would not read its labels either
    res = fastblend.unlearn("a_finetune", _model(), retain, (d["forget_x"], d["forget_y"]),
                            unseen=(d["unseen_x"], d["unseen_y"]), config=cfg, seed=4)
    return _params(res.model) + [torch.tensor(res.losses), torch.tensor(res.steps)], retain.read


def test_a_streamed_retain_set_is_read_in_parts_under_ddp(ranks):
    single = _unlearned("a_finetune", wrap=False, request="sample")  # the same rows as tensors, one process
    reads = []
    for r, out in enumerate(ranks):
        params, read = out["streamed"]
        reads.append(read)
        for got, want in zip(params, single):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=f"rank {r}")
    # batches of 5, 5, 5, 5 and 3 rows: rank 0 reads 2+2+2+2+1 of them, rank 1 the other 3+3+3+3+2 (each
    # rank also reads one row up front, the shape probe); reading whole batches would be 23 + 1 on each
    assert reads == [9 + 1, 14 + 1]


class _WithUnused(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = _model()
        self.spare = nn.Linear(2, 2)  # never used in forward: DDP needs find_unused_parameters=True

    def forward(self, x):
        return self.net(x)


def _unused_parameter() -> str:
    d = _data()
    model = DistributedDataParallel(_WithUnused(), find_unused_parameters=True)
    try:
        fastblend.unlearn("finetune", model, (d["retain_x"], d["retain_y"]), (d["forget_x"], d["forget_y"]),
                          config={"epochs": 1, "batch_size": B, "warmup_epochs": 0}, seed=4)
    except RuntimeError as exc:
        return str(exc)[:200]
    return "ok"


def test_unlearn_keeps_the_users_ddp_options(ranks):
    # the user's wrapper says some parameters are unused; unlearn's own wrapper must say so too
    assert [r["unused"] for r in ranks] == ["ok", "ok"]


def _unlearned_batchnorm() -> list[torch.Tensor]:
    d = _data()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, C))
    # plain fine-tuning: the last forward of the run is a retain forward, on each rank's own part
    res = fastblend.unlearn("finetune", model, (d["retain_x"], d["retain_y"]), (d["forget_x"], d["forget_y"]),
                            config={"batch_size": B, "epochs": 1}, seed=4)
    return [t.detach().clone() for t in res.model.state_dict().values()]


def test_batchnorm_model_under_ddp_is_the_same_on_every_rank(ranks):
    # each rank's part moves the running statistics its own way; rank 0's are kept on every rank
    for got, want in zip(ranks[1]["batchnorm"], ranks[0]["batchnorm"]):
        assert torch.equal(got, want)


# ---- the auto stop: every rank stops at the same step ------------------------------------------------
class _RankStop(fastblend.AutoStop):
    """An AutoStop whose answer differs by rank: rank 0 stops after 3 steps, rank 1 never would."""

    def __call__(self, model, step=None, seconds=None):
        super().__call__(model, step, seconds)
        self.stopped = fd.rank() == 0 and step >= 3
        return self.stopped


def _auto_stopped() -> dict:
    d = _data()
    cfg = {"epochs": 3, "batch_size": B, "optimizer": "sgd", "lr": 0.2, "momentum": 0.0, "weight_decay": 0.0,
           "schedule": "constant", "warmup_epochs": 0, "forget_batch_factor": 3, "unseen_batch_factor": 3}
    stop = _RankStop((d["forget_x"], d["forget_y"]), (d["unseen_x"], d["unseen_y"]), kind="sample", evaluations=15)
    res = fastblend.unlearn("a_finetune", _model(), (d["retain_x"], d["retain_y"]), (d["forget_x"], d["forget_y"]),
                            unseen=(d["unseen_x"], d["unseen_y"]), config=cfg, seed=4, stop=stop, eval_every=1)
    return {"steps": res.steps, "params": _params(res.model)}


def test_the_auto_stop_ends_every_rank_at_the_same_step(ranks):
    steps = [out["autostop"]["steps"] for out in ranks]
    assert steps == [3, 3]  # rank 0's answer holds on every rank: no rank trains on alone (a hang under DDP)
    for got, want in zip(ranks[1]["autostop"]["params"], ranks[0]["autostop"]["params"]):
        torch.testing.assert_close(got, want)


def _direct_stop() -> tuple[list[bool], bool]:
    """A hand-written loop calls AutoStop on every rank; the ranks' rules disagree on purpose (rank 0's slack
    lets anything pass, rank 1's none): every rank gets rank 0's answer."""
    d = _data()
    stop = fastblend.AutoStop((d["forget_x"], d["forget_y"]), (d["unseen_x"], d["unseen_y"]), kind="sample",
                              slack=100.0 if fd.rank() == 0 else 0.0, match_z=1.0 if fd.rank() == 0 else 0.0,
                              z=0.0, max_drop=0.0)
    model = _model()
    stop.start(model)
    answers = [stop(model, step) for step in (0, 1, 2)]
    return answers, stop.history[-1].done  # the rank's own rule


def test_a_direct_auto_stop_answers_rank_0s_decision_on_every_rank(ranks):
    assert [out["direct_stop"][0] for out in ranks] == [[False, True, True], [False, True, True]]
    assert [out["direct_stop"][1] for out in ranks] == [True, False]  # rank 1's own rule said not done
