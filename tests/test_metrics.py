"""Tests of fastblend.metrics. Most use ``nn.Identity`` as the model, so the "images" are logits."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from fastblend.metrics import (
    SVC_FEATURES,
    StageTimer,
    accuracy,
    attack_features,
    mia_score,
    predict_logits,
    svc_mia,
    true_class_log_odds,
)

from ._support import Tol, assert_close

# log-odds of probabilities near 0 or 1 (logits x 4): float32 loses absolute digits as |z| grows
LOG_ODDS = Tol(rtol=1e-5, atol=1e-4)


def _logits(n: int, c: int, margin: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits whose true class leads by about ``margin`` (Gaussian noise of std 1)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, c, (n,), generator=g)
    z = torch.randn(n, c, generator=g)
    z[torch.arange(n), y] += margin
    return z, y


def test_accuracy_matches_manual_count_and_restores_mode():
    z, y = _logits(300, 5, 0.5, 0)
    lin = nn.Linear(5, 5)
    lin.train()
    with torch.no_grad():
        want = float((lin(z).argmax(1) == y).double().mean()) * 100
    assert accuracy(lin, z, y, batch_size=7) == pytest.approx(want)
    assert accuracy(lin, (z, y)) == pytest.approx(want)
    assert lin.training


def test_accuracy_errors():
    z, y = _logits(10, 3, 1.0, 0)
    with pytest.raises(ValueError, match="model is on cpu but device is meta"):
        accuracy(nn.Linear(3, 3), z, y, device="meta")
    with pytest.raises(ValueError, match="accuracy: images has 10 images but 9 labels"):
        accuracy(nn.Identity(), z, y[:-1])
    with pytest.raises(ValueError, match="accuracy: images is empty"):
        accuracy(nn.Identity(), z[:0], y[:0])
    with pytest.raises(ValueError, match="predict_logits: batch_size"):
        predict_logits(nn.Identity(), z, batch_size=0)


def test_log_odds_matches_float64_reference():
    z, y = _logits(500, 10, 2.0, 1)
    z = z * 4
    p = torch.softmax(z.double(), 1).gather(1, y[:, None]).squeeze(1)
    ref = torch.log(p) - torch.log1p(-p)
    got = true_class_log_odds(z, y)
    assert got.dtype == torch.float32
    assert_close(got, ref, tol=LOG_ODDS)


def test_log_odds_is_stable_and_clamped():
    z = torch.tensor([[60.0, 0.0, 0.0], [0.0, 0.0, 0.0], [-1e30, 0.0, 0.0]])
    y = torch.tensor([0, 1, 0])
    got = true_class_log_odds(z, y)
    # p_y rounds to 1 in float32 for row 0: the naive formula gives inf, the stable one 60 − log 2
    assert got[0].item() == pytest.approx(60 - math.log(2), rel=1e-6)
    assert got[1].item() == pytest.approx(-math.log(2), rel=1e-6)
    assert got[2].item() == -100.0  # clamped
    single = true_class_log_odds(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long), clamp=30.0)
    assert single.tolist() == [30.0, 30.0]
    with pytest.raises(ValueError, match="true_class_log_odds: expected logits"):
        true_class_log_odds(torch.zeros(3), torch.zeros(3, dtype=torch.long))


def test_mia_score_same_distribution_is_chance():
    a = _logits(1500, 10, 2.0, 2)
    b = _logits(1500, 10, 2.0, 3)
    assert abs(mia_score(nn.Identity(), a, b) - 50.0) <= 5.0


def test_mia_score_separated_sets():
    member = _logits(800, 10, 8.0, 4)  # confident: what a model does on data it memorised
    unseen = _logits(800, 10, 0.5, 5)
    assert mia_score(nn.Identity(), member, unseen) >= 95.0
    # unequal sizes are truncated to the smaller one; deterministic given the seed
    big = _logits(2000, 10, 0.5, 6)
    s1 = mia_score(nn.Identity(), member, big, seed=1)
    assert s1 >= 95.0 and s1 == mia_score(nn.Identity(), member, big, seed=1)


def test_mia_fold_back_option():
    a = _logits(200, 10, 2.0, 7)
    b = _logits(200, 10, 1.0, 8)
    plain = mia_score(nn.Identity(), a, b)
    assert mia_score(nn.Identity(), a, b, fold_back=True, fold_back_below=100.0) == pytest.approx(100.0 - plain)
    assert mia_score(nn.Identity(), a, b, fold_back=True, fold_back_below=0.0) == plain


def test_mia_needs_enough_samples():
    with pytest.raises(ValueError, match="mia_score: forget and test need at least n_splits=5"):
        mia_score(nn.Identity(), _logits(4, 3, 1.0, 0), _logits(50, 3, 1.0, 1))


def test_attack_features_float64_formulas():
    z, y = _logits(50, 4, 1.0, 9)
    f = attack_features(z, y)
    p = torch.softmax(z.double(), 1)
    p_y = p[torch.arange(50), y]
    others = p.clone()
    others[torch.arange(50), y] = 0.0
    m_ent = -(1 - p_y) * torch.log(p_y) - (others * torch.log(1 - others)).sum(1)
    assert f["m_entropy"].shape == (50, 1) and f["prob"].shape == (50, 4)
    assert_close(torch.from_numpy(f["m_entropy"][:, 0]), m_ent, dtype=torch.float64)
    assert torch.allclose(torch.from_numpy(f["confidence"][:, 0]), p_y)
    uniform = attack_features(torch.zeros(1, 4), torch.zeros(1, dtype=torch.long))
    assert uniform["entropy"][0, 0] == pytest.approx(math.log(4))


def test_svc_mia_tells_members_from_non_members():
    retain = _logits(300, 10, 8.0, 10)
    test = _logits(300, 10, 0.5, 11)
    like_members = svc_mia(nn.Identity(), retain, _logits(200, 10, 8.0, 12), test)
    like_unseen = svc_mia(nn.Identity(), retain, _logits(200, 10, 0.5, 13), test)
    assert set(like_members) == set(SVC_FEATURES)
    assert like_members["confidence"] <= 10.0 and like_unseen["confidence"] >= 80.0
    assert like_members["m_entropy"] <= 10.0 and like_unseen["m_entropy"] >= 80.0
    with pytest.raises(ValueError, match="svc_mia: unknown features"):
        svc_mia(nn.Identity(), retain, test, test, features=("loss",))


def test_stage_timer(tmp_path):
    timer = StageTimer("cpu")
    with timer("a"):
        sum(range(1000))
    with timer("a"):
        pass
    timer.add("unlearning", 2.5)
    assert list(timer.stages) == ["a", "unlearning"] and timer.stages["a"] > 0
    assert timer.total == pytest.approx(timer.stages["a"] + 2.5)
    rec = timer.to_json(tmp_path / "sub" / "t.json", dataset="toy")
    on_disk = json.loads((tmp_path / "sub" / "t.json").read_text())
    assert on_disk == rec and on_disk["dataset"] == "toy" and on_disk["stages"]["unlearning"] == 2.5
    assert timer.as_dict()["total"] == timer.total
    with pytest.raises(ValueError, match="StageTimer: stage name"):
        with timer(""):
            pass
    # a failing stage is still recorded
    with pytest.raises(RuntimeError):
        with timer("boom"):
            raise RuntimeError("x")
    assert "boom" in timer.stages


def test_accuracy_refuses_labels_beside_a_dataset():
    z, y = _logits(10, 3, 1.0, 0)
    ds = torch.utils.data.TensorDataset(z, y)
    with pytest.raises(TypeError, match="^accuracy: labels must be None when images is a TensorDataset"):
        accuracy(nn.Identity(), ds, y)
