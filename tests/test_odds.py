"""The log-odds term of A-AMU (``odds_weight``, docs/method.md §7.8)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastblend.aamu import AAMULoss, odds_gap, odds_of_loss
from fastblend.metrics import true_class_log_odds

from ._support import dropin_request


def _logits(n: int, seed: int, scale: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g, dtype=torch.float64) * scale, torch.randint(0, 4, (n,), generator=g)


def test_the_odds_of_a_loss_are_the_true_class_log_odds():
    z, y = _logits(50, 0)
    ce = F.cross_entropy(z, y, reduction="none")
    assert torch.allclose(odds_of_loss(ce), true_class_log_odds(z, y), atol=1e-8)
    # a sample the model is sure of (loss 0 in float64) stays finite, with a finite gradient
    ce0 = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    out = odds_of_loss(ce0)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(ce0.grad).all()


def test_the_gap_is_zero_between_equal_distributions_and_grows_with_a_shift():
    z, y = _logits(64, 1)
    phi = true_class_log_odds(z, y)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    assert float(odds_gap(phi, phi[perm])) == pytest.approx(0.0, abs=1e-12)  # order within a set does not matter
    sure = true_class_log_odds(z * 3.0, y)  # the same samples, more confident
    assert float(odds_gap(sure, phi)) > 1.0
    # sizes may differ: the target's values at the forget set's levels; a target holding each value twice is
    # the same distribution, so the same gap
    assert float(odds_gap(sure, phi.repeat_interleave(2))) == pytest.approx(float(odds_gap(sure, phi)), rel=1e-12)
    assert float(odds_gap(phi[:10], torch.tensor([5.0]))) == pytest.approx(float(((phi[:10] - 5.0) ** 2).mean()))


def test_the_gap_pulls_a_too_confident_forget_set_down_to_its_target():
    # gradient descent on the forget logits with the gap alone moves their log-odds onto the target's
    zt, yt = _logits(40, 3, scale=1.0)
    target = true_class_log_odds(zt, yt)
    zf, yf = _logits(40, 4, scale=6.0)
    zf.requires_grad_(True)
    opt = torch.optim.SGD([zf], lr=0.5)
    start = float(odds_gap(true_class_log_odds(zf.detach(), yf), target))
    for _ in range(200):
        opt.zero_grad()
        odds_gap(true_class_log_odds(zf, yf), target).backward()
        opt.step()
    end = float(odds_gap(true_class_log_odds(zf.detach(), yf), target))
    assert end < 0.05 * start
    assert not target.requires_grad and zt.grad is None  # the target is never trained


def test_the_loss_adds_the_weighted_gap_on_both_paths():
    zr, yr = _logits(16, 5)
    zf, yf = _logits(32, 6, scale=5.0)
    zu, yu = _logits(32, 7, scale=1.0)
    retain = F.cross_entropy(zr, yr, reduction="none")
    fce, uce = F.cross_entropy(zf, yf, reduction="none"), F.cross_entropy(zu, yu, reduction="none")
    gap = odds_gap(true_class_log_odds(zf, yf), true_class_log_odds(zu, yu))
    for transform in ("per_set", "pooled"):
        plain = AAMULoss(backend="torch", transform=transform)
        with_odds = AAMULoss(backend="torch", transform=transform, odds_weight=0.5)
        base = plain(retain, zf, yf, zu, yu)
        out = with_odds(retain, zf, yf, zu, yu)
        assert float(out.total) == pytest.approx(float(base.total + 0.5 * gap), rel=1e-9)
        assert torch.equal(out.mmd, base.mmd) and torch.equal(out.main, base.main)
        # the data-parallel path (per-sample losses) adds the same term
        assert float(with_odds.from_losses(retain, fce, uce).total) == pytest.approx(float(out.total), rel=1e-6)
    assert "odds_weight=0.5" in repr(with_odds)


def test_a_sample_the_model_is_sure_of_is_still_pulled_down():
    # a logit margin of 50: its float64 loss is exactly 0, yet from the logits it still gets a gradient
    zf = torch.tensor([[50.0, 0.0, 0.0], [2.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    yf = torch.tensor([0, 0])
    assert float(F.cross_entropy(zf.detach()[:1], yf[:1])) == 0.0
    zu, yu = torch.zeros(2, 3, dtype=torch.float64), torch.tensor([0, 0])
    out = AAMULoss(backend="torch", lam=0.0, odds_weight=1.0)(torch.zeros(1, dtype=torch.float64), zf, yf, zu, yu)
    out.total.backward()
    assert zf.grad[0, 0] > 0  # descent lowers the sure sample's true-class logit


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), True, "1"])
def test_a_bad_weight_is_named(bad):
    with pytest.raises(ValueError, match="AAMULoss: odds_weight must be a finite number >= 0"):
        AAMULoss(odds_weight=bad)
    from fastblend import AAMUStep

    x, y = torch.randn(20, 2), torch.arange(20) % 2
    with pytest.raises(ValueError, match="AAMUStep: odds_weight must be a finite number >= 0"):
        AAMUStep(nn.Linear(2, 2), (x, y), (x, y), batch_size=4, odds_weight=bad)


def test_unlearn_takes_the_weight_and_checks_it():
    from fastblend import unlearn

    g = torch.Generator().manual_seed(0)
    y = torch.arange(120) % 3
    x = torch.tensor([[0.0, 0.0], [2.5, 0.0], [0.0, 2.5]])[y] + torch.randn(120, 2, generator=g)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 3))
    forget = torch.arange(120) % 10 == 0
    args = (net, (x[~forget], y[~forget]), (x[forget], y[forget]), (x[:60] + 0.1, y[:60]))
    paper = {"batch_size": 16, "request": "sample"}  # the paper's recipe (the default one has the term on)
    plain = unlearn("a_finetune", *args, config=paper, seed=0)
    with pytest.warns(UserWarning, match="odds_weight > 0 against a target that moves"):  # the paper's target moves
        odds = unlearn("a_finetune", *args, config={**paper, "odds_weight": 1.0}, seed=0)
    assert odds.config.odds_weight == 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fixed target: no warning
        fixed = unlearn("a_finetune", *args, config={"batch_size": 16, "odds_weight": 1.0, "target": "matched_fixed"},
                        seed=0)
    assert fixed.info["target"]["kind"] == "matched_fixed"
    assert any(not torch.equal(a, b) for a, b in zip(plain.model.state_dict().values(),
                                                      odds.model.state_dict().values()))
    with pytest.raises(ValueError, match="config.odds_weight must be a finite number >= 0"):
        unlearn("a_finetune", *args, config={"batch_size": 16, "odds_weight": -0.5}, seed=0)


def test_the_drop_in_takes_the_weight_and_refuses_a_bad_one_before_building_the_index(monkeypatch):
    from fastblend import BlendIndex, prepare_unlearning

    args = dropin_request()
    prep = prepare_unlearning(*args, batch_size=8, ipc=4, iterations=1, target="matched_fixed", odds_weight=2.0,
                              request="sample")  # the quantile term (§7.8); the matched recipe pairs per image
    assert prep.criterion.step.criterion.odds_weight == 2.0

    def no_build(*a, **k):
        raise AssertionError("the index was built before the argument was checked")

    monkeypatch.setattr(BlendIndex, "build", no_build)
    with pytest.raises(ValueError, match="prepare_unlearning: odds_weight must be a finite number >= 0"):
        prepare_unlearning(*args, batch_size=8, ipc=4, iterations=1, odds_weight=-1.0)
