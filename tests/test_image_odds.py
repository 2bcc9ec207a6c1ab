"""The per-image log-odds term (``odds_pairing="image"``, docs/method.md §7.10): each forget image's true-class
log-odds against its own target, one-sided."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fastblend import AAMUStep, unlearn
from fastblend.aamu import odds_excess
from fastblend.metrics import true_class_log_odds

from ._support import blob_model, blobs, dropin_request

C = 3


def test_the_excess_is_one_sided_and_row_to_row():
    phi = torch.tensor([3.0, -1.0, 0.5, 2.0], dtype=torch.float64, requires_grad=True)
    target = torch.tensor([1.0, 0.0, 0.5, -2.0], dtype=torch.float64)
    out = odds_excess(phi, target)
    assert float(out.detach()) == pytest.approx((2.0 ** 2 + 0 + 0 + 4.0 ** 2) / 4)  # only images above their own target
    out.backward()
    assert phi.grad.tolist() == pytest.approx([2 * 2.0 / 4, 0.0, 0.0, 2 * 4.0 / 4])  # below / at: no gradient
    # row to row, not sorted: the same values paired differently give a different excess (W₂ would not)
    assert float(odds_excess(phi.detach(), target.flip(0))) != pytest.approx(float(out.detach()))
    with pytest.raises(ValueError, match="odds_excess: forget_odds and target_odds must have the same shape"):
        odds_excess(phi, target[:3])


def _step_data(n_forget: int = 24):
    g = torch.Generator().manual_seed(1)
    fx, fy = torch.randn(n_forget, 2, generator=g), torch.arange(n_forget) % C
    ux, uy = torch.randn(30, 2, generator=g), torch.arange(30) % C
    return (fx, fy), (ux, uy)


def test_the_step_adds_the_excess_over_each_forget_rows_own_target():
    forget, unseen = _step_data()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = nn.Linear(2, C).double()
    target = torch.linspace(-3, 3, 24, dtype=torch.float64)  # a distinct target per forget row
    kw = dict(batch_size=4, seed=3, lam=0.0)  # λ 0: the total is the retain loss plus the term
    step = AAMUStep(net, forget, unseen, odds_weight=2.0, odds_pairing="image", forget_odds_target=target, **kw)
    plain = AAMUStep(net, forget, unseen, **kw)
    assert step.criterion.odds_weight == 0.0 and step.image_odds_weight == 2.0  # it replaces the quantile match
    retain = torch.rand(4, dtype=torch.float64)
    batch = step.draw_forget()
    assert batch.index is not None and batch.index.numel() == batch.size
    step._forget = batch._replace(logits=net(batch.x))
    out = step.loss(retain)
    phi = true_class_log_odds(net(batch.x).double(), batch.labels)
    expected = 2.0 * (phi - target[batch.index]).clamp(min=0).pow(2).mean()
    base = plain.loss(retain)
    assert float(out.total.detach()) == pytest.approx(float(base.total.detach() + expected.detach()), rel=1e-9)
    assert float(expected.detach()) > 0  # the check means something: some rows sit above their target


@pytest.mark.parametrize("kwargs, match", [
    ({"odds_pairing": "image"}, "odds_pairing='image' needs forget_odds_target"),
    ({"odds_pairing": "image", "forget_odds_target": torch.zeros(5)}, r"one value per forget image \(24\)"),
    ({"odds_pairing": "image", "forget_odds_target": torch.full((24,), float("nan"))}, "must be finite"),
    ({"odds_pairing": "image", "forget_odds_target": torch.zeros(24, dtype=torch.long)}, "floating"),
    ({"forget_odds_target": torch.zeros(24)}, "read only with odds_pairing='image'"),
    ({"odds_pairing": "rows"}, r"odds_pairing must be one of \('quantile', 'image'\)"),
])
def test_the_step_refuses_a_bad_pairing_or_target(kwargs, match):
    forget, unseen = _step_data()
    with pytest.raises(ValueError, match=f"AAMUStep: .*{match}"):
        AAMUStep(nn.Linear(2, C), forget, unseen, batch_size=4, odds_weight=1.0, **kwargs)
    with pytest.raises(TypeError, match="AAMUStep: forget_odds_target must be a floating torch.Tensor"):
        AAMUStep(nn.Linear(2, C), forget, unseen, batch_size=4, odds_pairing="image", forget_odds_target=[0.0] * 24)


def test_the_step_refuses_a_forget_loader_with_its_own_sampler_with_per_image_targets():
    from torch.utils.data import DataLoader, SubsetRandomSampler, TensorDataset

    forget, unseen = _step_data()
    own = DataLoader(TensorDataset(*forget), batch_size=5, sampler=SubsetRandomSampler(range(24)))
    target = torch.zeros(24, dtype=torch.float64)
    with pytest.raises(ValueError, match="AAMUStep: the DataLoader reads its dataset through .*forget_odds_target"):
        AAMUStep(nn.Linear(2, C), own, unseen, batch_size=4, odds_pairing="image", forget_odds_target=target)
    in_order = DataLoader(TensorDataset(*forget), batch_size=5)
    step = AAMUStep(nn.Linear(2, C), in_order, unseen, batch_size=4, odds_pairing="image", forget_odds_target=target)
    assert torch.equal(step.forget.images, forget[0])
    # a loader that only shuffles is read in its dataset's order, so its rows line up with the targets too
    shuffled = DataLoader(TensorDataset(*forget), batch_size=5, shuffle=True)
    step = AAMUStep(nn.Linear(2, C), shuffled, unseen, batch_size=4, odds_pairing="image", forget_odds_target=target)
    assert torch.equal(step.forget.images, forget[0])
    # the quantile match needs no row order: a shuffled loader stays accepted there
    AAMUStep(nn.Linear(2, C), shuffled, unseen, batch_size=4, odds_weight=1.0, unseen_logits=torch.zeros(30, C))
    # a loader drawing with replacement repeats some rows and misses others: said, as unlearn says it
    from torch.utils.data import RandomSampler
    drawn = DataLoader(TensorDataset(*forget), batch_size=5, sampler=RandomSampler(range(24), replacement=True))
    with pytest.warns(UserWarning, match="AAMUStep: the forget DataLoader's RandomSampler draws with replacement"):
        AAMUStep(nn.Linear(2, C), drawn, unseen, batch_size=4, odds_weight=1.0, unseen_logits=torch.zeros(30, C))


def test_unlearn_pulls_each_forget_image_to_its_matched_images_odds():
    model = blob_model()
    x, y = blobs(300, 0)
    forget = torch.arange(300) % 10 == 0
    unseen = blobs(150, 1)
    fx, fy = x[forget], y[forget]
    args = (model, (x[~forget], y[~forget]), (fx, fy), unseen)
    base = {"batch_size": 16, "epochs": 3, "target": "matched_fixed", "odds_weight": 1.0, "request": "sample"}
    quantile = unlearn("a_finetune", *args, config=base, seed=0)
    seen = []
    real_init = AAMUStep.__init__

    def spy(self, *a, **k):
        real_init(self, *a, **k)
        seen.append((self.forget.images.clone(), self.forget_odds_target))

    AAMUStep.__init__ = spy
    try:
        image = unlearn("a_finetune", *args, config={**base, "odds_pairing": "image"}, seed=0)
    finally:
        AAMUStep.__init__ = real_init
    assert image.config.odds_pairing == "image" and image.info["target"]["odds_pairing"] == "image"
    # the targets: each forget image's matched image, under the untouched model
    from fastblend.methods import matched_rows

    idx, fixed, _ = matched_rows(model, (x[~forget], y[~forget]), None, (fx, fy), unseen, "matched_fixed",
                                 lambda: y[~forget], 0, torch.device("cpu"), "t")
    target = true_class_log_odds(fixed.double(), unseen[1][idx])
    (step_rows, step_target), = seen
    assert torch.equal(step_rows, fx)  # the step's forget rows are the forget set's, in its order ...
    torch.testing.assert_close(step_target, target)  # ... and each carries its own matched image's log-odds

    def excess(m):
        with torch.no_grad():
            return float(odds_excess(true_class_log_odds(m(fx).double(), fy), target))

    assert excess(image.model) < excess(quantile.model) < excess(model)
    assert any(not torch.equal(a, b) for a, b in zip(quantile.model.parameters(), image.model.parameters()))
    with pytest.raises(ValueError, match="config.odds_pairing='image' .* needs config.target='matched_fixed'"):
        unlearn("a_finetune", *args, config={"odds_pairing": "image", "odds_weight": 1.0, "target": "unseen"}, seed=0)
    with pytest.raises(ValueError, match="config.odds_pairing must be one of"):
        unlearn("a_finetune", *args, config={"odds_pairing": "sorted"}, seed=0)


def test_unlearn_refuses_image_pairing_when_a_forget_image_has_no_match():
    model = blob_model()
    x, y = blobs(300, 0)
    forget = torch.arange(300) % 10 == 0
    ux, uy = blobs(150, 1)
    keep = uy != 2  # no held-out image of class 2: its forget images cannot be matched
    with pytest.raises(ValueError, match=r"config.odds_pairing='image' needs a held-out image of every forget "
                                         r"image's class.*10 of the 30 forget images have none"):
        unlearn("a_finetune", model, (x[~forget], y[~forget]), (x[forget], y[forget]), (ux[keep], uy[keep]),
                config={"target": "matched_fixed", "odds_weight": 1.0, "odds_pairing": "image"}, seed=0)


def test_the_drop_in_takes_the_pairing_and_checks_it_before_building_the_index(monkeypatch):
    from fastblend import BlendIndex, prepare_unlearning

    args = dropin_request()
    model, _, (fx, fy), (ux, uy) = args
    prep = prepare_unlearning(*args, batch_size=8, ipc=4, iterations=1, target="matched_fixed", odds_weight=2.0,
                              odds_pairing="image", stop=None)
    step = prep.criterion.step
    assert step.image_odds_weight == 2.0 and step.forget_odds_target.shape == (15,)
    from fastblend.methods import matched_rows

    # the drop-in ranks against its reduced set's real rows, as matched_rows does given that set
    idx, fixed, _ = matched_rows(model, prep.reduced, None, (fx, fy), (ux, uy), "matched_fixed",
                                 lambda: prep.reduced.labels, 0, torch.device("cpu"), "t")
    torch.testing.assert_close(step.forget_odds_target, true_class_log_odds(fixed.double(), uy[idx]))
    assert torch.equal(step.forget.images, fx)
    xb, yb = next(iter(prep.retain_loader))
    assert torch.isfinite(prep.criterion(model(xb), yb))

    def no_build(*a, **k):
        raise AssertionError("the index was built before the argument was checked")

    monkeypatch.setattr(BlendIndex, "build", no_build)
    with pytest.raises(ValueError, match="prepare_unlearning: odds_pairing must be one of"):
        prepare_unlearning(*args, batch_size=8, odds_pairing="pairs")
    with pytest.raises(ValueError, match="prepare_unlearning: odds_pairing='image' .* needs target='matched_fixed'"):
        prepare_unlearning(*args, batch_size=8, odds_weight=1.0, odds_pairing="image", target="unseen")



def test_the_matched_recipe_is_each_methods_config_and_runs():
    from fastblend import matched_recipe
    from fastblend.methods import config_class
    from fastblend.methods.aamu_configs import MATCHED_METHODS

    assert MATCHED_METHODS == ("a_finetune", "a_neggrad_plus", "a_sparse", "a_scrub")
    for name in MATCHED_METHODS:
        cfg = config_class(name)(**matched_recipe(name))
        cfg.check(name)  # every key is a field of that method's config, with a valid value
        assert (cfg.target, cfg.odds_pairing, cfg.odds_weight, cfg.anchor_weight) == ("matched_fixed", "image", 1.0,
                                                                                        10.0)
    mine = matched_recipe("a_finetune")
    mine["epochs"] = 99  # a caller's edit of its dict is its own
    assert matched_recipe("a_finetune")["epochs"] == 3
    assert (matched_recipe("a_scrub")["lr"], matched_recipe("a_finetune")["lr"]) == (0.002, 1e-3)
    # one retain batch of forget rows a step (quality/hardspeed*.json); A-SCRUB keeps the paper's 4B
    assert matched_recipe("a_finetune")["forget_batch_factor"] == 1 and "forget_batch_factor" not in \
        matched_recipe("a_scrub")
    for bad in ("a_bad_teacher", "finetune", None):
        with pytest.raises(ValueError, match="matched_recipe: method must be one of"):
            matched_recipe(bad)
    model = blob_model()
    x, y = blobs(300, 0)
    forget = torch.arange(300) % 10 == 0
    res = unlearn("a_finetune", model, (x[~forget], y[~forget]), (x[forget], y[forget]), blobs(150, 1),
                  config={**matched_recipe("a_finetune"), "batch_size": 16, "epochs": 1}, seed=0)
    assert res.info["target"]["kind"] == "matched_fixed" and res.info["anchor"]["weight"] == 10.0
    assert res.config.odds_pairing == "image"


def test_the_command_line_takes_the_matched_recipe(tmp_path):
    from fastblend import matched_recipe
    from fastblend.experiments import cli
    from fastblend.experiments.settings import ExperimentConfig

    def cfg_of(*argv):
        return cli._config_from_args(cli.build_parser().parse_args(["run", *argv]), ExperimentConfig())

    assert cfg_of("--recipe", "matched", "--forget", "hard").accelerated_config == matched_recipe("a_finetune")
    assert cfg_of("--forget", "hard").accelerated_config == {}  # the paper's unless asked
    assert cfg_of("--recipe", "matched", "--method", "neggrad_plus").accelerated_config == \
        matched_recipe("a_neggrad_plus")
    own = tmp_path / "own.json"
    own.write_text('{"accelerated_config": {"epochs": 5}}')
    mixed = cfg_of("--recipe", "matched", "--config", str(own)).accelerated_config
    assert mixed == {**matched_recipe("a_finetune"), "epochs": 5}  # the file's settings win
    with pytest.raises(cli.UsageError, match="--recipe matched: the accelerated method must be one of"):
        cfg_of("--recipe", "matched", "--method", "bad_teacher")
    with pytest.raises(cli.UsageError, match="--recipe matched is for scattered samples"):
        cfg_of("--recipe", "matched", "--forget", "classwise")
    with pytest.raises(cli.UsageError, match="--recipe matched: .*ssd"):  # no accelerated variant: a usage error
        cfg_of("--recipe", "matched", "--method", "ssd")
    # a config file asking for the fixed target on a whole class is refused before anything trains
    fixed = tmp_path / "fixed.json"
    fixed.write_text('{"forget": "classwise", "accelerated_config": {"target": "matched_fixed"}}')
    from fastblend.experiments.settings import ConfigError

    with pytest.raises(ConfigError, match="accelerated_config target='matched_fixed' .*forget='classwise'"):
        cfg_of("--config", str(fixed)).check()


def test_the_matched_set_up_is_one_forward_over_unseen_and_counts_in_seconds(monkeypatch):
    """The untouched model's logits of the unseen images serve the matched ranking, the fixed target and the anchor
    (one forward, not three), and the set-up's time is the method's: in the result's seconds and on the clock the
    callback and the auto stop read."""
    import time

    import fastblend.difficulty as difficulty
    import fastblend.methods as methods
    from fastblend.methods import anchor_rows, matched_rows
    from fastblend.metrics import predict_logits

    model = blob_model()
    x, y = blobs(300, 0)
    forget = torch.arange(300) % 10 == 0
    unseen = blobs(150, 1)
    dev = torch.device("cpu")
    shared = predict_logits(model, unseen[0])
    args = (model, (x[~forget], y[~forget]), None, (x[forget], y[forget]), unseen, "matched_fixed",
            lambda: y[~forget], 0, dev, "t")
    idx, fixed, _ = matched_rows(*args)
    idx2, fixed2, _ = matched_rows(*args, unseen_logits=shared)
    assert torch.equal(idx, idx2) and torch.equal(fixed, fixed2)
    # the anchor's rows and logits line up with the shared logits, also where a class forgotten whole is left out
    for forget_labels, retain_labels in ((y[forget], y[~forget]), (torch.zeros(5, dtype=torch.long), y[y != 0])):
        ax, az = anchor_rows(model, unseen, forget_labels, retain_labels, dev, "t")
        ax2, az2 = anchor_rows(model, unseen, forget_labels, retain_labels, dev, "t", unseen_logits=shared)
        assert torch.equal(ax, ax2) and torch.equal(az, az2)
    assert ax.shape[0] == int((unseen[1] != 0).sum()) < 150  # class 0 left out
    fx, fy = x[forget], y[forget]
    for bad, err, msg in ((shared[:10], ValueError, r"unseen_logits must be a floating \[150, C\] tensor"),
                          (torch.cat([shared, shared], 1), ValueError,
                           r"unseen_logits must be a floating \[150, 3 \(the model's output width\)\]"),
                          (shared.clone().fill_(float("nan")), ValueError, "unseen_logits must be finite"),
                          (shared.tolist(), TypeError, "unseen_logits must be a floating")):
        with pytest.raises(err, match=f"matched_unseen: {msg}"):
            difficulty.matched_unseen(model, (x, y), (fx, fy), unseen, unseen_logits=bad)

    # through unlearn: the set-up forwards the unseen images, the reference and the forget images once each, and a
    # slow set-up shows in the seconds, in the callback's clock and in the auto stop's
    sizes: list[int] = []
    real_predict, real_rank = difficulty.predict_logits, difficulty.match_by_rank
    delay = 1.0

    def counting(net, images, *a, **k):
        sizes.append(int(images.shape[0]))
        return real_predict(net, images, *a, **k)

    def slow_rank(*a, **k):
        time.sleep(delay)
        return real_rank(*a, **k)

    monkeypatch.setattr(methods, "predict_logits", counting)
    monkeypatch.setattr(difficulty, "predict_logits", counting)
    monkeypatch.setattr(difficulty, "match_by_rank", slow_rank)
    clock: list[float] = []
    cfg = {"target": "matched_fixed", "anchor_weight": 1.0, "epochs": 1, "batch_size": 64}
    res = unlearn("a_finetune", model, (x[~forget], y[~forget]), (fx, fy), unseen, seed=0, config=cfg,
                  callback=lambda m, step, seconds: clock.append(seconds))
    assert sorted(sizes) == sorted([150, res.info["target"]["reference_rows"], len(fy)])  # no second forward
    setup = res.info["setup_seconds"]
    assert setup >= delay and res.seconds >= setup
    assert clock[0] >= delay  # the step-0 report: the set-up is already on the method's clock
    stopped = unlearn("a_finetune", model, (x[~forget], y[~forget]), (fx, fy), unseen, seed=0, config=cfg,
                      stop="auto")
    assert stopped.info["auto_stop"]["last"]["seconds"] >= delay  # the stop's evaluations read the same clock
    assert stopped.seconds >= stopped.info["setup_seconds"] >= delay


def test_a_fixed_target_on_a_whole_class_is_refused_before_any_forward(monkeypatch):
    import fastblend.methods as methods

    model = blob_model()
    x, y = blobs(300, 0)
    forget = y == 0  # class 0 forgotten whole
    calls: list[int] = []
    monkeypatch.setattr(methods, "predict_logits", lambda *a, **k: calls.append(1))
    with pytest.raises(ValueError, match=r"config.target='matched_fixed' .* forget classes \[0\]"):
        unlearn("a_finetune", model, (x[~forget], y[~forget]), (x[forget], y[forget]), blobs(150, 1), seed=0,
                config={"target": "matched_fixed", "anchor_weight": 1.0, "request": "sample"})
    assert not calls
