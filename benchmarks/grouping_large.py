"""Grouping at the issue's large size, once: N = 50,000 CIFAR-like 3x32x32 images, ipc 1000.

    .venv/bin/python -m benchmarks.grouping_large [--out results/grouping_large.json]

One extraction (the default random ConvNet-3, 2048-d features), then ``fastblend.group`` with the
faiss and torch backends and the straightforward per-class k-means with a Python loop over clusters
(``benchmarks/kmeans_baseline.py``), each run once (the baseline takes minutes). Reports seconds,
the k-means objective and the speed-up over the baseline. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks.kmeans_baseline import straightforward_group
from fastblend import extract_features, group
from fastblend.grouping import _objective


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--ipc", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("results/grouping_large.json"))
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.n, 3, 32, 32, generator=g)
    y = torch.arange(args.n) % 10
    t = time.perf_counter()
    f = extract_features(x, progress=False)
    rows: dict = {"n": args.n, "ipc": args.ipc, "features_s": time.perf_counter() - t,
                  "torch": torch.__version__, "threads": torch.get_num_threads()}
    for backend in ("faiss", "torch"):
        t = time.perf_counter()
        c = group(f, y, args.ipc, backend=backend, seed=0)
        rows[backend] = {"seconds": time.perf_counter() - t, "objective": float(c.objective.sum())}
        print(backend, rows[backend], flush=True)
    t = time.perf_counter()
    assignment = straightforward_group(f, y, args.ipc, seed=0)
    seconds = time.perf_counter() - t
    objective = float(_objective(f, y, assignment, 10, 10 * args.ipc).sum())
    rows["straightforward"] = {"seconds": seconds, "objective": objective}
    for backend in ("faiss", "torch"):
        rows[backend]["speedup"] = seconds / rows[backend]["seconds"]
        rows[backend]["objective_ratio"] = rows[backend]["objective"] / objective
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
