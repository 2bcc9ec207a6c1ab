"""segment_blend at CIFAR-like shapes (N = 50,000 images of 3x32x32; --quick: 2,000).

    python -m benchmarks.bench_segment_blend [--quick] [--out DIR]

Compares the fastblend backends with the baselines of ``fastblend.ops.reference``: the eager
``index_add``-based formulation differentiated by autograd, and a per-segment Python loop (the
published reference's style). Variants: ``fwd``, ``bwd`` (backward only) and ``fwd+bwd``, with
gradients w.r.t. the weights (Blend's case) or w.r.t. both inputs; two layouts (segments of about 5
and about 50 images). On a GPU the Triton backend is included, and a ``triton`` row with variant
``bandwidth`` reports the fraction of the card's copy bandwidth the forward reaches.
Writes ``<out>/segment_blend.jsonl`` (the runner's ROW schema).
"""

from __future__ import annotations

import torch

import fastblend
from fastblend.ops import reference as ref
from fastblend.ops._dispatch import cpp_unavailable_reason

from .runner import Recorder, Timing, measure, parser

SHAPE = (3, 32, 32)


def implementations(device: torch.device) -> dict:
    out = {}
    if device.type == "cuda":
        out["triton"] = lambda x, w, ip: fastblend.segment_blend(x, w, ip, backend="triton", validate=False)
    elif cpp_unavailable_reason() is None:
        out["cpp"] = lambda x, w, ip: fastblend.segment_blend(x, w, ip, backend="cpp", validate=False)
    out["torch"] = lambda x, w, ip: fastblend.segment_blend(x, w, ip, backend="torch", validate=False)
    out["eager"] = ref.segment_blend
    out["loop"] = ref.segment_blend_loop
    return out


def layout(n: int, k: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """``indptr [k + 1]`` of uneven segments around ``n / k`` summing to ``n``: a random composition."""
    g = torch.Generator().manual_seed(seed)
    cuts = torch.randperm(n - 1, generator=g)[: k - 1].add(1).sort().values
    return torch.cat([torch.zeros(1, dtype=torch.int64), cuts, torch.tensor([n])]).to(device)


def bench_layout(rec: Recorder, impls: dict, x: torch.Tensor, w0: torch.Tensor, ip: torch.Tensor,
                 device: torch.device, repeats: int) -> None:
    n, k = x.shape[0], ip.numel() - 1
    case = f"N={n} K={k}"
    params = {"N": n, "K": k, "shape": list(SHAPE)}
    gout = torch.randn((k,) + SHAPE, device=device)
    for name, fn in impls.items():
        reps = 2 if name == "loop" else repeats
        with torch.no_grad():
            timing, _ = measure(lambda fn=fn: fn(x, w0, ip), repeats=reps, device=device)
        rec.add("segment_blend", case, "fwd", name, timing, params)
        for grads in ("w", "xw"):
            if grads == "xw" and name == "loop":
                continue  # the loop baseline is measured for Blend's case (weight gradients) only
            xg = x.detach().clone().requires_grad_(grads == "xw")
            w = w0.detach().clone().requires_grad_(True)

            def step(fn=fn, xg=xg, w=w):
                xg.grad = w.grad = None
                fn(xg, w, ip).backward(gout)

            timing, _ = measure(step, repeats=reps, device=device)
            rec.add("segment_blend", case, f"fwd+bwd grad={grads}", name, timing, params)
        if name == "loop":
            continue
        w = w0.detach().clone().requires_grad_(True)

        def forward(fn=fn, w=w):
            w.grad = None
            return (fn(x, w, ip),)

        timing, _ = measure(lambda out: out.backward(gout), repeats=repeats, device=device, setup=forward)
        rec.add("segment_blend", case, "bwd grad=w", name, timing, params)


def bench_bandwidth(rec: Recorder, x: torch.Tensor, w: torch.Tensor, ip: torch.Tensor) -> None:
    """Fraction of the card's measured copy bandwidth that the Triton forward reaches."""
    import triton.testing

    def fwd():
        return fastblend.segment_blend(x, w, ip, backend="triton", validate=False)

    out = fwd()
    moved = x.numel() * x.element_size() + out.numel() * out.element_size() + w.numel() * 8 * 2
    kernel_ms = triton.testing.do_bench(fwd)
    src = torch.empty(moved // 8, dtype=torch.float32, device=x.device)
    dst = torch.empty_like(src)
    copy_ms = triton.testing.do_bench(lambda: dst.copy_(src))  # reads + writes `moved` bytes in total
    rec.add("segment_blend", f"N={x.shape[0]} K={ip.numel() - 1}", "bandwidth", "triton", Timing.of([kernel_ms / 1e3]),
            {"N": x.shape[0], "K": ip.numel() - 1}, {"copy_s": copy_ms / 1e3, "gbps": moved / kernel_ms / 1e6,
                                                     "fraction_of_copy_bandwidth": copy_ms / kernel_ms})


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    device = args.device
    n = 2_000 if args.quick else 50_000
    repeats = 3 if args.quick else 5
    rec = Recorder(args.out, "segment_blend")
    g = torch.Generator().manual_seed(0)
    x = torch.randn((n,) + SHAPE, generator=g).to(device)
    w = (torch.rand(n, generator=g) + 0.5).to(device)
    impls = implementations(device)
    for k in (n // 5, n // 50):
        bench_layout(rec, impls, x, w, layout(n, k, device), device, repeats)
    if device.type == "cuda":
        bench_bandwidth(rec, x, w, layout(n, n // 5, device))
    print(f"wrote {rec.path}")


if __name__ == "__main__":
    main()
