"""Blend condensation benchmark: batched Blend vs the literal per-cluster loop (SPEC §1.2–1.4).

    python -m benchmarks.bench_condense            # animal-mnist N=10,000 ipc 100; CIFAR-like 50,000 ipc 1000
    python -m benchmarks.bench_condense --small    # quick check at reduced sizes
    python -m benchmarks.bench_condense --only animal-mnist --loop-clusters 200

For each data set (10% uniform forget, 12 iterations) it reports, in ``results/condense[_small].json``:

* ``features`` / ``grouping`` seconds (done once, reported apart from the Blend);
* the batched Blend (``fastblend.condense`` through ``Blender`` round 1): split, targets,
  iterations, total, final and initial matching loss, peak memory (CUDA: allocator peak; CPU: peak
  resident set size sampled during the call, and its growth over the size before the call);
* the **floor** of one iteration: one matcher forward plus input-gradient backward over the K blended
  images (same chunking), best of 3, and ``iteration / floor``;
* the literal per-cluster loop (``fastblend.condense_reference``'s ``blend_clusters_reference``) on
  the first ``--loop-clusters`` free clusters, with the batched Blend run on the same subset (same
  matcher, same lr) so their final losses compare like for like; when the subset is smaller than K
  the loop's full-size time is **extrapolated** linearly in the number of clusters (flagged);
* a cached multi-round round (``Blender(mode="cached")``, a further 1% forget request) against the
  full re-blend of round 1.

Timings are wall clock with the device synchronised; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

import torch

import fastblend
from fastblend._device import synchronize
from fastblend.condense import blend_clusters, blend_lr, default_chunk_size, matcher_seed
from fastblend.condense_reference import blend_clusters_reference
from fastblend.models import random_convnet
from fastblend.pipeline import machine_info

RESULTS = Path(__file__).resolve().parent.parent / "results"


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakMemory:
    """Peak memory during a block: CUDA allocator peak, or sampled resident set size on CPU."""

    def __init__(self, device: torch.device, interval: float = 0.01):
        self.device, self.interval = device, interval
        self.peak = self.before = 0
        self._stop = threading.Event()

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.interval)

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device)
        else:
            self.before = self.peak = _rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _rss_bytes())

    def as_dict(self) -> dict:
        kind = "cuda_allocated" if self.device.type == "cuda" else "cpu_rss"
        return {"kind": kind, "peak_gb": self.peak / 2**30, "growth_gb": (self.peak - self.before) / 2**30}


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
def animal_mnist(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All of animal-mnist (train + held-out part = 10,000 1x28x28 images), or a class-balanced prefix."""
    train, test = fastblend.load_dataset("animal-mnist")
    images, labels = torch.cat([train.images, test.images]), torch.cat([train.labels, test.labels])
    if n < labels.numel():
        per_class = n // 10
        keep = torch.cat([torch.nonzero(labels == c).flatten()[:per_class] for c in range(10)])
        images, labels = images[keep], labels[keep]
    return images.contiguous(), labels


def cifar_like(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic 3x32x32 images, 10 balanced classes: a smooth random template per class and a few
    smooth sub-modes per class, plus pixel noise, standardised per channel."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    templates = torch.nn.functional.interpolate(torch.randn(10, 3, 8, 8, generator=g), size=32, mode="bilinear",
                                                align_corners=False)
    modes = torch.nn.functional.interpolate(torch.randn(10, 16, 3, 4, 4, generator=g).flatten(0, 1), size=32,
                                            mode="bilinear", align_corners=False).reshape(10, 16, 3, 32, 32)
    pick = torch.randint(0, 16, (n,), generator=g)
    images = templates[labels] + 0.7 * modes[labels, pick] + 0.5 * torch.randn(n, 3, 32, 32, generator=g)
    mean, std = images.mean((0, 2, 3), keepdim=True), images.std((0, 2, 3), keepdim=True)
    return ((images - mean) / std).contiguous(), labels


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------
def floor_seconds(matcher, blended: torch.Tensor, chunk: int | None, repeats: int = 3) -> float:
    """One matcher forward + input-gradient backward over the K blended images (best of ``repeats``)."""
    chunk = chunk or default_chunk_size(blended.shape[0], blended.device)
    best = float("inf")
    for _ in range(repeats):
        synchronize(blended.device)
        t0 = time.perf_counter()
        for s in range(0, blended.shape[0], chunk):
            xc = blended[s : s + chunk].detach().requires_grad_(True)
            torch.autograd.grad(matcher.embed(xc).flatten(1).pow(2).sum(), xc)
        synchronize(blended.device)
        best = min(best, time.perf_counter() - t0)
    return best


def subset_layout(reduced, images: torch.Tensor, clusters: int, device: torch.device, dtype: torch.dtype):
    """Member images (CSR) and indptr of the first ``clusters`` blended clusters of ``reduced``."""
    end = int(reduced.blend_indptr[clusters])
    x = images[reduced.blend_members[:end]].to(device=device, dtype=dtype)
    return x, reduced.blend_indptr[: clusters + 1].to(device)


def run_case(name: str, images: torch.Tensor, labels: torch.Tensor, ipc: int, *, iterations: int,
             chunk_size: int | None, loop_clusters: int, device: torch.device, seed: int = 0) -> dict:
    row: dict = {"dataset": name, "n": int(labels.numel()), "shape": list(images.shape[1:]), "ipc": ipc,
                 "iterations": iterations, "chunk_size": chunk_size, "device": str(device), **machine_info()}
    print(f"[{name}] N={labels.numel()} ipc={ipc} on {device}", flush=True)

    synchronize(device)
    t0 = time.perf_counter()
    feats = fastblend.extract_features(images, device=device, seed=seed, progress=False)
    synchronize(device)
    t1 = time.perf_counter()
    clustering = fastblend.group(feats, labels, ipc, seed=seed)
    t2 = time.perf_counter()
    del feats
    row.update(features_s=t1 - t0, grouping_s=t2 - t1, grouping_backend=clustering.backend)
    print(f"  features {t1 - t0:.2f}s  grouping {t2 - t1:.2f}s ({clustering.backend})", flush=True)

    g = torch.Generator().manual_seed(seed + 1)
    order = torch.randperm(labels.numel(), generator=g)
    n_forget = labels.numel() // 10
    forget, extra = order[:n_forget], order[n_forget : n_forget + max(1, labels.numel() // 100)]

    blender = fastblend.Blender(images, labels, clustering=clustering, mode="cached", iterations=iterations,
                                seed=seed, device=device, chunk_size=chunk_size, progress=False)
    with PeakMemory(device) as mem:
        reduced = blender.forget(forget)
    t = reduced.timings
    k = reduced.num_blended
    per_iter = t["blend_iterations"] / max(iterations, 1)
    row["batched"] = {
        "free_clusters": k, "residual_rows": reduced.num_residual, "blend_members": int(reduced.blend_members.numel()),
        "compression": reduced.compression, "split_s": t["split"], "targets_s": t["blend_targets"],
        "iterations_s": t["blend_iterations"], "final_s": t["blend_final"], "blend_s": t["blend"],
        "per_iteration_s": per_iter, "initial_loss": reduced.initial_loss, "final_loss": reduced.final_loss,
        "peak_memory": mem.as_dict(),
    }
    print(f"  batched: K={k} blend {t['blend']:.2f}s (targets {t['blend_targets']:.2f}s, "
          f"{per_iter:.3f}s/iter) loss {reduced.initial_loss:.4g} -> {reduced.final_loss:.4g}, "
          f"peak {mem.as_dict()['peak_gb']:.2f} GB", flush=True)

    matcher = random_convnet(images.shape[1], images.shape[2], seed=matcher_seed(seed), device=device)
    blends = reduced.images[reduced.is_blended].to(device)
    floor = floor_seconds(matcher, blends, chunk_size)
    row["floor"] = {"per_iteration_s": floor, "iteration_over_floor": per_iter / floor}
    print(f"  floor {floor:.3f}s/iter  -> iteration/floor = {per_iter / floor:.3f}", flush=True)

    # literal loop vs batched on the same subset of clusters (same matcher, lr, K)
    s = min(loop_clusters, k)
    lr = blend_lr(ipc)
    x, indptr = subset_layout(reduced, images, s, device, torch.float32)
    loop = blend_clusters_reference(x, indptr.cpu(), matcher, lr=lr, iterations=iterations)
    sub = blend_clusters(x, indptr, matcher, lr=lr, iterations=iterations, chunk_size=chunk_size)
    loop_total = loop.seconds_targets + loop.seconds_iterations + loop.seconds_final
    sub_total = sub.seconds_targets + sub.seconds_iterations + sub.seconds_final
    scale = k / s
    loop_full = loop_total * scale
    loop_iter_full = loop.seconds_iterations / max(iterations, 1) * scale
    row["loop"] = {
        "subset_clusters": s, "extrapolated": s < k, "subset_s": loop_total,
        "subset_per_iteration_s": loop.seconds_iterations / max(iterations, 1),
        "full_blend_s": loop_full, "full_per_iteration_s": loop_iter_full,
        "subset_final_loss": loop.final_loss, "batched_subset_final_loss": sub.final_loss,
        "batched_subset_s": sub_total,
        "final_loss_rel_diff": abs(sub.final_loss - loop.final_loss) / max(abs(loop.final_loss), 1e-30),
        "speedup_blend": loop_full / t["blend"], "speedup_per_iteration": loop_iter_full / per_iter,
        "speedup_subset": loop_total / sub_total,
    }
    print(f"  loop on {s}/{k} clusters: {loop_total:.2f}s (batched {sub_total:.2f}s) -> full loop "
          f"{'~' if s < k else ''}{loop_full:.1f}s, speed-up {loop_full / t['blend']:.2f}x blend, "
          f"{loop_iter_full / per_iter:.2f}x per iteration; subset loss loop {loop.final_loss:.5g} "
          f"batched {sub.final_loss:.5g}", flush=True)

    synchronize(device)
    t0 = time.perf_counter()
    round2 = blender.forget(extra)
    synchronize(device)
    cached_s = time.perf_counter() - t0
    row["cached_round"] = {"extra_forget": int(extra.numel()), "seconds": cached_s,
                           "free_clusters": round2.num_blended, "full_reblend_s": t["split"] + t["blend"],
                           "fraction_of_full": cached_s / (t["split"] + t["blend"])}
    print(f"  cached round (+{extra.numel()} forgotten): {cached_s:.3f}s = "
          f"{100 * cached_s / (t['split'] + t['blend']):.2f}% of a full re-blend", flush=True)
    return row


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true", help="reduced sizes for a quick check")
    p.add_argument("--only", choices=["animal-mnist", "cifar-like"], help="run one data set")
    p.add_argument("--iterations", type=int, default=12)
    p.add_argument("--chunk-size", type=int, default=None,
                   help="matcher chunk (default: fastblend's default_chunk_size: all K on CUDA, small on CPU)")
    p.add_argument("--loop-clusters", type=int, default=None,
                   help="clusters the literal loop runs on (default: all when --small, else 100 on CPU)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    chunk = args.chunk_size
    loop_clusters = args.loop_clusters or (10**9 if args.small else (2000 if device.type == "cuda" else 100))
    cases = {"animal-mnist": (lambda: animal_mnist(2000 if args.small else 10_000), 20 if args.small else 100),
             "cifar-like": (lambda: cifar_like(2000 if args.small else 50_000), 40 if args.small else 1000)}
    rows = []
    for name, (load, ipc) in cases.items():
        if args.only and name != args.only:
            continue
        images, labels = load()
        rows.append(run_case(name, images, labels, ipc, iterations=args.iterations, chunk_size=chunk,
                             loop_clusters=loop_clusters, device=device))
    out = args.out or RESULTS / ("condense_small.json" if args.small else "condense.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"small": args.small, "rows": rows}, indent=2))
    print(f"wrote {os.path.relpath(out)}")


if __name__ == "__main__":
    main()
