"""A library is quiet: no progress bars unless asked (one switch, TQDM_DISABLE honoured), and the
plots leave the caller's matplotlib state alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastblend import condense, extract_features, group, unlearn

ROOT = Path(__file__).resolve().parents[1]


def _images(n: int = 24):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 8, 8, generator=g), torch.arange(n) % 2


def _library_calls():
    images, labels = _images()
    feats = extract_features(images, batch_size=8)
    group(feats, labels, 2)
    condense(images, labels, [0, 5], ipc=2, iterations=1, lr=1.0)
    x, y = images.flatten(1), labels
    net = torch.nn.Linear(64, 2)
    unlearn("finetune", net, (x[:16], y[:16]), (x[16:], y[16:]), config=dict(epochs=1, batch_size=8))


def test_library_calls_print_nothing_by_default(capfd, monkeypatch):
    monkeypatch.delenv("FASTBLEND_PROGRESS", raising=False)
    _library_calls()
    out, err = capfd.readouterr()
    assert out == "" and err == ""


@pytest.mark.parametrize(
    "progress, env, shown",
    [(True, {}, True), (None, {"FASTBLEND_PROGRESS": "1"}, True), (None, {"FASTBLEND_PROGRESS": "0"}, False),
     (False, {"FASTBLEND_PROGRESS": "1"}, False)],
)
def test_one_progress_switch(capfd, monkeypatch, progress, env, shown):
    monkeypatch.delenv("FASTBLEND_PROGRESS", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    images, _ = _images(8)
    extract_features(images, batch_size=4, progress=progress)
    _, err = capfd.readouterr()
    assert ("img" in err) == shown, err


def _env(**extra: str) -> dict:
    path = os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    return {**os.environ, "PYTHONPATH": path, **extra}


def test_tqdm_disable_silences_requested_bars():
    # tqdm reads TQDM_* when it is imported: a fresh process, as a user would set it
    code = "import torch, fastblend; fastblend.extract_features(torch.randn(8, 1, 8, 8), batch_size=4, progress=True)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=_env(TQDM_DISABLE="1"))
    assert proc.returncode == 0 and "img" not in proc.stderr, proc.stderr[-3000:]


MPL_SCRIPT = r"""
import sys, tempfile
from pathlib import Path
import matplotlib
matplotlib.use("svg")  # stands in for a notebook's inline backend
import matplotlib.pyplot as plt
import torch
import fastblend
from fastblend.experiments import plots

before = matplotlib.get_backend()
g = torch.Generator().manual_seed(0)
images, labels = torch.randn(24, 1, 8, 8, generator=g), torch.arange(24) % 2
clustering = fastblend.group(fastblend.extract_features(images), labels, 2)
reduced = fastblend.condense(images, labels, [0, 5], clustering=clustering, iterations=1, lr=1.0)
out = Path(tempfile.mkdtemp())
rows = [{"variant": "base", "method": "finetune", "t_unlearning": 2.0},
        {"variant": "accelerated", "method": "a_finetune", "t_blend": 0.5, "t_unlearning": 0.4}]
losses = {"base": {"forget": torch.rand(10), "unseen": torch.rand(12)}}
paths = [plots.save_blend_grid(reduced, images, clustering, out / "grid.png", n=2),
         plots.stage_times(rows, out / "times.png"), plots.loss_histograms(losses, out / "hist.png")]
assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)
assert matplotlib.get_backend() == before == "svg", matplotlib.get_backend()
assert plt.get_fignums() == [], plt.get_fignums()
print("backend kept")
"""


def test_plots_leave_the_callers_matplotlib_backend_alone():
    pytest.importorskip("matplotlib")
    proc = subprocess.run([sys.executable, "-c", MPL_SCRIPT], capture_output=True, text=True, timeout=300,
                          env=_env())
    assert proc.returncode == 0 and "backend kept" in proc.stdout, proc.stderr[-3000:]
