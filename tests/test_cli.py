"""The `fastblend` command line and the pipeline's robustness: mistakes refused up front in one line,
results written as each seed finishes, the original-model cache safe against kills and stale data.
Tiny runs on the built-in 8x8 `digits` data."""

import ast
import json
import os
import queue
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

from fastblend.experiments import cli, pipeline
from fastblend.methods import accelerated, config_class

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "digits", "--limit", "100", "--width", "4", "--ipc", "2", "--blend-iterations", "1",
        "--train-epochs", "1", "--no-retrain", "--no-plots", "--quiet"]


def _run(tmp_path, *argv, cache=None, out=None):
    """``fastblend run`` in this process with the tiny settings; returns the exit code."""
    return cli.main(["run", *TINY, "--out", str(out or tmp_path / "out"), "--cache-dir",
                     str(cache or tmp_path / "cache"), *argv])


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def _env(**extra) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **extra}
    env.pop("FASTBLEND_DEBUG", None)
    return env


# --------------------------------------------------------------------------------------------
# every mistake: exit code != 0, one line naming the flag, no work started
# --------------------------------------------------------------------------------------------
def _mistakes(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    wrong_type = tmp_path / "wrong_type.toml"
    wrong_type.write_text('rounds = "two"\n')
    bad_key = tmp_path / "bad_key.toml"
    bad_key.write_text("no_such_setting = 1\n")
    return [
        (["--epochs", "0"], "--epochs"),
        (["--train-epochs", "0"], "--train-epochs"),
        (["--retrain-epochs", "0"], "--retrain-epochs"),
        (["--epochs", "x"], "--epochs"),
        (["--epoch", "1"], "--epoch"),
        (["--ipc", "0"], "--ipc"),
        (["--ipc", "6000"], "--ipc"),
        (["--method", "nope"], "--method"),
        (["--method", "ssd"], "--method"),
        (["--accelerated-method", "nope"], "--accelerated-method"),
        (["--rounds", "50"], "--rounds"),
        (["--device", "tpu"], "--device"),
        (["--dataset", "imagenet"], "--dataset"),
        (["--model", "vgg"], "--model"),
        (["--forget-fraction", "1.5"], "--forget-fraction"),
        (["--forget", "classwise", "--forget-class", "99"], "--forget-class"),
        (["--seeds", "0", "0"], "--seeds"),
        (["--limit", "0"], "--limit"),
        (["--base-budget", "-3"], "--base-budget"),
        (["--blend-width", "0"], "--blend-width"),
        (["--blend-preset", "turbo"], "--blend-preset"),
        (["--base-budget", "soon"], "--base-budget"),
        (["--no-retrain", "--base-budget", "retrain"], "base_budget"),
        (["--out", str(a_file)], "--out"),
        (["--config", str(tmp_path / "missing.toml")], "--config"),
        (["--config", str(wrong_type)], "rounds"),
        (["--config", str(bad_key)], "no_such_setting"),
    ]


def test_every_cli_mistake_is_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    cache = tmp_path / "cache"
    for argv, flag in _mistakes(tmp_path):
        code = _run(tmp_path, *argv, cache=cache)
        line = _one_line(capsys.readouterr().err)
        assert code == 2, (argv, line)
        assert flag in line and line.startswith("fastblend") and "error:" in line, (argv, line)
        assert not cache.exists(), argv  # no model was trained
        assert not (tmp_path / "out" / "results.json").exists(), argv
    monkeypatch.setenv("FASTBLEND_BACKEND", "bogus")
    assert _run(tmp_path, cache=cache) == 2
    assert "FASTBLEND_BACKEND" in _one_line(capsys.readouterr().err)
    assert not cache.exists()


def test_read_only_out_is_refused_up_front(tmp_path, capsys):
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert _run(tmp_path, out=ro / "sub") == 2
    finally:
        ro.chmod(0o700)
    assert "--out" in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "cache").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda_is_refused(tmp_path, capsys):
    assert _run(tmp_path, "--device", "cuda") == 2
    assert "--device" in _one_line(capsys.readouterr().err)


def test_condense_out_png_and_out_folder(tmp_path, capsys):
    argv = ["condense", "--dataset", "digits", "--limit", "100", "--ipc", "2", "--blend-iterations", "1", "--quiet"]
    assert cli.main([*argv, "--out", str(tmp_path / "x.png")]) == 2
    assert "--out" in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "x.png").exists()
    folder = tmp_path / "folder"
    folder.mkdir()
    assert cli.main([*argv, "--out", str(folder)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["reduced"] == str(folder / "reduced.pt")
    assert (folder / "reduced.pt").exists() and (folder / "reduced.clustering.pt").exists()
    assert (folder / "reduced.png").read_bytes()[:4] == b"\x89PNG"


def test_condense_offers_only_the_flags_it_reads(tmp_path, capsys):
    """``condense`` trains no model and runs no method: its --help lists the data, request and index flags only,
    and a method's flag is refused as unknown (it was accepted and ignored)."""
    with pytest.raises(SystemExit):
        cli.main(["condense", "--help"])
    text = capsys.readouterr().out
    for flag in ("--dataset", "--limit", "--forget", "--ipc", "--blend-iterations", "--seeds", "--config"):
        assert flag in text
    for flag in ("--method", "--retrain-seeds", "--stop", "--rounds", "--epochs", "--base-budget", "--recipe"):
        assert flag not in text
    assert cli.main(["condense", "--dataset", "digits", "--method", "scrub"]) == 2
    assert "--method" in _one_line(capsys.readouterr().err)
    # the hard kind needs a proxy model that condense does not train: refused up front (was exit 1 from make_split)
    assert cli.main(["condense", "--dataset", "digits", "--forget", "hard"]) == 2
    assert "--forget" in _one_line(capsys.readouterr().err)
    # one split and one index: a second seed was accepted and ignored
    assert cli.main(["condense", "--dataset", "digits", "--seeds", "1", "2"]) == 2
    assert "unrecognized arguments: 2" in _one_line(capsys.readouterr().err)
    seeds = tmp_path / "seeds.toml"
    seeds.write_text("seeds = [1, 2]\n")
    assert cli.main(["condense", "--dataset", "digits", "--config", str(seeds), "--out", str(tmp_path / "s.pt")]) == 2
    assert "give one seed" in _one_line(capsys.readouterr().err) and not (tmp_path / "s.pt").exists()
    hard = tmp_path / "hard.toml"
    hard.write_text('forget = "hard"\n')
    assert cli.main(["condense", "--dataset", "digits", "--config", str(hard), "--out", str(tmp_path / "r.pt")]) == 2
    assert "forget = 'hard'" in _one_line(capsys.readouterr().err) and not (tmp_path / "r.pt").exists()
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    assert "--method" in capsys.readouterr().out  # run and demo keep every flag


# --------------------------------------------------------------------------------------------
# every --method in --help runs, or is refused up front
# --------------------------------------------------------------------------------------------
def _methods_in_help(capsys) -> list[str]:
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    segment = text.rsplit("--method METHOD", 1)[1].split(" --", 1)[0]
    names = []
    for word in re.findall(r"[a-z][a-z0-9_+]*", segment):
        try:
            config_class(word)
        except ValueError:
            continue
        names.append(word)
    return list(dict.fromkeys(names))


def _acceleratable(method: str) -> bool:
    try:
        accelerated(method)
    except ValueError:
        return False
    return True


def test_every_method_in_help_runs_or_is_refused_up_front(tmp_path, capsys):
    names = _methods_in_help(capsys)
    assert {"finetune", "cf", "neggrad_plus", "scrub", "l1_sparse", "bad_teacher", "prune", "retrain", "distill",
            "ssd"} <= set(names)
    cache = tmp_path / "cache"
    refused = []
    for method in names:
        out = tmp_path / method
        epochs = [] if method == "ssd" else ["--epochs", "1"]
        code = _run(tmp_path, "--method", method, *epochs, cache=cache, out=out)
        captured = capsys.readouterr()
        if _acceleratable(method):
            assert code == 0, (method, captured.err)
            rows = {r["variant"]: r for r in json.loads((out / "results.json").read_text())["per_seed"][0]["rows"]}
            assert rows["accelerated"]["method"] == accelerated(method) and rows["base"]["method"] == method
        else:
            line = _one_line(captured.err)
            assert code == 2 and "--method" in line and "--accelerated-method" in line, line
            assert not out.exists()
            refused.append(method)
    assert sorted(refused) == ["distill", "retrain", "ssd"]
    # with an accelerated method named, they run
    assert _run(tmp_path, "--method", "ssd", "--accelerated-method", "a_finetune", cache=cache,
                out=tmp_path / "ssd") == 0, capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# nothing computed is lost
# --------------------------------------------------------------------------------------------
_CHILD_PREFIX = """
import os, sys, time
import fastblend.experiments.pipeline as pipeline
from fastblend.experiments import cli
"""


def _child(code: str, argv: list[str]) -> subprocess.Popen:
    script = _CHILD_PREFIX + textwrap.dedent(code) + f"\nsys.exit(cli.main({argv!r}))\n"
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env())


def _wait_for(proc: subprocess.Popen, marker: str, timeout: float = 240.0) -> None:
    """Read the child's stdout until a line holds ``marker``; a child that ends first, or that is still
    silent after ``timeout`` seconds (stuck), fails the test instead of hanging the suite."""
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)  # end of output

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    while True:
        try:
            line = lines.get(timeout=max(deadline - time.monotonic(), 0.0))
        except queue.Empty:
            proc.kill()
            raise AssertionError(f"child printed no {marker!r} within {timeout:.0f}s") from None
        if line is None:
            raise AssertionError(f"child ended before {marker!r}: {proc.stderr.read()}")
        if marker in line:
            return


def test_wait_for_gives_up_on_a_silent_child():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        with pytest.raises(AssertionError, match="within 1s"):
            _wait_for(proc, "NEVER", timeout=1.0)
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_sigkill_during_cache_write_then_rerun_recovers(tmp_path, capsys):
    cache = tmp_path / "cache"
    argv = ["run", *TINY, "--no-base", "--out", str(tmp_path / "out"), "--cache-dir", str(cache)]
    # the child writes part of the cache entry, then hangs until killed
    proc = _child("""
        import torch
        def partial_save(obj, f, *args, **kwargs):
            fh = open(f, "wb") if isinstance(f, (str, os.PathLike)) else f
            fh.write(b"PK\\x03\\x04 partial zip")
            fh.flush()
            print("SAVING", flush=True)
            time.sleep(120)
        torch.save = partial_save
    """, argv)
    try:
        _wait_for(proc, "SAVING")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert not list((cache / "models").glob("*.pt")), "a partial cache entry under the final name"
    assert cli.main(argv) == 0
    (entry,) = (cache / "models").glob("*.pt")
    torch.load(entry, weights_only=True)
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert doc["per_seed"][0]["rows"][0]["cached"] is False

    # an unreadable entry under the final name: a warning names it, the model is retrained and replaced
    entry.write_bytes(entry.read_bytes()[:100])
    capsys.readouterr()
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert str(entry) in err and "retrain" in err and "Traceback" not in err
    torch.load(entry, weights_only=True)
    assert json.loads((tmp_path / "out" / "results.json").read_text())["per_seed"][0]["rows"][0]["cached"] is False


def _rows(out) -> dict:
    doc = json.loads((out / "results.json").read_text())
    return {row["variant"]: row for row in doc["per_seed"][0]["rows"]}


def test_sigkill_during_index_cache_write_keeps_the_model_entry_then_rerun_recovers(tmp_path, capsys):
    from fastblend.condensation import BlendIndex
    from fastblend.experiments import cache as model_cache

    cache, out = tmp_path / "cache", tmp_path / "out"
    argv = ["run", *TINY, "--no-base", "--out", str(out), "--cache-dir", str(cache)]
    # the model entry is written normally; the index entry's write is cut short by SIGKILL
    proc = _child("""
        import torch
        real_save = torch.save
        def save(obj, f, *args, **kwargs):
            if not (isinstance(obj, dict) and obj.get("format") == "fastblend.BlendIndex"):
                return real_save(obj, f, *args, **kwargs)
            f.write(b"PK\\x03\\x04 partial zip")
            f.flush()
            print("SAVING", flush=True)
            time.sleep(120)
        torch.save = save
    """, argv)
    try:
        _wait_for(proc, "SAVING")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    (model_entry,) = (cache / "models").glob("*.pt")
    before = model_entry.read_bytes()
    assert not list((cache / "indexes").glob("*.pt")), "a partial index entry under the final name"
    assert cli.main(argv) == 0
    assert model_entry.read_bytes() == before  # the earlier entry is intact and was reused
    rows = _rows(out)
    assert rows["original"]["cached"] is True and rows["accelerated"]["index_cached"] is False
    (index_entry,) = (cache / "indexes").glob("*.pt")
    assert model_cache.load_index(index_entry) is not None
    assert cli.main(argv) == 0
    assert _rows(out)["accelerated"]["index_cached"] is True

    # an altered index entry: warned, rebuilt and replaced (checksum), the model entry untouched
    blob = BlendIndex.load(index_entry)
    raw = bytearray(index_entry.read_bytes())
    at = bytes(raw).find(blob.blends.numpy().tobytes())
    raw[at + 5] ^= 0x40
    index_entry.write_bytes(bytes(raw))
    capsys.readouterr()
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert str(index_entry) in err and "rebuild" in err and "Traceback" not in err
    assert _rows(out)["accelerated"]["index_cached"] is False
    assert BlendIndex.load(index_entry) is not None and model_entry.read_bytes() == before


def test_sigterm_during_second_seed_keeps_the_first(tmp_path):
    out = tmp_path / "out"
    argv = ["run", *TINY, "--no-base", "--seeds", "0", "1", "--out", str(out), "--cache-dir",
            str(tmp_path / "cache")]
    proc = _child("""
        real = pipeline.original_model
        def original_model(cfg, images, labels, num_classes, seed, *args, **kwargs):
            if seed == 1:
                print("SEED1", flush=True)
                time.sleep(120)
            return real(cfg, images, labels, num_classes, seed, *args, **kwargs)
        pipeline.original_model = original_model
    """, argv)
    try:
        _wait_for(proc, "SEED1")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert "SIGTERM" in _one_line(err) and "results of the finished seeds are in" in _one_line(err)
    doc = json.loads((out / "results.json").read_text())
    assert [s["seed"] for s in doc["per_seed"]] == [0]
    csv_rows = (out / "results.csv").read_text().splitlines()
    assert len(csv_rows) == 1 + len(doc["per_seed"][0]["rows"])
    assert not list(out.glob(".*.tmp"))


def test_unreadable_data_is_one_line_exit_1(tmp_path, capsys):
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                 "batches.meta"]:
        (folder / name).write_bytes(b"not a pickle")
    code = cli.main(["run", "--dataset", "cifar10", "--data-root", str(tmp_path / "data"), "--quiet",
                     "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")])
    line = _one_line(capsys.readouterr().err)
    assert code == 1 and line.startswith("fastblend run: error:"), line


def test_missing_matplotlib_warns_once_and_writes_results(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    args = [a for a in TINY if a != "--no-plots"]
    code = cli.main(["run", *args, "--no-base", "--seeds", "0", "1", "--out", str(tmp_path / "out"),
                     "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 0, err
    assert len([line for line in err.splitlines() if "warning" in line and "matplotlib" in line]) == 1, err
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(doc["per_seed"]) == 2 and doc["config"]["plots"] is False
    assert (tmp_path / "out" / "results.csv").exists()


# --------------------------------------------------------------------------------------------
# the cache key and location
# --------------------------------------------------------------------------------------------
def test_cache_key_includes_the_data(tmp_path):
    cfg = pipeline.with_overrides(pipeline.ExperimentConfig(), width=4, cache_dir=str(tmp_path / "cache"),
                                  train_config={"epochs": 1, "batch_size": 32})
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(64) % 10
    a = torch.randn(64, 1, 8, 8, generator=gen)
    b = a.clone()
    b[-1] += 1.0  # same size and labels, one image differs
    cpu = torch.device("cpu")
    assert pipeline.original_model(cfg, a, labels, 10, seed=0, device=cpu, progress=False)[2] is False
    assert pipeline.original_model(cfg, a, labels, 10, seed=0, device=cpu, progress=False)[2] is True
    assert pipeline.original_model(cfg, b, labels, 10, seed=0, device=cpu, progress=False)[2] is False


def test_cache_honours_fastblend_cache_then_xdg(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FASTBLEND_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    cfg = pipeline.with_overrides(pipeline.ExperimentConfig(), width=4, train_config={"epochs": 1})
    data = torch.randn(20, 1, 8, 8), torch.arange(20) % 10
    pipeline.original_model(cfg, *data, 10, seed=0, device=torch.device("cpu"), progress=False)
    assert len(list((tmp_path / "xdg" / "fastblend" / "models").glob("*.pt"))) == 1
    monkeypatch.setenv("FASTBLEND_CACHE", str(tmp_path / "fb"))
    pipeline.original_model(cfg, *data, 10, seed=0, device=torch.device("cpu"), progress=False)
    assert len(list((tmp_path / "fb" / "models").glob("*.pt"))) == 1
    assert not (tmp_path / "home").exists()


# --------------------------------------------------------------------------------------------
# small ones: --version, no bench, the command line imports nothing outside the package
# --------------------------------------------------------------------------------------------
def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.startswith("fastblend ")


def test_there_is_no_bench_subcommand(capsys):
    """`fastblend bench` only printed an error; it is gone (the benchmarks run from a checkout:
    `python -m benchmarks`)."""
    assert cli.main(["bench", "--quick"]) == 2
    assert "invalid choice: 'bench'" in capsys.readouterr().err


def test_cli_imports_nothing_outside_the_package(tmp_path):
    for path in (ROOT / "fastblend").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            assert not any(n.split(".")[0] == "benchmarks" for n in names), path
    # a foreign `benchmarks` package on the path is never imported by the command line
    fake = tmp_path / "benchmarks"
    fake.mkdir()
    (fake / "__init__.py").write_text(f"open({str(tmp_path / 'imported')!r}, 'w').close()\n")
    (fake / "__main__.py").write_text(f"open({str(tmp_path / 'imported')!r}, 'w').close()\n")
    res = subprocess.run([sys.executable, "-m", "fastblend", "--version"], cwd=tmp_path, capture_output=True,
                         text=True, env=_env(PYTHONPATH=f"{ROOT}{os.pathsep}{tmp_path}"), timeout=120)
    assert res.returncode == 0, res.stderr
    assert not (tmp_path / "imported").exists()


def test_a_bad_setting_from_a_config_file_is_named_with_the_file(tmp_path, capsys):
    config = tmp_path / "bad.json"
    config.write_text('{"base_budget": -3}')
    assert _run(tmp_path, "--config", str(config)) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"error: base_budget (in --config {config}): " in line and "--base-budget" not in line, line


def test_a_small_time_budget_is_printed_with_its_digits():
    from fastblend.experiments.results import format_table

    row = {"variant": "base", "method": "finetune", "retain_acc": 1.0, "forget_acc": 1.0, "test_acc": 1.0,
           "mia": 50.0, "stopped_at_budget": 1.0, "budget_seconds": 0.001}
    assert "stopped at its time budget of 0.001s" in format_table([row])


# --------------------------------------------------------------------------------------------
# issue 24.9: every mistake in a config file exits 2 before any work; its out and quiet are honoured
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, named", [
    ("seeds: [0\n", "--config"),  # broken YAML
    ("seeds: !!python/tuple [0]\n", "--config"),  # a python tag (safe_load refuses it)
    ("base_config: 5\n", "base_config"),
    ('track_evaluations: "5"\n', "track_evaluations"),
    ("track_samples: -5\n", "track_samples"),
    ("track_samples: 2\n", "track_samples"),
    ("track: 1\n", "track"),
    ("band: 3\n", "band"),
])
def test_config_file_mistakes_exit_2_before_any_work(tmp_path, capsys, text, named):
    pytest.importorskip("yaml")
    config = tmp_path / "c.yaml"
    config.write_text(text)
    code = _run(tmp_path, "--config", str(config))
    line = _one_line(capsys.readouterr().err)
    assert code == 2, line
    assert named in line and line.startswith("fastblend run: error:"), line
    assert not (tmp_path / "cache").exists()  # nothing was trained


def test_every_setting_has_a_type_check():
    from dataclasses import fields

    from fastblend.experiments.settings import _TYPES, ExperimentConfig

    assert {f.name for f in fields(ExperimentConfig)} <= set(_TYPES)


def test_a_config_files_out_and_quiet_are_honoured(tmp_path, capsys):
    config = tmp_path / "c.json"
    out = tmp_path / "from_file"
    config.write_text(json.dumps({"out": str(out), "quiet": True}))
    argv = [a for a in TINY if a != "--quiet"]
    code = cli.main(["run", *argv, "--no-base", "--config", str(config), "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 0, err
    assert (out / "results.json").exists()
    assert "[seed 0]" not in err  # quiet: no log lines
    config.write_text(json.dumps({"out": 5}))
    assert cli.main(["run", *TINY, "--config", str(config), "--cache-dir", str(tmp_path / "cache")]) == 2
    assert "out (in --config" in _one_line(capsys.readouterr().err)
    config.write_text(json.dumps({"out": str(out), "quiet": True}))
    # a flag still wins over the file
    code = cli.main(["run", *argv, "--no-base", "--config", str(config), "--out", str(tmp_path / "flag"),
                     "--cache-dir", str(tmp_path / "cache")])
    assert code == 0 and (tmp_path / "flag" / "results.json").exists()


def test_two_runs_with_the_same_seed_give_the_same_results(tmp_path, capsys):
    """Same seed, nothing shared (each run its own cache: the model, the index, everything recomputed):
    every number but the timings is equal."""
    docs = []
    for run in ("a", "b"):
        assert _run(tmp_path, "--seeds", "3", cache=tmp_path / f"cache-{run}", out=tmp_path / run) == 0, \
            capsys.readouterr().err
        docs.append(json.loads((tmp_path / run / "results.json").read_text()))
    a, b = ({row["variant"]: row for row in doc["per_seed"][0]["rows"]} for doc in docs)
    assert set(a) == set(b) == {"original", "base", "accelerated"}
    assert a["original"]["cached"] is False and b["original"]["cached"] is False
    assert a["accelerated"]["index_cached"] is False and b["accelerated"]["index_cached"] is False
    timing = re.compile(r"^(t_|index_build|index_blend|speedup)|seconds|cached")
    compared = 0
    for variant in a:
        assert set(a[variant]) == set(b[variant])
        for key, value in a[variant].items():
            if timing.search(key):
                continue
            assert b[variant][key] == value or (value != value and b[variant][key] != b[variant][key]), \
                (variant, key, value, b[variant][key])
            compared += 1
    assert compared >= 20


@pytest.mark.parametrize("settings, named, says", [
    ({"run_base": "false"}, "run_base", "bool"),  # was read as true: the base method ran
    ({"train_config": {"batch_size": "64"}}, "train_config", "config['batch_size'] must be an int, got str '64'"),
    ({"train_config": {"warmup_epochs": 2.5}}, "train_config", "config['warmup_epochs'] must be an int, got float"),
    ({"retrain_config": {"lr": "0.1"}}, "retrain_config", "config['lr'] must be a number, got str '0.1'"),
    ({"base_config": {"momentum": True}}, "base_config", "config['momentum'] must be a number, got bool"),
])
def test_a_config_files_wrong_types_exit_2_naming_the_setting(tmp_path, capsys, settings, named, says):
    config = tmp_path / "c.json"
    config.write_text(json.dumps(settings))
    code = _run(tmp_path, "--config", str(config))
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and named in line and says in line, line
    assert not (tmp_path / "cache").exists()  # nothing was trained


def test_a_config_files_recipe_changes_the_keys_it_names():
    # {"train_config": {"epochs": 2}} kept only epochs (the library's defaults for the rest: lr 0.1, 5 warm-up
    # epochs) while --train-epochs 2 changed only epochs of the command's recipe
    from fastblend.experiments.settings import DEMO

    args = cli.build_parser().parse_args(["demo", "--train-epochs", "2"])
    by_flag = cli._config_from_args(args, DEMO)
    path = ROOT / "tests" / "_tmp_train_config.json"
    try:
        path.write_text(json.dumps({"train_config": {"epochs": 2}}))
        args = cli.build_parser().parse_args(["demo", "--config", str(path)])
        by_file = cli._config_from_args(args, DEMO)
    finally:
        path.unlink()
    assert by_file.train_config == by_flag.train_config == {**DEMO.train_config, "epochs": 2}


@pytest.mark.parametrize("argv, flag", [
    (["--forget-fraction", "0.01"], "--forget-fraction"),  # 1 forget image of 100: the MIA needs 5
])
def test_a_split_too_small_for_the_attack_exits_2_before_any_training(tmp_path, capsys, argv, flag):
    code = _run(tmp_path, *argv)
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and line.startswith(f"fastblend run: error: {flag}:") and "at least 5 of each" in line, line
    assert not (tmp_path / "cache").exists()  # the original model was not trained


def test_an_interrupt_before_any_seed_finished_says_nothing_was_written(tmp_path, capsys, monkeypatch):
    def interrupted(cfg, log=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "run_experiment", interrupted)
    assert _run(tmp_path) == 130
    line = _one_line(capsys.readouterr().err)
    assert "interrupted by Ctrl-C; no seed had finished, so no results were written" in line, line


def test_an_earlier_runs_results_are_not_taken_for_this_ones(tmp_path, capsys, monkeypatch):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "results.json").write_text("{}")  # left by an earlier run
    os.utime(tmp_path / "out" / "results.json", (0, 0))

    def interrupted(cfg, log=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "run_experiment", interrupted)
    assert _run(tmp_path) == 130
    assert "no seed had finished" in _one_line(capsys.readouterr().err)
