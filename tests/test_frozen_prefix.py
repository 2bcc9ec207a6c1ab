"""A frozen prefix (fastblend.prefix, config.frozen_prefix, docs/method.md §7.11): the model cut into a prefix and a
head, the run training the head on the prefix's features, computed once."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fastblend import AutoStop, unlearn
from fastblend.models import ConvNet3, resnet18_in
from fastblend.prefix import split_model


def _convnet(seed: int = 0) -> ConvNet3:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ConvNet3(1, 3, image_size=8, width=4)


def _task(seed: int = 0):
    """3 classes of 8x8 images (a bright quadrant each, plus noise): retain, forget (every tenth row) and unseen."""
    g = torch.Generator().manual_seed(seed)

    def draw(n):
        y = torch.arange(3).repeat(n)
        x = torch.randn(3 * n, 1, 8, 8, generator=g) * 0.8
        for c in range(3):
            x[y == c, :, (c // 2) * 4:(c // 2) * 4 + 4, (c % 2) * 4:(c % 2) * 4 + 4] += 1.5
        return x, y

    x, y = draw(40)
    forget = torch.zeros(len(y), dtype=torch.bool)
    forget[::10] = True
    return (x[~forget], y[~forget]), (x[forget], y[forget]), draw(20)


def test_the_head_of_the_prefix_is_the_model():
    torch.manual_seed(0)
    for model, ats in ((_convnet(), ("auto", "features.7", "features.3")), (resnet18_in(1, 3), ("auto", "layers.2"))):
        model.eval()
        x = torch.randn(4, 1, 8, 8) if isinstance(model, ConvNet3) else torch.randn(2, 1, 16, 16)
        for at in ats:
            split = split_model(model, at)
            assert torch.allclose(split.head(split.prefix(x)), model(x), atol=1e-6)
            owned = {id(p) for p in model.parameters()}
            assert {id(p) for p in split.head.parameters()} <= owned  # training the head trains the model
            assert 0 < split.head_parameters < split.parameters == sum(p.numel() for p in model.parameters())
    # "auto": the latest cut whose head still holds half the parameters (ConvNet-3: the last block and the classifier)
    assert split_model(ConvNet3(1, 10, 28, 64), "auto").at == "features.7"
    assert split_model(resnet18_in(1, 3), "auto").at == "layers.2"


class _Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x):
        h = self.a(x)
        if h.sum() > 0:  # control flow on a value: torch.fx cannot trace it
            h = -h
        return self.b(h)


def test_a_model_that_cannot_be_cut_is_refused_by_name():
    with pytest.raises(ValueError, match=r"config.frozen_prefix='nope' is not a module of ConvNet3"):
        split_model(_convnet(), "nope")
    with pytest.raises(ValueError, match="skip connection across it"):
        split_model(resnet18_in(1, 3), "layers.2.0.conv1")
    with pytest.raises(ValueError, match="needs a model torch.fx can trace"):
        split_model(_Branchy(), "a")
    with pytest.raises(TypeError, match="config.frozen_prefix must be 'auto' or a module name"):
        split_model(_convnet(), 3)
    with pytest.raises(ValueError, match="found no point"):
        split_model(nn.Sequential(nn.Linear(4, 3)), "auto")


def test_training_the_head_on_features_is_training_the_model_with_its_prefix_frozen():
    retain, forget, unseen = _task()
    model = _convnet()
    cfg = {"batch_size": 16, "epochs": 2, "lr": 1e-3, "request": "sample"}
    res = unlearn("a_finetune", model, retain, forget, unseen, config={**cfg, "frozen_prefix": "features.7"}, seed=0)
    frozen = _convnet()
    frozen.features[:8].requires_grad_(False)
    ref = unlearn("a_finetune", frozen, retain, forget, unseen, config=cfg, seed=0)
    for (name, a), b in zip(res.model.state_dict().items(), ref.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), name
    prefix = [k for k in model.state_dict() if k.startswith(tuple(f"features.{i}." for i in range(8)))]
    assert prefix and all(torch.equal(res.model.state_dict()[k], model.state_dict()[k]) for k in prefix)
    assert not torch.equal(res.model.classifier.weight, model.classifier.weight)
    assert isinstance(res.model, ConvNet3)  # the whole model comes back, not its head
    info = res.info["frozen_prefix"]
    assert info["at"] == "features.7" and info["head_parameters"] < info["parameters"] and info["rows"] > 0
    assert res.info["setup_seconds"] > 0  # the features' forwards are the method's time


def test_the_callers_callback_and_stop_see_the_whole_model():
    retain, forget, unseen = _task()
    seen = []

    def callback(model, step, seconds):
        seen.append(model(forget[0][:2]).shape)  # images, not features: the whole model

    cfg = {"batch_size": 16, "epochs": 2, "request": "matched", "frozen_prefix": "auto"}
    res = unlearn("a_finetune", _convnet(), retain, forget, unseen, config=cfg, seed=0, callback=callback,
                  eval_every=2, stop="auto")
    assert seen and all(s == (2, 3) for s in seen)
    assert res.info["auto_stop"]["evaluations"] >= 1 and res.info["frozen_prefix"]["at"] == "features.3"
    stop = AutoStop(forget, unseen, retain[1], seed=0)  # the caller's own stop, on images
    own = unlearn("a_finetune", _convnet(), retain, forget, unseen, config=cfg, seed=0, stop=stop)
    assert own.info["auto_stop"]["evaluations"] >= 1 and stop.check(own.model).forget_acc is not None


def test_a_callers_prefix_is_refused_where_it_cannot_apply():
    retain, forget, unseen = _task()
    loader = DataLoader(TensorDataset(*retain), batch_size=16)
    with pytest.raises(ValueError, match=r"frozen_prefix='auto': the retain set is streamed"):
        unlearn("a_finetune", _convnet(), loader, forget, unseen, config={"frozen_prefix": "auto", "epochs": 1})
    with pytest.raises(ValueError, match="prunes the whole model"):
        unlearn("a_prune", _convnet(), retain, forget, unseen, config={"frozen_prefix": "auto"})
    with pytest.raises(TypeError, match=r"config\['frozen_prefix'\] must be a str or None, got int 7"):
        unlearn("a_finetune", _convnet(), retain, forget, unseen, config={"frozen_prefix": 7})
    with pytest.raises(TypeError, match="config.frozen_prefix must be None, 'auto' or a module name"):
        unlearn("a_finetune", _convnet(), retain, forget, unseen, config={"frozen_prefix": ""})
    with pytest.raises(ValueError, match="needs a model torch.fx can trace"):
        unlearn("a_finetune", _Branchy(), (torch.randn(30, 4), torch.arange(3).repeat(10)),
                (torch.randn(6, 4), torch.arange(3).repeat(2)), (torch.randn(30, 4), torch.arange(3).repeat(10)),
                config={"frozen_prefix": "auto"})


class _Labelled(TensorDataset):
    """A dataset whose labels can be read without a pass (the matched recipe needs them)."""

    def __init__(self, x, y):
        super().__init__(x, y)
        self.targets = y


def test_the_matched_recipe_trains_the_head_and_falls_back_where_it_cannot():
    retain, forget, unseen = _task()
    res = unlearn("a_finetune", _convnet(), retain, forget, unseen, config={"epochs": 1}, seed=0)
    assert res.info["request"] == "matched" and res.info["recipe"]["frozen_prefix"] == "auto"
    assert res.info["frozen_prefix"]["at"] == "features.3"
    loader = DataLoader(_Labelled(*retain), batch_size=16)
    streamed = unlearn("a_finetune", _convnet(), loader, forget, unseen, config={"epochs": 1}, seed=0)
    assert streamed.info["request"] == "matched"
    assert "the retain set is streamed" in streamed.info["frozen_prefix"]["skipped"]
    branchy = (torch.randn(30, 4), torch.arange(3).repeat(10))
    odd = unlearn("a_finetune", _Branchy(), branchy, (torch.randn(6, 4), torch.arange(3).repeat(2)), branchy,
                  config={"epochs": 1}, seed=0)
    assert "torch.fx" in odd.info["frozen_prefix"]["skipped"]
    whole = unlearn("a_finetune", _convnet(), retain, forget, unseen, config={"epochs": 1, "frozen_prefix": None})
    assert "frozen_prefix" not in whole.info
