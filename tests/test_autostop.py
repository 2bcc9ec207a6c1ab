"""AutoStop: a stop decided from forget vs held-out statistics, with no Retrain input (docs/method.md §4.5)."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
from torch import nn

import fastblend
from fastblend import AutoStop, unlearn

C = 3


def _blobs(n: int, seed: int, noise: float = 1.6) -> tuple[torch.Tensor, torch.Tensor]:
    """Three overlapping Gaussian classes in 2-D: a linear classifier gets about 80-90% of unseen points."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % C
    centres = torch.tensor([[0.0, 0.0], [2.5, 0.0], [0.0, 2.5]])
    return centres[y] + noise * torch.randn(n, 2, generator=g), y


class _Memoriser(nn.Module):
    """``(1 - alpha)`` · a look-up that answers the forget set's labels with certainty, plus a linear
    classifier that generalises: alpha = 0 is a model that memorised the forget set, alpha = 1 one that
    never saw it (it treats the forget set like any unseen sample)."""

    def __init__(self, fx: torch.Tensor, fy: torch.Tensor):
        super().__init__()
        self.fx, self.fy = fx, fy
        self.linear = nn.Linear(2, C)
        with torch.no_grad():
            centres = torch.tensor([[0.0, 0.0], [2.5, 0.0], [0.0, 2.5]])  # the nearest-centre classifier
            self.linear.weight.copy_(centres)
            self.linear.bias.copy_(-0.5 * centres.pow(2).sum(1))
        self.register_buffer("mix", torch.tensor(0.0))  # alpha, in the state_dict (the closest model's weights)

    @property
    def alpha(self) -> float:
        return float(self.mix)

    @alpha.setter
    def alpha(self, value: float) -> None:
        self.mix.fill_(value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.linear(x) * 2
        hit = (x[:, None, :] == self.fx[None]).all(-1)
        known = hit.any(1)
        memo = torch.full_like(logits, -20.0)
        memo[known, self.fy[hit[known].float().argmax(1)]] = 20.0
        return torch.where(known[:, None], (1 - self.mix) * memo + self.mix * logits, logits)


@pytest.fixture(scope="module")
def sets():
    fx, fy = _blobs(300, 1)
    hx, hy = _blobs(600, 2)
    rx, ry = _blobs(900, 3)
    return (rx, ry), (fx, fy), (hx, hy)


def test_it_stops_when_forget_matches_heldout_and_not_before(sets):
    retain, forget, heldout = sets
    model = _Memoriser(*forget)
    stop = AutoStop(forget, heldout, retain[1], seed=0, slack=5.0)  # this forget sample: 3.8 points above
    assert stop.kind == "sample"
    stop.start(model)
    decisions = []
    for step, alpha in enumerate([0.0, 0.2, 0.5, 0.8, 1.0, 1.0], start=1):
        model.alpha = alpha
        decisions.append(stop(model, step, float(step)))
    first = decisions.index(True)
    assert not any(decisions[:first])
    memorised = stop.history[0]
    assert memorised.forget_acc == 100.0 and memorised.mia_low > 50  # the attack sees members
    assert not memorised.conditions["forget_acc_like_heldout"] and not memorised.conditions["mia_not_member"]
    at_stop = stop.history[first]
    assert all(at_stop.conditions.values())
    assert abs(at_stop.forget_acc - at_stop.heldout_same_class_acc) < 8
    assert stop.stop_step == first + 1 and stop.stopped
    # once stopped it stays stopped; its summary is JSON-ready and names the step
    assert stop(model, 99, 99.0) and stop.summary()["step"] == first + 1
    # slack 0 asks the point estimates to meet: this forget sample, 3.8 points above, is not done
    strict = AutoStop(forget, heldout, retain[1], seed=0)
    strict.start(model)
    assert not strict(model, 1, 0.0) and strict.history[-1].conditions["forget_acc_like_heldout"] is False


def test_a_model_that_lost_heldout_accuracy_is_not_done(sets):
    retain, forget, heldout = sets
    model = _Memoriser(*forget)
    stop = AutoStop(forget, heldout, retain[1])
    stop.start(model)
    model.alpha = 1.0
    with torch.no_grad():
        model.linear.weight.mul_(-1)  # a broken model: forget looks like held-out, both now wrong
    assert not stop(model, 5, 1.0)
    assert stop.history[-1].conditions["heldout_kept"] is False and "heldout_kept" in stop.reason


def test_a_whole_class_request_needs_the_class_no_longer_predicted(sets):
    (rx, ry), _, (hx, hy) = sets
    keep = ry != 2
    fx, fy = rx[~keep][:100], ry[~keep][:100]
    stop = AutoStop((fx, fy), (hx, hy), ry[keep])
    assert stop.kind == "class" and stop.whole_classes == [2]
    model = _Memoriser(fx, fy)
    model.alpha = 1.0  # generalises: still predicts class 2 on its unseen images
    stop.start(model)
    assert not stop(model, 1, 0.0) and stop.history[-1].conditions["class_forgotten"] is False
    with torch.no_grad():
        model.linear.bias[2] = -100.0  # never predicts class 2
    model.alpha = 0.5  # ... but still knows its forget images: their class-2 loss is far below held-out's
    assert not stop(model, 2, 0.0)
    check = stop.history[-1]
    # the forget side already fails and the evaluation is no nearer the rule than step 1's: (c) is not measured
    assert check.conditions == {"class_forgotten": True, "class_not_member": False} and check.partial
    assert check.heldout_acc != check.heldout_acc and check.mia_low > 50
    full = stop.check(model, 2, 0.0)  # check() measures everything
    assert full.conditions == {"heldout_kept": True, "class_forgotten": True, "class_not_member": False}
    assert not full.partial and full.shortfall == check.shortfall
    model.alpha = 1.0  # forget images now treated like any other image of the class
    assert stop(model, 3, 0.0)
    check = stop.history[-1]
    assert check.conditions == {"heldout_kept": True, "class_forgotten": True, "class_not_member": True}
    assert check.mia_low <= 50 <= check.mia_high


def test_the_untouched_model_is_not_returned_by_default(sets):
    retain, forget, heldout = sets
    model = _Memoriser(*forget)
    model.alpha = 1.0
    stop = AutoStop(forget, heldout, retain[1], slack=5.0)
    assert not stop(model, 0, 0.0) and "min_steps" in stop.reason
    assert stop(model, 1, 0.0)


def test_a_run_that_ends_without_the_rule_gets_the_closest_evaluations_model(sets):
    retain, forget, heldout = sets
    model = _Memoriser(*forget)
    stop = AutoStop(forget, heldout, retain[1], seed=0)  # slack 0: this forget sample (3.8 above) never meets (a)
    stop.start(model)
    for step, alpha in enumerate([0.0, 0.5, 1.0, 0.3], start=1):
        model.alpha = alpha
        assert not stop(model, step, float(step))
    short = [h.shortfall for h in stop.history]
    assert short[2] == min(short) and 0 < short[2] < short[1] < short[3] < short[0]  # nearer as alpha rises
    # (c) deferred: the kept evaluation measured the forget side only, so its shortfall is a lower bound
    assert stop.summary()["closest"] == {"step": 3, "seconds": 3.0, "shortfall": short[2], "partial": True}
    model.alpha = 0.0  # where the run ended: memorised again
    assert stop.finish(model, 5, 5.0)
    assert model.alpha == 1.0 and stop.restored_step == 3 and "step 3" in stop.reason
    assert len(stop.history) == 5  # the final model was evaluated before it was replaced
    assert stop.summary()["restored_step"] == 3
    # finish() measured (c) for the kept evaluation (with its weights) and the final one: both held it
    kept, final = stop.history[2], stop.history[4]
    assert not kept.partial and kept.conditions["heldout_kept"] and kept.shortfall == short[2]
    assert not final.partial and final.conditions["heldout_kept"] and final.heldout_acc == kept.heldout_acc
    # keep_closest=False: the final model stays
    plain = AutoStop(forget, heldout, retain[1], seed=0, keep_closest=False)
    for step, alpha in enumerate([0.0, 1.0, 0.0], start=1):
        model.alpha = alpha
        plain(model, step, float(step))
    assert not plain.finish(model) and model.alpha == 0.0 and plain.restored_step is None
    # the untouched model (before min_steps) is never the closest, and a stopped run keeps its stop
    first = AutoStop(forget, heldout, retain[1], seed=0)
    model.alpha = 1.0
    first(model, 0, 0.0)
    assert first.history[0].shortfall == float("inf") and first.summary()["closest"] is None
    assert not first.finish(model, 0, 0.0)
    done = AutoStop(forget, heldout, retain[1], seed=0, slack=5.0)
    assert done(model, 1, 1.0) and not done.finish(model, 2, 2.0) and len(done.history) == 1
    with pytest.raises(TypeError, match="keep_closest must be a bool"):
        AutoStop(forget, heldout, retain[1], keep_closest="yes")


def test_unlearn_returns_the_closest_evaluations_model_when_the_recipe_runs_out():
    # NegGrad+ with a large ascent weight: the model nears the rule, then the ascent wrecks its held-out accuracy
    retain, forget, unseen = _train_data()
    model = fastblend.train_model(_net(), (torch.cat([retain[0], forget[0]]), torch.cat([retain[1], forget[1]])),
                                  config={"epochs": 30, "lr": 0.05, "batch_size": 32, "warmup_epochs": 0})
    cfg = {"epochs": 6, "batch_size": 16, "lr": 0.05, "beta": 2.0}
    res = unlearn("neggrad_plus", model, retain, forget, unseen, config=cfg, seed=0, stop="auto")
    info = res.info["auto_stop"]
    assert not info["stopped"] and info["restored_step"] == info["closest"]["step"] < res.steps
    # the model returned is the one evaluated at that step: the rule's statistics on it are that evaluation's
    again = AutoStop(forget, unseen, retain[1], seed=0)
    again.baseline = info["baseline_heldout_acc"]
    check = again.check(res.model, info["restored_step"])
    assert check.shortfall == pytest.approx(info["closest"]["shortfall"])
    ended = unlearn("neggrad_plus", model, retain, forget, unseen, config=cfg, seed=0,
                    stop=AutoStop(forget, unseen, retain[1], seed=0, keep_closest=False))
    assert ended.info["auto_stop"]["restored_step"] is None
    assert again.check(ended.model, res.steps).shortfall > check.shortfall


@pytest.mark.parametrize("failure", ["interrupt", "diverge"])
def test_a_run_that_fails_under_the_stop_hands_back_the_closest_evaluations_model(failure):
    # the run of the test above, broken after several counted evaluations: Ctrl-C, or weights that turn NaN
    retain, forget, unseen = _train_data()
    model = fastblend.train_model(_net(), (torch.cat([retain[0], forget[0]]), torch.cat([retain[1], forget[1]])),
                                  config={"epochs": 30, "lr": 0.05, "batch_size": 32, "warmup_epochs": 0})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = {"epochs": 6, "batch_size": 16, "lr": 0.05, "beta": 2.0}

    def breaks(m, step, seconds):
        if step >= 40:
            if failure == "interrupt":
                raise KeyboardInterrupt
            with torch.no_grad():
                next(m.parameters()).fill_(float("nan"))

    stop = AutoStop(forget, unseen, retain[1], seed=0)
    expected = KeyboardInterrupt if failure == "interrupt" else FloatingPointError
    with pytest.raises(expected) as caught:
        unlearn("neggrad_plus", model, retain, forget, unseen, config=cfg, seed=0, stop=stop, callback=breaks,
                eval_every=1)
    res = caught.value.result
    info = res.info["auto_stop"]
    assert res.steps == info["restored_step"] == info["closest"]["step"] == stop.restored_step
    assert 0 < res.steps <= 40 and res.info["failed"].startswith(expected.__name__)
    assert ("interrupted" if failure == "interrupt" else "diverged") in info["reason"]
    assert any(".result" in note for note in caught.value.__notes__)
    assert all(bool(torch.isfinite(p).all()) for p in res.model.parameters())
    # it is the model that evaluation judged, and the caller's model is untouched
    again = AutoStop(forget, unseen, retain[1], seed=0)
    again.baseline = info["baseline_heldout_acc"]
    assert again.check(res.model, res.steps).shortfall == pytest.approx(info["closest"]["shortfall"])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # without a stop nothing whole was kept: the error alone
    with pytest.raises(expected) as plain:
        unlearn("neggrad_plus", model, retain, forget, unseen, config=cfg, seed=0, callback=breaks, eval_every=1)
    assert not hasattr(plain.value, "result")
    # recover() by hand: nothing twice, and its arguments checked
    assert not stop.recover(res.model)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        stop.recover("model")


def _mlp_task():
    # 3 classes of 64-dim blobs as 8x8 images, and a small MLP trained on all of them
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 64, generator=g) * 1.5

    def draw(n):
        y = torch.arange(3).repeat_interleave(n)
        x = (centers[y] + torch.randn(3 * n, 64, generator=g)).reshape(-1, 1, 8, 8)
        perm = torch.randperm(3 * n, generator=g)
        return x[perm], y[perm]

    (x, y), unseen = draw(60), draw(30)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 3))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(100):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), (x[20:], y[20:]), (x[:20], y[:20]), unseen


def test_a_divergence_first_seen_by_the_stops_final_evaluation_hands_back_too():
    # at lr 1000 the weights stay finite (no end-of-training refusal) but the final logits overflow: the stop's
    # evaluation of the final model, after training, is what finds it
    model, retain, forget, unseen = _mlp_task()
    stop = AutoStop(forget, unseen, retain[1], seed=0)
    with pytest.raises(FloatingPointError, match="not finite") as caught:
        unlearn("finetune", model, retain, forget, unseen, config={"epochs": 3, "lr": 1000.0}, stop=stop)
    res = caught.value.result
    assert res.steps == stop.restored_step == res.info["auto_stop"]["closest"]["step"] > 0
    assert all(bool(torch.isfinite(p).all()) for p in res.model.parameters())


def test_a_pruned_run_that_fails_hands_back_plain_weights():
    # prune's own finish (pruning made permanent) never ran: the hand-back does it, as a finished run would
    model, retain, forget, unseen = _mlp_task()
    wrapped = nn.Sequential(copy.deepcopy(model))  # a caller's model that came pruned keeps its reparametrisation
    torch.nn.utils.prune.l1_unstructured(wrapped[0][1], "bias", amount=0.1)

    def boom(m, step, seconds):
        if step >= 4:
            raise KeyboardInterrupt

    with pytest.raises(ValueError, match="unlearn: model cannot be copied .*prune.remove"):
        unlearn("finetune", wrapped, retain, forget, unseen, config={"epochs": 1})
    keys = set(model.state_dict())
    for net, inplace in ((model, False), (wrapped, True)):  # a pruned module cannot be deep-copied: in place
        with pytest.raises(KeyboardInterrupt) as caught:
            unlearn("prune", net, retain, forget, unseen, config={"epochs": 3, "inplace": inplace}, stop="auto",
                    callback=boom, eval_every=1)
        got = set(caught.value.result.model.state_dict())
        assert not any(k.endswith("weight_orig") for k in got)  # the run's pruning is folded
        if net is model:
            assert got == keys  # loads into the caller's architecture
        else:  # the caller's own reparametrisation of the bias stays
            assert "0.1.bias_orig" in got and "0.1.weight" in got


def test_the_hand_back_says_so_without_exception_notes(monkeypatch):
    # before Python 3.11 an exception has no add_note: the note becomes a warning, the error stays the error
    from fastblend.methods import _hand_back

    class Old(FloatingPointError):
        @property
        def add_note(self):
            raise AttributeError("add_note")

    model, retain, forget, unseen = _mlp_task()
    stop = AutoStop(forget, unseen, retain[1], seed=0)
    stop.start(model)
    stop(model, 1, 1.0)  # a counted evaluation, so there is a model to hand back
    exc = Old("diverged")
    ctx = type("Ctx", (), {"info": {}})()
    with pytest.warns(UserWarning, match="kept in this exception's .result"):
        _hand_back(exc, stop, model, None, "finetune", ctx, 1.0, 3, len(retain[1]), False, set())
    assert exc.result.steps == 1 and not hasattr(exc, "__notes__")


@pytest.mark.parametrize("eval_every", [0, 7, 1000])
def test_the_callers_eval_every_neither_thins_nor_multiplies_the_stops_evaluations(eval_every):
    model, retain, forget, unseen = _mlp_task()
    cfg = {"epochs": 5, "request": "sample"}
    seen = []
    res = unlearn("a_finetune", model, retain, forget, unseen, config=cfg, stop="auto", eval_every=eval_every,
                  callback=lambda m, s, t: seen.append(s))
    planned = fastblend.methods.planned_steps("a_finetune", cfg, len(retain[1]))
    stop = res.info["auto_stop"]
    every = fastblend.tracking.eval_every_for(planned, 8)
    # the stop's own cadence: about 8 over the planned steps (or fewer where it stopped early)
    assert stop["evaluations"] >= min(8, res.steps // every + 1) - 1
    user = eval_every or every
    assert seen[0] == 0 and seen[-1] == res.steps  # the caller sees the first and the last model
    assert all(s % user == 0 for s in seen[1:-1])  # and otherwise its own cadence only
    assert set(range(0, res.steps, user)) <= set(seen)


@pytest.mark.parametrize("method", ["retrain", "distill"])
def test_a_failed_run_of_a_method_that_trains_a_new_model_hands_that_one_back(method):
    # retrain and distill train a new model: the kept weights are its, never loaded into the caller's (inplace)
    model, retain, forget, unseen = _mlp_task()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def boom(m, step, seconds):
        if step >= 4:
            raise KeyboardInterrupt

    student = (lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 3))) \
        if method == "distill" else None
    cfg = {"epochs": 3, "inplace": True, **({"model_factory": student} if student else {})}
    with pytest.raises(KeyboardInterrupt) as caught:  # the caller's error, not a load_state_dict mismatch
        unlearn(method, model, retain, forget, unseen, config=cfg, callback=boom, eval_every=1,
                stop=AutoStop(forget, unseen, retain[1], seed=0, patience=1000))  # never stops by itself
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    res = caught.value.result
    assert res.model is not model and res.steps == res.info["auto_stop"]["restored_step"]


def test_an_interrupt_after_the_stop_fired_hands_back_the_stops_model():
    # the stop fired at an evaluation off the caller's cadence; the caller's callback, then called, is interrupted
    model, retain, forget, unseen = _mlp_task()
    stop = AutoStop(forget, unseen, retain[1], seed=0, slack=100.0, max_drop=100.0)  # holds at the first count
    calls = []

    def boom(m, step, seconds):
        calls.append(step)
        if step > 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as caught:
        unlearn("finetune", model, retain, forget, unseen, config={"epochs": 3}, stop=stop, callback=boom,
                eval_every=1000)
    res = caught.value.result
    assert stop.stopped and res.steps == stop.stop_step == calls[-1] and stop.restored_step is None
    assert any("the model the auto stop judged done" in n for n in caught.value.__notes__)


def test_retrain_with_a_stop_refuses_non_finite_forget_pixels_up_front():
    model, retain, forget, unseen = _mlp_task()
    bad = forget[0].clone()
    bad[3, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="unlearn: forget images must be finite; row 3"):
        unlearn("retrain", model, retain, (bad, forget[1]), unseen, config={"epochs": 1}, stop="auto")
    unlearn("retrain", model, retain, (bad, forget[1]), unseen, config={"epochs": 1})  # it never reads them


def test_recover_after_the_stop_fired_keeps_the_stops_model(sets):
    retain, forget, heldout = sets
    model = _Memoriser(*forget)
    stop = AutoStop(forget, heldout, retain[1], seed=0, slack=5.0)
    stop.start(model)
    model.alpha = 0.5
    stop(model, 1, 1.0)
    model.alpha = 1.0
    assert stop(model, 2, 2.0)  # the rule held: this model is the result
    model.alpha = 0.0
    assert not stop.recover(model) and model.alpha == 0.0 and stop.restored_step is None


def test_the_caller_sees_the_last_model_when_it_falls_on_the_stops_cadence_only():
    model, retain, forget, unseen = _mlp_task()
    seen = []

    def callback(m, step, seconds):
        seen.append((step, fastblend.tracking.final_report()))

    res = unlearn("finetune", model, retain, forget, unseen, config={"epochs": 20, "batch_size": 64}, stop="auto",
                  callback=callback, eval_every=25)
    assert seen[-1] == (res.steps, True) and [s for s, _ in seen].count(res.steps) == 1
    seen.clear()  # without a stop: the last step on the caller's cadence is reported once, as the final one
    res = unlearn("finetune", model, retain, forget, unseen, config={"epochs": 20, "batch_size": 64},
                  callback=callback, eval_every=10)
    assert seen[-1] == (res.steps, True) and not any(final for _, final in seen[:-1])


def test_it_needs_no_retrain_input():
    params = set(inspect.signature(AutoStop).parameters)
    assert params.isdisjoint({"retrain", "reference", "band", "target"})  # matched_heldout: held-out images
    assert {"forget", "heldout"} <= params


def _train_data(seed=0):
    (rx, ry), (fx, fy), (ux, uy) = _blobs(240, seed), _blobs(60, seed + 1), _blobs(240, seed + 2)
    return (rx, ry), (fx, fy), (ux, uy)


def _net(seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, C))


def test_unlearn_stop_auto_ends_the_run_at_the_stop_and_reports_it():
    retain, forget, unseen = _train_data()
    model = fastblend.train_model(_net(), (torch.cat([retain[0], forget[0]]), torch.cat([retain[1], forget[1]])),
                                  config={"epochs": 30, "lr": 0.05, "batch_size": 32, "warmup_epochs": 0})
    cfg = {"epochs": 20, "batch_size": 16, "lr": 0.01}
    full = unlearn("finetune", model, retain, forget, unseen, config=cfg, seed=0)
    auto = unlearn("finetune", model, retain, forget, unseen, config=cfg, seed=0, stop="auto")
    info = auto.info["auto_stop"]
    assert info["stopped"] and info["step"] == auto.steps < full.steps
    assert auto.info["stopped_at_step"] == info["step"]
    assert info["kind"] == "sample" and info["last"]["done"]
    # the returned model is the one the stop judged: its rule holds on it
    again = AutoStop(forget, unseen, retain[1], seed=0)
    again.baseline = info["baseline_heldout_acc"]
    assert all(again.check(auto.model, info["step"]).conditions.values())
    # the stop's evaluations are part of the method's time
    assert auto.seconds >= info["eval_seconds"] > 0


def test_unlearn_stop_auto_on_an_accelerated_method_and_with_a_callback():
    retain, forget, unseen = _train_data(3)
    model = fastblend.train_model(_net(1), (torch.cat([retain[0], forget[0]]), torch.cat([retain[1], forget[1]])),
                                  config={"epochs": 20, "lr": 0.05, "batch_size": 32, "warmup_epochs": 0})
    seen = []
    res = unlearn("a_finetune", model, retain, forget, unseen, config={"epochs": 5, "batch_size": 16}, seed=0,
                  stop="auto", callback=lambda m, s, t: seen.append(s), eval_every=2)
    assert seen[0] == 0 and all(b - a <= 2 for a, b in zip(seen, seen[1:]))
    # the callback every 2 steps; the stop about `evaluations` (8) times over the planned steps, not at every call
    planned = fastblend.methods.planned_steps("a_finetune", {"epochs": 5, "batch_size": 16}, len(retain[1]))
    assert len(seen) > res.info["auto_stop"]["evaluations"] and res.info["auto_stop"]["evaluations"] <= 8 + 1
    assert planned == 75 and (res.info["auto_stop"]["stopped"] or len(seen) == 39)
    if res.info["auto_stop"]["stopped"]:
        assert seen[-1] == res.steps == res.info["auto_stop"]["step"]


@pytest.mark.parametrize("bad, message", [
    ("soon", "stop must be None, 'auto' or a fastblend.AutoStop"),
    (3, "stop must be None, 'auto' or a fastblend.AutoStop"),
])
def test_unlearn_rejects_a_bad_stop(bad, message):
    retain, forget, unseen = _train_data()
    with pytest.raises(ValueError, match=message):
        unlearn("finetune", _net(), retain, forget, unseen, stop=bad)


def test_unlearn_stop_auto_needs_unseen_and_a_training_method():
    retain, forget, unseen = _train_data()
    with pytest.raises(ValueError, match="stop='auto' compares the forget set with held-out data"):
        unlearn("finetune", _net(), retain, forget, stop="auto")
    with pytest.raises(ValueError, match="one-shot"):
        unlearn("ssd", _net(), retain, forget, unseen, stop="auto")


def test_autostop_rejects_bad_arguments(sets):
    retain, forget, heldout = sets
    with pytest.raises(ValueError, match="AutoStop: kind must be one of"):
        AutoStop(forget, heldout, kind="whole")
    with pytest.raises(ValueError, match="kind='auto' needs retain_labels"):
        AutoStop(forget, heldout)
    with pytest.raises(ValueError, match="heldout has no images of the forget classes \\[2\\]"):
        AutoStop(forget, (heldout[0][heldout[1] != 2], heldout[1][heldout[1] != 2]), kind="sample")
    with pytest.raises(ValueError, match="AutoStop: patience must be an int >= 1"):
        AutoStop(forget, heldout, kind="sample", patience=0)
    with pytest.raises(ValueError, match="AutoStop: z must be a finite number"):
        AutoStop(forget, heldout, kind="sample", z=float("nan"))
    with pytest.raises(TypeError, match="AutoStop: retain_labels must be a 1-D integer tensor"):
        AutoStop(forget, heldout, retain[1].float())
    with pytest.raises(TypeError, match="AutoStop: heldout must be an \\(images, labels\\) pair"):
        AutoStop(forget, torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*heldout)), kind="sample")
    with pytest.raises(ValueError, match="AutoStop: forget"):
        AutoStop((forget[0][:0], forget[1][:0]), heldout, kind="sample")
    with pytest.raises(TypeError, match="AutoStop: model must be a torch.nn.Module"):
        AutoStop(forget, heldout, kind="sample")("model", 1, 0.0)


def test_a_pruned_run_and_a_reused_stop_get_their_own_closest_weights():
    # prune reparametrises weights (weight_orig, weight_mask) while it trains and makes the pruning permanent at
    # the end: the copy kept at an evaluation is folded back into the final layout
    retain, forget, unseen = _train_data()
    model = fastblend.train_model(_net(), (torch.cat([retain[0], forget[0]]), torch.cat([retain[1], forget[1]])),
                                  config={"epochs": 30, "lr": 0.05, "batch_size": 32, "warmup_epochs": 0})
    class NeverDone(AutoStop):  # the rule never holds and the earliest evaluation after step 0 is the closest
        def check(self, model, step=0, seconds=0.0):  # the signature before staged evaluations: still called
            check = super().check(model, step, seconds)
            check.done, check.shortfall = False, (float(step) if step >= 1 else float("inf"))
            return check

    stop = NeverDone(forget, unseen, retain[1], seed=0)
    res = unlearn("prune", model, retain, forget, unseen, config={"epochs": 4, "lr": 1.0, "sparsity": 0.5}, seed=0,
                  stop=stop)
    info = res.info["auto_stop"]
    assert not info["stopped"] and info["restored_step"] is not None
    assert set(res.model.state_dict()) == set(model.state_dict())  # no weight_orig / weight_mask left
    assert all(bool((p == 0).any()) for n, p in res.model.named_parameters() if n.endswith("weight"))  # pruned
    # the same stop for a second run judges that run alone: its history, stop and kept weights start afresh
    first = len(stop.history)
    again = unlearn("finetune", model, retain, forget, unseen, config={"epochs": 2, "batch_size": 16, "lr": 0.01},
                    seed=0, stop=stop)
    assert len(stop.history) == again.info["auto_stop"]["evaluations"] < first + len(stop.history)
    assert stop.history[0].step == 0 and (stop.restored_step is None or stop.restored_step <= again.steps)
    assert not stop.finish(again.model) or stop.restored_step is not None  # a second finish does nothing
    restored = stop.restored_step
    assert not stop.finish(again.model) and stop.restored_step == restored


class _Counting(_Memoriser):
    """A _Memoriser that counts the rows it forwards."""

    rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        return super().forward(x)


def _run_through(stop: AutoStop, model: _Counting, alphas: list[float]) -> list[bool]:
    stop.start(model)
    model.alpha = 0.0
    decisions = [stop(model, 0, 0.0)]  # the untouched model, as unlearn evaluates it before the first step
    for step, alpha in enumerate(alphas, start=1):
        model.alpha = alpha
        decisions.append(stop(model, step, float(step)))
        if decisions[-1]:
            break
    model.alpha = alphas[-1]
    stop.finish(model, len(alphas) + 1, float(len(alphas) + 1))
    return decisions


@pytest.mark.parametrize("slack, alphas", [(5.0, [0.0, 0.1, 0.3, 0.6, 1.0, 1.0]),  # stops
                                           (0.0, [0.0, 0.6, 1.0, 0.3, 0.1])])      # never holds: the closest back
def test_staged_evaluations_decide_as_full_ones_at_fewer_forwards(sets, slack, alphas):
    retain, forget, heldout = sets
    hx, hy = heldout
    matched = (hx[:300], hy[:300])  # stands in for the difficulty-matched images
    runs = {}
    for mode, options in (("full", {"staged": False}), ("exact", {"defer_kept": False}), ("deferred", {})):
        model = _Counting(*forget)
        stop = AutoStop(forget, heldout, retain[1], seed=0, slack=slack, matched_heldout=matched, **options)
        runs[mode] = (_run_through(stop, model, alphas), stop, model)
    d_f, s_f, m_f = runs["full"]
    assert not any(h.partial for h in s_f.history) and s_f.summary()["partial_evaluations"] == 0
    for mode in ("exact", "deferred"):
        d_s, s_s, m_s = runs[mode]
        assert d_s == d_f and s_s.stopped == s_f.stopped and s_s.stop_step == s_f.stop_step
        assert s_s.restored_step == s_f.restored_step and m_s.alpha == m_f.alpha
        assert [h.done for h in s_s.history] == [h.done for h in s_f.history]
        assert all(h.shortfall <= f.shortfall + 1e-9 for h, f in zip(s_s.history, s_f.history))
        assert all(h.shortfall == f.shortfall for h, f in zip(s_s.history, s_f.history) if not h.partial)
        partial = [h for h in s_s.history if h.partial]
        # before min_steps (step 0) a check is never a stop nor the closest: (c) is skipped there
        assert s_s.history[0].partial and s_s.history[0].step == 0
        assert all(h.heldout_acc != h.heldout_acc and "heldout_kept" not in h.conditions for h in partial)
        assert s_s.summary()["partial_evaluations"] == len(partial)
        # each partial evaluation skipped the 600 held-out rows
        assert m_f.rows - m_s.rows == 600 * len(partial)
    (_, s_e, m_e), (_, s_d, m_d) = runs["exact"], runs["deferred"]
    # exact: an evaluation nearer the rule than every earlier one is measured in full (it could be the closest);
    # those after the nearest one (alpha 1.0 in the second run) skip (c)
    assert any(h.partial for h in s_e.history[1:]) == (slack == 0.0)
    if slack == 0.0:  # the run ended on a partial evaluation: its reason says (c) went unmeasured, and that the
        # end's shortfall is only a lower bound
        assert s_e.history[-1].partial and s_e.restored_step is not None
        assert "heldout_kept not measured" in s_e.reason and "against at least" in s_e.reason
        assert "not measured" not in s_f.reason and "at least" not in s_f.reason
        # deferred: (c) only where the run ended: the kept evaluation and the final one, each once
        assert [h.step for h in s_d.history if not h.partial] == [3, 6] and m_d.rows < m_e.rows
        assert "against at least" not in s_d.reason
    else:  # the stop's evaluation measured (c) (a possible stop), and no other did
        assert [h.step for h in s_d.history if not h.partial] == [s_d.stop_step]


class _Harmful(_Counting):
    """A _Counting model whose ``harm`` buffer (in its state_dict) shifts its predictions of the images ``hurt`` by
    one class."""

    def __init__(self, fx: torch.Tensor, fy: torch.Tensor, hurt: torch.Tensor):
        super().__init__(fx, fy)
        self.hurt = hurt
        self.register_buffer("harm", torch.tensor(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if float(self.harm):
            hit = (x[:, None, :] == self.hurt[None]).all(-1).any(1)
            out = torch.where(hit[:, None], out.roll(1, dims=1), out)
        return out


def _harmed_run(sets, steps, **options) -> tuple[AutoStop, _Harmful, list[bool]]:
    """A run of a _Harmful model through ``steps`` of ``(alpha, harm)`` (evaluated at steps 1, 2, ..., after the
    untouched model at step 0). The first 300 held-out images stand in for the matched images, which give (a) and
    (b); harm hurts only the rest, read by (c). Returns the stop, the model and the stop's answers."""
    retain, forget, (hx, hy) = sets
    model = _Harmful(*forget, hurt=hx[300:])
    stop = AutoStop(forget, (hx, hy), retain[1], seed=0, matched_heldout=(hx[:300], hy[:300]), **options)
    stop.start(model)
    answers = [stop(model, 0, 0.0)]
    for step, (alpha, harm) in enumerate(steps, start=1):
        model.alpha, model.harm = alpha, torch.tensor(harm)
        answers.append(stop(model, step, float(step)))
    return stop, model, answers


def test_deferred_held_out_check_returns_the_final_model_when_the_closest_lost_accuracy(sets):
    runs = {}
    for defer in (True, False):
        # step 2: nearest the rule on the forget side, but held-out accuracy collapsed there; slack 0: (a) never holds
        stop, model, answers = _harmed_run(sets, [(0.25, 0.0), (0.5078125, 1.0), (0.5, 0.0)], defer_kept=defer)
        assert not any(answers)
        rows = model.rows
        restored = stop.finish(model, 3, 3.0)
        runs[defer] = (stop, model, restored, model.rows - rows)
    (s_d, m_d, r_d, rows_d), (s_e, m_e, r_e, _) = runs[True], runs[False]
    # exact staging measured (c) at step 2 (it could be the closest) and kept the final model; deferred kept step 2's
    # weights on the forget side's shortfall, measured its (c) at the end (and the final model's) and put them back
    assert not r_e and not r_d and m_e.alpha == m_d.alpha == 0.5 and float(m_d.harm) == 0.0
    assert s_d.restored_step is None and s_d.summary()["closest"]["step"] == 3
    kept = s_d.history[2]
    assert not kept.partial and not kept.conditions["heldout_kept"] and kept.heldout_acc < 55
    assert kept.shortfall == s_e.history[2].shortfall and s_d.history[3].shortfall == s_e.history[3].shortfall
    assert "step 2's" in s_d.reason and "with (c) measured" in s_d.reason
    assert rows_d == 2 * 600  # (c)'s 600 held-out rows, for the final model and for step 2's weights
    assert s_d._closest[1] == {}  # the copy is dropped
    # a second finish does nothing (it evaluated the final model once more, as a step after the last)
    assert not s_d.finish(m_d) and len(s_d.history) == 4


def test_deferred_held_out_check_keeps_the_runner_up_for_when_the_closest_lost_accuracy(sets):
    # the matrix's case (A-SCRUB, `hard`, split 0): the evaluation nearest on the forget side lost held-out accuracy,
    # the next nearest did not, and the run then moved away: the runner-up's weights were kept too, so the model
    # handed back is the exact closest, as exact staging's
    runs = {}
    for defer in (True, False):
        stop, model, answers = _harmed_run(sets, [(0.25, 0.0), (0.5078125, 1.0), (0.5, 0.0), (0.25, 0.0)],
                                           defer_kept=defer)
        assert not any(answers)
        kept = stop._closest[0].step  # on the shortfall measured: step 2, deferred
        runs[defer] = (stop, model, stop.finish(model, 4, 4.0), kept)
    (s_d, m_d, r_d, kept_d), (s_e, m_e, r_e, kept_e) = runs[True], runs[False]
    assert r_d and r_e and s_d.restored_step == s_e.restored_step == 3 and (kept_d, kept_e) == (2, 3)
    assert m_d.alpha == m_e.alpha == 0.5 and float(m_d.harm) == float(m_e.harm) == 0.0
    assert not s_d.history[2].conditions["heldout_kept"] and s_d.history[3].conditions["heldout_kept"]
    assert getattr(s_d, "_runner", None) is None  # the copies are dropped


def test_recover_after_deferred_kept_says_when_the_kept_model_lost_held_out_accuracy(sets):
    stop, model, _ = _harmed_run(sets, [(0.25, 0.0), (0.5078125, 1.0), (0.5, 0.0)])
    assert stop._closest[0].step == 2 and stop._closest[0].partial  # kept on the forget side
    assert stop.recover(model, "the run diverged") and float(model.harm) == 1.0 and stop.restored_step == 2
    kept = stop.history[2]
    assert not kept.partial and not kept.conditions["heldout_kept"]  # (c) measured after loading its weights
    assert "held-out accuracy fell to" in stop.reason and "at least" not in stop.reason


@pytest.mark.parametrize("slack, alphas, measured", [
    (5.0, [0.0, 0.5, 1.0, 1.0], True),    # stops at alpha 1.0: (c) measured there
    (0.0, [0.0, 0.5, 1.0, 0.5], True),    # never holds: the kept step 3 and the final step 4 measured at the end
    (0.0, [0.0, 0.5, 1.0, 1.0], False)])  # never holds, the final evaluation is the closest: (c) never needed
def test_a_deferred_baseline_is_measured_only_when_rule_c_is(sets, slack, alphas, measured):
    retain, forget, heldout = sets
    runs = {}
    for defer in (True, False):
        untouched = _Counting(*forget)
        stop = AutoStop(forget, heldout, retain[1], seed=0, slack=slack)
        assert stop.start(untouched, defer_baseline=defer) == (None if defer else stop.baseline)
        assert untouched.rows == (0 if defer else 600) and (stop.baseline is None) == defer
        model = _Counting(*forget)
        for step, alpha in enumerate(alphas, start=1):
            model.alpha = alpha
            if stop(model, step, float(step)):
                break
        stop.finish(model, step, float(step))
        runs[defer] = (stop, untouched.rows, model.alpha)
    (s_d, rows_d, a_d), (s_e, _, a_e) = runs[True], runs[False]
    # the untouched model was forwarded once, when (c) was first measured (or never): the same decisions
    assert rows_d == (600 if measured else 0) and a_d == a_e
    assert s_d.baseline == (s_e.baseline if measured else None) == s_d.summary()["baseline_heldout_acc"]
    assert s_d.stopped == s_e.stopped and s_d.stop_step == s_e.stop_step and s_d.restored_step == s_e.restored_step
    assert [h.shortfall for h in s_d.history if not h.partial] == [h.shortfall for h in s_e.history if not h.partial]
    with pytest.raises(ValueError, match="heldout_logits or defer_baseline=True, not both"):
        s_d.start(model, torch.zeros(600, C), defer_baseline=True)
    # the model whose accuracy is the level to keep cannot be the one trained: evaluating it is refused, and one
    # whose weights were written since start() is refused when the baseline is measured
    s_d.start(model, defer_baseline=True)
    with pytest.raises(ValueError, match="must not be the model being trained"):
        s_d(model, 1, 1.0)
    other = _Counting(*forget)
    with torch.no_grad():
        model.linear.bias.add_(0.0)  # an in-place write: its version counter moves
    with pytest.raises(ValueError, match="was changed since"):
        s_d.check(other, 1, 1.0)
    with pytest.raises(TypeError, match="defer_baseline must be a bool"):
        s_d.start(model, defer_baseline="yes")


def test_finish_makes_the_same_collectives_on_every_rank_when_their_statistics_split(sets, monkeypatch):
    # under torch.distributed rank 0's statistics decide; here rank 1's forget side holds at the kept step (its
    # evaluation is complete) where rank 0's does not (partial): finish() must still make rank 0's collectives, in
    # rank 0's order, or the ranks' broadcasts pair with unrelated ones (a hang). Rank 1 is replayed against rank
    # 0's recorded broadcasts.
    import fastblend.autostop as autostop

    def run(kept_alpha: float, slack: float) -> tuple[AutoStop, _Harmful, bool]:
        stop, model, _ = _harmed_run(sets, [(0.25, 0.0), (kept_alpha, 1.0), (0.25, 0.0)], slack=slack)
        return stop, model, stop.finish(model, 3, 3.0)

    sent: list = []
    monkeypatch.setattr(autostop, "broadcast_object", lambda v: sent.append(v) or v)
    s0, _, r0 = run(0.5, 0.0)
    replay, taken = iter(list(sent)), []
    monkeypatch.setattr(autostop, "broadcast_object", lambda v: taken.append(v) or next(replay))
    s1, _, r1 = run(1.0, 5.0)
    assert s0.history[2].partial is False and s1.history[2].partial is False  # rank 0's measured at the end
    assert len(taken) == len(sent) and r0 == r1 and s0.restored_step == s1.restored_step == 2


def test_matched_images_drawn_twice_are_forwarded_once(sets):
    retain, forget, (hx, hy) = sets
    pick = torch.arange(100).repeat(3)  # every matched image three times
    model = _Counting(*forget)
    model.alpha = 1.0
    stop = AutoStop(forget, (hx, hy), retain[1], seed=0, matched_heldout=(hx[pick], hy[pick]))
    stop.start(model)
    model.rows = 0
    check = stop.check(model, 1, 0.0)
    assert model.rows == 300 + 600 + 100  # forget, held-out, the distinct matched images
    cr = (model(hx[:100]).argmax(1) == hy[:100]).double()
    f_cls, f_counts = torch.unique(forget[1], return_counts=True)
    expect = 100 * sum(float(cr[hy[:100] == c].mean()) * k for c, k in zip(f_cls.tolist(), f_counts.tolist())) \
        / int(f_counts.sum())
    assert abs(check.heldout_same_class_acc - expect) < 1e-9


def test_start_takes_the_heldout_logits_already_computed(sets):
    retain, forget, heldout = sets
    model = _Counting(*forget)
    logits = model(heldout[0]).detach()
    for limit in (None, 100):  # all the held-out rows, or a subset drawn by the stop: read at its rows
        model.rows = 0
        stop = AutoStop(forget, heldout, retain[1], seed=0, max_samples=limit)
        assert stop.start(model, heldout_logits=logits) == AutoStop(forget, heldout, retain[1], seed=0,
                                                                    max_samples=limit).start(model) - 0.0
        assert model.rows == stop.heldout[1].numel()  # only the second stop forwarded
    for bad in (logits[:10], logits.long(), logits[:, 0], logits[:, :0], "logits"):
        with pytest.raises(ValueError, match="heldout_logits must be a floating"):
            AutoStop(forget, heldout, retain[1]).start(model, heldout_logits=bad)
    stop = AutoStop(forget, heldout, retain[1])
    stop.start(model)
    stop(model, 1, 0.0)
    with pytest.raises(ValueError, match="heldout_logits must be finite"):
        stop.start(model, heldout_logits=torch.full_like(logits, float("nan")))
    assert len(stop.history) == 1  # refused before the new run's reset: the first run's record is intact
    with pytest.raises(TypeError, match="staged must be a bool"):
        AutoStop(forget, heldout, retain[1], staged=1)


def test_rows_are_grouped_only_when_equal():
    from fastblend.autostop import _distinct_rows

    x = torch.randn(20, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    pick = torch.tensor([3, 1, 3, 7, 1, 1, 0])
    keep, inverse = _distinct_rows(x[pick])
    assert keep.tolist() == [0, 1, 3, 6] and torch.equal(x[pick][keep][inverse], x[pick])
    nan = x[pick].clone()
    nan[0, 0, 0, 0] = float("nan")  # NaN != NaN: nothing is grouped, every row forwarded
    assert _distinct_rows(nan)[0].tolist() == list(range(7))
    near = x[[2, 2]].clone()
    near[1, 0, 0, 0] += 1e-6  # a row one pixel apart is its own
    assert _distinct_rows(near)[0].tolist() == [0, 1]


def test_hostile_inputs_to_the_stop_get_clear_errors(sets):
    import warnings

    import numpy as np

    retain, forget, heldout = sets
    model = _Memoriser(*forget)
    assert AutoStop(forget, heldout, retain[1], staged=np.bool_(False)).staged is False  # numpy bools as bools
    stop = AutoStop(forget, heldout, retain[1])
    logits = model(heldout[0]).detach()
    stop.start(model, heldout_logits=torch.cat([logits, logits[:, :1]], 1))  # one column too many
    with pytest.raises(ValueError, match="gives 3 logits per image, and the heldout_logits given to start"):
        stop(model, 1, 0.0)
    stop.start(model)
    with pytest.raises(TypeError, match="full_below must be None or a number"):
        stop.check(model, 1, 0.0, full_below="x")
    # a step going backwards is a run the caller forgot to start; steps and seconds out of range are refused
    for step, seconds, message in ((-1, 0.0, "step must be >= 0"), (2, float("nan"), "seconds must be a finite"),
                                   (2, -1.0, "seconds must be a finite number >= 0")):
        with pytest.raises(ValueError, match=message):
            stop.check(model, step, seconds)
    stop(model, 3, 1.0)
    with pytest.raises(ValueError, match="step 2 comes before the last evaluation's step 3; a new run starts"):
        stop(model, 2, 2.0)
    stop(model, 3, 2.0)  # the same step again (finish's evaluation of the final model) is fine
    stop.start(model)
    stop(model, 0, 0.0)  # after start, a new run from step 0
    assert stop.check(model, torch.tensor(1), 0.0).step == 1  # a one-element tensor step, as before
    with pytest.raises(ValueError, match="full_below must be None or a number"):
        stop.check(model, 1, 0.0, full_below=float("nan"))
    with pytest.raises(TypeError, match="step must be an int"):
        stop.check(model, "3", 0.0)
    with pytest.raises(TypeError, match="seconds must be a number"):
        stop.check(model, 3, "0")
    # a subsample that drops a forget class says so
    with pytest.raises(ValueError, match="drawn by max_samples=10"):
        AutoStop(forget, (heldout[0][:30], torch.zeros(30, dtype=torch.long).index_fill_(0, torch.arange(29), 0)
                          .add_(torch.arange(30) == 29)), retain[1], max_samples=10, seed=3)
    # a check replaced on the instance with the older signature still runs
    plain = AutoStop(forget, heldout, retain[1], slack=5.0)
    plain.check = lambda model, step=0, seconds=0.0: AutoStop.check(plain, model, step, seconds)
    plain.start(model)
    model.alpha = 1.0
    assert plain(model, 1, 0.0) and not plain.history[-1].partial
    # a diverged model: a FloatingPointError naming the step, not an error from inside the MIA
    with torch.no_grad():
        model.linear.weight.fill_(float("inf"))
    with pytest.raises(FloatingPointError, match="not finite at step 2: the run diverged"):
        stop(model, 2, 0.0)
    # held-out images of the class forgotten whole only: rule (c) cannot be checked, and the stop says so
    (rx, ry), _, (hx, hy) = sets
    with pytest.warns(UserWarning, match="rule \\(c\\).*cannot be checked"):
        AutoStop((rx[ry == 2][:50], ry[ry == 2][:50]), (hx[hy == 2], hy[hy == 2]), ry[ry != 2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        AutoStop((rx[ry == 2][:50], ry[ry == 2][:50]), (hx, hy), ry[ry != 2])  # quiet with the other classes


def test_non_finite_logits_on_the_heldout_images_only_rule_c_reads_are_caught(sets):
    retain, forget, heldout = sets
    hx, hy = heldout

    class NanOnClass2(_Memoriser):  # finite on the forget and matched images, NaN on held-out images of class 2
        def forward(self, x):
            out = super().forward(x)
            bad = (x[:, None, :] == hx[hy == 2][None]).all(-1).any(1)
            return torch.where(bad[:, None], torch.full_like(out, float("nan")), out)

    model = NanOnClass2(*forget)
    fclass = forget[1] != 2
    stop = AutoStop((forget[0][fclass], forget[1][fclass]), heldout, retain[1], slack=5.0,
                    matched_heldout=(hx[hy != 2][:200], hy[hy != 2][:200]))
    stop.start(_Memoriser(*forget))  # the untouched model: finite everywhere
    model.alpha = 1.0  # forget like held-out: the forget side holds, so (c)'s held-out images are forwarded
    with pytest.raises(FloatingPointError, match="held-out images are not finite at step 1"):
        stop(model, 1, 0.0)
