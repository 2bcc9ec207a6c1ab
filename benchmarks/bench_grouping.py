"""Grouping: feature extraction and per-class k-means, timed separately.

    python -m benchmarks.bench_grouping [--quick] [--out DIR] [--only animal|synthetic]

Workloads: real animal-mnist (1x28x28, N = 10,000, ipc 100) and CIFAR-like synthetic 3x32x32
images (N = 50,000, ipc 1000, 2048-d features: the issue's large size; the straightforward baseline
takes minutes). --quick: N = 500, ipc 5 and one run of each.

* ``extract``: ``fastblend.extract_features`` vs the extractor's own batched forward (the same
  channels-last random ConvNet-3, ``embed`` over batches of 512 in inference mode, then
  ``torch.cat``), and vs the same forward in the default contiguous layout.
* ``group``: ``fastblend.group`` with the torch and faiss backends vs a straightforward per-class
  k-means with a Python loop over clusters (``benchmarks/kmeans_baseline.py``), each with the k-means
  objective (float64 within-cluster sum of squares) and its ratio to the baseline's.

Writes ``<out>/grouping.jsonl`` (the runner's ROW schema).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import torch

from fastblend import extract_features, group, load_dataset
from fastblend.kmeans import cluster_objective
from fastblend.models import random_convnet

from .kmeans_baseline import straightforward_group
from .runner import Recorder, measure, parser


def load_animal_mnist(limit_per_class: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The real animal-mnist images (fastblend.datasets): the first ``limit_per_class`` training images
    of each class, or all 10,000 (train and test splits together)."""
    train, test = load_dataset("animal-mnist", per_class=limit_per_class)
    if limit_per_class is not None:
        return train.images, train.labels
    return torch.cat([train.images, test.images]), torch.cat([train.labels, test.labels])


def synthetic_cifar(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % 10


def bench_extraction(rec: Recorder, case: str, params: dict, images: torch.Tensor, device: torch.device,
                     repeats: int, batch_size: int = 512) -> torch.Tensor:
    channels, size = images.shape[1], images.shape[-1]
    images = images.to(device)
    net_cl = random_convnet(channels, size, 0, device=device).to(memory_format=torch.channels_last)
    net = random_convnet(channels, size, 0, device=device)

    def own_forward(model, memory_format):
        with torch.inference_mode():
            return torch.cat([model.embed(images[s:s + batch_size].contiguous(memory_format=memory_format))
                              for s in range(0, images.shape[0], batch_size)])

    timing, feats = measure(lambda: extract_features(images, batch_size=batch_size, seed=0, progress=False),
                            repeats=repeats, warmup=0, device=device)
    rec.add("grouping", case, "extract", "extract_features", timing, params)
    for backend, model, memory_format in (("own_forward channels_last", net_cl, torch.channels_last),
                                          ("own_forward contiguous", net, torch.contiguous_format)):
        timing, _ = measure(lambda m=model, f=memory_format: own_forward(m, f), repeats=repeats, warmup=0,
                            device=device)
        rec.add("grouping", case, "extract", backend, timing, params)
    return feats


def bench_group(rec: Recorder, case: str, params: dict, feats: torch.Tensor, labels: torch.Tensor, ipc: int,
                repeats: int) -> None:
    num_classes = int(labels.max()) + 1

    def objective(assignment):
        return float(cluster_objective(feats, labels, assignment, num_classes, num_classes * ipc).sum())

    timing, assignment = measure(lambda: straightforward_group(feats, labels, ipc, seed=0), repeats=1, warmup=0)
    base_objective = objective(assignment)
    rec.add("grouping", case, "group", "straightforward", timing, params, {"objective": base_objective})
    for backend in ["torch"] + (["faiss"] if importlib.util.find_spec("faiss") else []):
        timing, c = measure(lambda b=backend: group(feats, labels, ipc, backend=b, seed=0), repeats=repeats,
                            warmup=0, device=feats.device)
        obj = float(c.objective.sum())
        rec.add("grouping", case, "group", backend, timing, params,
                {"objective": obj, "objective_ratio": obj / base_objective,
                 "iterations_mean": float(np.mean(c.meta["iterations"]))})


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--only", choices=["animal", "synthetic"], help="run one workload")
    args = p.parse_args(argv)
    repeats = 1  # the full sizes take minutes per run; --quick only checks the benchmark runs
    workloads = {"animal": ("animal-mnist", 500 if args.quick else 10_000, 5 if args.quick else 100),
                 "synthetic": ("synthetic-3x32x32", 500 if args.quick else 50_000, 5 if args.quick else 1000)}
    rec = Recorder(args.out, "grouping")
    for key, (label, n, ipc) in workloads.items():
        if args.only and key != args.only:
            continue
        if key == "animal":
            images, labels = load_animal_mnist(n // 10 if n < 10_000 else None)
        else:
            images, labels = synthetic_cifar(n)
        case, params = f"{label} N={n} ipc={ipc}", {"dataset": label, "N": n, "ipc": ipc}
        feats = bench_extraction(rec, case, params, images, args.device, repeats)
        bench_group(rec, case, params, feats, labels, ipc, repeats)
    print(f"wrote {rec.path}")


if __name__ == "__main__":
    main()
