"""Blend condensation: batched Blend vs the literal per-cluster loop (docs/method.md §1.2-1.4).

    python -m benchmarks.bench_condense [--quick] [--out DIR]   # animal-mnist N=10,000 ipc 100;
                                                                # CIFAR-like N=50,000 ipc 1000
    python -m benchmarks.bench_condense --only animal-mnist --loop-clusters 200

For each data set (10% uniform forget, 12 iterations; --quick: N = 500, ipc 5, 2 iterations,
the loop on 20 clusters) it
writes ROWs (the runner's schema) to ``<out>/condense.jsonl``, with case ``<data set> N=.. ipc=..``:

* ``features`` / ``grouping``: done once, reported apart from the Blend;
* ``blend``, backend ``batched``: ``fastblend.BlendIndex.build`` (every non-empty cluster blended
  once), with the first request's split, targets, iterations and final seconds, initial and final
  matching loss and peak memory (CUDA: allocator peak; CPU: resident set sampled every 10 ms) in ``metrics``;
* ``blend`` and ``iteration``, backend ``loop``: the literal per-cluster loop
  (``fastblend.condensation.reference``'s ``blend_clusters_reference``) timed on the first
  ``--loop-clusters`` blended clusters; when that is fewer than all K its full-size time is
  **extrapolated** linearly in the number of clusters (``params.extrapolated_from_clusters``);
* ``blend subset``: the loop and the batched Blend on that same subset (same matcher, same lr), so
  their final losses compare like for like;
* ``iteration``, backend ``floor``: one matcher forward plus input-gradient backward over the K
  blended images (same chunking), 3 runs; the batched row's ``metrics.iteration_over_floor``;
* ``cached round``: a second multi-round round (the cumulative request, a further 1% forgotten, to
  the same index) against the full Blend of the index.

One run of each except the floor; timings are wall clock with the device synchronised.
"""

from __future__ import annotations

import torch

import fastblend
from fastblend.condensation import blend_clusters, blend_lr, default_chunk_size, matcher_seed
from fastblend.condensation.reference import blend_clusters_reference
from fastblend.models import random_convnet

from .runner import PeakMemory, Recorder, Timing, measure, parser


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
def floor_step(matcher, blended: torch.Tensor, chunk: int | None) -> None:
    """One matcher forward + input-gradient backward over the K blended images."""
    chunk = chunk or default_chunk_size(blended.shape[0], blended.device)
    for s in range(0, blended.shape[0], chunk):
        xc = blended[s : s + chunk].detach().requires_grad_(True)
        torch.autograd.grad(matcher.embed(xc).flatten(1).pow(2).sum(), xc)


def subset_layout(reduced, images: torch.Tensor, clusters: int, device: torch.device, dtype: torch.dtype):
    """Member images (CSR) and indptr of the first ``clusters`` blended clusters of ``reduced``."""
    end = int(reduced.blend_indptr[clusters])
    x = images[reduced.blend_members[:end]].to(device=device, dtype=dtype)
    return x, reduced.blend_indptr[: clusters + 1].to(device)


def run_case(rec: Recorder, name: str, images: torch.Tensor, labels: torch.Tensor, ipc: int, *, iterations: int,
             chunk_size: int | None, loop_clusters: int, device: torch.device, seed: int = 0) -> None:
    n = int(labels.numel())
    case = f"{name} N={n} ipc={ipc}"
    params = {"dataset": name, "N": n, "shape": list(images.shape[1:]), "ipc": ipc, "iterations": iterations,
              "chunk_size": chunk_size}

    timing, feats = measure(lambda: fastblend.extract_features(images, device=device, seed=seed, progress=False),
                            repeats=1, warmup=0, device=device)
    rec.add("condense", case, "features", "extract_features", timing, params)
    timing, clustering = measure(lambda f=feats: fastblend.group(f, labels, ipc, seed=seed), repeats=1, warmup=0)
    rec.add("condense", case, "grouping", clustering.backend, timing, params)
    del feats

    g = torch.Generator().manual_seed(seed + 1)
    order = torch.randperm(n, generator=g)
    n_forget = n // 10
    forget, extra = order[:n_forget], order[n_forget : n_forget + max(1, n // 100)]

    with PeakMemory(device, interval=0.01) as mem:
        index = fastblend.BlendIndex.build(images, labels, clustering=clustering, iterations=iterations, seed=seed,
                                           device=device, chunk_size=chunk_size, progress=False)
    reduced = index.reduce(forget)
    t = {**index.timings, "split": reduced.timings["split"]}
    k = index.num_blends
    per_iter = t["blend_iterations"] / max(iterations, 1)
    matcher = random_convnet(images.shape[1], images.shape[2], seed=matcher_seed(seed), device=device)
    blends = index.blends[clustering.sizes.to(index.blends.device) > 0].to(device)
    floor, _ = measure(lambda: floor_step(matcher, blends, chunk_size), repeats=3, warmup=0, device=device)
    rec.add("condense", case, "blend", "batched", Timing.of([t["blend"]]), params, {
        "free_clusters": k, "residual_rows": reduced.num_residual, "blend_members": int(reduced.blend_members.numel()),
        "compression": reduced.compression, "split_s": t["split"], "targets_s": t["blend_targets"],
        "iterations_s": t["blend_iterations"], "final_s": t["blend_final"], "initial_loss": reduced.initial_loss,
        "final_loss": reduced.final_loss, **mem.metrics()})
    rec.add("condense", case, "iteration", "batched", Timing.of([per_iter]), params,
            {"iteration_over_floor": per_iter / floor.median_s})
    rec.add("condense", case, "iteration", "floor", floor, params)

    # literal loop vs batched on the same subset of clusters (same matcher, lr, K)
    s = min(loop_clusters, k)
    lr = blend_lr(ipc)
    x, indptr = subset_layout(index.reduce([]), images, s, device, torch.float32)  # every blended cluster
    loop = blend_clusters_reference(x, indptr.cpu(), matcher, lr=lr, iterations=iterations)
    sub = blend_clusters(x, indptr, matcher, lr=lr, iterations=iterations, chunk_size=chunk_size)
    loop_total = loop.seconds_targets + loop.seconds_iterations + loop.seconds_final
    sub_total = sub.seconds_targets + sub.seconds_iterations + sub.seconds_final
    subset = {**params, "subset_clusters": s}
    rec.add("condense", case, "blend subset", "loop", Timing.of([loop_total]), subset,
            {"final_loss": loop.final_loss})
    rec.add("condense", case, "blend subset", "batched", Timing.of([sub_total]), subset, {
        "final_loss": sub.final_loss,
        "final_loss_rel_diff": abs(sub.final_loss - loop.final_loss) / max(abs(loop.final_loss), 1e-30)})
    scale = k / s
    full = {**params, **({"extrapolated_from_clusters": s} if s < k else {})}
    rec.add("condense", case, "blend", "loop", Timing.of([loop_total * scale]), full)
    rec.add("condense", case, "iteration", "loop", Timing.of([loop.seconds_iterations / max(iterations, 1) * scale]),
            full)

    cumulative = torch.cat([forget, extra])
    cached, round2 = measure(lambda: index.reduce(cumulative), repeats=1, warmup=0, device=device)
    full_reblend = t["split"] + t["blend"]
    rec.add("condense", case, "cached round", "cached", cached, {**params, "extra_forget": int(extra.numel())},
            {"free_clusters": round2.num_blended, "full_reblend_s": full_reblend,
             "fraction_of_full": cached.median_s / full_reblend})


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=["animal-mnist", "cifar-like"], help="run one data set")
    p.add_argument("--iterations", type=int, default=None, help="Blend iterations (default 12; --quick: 2)")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="matcher chunk (default: fastblend's default_chunk_size: all K on CUDA, small on CPU)")
    p.add_argument("--loop-clusters", type=int, default=None,
                   help="clusters the literal loop runs on (default: 20 with --quick, 100 on CPU, 2000 on CUDA)")
    args = p.parse_args(argv)
    device = args.device
    iterations = args.iterations or (2 if args.quick else 12)
    loop_clusters = args.loop_clusters or (20 if args.quick else (2000 if device.type == "cuda" else 100))
    cases = {"animal-mnist": (lambda: animal_mnist(500 if args.quick else 10_000), 5 if args.quick else 100),
             "cifar-like": (lambda: cifar_like(500 if args.quick else 50_000), 5 if args.quick else 1000)}
    rec = Recorder(args.out, "condense")
    for name, (load, ipc) in cases.items():
        if args.only and name != args.only:
            continue
        images, labels = load()
        run_case(rec, name, images, labels, ipc, iterations=iterations, chunk_size=args.chunk_size,
                 loop_clusters=loop_clusters, device=device)
    print(f"wrote {rec.path}")


if __name__ == "__main__":
    main()
