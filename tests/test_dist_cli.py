"""`fastblend run` under torchrun: one process group, rank 0 alone prints and writes, every rank's
stage times in the results. Tiny runs on the built-in 8x8 `digits` data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastblend.experiments import pipeline
from fastblend.experiments.settings import ExperimentConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "digits", "--limit", "100", "--width", "4", "--ipc", "2", "--blend-iterations", "1",
        "--train-epochs", "1", "--no-retrain", "--no-plots", "--quiet", "--device", "cpu"]


def test_only_rank_0_writes_results_and_cache(tmp_path, monkeypatch):
    # another rank of a process group: it runs everything but writes and returns nothing
    monkeypatch.setattr(pipeline, "is_main_process", lambda: False)
    cfg = ExperimentConfig(dataset="digits", limit=100, width=4, ipc=2, blend_iterations=1,
                           train_config={"epochs": 1}, run_retrain=False, run_base=False, plots=False, quiet=True,
                           device="cpu", out=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"))
    lines = []
    assert pipeline.run_experiment(cfg, log=lines.append) == {}
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()
    assert lines == []


@pytest.mark.slow
def test_torchrun_two_ranks_run(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("FASTBLEND_DEBUG", None)
    out, cache = tmp_path / "out", tmp_path / "cache"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "fastblend", "run", *TINY, "--out", str(out), "--cache-dir", str(cache)],
                          env=env, capture_output=True, text=True, timeout=500, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("results: ") == 1  # rank 1 prints nothing
    assert proc.stdout.count("accelerated  a_finetune") == 1
    result = json.loads((out / "results.json").read_text())
    record = result["per_seed"][0]
    assert record["world_size"] == 2
    times = record["rank_stage_times"]
    assert len(times) == 2
    for per_rank in times:
        assert set(per_rank) == {"original", "base", "accelerated"}
        assert per_rank["accelerated"]["t_unlearning"] > 0 and per_rank["base"]["t_unlearning"] > 0
    assert len(list((cache / "models").iterdir())) == 1


@pytest.mark.slow
def test_torchrun_two_ranks_condense_equals_one_process(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    args = ["condense", "--dataset", "digits", "--limit", "200", "--ipc", "4", "--blend-iterations", "2",
            "--no-plots", "--quiet"]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "fastblend", *args, "--out", str(tmp_path / "two.pt")],
                         env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count('"reduced"') == 1  # rank 0 alone reports and writes
    one = subprocess.run([sys.executable, "-m", "fastblend", *args, "--out", str(tmp_path / "one.pt")],
                         env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    from fastblend.condensation import ReducedRetainSet

    a, b = ReducedRetainSet.load(tmp_path / "two.pt"), ReducedRetainSet.load(tmp_path / "one.pt")
    assert torch.equal(a.labels, b.labels) and torch.equal(a.is_blended, b.is_blended)
    torch.testing.assert_close(a.images, b.images, rtol=1e-5, atol=1e-6)
