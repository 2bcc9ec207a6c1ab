"""Time to target (fastblend.tracking): the step callback, its clock, Retrain's band and the rule."""

import math

import pytest
import torch
from torch import nn

from fastblend import tracking
from fastblend.methods import unlearn
from fastblend.tracking import Band, CurvePoint, Tracker, eval_every_for, time_to_target


def _point(seconds, forget, test, mia, step=0):
    return CurvePoint(step, seconds, forget, test, mia, 0.0)


REF = {"forget_acc": 90.0, "test_acc": 90.0, "mia": 50.0}


def test_band_contains_uses_every_tolerance_and_rejects_nan():
    band = Band()
    assert band.contains(_point(0, 92.0, 88.0, 55.0), REF)
    assert not band.contains(_point(0, 92.1, 90.0, 50.0), REF)
    assert not band.contains(_point(0, 90.0, 87.9, 50.0), REF)
    assert not band.contains(_point(0, 90.0, 90.0, 44.9), REF)
    assert not band.contains(_point(0, 90.0, 90.0, math.nan), REF)
    assert Band(forget_acc=5).contains(_point(0, 95.0, 90.0, 50.0), REF)
    with pytest.raises(ValueError, match="Band: mia must be a number >= 0"):
        Band(mia=-1)


def test_time_to_target_needs_the_next_evaluation_inside_too():
    curve = [_point(0, 99, 90, 60), _point(1, 90, 90, 50), _point(2, 99, 90, 50),  # one-point excursion
             _point(3, 91, 90, 50), _point(4, 90, 91, 51), _point(5, 95, 90, 50)]
    assert time_to_target(curve, REF) == 3.0
    assert time_to_target(curve[:2], REF) == 1.0  # the last evaluation needs no successor
    assert time_to_target(curve[:1], REF) is None
    assert time_to_target([], REF) is None
    dicts = [{"seconds": p.seconds, "forget_acc": p.forget_acc, "test_acc": p.test_acc, "mia": p.mia} for p in curve]
    assert time_to_target(dicts, REF) == 3.0


def test_eval_every_for_spreads_evaluations():
    assert eval_every_for(100, 30) == 4
    assert eval_every_for(10, 30) == 1
    with pytest.raises(ValueError, match="eval_every_for: evaluations"):
        eval_every_for(10, 0)


def _data(n=120, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 6, 6, generator=g)
    y = torch.arange(n) % 3
    x[:, 0, 0, 0] += y.float() * 2
    return x, y


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.ReLU(), nn.Linear(16, 3))


def test_tracker_reports_before_every_n_steps_and_after():
    x, y = _data()
    retain, forget, test = (x[:80], y[:80]), (x[80:100], y[80:100]), (x[100:], y[100:])
    tracker = Tracker(forget, test, seed=0)
    res = unlearn("finetune", _model(), retain, forget, config={"epochs": 2, "batch_size": 16, "warmup_epochs": 0},
                  callback=tracker, eval_every=3)
    assert res.steps == 10
    assert [p.step for p in tracker.points] == [0, 3, 6, 9, 10]
    times = [p.seconds for p in tracker.points]
    assert times == sorted(times) and times[0] >= 0
    for p in tracker.points:
        assert 0 <= p.forget_acc <= 100 and 0 <= p.test_acc <= 100 and 0 <= p.mia <= 100
    assert res.info["eval_seconds"] == pytest.approx(tracker.eval_seconds, rel=0.5, abs=0.05)
    # the final point is the returned model's quality
    assert tracker.evaluate(res.model) == pytest.approx({k: getattr(tracker.points[-1], k) for k in tracking.METRICS})


def test_evaluation_time_is_cut_out_of_the_clock(monkeypatch):
    """A fake clock advanced 100 s by each evaluation: neither the curve nor ``seconds`` may see it."""
    now = [0.0]

    class FakeTime:
        @staticmethod
        def perf_counter():
            now[0] += 0.001  # every read of the clock: 1 ms of "training"
            return now[0]

    monkeypatch.setattr(tracking, "time", FakeTime)
    monkeypatch.setattr("fastblend.methods.base.time", FakeTime)
    seen = []

    def callback(model, step, seconds):
        seen.append(seconds)
        now[0] += 100.0

    x, y = _data()
    res = unlearn("finetune", _model(), (x[:80], y[:80]), (x[80:100], y[80:100]),
                  config={"epochs": 1, "batch_size": 16, "warmup_epochs": 0}, callback=callback, eval_every=1)
    assert len(seen) == 6 and max(seen) < 1.0
    assert res.info["eval_seconds"] >= 600.0 and 0 <= res.seconds < 1.0


def test_tracker_subset_is_seeded_and_bounded():
    x, y = _data(300)
    a = Tracker((x[:200], y[:200]), (x[200:], y[200:]), max_samples=50, seed=3)
    b = Tracker((x[:200], y[:200]), (x[200:], y[200:]), max_samples=50, seed=3)
    assert a.forget[1].numel() == 50 and a.test[1].numel() == 50
    assert torch.equal(a.forget[0], b.forget[0]) and torch.equal(a.test[1], b.test[1])
    with pytest.raises(ValueError, match="Tracker: max_samples"):
        Tracker((x, y), (x, y), max_samples=2)


def test_tracker_scores_the_mia_on_every_forget_and_held_out_row_when_asked():
    from fastblend.evaluation import mia_with_interval

    x, y = _data(300)
    forget, test, heldout = (x[:120], y[:120]), (x[120:200], y[120:200]), (x[200:], y[200:])
    whole = Tracker(forget, test, max_samples=50, heldout=heldout, mia="auc", mia_samples=None, seed=3)
    assert whole.forget[1].numel() == 120 and whole.heldout[1].numel() == 100 and whole.test[1].numel() == 50
    model = _model()
    point = whole.evaluate(model)
    with torch.no_grad():
        lf, lh = model(forget[0]), model(heldout[0])
    assert point["mia"] == pytest.approx(mia_with_interval(lf, forget[1], lh, heldout[1], min_group=5).score, abs=1e-9)
    assert point["forget_acc"] == pytest.approx(float((lf.argmax(1) == forget[1]).double().mean() * 100))
    default = Tracker(forget, test, max_samples=50, heldout=heldout, seed=3)  # as max_samples, as before
    assert default.forget[1].numel() == 50 and default.heldout[1].numel() == 50
    for bad in (2, "all", 7.5):
        with pytest.raises(ValueError, match="Tracker: mia_samples must be None or an int >= 5"):
            Tracker(forget, test, heldout=heldout, mia_samples=bad)


def test_unlearn_rejects_bad_callback_arguments():
    x, y = _data()
    with pytest.raises(TypeError, match="unlearn: callback must be callable"):
        unlearn("finetune", _model(), (x[:80], y[:80]), (x[80:], y[80:]), callback=3)
    with pytest.raises(ValueError, match="unlearn: eval_every must be an int >= 0"):
        unlearn("finetune", _model(), (x[:80], y[:80]), (x[80:], y[80:]), eval_every=-1)


def test_pipeline_reports_time_to_target_and_plots_quality_against_time(tmp_path):
    from fastblend.experiments import pipeline

    cfg = pipeline.with_overrides(
        pipeline.ExperimentConfig(), out=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"), limit=400, width=8,
        ipc=8, blend_iterations=2, train_config={"epochs": 1, "lr": 0.05, "batch_size": 64},
        retrain_config={"epochs": 2, "lr": 0.05, "batch_size": 64, "warmup_epochs": 0},
        run_base=False, accelerated_config={"epochs": 1}, quiet=True,
        track_evaluations=4, band={"forget_acc": 100.0, "test_acc": 100.0, "mia": 100.0}, band_kind="fixed",
        retrain_seeds=1)
    result = pipeline.run_experiment(cfg)
    seed = result["per_seed"][0]
    rows = {r["variant"]: r for r in seed["rows"]}
    target = seed["time_to_target"]
    assert target["band"] == cfg.band and set(target["curves"]) == {"retrain", "accelerated"}
    # with a band as wide as the scale every variant is on target at its first evaluation
    assert rows["retrain"]["t_target"] == target["curves"]["retrain"][0]["seconds"]
    acc = rows["accelerated"]
    pre = sum(acc[f"t_{s}"] for s in ("features", "grouping", "split", "blend"))
    assert pre <= acc["t_target"] <= pre + acc["t_unlearning"]  # its curve starts after Blend
    assert acc["speedup_target_vs_retrain"] == pytest.approx(rows["retrain"]["t_target"] / acc["t_target"])
    assert rows["retrain"]["t_eval_tracking"] > 0
    last = target["curves"]["retrain"][-1]
    assert last["test_acc"] == pytest.approx(rows["retrain"]["test_acc"])  # the subset is the whole split here
    assert (tmp_path / "out" / "seed0" / "quality_vs_time.png").read_bytes()[:4] == b"\x89PNG"
    assert "target" in pipeline.format_table(result["summary"])


@pytest.mark.parametrize("refresh, forwards", [(1, 10), (3, 4), (20, 1)])
def test_unseen_refresh_forwards_a_new_unseen_batch_every_k_steps(monkeypatch, refresh, forwards):
    from fastblend.aamu import Forwards

    calls = []
    original = Forwards.infer
    monkeypatch.setattr(Forwards, "infer",
                        lambda self, model, x: calls.append(x.shape[0]) or original(self, model, x))
    x, y = _data(200)
    res = unlearn("a_finetune", _model(), (x[:80], y[:80]), (x[80:100], y[80:100]), unseen=(x[100:], y[100:]),
                  config={"batch_size": 8, "unseen_refresh": refresh, "request": "sample"})  # forwards unseen
    assert res.steps == 10 and len(calls) == forwards


def test_unseen_refresh_must_be_positive():
    x, y = _data()
    with pytest.raises(ValueError, match="unlearn: config.unseen_refresh must be >= 1"):
        unlearn("a_finetune", _model(), (x[:80], y[:80]), (x[80:100], y[80:100]), unseen=(x[100:], y[100:]),
                config={"unseen_refresh": 0})


def test_a_callback_returning_true_stops_the_training_after_that_step():
    x, y = _data()
    seen = []

    def stop_at_three(model, step, seconds):
        seen.append(step)
        return step >= 3

    res = unlearn("finetune", _model(), (x[:80], y[:80]), (x[80:100], y[80:100]),
                  config={"epochs": 2, "batch_size": 16, "warmup_epochs": 0}, callback=stop_at_three, eval_every=3)
    assert res.info["stopped_at_step"] == 3 and res.steps == 3
    assert seen == [0, 3]  # no evaluation after the stop: the model is the one evaluated at step 3
    full = unlearn("finetune", _model(), (x[:80], y[:80]), (x[80:100], y[80:100]),
                   config={"epochs": 2, "batch_size": 16, "warmup_epochs": 0}, callback=lambda *a: None, eval_every=3)
    assert full.steps == 10 and "stopped_at_step" not in full.info


def test_tracker_budget_asks_to_stop_once_spent():
    x, y = _data()
    model = _model()
    tracker = Tracker((x[80:100], y[80:100]), (x[100:], y[100:]), offset=2.0, budget=5.0)
    assert tracker(model, 0, 2.9) is False and not tracker.stopped
    assert tracker(model, 1, 3.0) is True and tracker.stopped  # 2 s offset + 3 s = the budget
    assert Tracker((x[80:100], y[80:100]), (x[100:], y[100:]))(model, 0, 1e9) is False  # no budget
    for bad in (0, -1.0, float("inf"), True, "5"):
        with pytest.raises(ValueError, match="Tracker: budget must be"):
            Tracker((x[80:100], y[80:100]), (x[100:], y[100:]), budget=bad)


class _CountingRows(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y, self.read = x, y, 0

    def __len__(self):
        return self.x.shape[0]

    def __getitem__(self, i):
        self.read += 1
        return self.x[i], int(self.y[i])


def test_tracker_takes_datasets_reading_only_its_subset_and_checks_its_arguments():
    x, y = _data(300)
    pairs = Tracker((x[:200], y[:200]), (x[200:], y[200:]), max_samples=50, seed=3)
    forget, test = _CountingRows(x[:200], y[:200]), _CountingRows(x[200:], y[200:])
    ds = Tracker(forget, test, max_samples=50, seed=3)
    assert forget.read == 50 and test.read == 50  # only the evaluation subset is read
    for a, b in ((pairs.forget, ds.forget), (pairs.test, ds.test)):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(TypeError, match="Tracker: test must be an \\(images, labels\\) pair .* got int"):
        Tracker((x, y), 5)
    for bad in (float("nan"), -1.0, float("inf"), "1"):
        with pytest.raises(ValueError, match="Tracker: offset must be a finite number of seconds >= 0"):
            Tracker((x, y), (x, y), offset=bad)
    with pytest.raises(ValueError, match="Tracker: max_samples must be None or an int >= 5"):
        Tracker((x, y), (x, y), max_samples=7.5)


def test_a_stop_is_honoured_at_once_before_training_and_inside_a_methods_own_pass():
    x, y = _data()
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    res = unlearn("finetune", model, (x[:80], y[:80]), (x[80:100], y[80:100]),
                  config={"epochs": 2, "batch_size": 16, "warmup_epochs": 0}, callback=lambda *a: True, eval_every=1)
    assert res.steps == 0 and res.info["stopped_at_step"] == 0 and res.losses == []
    assert all(torch.equal(a, b) for a, b in zip(before, res.model.parameters()))  # not one step taken
    # SCRUB's forget pass steps through the same loop: a stop asked at its first step is obeyed there
    res = unlearn("scrub", _model(), (x[:80], y[:80]), (x[80:100], y[80:100]),
                  config={"epochs": 2, "batch_size": 16}, callback=lambda m, step, s: step >= 1, eval_every=1)
    assert res.info["stopped_at_step"] == 1 and res.steps == 1
