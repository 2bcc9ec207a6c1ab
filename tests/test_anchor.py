"""The held-out anchor (docs/method.md §7.9): ``anchor_weight · KL(p₀ ‖ p)`` on unseen images, an option."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastblend
from fastblend import AAMUStep, unlearn

from ._support import blob_model, blobs

C = 3


def _kl_to(model: nn.Module, reference: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float(F.kl_div(F.log_softmax(model(x), 1), F.log_softmax(reference(x), 1), log_target=True,
                              reduction="batchmean"))


def test_the_anchor_keeps_the_unseen_predictions_near_the_untouched_models():
    model = blob_model()
    x, y = blobs(300, 0)
    forget = torch.arange(300) % 10 == 0
    unseen = blobs(150, 1)
    held = blobs(150, 2)[0]  # images neither run saw
    # a strong forgetting push, on the paper's recipe (the default matched one has the anchor already)
    cfg = {"batch_size": 16, "epochs": 3, "lr": 0.01, "lam": 100.0, "request": "sample"}
    args = (model, (x[~forget], y[~forget]), (x[forget], y[forget]), unseen)
    plain = unlearn("a_finetune", *args, config=cfg, seed=0)
    anchored = unlearn("a_finetune", *args, config={**cfg, "anchor_weight": 10.0}, seed=0)
    info = anchored.info["anchor"]
    assert "anchor" not in plain.info and (info["rows"], info["weight"]) == (150, 10.0)
    assert anchored.seconds >= anchored.info["setup_seconds"] > 0  # its one forward over the pool is the method's time
    assert _kl_to(anchored.model, model, unseen[0]) < 0.5 * _kl_to(plain.model, model, unseen[0])
    assert _kl_to(anchored.model, model, held) < _kl_to(plain.model, model, held)  # not only on its own images
    # off by default: the paper's loss, bit for bit
    again = unlearn("a_finetune", *args, config={**cfg, "anchor_weight": 0.0}, seed=0)
    for p, q in zip(plain.model.parameters(), again.model.parameters()):
        assert torch.equal(p, q)


def test_a_class_forgotten_whole_is_left_out_of_the_anchor():
    model = blob_model()
    x, y = blobs(300, 0)
    forget = y == 2
    unseen = blobs(150, 1)
    res = unlearn("a_finetune", model, (x[~forget], y[~forget]), (x[forget], y[forget]), unseen,
                  config={"batch_size": 16, "anchor_weight": 1.0}, seed=0)
    assert res.info["anchor"]["rows"] == int((unseen[1] != 2).sum())


def test_the_step_takes_the_anchor_and_refuses_bad_ones():
    model = blob_model()
    fx, fy = blobs(40, 3)
    ux, uy = blobs(60, 4)
    with torch.no_grad():
        z0 = model(ux)
    step = AAMUStep(model, (fx, fy), (ux, uy), batch_size=8, anchor=(ux, z0), anchor_weight=2.0)
    plain = AAMUStep(model, (fx, fy), (ux, uy), batch_size=8)
    out, ref = step.loss(torch.rand(8) + 1), plain.loss(torch.rand(8) + 1)
    assert step.anchor_loss is not None and float(step.anchor_loss) == pytest.approx(0.0, abs=1e-6)  # untouched
    assert torch.isfinite(out.total) and ref.total.shape == out.total.shape
    with torch.no_grad():
        model[-1].bias.add_(torch.tensor([3.0, 0.0, 0.0]))  # the model moves: the anchor term sees it
    step.loss(torch.rand(8))
    assert float(step.anchor_loss) > 0.1
    with pytest.raises(TypeError, match=r"AAMUStep: anchor_weight > 0 needs anchor=\(images, logits\)"):
        AAMUStep(model, (fx, fy), (ux, uy), batch_size=8, anchor_weight=1.0)
    with pytest.raises(ValueError, match="anchor logits must be a floating"):
        AAMUStep(model, (fx, fy), (ux, uy), batch_size=8, anchor=(ux, z0[:5]), anchor_weight=1.0)
    with pytest.raises(ValueError, match="anchor logits must be finite"):
        AAMUStep(model, (fx, fy), (ux, uy), batch_size=8, anchor=(ux, z0 * float("nan")), anchor_weight=1.0)
    with pytest.raises(ValueError, match="anchor_weight must be a finite number >= 0"):
        AAMUStep(model, (fx, fy), (ux, uy), batch_size=8, anchor=(ux, z0), anchor_weight=-1.0)
    # checked whenever given, also at weight 0; the images' shape against the forget images', the logits' width
    # against the model's at the first loss
    with pytest.raises(TypeError, match=r"AAMUStep: anchor must be \(images, logits\).*got str"):
        AAMUStep(model, (fx, fy), (ux, uy), batch_size=8, anchor="garbage")
    with pytest.raises(ValueError, match=r"anchor images are \[7\] but the forget images \[2\]"):
        AAMUStep(model, (fx, fy), (ux, uy), batch_size=8, anchor=(torch.randn(60, 7), z0), anchor_weight=1.0)
    wide = AAMUStep(model, (fx, fy), (ux, uy), batch_size=8, anchor=(ux, torch.cat([z0, z0], 1)), anchor_weight=1.0)
    with pytest.raises(ValueError, match="anchor logits has 6 columns but the model gives 3 logits per image"):
        wide.loss(torch.rand(8))
    with pytest.raises(ValueError, match="config.anchor_weight must be a finite number >= 0"):
        unlearn("a_finetune", model, (ux, uy), (fx, fy), (ux, uy), config={"anchor_weight": float("inf")})


def test_the_drop_in_takes_the_anchor():
    from ._support import class_images

    g = torch.Generator().manual_seed(0)
    x, y = class_images(150, g)
    ux, uy = class_images(60, g)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, C))
    forget = torch.arange(150) % 10 == 0
    args = (model, (x[~forget], y[~forget]), (x[forget], y[forget]), (ux, uy))
    prep = fastblend.prepare_unlearning(*args, batch_size=16, anchor_weight=3.0, stop=None, iterations=1)
    step = prep.criterion.step
    assert step.anchor_weight == 3.0 and step._anchor[0].shape[0] == 60
    xb, yb = next(iter(prep.retain_loader))
    prep.criterion(model(xb), yb)
    assert step.anchor_loss is not None
    with pytest.raises(ValueError, match="prepare_unlearning: anchor_weight must be a finite number >= 0"):
        fastblend.prepare_unlearning(*args, anchor_weight=-2)
