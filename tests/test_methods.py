"""Tests of fastblend.methods on small synthetic tasks (a 2-hidden-layer MLP on Gaussian blobs)."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

from fastblend.methods import (
    AFinetuneConfig,
    FinetuneConfig,
    RetrainConfig,
    ScrubConfig,
    SSDConfig,
    accelerated,
    available_methods,
    config_class,
    presets,
    train_model,
    unlearn,
)
from fastblend.methods.base import kd_loss, make_scheduler
from fastblend.methods.sparse import alpha_at

from ._support import FP32_MULTISTEP, Tol, assert_close

C, D = 4, 16
# Tighter than the float32 row's atol: one closed-form step (SSD), or the very same float32 updates
# made through another call structure, leave no room for drift near zero.
SAME_UPDATES = Tol(rtol=1e-5, atol=1e-6)


def _blobs(n: int, g: torch.Generator, centers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.randint(0, C, (n,), generator=g)
    return centers[y] + torch.randn(n, D, generator=g), y


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(D, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, C))


def _acc(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean()) * 100


@pytest.fixture(scope="module")
def noisy_task():
    """Blobs; a 10% forget set with wrong labels that the model has memorised (training stops once
    it fits 95% of them, so nothing is saturated)."""
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(C, D, generator=g) * 1.2
    xr, yr = _blobs(400, g, centers)
    xf, yf_true = _blobs(40, g, centers)
    yf = (yf_true + 1 + torch.randint(0, C - 1, (40,), generator=g)) % C
    xu, yu = _blobs(300, g, centers)
    net = _mlp()
    x, y = torch.cat([xr, xf]), torch.cat([yr, yf])
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(2000):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
        if _acc(net, xf, yf) >= 95:
            break
    assert _acc(net, xf, yf) >= 95 and _acc(net, xr, yr) >= 99
    return dict(model=net, retain=(xr, yr), forget=(xf, yf), unseen=(xu, yu))


# Small-demo settings (the paper's epoch counts, docs/method.md, are for CIFAR / ResNet).
DEMO = {
    "retrain": dict(epochs=10, lr=0.05),
    "finetune": dict(epochs=5, lr=0.1),
    "neggrad_plus": dict(epochs=2, beta=0.1),
    "scrub": dict(epochs=4, max_epochs=2, lr=0.05),
    "l1_sparse": dict(epochs=3, lr=0.05),
    "bad_teacher": dict(epochs=8, lr=0.02),
    "ssd": dict(alpha=50.0),
    "distill": dict(epochs=10, lr=0.05),
    "prune": dict(epochs=5, lr=0.05, sparsity=0.8),
}


@pytest.mark.parametrize("method", sorted(DEMO))
def test_base_method_forgets_and_keeps_retain(noisy_task, method):
    t = noisy_task
    before = copy.deepcopy(t["model"].state_dict())
    res = unlearn(method, t["model"], t["retain"], t["forget"], config=DEMO[method])
    # forget accuracy (on the memorised wrong labels) drops by >= 30 points; retain (100%) stays >= 90%
    assert _acc(res.model, *t["forget"]) <= 65.0
    assert _acc(res.model, *t["retain"]) >= 90.0
    assert res.method == method and res.seconds > 0 and res.steps > 0
    assert all(math.isfinite(v) for v in res.losses)
    # the input model is untouched
    for k, v in t["model"].state_dict().items():
        assert torch.equal(v, before[k])


class _Recorder:
    """Shared (not copied by deepcopy) list of every input a model saw."""

    def __init__(self):
        self.seen: list[torch.Tensor] = []

    def __deepcopy__(self, memo):
        return self


class _RecordingMLP(nn.Module):
    def __init__(self, recorder: _Recorder):
        super().__init__()
        self.net = _mlp()
        self.recorder = recorder

    def forward(self, x):
        self.recorder.seen.append(x.detach().clone())
        return self.net(x)


def _marked(n: int, base: float, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs whose feature 0 is ``base + i`` (a marker that identifies each row)."""
    x = torch.randn(n, D, generator=g)
    x[:, 0] = base + torch.arange(n, dtype=torch.float32)
    return x, torch.randint(0, C, (n,), generator=g)


def test_retrain_never_sees_forget_data():
    g = torch.Generator().manual_seed(1)
    retain, forget = _marked(100, 0.0, g), _marked(30, 1000.0, g)
    rec = _Recorder()
    res = unlearn("retrain", _RecordingMLP(rec), retain, forget, config=dict(epochs=2))
    seen = torch.cat(rec.seen)[:, 0]
    assert seen.numel() >= 200 and (seen >= 999).sum() == 0
    assert res.steps == 2 * math.ceil(100 / 64)
    # the same probe catches a method that does read the forget set
    rec.seen.clear()
    unlearn("neggrad_plus", _RecordingMLP(rec), retain, forget, config=dict(epochs=1))
    assert (torch.cat(rec.seen)[:, 0] >= 999).any()


def test_retrain_is_a_fresh_model(noisy_task):
    t = noisy_task
    res = unlearn("retrain", t["model"], t["retain"], t["forget"], config=dict(epochs=1, lr=1e-8), seed=3)
    w_new = res.model[0].weight
    assert not torch.allclose(w_new, t["model"][0].weight)
    again = unlearn("retrain", t["model"], t["retain"], t["forget"], config=dict(epochs=1, lr=1e-8), seed=3)
    assert torch.equal(again.model[0].weight, w_new)


def test_ssd_dampens_exactly_the_selected_parameters():
    g = torch.Generator().manual_seed(2)
    lin = nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(2, 3, generator=g))
        lin.bias.copy_(torch.randn(2, generator=g))
    xr, yr = torch.randn(12, 3, generator=g), torch.randint(0, 2, (12,), generator=g)
    xf, yf = torch.randn(5, 3, generator=g) * 3, torch.randint(0, 2, (5,), generator=g)
    alpha, lam = 1.5, 0.7

    def sq_grad(x, y):  # float64 importance from one batch
        w, b = lin.weight.double().detach().requires_grad_(), lin.bias.double().detach().requires_grad_()
        F.cross_entropy(x.double() @ w.T + b, y).backward()
        return [w.grad ** 2, b.grad ** 2]

    i_f = sq_grad(xf, yf)
    i_d = sq_grad(torch.cat([xr, xf]), torch.cat([yr, yf]))
    expected, n_sel = [], 0
    for p, f_, d_ in zip((lin.weight, lin.bias), i_f, i_d):
        ratio = f_ / (alpha * d_)
        assert ((ratio - 1).abs() > 0.01).all(), "constructed case must not sit on the selection boundary"
        sel = f_ > alpha * d_
        n_sel += int(sel.sum())
        expected.append(torch.where(sel, p.double() * (lam * d_ / f_).clamp(max=1), p.double()))
    assert 0 < n_sel < 8, "the case must select some parameters and leave others"
    # one batch each: batch_size covers retain ∪ forget
    res = unlearn("ssd", lin, (xr, yr), (xf, yf), config=SSDConfig(alpha=alpha, lam=lam, batch_size=64))
    assert res.info["ssd_selected"] == n_sel
    assert_close(res.model.weight, expected[0], tol=SAME_UPDATES)
    assert_close(res.model.bias, expected[1], tol=SAME_UPDATES)


def test_prune_is_permanent_and_sparse(noisy_task):
    t = noisy_task
    res = unlearn("prune", t["model"], t["retain"], t["forget"], config=dict(epochs=1, sparsity=0.95))
    names = [n for n, _ in res.model.named_parameters()]
    assert not any(n.endswith("_orig") for n in names)
    assert not any(m._forward_pre_hooks for m in res.model.modules())
    weights = torch.cat([m.weight.flatten() for m in res.model if isinstance(m, nn.Linear)])
    assert abs(float((weights == 0).float().mean()) - 0.95) < 0.005


def test_l1_alpha_schedule():
    assert alpha_at(1e-4, 0, 1, True) == 1e-4  # E = 1: no division by zero
    assert [alpha_at(1.0, e, 3, True) for e in range(3)] == [1.0, 0.5, 0.0]
    assert alpha_at(1.0, 2, 3, False) == 1.0


def test_kd_loss_matches_kl_div():
    s, t = torch.randn(7, 5), torch.randn(7, 5)
    ref = F.kl_div(F.log_softmax(s / 2, 1), F.softmax(t / 2, 1), reduction="batchmean") * 4
    torch.testing.assert_close(kd_loss(s, t, 2.0), ref)
    torch.testing.assert_close(kd_loss(s, t, 2.0, reduction="none").mean(), ref)


def test_cosine_schedule_with_warmup():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = make_scheduler(opt, FinetuneConfig(epochs=4, warmup_epochs=1), total_steps=8, steps_per_epoch=2)
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:3] == [0.5, 1.0, 1.0]  # linear warm-up, then cosine from the full lr
    assert all(a > b for a, b in zip(lrs[2:], lrs[3:])) and lrs[-1] > 0
    assert lrs[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 5 / 6)))


def test_configs_hold_the_spec_defaults():
    ft = FinetuneConfig()
    assert (ft.lr, ft.momentum, ft.weight_decay, ft.epochs, ft.warmup_epochs, ft.schedule) == \
        (0.04, 0.502, 0.0014, 50, 5, "cosine")
    rt = RetrainConfig()
    assert (rt.lr, rt.momentum, rt.weight_decay, rt.epochs) == (0.1, 0.9, 5e-4, 100)
    sc = ScrubConfig()
    assert (sc.lr, sc.T, sc.epochs, sc.max_epochs, sc.ce_weight, sc.kl_weight) == (0.01, 2.0, 15, 5, 0.99, 0.001)
    a = AFinetuneConfig()
    assert (a.optimizer, a.lr, a.weight_decay, a.epochs, a.batch_size, a.lam, a.k, a.kappa, a.sigma) == \
        ("adam", 2.4e-4, 0.0, 1, 64, 34.0, 2.0, 60.0, 1.0)
    assert (a.forget_batch_factor, a.unseen_batch_factor) == (4, 4)
    s = config_class("a_sparse")()
    assert (s.alpha, s.lr) == (1e-4, 1e-4)
    ssd = SSDConfig()
    assert (ssd.alpha, ssd.lam) == (10.0, 1.0)
    assert (config_class("a_scrub")().forget_weight, config_class("a_scrub")().max_epochs) == (0.2, 1)
    assert config_class("l1_sparse")().epochs == 30 and config_class("bad_teacher")().epochs == 20


def test_presets_and_names():
    assert presets("cinic10-resnet18", "a_finetune")["lr"] == 1e-4
    assert presets("cifar10-resnet50", "a_finetune")["lr"] == 2.4e-4
    assert presets("svhn", "finetune")["lr"] == 0.04
    table = presets("cinic10-resnet50")
    assert set(table) == set(available_methods()) and table["a_sparse"]["lr"] == 1e-4
    assert AFinetuneConfig(**table["a_finetune"]).lr == 1e-4
    with pytest.raises(ValueError, match="presets: dataset"):
        presets("mnist-resnet18", "finetune")
    with pytest.raises(ValueError, match="presets: arch"):
        presets("cifar10-vit", "finetune")
    assert accelerated("finetune") == "a_finetune" and accelerated("scrub") == "a_scrub"
    assert accelerated("l1_sparse") == "a_sparse" and accelerated("CF") == "a_finetune"
    for m in ("retrain", "ssd", "distill"):
        with pytest.raises(ValueError, match="cannot be accelerated"):
            accelerated(m)
    assert {"retrain", "finetune", "neggrad_plus", "scrub", "l1_sparse", "bad_teacher", "ssd", "distill",
            "prune", "a_finetune", "a_sparse", "a_scrub"} <= set(available_methods())


def test_train_model_fits_the_data(noisy_task):
    t = noisy_task
    fresh = _mlp(seed=1)
    trained = train_model(fresh, t["retain"], config=dict(epochs=5, lr=0.05, warmup_epochs=1))
    assert trained is not fresh and not trained.training
    assert _acc(trained, *t["retain"]) >= 95.0 and _acc(fresh, *t["retain"]) < 60.0


def test_config_forms(noisy_task):
    t = noisy_task
    args = (t["model"], t["retain"], t["forget"])
    res = unlearn("finetune", *args, config=dict(epochs=1, lr=0.01))
    assert isinstance(res.config, FinetuneConfig) and res.config.lr == 0.01 and res.config.momentum == 0.502
    res = unlearn("finetune", *args, config=FinetuneConfig(epochs=1))
    assert res.config.epochs == 1 and len(res.losses) == 1
    with pytest.raises(ValueError, match="unlearn: unknown config keys"):
        unlearn("finetune", *args, config=dict(epochs=1, learning_rate=0.1))
    with pytest.raises(TypeError, match="unlearn: config must be"):
        unlearn("finetune", *args, config=ScrubConfig())
    with pytest.raises(ValueError, match="unlearn: config.epochs"):
        unlearn("finetune", *args, config=dict(epochs=0))


def test_deterministic_given_seed(noisy_task):
    t = noisy_task
    run = lambda seed: unlearn("scrub", t["model"], t["retain"], t["forget"],  # noqa: E731
                               config=dict(epochs=2, max_epochs=1), seed=seed).model
    a, b, c = run(5), run(5), run(6)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters()))


def test_inplace(noisy_task):
    t = noisy_task
    model = copy.deepcopy(t["model"])
    res = unlearn("finetune", model, t["retain"], t["forget"], config=dict(epochs=1, inplace=True))
    assert res.model is model


def test_data_forms_agree(noisy_task):
    t = noisy_task
    (xr, yr), forget = t["retain"], t["forget"]
    cfg = dict(epochs=1)
    ref = unlearn("finetune", t["model"], (xr, yr), forget, config=cfg).model
    for retain in (TensorDataset(xr, yr), Subset(TensorDataset(xr, yr), list(range(len(yr))))):
        got = unlearn("finetune", t["model"], retain, TensorDataset(*forget), config=cfg).model
        for pa, pb in zip(ref.parameters(), got.parameters()):
            assert torch.equal(pa, pb)
    loader = DataLoader(TensorDataset(xr, yr), batch_size=50, shuffle=False)
    res = unlearn("finetune", t["model"], loader, forget, config=cfg)
    assert res.steps == 8


def test_fuse_forward_matches_separate_forwards(noisy_task):
    t = noisy_task
    cfg = dict(epochs=1, beta=0.1)
    a = unlearn("neggrad_plus", t["model"], t["retain"], t["forget"], config=cfg).model
    b = unlearn("neggrad_plus", t["model"], t["retain"], t["forget"], config={**cfg, "fuse_forward": True}).model
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert_close(pa, pb, tol=FP32_MULTISTEP)


def test_fuse_forward_refused_with_batchnorm():
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(80, D, generator=g), torch.randint(0, C, (80,), generator=g)
    torch.manual_seed(0)
    bn = nn.Sequential(nn.Linear(D, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, C))
    cfg = dict(epochs=1, batch_size=16, beta=0.1)
    plain = unlearn("neggrad_plus", bn, (x[:60], y[:60]), (x[60:], y[60:]), config=cfg).model
    with pytest.warns(UserWarning, match="fuse_forward ignored"):
        fused = unlearn("neggrad_plus", bn, (x[:60], y[:60]), (x[60:], y[60:]),
                        config={**cfg, "fuse_forward": True}).model
    for pa, pb in zip(plain.parameters(), fused.parameters()):
        assert torch.equal(pa, pb)


def test_micro_batch_matches_whole_batch_forward():
    from fastblend.models import ConvNet3

    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(72, 1, 8, 8, generator=g), torch.randint(0, 3, (72,), generator=g)
    ux, uy = torch.randn(40, 1, 8, 8, generator=g), torch.randint(0, 3, (40,), generator=g)
    torch.manual_seed(0)
    net = ConvNet3(in_channels=1, num_classes=3, image_size=8, width=8)
    # SGD: no Adam amplification of rounding; the paper's recipe (the matched one's anchor would double the forwards)
    cfg = dict(batch_size=8, optimizer="sgd", lr=0.05, momentum=0.0, request="sample")
    whole = unlearn("a_finetune", net, (x[:56], y[:56]), (x[56:], y[56:]), unseen=(ux, uy), config=cfg).model
    micro = unlearn("a_finetune", net, (x[:56], y[:56]), (x[56:], y[56:]), unseen=(ux, uy),
                    config={**cfg, "micro_batch": 5}).model
    changed = False
    for pw, pm, p0 in zip(whole.parameters(), micro.parameters(), net.parameters()):
        assert_close(pm, pw, tol=FP32_MULTISTEP)
        changed |= not torch.equal(pw, p0)
    assert changed
    with pytest.raises(ValueError, match="micro_batch"):
        unlearn("finetune", net, (x[:56], y[:56]), (x[56:], y[56:]), config={"micro_batch": -1})


def test_micro_batch_refused_with_batchnorm():
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(80, D, generator=g), torch.randint(0, C, (80,), generator=g)
    torch.manual_seed(0)
    bn = nn.Sequential(nn.Linear(D, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, C))
    cfg = dict(epochs=1, batch_size=16)
    plain = unlearn("finetune", bn, (x[:60], y[:60]), (x[60:], y[60:]), config=cfg).model
    with pytest.warns(UserWarning, match="micro_batch ignored"):
        split = unlearn("finetune", bn, (x[:60], y[:60]), (x[60:], y[60:]), config={**cfg, "micro_batch": 4}).model
    for pa, pb in zip(plain.parameters(), split.parameters()):
        assert torch.equal(pa, pb)


def test_amp_and_channels_last_on_a_convnet():
    from fastblend.models import ConvNet3

    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(48, 1, 8, 8, generator=g), torch.randint(0, 3, (48,), generator=g)
    torch.manual_seed(0)
    net = ConvNet3(in_channels=1, num_classes=3, image_size=8, width=8)
    base = unlearn("scrub", net, (x[:40], y[:40]), (x[40:], y[40:]), config=dict(epochs=1, batch_size=16))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # CPU autocast may warn about unsupported ops
        fast = unlearn("scrub", net, (x[:40], y[:40]), (x[40:], y[40:]),
                       config=dict(epochs=1, batch_size=16, amp=True, channels_last=True, fuse_forward=True))
    assert all(math.isfinite(v) for v in fast.losses)
    assert abs(fast.losses[0] - base.losses[0]) < 0.1 * (1 + abs(base.losses[0]))
    assert fast.model.features[0].weight.is_contiguous(memory_format=torch.channels_last)


# ---------------------------------------------------------------------------------------------
# bad input


def test_bad_inputs(noisy_task):
    t = noisy_task
    m, (xr, yr), (xf, yf) = t["model"], t["retain"], t["forget"]
    with pytest.raises(ValueError, match="unlearn: unknown method"):
        unlearn("forget_everything", m, (xr, yr), (xf, yf))
    with pytest.raises(TypeError, match="unlearn: model must be"):
        unlearn("finetune", "model", (xr, yr), (xf, yf))
    idx = torch.arange(440)
    with pytest.raises(ValueError, match="unlearn: retain and forget must be disjoint"):
        unlearn("finetune", m, (xr, yr, idx[:400]), (xf, yf, idx[390:430]))
    base = TensorDataset(torch.cat([xr, xf]), torch.cat([yr, yf]))
    with pytest.raises(ValueError, match="disjoint"):
        unlearn("finetune", m, Subset(base, range(0, 400)), Subset(base, range(399, 440)))
    with pytest.raises(ValueError, match=r"unlearn: forget labels must be in \[0, 4\)"):
        unlearn("finetune", m, (xr, yr), (xf, yf + 4))
    with pytest.raises(ValueError, match="unlearn: retain labels must be >= 0"):
        unlearn("finetune", m, (xr, yr - 1), (xf, yf))
    with pytest.raises(ValueError, match="unlearn: forget is empty"):
        unlearn("finetune", m, (xr, yr), (xf[:0], yf[:0]))
    with pytest.raises(ValueError, match="unlearn: forget images are on meta but labels on cpu"):
        unlearn("finetune", m, (xr, yr), (xf.to("meta"), yf))
    with pytest.raises(ValueError, match="unlearn: retain has 400 images but 399 labels"):
        unlearn("finetune", m, (xr, yr[:-1]), (xf, yf))
    with pytest.raises(TypeError, match="unlearn: retain images must be a floating-point"):
        unlearn("finetune", m, (xr.long(), yr), (xf, yf))
    with pytest.raises(TypeError, match="unlearn: retain must be a pair"):
        unlearn("finetune", m, xr, (xf, yf))
    with pytest.raises(ValueError, match="unlearn: method 'a_finetune' requires unseen"):
        unlearn("a_finetune", m, (xr, yr), (xf, yf))


# ---------------------------------------------------------------------------------------------
# accelerated methods (A-AMU, docs/method.md §2.4)


@pytest.fixture(scope="module")
def overfit_task():
    """Overlapping blobs; the model memorised its whole training set (forget = a random 60 of it), so
    forget losses sit far below unseen ones: the gap A-AMU's MMD term closes."""
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(C, D, generator=g) * 0.6
    xr, yr = _blobs(300, g, centers)
    xf, yf = _blobs(60, g, centers)
    xu, yu = _blobs(400, g, centers)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(D, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, C))
    x, y = torch.cat([xr, xf]), torch.cat([yr, yf])
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    assert _acc(net, xf, yf) == 100.0 and _acc(net, xu, yu) < 90.0
    return dict(model=net, retain=(xr, yr), forget=(xf, yf), unseen=(xu, yu))


def _mmd(model, forget, unseen) -> float:
    from fastblend.ops import quantile_mmd

    with torch.no_grad():
        return float(quantile_mmd(model(forget[0]), forget[1], model(unseen[0]), unseen[1]))


ACCEL_DEMO = {
    "a_finetune": dict(epochs=3, lr=1e-3),
    "a_sparse": dict(epochs=3, lr=1e-3),
    # Adam as the others: SCRUB's SGD at lr 0.03-0.05 is chaotic on this task (MMD² ratio 0.02-0.98 over
    # seeds 0-7) and at 0.02 barely moves (0.91); with Adam 1e-3 the ratio is 0.017-0.029 and retain
    # accuracy 88.7-91.0% over seeds 0-7 (measured), far inside the bounds below for any seed
    "a_scrub": dict(epochs=3, lr=1e-3, optimizer="adam"),
    "a_neggrad_plus": dict(epochs=3, lr=1e-3),
    "a_bad_teacher": dict(epochs=3, lr=1e-3),
    "a_prune": dict(epochs=3, lr=1e-3, sparsity=0.5),
}


@pytest.mark.parametrize("method", sorted(ACCEL_DEMO))
def test_accelerated_method_matches_forget_to_unseen(overfit_task, method):
    t = overfit_task
    mmd0 = _mmd(t["model"], t["forget"], t["unseen"])
    res = unlearn(method, t["model"], t["retain"], t["forget"], t["unseen"], config=ACCEL_DEMO[method], seed=0)
    # the forget set's loss distribution moves to the unseen one: MMD² falls 5x, forget accuracy
    # (100%) falls by >= 10 points towards the unseen accuracy, retain accuracy stays >= 85%
    assert _mmd(res.model, t["forget"], t["unseen"]) <= 0.2 * mmd0
    assert _acc(res.model, *t["forget"]) <= 90.0
    assert _acc(res.model, *t["retain"]) >= 85.0
    # A-SCRUB's forget pass runs in its first epoch only (max_epochs 1)
    assert res.steps == 3 * math.ceil(300 / 64) + (math.ceil(60 / 64) if method == "a_scrub" else 0)


def test_plain_finetune_leaves_the_gap(overfit_task):
    """Control for the test above: the same optimiser without the MMD term does not close the gap."""
    t = overfit_task
    mmd0 = _mmd(t["model"], t["forget"], t["unseen"])
    cfg = dict(epochs=3, lr=1e-3, optimizer="adam", weight_decay=0.0, schedule="constant", warmup_epochs=0)
    res = unlearn("finetune", t["model"], t["retain"], t["forget"], config=cfg)
    assert _mmd(res.model, t["forget"], t["unseen"]) >= 0.5 * mmd0


def test_a_finetune_is_the_spec_loop(overfit_task):
    """One epoch of ``a_finetune`` equals a literal docs/method.md §2.4 loop built from fastblend.aamu."""
    from fastblend.aamu import AAMULoss, ForgetSampler, UnseenSampler

    t = overfit_task
    (xr, yr), (xf, yf), (xu, yu) = t["retain"], t["forget"], t["unseen"]
    seed = 7
    res = unlearn("a_finetune", t["model"], t["retain"], t["forget"], t["unseen"], seed=seed,
                  config={"request": "sample"})  # the paper's recipe (scattered samples default to §7.10's)

    model = copy.deepcopy(t["model"]).train()
    opt = torch.optim.Adam(model.parameters(), lr=2.4e-4)
    loss_fn = AAMULoss(lam=34.0)
    order = torch.randperm(300, generator=torch.Generator().manual_seed(seed))
    fs = ForgetSampler(60, 256, seed=seed)
    us = UnseenSampler(yu, 256, num_classes=C, seed=seed + 1)
    for b in order.split(64):
        i_f = fs.sample()
        i_u = us.sample(yf[i_f])
        with torch.no_grad():
            logits_u = model(xu[i_u])
        out = loss_fn(F.cross_entropy(model(xr[b]), yr[b], reduction="none"), model(xf[i_f]), yf[i_f],
                      logits_u, yu[i_u])
        opt.zero_grad()
        out.total.backward()
        opt.step()
    for pa, pb in zip(res.model.parameters(), model.parameters()):
        assert_close(pa, pb, tol=SAME_UPDATES)


class _ReducedSet:
    """Duck-typed ReducedRetainSet (what fastblend.condense returns)."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels
        self.is_blended = torch.ones(len(labels), dtype=torch.bool)
        self.source_index = torch.full((len(labels),), -1, dtype=torch.long)

    def __len__(self):
        return len(self.labels)


def test_accelerated_trains_on_the_reduced_set():
    g = torch.Generator().manual_seed(5)
    reduced = _ReducedSet(*_marked(70, 2000.0, g))
    forget, unseen = _marked(30, 1000.0, g), _marked(80, 3000.0, g)
    rec = _Recorder()
    res = unlearn("a_finetune", _RecordingMLP(rec), reduced, forget, unseen,
                  config=dict(epochs=2, fuse_forward=True, request="sample"))  # no set-up forwards of the rows
    assert res.info["reduced_retain"] and res.info["retain_size"] == 70
    assert res.steps == 2 * math.ceil(70 / 64)
    seen = torch.cat(rec.seen)[1:, 0]  # row 0: the output-width probe
    retain_rows = seen[(seen >= 1999) & (seen < 2999)]
    # every reduced-set row is used exactly once per epoch; nothing else is used as retain data
    assert torch.equal(retain_rows.sort().values, (2000 + torch.arange(70.0)).repeat_interleave(2))
    assert set(seen[(seen >= 999) & (seen < 1999)].long().tolist()) <= set(range(1000, 1030))
    unseen_rows = seen[seen >= 2999].long()
    assert unseen_rows.numel() > 0 and set(unseen_rows.tolist()) <= set(range(3000, 3080))


def test_accelerated_needs_unseen_classes_of_the_forget_batch(overfit_task):
    t = overfit_task
    (xu, yu) = t["unseen"]
    keep = yu != t["forget"][1][0]
    with pytest.raises(ValueError, match="unseen pool holds none of the forget classes"):
        unlearn("a_finetune", t["model"], t["retain"], (t["forget"][0][:1], t["forget"][1][:1]),
                (xu[keep], yu[keep]), config=dict(epochs=1))


def test_neggrad_chance_ascent_stops_at_chance_and_is_checked():
    from fastblend.methods.neggrad import NegGradPlus, NegGradPlusConfig

    logits = torch.tensor([[3.0, 0.0, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0], [0.5, 0.0, 0.0, 0.0]], requires_grad=True)
    y = torch.tensor([0, 0, 0])  # row 0 above chance, row 1 below it, row 2 just above (p = 0.35 > 1/4)
    ce = F.cross_entropy(logits, y, reduction="none")
    assert ce[0] < math.log(4) < ce[1] and ce[2] < math.log(4)
    bounded = NegGradPlus(NegGradPlusConfig(beta=0.5, ascent="chance")).forget_loss(None, logits, y, 0, None)
    assert float(bounded.detach()) == pytest.approx(-0.5 * float(ce[0].detach() + ce[2].detach()) / 3)
    bounded.backward()
    assert torch.count_nonzero(logits.grad[1]) == 0 and torch.count_nonzero(logits.grad[0]) > 0
    plain = NegGradPlus(NegGradPlusConfig(beta=0.5)).forget_loss(None, logits, y, 0, None)
    assert float(plain.detach()) == pytest.approx(-0.5 * float(ce.mean().detach()))
    with pytest.raises(ValueError, match="config.ascent must be one of"):
        unlearn("neggrad_plus", _mlp(), (torch.randn(8, D), torch.zeros(8, dtype=torch.long)),
                (torch.randn(4, D), torch.zeros(4, dtype=torch.long)), config={"ascent": "bounded"})


@pytest.mark.parametrize("lacks", [True, False])
def test_amp_on_a_cpu_without_native_half_precision_warns(monkeypatch, lacks):
    # emulated bfloat16 is several times slower than float32 (Blend's matcher 10x on an AVX2 EPYC): say so
    import fastblend._device as device_helpers
    from fastblend import condense
    from fastblend.models import ConvNet3

    monkeypatch.setattr(device_helpers, "cpu_lacks_native", lambda dtype: lacks)
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(48, 1, 8, 8, generator=g), torch.randint(0, 3, (48,), generator=g)
    torch.manual_seed(0)
    net = ConvNet3(in_channels=1, num_classes=3, image_size=8, width=8)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        unlearn("finetune", net, (x[:40], y[:40]), (x[40:], y[40:]), config=dict(epochs=1, batch_size=16, amp=True))
        condense(x, y, torch.arange(40, 48), ipc=4, iterations=1, progress=False, amp=True)
    said = [w for w in seen if "without native instructions" in str(w.message)]
    assert len(said) == (2 if lacks else 0)
    if lacks:
        assert str(said[0].message).startswith("unlearn: config.amp=True runs bfloat16")
        assert "Blend's amp=True" in str(said[1].message)
        assert all(w.filename == __file__ for w in said)  # the caller's line, however deep it was raised


def test_config_dicts_take_0_and_1_for_bools_and_0d_tensors_for_numbers():
    from fastblend.methods.config import resolve_config
    from fastblend.methods.finetune import FinetuneConfig

    cfg = resolve_config({"inplace": 1, "amp": 0, "epochs": torch.tensor(2), "lr": torch.tensor(0.5)},
                         FinetuneConfig, "t")
    assert cfg.inplace is True and cfg.amp is False and cfg.epochs == 2 and isinstance(cfg.epochs, int)
    with pytest.raises(TypeError, match=r"t: config\['inplace'\] must be a bool, got int 2"):
        resolve_config({"inplace": 2}, FinetuneConfig, "t")
