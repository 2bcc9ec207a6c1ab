"""The benchmark runner's ROW schema, the summary, and the suite's argument checks (no timings asserted)."""

import json

import pytest
import torch

from benchmarks import summarize
from benchmarks.__main__ import main as suite_main
from benchmarks.runner import PeakMemory, Recorder, Timing, measure

ROW_KEYS = {"benchmark", "case", "variant", "backend", "params", "median_s", "p10_s", "p90_s", "repeats", "warmup",
            "metrics", "machine"}


def test_timing_summarises_median_and_percentiles():
    t = Timing.of([5.0, 1.0, 3.0, 2.0, 4.0], warmup=1)
    assert (t.median_s, t.p10_s, t.p90_s, t.repeats, t.warmup) == (3.0, 1.4, 4.6, 5, 1)
    single = Timing.of([0.5])
    assert single.median_s == single.p10_s == single.p90_s == 0.5


def test_measure_runs_warmup_then_repeats_with_setup():
    calls = []
    timing, out = measure(lambda x: calls.append(x) or x, repeats=3, warmup=2, setup=lambda: (len(calls),))
    assert calls == [0, 1, 2, 3, 4] and out == 4 and timing.repeats == 3 and timing.warmup == 2


def test_recorder_writes_rows_that_summarize_reads(tmp_path):
    rec = Recorder(tmp_path, "demo")
    with PeakMemory(torch.device("cpu")) as mem:
        torch.ones(1000)
    rec.add("op", "N=4", "fwd", "eager", Timing.of([0.4, 0.4]), {"N": 4})
    rec.add("op", "N=4", "fwd", "cpp", Timing.of([0.1, 0.1]), {"N": 4}, mem.metrics())
    rows = [json.loads(line) for line in (tmp_path / "demo.jsonl").read_text().splitlines()]
    assert [set(r) for r in rows] == [ROW_KEYS, ROW_KEYS]
    assert rows[1]["metrics"]["memory_kind"] == "cpu_rss" and rows[1]["machine"]["torch"] == torch.__version__
    assert summarize.speedups(summarize.load_rows([tmp_path])) == [{}, {"eager": pytest.approx(4.0)}]
    assert summarize.main([str(tmp_path)]) == 0
    assert "| op | N=4 | fwd | cpp |" in (tmp_path / "summary.md").read_text()


def test_suite_rejects_unknown_benchmark(tmp_path):
    with pytest.raises(SystemExit, match="unknown benchmarks"):
        suite_main(["--only", "nope", "--out", str(tmp_path)])


def test_bench_memory_cases_run_at_tiny_size(tmp_path):
    from benchmarks.bench_memory import _run_case, write_npy

    images, labels = write_npy(tmp_path, 60)
    rows = {case: _run_case(case, str(images), str(labels), 60, 2, 16, 1) for case in ("in_memory", "memmap_chunked")}
    for m in rows.values():
        assert {"seconds", "peak_bytes", "baseline_bytes", "anon_peak_bytes", "rows", "blended", "residual",
                "final_loss"} <= set(m)
    assert rows["in_memory"]["rows"] == rows["memmap_chunked"]["rows"]
    assert rows["in_memory"]["final_loss"] == pytest.approx(rows["memmap_chunked"]["final_loss"], rel=1e-4)


def test_the_codebase_benchmarks_gradient_probe_keeps_every_setting_of_the_step():
    # gradient_scales rebuilt the drop-in's step with the defaults: no fixed target, no log-odds term, λ 34
    from torch import nn

    import fastblend
    from benchmarks.bench_codebase_loop import step_like

    torch.manual_seed(0)
    m = nn.Linear(4, 3)
    fx, fy = torch.randn(40, 4), torch.arange(40) % 3
    ux, uy = torch.randn(30, 4), torch.arange(30) % 3
    fixed = torch.randn(30, 3)
    step = fastblend.AAMUStep(m, (fx, fy), (ux, uy), batch_size=8, lam=5.0, k=20.0, steepen="per_sample_sq",
                              transform="pooled", unseen_logits=fixed, odds_weight=0.3, forget_batch_factor=2,
                              unseen_batch_factor=3, max_draw=20, unseen_refresh=2, anchor=(ux, fixed),
                              anchor_weight=2.0)
    copy = step_like(step, nn.Linear(4, 3))
    assert copy.criterion.extra_repr() == step.criterion.extra_repr() and copy.criterion.transform == "pooled"
    assert torch.equal(copy.unseen_logits, step.unseen_logits)
    sizes = (copy.forget_draw, copy.unseen_draw, copy.batch_size)
    assert sizes == (step.forget_draw, step.unseen_draw, 8) == (16, 20, 8)
    assert copy.model is not step.model and copy.unseen_refresh == 2 and copy.anchor_weight == 2.0
    assert torch.equal(copy._anchor[1], step._anchor[1])
