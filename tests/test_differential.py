"""Differential tests across backends (issue 14): hypothesis draws layouts the kernels must not
assume away (transposed, sliced, channels_last, stride-0 inputs; non-contiguous index tensors) and
every backend must agree with the float64 oracle ``fastblend.ops.reference``, gradients included.
Triton runs in the interpreter at tiny sizes; examples are few (deadline off) to keep this fast."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastblend
from fastblend.ops import reference

from ._support import backend_params, device_for

LAYOUTS = ("contiguous", "transposed", "sliced", "channels_last", "broadcast")


def _layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as ``x [N, C, H, W]`` in a non-standard memory layout."""
    if layout == "transposed":
        return x.transpose(2, 3).contiguous().transpose(2, 3)
    if layout == "sliced":
        buf = x.new_zeros(x.shape[:3] + (2 * x.shape[3],))
        buf[..., ::2] = x
        return buf[..., ::2]  # a strided view: every other column of a wider buffer
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "broadcast":
        return x[:, :1].expand_as(x)  # stride 0 along channels
    return x


def _strided_index(values: list[int], device: str = "cpu") -> torch.Tensor:
    """``values`` as a non-contiguous int64 tensor on ``device`` (every other element of a padded buffer)."""
    buf = torch.full((2 * len(values),), -(10**9), dtype=torch.long, device=device)
    buf[::2] = torch.tensor(values, dtype=torch.long, device=device)
    out = buf[::2]
    assert not out.is_contiguous() or len(values) <= 1
    return out


@pytest.mark.parametrize("backend", backend_params())
@settings(max_examples=5, deadline=None, derandomize=True)
@given(sizes=st.lists(st.integers(0, 3), min_size=1, max_size=4).filter(lambda s: sum(s) > 0),
       layout=st.sampled_from(LAYOUTS),
       normalize=st.sampled_from(["sum", "softmax", "none"]), seed=st.integers(0, 2**16))
def test_segment_blend_agrees_with_reference_on_any_layout(backend, sizes, layout, normalize, seed):
    dev = device_for(backend)
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    x = _layout(torch.randn(n, 2, 3, 3, generator=g), layout)
    w = torch.rand(n, generator=g) + 0.5
    offsets = [0]
    for s in sizes:
        offsets.append(offsets[-1] + s)
    indptr = _strided_index(offsets, dev)
    want = reference.segment_blend(x.double(), w.double(), indptr.cpu().contiguous(), normalize)
    xg = x.detach().to(dev).requires_grad_(True)
    wg = w.detach().to(dev).requires_grad_(True)
    got = fastblend.segment_blend(xg, wg, indptr, normalize, backend)
    torch.testing.assert_close(got.detach().double().cpu(), want, rtol=1e-5, atol=1e-5)
    # gradients against the oracle's autograd
    xr = x.detach().double().requires_grad_(True)
    wr = w.detach().double().requires_grad_(True)
    probe = torch.randn(want.shape, generator=g, dtype=torch.float64)
    (reference.segment_blend(xr, wr, indptr.cpu().contiguous(), normalize) * probe).sum().backward()
    (got * probe.to(got)).sum().backward()
    torch.testing.assert_close(xg.grad.double().cpu(), xr.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(wg.grad.double().cpu(), wr.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", backend_params())
@settings(max_examples=5, deadline=None, derandomize=True)
@given(m=st.integers(1, 6), c=st.integers(1, 5), transposed=st.booleans(), seed=st.integers(0, 2**16))
def test_quantile_mmd_agrees_with_reference_on_strided_inputs(backend, m, c, transposed, seed):
    dev = device_for(backend)
    g = torch.Generator().manual_seed(seed)
    zf = torch.randn(c, m, generator=g).t() if transposed else torch.randn(m, c, generator=g)
    zu = torch.randn(m + 1, c, generator=g)[::1]
    yf = _strided_index(torch.randint(0, c, (m,), generator=g).tolist(), dev)
    yu = _strided_index(torch.randint(0, c, (m + 1,), generator=g).tolist(), dev)
    yf_ref, yu_ref = yf.cpu().contiguous(), yu.cpu().contiguous()
    want_g = reference.quantile_transform(zf.double(), yf_ref)
    got_g = fastblend.quantile_transform(zf.to(dev), yf, backend=backend)
    torch.testing.assert_close(got_g.double().cpu(), want_g, rtol=1e-4, atol=1e-4)
    zr = zf.detach().double().requires_grad_(True)
    want = reference.quantile_mmd(zr, yf_ref, zu.double(), yu_ref)
    want.backward()
    zg = zf.detach().to(dev).requires_grad_(True)
    got = fastblend.quantile_mmd(zg, yf, zu.to(dev), yu, backend=backend)
    got.backward()
    torch.testing.assert_close(got.detach().double().cpu(), want.detach(), rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(zg.grad.double().cpu(), zr.grad, rtol=1e-3, atol=1e-5)
