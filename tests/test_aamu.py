"""A-AMU loss, steepening, samplers and the one step (AAMUStep)."""

import pytest
import torch
from torch import nn

import fastblend
from fastblend.ops import reference as ref

from ._support import MMD_VALUE, assert_close


def test_steepen_modes():
    loss = torch.tensor([1.0, 2.0, 4.0])
    assert float(fastblend.steepen(loss)) == pytest.approx((7 / 3) ** 2)
    assert float(fastblend.steepen(loss, "per_sample_sq")) == pytest.approx(21 / 3)
    with pytest.raises(ValueError, match="^steepen: mode"):
        fastblend.steepen(loss, "cube")
    with pytest.raises(ValueError, match="^steepen: per_sample_loss must have shape"):
        fastblend.steepen(loss.mean())


def test_aamu_loss_parts_add_up_and_detach_unseen():
    gen = torch.Generator().manual_seed(0)
    retain = torch.rand(8, generator=gen).requires_grad_()
    fl = torch.randn(32, 10, generator=gen).requires_grad_()
    ul = torch.randn(24, 10, generator=gen).requires_grad_()
    fy, uy = torch.randint(0, 10, (32,), generator=gen), torch.randint(0, 10, (24,), generator=gen)
    crit = fastblend.AAMULoss(lam=34.0)
    out = crit(retain, fl, fy, ul, uy)
    assert isinstance(out, fastblend.AAMULossOutput)
    torch.testing.assert_close(out.total, out.main + 34.0 * out.mmd)
    torch.testing.assert_close(out.main, retain.mean() ** 2)
    assert_close(out.mmd, ref.quantile_mmd(fl.double(), fy, ul.double(), uy).detach(), tol=MMD_VALUE)
    out.total.backward()
    assert retain.grad is not None and fl.grad is not None and ul.grad is None


def test_forget_sampler():
    s = fastblend.ForgetSampler(100, 16, seed=3)
    a, b = s.sample(), fastblend.ForgetSampler(100, 16, seed=3).sample()
    assert torch.equal(a, b) and a.numel() == 16 and a.unique().numel() == 16
    assert not torch.equal(s.sample(), a) or not torch.equal(s.sample(), a)
    idx = torch.tensor([5, 9, 42])
    small = fastblend.ForgetSampler(idx, 16).sample()
    assert sorted(small.tolist()) == [5, 9, 42]
    epoch = torch.cat(list(fastblend.ForgetSampler(50, 16)))
    assert sorted(epoch.tolist()) == list(range(50)) and len(fastblend.ForgetSampler(50, 16)) == 4
    with pytest.raises(ValueError, match="^ForgetSampler: the forget set is empty"):
        fastblend.ForgetSampler(0, 4)
    with pytest.raises(ValueError, match="^ForgetSampler: batch_size"):
        fastblend.ForgetSampler(10, 0)


def test_unseen_sampler_allowed_classes_only():
    gen = torch.Generator().manual_seed(1)
    pool = torch.randint(0, 10, (700,), generator=gen)
    s = fastblend.UnseenSampler(pool, 64, seed=5)
    forget = torch.tensor([2, 7, 7, 2])
    idx = s.sample(forget)
    assert idx.numel() == 64 and idx.unique().numel() == 64
    assert set(pool[idx].tolist()) <= {2, 7}
    assert torch.equal(fastblend.UnseenSampler(pool, 64, seed=5).sample(forget), idx)
    # fewer allowed samples than the batch: all of them, repeated to the fixed batch size
    tiny = torch.tensor([0, 1, 1, 3, 0, 1])
    got = fastblend.UnseenSampler(tiny, 64).sample(torch.tensor([1]))
    assert got.shape == (64,) and sorted(got.unique().tolist()) == [1, 2, 5]
    with pytest.raises(ValueError, match="^UnseenSampler.sample: the unseen pool holds none of the forget classes"):
        fastblend.UnseenSampler(tiny, 4, num_classes=5).sample(torch.tensor([2, 4]))
    with pytest.raises(ValueError, match="^UnseenSampler: unseen_labels must be in"):
        fastblend.UnseenSampler(tiny, 4, num_classes=2)


def test_aamu_step_trains_in_a_plain_loop():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    gen = torch.Generator().manual_seed(2)
    fx, fy = torch.randn(40, 3, 4, generator=gen), torch.randint(0, 4, (40,), generator=gen)
    ux, uy = torch.randn(60, 3, 4, generator=gen), torch.randint(0, 4, (60,), generator=gen)
    rx, ry = torch.randn(32, 3, 4, generator=gen), torch.randint(0, 4, (32,), generator=gen)
    acc = fastblend.AAMUStep(model, (fx, fy), (ux, uy), batch_size=8, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in model.parameters()]
    for x, y in zip(rx.split(8), ry.split(8)):
        out = acc.loss(nn.functional.cross_entropy(model(x), y, reduction="none"))
        opt.zero_grad()
        out.total.backward()
        opt.step()
    assert torch.isfinite(out.total) and out.mmd >= 0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(ValueError, match="^AAMUStep: forget has 40 images but 39 labels"):
        fastblend.AAMUStep(model, (fx, fy[:-1]), (ux, uy))


def test_loss_output_parts_are_detached_for_logging():
    gen = torch.Generator().manual_seed(4)
    retain = torch.rand(8, generator=gen).requires_grad_()
    fl = torch.randn(32, 10, generator=gen).requires_grad_()
    ul, fy, uy = torch.randn(24, 10, generator=gen), torch.randint(0, 10, (32,)), torch.randint(0, 10, (24,))
    out = fastblend.AAMULoss()(retain, fl, fy, ul, uy)
    assert out.total.requires_grad and not out.main.requires_grad and not out.mmd.requires_grad
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        float(out.main), float(out.mmd)
    weighted = fastblend.AAMULoss()(retain, fl, fy, ul, uy, retain_weight=0.5)
    torch.testing.assert_close(weighted.total, 0.5 * out.main + 34.0 * out.mmd)


def test_aamu_step_checks_the_retain_batch_against_batch_size():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    gen = torch.Generator().manual_seed(2)
    fx, fy = torch.randn(400, 3, 4, generator=gen), torch.randint(0, 4, (400,), generator=gen)
    ux, uy = torch.randn(400, 3, 4, generator=gen), torch.randint(0, 4, (400,), generator=gen)
    acc = fastblend.AAMUStep(model, (fx, fy), (ux, uy), batch_size=16)
    with pytest.raises(ValueError, match=r"^AAMUStep.loss: retain_per_sample_loss has 64 samples .*batch_size=16"):
        acc.loss(torch.rand(64))
    acc.loss(torch.rand(10))  # a short last batch is fine
    wide = fastblend.AAMUStep(model, (fx, fy), (ux, uy), batch_size=16, forget_batch_factor=2, unseen_batch_factor=3)
    assert wide.forget_sampler.batch_size == 32 and wide.unseen_sampler.batch_size == 48
    for name in ("forget_batch_factor", "unseen_batch_factor", "unseen_refresh"):
        with pytest.raises(ValueError, match=f"^AAMUStep: {name} must be an int >= 1"):
            fastblend.AAMUStep(model, (fx, fy), (ux, uy), **{name: 0})
    with pytest.raises(ValueError, match="^AAMUStep: micro_batch must be an int >= 0"):
        fastblend.AAMUStep(model, (fx, fy), (ux, uy), micro_batch=-1)


def test_aamu_loss_from_losses_equals_the_logits_path():
    """The data-parallel path gathers per-sample losses; its loss and gradient equal the op's on logits."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(3)
    zf = torch.randn(24, 5, generator=g, dtype=torch.float64, requires_grad=True)
    zu = torch.randn(30, 5, generator=g, dtype=torch.float64)
    yf, yu = torch.arange(24) % 5, torch.arange(30) % 5
    retain = torch.rand(8, generator=g, dtype=torch.float64)
    loss = fastblend.AAMULoss(backend="torch")
    ref = loss(retain, zf, yf, zu, yu, retain_weight=0.99)
    (ref_grad,) = torch.autograd.grad(ref.total, zf)
    out = loss.from_losses(retain, F.cross_entropy(zf, yf, reduction="none"),
                           F.cross_entropy(zu, yu, reduction="none"), retain_weight=0.99)
    (grad,) = torch.autograd.grad(out.total, zf)
    torch.testing.assert_close(out.total, ref.total, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.mmd, ref.mmd, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-8, atol=1e-10)
    bad = F.cross_entropy(zf, yf, reduction="none").detach().clone()
    bad[3] = float("inf")
    assert torch.isnan(loss.from_losses(retain, bad, F.cross_entropy(zu, yu, reduction="none")).mmd)
    for bad_ce in (torch.zeros(0, dtype=torch.float64), torch.zeros(3, 2), torch.arange(3)):
        with pytest.raises(ValueError, match="AAMULoss.from_losses: forget_ce must be a non-empty 1-D floating"):
            loss.from_losses(retain, bad_ce, F.cross_entropy(zu, yu, reduction="none"))


def test_pooled_transform_sees_a_gap_in_level_that_the_paper_transform_cannot():
    """The paper's transform ranks each set against itself, so a forget set whose losses all sit below
    the unseen set's (every u shifted by a constant) gives the same MMD as an unshifted one; the pooled
    transform (docs/method.md §7.3) ranks both sets against their union: its MMD grows with the gap
    and its gradient raises the forget losses."""
    g = torch.Generator().manual_seed(5)
    unseen = torch.rand(64, generator=g, dtype=torch.float64) * 3 + 1.0
    u = torch.log1p(torch.rand(48, generator=g, dtype=torch.float64) * 3 + 1.0)
    forget_level = torch.expm1(u)
    forget_low = torch.expm1(u - 0.6).requires_grad_()  # the same shape of log-losses, 0.6 lower
    retain = torch.rand(8, generator=g, dtype=torch.float64)
    paper, pooled = fastblend.AAMULoss(), fastblend.AAMULoss(transform="pooled")
    torch.testing.assert_close(paper.from_losses(retain, forget_low, unseen).mmd,
                               paper.from_losses(retain, forget_level, unseen).mmd, rtol=1e-6, atol=1e-9)
    low = pooled.from_losses(retain, forget_low, unseen)
    assert float(low.mmd) > 10 * float(pooled.from_losses(retain, forget_level, unseen).mmd)
    (grad,) = torch.autograd.grad(low.total, forget_low)
    assert float(grad.sum()) < 0  # a descent step raises the forget losses towards the unseen level
    # the logits path equals the losses path
    zf = torch.randn(24, 5, generator=g, dtype=torch.float64)
    zu = torch.randn(30, 5, generator=g, dtype=torch.float64)
    yf, yu = torch.arange(24) % 5, torch.arange(30) % 5
    ce = torch.nn.functional.cross_entropy
    torch.testing.assert_close(pooled(retain, zf, yf, zu, yu).mmd,
                               pooled.from_losses(retain, ce(zf, yf, reduction="none"),
                                                  ce(zu, yu, reduction="none")).mmd)
    with pytest.raises(ValueError, match="^AAMULoss: forget labels must be in"):
        pooled(retain, zf, yf + 5, zu, yu)
    for bad in ("joint", 1):
        with pytest.raises(ValueError, match="^AAMULoss: transform must be one of"):
            fastblend.AAMULoss(transform=bad)
    with pytest.raises(ValueError, match="^AAMUStep: transform must be one of"):
        fastblend.AAMUStep(nn.Linear(3, 2), (torch.randn(4, 3), torch.zeros(4, dtype=torch.int64)),
                           (torch.randn(4, 3), torch.zeros(4, dtype=torch.int64)), transform="joint")


def test_pooled_transform_through_unlearn():
    """``config={"transform": "pooled"}`` reaches the step of a packaged accelerated method (it trains
    differently from the paper's transform) and a bad value is refused by the config check."""
    gen = torch.Generator().manual_seed(2)
    rx, ry = torch.randn(64, 12, generator=gen), torch.randint(0, 4, (64,), generator=gen)
    fx, fy = torch.randn(24, 12, generator=gen), torch.randint(0, 4, (24,), generator=gen)
    ux, uy = torch.randn(40, 12, generator=gen), torch.randint(0, 4, (40,), generator=gen)
    torch.manual_seed(0)
    model = nn.Linear(12, 4)
    runs = {t: fastblend.unlearn("a_finetune", model, (rx, ry), (fx, fy), unseen=(ux, uy), seed=0,
                                 config={"transform": t, "batch_size": 16, "lr": 1e-2})
            for t in ("per_set", "pooled")}
    assert runs["pooled"].info["backends"]["quantile_mmd"] == "torch (pooled)"
    assert not torch.equal(runs["pooled"].model.weight, runs["per_set"].model.weight)
    with pytest.raises(ValueError, match="config.transform must be 'per_set' or 'pooled'"):
        fastblend.unlearn("a_finetune", model, (rx, ry), (fx, fy), unseen=(ux, uy), config={"transform": "x"})
