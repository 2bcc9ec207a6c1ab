"""Grouping benchmark (issue 3): feature extraction and per-class k-means, timed separately.

    .venv/bin/python benchmarks/bench_grouping.py            # full sizes (minutes on a CPU)
    .venv/bin/python benchmarks/bench_grouping.py --small    # reduced sizes, a quick check

Workloads: real animal-mnist (1x28x28, N = 10,000, ipc 100; --small: 2,000, ipc 20) and
CIFAR-like synthetic 3x32x32 images (N = 50,000, ipc 1000, 2048-d features; --small: 5,000,
ipc 100).

* Feature extraction: ``fastblend.extract_features`` vs the extractor's own batched forward (the
  same channels-last random ConvNet-3, ``embed`` over batches of 512 in inference mode, then
  ``torch.cat``), and vs the same forward in the default contiguous layout.
* Grouping: ``fastblend.group`` with the faiss and torch backends vs a straightforward per-class
  k-means with a Python loop over clusters (``benchmarks/kmeans_baseline.py``); each with the
  k-means objective (float64 within-cluster sum of squares) and its ratio to the baseline's.

Writes ``results/grouping[_small].json`` and prints a table. Speed-ups are ratios measured in this
run on this machine; nothing is asserted.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.kmeans_baseline import straightforward_group  # noqa: E402
from fastblend import extract_features, group, load_dataset  # noqa: E402
from fastblend._device import synchronize  # noqa: E402
from fastblend.grouping import _objective  # noqa: E402
from fastblend.models import random_convnet  # noqa: E402
from fastblend.pipeline import machine_info  # noqa: E402


def load_animal_mnist(limit_per_class: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The real animal-mnist images (fastblend.data): the first ``limit_per_class`` training images
    of each class, or all 10,000 (train and test splits together)."""
    train, test = load_dataset("animal-mnist", per_class=limit_per_class)
    if limit_per_class is not None:
        return train.images, train.labels
    return torch.cat([train.images, test.images]), torch.cat([train.labels, test.labels])


def synthetic_cifar(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % 10


def timed(fn, repeats: int, device: torch.device):
    times, out = [], None
    for _ in range(repeats):
        synchronize(device)
        t = time.perf_counter()
        out = fn()
        synchronize(device)
        times.append(time.perf_counter() - t)
    return out, times


def row(workload: str, stage: str, impl: str, times: list[float], **extra) -> dict:
    return {"workload": workload, "stage": stage, "impl": impl, "median_s": statistics.median(times),
            "min_s": min(times), "max_s": max(times), "repeats": len(times), **extra}


def bench_extraction(name, images, device, repeats, batch_size=512):
    channels, size = images.shape[1], images.shape[-1]
    images = images.to(device)
    net_cl = random_convnet(channels, size, 0, device=device).to(memory_format=torch.channels_last)
    net = random_convnet(channels, size, 0, device=device)

    def own_forward(model, memory_format):
        with torch.inference_mode():
            return torch.cat([model.embed(images[s:s + batch_size].contiguous(memory_format=memory_format))
                              for s in range(0, images.shape[0], batch_size)])

    rows = []
    feats, t = timed(lambda: extract_features(images, batch_size=batch_size, seed=0, progress=False), repeats, device)
    _, t_cl = timed(lambda: own_forward(net_cl, torch.channels_last), repeats, device)
    _, t_cf = timed(lambda: own_forward(net, torch.contiguous_format), repeats, device)
    base = statistics.median(t_cl)
    rows.append(row(name, "extract", "extract_features", t, ratio_to_own_forward=statistics.median(t) / base))
    rows.append(row(name, "extract", "own_forward_channels_last", t_cl, ratio_to_own_forward=1.0))
    rows.append(row(name, "extract", "own_forward_contiguous", t_cf,
                    ratio_to_own_forward=statistics.median(t_cf) / base))
    return feats, rows


def bench_grouping(name, feats, labels, ipc, repeats, baseline_repeats):
    rows, results = [], {}
    num_classes = int(labels.max()) + 1

    def objective(assignment):
        return float(_objective(feats, labels, assignment, num_classes, num_classes * ipc).sum())

    base_assign, t_base = timed(lambda: straightforward_group(feats, labels, ipc, seed=0), baseline_repeats,
                                feats.device)
    base_obj = objective(base_assign)
    rows.append(row(name, "group", "straightforward", t_base, objective=base_obj, objective_ratio=1.0,
                    speedup_vs_straightforward=1.0))
    backends = ["torch"] + (["faiss"] if importlib.util.find_spec("faiss") else [])
    for backend in backends:
        c, t = timed(lambda b=backend: group(feats, labels, ipc, backend=b, seed=0), repeats, feats.device)
        results[backend] = c
        obj = float(c.objective.sum())
        rows.append(row(name, "group", backend, t, objective=obj, objective_ratio=obj / base_obj,
                        speedup_vs_straightforward=statistics.median(t_base) / statistics.median(t),
                        iterations_mean=float(np.mean(c.meta["iterations"]))))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="reduced sizes for a quick check")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None, help="JSON path (default results/grouping[_small].json)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["animal", "synthetic"])
    args = parser.parse_args()
    device = torch.device(args.device)
    repeats = 3 if args.small else 1
    workloads = {
        "animal": (("animal-mnist", 2000, 20) if args.small else ("animal-mnist", 10000, 100)),
        "synthetic": (("synthetic-3x32x32", 5000, 100) if args.small else ("synthetic-3x32x32", 50000, 1000)),
    }
    rows = []
    for key, (label, n, ipc) in workloads.items():
        if key in args.skip:
            continue
        if key == "animal":
            images, labels = load_animal_mnist(n // 10 if n < 10000 else None)
        else:
            images, labels = synthetic_cifar(n)
        name = f"{label} N={n} ipc={ipc}"
        feats, r = bench_extraction(name, images, device, repeats)
        rows += r
        rows += bench_grouping(name, feats, labels, ipc, repeats, 1)
        for x in rows:
            x.setdefault("n", n)
            x.setdefault("ipc", ipc)
    info = machine_info()
    out = Path(args.out or ROOT / "results" / ("grouping_small.json" if args.small else "grouping.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": info, "small": args.small, "rows": rows}, indent=2))
    for x in rows:
        extra = "  ".join(f"{k}={x[k]:.4g}" for k in ("ratio_to_own_forward", "speedup_vs_straightforward",
                                                      "objective_ratio") if k in x)
        print(f"{x['workload']:<34} {x['stage']:<8} {x['impl']:<27} {x['median_s']:9.3f}s  {extra}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
