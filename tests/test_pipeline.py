"""End-to-end pipeline and the `fastblend` command at tiny scale (real animal-mnist data)."""

import csv
import json
import subprocess
import sys

import pytest
import torch

import fastblend
from fastblend.experiments import cli, pipeline
from fastblend.experiments.pipeline import ExperimentConfig

TINY = dict(limit=400, width=8, ipc=8, blend_iterations=2,
            train_config={"epochs": 1, "lr": 0.05, "batch_size": 64},
            retrain_config={"epochs": 1, "lr": 0.05, "batch_size": 64, "warmup_epochs": 0},
            base_config={"epochs": 1, "warmup_epochs": 0}, accelerated_config={"epochs": 1}, quiet=True)


def _tiny(tmp_path, **kw) -> ExperimentConfig:
    return pipeline.with_overrides(ExperimentConfig(), out=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"),
                                   **{**TINY, **kw})


def test_run_experiment_writes_results_and_plots(tmp_path):
    cfg = _tiny(tmp_path)
    result = pipeline.run_experiment(cfg)
    out = tmp_path / "out"
    doc = json.loads((out / "results.json").read_text())
    assert doc["config"]["ipc"] == 8 and doc["machine"]["torch"] == torch.__version__
    variants = {r["variant"]: r for r in result["per_seed"][0]["rows"]}
    assert set(variants) == {"original", "retrain", "base", "accelerated"}
    acc = variants["accelerated"]
    for stage in pipeline.STAGES:
        assert acc[f"t_{stage}"] >= 0
    # features, grouping and Blend run once, in the index, timed apart from the request
    assert acc["t_index"] > 0 and acc["index_blend"] > 0 and acc["t_blend"] == 0 == acc["t_grouping"]
    assert acc["t_total"] == pytest.approx(sum(acc[f"t_{s}"] for s in pipeline.STAGES
                                               if s not in pipeline.NOT_PER_REQUEST))
    assert acc["reduced_size"] < acc["retain_size"]
    # the accelerated variant ends by the auto stop by default (no Retrain input); its row says how it ended
    assert acc["auto_stop"] == 1.0 and acc["auto_stop_kind"] == "sample" and acc["auto_stop_reason"]
    assert variants["base"]["auto_stop"] == 1.0 and "auto_stop" not in variants["retrain"]
    if acc["auto_stopped"]:
        assert 0 < acc["auto_stop_seconds"] <= acc["t_unlearning"] + 1e-9
    json_acc = next(r for r in doc["per_seed"][0]["rows"] if r["variant"] == "accelerated")
    # and whether only the model's head trained, on a frozen prefix (the cut's name; "" for the whole model)
    assert isinstance(acc["frozen_prefix"], str) and json_acc["frozen_prefix"] == acc["frozen_prefix"]
    for op in ("segment_blend", "quantile_mmd"):  # results.json says which backend ran each op
        assert json_acc[f"backend_{op}"] == fastblend.explain(op, torch.empty(0)).chosen
    assert acc["speedup_vs_base"] == pytest.approx(variants["base"]["t_total"] / acc["t_total"])
    assert variants["retrain"]["gap_test_acc"] == 0
    for row in variants.values():
        assert 0 <= row["forget_acc"] <= 100 and 0 <= row["mia"] <= 100
    with (out / "results.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 4
    for png in ("stage_times.png", "loss_histograms.png", "blend_grid.png"):
        assert (out / "seed0" / png).read_bytes()[:4] == b"\x89PNG"
    table = pipeline.format_table(result["summary"])
    assert "accelerated" in table and "a_finetune" in table
    assert "(accelerated: auto stop (no Retrain input)" in table  # how the returned model's run ended
    assert acc["index_cached"] is False
    # the original model and the Blend index are cached: a second run loads both
    again = pipeline.run_experiment(_tiny(tmp_path, run_retrain=False, run_base=False, plots=False, stop="none"))
    again_rows = {r["variant"]: r for r in again["per_seed"][0]["rows"]}
    assert again_rows["original"]["cached"] is True
    acc2 = again_rows["accelerated"]
    assert acc2["auto_stop"] == 0.0 and "auto_stop_step" not in acc2  # stop="none": the whole recipe
    assert acc2["index_cached"] is True and acc2["index_build_seconds"] == pytest.approx(acc["index_build_seconds"])
    assert acc2["reduced_size"] == acc["reduced_size"] and acc2["blend_loss_final"] == acc["blend_loss_final"]


def test_an_unreadable_index_cache_entry_is_rebuilt_with_a_warning(tmp_path):
    cfg = _tiny(tmp_path, run_retrain=False, run_base=False, plots=False, track=False)
    first = pipeline.run_experiment(cfg)
    (entry,) = (tmp_path / "cache" / "indexes").glob("*.pt")
    entry.write_bytes(b"not a torch file")
    with pytest.warns(RuntimeWarning, match="index cache entry .* is unreadable"):
        again = pipeline.run_experiment(cfg)
    rows = [{r["variant"]: r for r in res["per_seed"][0]["rows"]}["accelerated"] for res in (first, again)]
    assert rows[1]["index_cached"] is False and rows[1]["reduced_size"] == rows[0]["reduced_size"]
    assert pipeline.run_experiment(cfg)["per_seed"][0]["rows"][-1]["index_cached"] is True  # replaced


def test_base_budget_stops_the_base_method_at_retrains_time(tmp_path):
    cfg = _tiny(tmp_path, plots=False, base_budget="retrain", track_evaluations=4,
                base_config={"epochs": 30, "warmup_epochs": 0})
    rows = {r["variant"]: r for r in pipeline.run_experiment(cfg)["per_seed"][0]["rows"]}
    base = rows["base"]
    assert base["budget_seconds"] == pytest.approx(rows["retrain"]["t_unlearning"])
    assert base["stopped_at_budget"] == 1.0  # 30 epochs take far longer than Retrain's one
    assert "stopped at its time budget" in pipeline.format_table(
        pipeline.summarise([{"rows": list(rows.values())}]))


@pytest.mark.parametrize("budget, match", [("soon", "base_budget must be None, 'retrain'"),
                                           (-1.0, "positive number of seconds"), (float("nan"), "positive")])
def test_base_budget_is_checked_up_front(tmp_path, budget, match):
    with pytest.raises(pipeline.ConfigError, match=match):
        _tiny(tmp_path, base_budget=budget).check()
    with pytest.raises(pipeline.ConfigError, match="needs track=True"):
        _tiny(tmp_path, base_budget=10.0, track=False).check()
    with pytest.raises(pipeline.ConfigError, match="needs run_retrain=True"):
        _tiny(tmp_path, base_budget="retrain", run_retrain=False).check()


def test_seeds_are_aggregated_and_rounds_reported(tmp_path):
    cfg = _tiny(tmp_path, seeds=[0, 1], rounds=2, run_retrain=False, run_base=False, plots=False)
    result = pipeline.run_experiment(cfg)
    acc = [r for r in result["summary"] if r["variant"] == "accelerated"][0]
    assert acc["seeds"] == 2 and "test_acc_std" in acc
    rounds = [r for s in result["per_seed"] for r in s["rounds"]]
    assert [r["round"] for r in rounds] == [0, 1, 0, 1]
    assert rounds[1]["forget_size"] > rounds[0]["forget_size"]
    assert (tmp_path / "out" / "rounds.csv").exists()


def test_cli_run_from_config_file(tmp_path, capsys):
    config = tmp_path / "exp.toml"
    config.write_text('dataset = "animal-mnist"\nlimit = 300\nwidth = 8\nipc = 6\nblend_iterations = 1\n'
                      'run_retrain = false\nplots = false\n[train_config]\nepochs = 1\n[base_config]\nepochs = 1\n'
                      'warmup_epochs = 0\n')
    code = cli.main(["run", "--config", str(config), "--out", str(tmp_path / "o"), "--cache-dir",
                     str(tmp_path / "c"), "--quiet", "--method", "finetune", "--stop", "none"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "accelerated" in printed and "a_finetune" in printed
    doc = json.loads((tmp_path / "o" / "results.json").read_text())
    assert doc["config"]["limit"] == 300 and doc["config"]["stop"] == "none"


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["run", "--dataset", "imagenet", "--out", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "imagenet" in err and "Traceback" not in err
    bad = tmp_path / "bad.toml"
    bad.write_text("no_such_setting = 1\n")
    assert cli.main(["run", "--config", str(bad)]) == 2
    assert "unknown settings" in capsys.readouterr().err


def test_python_dash_m_help():
    res = subprocess.run([sys.executable, "-m", "fastblend", "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "demo" in res.stdout and "condense" in res.stdout


def test_cli_condense_writes_reduced_set_and_grid(tmp_path, capsys):
    from fastblend import ReducedRetainSet
    from fastblend.grouping import Clustering

    out = tmp_path / "reduced.pt"
    code = cli.main(["condense", "--limit", "300", "--ipc", "6", "--blend-iterations", "2", "--out", str(out),
                     "--quiet"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    reduced = ReducedRetainSet.load(out)
    clustering = Clustering.load(summary["clustering"])
    assert summary["rows"] == len(reduced) and clustering.ipc == 6
    assert summary["timings"]["features"] > 0 and summary["timings"]["blend"] > 0
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_original_model_is_deterministic_given_seed(tmp_path):
    cfg = _tiny(tmp_path)
    train = torch.randn(64, 1, 28, 28), torch.arange(64) % 10
    a, _, cached_a = pipeline.original_model(cfg, *train, 10, seed=3, device=torch.device("cpu"), progress=False)
    cfg_b = _tiny(tmp_path / "other")
    torch.manual_seed(12345)  # the global RNG must not matter
    b, _, cached_b = pipeline.original_model(cfg_b, *train, 10, seed=3, device=torch.device("cpu"), progress=False)
    assert not cached_a and not cached_b
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_a_method_preset_leaves_the_request_its_recipe():
    # --preset merged the accelerated method's whole config, so every field counted as set: on a whole class the
    # request said "class" while none of its recipe ran, on scattered samples the paper's recipe ran
    args = cli.build_parser().parse_args(["run", "--preset", "cifar10-resnet18", "--forget", "classwise"])
    cfg = cli._config_from_args(args, ExperimentConfig())
    assert cfg.accelerated_config == {} and cfg.base_config["epochs"] == 50  # CIFAR-10 / ResNet-18 is the defaults
    args = cli.build_parser().parse_args(["run", "--preset", "cinic10-resnet18"])
    assert cli._config_from_args(args, ExperimentConfig()).accelerated_config == {"lr": 1e-4}  # its one change


def test_blend_preset_and_width_reach_the_index(tmp_path):
    from fastblend.experiments.settings import BLEND_PRESETS

    args = cli.build_parser().parse_args(["run", "--blend-preset", "fast"])
    cfg = cli._config_from_args(args, ExperimentConfig())
    assert (cfg.blend_width, cfg.blend_iterations) == (64, 3) == tuple(BLEND_PRESETS["fast"].values())
    args = cli.build_parser().parse_args(["run", "--blend-preset", "fast", "--blend-iterations", "5"])
    assert cli._config_from_args(args, ExperimentConfig()).blend_iterations == 5  # an explicit flag wins
    with pytest.raises(pipeline.ConfigError, match="blend_width"):
        _tiny(tmp_path, blend_width=0).check()
    narrow = pipeline.blend_matcher(_tiny(tmp_path, blend_width=16), torch.zeros(2, 1, 28, 28), 0, None)
    assert narrow.features[0].out_channels == 16 and pipeline.blend_matcher(_tiny(tmp_path), torch.zeros(2, 1, 28, 28),
                                                                            0, None) is None
    cfg = _tiny(tmp_path, run_retrain=False, run_base=False, plots=False, track=False, blend_width=16)
    rows = {r["variant"]: r for r in pipeline.run_experiment(cfg)["per_seed"][0]["rows"]}
    wide = {r["variant"]: r for r in pipeline.run_experiment(
        _tiny(tmp_path, run_retrain=False, run_base=False, plots=False, track=False))["per_seed"][0]["rows"]}
    assert rows["accelerated"]["index_cached"] is False and wide["accelerated"]["index_cached"] is False  # own keys
    assert rows["accelerated"]["blend_loss_final"] != wide["accelerated"]["blend_loss_final"]


def test_demo_without_retrain_drops_its_default_budget_and_a_preset_beats_a_config_file(tmp_path):
    cfg = cli._config_from_args(cli.build_parser().parse_args(["demo", "--no-retrain"]), pipeline.DEMO)
    assert cfg.base_budget is None and not cfg.run_retrain
    cfg.out = str(tmp_path / "out")
    cfg.check()  # no "needs run_retrain" error: the user never asked for a budget
    explicit = ["demo", "--no-retrain", "--base-budget", "retrain"]
    with pytest.raises(pipeline.ConfigError, match="needs run_retrain"):
        cli._config_from_args(cli.build_parser().parse_args(explicit), pipeline.DEMO).check()
    conf = tmp_path / "c.json"
    conf.write_text(json.dumps({"blend_iterations": 12, "blend_width": 128}))
    args = cli.build_parser().parse_args(["run", "--config", str(conf), "--blend-preset", "fast"])
    cfg = cli._config_from_args(args, ExperimentConfig())
    assert (cfg.blend_width, cfg.blend_iterations) == (64, 3)  # the preset over the file, as a whole
    args = cli.build_parser().parse_args(["run", "--config", str(conf), "--blend-preset", "fast",
                                          "--blend-iterations", "6"])
    assert cli._config_from_args(args, ExperimentConfig()).blend_iterations == 6  # a flag over the preset


def test_a_request_is_timed_with_its_residual_rows_gathered(tmp_path):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 1, 8, 8, generator=g), torch.arange(60) % 3
    index = fastblend.BlendIndex.build(x, y, ipc=4, iterations=1)
    reduced, seconds = pipeline.request_reduced(index, torch.tensor([0, 5, 7]))
    assert seconds > 0 and reduced.num_residual > 0
    assert reduced._images is not None  # gathered inside the timed request, not later inside unlearn
    images, labels = reduced.tensors()
    assert images.shape[0] == len(reduced) == labels.shape[0]


def test_yardstick_seed_band_do_nothing_row_klom_and_cached_ensemble(tmp_path):
    cfg = _tiny(tmp_path, retrain_seeds=3, plots=False, mia_min_group=20)
    result = pipeline.run_experiment(cfg)
    record = result["per_seed"][0]
    yard = record["yardstick"]
    rows = {r["variant"]: r for r in record["rows"]}
    orig = rows["original"]
    metrics = ("forget_acc", "test_acc", "mia")
    # the band's parts are recorded, so a reader can recompute it
    for m in metrics:
        b = yard["band"][m]
        assert len(b["values"]) == 3 and b["values"][0] == rows["retrain"][m]
        assert b["margin"] == pytest.approx(max(b["floor"], b["z"] * b["se"]))
        assert (b["low"], b["high"]) == pytest.approx((min(b["values"]) - b["margin"], max(b["values"]) + b["margin"]))
    assert [e["forget_acc"] for e in yard["ensemble"]] == yard["band"]["forget_acc"]["values"]
    # the do-nothing row: present, its distance per metric, labelled easy/hard by the rule
    easy = all(abs(orig[f"dist_{m}"]) <= yard["band"][m]["half_width"] for m in metrics)
    assert yard["setting"] == ("easy" if easy else "hard") == orig["setting"] == rows["accelerated"]["setting"]
    assert orig["do_nothing_reaches_target"] == bool(orig["in_band"])
    assert (orig["t_target"] == 0.0) == bool(orig["in_band"])
    n_forget = rows["retrain"]["mia_n_forget"]
    n_heldout = rows["retrain"]["mia_n_heldout"]
    assert n_forget > 0 and n_heldout > n_forget  # every held-out image of the forget classes, none dropped
    for row in rows.values():  # every MIA with its interval and groups
        assert row["mia_low"] <= row["mia"] <= row["mia_high"]
        assert (row["mia_n_forget"], row["mia_n_heldout"]) == (n_forget, n_heldout)
    # the curve's point of the model returned is the final model: the same rows, the same statistic, so the same MIA
    # (its last point, or the evaluation the auto stop handed back when the run ended without its rule)
    for variant, curve in record["time_to_target"]["curves"].items():
        restored = rows[variant].get("auto_stop_restored_step")
        point = curve[-1] if restored is None else next(p for p in curve if p["step"] == restored)
        for m in ("forget_acc", "mia"):
            assert point[m] == pytest.approx(rows[variant][m], abs=1e-9), (variant, m)
    # KLOM for every variant, the Retrain row holding the noise floor
    assert yard["klom"]["sizes"]["retrain"] == 3
    assert rows["retrain"]["klom_forget_p50"] == yard["klom"]["values"]["floor"]["forget"]["p50"]
    assert all(f"klom_{g}_p99" in rows["accelerated"] for g in ("forget", "retain", "eval"))
    table = pipeline.format_table(result["summary"])
    assert "do-nothing" in table and f"setting: {yard['setting'].upper()}" in table
    # the ensemble's extra members are cached; the run's own Retrain is trained (and timed) every run
    again = pipeline.run_experiment(_tiny(tmp_path, retrain_seeds=3, plots=False, run_base=False, mia_min_group=20))
    members = again["per_seed"][0]["yardstick"]["ensemble_members"]
    assert [m["cached"] for m in members] == [False, True, True]
    assert again["per_seed"][0]["yardstick"]["band"] == yard["band"]


def test_hard_forget_kind_takes_the_highest_loss_images_of_its_pool(tmp_path):
    cfg = _tiny(tmp_path, forget="hard", forget_fraction=0.05, hard_pool=4, retrain_seeds=2, plots=False,
                run_base=False, mia_min_group=10)
    record = pipeline.run_experiment(cfg)["per_seed"][0]
    hard = record["yardstick"]["hard"]
    assert record["split"]["forget_mode"] == "hard" and record["split"]["forget"] == hard["forget"] == 20
    assert hard["pool"] == 80 and hard["forget_loss_mean"] >= hard["pool_loss_mean"]
    again = pipeline.run_experiment(cfg)["per_seed"][0]  # seeded and the proxy cached: the same forget set
    assert again["yardstick"]["hard"]["proxy_cached"] is True
    assert again["yardstick"]["hard"]["forget_loss_mean"] == hard["forget_loss_mean"]


def test_a_do_nothing_row_inside_the_band_is_said_so():
    band = {f"band_{m}_{e}": v for m in ("forget_acc", "test_acc", "mia") for e, v in (("low", 0.0), ("high", 100.0))}
    row = {"forget_acc": 90.0, "test_acc": 90.0, "mia": 50.0, "mia_low": 45.0, "mia_high": 55.0, "in_band": 1.0,
           "setting": "easy", **band, **{f"dist_{m}": 0.0 for m in ("forget_acc", "test_acc", "mia")}}
    table = pipeline.format_table([{**row, "variant": "original", "method": "trained", "retain_acc": 99.0,
                                    "target_reached": 1.0, "t_target": 0.0},
                                   {**row, "variant": "retrain", "method": "retrain", "retain_acc": 99.0}])
    assert "setting: EASY" in table and "doing nothing reaches the target" in table and "do-nothing" in table


def test_a_base_run_ended_by_its_auto_stop_is_not_reported_as_stopped_at_its_budget(tmp_path):
    # the row said both "auto stop fired" and "stopped at its time budget" whenever the stop ended the run
    cfg = _tiny(tmp_path, plots=False, base_budget=10_000.0, track_evaluations=4, stop="auto",
                base_config={"epochs": 30, "warmup_epochs": 0})
    rows = {r["variant"]: r for r in pipeline.run_experiment(cfg)["per_seed"][0]["rows"]}
    base = rows["base"]
    assert base["auto_stopped"] == 1.0  # the case this checks: the stop ended the run, long before the budget
    assert base["stopped_at_budget"] == 0.0
    table = pipeline.format_table(pipeline.summarise([{"rows": list(rows.values())}]))
    assert "stopped at its time budget" not in table
