"""quantile_transform / quantile_mmd: every backend against the literal reference, numerics, errors."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastblend.ops import _dispatch, quantile_mmd, quantile_transform
from fastblend.ops import reference as ref
from fastblend.ops.quantile_mmd import _SET_FORWARD, _probit

from ._support import (
    CPU_BACKENDS,
    HAS_CPP,
    MMD_VALUE,
    Tol,
    assert_close,
    assert_within_eager_error,
    backend_params,
    backends,
    device_for,
)

MMD_GRAD = Tol(rtol=1e-3, atol=1e-4)  # atol relative to the largest gradient: float32 keeps ~3 digits
TRANSFORM_GRAD = Tol(rtol=1e-3, atol=1e-5)


def _sets(mf, mu, c, dtype=torch.float32, device="cpu", seed=0, scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    fl = (scale * torch.randn(mf, c, generator=gen)).to(dtype).to(device)
    ul = (scale * torch.randn(mu, c, generator=gen)).to(dtype).to(device)
    fy = torch.randint(0, c, (mf,), generator=gen).to(device)
    uy = torch.randint(0, c, (mu,), generator=gen).to(device)
    return fl, fy, ul, uy


def _check_against_reference(backend, mf, mu, c, seed=0, tie=False, k=2.0, kappa=60.0, sigma=1.0):
    dev = device_for(backend)
    fl, fy, ul, uy = _sets(mf, mu, c, device=dev, seed=seed)
    if tie and mf > 2:  # exact ties in the losses
        fl[1], fy[1] = fl[0], fy[0]
        fl[mf - 1], fy[mf - 1] = fl[0], fy[0]
    fl64, ul64 = fl.double().requires_grad_(), ul.double().requires_grad_()
    fl.requires_grad_()
    ul.requires_grad_()
    upstream = float(torch.empty(()).uniform_(0.5, 3.0))
    want = ref.quantile_mmd(fl64, fy, ul64, uy, k, kappa, sigma, detach_unseen=False)
    want_f, want_u = torch.autograd.grad(want * upstream, (fl64, ul64))
    got = quantile_mmd(fl, fy, ul, uy, k, kappa, sigma, backend=backend)
    got_f, got_u = torch.autograd.grad(got * upstream, (fl, ul))
    assert got.dtype == torch.float32
    assert_close(got, want.detach(), tol=MMD_VALUE)
    gscale = max(want_f.abs().max().item(), want_u.abs().max().item(), 1e-12)
    grad_tol = MMD_GRAD._replace(atol=MMD_GRAD.atol * gscale)
    assert_close(got_f, want_f, tol=grad_tol)
    assert_close(got_u, want_u, tol=grad_tol)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("mf,mu,c", [(1, 1, 2), (1, 5, 3), (7, 4, 5), (33, 17, 10), (20, 40, 7)])
def test_backends_match_reference(backend, mf, mu, c):
    _check_against_reference(backend, mf, mu, c)


@pytest.mark.parametrize("backend", backend_params())
def test_ties_and_clamp(backend):
    _check_against_reference(backend, 12, 9, 4, tie=True)
    # small kappa: the clamp is active for the top samples and passes no gradient there
    _check_against_reference(backend, 24, 16, 6, kappa=1.0, k=5.0, sigma=0.7)


@pytest.mark.parametrize("backend", backend_params(*CPU_BACKENDS))
@settings(max_examples=20, deadline=None)
@given(mf=st.integers(1, 40), mu=st.integers(1, 40), c=st.integers(2, 30), seed=st.integers(0, 10_000),
       tie=st.booleans())
def test_hypothesis_sizes(backend, mf, mu, c, seed, tie):
    _check_against_reference(backend, mf, mu, c, seed=seed, tie=tie)


@pytest.mark.parametrize("backend", backend_params("triton"))
@settings(max_examples=5, deadline=None)
@given(mf=st.integers(1, 40), mu=st.integers(1, 40), c=st.integers(2, 30), seed=st.integers(0, 10_000))
def test_hypothesis_triton(backend, mf, mu, c, seed):
    _check_against_reference(backend, mf, mu, c, seed=seed, tie=seed % 2 == 0)


def test_unseen_gets_no_gradient_unless_it_requires_grad():
    fl, fy, ul, uy = _sets(6, 5, 3)
    fl.requires_grad_()
    quantile_mmd(fl, fy, ul, uy).backward()
    assert fl.grad is not None and ul.grad is None


@pytest.mark.parametrize("backend", backend_params(*CPU_BACKENDS))
def test_gradcheck_float64(backend):
    fl, fy, ul, uy = _sets(6, 5, 4, dtype=torch.float64, seed=3)
    fl.requires_grad_()
    ul.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: quantile_mmd(a, fy, b, uy, backend=backend), (fl, ul))
    assert torch.autograd.gradcheck(lambda a: quantile_transform(a, fy, backend=backend), (fl,))


@pytest.mark.parametrize("backend", backend_params())
def test_transform_matches_reference(backend):
    dev = device_for(backend)
    fl, fy, _, _ = _sets(23, 1, 6, device=dev, seed=5)
    x = fl.requires_grad_()
    x64 = fl.detach().double().requires_grad_()
    up = torch.randn(23, device=dev)
    got = quantile_transform(x, fy, backend=backend)
    want = ref.quantile_transform(x64, fy)
    assert_close(got, want.detach())
    (got * up).sum().backward()
    (want * up.double()).sum().backward()
    assert_close(x.grad, x64.grad, tol=TRANSFORM_GRAD)


@pytest.mark.parametrize("backend", backend_params(*CPU_BACKENDS))
def test_invariants(backend):
    fl, fy, ul, uy = _sets(50, 30, 10, seed=7)
    assert quantile_mmd(fl, fy, ul, uy, backend=backend) >= 0
    same = float(quantile_mmd(fl, fy, fl.clone(), fy.clone(), backend=backend))
    assert 0.0 <= same <= 1e-9
    g = quantile_transform(fl, fy, backend=backend)
    assert (g >= 0).all()
    stats = _SET_FORWARD[backend](fl, fy, 2.0)
    c = 1 - stats[2]
    assert (c >= 0.5 - 1e-12).all() and (c <= 1 - 1 / (2 * 50) + 1e-12).all()
    # a constant shift of every u of a set leaves g unchanged: shift the losses so that u moves by
    # exactly 0.7 (ℓ' = e^{0.7}(1 + ℓ + 1e-8) − 1 − 1e-8) by raising the label logit's competitors
    u = stats[1]
    target = torch.expm1(u + 0.7) - 1e-8  # the new losses
    # logits with one free column: ℓ = log(1 + (C-1) e^{a}) for z = [0 at label, a elsewhere]
    a = torch.log(torch.expm1(target) / 9)
    z = a[:, None].expand(50, 10).clone()
    z[torch.arange(50), fy] = 0
    shifted = _SET_FORWARD[backend](z, fy, 2.0)
    torch.testing.assert_close(shifted[1], u + 0.7, rtol=0, atol=1e-9)
    torch.testing.assert_close(_probit(shifted), _probit(stats), rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend", backend_params(*CPU_BACKENDS))
def test_precision_against_float64(backend):
    fl, fy, ul, uy = _sets(256, 256, 10, seed=11, scale=1.0)
    exact = ref.quantile_mmd(fl.double(), fy, ul.double(), uy).item()
    got = quantile_mmd(fl, fy, ul, uy, backend=backend).item()
    assert abs(got - exact) <= MMD_VALUE.rtol * exact
    literal32 = ref.quantile_mmd(fl, fy, ul, uy).item()  # documents why the care is needed
    assert abs(literal32 - exact) > abs(got - exact)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs(backend, dtype):
    dev = device_for(backend)
    fl, fy, ul, uy = _sets(24, 20, 6, device=dev, seed=13)
    fl, ul = fl.to(dtype), ul.to(dtype)  # the fp64 oracle sees the same rounded inputs
    exact = ref.quantile_mmd(fl.double(), fy, ul.double(), uy)
    eager = ref.quantile_mmd(fl.float(), fy, ul.float(), uy).to(dtype).double()
    got = quantile_mmd(fl, fy, ul, uy, backend=backend).double()
    assert_within_eager_error(got, eager, exact, floor=1e-7 * exact.abs().item() + 1e-9, msg="value")
    x = fl.clone().requires_grad_()
    x64 = fl.double().requires_grad_()
    quantile_mmd(x, fy, ul, uy, backend=backend).backward()
    ref.quantile_mmd(x64, fy, ul.double(), uy).backward()
    assert x.grad.dtype == dtype
    stored = x64.grad.to(dtype)  # the best any computation in dtype can do: the exact gradient, rounded
    assert_within_eager_error(x.grad, stored, x64.grad, floor=1e-3 * x64.grad.abs().max().item(), msg="grad")


def test_opcheck():
    fl, fy, ul, uy = _sets(9, 7, 5, seed=17)
    fl.requires_grad_()
    for backend in backends(*CPU_BACKENDS):
        torch.library.opcheck(torch.ops.fastblend.quantile_mmd.default, (fl, fy, ul, uy, 2.0, 60.0, 1.0, backend))
        torch.library.opcheck(torch.ops.fastblend.quantile_transform.default, (fl, fy, 2.0, 60.0, backend))


def test_large_k_falls_back_to_pairwise_exp():
    # k * (u_max − u_min) beyond the float range of the product form
    fl, fy, ul, uy = _sets(15, 12, 5, seed=19, scale=6.0)
    for backend in backends(*CPU_BACKENDS):
        _check_against_reference(backend, 15, 12, 5, seed=19, k=200.0)


def test_auto_backend_and_explain():
    fl, fy, ul, uy = _sets(4, 4, 3)
    chosen = _dispatch.resolve("quantile_mmd", "auto", (fl, fy, ul, uy))
    assert chosen == ("cpp" if HAS_CPP else "torch")
    why = _dispatch.reasons("quantile_mmd", (fl.double(), fy, ul.double(), uy))
    assert why["triton"] is not None


@pytest.mark.parametrize(
    "mutate,exc,match",
    [
        (lambda a: {**a, "forget_labels": a["forget_labels"] + 100}, ValueError, "forget_labels must be in"),
        (lambda a: {**a, "unseen_labels": -a["unseen_labels"] - 1}, ValueError, "unseen_labels must be in"),
        (lambda a: {**a, "forget_logits": a["forget_logits"][0]}, ValueError, "2-D"),
        (lambda a: {**a, "forget_logits": a["forget_logits"][:0], "forget_labels": a["forget_labels"][:0]},
         ValueError, "at least one sample"),
        (lambda a: {**a, "forget_labels": a["forget_labels"][:-1]}, ValueError, "forget_labels must have shape"),
        (lambda a: {**a, "forget_labels": a["forget_labels"].int()}, TypeError, "int64"),
        (lambda a: {**a, "forget_logits": a["forget_logits"].long()}, TypeError, "forget_logits must be float"),
        (lambda a: {**a, "sigma": 0.0}, ValueError, "sigma"),
        (lambda a: {**a, "k": math.nan}, ValueError, "k must be"),
    ],
)
def test_bad_input(mutate, exc, match):
    fl, fy, ul, uy = _sets(5, 4, 3)
    args = mutate({"forget_logits": fl, "forget_labels": fy, "unseen_logits": ul, "unseen_labels": uy})
    with pytest.raises(exc, match="^quantile_mmd: .*" + match):
        quantile_mmd(**args)


def test_transform_bad_input():
    with pytest.raises(ValueError, match="^quantile_transform: labels must be in"):
        quantile_transform(torch.randn(3, 2), torch.tensor([0, 1, 2]))
