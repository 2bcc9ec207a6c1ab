"""segment_blend micro-benchmarks at CIFAR-like shapes (N = 50,000 images of 3x32x32).

Compares the fastblend backends with the baselines of ``fastblend.ops.reference``: the eager
``index_add``-based formulation differentiated by autograd, and a per-segment Python loop (the
published reference's style). Groups: ``fwd``, ``bwd`` (backward only) and ``fwd+bwd``, with
gradients w.r.t. the weights (Blend's case) or w.r.t. both inputs.

    pytest benchmarks/bench_segment_blend.py --benchmark-only --benchmark-json results/segment_blend.json
    python -m benchmarks.summarize results/segment_blend.json

``FASTBLEND_BENCH_SMALL=1`` shrinks N to 5,000 for a quick check. On a GPU the Triton backend is
included and ``test_triton_bandwidth`` reports the fraction of the card's copy bandwidth reached.
"""

import os

import pytest
import torch

import fastblend
from fastblend._device import synchronize
from fastblend.ops import reference as ref
from fastblend.ops._dispatch import cpp_unavailable_reason

SMALL = os.environ.get("FASTBLEND_BENCH_SMALL", "") not in ("", "0")
N = 5_000 if SMALL else 50_000
SHAPE = (3, 32, 32)
SEGMENTS = {"seg5": N // 5, "seg50": N // 50}
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _impls():
    out = {}
    if DEVICE.type == "cuda":
        out["triton"] = lambda x, w, ip: fastblend.segment_blend(x, w, ip, backend="triton", validate=False)
    elif cpp_unavailable_reason() is None:
        out["cpp"] = lambda x, w, ip: fastblend.segment_blend(x, w, ip, backend="cpp", validate=False)
    out["torch_backend"] = lambda x, w, ip: fastblend.segment_blend(x, w, ip, backend="torch", validate=False)
    out["eager"] = ref.segment_blend
    out["loop"] = ref.segment_blend_loop
    return out


IMPLS = _impls()


def _layout(k: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    # uneven sizes around N / K, summing to N: a random composition
    cuts = torch.randperm(N - 1, generator=g)[: k - 1].add(1).sort().values
    indptr = torch.cat([torch.zeros(1, dtype=torch.int64), cuts, torch.tensor([N])])
    return indptr.to(DEVICE)


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn((N,) + SHAPE, generator=g).to(DEVICE)
    w = (torch.rand(N, generator=g) + 0.5).to(DEVICE)
    layouts = {name: _layout(k) for name, k in SEGMENTS.items()}
    return x, w, layouts


@pytest.mark.parametrize("layout", list(SEGMENTS))
@pytest.mark.parametrize("impl", list(IMPLS))
def test_fwd(benchmark, record, data, impl, layout):
    x, w, layouts = data
    ip = layouts[layout]
    fn = IMPLS[impl]
    benchmark.group = f"segment_blend fwd {layout}"
    record(impl=impl, layout=layout, N=N, K=ip.numel() - 1, op="fwd")

    def run():
        with torch.no_grad():
            out = fn(x, w, ip)
        synchronize(DEVICE)
        return out

    benchmark.pedantic(run, rounds=5 if impl != "loop" else 2, warmup_rounds=1)


@pytest.mark.parametrize("grads", ["w", "xw"])
@pytest.mark.parametrize("layout", list(SEGMENTS))
@pytest.mark.parametrize("impl", list(IMPLS))
def test_fwd_bwd(benchmark, record, data, impl, layout, grads):
    if grads == "xw" and impl == "loop":
        pytest.skip("the loop baseline is measured for Blend's case (weight gradients) only")
    x0, w0, layouts = data
    ip = layouts[layout]
    fn = IMPLS[impl]
    x = x0.detach().clone().requires_grad_(grads == "xw")
    w = w0.detach().clone().requires_grad_(True)
    gout = torch.randn((ip.numel() - 1,) + SHAPE, device=DEVICE)
    benchmark.group = f"segment_blend fwd+bwd {layout} grad={grads}"
    record(impl=impl, layout=layout, N=N, K=ip.numel() - 1, op="fwd+bwd", grads=grads)

    def run():
        x.grad = None
        w.grad = None
        fn(x, w, ip).backward(gout)
        synchronize(DEVICE)

    benchmark.pedantic(run, rounds=5 if impl != "loop" else 2, warmup_rounds=1)


@pytest.mark.parametrize("layout", list(SEGMENTS))
@pytest.mark.parametrize("impl", [i for i in IMPLS if i != "loop"])
def test_bwd(benchmark, record, data, impl, layout):
    x, w0, layouts = data
    ip = layouts[layout]
    fn = IMPLS[impl]
    w = w0.detach().clone().requires_grad_(True)
    gout = torch.randn((ip.numel() - 1,) + SHAPE, device=DEVICE)
    benchmark.group = f"segment_blend bwd {layout} grad=w"
    record(impl=impl, layout=layout, N=N, K=ip.numel() - 1, op="bwd", grads="w")

    def setup():
        w.grad = None
        out = fn(x, w, ip)
        synchronize(DEVICE)
        return (out,), {}

    def run(out):
        out.backward(gout)
        synchronize(DEVICE)

    benchmark.pedantic(run, setup=setup, rounds=5)


@pytest.mark.skipif(DEVICE.type != "cuda", reason="copy bandwidth of a GPU")
def test_triton_bandwidth(benchmark, record, data):
    """Fraction of the card's measured copy bandwidth that the Triton forward reaches."""
    import triton.testing

    x, w, layouts = data
    ip = layouts["seg5"]
    out = fastblend.segment_blend(x, w, ip, backend="triton", validate=False)
    moved = x.numel() * x.element_size() + out.numel() * out.element_size() + w.numel() * 8 * 2
    t_kernel = triton.testing.do_bench(lambda: fastblend.segment_blend(x, w, ip, backend="triton", validate=False))
    src = torch.empty(moved // 8, dtype=torch.float32, device=DEVICE)
    dst = torch.empty_like(src)
    t_copy = triton.testing.do_bench(lambda: dst.copy_(src))  # reads + writes `moved` bytes in total
    fraction = t_copy / t_kernel
    benchmark.group = "segment_blend triton bandwidth"
    record(impl="triton", kernel_ms=t_kernel, copy_ms=t_copy, fraction_of_copy_bandwidth=fraction,
           gbps=moved / t_kernel / 1e6)
    benchmark.pedantic(lambda: fastblend.segment_blend(x, w, ip, backend="triton", validate=False), rounds=3)
