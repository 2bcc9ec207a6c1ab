"""One process against P processes (torch.distributed, gloo on CPU): the index build and an A-AMU request.

    python -m benchmarks.bench_distributed [--quick] [--out DIR] [--limit N]

Each case is a fresh ``python -m torch.distributed.run --standalone --nproc_per_node=P`` launch with
``T`` torch threads per process, on the demo's data (animal-mnist, ``pipeline.DEMO``'s ipc and seed):
``P1xT1`` (one process, one thread: the baseline), ``P1xT2`` (one process using both cores through
torch's threads) and ``P2xT1`` (two ranks, one thread each: the work split by fastblend). In each
launch every rank times, after a barrier: ``features`` (``extract_features``, rows split over the
ranks), ``grouping`` (``group``, classes split), ``blend`` (``BlendIndex.build`` on that clustering,
clusters split) and ``unlearn`` (``a_finetune`` on the request's reduced set for a uniform 10% forget
request, the model under DDP when P > 1; its final forget and test accuracy are recorded so the
speed-up is read at equal quality). A case's time is the slowest rank's. Rows go to
``<out>/distributed.jsonl``; speed-ups are against ``P1xT1`` of the same run. Timings only, no
asserts. ``--quick``: 1,000 images.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from .runner import Recorder, Timing, parser

CASES = {"P1xT1": (1, 1), "P1xT2": (1, 2), "P2xT1": (2, 1)}


def _child(limit: int | None) -> None:
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("gloo")
    from fastblend import BlendIndex, distributed, extract_features, group
    from fastblend.datasets import load_dataset, make_split
    from fastblend.experiments import pipeline
    from fastblend.methods import unlearn
    from fastblend.metrics import accuracy

    cfg = pipeline.with_overrides(pipeline.DEMO, limit=limit, quiet=True)
    train, test = load_dataset(cfg.dataset, limit=cfg.limit)
    split = make_split(train, test, forget="uniform", forget_fraction=0.1, seed=0)
    ipc = pipeline.default_ipc(cfg, train)
    times = {}

    def timed(name, fn):
        distributed.barrier()
        t0 = time.perf_counter()
        out = fn()
        distributed.barrier()
        times[name] = time.perf_counter() - t0
        return out

    feats = timed("features", lambda: extract_features(train.images, seed=0))
    clustering = timed("grouping", lambda: group(feats, train.labels, ipc, seed=0, num_classes=train.num_classes))
    index = timed("blend", lambda: BlendIndex.build(train.images, train.labels, clustering=clustering, seed=0))
    reduced, _ = pipeline.request_reduced(index, split.forget)
    # the demo's converged original model (the cache the demo fills; trained here otherwise, every rank)
    model, _, _ = pipeline.original_model(cfg, train.images, train.labels, train.num_classes, 0,
                                          torch.device("cpu"), progress=False)
    res = timed("unlearn", lambda: unlearn("a_finetune", model, reduced, split.forget_tensors(),  # the paper's recipe,
                                           unseen=split.unseen_tensors(), seed=0, config={"request": "sample"}))
    quality = {"forget_acc": accuracy(res.model, *split.forget_tensors()),
               "test_acc": accuracy(res.model, *split.eval_tensors())}
    per_rank = distributed.all_gather_objects(times)
    if distributed.is_main_process():
        print(json.dumps({"per_rank": per_rank, "quality": quality, "n": len(train), "ipc": ipc}), flush=True)
    if dist.is_initialized():
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, help="a seeded stratified subset of animal-mnist's training set")
    p.add_argument("--child", action="store_true", help="internal: one launch's rank")
    args = p.parse_args(argv)
    limit = args.limit if args.limit is not None else (1000 if args.quick else None)
    if args.child:
        _child(limit)
        return 0
    rec = Recorder(args.out, "distributed")
    results = {}
    for name, (procs, threads) in CASES.items():
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
               "-m", "benchmarks.bench_distributed", "--child"] + (["--limit", str(limit)] if limit else [])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
        results[name] = json.loads(out.strip().splitlines()[-1])
    base = {stage: max(r[stage] for r in results["P1xT1"]["per_rank"]) for stage in results["P1xT1"]["per_rank"][0]}
    for name, doc in results.items():
        procs, threads = CASES[name]
        for stage in doc["per_rank"][0]:
            slowest = max(r[stage] for r in doc["per_rank"])
            rec.add("distributed", f"animal-mnist N={doc['n']}", stage, name, Timing.of([slowest]),
                    {"processes": procs, "threads": threads, "N": doc["n"], "ipc": doc["ipc"]},
                    {"speedup_vs_P1xT1": base[stage] / slowest, "per_rank_seconds": [r[stage] for r in doc["per_rank"]],
                     **({"final_" + k: v for k, v in doc["quality"].items()} if stage == "unlearn" else {})})
            print(f"{name:6} {stage:9} {slowest:7.2f}s  x{base[stage] / slowest:4.2f}"
                  + (f"  forget {doc['quality']['forget_acc']:.1f} test {doc['quality']['test_acc']:.1f}"
                     if stage == "unlearn" else ""), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
