"""Time to Retrain's band for A-AMU step settings and Blend settings, on the demo's data and model.

    python -m benchmarks.bench_time_to_target [--forget uniform|classwise|hard] [--only profile ...]
        [--variants paper f2 ...] [--blend-variants ...] [--retrain-seeds S] [--band seeds|fixed] [--out FILE]

On the yardstick of docs/method.md §4.1-§4.4: Retrain's band comes from a seed ensemble of ``S``
models (the run's own, timed Retrain and ``S − 1`` cached members); the untouched original is a
row (``original``: the do-nothing control, with its distance to the band and the easy/hard label);
every variant's finals carry the MIA's interval and KLOM percentiles against the ensemble (the
``retrain`` row's KLOM is the noise floor).

One process, one machine, one run: the demo's converged original model (``pipeline.DEMO``, from
the cache or trained), Retrain with the same recipe (its curve and final values define the band),
then a :class:`fastblend.BlendIndex` built once (timed apart: the one-time cost) and per A-AMU
setting one ``a_finetune`` run on the request's reduced retain set with a
:class:`fastblend.tracking.Tracker`. Every setting's time to target (the request's index lookup plus
the unlearning seconds to the band, evaluations excluded) is divided into Retrain's in the same run,
so the ratios hold on a shared machine even when absolute seconds drift; final quality is beside.

``profile`` times the parts of one A-AMU step (retain forward+backward of B, forget
forward+backward of ``4B``, unseen forward of ``4B``, the loss) on the demo's model; blend variants
build the index with another matcher width / iteration count / the grouping network as matcher
(``shared``) and unlearn with the paper's A-AMU settings: index seconds and downstream quality.
Nothing here asserts on a timing.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fastblend import BlendIndex, extract_features, group
from fastblend.aamu import AAMULoss
from fastblend.datasets import load_dataset, make_split
from fastblend.experiments import pipeline
from fastblend.experiments.machine import load_average, machine_info
from fastblend.methods import planned_steps, unlearn
from fastblend.tracking import Tracker, eval_every_for, time_to_target

#: A-AMU step settings against the paper's (docs/method.md §2.4: forget and unseen batches of 4B, a
#: new unseen batch every step, separate forwards)
STEP_VARIANTS = {
    "paper": {},
    "fuse": {"fuse_forward": True},
    "f2": {"forget_batch_factor": 2},
    "u2": {"unseen_batch_factor": 2},
    "f2u2": {"forget_batch_factor": 2, "unseen_batch_factor": 2},
    "f1u1": {"forget_batch_factor": 1, "unseen_batch_factor": 1},
    "refresh4": {"unseen_refresh": 4},
    "f2_refresh4_fuse": {"forget_batch_factor": 2, "unseen_refresh": 4, "fuse_forward": True},
}
#: Blend settings against the paper's (a width-128 random ConvNet-3 matcher, 12 iterations, a matcher
#: independent of the grouping network): each builds its own index (the one-time cost) and answers the
#: request with the paper's A-AMU settings
BLEND_VARIANTS = {"iter6": {"iterations": 6}, "iter3": {"iterations": 3}, "width64": {"width": 64},
                  "width32": {"width": 32}, "shared": {"shared": True},
                  "fast": {"width": 64, "iterations": 3}}  # pipeline.BLEND_PRESETS["fast"]


def blend_matcher(images: torch.Tensor, seed: int, width: int = 128, shared: bool = False) -> torch.nn.Module | None:
    """The Blend matcher of a variant: ``None`` for the default (``random_convnet`` seeded with
    ``matcher_seed(seed)``); ``shared``: the grouping network itself (``random_convnet(C, H, seed)``, the
    network ``condense(share_network=True)`` reuses); else a random ConvNet-3 of ``width`` channels."""
    from fastblend.condensation import matcher_seed
    from fastblend.models import random_convnet

    c, h = images.shape[1], images.shape[2]
    if shared:
        return random_convnet(c, h, seed)
    if width == 128:
        return None
    return random_convnet(c, h, matcher_seed(seed), width=width)  # the pipeline's blend_matcher


def build_index(train, ipc: int, seed: int, iterations: int = 12, width: int = 128, shared: bool = False):
    """``(BlendIndex, seconds)``: features, grouping and a blend of every cluster, timed (once per training set)."""
    t0 = time.perf_counter()
    feats = extract_features(train.images, seed=seed)
    clustering = group(feats, train.labels, ipc, seed=seed, num_classes=train.num_classes)
    index = BlendIndex.build(train.images, train.labels, clustering=clustering, iterations=iterations, seed=seed,
                             matcher=blend_matcher(train.images, seed, width, shared))
    return index, time.perf_counter() - t0


def profile_step(model: torch.nn.Module, retain, forget, unseen, batch: int = 64, repeats: int = 20) -> dict:
    """Median seconds of each part of one A-AMU step on ``model`` (CPU, float32)."""
    model = copy.deepcopy(model).train()
    loss_fn = AAMULoss()
    xr, yr = retain[0][:batch], retain[1][:batch]
    xf, yf = forget[0][:4 * batch], forget[1][:4 * batch]
    xu, yu = unseen[0][:4 * batch], unseen[1][:4 * batch]

    def fwd_bwd(x, y):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    def unseen_fwd():
        with torch.inference_mode():
            model(xu)

    def whole():
        model.zero_grad(set_to_none=True)
        lr_, lf = model(xr), model(xf)
        with torch.inference_mode():
            lu = model(xu)
        lu = lu.clone()  # a normal tensor, usable as a constant in autograd
        loss_fn(F.cross_entropy(lr_, yr, reduction="none"), lf, yf, lu, yu).total.backward()

    parts = {"retain_fwd_bwd": lambda: fwd_bwd(xr, yr), "forget_fwd_bwd": lambda: fwd_bwd(xf, yf),
             "unseen_fwd": unseen_fwd, "whole_step": whole, "plain_step": lambda: fwd_bwd(xr, yr)}
    out = {}
    for name, fn in parts.items():
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times)
    out["shares"] = {k: out[k] / out["whole_step"] for k in ("retain_fwd_bwd", "forget_fwd_bwd", "unseen_fwd")}
    out["whole_over_plain"] = out["whole_step"] / out["plain_step"]
    return out


def tracked(method, model, retain, forget, unseen, config, split, seed, evaluations, offset=0.0, heldout=None,
            mia="auc"):
    tracker = Tracker(split.forget_tensors(), split.eval_tensors(), seed=seed, offset=offset, heldout=heldout, mia=mia,
                      mia_samples=None if heldout is not None else "max_samples")
    if method.startswith("a_") and not split.whole_class:  # its variants are the paper's recipe's, as they ran
        config = {"request": "sample", **(config or {})}  # before the matched recipe became the default (2026-12-07)
    every = eval_every_for(planned_steps(method, config or None, len(retain[1]) if isinstance(retain, tuple)
                                         else len(retain), whole_class=split.whole_class), evaluations)
    res = unlearn(method, model, retain, forget, unseen=unseen, config=config or None, seed=seed, callback=tracker,
                  eval_every=every)
    return res, tracker


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--forget", default="uniform", choices=["uniform", "classwise", "hard"])
    p.add_argument("--forget-fraction", type=float, default=0.1)
    p.add_argument("--hard-pool", type=int, default=4)
    p.add_argument("--retrain-seeds", type=int, default=3, help="models in Retrain's seed ensemble (the band)")
    p.add_argument("--band", default="seeds", choices=["seeds", "fixed"])
    p.add_argument("--variants", nargs="+", default=list(STEP_VARIANTS))
    p.add_argument("--blend-variants", nargs="*", default=list(BLEND_VARIANTS))
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--evaluations", type=int, default=30)
    p.add_argument("--limit", type=int, help="a seeded stratified subset of the training set (ExperimentConfig.limit)")
    p.add_argument("--out", help="JSON file (default benchmarks/results-2026-11-26-cpu/time_to_target_<forget>.json)")
    args = p.parse_args(argv)

    cfg = pipeline.with_overrides(pipeline.DEMO, forget=args.forget, limit=args.limit, quiet=True,
                                  forget_fraction=args.forget_fraction, hard_pool=args.hard_pool,
                                  retrain_seeds=args.retrain_seeds, band_kind=args.band)
    cfg.check()
    seed, device = 0, torch.device("cpu")
    train, test = load_dataset(cfg.dataset, limit=cfg.limit)
    hard = None
    if cfg.forget == "hard":
        split, hard = pipeline.hard_split(cfg, train, test, seed, device, False, print)
    else:
        split = make_split(train, test, forget=cfg.forget, forget_fraction=cfg.forget_fraction, seed=seed)
    retain, forget, unseen = split.retain_tensors(), split.forget_tensors(), split.unseen_tensors()
    model, train_s, cached = pipeline.original_model(cfg, train.images, train.labels, train.num_classes, seed,
                                                     device, progress=False)
    heldout = pipeline.heldout_tensors(split)
    klom_rows = pipeline.klom_retain_rows(split, cfg.klom_retain, seed)

    def evaluate(m):
        metrics, _, marg = pipeline.evaluate_model(m, split, device, cfg, heldout, klom_rows, seed)
        return {"variant": "", "method": "", **metrics}, marg

    finals, margs = {}, {}
    finals["original"], margs["original"] = evaluate(model)
    doc: dict = {"variants": {}, "command": "python -m benchmarks.bench_time_to_target " + " ".join(argv or []),
                 "forget": args.forget, "limit": args.limit, "recipe": pipeline.DEMO_RECIPE, "machine": machine_info(),
                 "original": {"cached": cached, "train_seconds": train_s}, "split": split.summary(), "hard": hard,
                 "seeds": {"split_and_original": seed, "retrain": [pipeline.ensemble_seed(seed, j)
                                                                   for j in range(cfg.retrain_seeds)]},
                 "timing_note": "one process; Retrain's time (the speed-ups' divisor) is measured in this run; "
                                "load_average says how busy the machine was (1-, 5-, 15-minute, at start and end)",
                 "load_average": {"start": load_average()}}
    if not args.no_profile:
        doc["profile"] = profile_step(model, retain, forget, unseen)

    ref_res, ref_tr = tracked("retrain", model, retain, forget, None, cfg.retrain_config, split, seed,
                              args.evaluations, heldout=heldout, mia=cfg.mia_statistic)
    finals["retrain"], margs["retrain"] = evaluate(ref_res.model)
    ensemble, ensemble_margins = [finals["retrain"]], [margs["retrain"]]
    members, records = pipeline.retrain_ensemble(cfg, split, seed, device, False, print)
    for member in members:
        metrics, marg = evaluate(member)
        ensemble.append(metrics)
        ensemble_margins.append(marg)
    _, band = pipeline.yardstick(cfg, {k: dict(v) for k, v in finals.items()}, ensemble, {}, [], split)
    t_retrain = time_to_target(ref_tr.points, None, band)
    doc["retrain"] = {"t_total": ref_res.seconds, "t_target": t_retrain, "curve": ref_tr.curve(),
                      "ensemble_members": records}

    def record(name, res, tracker, blend_seconds, settings):
        t = time_to_target(tracker.points, None, band)
        finals[name], margs[name] = evaluate(res.model)
        last = finals[name]
        row = {"settings": settings, "t_blend_stages": blend_seconds, "t_unlearning": res.seconds,
               "t_total": blend_seconds + res.seconds, "t_target": t,
               "speedup_target_vs_retrain": t_retrain / t if t and t_retrain else None,
               "speedup_target_vs_retrain_lower": ref_res.seconds / t if t and not t_retrain else None,
               "unlearning_over_paper": None, "curve": tracker.curve()}
        doc.setdefault("variants", {})[name] = row
        print(f"{name:<18} t_target {t if t is None else round(t, 1)!s:>6}  unlearn {res.seconds:6.1f}s  "
              f"forget {last['forget_acc']:5.1f} test {last['test_acc']:5.1f} MIA {last['mia']:5.1f}", flush=True)

    ipc = cfg.ipc or pipeline.default_ipc(cfg, train)
    index, t_index = build_index(train, ipc, seed)
    reduced, pre = pipeline.request_reduced(index, split.forget)  # per request: milliseconds
    doc["index"] = {"seconds": t_index, "timings": index.timings, "request_seconds": pre,
                    "reduced_size": len(reduced), "retain_size": int(split.retain.numel())}
    for name in args.variants:
        res, tr = tracked("a_finetune", model, reduced, forget, unseen, STEP_VARIANTS[name], split, seed,
                          args.evaluations, offset=pre, heldout=heldout, mia=cfg.mia_statistic)
        record(name, res, tr, pre, STEP_VARIANTS[name])
        doc["variants"][name]["t_index"] = t_index
    paper = doc["variants"].get("paper")
    if paper:
        for row in doc["variants"].values():
            row["unlearning_over_paper"] = row["t_unlearning"] / paper["t_unlearning"]
    for name in args.blend_variants:
        idx, t_idx = build_index(train, ipc, seed, **BLEND_VARIANTS[name])
        red, request = pipeline.request_reduced(idx, split.forget)
        res, tr = tracked("a_finetune", model, red, forget, unseen, {}, split, seed, args.evaluations,
                          offset=request, heldout=heldout, mia=cfg.mia_statistic)
        record(f"blend_{name}", res, tr, request, BLEND_VARIANTS[name])
        doc["variants"][f"blend_{name}"].update(t_index=t_idx, index_over_paper=t_idx / t_index,
                                                blend_loss_final=red.final_loss)
        print(f"  index {t_idx:.1f}s ({t_idx / t_index:.2f}x the paper's {t_index:.1f}s)", flush=True)
    for name, row in finals.items():
        row.update(variant=name, method={"original": "trained", "retrain": "retrain"}.get(name, "a_finetune"))
    yard, band = pipeline.yardstick(cfg, finals, ensemble, margs, ensemble_margins, split)
    doc["yardstick"] = yard
    doc["finals"] = finals  # per variant: metrics with the MIA's interval, band distance, KLOM, the easy/hard label
    for name, row in doc["variants"].items():
        row.update(finals[name])
    t = "n/r" if t_retrain is None else f"{t_retrain:.1f}s"
    print(f"retrain: t_target {t} of {ref_res.seconds:.1f}s; setting {yard['setting']}; band "
          + "  ".join(f"{m} [{b['low']:.1f}, {b['high']:.1f}]" for m, b in yard["band"].items() if m != "kind"))
    out = Path(args.out or f"benchmarks/results-2026-12-05-cpu/time_to_target_{args.forget}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    doc["load_average"]["end"] = load_average()
    out.write_text(json.dumps(doc, indent=2, default=str))
    return doc


if __name__ == "__main__":
    main()
