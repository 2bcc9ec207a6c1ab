"""quantile_mmd benchmark (issue 5): forward+backward of the A-AMU regulariser, and the samplers.

    python -m benchmarks.bench_quantile_mmd            # M = 256 (10 classes), M = 2,048 (100 classes)
    python -m benchmarks.bench_quantile_mmd --small    # quick check (M = 256 and 1,024)

* ``quantile_mmd`` forward+backward (gradient into the forget logits, unseen detached as in
  SPEC §2.3) for the fused backends (C++ on CPU, Triton on CUDA, the chunked torch backend) against
  the literal eager reference ``fastblend.ops.reference.quantile_mmd`` differentiated by autograd:
  median and min/max of repeated runs, speed-up over eager, and peak memory (CUDA: allocator peak;
  CPU: peak growth of the resident set, sampled every 0.2 ms during the call).
* Samplers: one step's draw of 4B = 256 unseen samples from the forget batch's classes with
  ``UnseenSampler`` vs a Python scan of a 7,000-image pool for the allowed classes.

Writes ``results/quantile_mmd[_small].json`` and prints a table; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import threading
import time
from pathlib import Path

import torch

import fastblend
from fastblend._device import synchronize
from fastblend.ops import reference as ref
from fastblend.ops._dispatch import cpp_unavailable_reason
from fastblend.pipeline import machine_info

RESULTS = Path(__file__).resolve().parent.parent / "results"
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def _fixed_mmap_threshold() -> None:
    """Make glibc serve every allocation above 64 KiB with mmap (and give it back on free), so
    that the resident set follows the live tensors instead of a growing free-list."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
    except OSError:
        pass


def _peak_memory(fn) -> int:
    """Peak extra bytes while ``fn`` runs."""
    if DEVICE.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        synchronize(DEVICE)
        return torch.cuda.max_memory_allocated() - base
    base, peak, done = _rss(), [0], threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.0002)

    t = threading.Thread(target=watch)
    t.start()
    fn()
    done.set()
    t.join()
    return max(0, max(peak[0], _rss()) - base)


def _time(fn, repeats: int) -> dict:
    fn()
    times = []
    for _ in range(repeats):
        synchronize(DEVICE)
        t0 = time.perf_counter()
        fn()
        synchronize(DEVICE)
        times.append(time.perf_counter() - t0)
    return {"median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times), "max_ms": 1e3 * max(times)}


def bench_op(m: int, classes: int, repeats: int) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    fl = torch.randn(m, classes, generator=gen).to(DEVICE).requires_grad_()
    ul = torch.randn(m, classes, generator=gen).to(DEVICE)
    fy = torch.randint(0, classes, (m,), generator=gen).to(DEVICE)
    uy = torch.randint(0, classes, (m,), generator=gen).to(DEVICE)
    impls = {"eager": lambda: ref.quantile_mmd(fl, fy, ul, uy)}
    if DEVICE.type == "cuda":
        impls["triton"] = lambda: fastblend.quantile_mmd(fl, fy, ul, uy, backend="triton", validate=False)
    elif cpp_unavailable_reason() is None:
        impls["cpp"] = lambda: fastblend.quantile_mmd(fl, fy, ul, uy, backend="cpp", validate=False)
    impls["torch_backend"] = lambda: fastblend.quantile_mmd(fl, fy, ul, uy, backend="torch", validate=False)
    rows = []
    for name, fwd in impls.items():
        def step(fwd=fwd):
            fwd().backward()
            fl.grad = None
        row = {"bench": "quantile_mmd fwd+bwd", "impl": name, "M": m, "classes": classes,
               **_time(step, repeats), "peak_bytes": _peak_memory(step)}
        rows.append(row)
    eager = rows[0]
    for row in rows:
        row["speedup_vs_eager"] = eager["median_ms"] / row["median_ms"]
        row["memory_vs_eager"] = row["peak_bytes"] / max(eager["peak_bytes"], 1)
    return rows


def bench_sampler(pool_size: int = 7000, classes: int = 10, batch: int = 256, repeats: int = 50) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    pool = torch.randint(0, classes, (pool_size,), generator=gen)
    forget = torch.randint(0, 3, (batch,), generator=gen)  # a forget batch touching three classes
    sampler = fastblend.UnseenSampler(pool, batch, num_classes=classes, seed=0)
    pool_list = pool.tolist()
    rng = random.Random(0)

    def python_scan():
        allowed = set(forget.tolist())
        candidates = [i for i, c in enumerate(pool_list) if c in allowed]
        return torch.tensor(rng.sample(candidates, min(batch, len(candidates))))

    # the pool as a user's unseen data set of images: a scan reads every (image, label) item
    dataset = torch.utils.data.TensorDataset(torch.zeros(pool_size, 1, 28, 28), pool)

    def python_dataset_scan():
        allowed = set(forget.tolist())
        candidates = [i for i in range(len(dataset)) if int(dataset[i][1]) in allowed]
        return torch.tensor(rng.sample(candidates, min(batch, len(candidates))))

    rows = [{"bench": "unseen draw", "impl": "UnseenSampler", "pool": pool_size, "batch": batch,
             **_time(lambda: sampler.sample(forget), repeats)},
            {"bench": "unseen draw", "impl": "python scan", "pool": pool_size, "batch": batch,
             "baseline": "list of int labels", **_time(python_scan, repeats)},
            {"bench": "unseen draw", "impl": "python dataset scan", "pool": pool_size, "batch": batch,
             "baseline": "TensorDataset of (image, label) items", **_time(python_dataset_scan, max(5, repeats // 5))}]
    rows[0]["speedup_vs_scan"] = rows[1]["median_ms"] / rows[0]["median_ms"]
    rows[0]["speedup_vs_dataset_scan"] = rows[2]["median_ms"] / rows[0]["median_ms"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="reduced sizes for a quick check")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default results/quantile_mmd[_small].json)")
    args = parser.parse_args()
    sizes = [(256, 10), (1024, 100)] if args.small else [(256, 10), (2048, 100)]
    repeats = args.repeats or (5 if args.small else 15)
    info = machine_info()
    if DEVICE.type == "cpu":
        _fixed_mmap_threshold()
    rows = []
    for m, c in sizes:
        rows += bench_op(m, c, repeats)
    rows += bench_sampler()
    for row in rows:
        row.update(info)
    out = args.out or RESULTS / f"quantile_mmd{'_small' if args.small else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    for r in rows:
        extra = (f"x{r['speedup_vs_eager']:.1f} vs eager, peak {r['peak_bytes'] / 2**20:.1f} MiB"
                 if "speedup_vs_eager" in r else
                 f"x{r.get('speedup_vs_scan', 1.0):.0f} vs label-list scan, "
                 f"x{r.get('speedup_vs_dataset_scan', 1.0):.0f} vs dataset scan" if "speedup_vs_scan" in r else "")
        size = f"M={r['M']} C={r['classes']}" if "M" in r else f"pool={r['pool']}"
        print(f"{r['bench']:22s} {r['impl']:14s} {size:14s} median {r['median_ms']:9.3f} ms  {extra}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
