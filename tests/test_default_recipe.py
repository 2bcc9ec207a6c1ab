"""The recipe an accelerated method runs by default (docs/method.md §7.6, §7.10): the difficulty-matched recipe on
scattered samples where the method has one and the data allow it, the whole-class recipe on a class forgotten whole,
the paper's otherwise (and on request)."""

from __future__ import annotations

import pytest
import torch

from fastblend import matched_recipe, prepare_unlearning, unlearn

from ._support import blob_model, blobs, dropin_request


def _request(n: int = 300):
    x, y = blobs(n, 0)
    forget = torch.arange(n) % 10 == 0
    return (x[~forget], y[~forget]), (x[forget], y[forget])


def _run(method="a_finetune", config=None, unseen=None, retain_forget=None):
    retain, forget = retain_forget or _request()
    return unlearn(method, blob_model(), retain, forget, unseen if unseen is not None else blobs(150, 1),
                   config={"batch_size": 16, "epochs": 1, **(config or {})}, seed=0)


@pytest.mark.parametrize("method", ["a_finetune", "a_neggrad_plus", "a_sparse", "a_scrub"])
def test_scattered_samples_run_the_matched_recipe_by_default(method):
    res = _run(method)
    expected = {k: v for k, v in matched_recipe(method).items() if k != "epochs"}  # the caller set epochs
    assert res.info["request"] == "matched" and res.info["recipe"] == expected
    assert res.config.request == "matched" and res.config.target == "matched_fixed"
    assert res.info["target"]["kind"] == "matched_fixed" and res.info["anchor"]["weight"] == 10.0
    assert "request_reason" not in res.info and res.info["class_recipe"] == {}


def test_the_default_is_the_matched_recipe_itself():
    """Same weights as the recipe's dict passed explicitly (deterministic), and as request='matched'."""
    auto = _run()
    explicit = _run(config=matched_recipe("a_finetune") | {"epochs": 1})
    forced = _run(config={"request": "matched"})
    for other in (explicit, forced):
        for a, b in zip(auto.model.parameters(), other.model.parameters()):
            assert torch.equal(a, b)


def test_request_sample_runs_the_papers_recipe():
    res = _run(config={"request": "sample"})
    assert res.info["request"] == "sample" and res.info["recipe"] == {}
    assert (res.config.target, res.config.anchor_weight, res.config.lr) == ("unseen", 0.0, 2.4e-4)
    assert "target" not in res.info and "anchor" not in res.info and "request_reason" not in res.info


def test_a_target_of_the_callers_own_keeps_the_papers_recipe():
    res = _run(config={"target": "unseen"})
    assert res.info["request"] == "sample" and res.config.anchor_weight == 0.0
    assert res.info["request_reason"].endswith("the config sets target='unseen'")  # the caller's choice, named
    res = _run(config={"target": "matched"})
    assert res.info["request"] == "sample" and res.info["target"]["kind"] == "matched"


def test_unseen_data_without_a_forget_class_fall_back_with_the_reason():
    ux, uy = blobs(150, 1)
    keep = uy != 2
    res = _run(unseen=(ux[keep], uy[keep]))
    assert res.info["request"] == "sample" and res.config.target == "unseen"
    assert "unseen data hold no image of forget classes [2]" in res.info["request_reason"]


def test_a_request_mixing_whole_and_partial_classes_falls_back_with_the_reason():
    x, y = blobs(300, 0)
    forget = (y == 2) | (torch.arange(300) % 10 == 0)  # class 2 whole, classes 0 and 1 in part
    res = _run(retain_forget=((x[~forget], y[~forget]), (x[forget], y[forget])))
    assert res.info["request"] == "sample"
    assert "forget classes [2] have no retain image left" in res.info["request_reason"]


def test_a_whole_class_keeps_the_whole_class_recipe():
    x, y = blobs(300, 0)
    forget = y == 2
    res = _run(retain_forget=((x[~forget], y[~forget]), (x[forget], y[forget])))
    assert res.info["request"] == "class" and res.config.transform == "pooled" and res.config.target == "unseen"


def test_methods_without_a_matched_recipe_run_the_papers_and_refuse_one():
    res = _run("a_bad_teacher")
    assert res.info["request"] == "sample" and "request_reason" not in res.info
    with pytest.raises(ValueError, match="config.request='matched': method 'a_prune' has no difficulty-matched"):
        _run("a_prune", config={"request": "matched"})
    with pytest.raises(ValueError, match="config.request must be one of"):
        _run(config={"request": "matched_fixed"})


def test_presets_are_the_papers_recipe():
    from fastblend import presets

    res = _run(config={**presets("cifar10-resnet18", "a_finetune"), "batch_size": 16, "epochs": 1})
    assert res.info["request"] == "sample" and res.config.lr == 2.4e-4


def test_planned_steps_follow_the_default_recipe():
    from fastblend.methods import planned_steps

    assert planned_steps("a_finetune", None, 640) == 3 * 10  # the matched recipe's three epochs of 64
    assert planned_steps("a_finetune", {"request": "sample"}, 640) == 10
    assert planned_steps("a_bad_teacher", None, 640) == 10


def test_the_drop_in_runs_the_same_recipes():
    model, retain, forget, unseen = dropin_request()
    prep = prepare_unlearning(model, retain, forget, unseen, batch_size=8)
    assert (prep.request, prep.lr, prep.epochs) == ("matched", 1e-3, 3)
    whole_model = {k: v for k, v in matched_recipe("a_finetune").items() if k != "frozen_prefix"}  # the loop's own
    assert prep.recipe == whole_model and prep.request_reason is None
    step = prep.criterion.step
    assert step.forget_batch_factor == 1 and step.anchor_weight == 10.0 and step.odds_pairing == "image"
    paper = prepare_unlearning(model, retain, forget, unseen, batch_size=8, request="sample")
    assert (paper.request, paper.lr, paper.epochs, paper.recipe) == ("sample", 2.4e-4, 1, {})
    assert paper.criterion.step.anchor_weight == 0.0 and paper.criterion.step.forget_batch_factor == 4
    own = prepare_unlearning(model, retain, forget, unseen, batch_size=8, target="unseen")
    assert own.request == "sample" and own.request_reason.endswith("target='unseen' was passed")
    ux, uy = unseen
    short = prepare_unlearning(model, retain, forget, (ux[uy != 1], uy[uy != 1]), batch_size=8)
    assert short.request == "sample" and "forget classes [1]" in short.request_reason
    mine = prepare_unlearning(model, retain, forget, unseen, batch_size=8, anchor_weight=3.0)
    assert mine.request == "matched" and mine.criterion.step.anchor_weight == 3.0 and "anchor_weight" not in mine.recipe


def test_the_command_line_names_the_recipe():
    from fastblend.experiments import cli
    from fastblend.experiments.settings import ExperimentConfig

    def acc(*argv):
        return cli._config_from_args(cli.build_parser().parse_args(["run", *argv]), ExperimentConfig()
                                     ).accelerated_config

    assert acc() == {} and acc("--recipe", "auto") == {}  # request "auto": the matched recipe on scattered samples
    assert acc("--recipe", "paper") == {"request": "sample"}
    assert acc("--recipe", "paper", "--forget", "classwise") == {"request": "auto"}  # a whole class keeps its own
    assert acc("--recipe", "matched") == matched_recipe("a_finetune")


def test_a_config_instance_keeps_its_own_target():
    from fastblend.methods import config_class

    cls = config_class("a_finetune")
    res = unlearn("a_finetune", blob_model(), *_request(), blobs(150, 1), config=cls(batch_size=16, epochs=1), seed=0)
    assert res.info["request"] == "sample" and res.config.target == "unseen"  # an instance sets every field
    assert "(a config instance sets every field)" in res.info["request_reason"]
    forced = unlearn("a_finetune", blob_model(), *_request(), blobs(150, 1),
                     config=cls(batch_size=16, epochs=1, request="matched"), seed=0)
    assert forced.info["request"] == "matched" and forced.config.target == "matched_fixed"
    fixed = unlearn("a_finetune", blob_model(), *_request(), blobs(150, 1),
                    config=cls(batch_size=16, epochs=1, target="matched_fixed"), seed=0)
    assert fixed.info["request"] == "matched" and fixed.config.anchor_weight == 10.0


def test_a_forced_matched_request_is_checked_after_the_recipe_fills_it():
    from fastblend import presets

    res = _run(config={"request": "matched", "odds_pairing": "image"})  # the recipe's target makes it valid
    assert res.info["request"] == "matched" and res.config.target == "matched_fixed"
    assert _run(config={"odds_pairing": "image"}).info["request"] == "matched"
    for bad in ({"request": "matched", "target": "matched"}, {"request": "matched", "target": "unseen"},
                {**presets("cifar10-resnet18", "a_finetune"), "request": "matched"}):
        with pytest.raises(ValueError, match="unlearn: config.request='matched' runs the fixed matched target"):
            _run(config=bad)
    with pytest.raises(ValueError, match="unlearn: config.odds_pairing='image'"):  # the paper's: no fixed target
        _run(config={"request": "sample", "odds_pairing": "image"})


def test_a_callers_fixed_target_still_hears_why_the_recipe_fell_back():
    ux, uy = blobs(150, 1)
    keep = uy != 2
    res = _run(config={"target": "matched_fixed"}, unseen=(ux[keep], uy[keep]))
    assert res.info["request"] == "sample" and "forget classes [2]" in res.info["request_reason"]


def test_labels_read_without_a_pass_decide_the_recipe():
    import numpy as np
    from torch.utils.data import Dataset

    class Streamed(Dataset):
        def __init__(self, x, y, labels):
            self.x, self.y, self.reads = x, y, 0
            if labels is not None:
                self.targets = labels

        def __len__(self):
            return len(self.y)

        def __getitem__(self, i):
            self.reads += 1
            return self.x[i], int(self.y[i])

    (rx, ry), forget = _request()
    with_numpy = Streamed(rx, ry, np.asarray(ry))  # a numpy attribute (torchvision's SVHN.labels) is cheap
    res = unlearn("a_finetune", blob_model(), with_numpy, forget, blobs(150, 1), config={"batch_size": 16,
                                                                                        "epochs": 1}, seed=0)
    assert res.info["request"] == "matched"
    wrong = Streamed(rx, ry, np.zeros(len(ry) + 7, dtype=np.int64))  # a parent's labels: not one per row
    with pytest.warns(UserWarning, match="cannot read the retain set's labels without a pass"):
        res = unlearn("a_finetune", blob_model(), wrong, forget, blobs(150, 1),
                      config={"batch_size": 16, "epochs": 1}, seed=0)
    assert res.info["request"] == "sample" and "labels/targets attribute" in res.info["request_reason"]
    assert wrong.reads == len(ry) + 1  # one epoch and the shape probe: no pass to read the labels


def test_planned_steps_can_be_told_the_data_rule_the_matched_recipe_out():
    from fastblend.methods import planned_steps

    assert planned_steps("a_finetune", None, 640, matched_ok=False) == 10


def test_the_drop_in_checks_what_it_can_before_the_index_and_names_its_arguments(monkeypatch):
    from fastblend import BlendIndex

    model, retain, forget, unseen = dropin_request()
    ux, uy = unseen
    short = prepare_unlearning(model, retain, forget, (ux[uy != 1], uy[uy != 1]), batch_size=8, request="sample")
    assert short.request == "sample" and short.request_reason is None  # asked for: nothing fell back

    def no_build(*a, **k):
        raise AssertionError("the index was built before the argument was checked")

    monkeypatch.setattr(BlendIndex, "build", no_build)
    with pytest.raises(ValueError, match="prepare_unlearning: odds_pairing='image' .*needs target='matched_fixed'"):
        prepare_unlearning(model, retain, forget, unseen, batch_size=8, request="sample", odds_pairing="image")
    monkeypatch.undo()
    with pytest.raises(ValueError, match="prepare_unlearning: request='matched' runs the fixed matched target, and "
                                         "target is 'unseen'"):
        prepare_unlearning(model, retain, forget, unseen, batch_size=8, request="matched", target="unseen")


def test_the_experiment_refuses_a_matched_request_it_cannot_run_before_training():
    from fastblend.experiments.settings import ConfigError, ExperimentConfig

    with pytest.raises(ConfigError, match="request='matched' is for scattered samples"):
        ExperimentConfig(forget="classwise", accelerated_config={"request": "matched"}).check()
    with pytest.raises(ConfigError, match="a_bad_teacher has no difficulty-matched recipe"):
        ExperimentConfig(method="bad_teacher", accelerated_config={"request": "matched"}).check()
    with pytest.raises(ConfigError, match="runs the fixed matched target, and target is 'unseen'"):
        ExperimentConfig(accelerated_config={"request": "matched", "target": "unseen"}).check()


def test_a_setting_the_fixed_target_ignores_is_named():
    with pytest.warns(UserWarning, match=r"unlearn: config.unseen_refresh=3 does nothing here"):
        res = _run(config={"unseen_refresh": 3})
    assert res.info["request"] == "matched"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _run(config={"unseen_refresh": 3, "request": "sample"})  # the paper's recipe forwards unseen: no warning


def test_a_retain_loader_over_tensors_runs_the_same_recipe_as_the_tensors():
    from torch.utils.data import DataLoader, TensorDataset

    (rx, ry), forget = _request()
    loader = DataLoader(TensorDataset(rx, ry), batch_size=16)  # its labels are in memory: no pass to read them
    res = unlearn("a_finetune", blob_model(), loader, forget, blobs(150, 1), config={"epochs": 1}, seed=0)
    assert res.info["request"] == "matched"
    x, y = blobs(300, 0)
    whole = y == 2
    res = unlearn("a_finetune", blob_model(), DataLoader(TensorDataset(x[~whole], y[~whole]), batch_size=16),
                  (x[whole], y[whole]), blobs(150, 1), config={"epochs": 1}, seed=0)
    assert res.info["request"] == "class"


def test_the_drop_in_names_a_forget_class_the_unseen_data_lack():
    model, retain, forget, unseen = dropin_request()
    ux, uy = unseen
    top = int(forget[1].max())
    with pytest.raises(ValueError, match=rf"the unseen pool holds none of the forget classes \[{top}\]"):
        prepare_unlearning(model, retain, (forget[0][forget[1] == top], forget[1][forget[1] == top]),
                           (ux[uy != top], uy[uy != top]), batch_size=8)
