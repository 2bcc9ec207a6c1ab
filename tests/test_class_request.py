"""The whole-class recipe of the accelerated methods (config.request, docs/method.md §7.6)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fastblend import unlearn
from fastblend.methods import config_class
from fastblend.methods.aamu_configs import CLASS_HEAD, CLASS_REQUEST, MATCHED_RECIPE

C = 3


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(240) % C
    x = torch.tensor([[0.0, 0.0], [2.5, 0.0], [0.0, 2.5]])[y] + torch.randn(240, 2, generator=g)
    return x, y


def _net():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, C))


@pytest.fixture(scope="module")
def request_sets():
    x, y = _data(0)
    ux, uy = _data(1)
    whole = y == 2
    part = torch.zeros_like(whole)
    part[torch.nonzero(whole).flatten()[:20]] = True  # 20 of class 2's 80 images: scattered samples
    return {"class": ((x[~whole], y[~whole]), (x[whole], y[whole])),
            "sample": ((x[~part], y[~part]), (x[part], y[part])), "mixed": _mixed(x, y, whole, 20),
            "unseen": (ux, uy)}


def _mixed(x, y, whole, k):
    """Every image of class 2 and the first ``k`` of class 1: one class whole, another in part."""
    out = whole.clone()
    out[torch.nonzero(y == 1).flatten()[:k]] = True
    return (x[~out], y[~out]), (x[out], y[out])


def _run(method, sets, kind, config=None):
    retain, forget = sets[kind]
    return unlearn(method, _net(), retain, forget, sets["unseen"], config=config, seed=0)


class _PlainSet(torch.utils.data.Dataset):
    """A user's own dataset: items only, no labels/targets attribute."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def test_a_whole_class_request_through_a_loader_without_cheap_labels(request_sets):
    # a retain DataLoader over a user's own Dataset (no labels attribute) or a Subset of a TensorDataset ran the paper's
    # recipe on a whole class without a word (the class was left unforgotten), and its reason advised request="matched",
    # which a whole class refuses
    from torch.utils.data import DataLoader, Subset, TensorDataset
    (rx, ry), forget = request_sets["class"]
    plain = DataLoader(_PlainSet(rx, ry), batch_size=16, shuffle=True)
    with pytest.warns(UserWarning, match=r"cannot read the retain set's labels without a pass.*'request': 'class'"):
        res = unlearn("a_finetune", _net(), plain, forget, request_sets["unseen"], config={"epochs": 1}, seed=0)
    assert res.info["request"] == "sample" and "'request': 'class'" in res.info["request_reason"]
    # the auto stop reads the labels anyway: the request uses them
    res = unlearn("a_finetune", _net(), plain, forget, request_sets["unseen"], seed=0, stop="auto")
    assert res.info["request"] == "class" and res.config.forget_batch_factor == 1
    # a Subset's labels come from its dataset's, with no pass
    x, y = _data(0)
    keep = torch.nonzero(y != 2).flatten().tolist()
    sub = DataLoader(Subset(TensorDataset(x, y), keep), batch_size=16)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = unlearn("a_finetune", _net(), sub, forget, request_sets["unseen"], config={"epochs": 1}, seed=0)
    assert res.info["request"] == "class"


@pytest.mark.parametrize("method", sorted(CLASS_REQUEST))
def test_a_whole_class_request_runs_the_whole_class_recipe(request_sets, method):
    res = _run(method, request_sets, "class", {"batch_size": 16})
    # where the run trains the head of a frozen prefix, its own epochs and learning rate (docs/method.md §7.11)
    cut = res.info.get("frozen_prefix", {"skipped": "off"})
    head = CLASS_HEAD.get(method, {}) if "skipped" not in cut else {}
    expected = {**CLASS_REQUEST[method], **head}
    assert res.info["request"] == "class" and res.info["class_recipe"] == expected
    for key, value in expected.items():
        assert getattr(res.config, key) == value
    assert res.config.transform == "pooled"


def test_scattered_samples_run_the_matched_recipe_or_the_papers_on_request(request_sets):
    res = _run("a_finetune", request_sets, "sample", {"batch_size": 16})
    assert res.info["request"] == "matched" and res.info["class_recipe"] == {}
    assert res.info["recipe"] == MATCHED_RECIPE["a_finetune"] and res.config.target == "matched_fixed"
    res = _run("a_finetune", request_sets, "sample", {"batch_size": 16, "request": "sample"})
    paper = config_class("a_finetune")()
    assert res.info["request"] == "sample" and res.info["class_recipe"] == {}
    assert (res.config.transform, res.config.lr, res.config.epochs) == (paper.transform, paper.lr, paper.epochs)


def test_a_request_with_a_class_in_part_keeps_the_paper_recipe(request_sets):
    # "auto" reads a request as a whole class only when *every* forget class is gone from the retain set
    # (docs/method.md §7.6); here class 1 keeps 60 of its 80 images
    res = _run("a_finetune", request_sets, "mixed", {"batch_size": 16})
    assert res.info["request"] == "sample" and res.info["class_recipe"] == {}
    assert res.config.transform == "per_set"


def test_the_recipe_sets_only_what_the_caller_did_not(request_sets):
    one = _run("a_finetune", request_sets, "class", {"batch_size": 16, "epochs": 1})
    three = _run("a_finetune", request_sets, "class", {"batch_size": 16})
    assert one.config.epochs == 1 and one.config.lr == 5e-4 and "epochs" not in one.info["class_recipe"]
    assert three.steps == 3 * one.steps
    # a config instance: fields that differ from the defaults are the caller's
    cls = config_class("a_finetune")
    res = _run("a_finetune", request_sets, "class", cls(batch_size=16, lr=1e-3))
    assert res.config.lr == 1e-3 and res.config.transform == "pooled" and res.config.epochs == 3
    # a dict's λ is the caller's even at the paper's value (the recipe's is 5), and A-SCRUB's epochs likewise
    paper_lam = _run("a_finetune", request_sets, "class", {"batch_size": 16, "lam": cls().lam})
    assert paper_lam.config.lam == cls().lam == 34.0 and "lam" not in paper_lam.info["class_recipe"]
    scrub = _run("a_scrub", request_sets, "class", {"batch_size": 16, "epochs": 3, "lam": 2.0})
    assert (scrub.config.epochs, scrub.config.lam, scrub.config.max_epochs) == (3, 2.0, 1)
    # request='sample' keeps the paper's recipe on a whole class; request='class' forces it on samples
    kept = _run("a_finetune", request_sets, "class", {"batch_size": 16, "request": "sample"})
    assert kept.info["request"] == "sample" and kept.config.transform == "per_set" and kept.config.epochs == 1
    forced = _run("a_finetune", request_sets, "sample", {"batch_size": 16, "request": "class"})
    assert forced.info["request"] == "class" and forced.config.transform == "pooled"


def test_base_methods_and_bad_settings(request_sets):
    base = _run("finetune", request_sets, "class", {"batch_size": 16, "epochs": 1})
    assert "request" not in base.info
    with pytest.raises(ValueError, match="config.request must be one of"):
        _run("a_finetune", request_sets, "class", {"request": "whole"})


def test_a_split_knows_whether_it_forgets_whole_classes():
    from fastblend.datasets import load_dataset, make_split, whole_classes

    train, test = load_dataset("digits")
    assert make_split(train, test, forget="classwise", forget_class=3, seed=0).whole_class
    assert not make_split(train, test, forget="uniform", forget_fraction=0.1, seed=0).whole_class
    assert whole_classes(torch.tensor([2, 0, 2]), torch.tensor([0, 1])) == [2]


@pytest.fixture(scope="module")
def image_sets():
    """Three well-separated classes of 1x8x8 images, for the drop-in (it builds a Blend index)."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(150) % C
    x = (torch.arange(C, dtype=torch.float32)[y] * 2.0).view(-1, 1, 1, 1) + torch.randn(150, 1, 8, 8, generator=g)
    uy = torch.arange(60) % C
    ux = (torch.arange(C, dtype=torch.float32)[uy] * 2.0).view(-1, 1, 1, 1) + torch.randn(60, 1, 8, 8, generator=g)
    whole = y == 2
    part = torch.zeros_like(whole)
    part[torch.nonzero(whole).flatten()[:10]] = True
    return {"class": ((x[~whole], y[~whole]), (x[whole], y[whole])),
            "sample": ((x[~part], y[~part]), (x[part], y[part])), "mixed": _mixed(x, y, whole, 10),
            "unseen": (ux, uy)}


def _prepare(sets, kind, **kw):
    from fastblend import prepare_unlearning
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, C))
    retain, forget = sets[kind]
    return model, prepare_unlearning(model, retain, forget, sets["unseen"], batch_size=8, ipc=4, iterations=1,
                                     stop=None, **kw)


def test_the_drop_in_hands_a_whole_class_request_its_recipe(image_sets):
    recipe = CLASS_REQUEST["a_finetune"]
    model, prep = _prepare(image_sets, "class")
    # the drop-in's loop trains the caller's model whole: the frozen prefix is unlearn's alone (§7.11)
    assert prep.request == "class" and prep.class_recipe == {k: v for k, v in recipe.items() if k != "frozen_prefix"}
    assert (prep.epochs, prep.lr, prep.criterion.step.criterion.transform) == (recipe["epochs"], recipe["lr"], "pooled")
    assert prep.recommended["lr"] == recipe["lr"] and prep.recommended["epochs"] == recipe["epochs"]
    assert prep.steps == recipe["epochs"] * len(prep.retain_loader)
    assert prep.optimizer(model).param_groups[0]["lr"] == recipe["lr"]
    # forget and unseen draws of one retain batch each (the drop-in's unseen draws kept the paper's 4B before)
    step = prep.criterion.step
    assert (step.forget_batch_factor, step.unseen_batch_factor) == (1, 1) == (recipe["forget_batch_factor"],
                                                                           recipe["unseen_batch_factor"])
    _, mine = _prepare(image_sets, "class", unseen_batch_factor=2)  # the caller's own is kept
    assert mine.criterion.step.unseen_batch_factor == 2 and "unseen_batch_factor" not in mine.class_recipe
    paper = config_class("a_finetune")()
    _, prep = _prepare(image_sets, "sample")  # scattered samples: the matched recipe
    assert (prep.request, prep.class_recipe, prep.recipe) == (
        "matched", {}, {k: v for k, v in MATCHED_RECIPE["a_finetune"].items() if k != "frozen_prefix"})
    for kind, kw in (("sample", {"request": "sample"}), ("class", {"request": "sample"})):  # the paper's, forced
        model, prep = _prepare(image_sets, kind, **kw)
        assert prep.request == "sample" and prep.class_recipe == {}
        assert (prep.epochs, prep.lr, prep.criterion.step.criterion.transform) == (paper.epochs, paper.lr,
                                                                                    paper.transform)
        assert prep.optimizer(model).param_groups[0]["lr"] == paper.lr
    _, prep = _prepare(image_sets, "mixed")  # class 2 whole, class 1 in part: the drop-in reads it as unlearn does
    assert prep.request == "sample" and prep.class_recipe == {} and prep.epochs == paper.epochs
    _, prep = _prepare(image_sets, "sample", request="class")  # forced; a transform the caller chose is kept
    assert prep.request == "class" and prep.epochs == recipe["epochs"]
    _, prep = _prepare(image_sets, "class", transform="per_set")
    assert prep.criterion.step.criterion.transform == "per_set" and "transform" not in prep.class_recipe


def test_the_drop_in_takes_the_whole_class_lambda_unless_the_caller_set_one(image_sets):
    # the whole-class recipe's λ (5; the paper's 34 cost the other classes test accuracy once the class was
    # forgotten) reaches the criterion the loop calls; a λ of the caller's own is kept, on either request
    recipe = CLASS_REQUEST["a_finetune"]
    _, prep = _prepare(image_sets, "class")
    assert prep.criterion.step.criterion.lam == recipe["lam"] == 5.0
    for own in (12.0, config_class("a_finetune")().lam):  # the paper's value, passed explicitly, is the caller's
        _, prep = _prepare(image_sets, "class", lam=own)
        assert prep.criterion.step.criterion.lam == own and "lam" not in prep.class_recipe
    _, prep = _prepare(image_sets, "sample")
    assert prep.criterion.step.criterion.lam == config_class("a_finetune")().lam
    for bad in ({"request": "whole"}, {"request": 1}, {"transform": "rank"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            _prepare(image_sets, "class", **bad)


def test_the_drop_in_refuses_bad_loss_settings_before_building_the_index(image_sets, monkeypatch):
    # λ (now None by default: the request's) and the step's other settings are checked before the Blend index,
    # which on a real training set takes minutes, is built
    from fastblend import BlendIndex

    def no_build(*a, **k):
        raise AssertionError("the index was built before the argument was checked")

    monkeypatch.setattr(BlendIndex, "build", no_build)
    for bad, err in (({"lam": -1.0}, ValueError), ({"lam": float("nan")}, ValueError), ({"lam": "5"}, TypeError),
                     ({"k": -1.0}, ValueError), ({"kappa": 0.0}, ValueError), ({"sigma": -1.0}, ValueError),
                     ({"steepen": "cube"}, ValueError), ({"forget_batch_factor": 0}, ValueError),
                     ({"unseen_batch_factor": 1.5}, ValueError), ({"max_draw": 0}, ValueError)):
        with pytest.raises(err, match=f"prepare_unlearning: {next(iter(bad))}"):
            _prepare(image_sets, "class", **bad)


def test_bad_teacher_gets_the_whole_class_recipe_and_prune_keeps_the_paper(request_sets):
    # quality/classreq6.json: a_bad_teacher's paper recipe left forget accuracy 1.0-1.5 on a whole class (out)
    res = _run("a_bad_teacher", request_sets, "class", {"batch_size": 16})
    assert (res.config.transform, res.config.lr, res.config.epochs) == ("pooled", 5e-4, 3)
    paper = config_class("a_prune")()
    res = _run("a_prune", request_sets, "class", {"batch_size": 16})
    assert res.info["class_recipe"] == {} and (res.config.transform, res.config.epochs) == (paper.transform,
                                                                                             paper.epochs)
