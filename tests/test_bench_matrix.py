"""The matrix runner (benchmarks/bench_matrix.py) resumes, and its README generator reads the unit files
(tiny real data, seconds)."""

import json

import pytest

from benchmarks import bench_matrix, matrix_readme

TINY = {"limit": 240, "width": 4, "ipc": 4, "blend_iterations": 1, "retrain_seeds": 2, "mia_min_group": 5,
        "track_evaluations": 3, "track_samples": 100, "klom_retain": 50,
        "train_config": {"epochs": 1, "lr": 0.05, "batch_size": 64},
        "retrain_config": {"epochs": 1, "lr": 0.05, "batch_size": 64, "warmup_epochs": 0}}


def test_the_matrix_resumes_and_its_readme_reads_the_unit_files(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTBLEND_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "matrix"
    logs = []
    kw = dict(kinds=["uniform"], seeds=[0], methods=["a_finetune", "neggrad_plus"], limit=240, budget_factor=1.0,
              overrides=TINY, auto=False, log=logs.append)
    assert bench_matrix.run_matrix(out, **kw) == 2
    folder = out / "uniform" / "seed0"
    assert sorted(p.name for p in folder.iterdir()) == ["a_finetune.json", "neggrad_plus.json", "retrain.json",
                                                        "retrain_margins.pt"]
    acc = json.loads((folder / "a_finetune.json").read_text())
    assert acc["accelerated"] and acc["reduced_size"] < acc["retain_size"] and acc["curve"]
    assert acc["retrain_seconds"] == json.loads((folder / "retrain.json").read_text())["retrain_seconds"]
    base = json.loads((folder / "neggrad_plus.json").read_text())
    assert base["budget_seconds"] == acc["retrain_seconds"] and "klom_forget_p99" in base["final"]
    stamp = (folder / "a_finetune.json").stat().st_mtime_ns

    # a rerun computes nothing that is finished: a removed unit alone is run again
    (folder / "neggrad_plus.json").unlink()
    calls = []
    real = bench_matrix.run_method
    monkeypatch.setattr(bench_matrix, "run_method", lambda ctx, method, *a, **k: calls.append(method)
                        or real(ctx, method, *a, **k))
    assert bench_matrix.run_matrix(out, **kw) == 1
    assert calls == ["neggrad_plus"] and (folder / "a_finetune.json").stat().st_mtime_ns == stamp
    assert bench_matrix.run_matrix(out, **kw) == 0 and calls == ["neggrad_plus"]

    # the auto stop's unit: the same method with unlearn(stop="auto"), judged on the band
    assert bench_matrix.run_matrix(out, **{**kw, "methods": ["a_finetune"], "auto": True}) == 1
    auto = json.loads((folder / "a_finetune.auto.json").read_text())
    assert auto["auto_stop"]["kind"] and auto["stopped_by"].split(",")[0] in ("auto", "end of the recipe")
    assert ("end_of_run" in auto) == ("closest evaluation" in auto["stopped_by"])
    assert auto["stop_seconds"] >= auto["request_seconds"] and "klom_forget_p99" in auto["final"]
    (folder / "a_finetune.auto.json").unlink()

    # the README comes from the files: the cell's numbers, the targets, the auto-stop columns once a unit exists
    text = matrix_readme.render(out)
    assert "### `uniform`" in text and "| a_finetune | 1 |" in text and "## Targets" in text
    assert "pending" in text
    auto = {**acc, "unit": "a_finetune.auto", "stop_seconds": 0.123, "auto_stop": {"stopped": True}}
    (folder / "a_finetune.auto.json").write_text(json.dumps(auto))
    text = matrix_readme.render(out)
    assert "| 0.1 (auto 1) | " + ("1/1" if acc["in_band"] else "0/1") in text
    assert "4. **Auto stop inside the band" in text and "pending —" not in text
    # the curve's MIA at its last point against the final evaluation's, the same model: said when they differ
    curves = {}
    for path in folder.glob("*.json"):
        unit = json.loads(path.read_text())
        if unit.get("curve") and isinstance(unit.get("final"), dict) and "mia" in unit["final"]:
            curves[path] = unit
    assert folder / "a_finetune.json" in curves

    def offset_by(points: float) -> str:
        for path, unit in curves.items():
            unit["curve"][-1]["mia"] = unit["final"]["mia"] + points
            path.write_text(json.dumps(unit))
        return matrix_readme.render(out)

    assert "curves' MIA is another estimate" not in offset_by(0.0)
    assert "it is -2.5 points off the final MIA (seeds 0)" in offset_by(-2.5)

    # a resume under other settings is refused (its units would mix with these in one table) ...
    (folder / "a_finetune.json").unlink()
    overrides = {**TINY, "accelerated_config": {"target": "matched_fixed"}}
    with pytest.raises(ValueError, match="other settings.*overrides"):
        bench_matrix.run_matrix(out, **{**kw, "methods": ["a_finetune"], "overrides": overrides})
    with pytest.raises(ValueError, match="other settings.*budget_factor"):
        bench_matrix.run_matrix(out, **{**kw, "budget_factor": 0.5})
    # ... and under other code unless allowed, which the manifest then records
    manifest = json.loads((out / "matrix.json").read_text())
    assert manifest["settings"]["limit"] == 240 and len(manifest["code"]) == 1
    monkeypatch.setattr(bench_matrix, "code_state", lambda: {"commit": "another", "changes": None})
    with pytest.raises(ValueError, match="other code.*--allow-code-change"):
        bench_matrix.run_matrix(out, **kw)
    assert bench_matrix.run_matrix(out, **kw, allow_code_change=True) == 1
    assert json.loads((out / "matrix.json").read_text())["code"][1] == {"commit": "another", "changes": None}
    # a damaged manifest or an --out that is a file: clear errors
    (out / "matrix.json").write_text("{")
    with pytest.raises(ValueError, match="matrix.json cannot be read"):
        bench_matrix.run_matrix(out, **kw)
    (out / "matrix.json").write_text("[]")
    with pytest.raises(ValueError, match="is not a matrix manifest"):
        bench_matrix.run_matrix(out, **kw)
    with pytest.raises(ValueError, match="is a file, not a folder"):
        bench_matrix.run_matrix(out / "matrix.json", **kw)
    # --config's accelerated_config reaches the accelerated methods (it was read, then never passed to unlearn)
    other = tmp_path / "matrix-target"
    assert bench_matrix.run_matrix(other, **{**kw, "methods": ["a_finetune"], "overrides": overrides}) == 1
    unit = json.loads((other / "uniform" / "seed0" / "a_finetune.json").read_text())
    assert unit["method_config"] == {"target": "matched_fixed"} == unit["config"]["accelerated_config"]


@pytest.mark.parametrize("folder, name", [("benchmarks/results-2026-12-05-cpu/matrix", None),
                                          ("benchmarks/results-2026-12-05-cpu/matrix-default", "image")])
def test_the_readme_matrix_table_is_generated_from_the_committed_files(folder, name):
    from pathlib import Path

    from benchmarks import matrix_readme

    root = Path(__file__).resolve().parents[1]
    begin, end = matrix_readme.markers(name)
    text = (root / "README.md").read_text()
    assert begin in text and end in text, f"README has no generated table {name!r}"
    block = text.split(begin, 1)[1].split(end, 1)[0]
    import os

    cwd = os.getcwd()
    os.chdir(root)
    try:
        want = matrix_readme.readme_block(folder, name)
    finally:
        os.chdir(cwd)
    flag = "" if name is None else f" --block {name}"
    assert begin + block + end == want, \
        f"README's matrix table is stale: run python -m benchmarks.matrix_readme {folder} --readme README.md{flag}"
