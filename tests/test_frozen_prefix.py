"""A frozen prefix (fastblend.prefix, config.frozen_prefix, docs/method.md §7.11): the model cut into a prefix and a
head, the run training the head on the prefix's features, computed once."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fastblend
from fastblend import AutoStop, unlearn
from fastblend.models import ConvNet3, resnet18_in
from fastblend.prefix import split_model


def _convnet(seed: int = 0) -> ConvNet3:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ConvNet3(1, 3, image_size=8, width=4)


def _task(seed: int = 0, noise: float = 0.8, bright: float = 1.5):
    """3 classes of 8x8 images (a bright quadrant each, plus noise): retain, forget (every tenth row) and unseen."""
    g = torch.Generator().manual_seed(seed)

    def draw(n):
        y = torch.arange(3).repeat(n)
        x = torch.randn(3 * n, 1, 8, 8, generator=g) * noise
        for c in range(3):
            x[y == c, :, (c // 2) * 4:(c // 2) * 4 + 4, (c % 2) * 4:(c % 2) * 4 + 4] += bright
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
    with pytest.raises(ValueError, match=r"frozen_prefix='features.3': the retain set is streamed"):
        unlearn("a_finetune", _convnet(), loader, forget, unseen, config={"frozen_prefix": "features.3", "epochs": 1})
    with pytest.raises(ValueError, match="prunes the whole model"):
        unlearn("a_prune", _convnet(), retain, forget, unseen, config={"frozen_prefix": "features.3"})
    # "auto" is "where it applies", the caller's too (fastblend.matched_recipe() dicts hold it)
    soft = unlearn("a_finetune", _convnet(), loader, forget, unseen, config={"frozen_prefix": "auto", "epochs": 1})
    assert "the retain set is streamed" in soft.info["frozen_prefix"]["skipped"]
    with pytest.raises(TypeError, match=r"config\['frozen_prefix'\] must be a str or None, got int 7"):
        unlearn("a_finetune", _convnet(), retain, forget, unseen, config={"frozen_prefix": 7})
    with pytest.raises(TypeError, match="config.frozen_prefix must be None, 'auto' or a module name"):
        unlearn("a_finetune", _convnet(), retain, forget, unseen, config={"frozen_prefix": ""})
    with pytest.raises(ValueError, match="needs a model torch.fx can trace"):
        unlearn("a_finetune", _Branchy(), (torch.randn(30, 4), torch.arange(3).repeat(10)),
                (torch.randn(6, 4), torch.arange(3).repeat(2)), (torch.randn(30, 4), torch.arange(3).repeat(10)),
                config={"frozen_prefix": "a"})


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


def test_an_interrupted_run_on_a_frozen_prefix_hands_back_the_whole_model():
    # noisy images the model memorises: its forget set stays unlike held-out images for the whole run
    retain, forget, unseen = _task(noise=2.0, bright=1.0)
    model = fastblend.train_model(_convnet(), (torch.cat([retain[0], forget[0]]), torch.cat([retain[1], forget[1]])),
                                  config={"epochs": 60, "lr": 0.05, "batch_size": 16, "warmup_epochs": 0})
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def interrupt(m, step, seconds):
        if step >= 9:
            raise KeyboardInterrupt

    cfg = {"batch_size": 16, "epochs": 4, "request": "matched", "frozen_prefix": "features.3"}
    with pytest.raises(KeyboardInterrupt) as caught:
        unlearn("a_finetune", model, retain, forget, unseen, config=cfg, seed=0, stop="auto", callback=interrupt,
                eval_every=1)
    res = caught.value.result
    assert isinstance(res.model, ConvNet3) and res.model(forget[0][:2]).shape == (2, 3)
    assert 0 < res.steps <= 9 and res.info["failed"].startswith("KeyboardInterrupt")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the caller's model untouched
    # the kept evaluation's model: its prefix is the untouched one, its head the weights of that step
    kept = res.model.state_dict()
    assert all(torch.equal(kept[k], before[k]) for k in before if k.startswith(("features.0.", "features.1.")))


def test_the_whole_class_recipe_on_the_head_runs_its_own_epochs_and_learning_rate():
    from fastblend.methods.aamu_configs import CLASS_HEAD, CLASS_REQUEST

    retain, forget, unseen = _task()
    x, y = torch.cat([retain[0], forget[0]]), torch.cat([retain[1], forget[1]])
    gone = y == 2  # class 2 forgotten whole
    args = (_convnet(), (x[~gone], y[~gone]), (x[gone], y[gone]), unseen)
    assert "frozen_prefix" not in CLASS_REQUEST["a_finetune"]  # the whole-class recipe trains the whole model
    assert "frozen_prefix" not in unlearn("a_finetune", *args, config={"epochs": 1}, seed=0).info
    res = unlearn("a_finetune", *args, config={"frozen_prefix": "auto"}, seed=0)  # asked for: the head's settings
    assert res.info["request"] == "class" and res.info["frozen_prefix"]["at"] == "features.3"
    assert (res.config.lr, res.config.epochs) == (CLASS_HEAD["a_finetune"]["lr"], CLASS_HEAD["a_finetune"]["epochs"])
    assert res.info["recipe"]["epochs"] == 6
    whole = unlearn("a_finetune", *args, config={"frozen_prefix": None}, seed=0)  # the whole model: the recipe as was
    assert (whole.config.lr, whole.config.epochs) == (CLASS_REQUEST["a_finetune"]["lr"],
                                                      CLASS_REQUEST["a_finetune"]["epochs"]) == (5e-4, 3)
    own = unlearn("a_finetune", *args, config={"epochs": 2, "frozen_prefix": "auto"}, seed=0)  # a caller's is kept
    assert own.config.epochs == 2 and own.config.lr == 1e-3


def test_planned_steps_plan_the_heads_recipe_where_the_model_can_be_cut():
    from fastblend.methods import planned_steps

    head = {"frozen_prefix": "auto"}
    assert planned_steps("a_finetune", head, 640, whole_class=True) == 6 * 10  # taken to apply without a model
    assert planned_steps("a_finetune", head, 640, whole_class=True, model=_convnet()) == 60
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))  # no cut: the whole model, 3 epochs
    assert planned_steps("a_finetune", head, 640, whole_class=True, model=mlp) == 30
    assert planned_steps("a_finetune", None, 640, whole_class=True) == 30  # the recipe's: the whole model
    assert planned_steps("a_finetune", {**head, "epochs": 2}, 640, whole_class=True) == 20


class _Direct(nn.Module):
    """Reads a parameter directly (a get_attr node) before the cut, and a dropout written as a function."""

    def __init__(self):
        super().__init__()
        self.w0 = nn.Parameter(torch.randn(8, 64) * 0.2)
        self.a, self.b, self.c = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = torch.nn.functional.relu(torch.nn.functional.linear(x.flatten(1), self.w0))
        h = torch.nn.functional.dropout(h, 0.5, self.training)
        return self.c(torch.relu(self.b(torch.relu(self.a(h)))))


class _Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.a, self.c = nn.Linear(64, 16), nn.Linear(16, 16), nn.Linear(16, 16)
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        h = torch.relu(self.c(torch.relu(self.a(torch.relu(self.inp(x.flatten(1)))))))
        h = torch.relu(torch.nn.functional.linear(h, self.a.weight))  # a's weight read again after any cut at c
        return self.out(h)


def test_the_cut_keeps_each_parameter_on_one_side_and_traces_in_eval_mode():
    model = _Direct().train()
    split = split_model(model, "a")
    assert not any(p is model.w0 for p in split.head.parameters())  # w0 is the prefix's alone
    from fastblend.prefix import prefix_features

    x = torch.randn(5, 1, 8, 8)
    assert torch.equal(prefix_features(split.prefix, x), prefix_features(split.prefix, x))  # no dropout in it
    assert model.training  # the caller's mode is kept
    retain, forget, unseen = _task()
    res = unlearn("a_sparse", model, retain, forget, unseen, config={"request": "matched", "frozen_prefix": "a",
                                                                     "alpha": 0.1, "epochs": 1}, seed=0)
    assert torch.equal(res.model.w0, model.w0)  # the L1 term never reached the frozen prefix
    with pytest.raises(ValueError, match=r"parameter\(s\) read both before and after"):
        split_model(_Tied(), "c")
    with pytest.raises(ValueError, match="nothing after 'classifier' has a trainable parameter"):
        split_model(_convnet(), "classifier")


def test_the_features_follow_each_set_and_its_dtype():
    from torch.utils.data import Subset

    retain, forget, unseen = _task()
    x, y = torch.cat([forget[0], retain[0]]), torch.cat([forget[1], retain[1]])
    train = TensorDataset(x, y)
    nf = forget[1].numel()
    cfg = {"epochs": 1, "batch_size": 16}
    # unseen rows indexed 0..59 in their own dataset, as the forget rows are in the training set: no row is shared
    subsets = unlearn("a_finetune", _convnet(), Subset(train, range(nf, len(y))), Subset(train, range(nf)),
                      Subset(TensorDataset(*unseen), range(60)), config=cfg, seed=0)
    tensors = unlearn("a_finetune", _convnet(), retain, forget, (unseen[0][:60], unseen[1][:60]), config=cfg, seed=0)
    assert subsets.info["frozen_prefix"]["at"] == tensors.info["frozen_prefix"]["at"] == "features.3"
    for a, b in zip(subsets.model.parameters(), tensors.model.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    double = unlearn("a_finetune", _convnet(), (retain[0].double(), retain[1]), (forget[0].double(), forget[1]),
                     (unseen[0].double(), unseen[1]), config=cfg, seed=0)  # images of another dtype than the model
    assert all(p.dtype == torch.float32 for p in double.model.parameters())
    assert double.info["frozen_prefix"]["at"] == "features.3"


class _TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x, scale=None):
        return self.b(torch.relu(self.a(x)))


def test_methods_and_models_a_prefix_does_not_fit_are_said_so():
    retain, forget, unseen = _task()
    bad = unlearn("a_bad_teacher", _convnet(), retain, forget, unseen, config={"epochs": 1, "frozen_prefix": "auto"},
                  seed=0)
    assert "incompetent model" in bad.info["frozen_prefix"]["skipped"]
    with pytest.raises(ValueError, match="takes one input"):
        split_model(_TwoInputs(), "a")


def test_auto_leaves_a_batchnorm_model_whole_and_a_named_cut_still_cuts_it():
    retain, forget, unseen = _task()
    bn = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 8, 3, padding=1),
                       nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, 3))
    res = unlearn("a_finetune", bn, retain, forget, unseen, config={"epochs": 1}, seed=0)
    assert res.info["request"] == "matched" and "BatchNorm" in res.info["frozen_prefix"]["skipped"]
    named = unlearn("a_finetune", bn, retain, forget, unseen, config={"epochs": 1, "frozen_prefix": "2"}, seed=0)
    assert named.info["frozen_prefix"]["at"] == "2"
    # the rule is split_model's "auto": planned_steps, which asks it, plans the whole model's recipe too
    with pytest.raises(ValueError, match="leaves a model with BatchNorm whole"):
        split_model(bn, "auto")
    from fastblend.methods import planned_steps

    assert planned_steps("a_finetune", {"frozen_prefix": "auto"}, 640, whole_class=True, model=bn) == 30


def test_auto_keeps_a_convolution_in_the_head_of_a_convolutional_model():
    # a VGG-like net whose classifier holds most parameters: "auto" must not freeze every convolution
    vgg = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 64), nn.ReLU(),
                        nn.Linear(64, 3))
    split = split_model(vgg, "auto")
    assert split.at == "3"  # after the second convolution: the head holds the third and the classifier
    assert any(isinstance(m, nn.Conv2d) for m in split.head.modules())
