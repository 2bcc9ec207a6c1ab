"""No silent slow path: a missing C++ extension is announced once, and every result records its backends."""

from __future__ import annotations

import warnings

import pytest
import torch

import fastblend
from fastblend.ops import _dispatch
from fastblend.ops._dispatch import SlowPathWarning

MISSING = ("C++ extension fastblend._C not built (No module named 'fastblend._C'); " + _dispatch._CPP_INSTALL_HINT)


@pytest.fixture
def no_extension(monkeypatch):
    """The process as it is when the extension failed to build (not switched off on purpose)."""
    monkeypatch.delenv("FASTBLEND_NO_CPP", raising=False)
    monkeypatch.delenv("FASTBLEND_BACKEND", raising=False)
    monkeypatch.setattr(_dispatch, "_cpp_state", (None, MISSING))
    monkeypatch.setattr(_dispatch, "_slow_path_warned", False)


def _ops_twice():
    x, w, ip = torch.randn(5, 3), torch.rand(5) + 0.5, torch.tensor([0, 2, 5])
    z, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    for _ in range(2):
        fastblend.segment_blend(x, w, ip).sum()
        fastblend.quantile_mmd(z, y, z.flip(0), y.flip(0))


def _slow_warnings(record) -> list[warnings.WarningMessage]:
    return [r for r in record if issubclass(r.category, SlowPathWarning)]


def test_missing_extension_warns_once_per_process_with_a_working_hint(no_extension):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _ops_twice()
    (only,) = _slow_warnings(record)
    text = str(only.message)
    assert text.startswith("segment_blend: running on the PyTorch fallback")
    # the hint builds from source in a plain venv: no cached wheel, no reinstall of torch
    assert "--no-cache-dir" in text and "--force-reinstall" in text and "--no-deps" in text
    assert "FASTBLEND_REQUIRE_CPP=1" in text


@pytest.mark.parametrize("how", ["explicit_backend", "no_cpp_env", "cuda_only_auto"])
def test_no_warning_when_torch_is_what_was_asked_for(no_extension, monkeypatch, how):
    x, w, ip = torch.randn(5, 3), torch.rand(5) + 0.5, torch.tensor([0, 2, 5])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        if how == "explicit_backend":
            fastblend.segment_blend(x, w, ip, backend="torch")
        elif how == "no_cpp_env":
            monkeypatch.setenv("FASTBLEND_NO_CPP", "1")
            fastblend.segment_blend(x, w, ip)
        else:
            monkeypatch.setenv("FASTBLEND_BACKEND", "torch")
            fastblend.segment_blend(x, w, ip)
    assert _slow_warnings(record) == []


def _tiny_condense(**kw):
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(24, 1, 8, 8, generator=g), torch.arange(24) % 2
    return fastblend.condense(images, labels, [0, 5], ipc=2, iterations=1, lr=1.0, progress=False, **kw)


def test_condense_records_the_backend_of_each_stage():
    reduced = _tiny_condense()
    expected = fastblend.explain("segment_blend", torch.empty(0)).chosen
    assert reduced.settings["backends"] == {"grouping": reduced.settings["backends"]["grouping"],
                                            "segment_blend": expected}
    assert reduced.settings["backends"]["grouping"] in ("torch", "faiss", "faiss-gpu")


def test_condense_without_extension_records_torch(no_extension):
    with pytest.warns(SlowPathWarning):
        reduced = _tiny_condense()
    assert reduced.settings["backends"]["segment_blend"] == "torch"


def test_unlearn_records_backends():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(40, 6, generator=g), torch.randint(0, 3, (40,), generator=g)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    cfg = dict(epochs=1, batch_size=8)
    res = fastblend.unlearn("a_finetune", net, (x[:24], y[:24]), (x[24:32], y[24:32]), unseen=(x[32:], y[32:]),
                            config=cfg)
    assert res.info["backends"] == {"quantile_mmd": fastblend.explain("quantile_mmd", torch.empty(0)).chosen}
    plain = fastblend.unlearn("finetune", net, (x[:24], y[:24]), (x[24:32], y[24:32]), config=cfg)
    assert plain.info["backends"] == {}
