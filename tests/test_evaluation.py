"""The yardstick (fastblend.evaluation): Retrain's seed band, the MIA with confidence, KLOM, the hard forget kind."""

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from fastblend.evaluation import (
    SeedBand,
    SmallGroupWarning,
    binomial_se,
    fixed_band,
    hardest,
    klom,
    klom_summary,
    margins,
    mia_with_interval,
    seed_band,
)
from fastblend.metrics import true_class_log_odds
from fastblend.tracking import band_from_ensemble, time_to_target

VALUES = {"forget_acc": [96.5, 97.0, 96.8], "test_acc": [97.6, 97.9, 97.8], "mia": [49.0, 50.5, 51.0]}


def _band(values=VALUES, n_eval=600, **kw) -> SeedBand:
    return seed_band(values, {"forget_acc": 800, "test_acc": n_eval, "mia": 600}, {"mia": 1.2}, **kw)


def test_band_is_range_widened_by_sampling_error_and_every_part_is_recorded():
    band = _band()
    t = band.test_acc
    se = binomial_se(sum(VALUES["test_acc"]) / 3, 600)
    assert t.se == pytest.approx(se) and t.margin == pytest.approx(max(0.5, 1.96 * se))
    assert (t.low, t.high) == pytest.approx((97.6 - t.margin, 97.9 + t.margin))
    assert band.mia.margin == pytest.approx(1.96 * 1.2) and band.mia.source == "given"
    d = band.as_dict()["test_acc"]  # a reader can recompute it from the record
    assert d["values"] == VALUES["test_acc"] and d["n"] == 600 and d["z"] == 1.96 and d["floor"] == 0.5


def test_band_widens_with_fewer_evaluation_samples():
    wide, narrow = _band(n_eval=100), _band(n_eval=2000)
    assert wide.test_acc.high - wide.test_acc.low > narrow.test_acc.high - narrow.test_acc.low
    assert narrow.test_acc.margin >= 0.5  # the floor holds where the error is tiny


def test_band_widens_with_seed_spread():
    spread = {**VALUES, "forget_acc": [93.0, 97.0, 99.0]}
    assert _band(spread).forget_acc.half_width > _band().forget_acc.half_width + 1.5


def test_band_contains_distance_and_easy_label():
    band = _band()
    inside = {"forget_acc": 96.8, "test_acc": 97.8, "mia": 50.0}
    assert band.contains(inside) and band.distance(inside) == {"forget_acc": 0.0, "test_acc": 0.0, "mia": 0.0}
    original = {"forget_acc": 99.9, "test_acc": 98.0, "mia": 51.7}
    d = band.distance(original)
    assert d["forget_acc"] == pytest.approx(99.9 - band.forget_acc.high) and d["forget_acc"] > 0
    assert not band.contains(original)
    assert band.is_easy(original) == (d["forget_acc"] <= band.forget_acc.half_width)
    far = {"forget_acc": 100.0, "test_acc": 98.0, "mia": 80.0}  # memorised: far above Retrain's MIA
    assert not band.is_easy(far)
    assert band.is_easy(inside)


def test_time_to_target_takes_a_seed_band_without_reference():
    band = band_from_ensemble([{m: VALUES[m][i] for m in VALUES} for i in range(3)],
                              {"forget_acc": 800, "test_acc": 600, "mia": 600}, mia_se=1.0)
    points = [{"seconds": 0.0, "forget_acc": 99.9, "test_acc": 98.0, "mia": 60.0},
              {"seconds": 1.0, "forget_acc": 97.0, "test_acc": 97.8, "mia": 50.0},
              {"seconds": 2.0, "forget_acc": 96.9, "test_acc": 97.7, "mia": 50.2}]
    assert time_to_target(points, None, band) == 1.0
    with pytest.raises(ValueError, match="time_to_target: reference"):
        time_to_target(points, None)


def test_fixed_band_is_the_old_band():
    band = fixed_band({"forget_acc": 96.9, "test_acc": 97.8, "mia": 50.2},
                      {"forget_acc": 2.0, "test_acc": 2.0, "mia": 5.0})
    assert band.kind == "fixed" and band.forget_acc.low == pytest.approx(94.9) and band.mia.high == pytest.approx(55.2)


@pytest.mark.parametrize("kw, match", [
    ({"values": {"forget_acc": [1.0], "test_acc": [1.0]}}, "missing 'mia'"),
    ({"n": {"forget_acc": 0, "test_acc": 1, "mia": 1}}, "n\\['forget_acc'\\]"),
    ({"se": {}}, "se\\['mia'\\]"),
    ({"z": -1}, "z must be"),
])
def test_seed_band_refuses_bad_input(kw, match):
    args = {"values": VALUES, "n": {"forget_acc": 800, "test_acc": 600, "mia": 600}, "se": {"mia": 1.0}, **kw}
    with pytest.raises(ValueError, match=f"^seed_band: .*{match}"):
        seed_band(**args)


# --------------------------------------------------------------------------------------------
# the MIA with confidence
# --------------------------------------------------------------------------------------------
def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def test_mia_of_a_random_model_is_fifty_within_its_interval():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(900, 20, generator=g)
    y = torch.randint(0, 5, (900,), generator=g)
    torch.manual_seed(1)
    model = nn.Linear(20, 5)
    logits = _logits(model, x)
    for statistic in ("auc", "paper"):
        res = mia_with_interval(logits[:400], y[:400], logits[400:], y[400:], statistic=statistic)
        assert res.low <= 50.0 <= res.high, (statistic, res)
        assert (res.n_forget, res.n_heldout) == ((400, 500) if statistic == "auc" else (400, 400)) and not res.small
        assert res.high - res.low < 15


def test_mia_of_a_memorising_model_is_far_above_fifty():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 20, generator=g)
    y = torch.randint(0, 5, (600,), generator=g)  # random labels: only memorisation fits the forget half
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 256), nn.ReLU(), nn.Linear(256, 5))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(300):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[:300]), y[:300]).backward()
        opt.step()
    logits = _logits(model, x)
    res = mia_with_interval(logits[:300], y[:300], logits[300:], y[300:], min_group=100)
    assert res.low > 80 and res.score > 90


def test_auc_mia_scores_every_pair_of_unequal_groups_whatever_the_seed():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(700, 4, generator=g) * 3
    y = torch.randint(0, 4, (700,), generator=g)
    logits[:200, :] += torch.nn.functional.one_hot(y[:200], 4) * 0.7  # some signal on the forget group
    phi = true_class_log_odds(logits, y).double()
    pairs = (phi[:200, None] > phi[None, 200:]).double() + 0.5 * (phi[:200, None] == phi[None, 200:]).double()
    expected = float(pairs.mean()) * 100
    scores = []
    for seed in (0, 1, 7):
        res = mia_with_interval(logits[:200], y[:200], logits[200:], y[200:], seed=seed)
        assert (res.n_forget, res.n_heldout) == (200, 500)
        assert res.low <= res.score <= res.high
        scores.append(res.score)
    assert scores == pytest.approx([expected] * 3, abs=1e-9)
    # the paper's statistic still fits on equal groups
    assert mia_with_interval(logits[:200], y[:200], logits[200:], y[200:], statistic="paper").n_heldout == 200


def test_small_groups_warn_and_are_marked():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(120, 3, generator=g)
    y = torch.randint(0, 3, (120,), generator=g)
    with pytest.warns(SmallGroupWarning, match="below min_group=200"):
        res = mia_with_interval(logits[:60], y[:60], logits[60:], y[60:])
    assert res.small and res.n_forget == 60
    with warnings.catch_warnings():
        warnings.simplefilter("error", SmallGroupWarning)
        assert not mia_with_interval(logits[:60], y[:60], logits[60:], y[60:], min_group=50).small
    assert res.as_dict()["mia_small"] is True


def test_mia_interval_refuses_bad_input():
    logits, y = torch.randn(20, 3), torch.zeros(20, dtype=torch.int64)
    with pytest.raises(ValueError, match="^mia_with_interval: statistic"):
        mia_with_interval(logits, y, logits, y, statistic="lira")
    with pytest.raises(ValueError, match="^mia_with_interval: .*not finite"):
        mia_with_interval(logits.clone().fill_(math.nan), y, logits, y)


# --------------------------------------------------------------------------------------------
# KLOM
# --------------------------------------------------------------------------------------------
def _ensemble(models: int, mu: np.ndarray, seed: int, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return mu[None] + shift + rng.normal(0.0, 1.0, (models, mu.size))


# the histogram needs many models per side (the reference benchmark uses about 100); the gaussian fit copes with few
@pytest.mark.parametrize("estimator, r, k", [("gaussian", 8, 2), ("histogram", 60, 30)])
def test_klom_of_an_ensemble_against_itself_is_at_the_floor_and_of_a_different_one_large(estimator, r, k):
    mu = np.random.default_rng(9).normal(0.0, 4.0, 500)
    retrain = _ensemble(r, mu, 1)
    same, other = _ensemble(k, mu, 2), _ensemble(k, mu, 3, shift=6.0)
    groups = {"forget": np.arange(250), "eval": np.arange(250, 500)}
    s = klom_summary({"same": same, "other": other}, retrain, groups, estimator=estimator)
    for g in groups:
        floor, mine, far = (s.values[k][g]["p50"] for k in ("floor", "same", "other"))
        assert mine <= 1.5 * floor + 0.05, (g, mine, floor)
        assert far > 3 * floor + 1.0, (g, far, floor)
    assert s.sizes == {"retrain": r, "held_out": k, "reference": r - k, "same": k, "other": k}
    assert set(s.flat("same")) >= {"klom_forget_p50", "klom_eval_p99", "klom_forget_mean"}


def test_klom_gaussian_formula_and_one_model_side():
    p, q = np.array([[1.0], [3.0]]), np.array([[0.0], [2.0], [4.0]])
    sp, sq = np.std(p, ddof=1), np.std(q, ddof=1)
    expected = math.log(sq / sp) + (sp ** 2 + (2.0 - 2.0) ** 2) / (2 * sq ** 2) - 0.5
    assert klom(p, q)[0] == pytest.approx(expected)
    # one unlearned model takes Retrain's spread: half its squared z-score
    assert klom(np.array([[5.0]]), q)[0] == pytest.approx((5.0 - 2.0) ** 2 / (2 * sq ** 2))
    with pytest.raises(ValueError, match="^klom: expected p"):
        klom(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="^klom_summary: retrain must be"):
        klom_summary({"a": np.zeros((1, 3))}, np.zeros((1, 3)), {"forget": np.arange(3)})


def test_margins_are_true_class_log_odds():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 5.0, 5.0]])
    m = margins(logits, torch.tensor([0, 1]))
    assert m.tolist() == pytest.approx([2.0 - math.log(2.0), 5.0 - math.log(1.0 + math.exp(5.0))], abs=1e-5)


# --------------------------------------------------------------------------------------------
# the hard forget kind's selection
# --------------------------------------------------------------------------------------------
def test_hardest_takes_the_highest_losses_deterministically():
    cand = torch.tensor([10, 3, 7, 22, 5])
    losses = torch.tensor([0.1, 2.0, 2.0, 5.0, 0.3])
    assert hardest(cand, losses, 3).tolist() == [3, 7, 22]
    assert hardest(cand, losses, 2).tolist() == [3, 22]  # a tie goes to the smaller index
    with pytest.raises(ValueError, match="^hardest: k must be"):
        hardest(cand, losses, 6)
