"""The GPU suite (``python -m benchmarks.gpu_suite``) runs end to end on a CPU with ``--smoke``, so it cannot
rot while no GPU is at hand; its numbers are not checked (no timing asserts)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.gpu_suite import SECTIONS, main

ROOT = Path(__file__).resolve().parents[1]
ROW_KEYS = {"benchmark", "case", "variant", "backend", "params", "median_s", "p10_s", "p90_s", "repeats", "warmup",
            "metrics"}


@pytest.mark.slow
def test_smoke_suite_runs_every_section_and_writes_json_and_markdown(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_suite", "--smoke", "--out", str(tmp_path)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert report["smoke"] and list(report["sections"]) == list(SECTIONS)
    assert all(s["status"] == "ok" for s in report["sections"].values())
    assert {r["benchmark"] for r in report["rows"]} == {"tests", "segment_blend", "quantile_mmd", "condense", "aamu",
                                                         "end_to_end"}
    assert all(set(r) == ROW_KEYS for r in report["rows"])
    for key in ("card", "driver", "cuda", "torch", "triton"):
        assert key in report["environment"]
    fractions = [r["metrics"]["fraction_of_copy"] for r in report["rows"] if r["backend"] == "fastblend"
                 and r["benchmark"] == "segment_blend"]
    assert len(fractions) == 3 and all(f > 0 for f in fractions)
    e2e = next(r for r in report["rows"] if r["benchmark"] == "end_to_end")
    assert {"features_s", "grouping_s", "blend_s", "aamu_s", "evaluation_s"} <= set(e2e["metrics"])
    md = (tmp_path / "gpu_suite.md").read_text()
    assert "| section | status | seconds |" in md and "| end_to_end | ok |" in md and "card **" in md


def test_suite_rejects_unknown_sections(tmp_path):
    with pytest.raises(SystemExit, match="unknown sections"):
        main(["--smoke", "--only", "nope", "--out", str(tmp_path)])
