"""segment_blend: every backend against the autograd reference, numerics, layouts and errors."""

import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastblend
from fastblend.ops import reference as ref

from ._support import (
    CPU_BACKENDS,
    HAS_CPP,
    HAS_CUDA,
    assert_close,
    assert_within_eager_error,
    backend_params,
    backends,
    device_for,
)

NORMS = ["sum", "softmax", "none"]

LAYOUTS = {
    "size1": [1, 1, 1, 1],
    "empty_segments": [0, 3, 0, 2, 0],
    "one_segment": [9],
    "single_row": [1],
    "mixed": [2, 1, 5, 0, 3, 1],
}
FEATURES = [(3, 5, 7), (1,), (17,), (2, 3)]
FEATURES_OF_LAYOUT = {  # each feature shape meets some layout
    "size1": (3, 5, 7),
    "empty_segments": (1,),
    "one_segment": (17,),
    "single_row": (2, 3),
    "mixed": (3, 5, 7),
}


def _indptr(sizes, device="cpu"):
    return torch.tensor([0] + list(torch.tensor(sizes).cumsum(0).tolist()), dtype=torch.int64, device=device)


def _run(fn, x, w, ip, grad, norm, **kw):
    x = x.detach().clone().requires_grad_(True)
    w = w.detach().clone().requires_grad_(True)
    out = fn(x, w, ip, norm, **kw)
    out.backward(grad)
    return out.detach(), x.grad, w.grad


def _case(sizes, feat, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    ip = _indptr(sizes, device)
    n, k = int(sum(sizes)), len(sizes)
    x = torch.randn((n,) + feat, generator=g).to(device=device, dtype=dtype)
    w = (torch.rand(n, generator=g) + 0.5).to(device=device, dtype=dtype)
    grad = (3.7 * torch.randn((k,) + feat, generator=g)).to(device=device, dtype=dtype)
    return x, w, ip, grad


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_matches_reference_outputs_and_grads(backend, norm, layout):
    feat = FEATURES_OF_LAYOUT[layout] if backend != "triton" else (3, 5)
    x, w, ip, grad = _case(LAYOUTS[layout], feat, device=device_for(backend))
    expect = _run(ref.segment_blend, x.double(), w.double(), ip, grad.double(), norm)
    got = _run(fastblend.segment_blend, x, w, ip, grad, norm, backend=backend)
    for name, a, b in zip(("out", "dx", "dw"), got, expect):
        assert a.shape == b.shape, name
        assert a.dtype == torch.float32, name
        assert_close(a, b, msg=f"{backend}/{norm}/{layout}: {name}")


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("feat", FEATURES)
def test_odd_feature_shapes_keep_shape(backend, feat):
    x, w, ip, grad = _case([2, 0, 3], feat, device=device_for(backend))
    out = fastblend.segment_blend(x, w, ip, backend=backend)
    assert out.shape == (3,) + feat
    torch.testing.assert_close(out, ref.segment_blend(x, w, ip))


@pytest.mark.parametrize("backend", backend_params())
def test_empty_segments_are_zero_and_initial_sum_blend_is_mean(backend):
    device = device_for(backend)
    x, _, ip, _ = _case([3, 0, 2], (4,), device=device)
    w = torch.full((5,), 0.2, device=device)
    out = fastblend.segment_blend(x, w, ip, backend=backend)
    assert torch.equal(out[1], torch.zeros(4, device=device))
    torch.testing.assert_close(out[0], x[:3].mean(0))
    torch.testing.assert_close(out[2], x[3:].mean(0))


@pytest.mark.parametrize("backend", backend_params())
def test_zero_sum_segment_gives_zero_row_and_zero_grads(backend):
    device = device_for(backend)
    x = torch.randn(5, 3, device=device, requires_grad=True)
    w = torch.tensor([1.0, -1.0, 2.0, 0.5, 0.5], device=device, requires_grad=True)
    ip = torch.tensor([0, 2, 5], device=device)
    out = fastblend.segment_blend(x, w, ip, "sum", backend=backend)
    out.backward(torch.ones_like(out))
    assert torch.equal(out[0], torch.zeros(3, device=device))
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all() and torch.isfinite(w.grad).all()
    assert torch.equal(w.grad[:2], torch.zeros(2, device=device))
    assert torch.equal(x.grad[:2], torch.zeros(2, 3, device=device))
    torch.testing.assert_close(out[1], (x[2:] * (w[2:] / 3.0)[:, None]).sum(0).detach())


@pytest.mark.parametrize("backend", backend_params())
def test_no_rows_and_no_segments(backend):
    device = device_for(backend)
    x = torch.randn(0, 4, device=device)
    w = torch.randn(0, device=device)
    out = fastblend.segment_blend(x, w, torch.zeros(3, dtype=torch.int64, device=device), backend=backend)
    assert out.shape == (2, 4) and torch.equal(out, torch.zeros(2, 4, device=device))
    out = fastblend.segment_blend(x, w, torch.zeros(1, dtype=torch.int64, device=device), backend=backend)
    assert out.shape == (0, 4)


@pytest.mark.parametrize("backend", backend_params())
def test_only_weights_need_grad(backend):
    x, w, ip, grad = _case([3, 1, 2], (6,), device=device_for(backend))
    w.requires_grad_(True)
    fastblend.segment_blend(x, w, ip, backend=backend).backward(grad)
    expect = _run(ref.segment_blend, x, w, ip, grad, "sum")[2]
    torch.testing.assert_close(w.grad, expect)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("norm", NORMS)
def test_low_precision_within_twice_eager_error(backend, dtype, norm):
    """flash-attention's rule: error vs an fp64 reference at most 2x eager PyTorch's in that dtype."""
    sizes = [5, 1, 12, 3] if backend != "triton" else [3, 1, 4]
    x, w, ip, grad = _case(sizes, (33,) if backend != "triton" else (9,), device=device_for(backend), seed=3)
    x16, w16, g16 = x.to(dtype), w.to(dtype), grad.to(dtype)
    exact = _run(ref.segment_blend, x16.double(), w16.double(), ip, g16.double(), norm)
    eager = _run(ref.segment_blend, x16, w16, ip, g16, norm)
    got = _run(fastblend.segment_blend, x16, w16, ip, g16, norm, backend=backend)
    for name, a, e, r in zip(("out", "dx", "dw"), got, eager, exact):
        assert a.dtype == dtype, name
        floor = 1e-3 * max(r.abs().max().item(), 1.0)
        assert_within_eager_error(a, e, r, floor=floor, msg=f"{backend}/{dtype}/{norm}: {name}")


@pytest.mark.skipif(not HAS_CPP, reason="C++ extension not built")
@pytest.mark.parametrize("norm", NORMS)
def test_gradcheck_cpp_float64(norm):
    x, w, ip, _ = _case([2, 3, 1, 0], (3, 2), dtype=torch.float64)
    x.requires_grad_(True)
    w.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: fastblend.segment_blend(a, b, ip, norm, backend="cpp"), (x, w))


@pytest.mark.parametrize("norm", NORMS)
def test_gradcheck_torch_backend_float64(norm):
    x, w, ip, _ = _case([2, 3, 1], (4,), dtype=torch.float64)
    x.requires_grad_(True)
    w.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: fastblend.segment_blend(a, b, ip, norm, backend="torch"), (x, w))


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(0, 6), min_size=1, max_size=8), f=st.integers(1, 9),
       norm=st.sampled_from(NORMS), seed=st.integers(0, 2**16))
def test_random_csr_layouts_match_reference(sizes, f, norm, seed):
    x, w, ip, grad = _case(sizes, (f,), seed=seed)
    expect = _run(ref.segment_blend, x.double(), w.double(), ip, grad.double(), norm)
    for backend in backends(*CPU_BACKENDS):
        got = _run(fastblend.segment_blend, x, w, ip, grad, norm, backend=backend)
        for a, b in zip(got, expect):
            assert_close(a, b)


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(1, 5), min_size=1, max_size=6), seed=st.integers(0, 2**16))
def test_sum_blend_is_invariant_to_weight_scale(sizes, seed):
    x, w, ip, _ = _case(sizes, (5,), seed=seed)
    a = fastblend.segment_blend(x, w, ip, "sum")
    b = fastblend.segment_blend(x, 7.5 * w, ip, "sum")
    assert_close(a, b)


def test_loop_reference_agrees_with_index_add_reference():
    x, w, ip, _ = _case([2, 0, 4, 1], (3, 3))
    for norm in NORMS:
        torch.testing.assert_close(ref.segment_blend_loop(x, w, ip, norm), ref.segment_blend(x, w, ip, norm))


def test_opcheck():
    x, w, ip, _ = _case([2, 1, 3], (5,))
    x.requires_grad_(True)
    w.requires_grad_(True)
    op = torch.ops.fastblend.segment_blend.default
    for backend in backends():
        if device_for(backend) != "cpu":
            continue
        for norm in NORMS:
            torch.library.opcheck(op, (x, w, ip, norm, backend))


# --- errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda: (torch.randn(4, 2), torch.rand(4), torch.tensor([0, 3, 2, 4])), ValueError, "non-decreasing"),
        (lambda: (torch.randn(4, 2), torch.rand(4), torch.tensor([1, 2, 4])), ValueError, "start at 0"),
        (lambda: (torch.randn(4, 2), torch.rand(4), torch.tensor([0, 2, 3])), ValueError, "end at N = 4"),
        (lambda: (torch.randn(4, 2), torch.rand(4), torch.tensor([0, 2, 4], dtype=torch.int32)), TypeError, "int64"),
        (lambda: (torch.randn(4, 2), torch.rand(4), torch.tensor([0.0, float("nan"), 4.0])), TypeError, "non-finite"),
        (lambda: (torch.randn(4, 2), torch.rand(3), torch.tensor([0, 2, 4])), ValueError, "weights must have shape"),
        (lambda: (torch.randn(4, 2).long(), torch.rand(4), torch.tensor([0, 2, 4])), TypeError, "x must be float"),
        (lambda: (torch.randn(4, 2), torch.ones(4, dtype=torch.int64), torch.tensor([0, 2, 4])), TypeError, "weights"),
        (lambda: (torch.randn(4, 2), torch.rand(4), torch.tensor([[0, 2, 4]])), ValueError, "indptr must have shape"),
        (lambda: (torch.randn(4, 2), torch.rand(4), [0, 2, 4]), TypeError, "indptr must be a torch.Tensor"),
    ],
)
def test_bad_input_raises_clear_error(make, exc, match):
    x, w, ip = make()
    with pytest.raises(exc, match=match):
        fastblend.segment_blend(x, w, ip)


def test_bad_normalize_and_backend():
    x, w, ip, _ = _case([2, 2], (3,))
    with pytest.raises(ValueError, match="normalize"):
        fastblend.segment_blend(x, w, ip, normalize="mean")
    with pytest.raises(ValueError, match="backend must be one of"):
        fastblend.segment_blend(x, w, ip, backend="cuda")


@pytest.mark.skipif(not HAS_CUDA, reason="needs two devices")
def test_device_mismatch_is_an_error():
    x, w, ip, _ = _case([2, 2], (3,))
    with pytest.raises(ValueError, match="one device"):
        fastblend.segment_blend(x.cuda(), w, ip)


# --- dispatch -----------------------------------------------------------------------------------
def test_explain_names_each_backend():
    x, w, ip, _ = _case([2, 2], (3,))
    report = fastblend.explain("segment_blend", x, w, ip)
    assert report.chosen == ("cpp" if HAS_CPP else "torch")
    assert set(report.reasons) == {"triton", "cpp", "torch"}
    assert "segment_blend" in str(report)
    with pytest.raises(ValueError, match="unknown op"):
        fastblend.explain("no_such_op", x)


def test_env_var_forces_backend_and_explicit_argument_wins(monkeypatch):
    x, w, ip, _ = _case([2, 2], (3,))
    monkeypatch.setenv("FASTBLEND_BACKEND", "torch")
    assert fastblend.explain("segment_blend", x, w, ip).chosen == "torch"
    if HAS_CPP:
        assert fastblend.explain("segment_blend", x, w, ip, backend="cpp").chosen == "cpp"
    monkeypatch.setenv("FASTBLEND_BACKEND", "bogus")
    with pytest.raises(ValueError, match="backend must be one of .*environment variable FASTBLEND_BACKEND"):
        fastblend.segment_blend(x, w, ip)


def test_disabled_cpp_falls_back_and_explicit_cpp_says_why(monkeypatch):
    x, w, ip, _ = _case([2, 2], (3,))
    monkeypatch.setenv("FASTBLEND_NO_CPP", "1")
    assert fastblend.explain("segment_blend", x, w, ip).chosen == "torch"
    with pytest.raises(RuntimeError, match="FASTBLEND_NO_CPP"):
        fastblend.segment_blend(x, w, ip, backend="cpp")


def test_import_works_without_triton_and_without_extension():
    code = (
        "import sys; sys.modules['triton'] = None; sys.modules['fastblend._C'] = None\n"
        "import torch, fastblend\n"
        "x = torch.randn(5, 3); w = torch.rand(5); ip = torch.tensor([0, 2, 5])\n"
        "r = fastblend.explain('segment_blend', x, w, ip)\n"
        "assert r.chosen == 'torch', r\n"
        "assert 'pip install' in r.reasons['triton'] and 'pip install' in r.reasons['cpp'], r.reasons\n"
        "out = fastblend.segment_blend(x, w, ip)\n"
        "assert torch.allclose(out[0], (x[:2] * (w[:2] / w[:2].sum())[:, None]).sum(0), atol=1e-6)\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr
