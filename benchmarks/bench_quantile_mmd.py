"""quantile_mmd: forward+backward of the A-AMU regulariser, and the unseen sampler.

    python -m benchmarks.bench_quantile_mmd [--quick] [--out DIR]   # M = 256 (10 classes), 2,048 (100 classes)

* ``quantile_mmd`` forward+backward (gradient into the forget logits, unseen detached as in
  docs/method.md §2.3) for the fused backends (C++ on CPU, Triton on CUDA, the chunked torch backend) against
  the literal eager reference ``fastblend.ops.reference.quantile_mmd`` differentiated by autograd,
  with the peak memory of one call (CUDA: allocator peak; CPU: resident set sampled every 0.2 ms,
  glibc set to return freed memory at once).
* ``unseen_sampler``: one step's draw of 4B = 256 unseen samples from the forget batch's classes with
  ``UnseenSampler`` vs a Python scan of a 7,000-image pool for the allowed classes, over a list of
  labels (``python_scan``) and over a dataset of (image, label) items (``python_scan dataset``).

Writes ``<out>/quantile_mmd.jsonl`` (the runner's ROW schema).
"""

from __future__ import annotations

import random

import torch

import fastblend
from fastblend.ops import reference as ref
from fastblend.ops._dispatch import cpp_unavailable_reason

from .runner import Recorder, measure, parser, peak_memory, track_rss_closely


def bench_op(rec: Recorder, m: int, classes: int, repeats: int, device: torch.device) -> None:
    gen = torch.Generator().manual_seed(0)
    fl = torch.randn(m, classes, generator=gen).to(device).requires_grad_()
    ul = torch.randn(m, classes, generator=gen).to(device)
    fy = torch.randint(0, classes, (m,), generator=gen).to(device)
    uy = torch.randint(0, classes, (m,), generator=gen).to(device)
    impls = {"eager": lambda: ref.quantile_mmd(fl, fy, ul, uy)}
    if device.type == "cuda":
        impls["triton"] = lambda: fastblend.quantile_mmd(fl, fy, ul, uy, backend="triton", validate=False)
    elif cpp_unavailable_reason() is None:
        impls["cpp"] = lambda: fastblend.quantile_mmd(fl, fy, ul, uy, backend="cpp", validate=False)
    impls["torch"] = lambda: fastblend.quantile_mmd(fl, fy, ul, uy, backend="torch", validate=False)
    for name, fwd in impls.items():
        def step(fwd=fwd):
            fwd().backward()
            fl.grad = None

        timing, _ = measure(step, repeats=repeats, device=device)
        rec.add("quantile_mmd", f"M={m} C={classes}", "fwd+bwd", name, timing, {"M": m, "classes": classes},
                peak_memory(step, device))


def bench_sampler(rec: Recorder, repeats: int, pool_size: int = 7000, classes: int = 10, batch: int = 256) -> None:
    gen = torch.Generator().manual_seed(0)
    pool = torch.randint(0, classes, (pool_size,), generator=gen)
    forget = torch.randint(0, 3, (batch,), generator=gen)  # a forget batch touching three classes
    sampler = fastblend.UnseenSampler(pool, batch, num_classes=classes, seed=0)
    pool_list = pool.tolist()
    rng = random.Random(0)
    # the pool as a user's unseen data set of images: a scan reads every (image, label) item
    dataset = torch.utils.data.TensorDataset(torch.zeros(pool_size, 1, 28, 28), pool)

    def python_scan():
        allowed = set(forget.tolist())
        candidates = [i for i, c in enumerate(pool_list) if c in allowed]
        return torch.tensor(rng.sample(candidates, min(batch, len(candidates))))

    def python_dataset_scan():
        allowed = set(forget.tolist())
        candidates = [i for i in range(len(dataset)) if int(dataset[i][1]) in allowed]
        return torch.tensor(rng.sample(candidates, min(batch, len(candidates))))

    case, params = f"pool={pool_size} B={batch}", {"pool": pool_size, "batch": batch, "classes": classes}
    for backend, fn, reps in (("UnseenSampler", lambda: sampler.sample(forget), repeats),
                              ("python_scan", python_scan, repeats),
                              ("python_scan dataset", python_dataset_scan, max(3, repeats // 5))):
        timing, _ = measure(fn, repeats=reps)
        rec.add("unseen_sampler", case, "draw", backend, timing, params)


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    sizes = [(256, 10), (1024, 100)] if args.quick else [(256, 10), (2048, 100)]
    repeats = 5 if args.quick else 15
    if args.device.type == "cpu":
        track_rss_closely()
    rec = Recorder(args.out, "quantile_mmd")
    for m, c in sizes:
        bench_op(rec, m, c, repeats, args.device)
    bench_sampler(rec, 10 if args.quick else 50)
    print(f"wrote {rec.path}")


if __name__ == "__main__":
    main()
