"""Per-request latency of unlearning: index once, then split + A-AMU on the reduced set, against the
same method (A-AMU) on the full retain set and the plain fine-tune of the full retain set.

    python -m benchmarks.bench_request [--quick] [--out DIR] [--finetune-epochs 10] [--threads N] [--repeats R]

On the demo's data (animal-mnist, the docs/method.md §6 splits, the demo's ipc) and model (ConvNet-3
width 64, trained briefly here), for two requests served by one index — 10% uniform forgetting
(case ``... forget=uniform``) and one whole class (``forget=classwise``) — writes ROWs (the runner's
schema) to ``<out>/request.jsonl``:

* ``index build`` (backend ``index``): :meth:`fastblend.BlendIndex.build` once per training set,
  with its features / grouping / blend seconds in ``metrics``: reported apart from any request;
* ``reduce`` (backend ``index``): :meth:`BlendIndex.reduce` alone, 20 repeats;
* ``request``: one forget request end to end, each with the model's retain / forget / test
  accuracy in ``metrics``:

  - ``index``: ``index.reduce`` + ``unlearn("a_finetune")`` on the reduced set (fastblend);
  - ``condense``: ``condense`` after the request (Blend in the request path) + ``a_finetune``;
  - ``straightforward``: ``a_finetune`` on the full retain set (the same method, no Blend);
  - ``finetune``: plain fine-tune of the full retain set (SGD lr 0.01, momentum 0.9, batch 64,
    ``--finetune-epochs`` epochs, the usual codebase recipe);
  - ``index sgd`` (uniform only): the reduced set with SGD momentum 0.9, batch 256 (lr 0.01) instead
    of A-AMU's Adam 2.4e-4 / batch 64: what another optimiser does to the recipe.

  ``metrics.speedup_vs_*`` on the ``index`` row are ratios of those wall times in this run.

``--repeats`` runs of each request variant, interleaved (variant by variant, round after round) so
that a change in the machine's load hits them alike; the median is recorded. Timings are wall clock
(device synchronised); nothing asserts on them.
"""

from __future__ import annotations

import copy
import time

import torch

import fastblend
from fastblend._device import synchronize
from fastblend.experiments import pipeline
from fastblend.experiments.pipeline import DEMO, default_ipc
from fastblend.models import ConvNet3

from .runner import Recorder, Timing, measure, parser


def _quality(model: torch.nn.Module, split, device: torch.device) -> dict:
    return {name: fastblend.accuracy(model, *tensors(), device=device)
            for name, tensors in (("retain_acc", split.retain_tensors), ("forget_acc", split.forget_tensors),
                                  ("test_acc", split.eval_tensors))}


def _timed(fn, device: torch.device):
    synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--finetune-epochs", type=int, default=10, help="epochs of the plain fine-tune baseline")
    p.add_argument("--train-epochs", type=int, default=3, help="epochs of the briefly trained original model")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--repeats", type=int, default=1, help="interleaved runs of each request variant")
    p.add_argument("--variants", nargs="+", default=None,
                   help="request variants to run (default all): index condense straightforward finetune 'index sgd'")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    per_class = 60 if args.quick else None
    train, test = fastblend.load_dataset("animal-mnist", per_class=per_class)
    cfg = copy.deepcopy(DEMO)
    cfg.per_class = per_class
    ipc = default_ipc(cfg, train)
    base_params = {"n": len(train), "ipc": ipc, "width": 64, "train_epochs": args.train_epochs, "seed": 0,
                   "threads": torch.get_num_threads()}
    rec = Recorder(args.out, "request")

    torch.manual_seed(0)
    model = ConvNet3(train.images.shape[1], train.num_classes, train.images.shape[-1], width=64)
    model = fastblend.train_model(model, (train.images, train.labels), device=device, seed=0,
                                  config={"epochs": 1 if args.quick else args.train_epochs, "lr": 0.05,
                                          "batch_size": 128, "warmup_epochs": 0})
    index, t_build = _timed(lambda: fastblend.BlendIndex.build(train.images, train.labels, ipc=ipc, seed=0,
                                                               device=device), device)
    rec.add("request", f"animal-mnist N={len(train)} ipc={ipc}", "index build", "index", Timing.of([t_build]),
            base_params, {**{f"{k}_s": v for k, v in index.timings.items()}, "blends": index.num_blends})
    for mode in ("uniform", "classwise"):
        split = fastblend.make_split(train, test, forget=mode, forget_fraction=0.1,
                                     forget_class=0 if mode == "classwise" else None, seed=0)
        case = f"animal-mnist N={len(train)} forget={mode} ipc={ipc}"
        params = {**base_params, "forget_mode": mode, "forget": int(split.forget.numel())}
        _requests(rec, case, params, model, train, split, index, t_build, args, device)
    print(f"wrote {rec.path}")


def _requests(rec: Recorder, case: str, params: dict, model: torch.nn.Module, train, split, index, t_build: float,
              args, device: torch.device) -> None:
    """The per-request rows of one forget request (see the module docstring)."""
    original = _quality(model, split, device)
    retain, forget, unseen = split.retain_tensors(), split.forget_tensors(), split.unseen_tensors()
    timing, (reduced, _) = measure(lambda: pipeline.request_reduced(index, split.forget),
                                   repeats=3 if args.quick else 20, device=device)
    rec.add("request", case, "reduce", "index", timing, params,
            {"reduced_size": len(reduced), "retain_size": int(split.retain.numel()),
             "compression": reduced.compression})

    def a_amu(data, config=None):  # the paper's recipe on scattered samples, as its committed rows ran (the default
        # since 2026-12-07 is the difficulty-matched one: three epochs and a set-up, docs/method.md §7.10)
        paper = {"request": "auto" if split.whole_class else "sample"}
        return fastblend.unlearn("a_finetune", model, data, forget, unseen=unseen, device=device, seed=0,
                                 config={**paper, **(config or {})})

    runs = {
        "index": lambda: a_amu(pipeline.request_reduced(index, split.forget)[0]),
        "condense": lambda: a_amu(fastblend.condense(train.images, train.labels, split.forget,
                                                     clustering=index.clustering, seed=0, device=device,
                                                     progress=False)),
        "straightforward": lambda: a_amu(retain),
        "finetune": lambda: fastblend.unlearn("finetune", model, retain, forget, device=device, seed=0,
                                              config={"epochs": 1 if args.quick else args.finetune_epochs,
                                                      "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4,
                                                      "batch_size": 64, "schedule": "constant",
                                                      "warmup_epochs": 0}),
    }
    if "uniform" in case:
        runs["index sgd"] = lambda: a_amu(pipeline.request_reduced(index, split.forget)[0],
                                          {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "batch_size": 256})
    runs = {name: run for name, run in runs.items() if args.variants is None or name in args.variants}
    times: dict[str, list[float]] = {name: [] for name in runs}
    results = {}
    for _ in range(max(1, args.repeats)):
        for name, run in runs.items():
            results[name], t = _timed(run, device)
            times[name].append(t)
    seconds, rows = {}, {}
    for name, res in results.items():
        timing = Timing.of(times[name])
        seconds[name] = timing.median_s
        rows[name] = ({"steps": res.steps, "retain_rows": res.info["retain_size"], **_quality(res.model, split, device),
                       "original": original}, timing)
    ratios = {}
    if "index" in seconds:
        ratios = {f"speedup_vs_{k.replace(' ', '_')}": seconds[k] / seconds["index"] for k in seconds if k != "index"}
        if "straightforward" in seconds:
            ratios["speedup_vs_straightforward_with_index_build"] = (seconds["straightforward"]
                                                                     / (seconds["index"] + t_build))
    for name, (metrics, timing) in rows.items():
        rec.add("request", case, "request", name, timing, params, {**metrics, **(ratios if name == "index" else {})})


if __name__ == "__main__":
    main()
