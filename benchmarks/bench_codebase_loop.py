"""The drop-in inside a loader-based codebase's own loop (issue 23 §3): cost per step, time to band, finals.

    OMP_NUM_THREADS=1 FASTBLEND_CACHE=... python -m benchmarks.bench_codebase_loop [--limit 2000]
        [--epochs 10] [--variants plain dropin_sgd256 ...] [--out FILE]

The data, split and converged model are the demo's (``python -m fastblend demo --limit 2000 --forget
hard``: :data:`fastblend.experiments.pipeline.DEMO`, the hard forget kind, the model cache), so the
cached original model, Retrain ensemble members and Blend index are reused. The "codebase" below is
what such code usually looks like: a dict of ``DataLoader``\\ s, its own fine-tune loop (criterion,
optimiser, epochs) and its own evaluation that reads ``loaders["retain"]``, ``loaders["forget"]``
and ``loaders["test"]``. fastblend enters it the way the README says: ``prepare_unlearning`` on the
codebase's loaders (with the index built once beforehand), the reduced loader under a key of its own
(``loaders["unlearn"]``) and the criterion in place of ``nn.CrossEntropyLoss()``. Every drop-in here runs the
paper's recipe (``request="sample"``), as its committed results did; since 2026-12-07 the drop-in's default on
scattered samples is the difficulty-matched recipe (docs/method.md §7.10: lr 1e-3, three epochs, its own terms).

Variants (all in one process, so the ratios hold on a shared machine):

- ``retrain``: Retrain (the demo's recipe), timed and tracked; with the cached ensemble members it
  makes the seed band (docs/method.md §4.1);
- ``plain``: the codebase's fine-tune: cross-entropy on the whole retain set, its SGD (lr 0.01,
  momentum 0.9, weight decay 5e-4), batch 256, ``--epochs`` epochs;
- ``dropin_sgd256``: the drop-in in that loop, the codebase's SGD and batch 256, ``--epochs`` epochs
  (draws capped at 256 rows, the default);
- ``dropin_sgd256_uncapped``: the same with ``max_draw=None`` (the draws before the cap: 4B each);
- ``dropin_adam64``: the drop-in with the recipe's optimiser and batch (``prep.optimizer``, Adam lr
  2.4e-4, batch 64);
- ``dropin_sgd256_autostop``, ``dropin_adam64_autostop``: the same loops ended by
  ``if prep.auto_stop(model, step, seconds): break`` at every tracked evaluation (at most ``--epochs``
  epochs; the stop's own evaluations counted in the seconds).

Every drop-in variant runs the codebase's ``--epochs`` epochs; its model at the recipe's budget
(``prep.steps``: one epoch over the reduced set) is evaluated too (row ``<variant>@budget``).

Per variant: seconds per optimiser step divided by a plain cross-entropy step of the same batch
size and optimiser on the same loader (measured just before, in the same process); time to Retrain's
band (first evaluation inside it whose next one is inside too; evaluations excluded from the clock);
the final metrics (the pipeline's evaluation, docs/method.md §4) and whether they are inside the
band; and what the codebase's own evaluation reported (its ``loaders["retain"]`` must still be the
whole retain set). Nothing here asserts on a timing.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fastblend
from fastblend.datasets import load_dataset, make_split
from fastblend.experiments import pipeline
from fastblend.experiments.machine import machine_info
from fastblend.methods import planned_steps, unlearn
from fastblend.tracking import StepClock, Tracker, eval_every_for, time_to_target

OUT = Path(__file__).parent / "results-2026-12-05-cpu" / "codebase_loop" / "codebase_loop.json"
VARIANTS = ("retrain", "plain", "dropin_sgd256", "dropin_sgd256_uncapped", "dropin_adam64", "dropin_sgd256_autostop",
            "dropin_adam64_autostop")


# ---------------------------------------------------------------------------------------------------
# the codebase (what a loader-based unlearning repository does; not to be edited for fastblend)
# ---------------------------------------------------------------------------------------------------
def codebase_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """The codebase's own optimiser for fine-tuning."""
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)


def codebase_finetune(loaders: dict, model: nn.Module, criterion, optimizer, epochs: int, key: str = "retain",
                      on_step=None, scheduler=None) -> int:
    """The codebase's epoch loop over ``loaders[key]``; ``on_step(model, step)`` returning True stops it."""
    step = 0
    for _ in range(epochs):
        model.train()
        for x, y in loaders[key]:
            loss = criterion(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            step += 1
            if on_step is not None and on_step(model, step):
                return step
    return step


def codebase_evaluate(loaders: dict, model: nn.Module) -> dict:
    """The codebase's own evaluation: accuracy on ``loaders["retain"]``, ``["forget"]``, ``["test"]``
    and how many rows each held."""
    model.eval()
    out = {}
    with torch.no_grad():
        for name in ("retain", "forget", "test"):
            right = total = 0
            for x, y in loaders[name]:
                right += int((model(x).argmax(1) == y).sum())
                total += int(y.numel())
            out[f"{name}_acc"], out[f"{name}_rows"] = 100.0 * right / total, total
    model.train()
    return out


# ---------------------------------------------------------------------------------------------------
# measurement
# ---------------------------------------------------------------------------------------------------
def plain_step_seconds(model: nn.Module, loader: DataLoader, make_opt, steps: int) -> float:
    """Seconds per plain cross-entropy step (forward, backward, optimiser) of a copy of ``model`` on ``loader``
    (the first step, a warm-up, not counted)."""
    m = copy.deepcopy(model).train()
    opt = make_opt(m)
    it, done, t0 = iter(loader), -1, 0.0
    while done < steps:
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        loss = F.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        done += 1
        if done == 0:
            t0 = time.perf_counter()
    return (time.perf_counter() - t0) / steps


def tracked_run(loaders: dict, model: nn.Module, criterion, optimizer, epochs: int, key: str, tracker: Tracker,
                every: int, snapshot_at: int | None = None, stop=None) -> dict:
    """The codebase loop with ``tracker`` called every ``every`` steps (and after the last), its evaluations
    cut out of the clock: ``{"steps", "seconds", "snapshot"}`` (training seconds; a copy of the model after
    step ``snapshot_at`` and the seconds up to it, taken outside the clock)."""
    out: dict = {}

    def callback(m: nn.Module, step: int, seconds: float) -> bool:
        if step == snapshot_at:
            out["snapshot"] = (copy.deepcopy(m), seconds)
        if step % every == 0 or step == snapshot_at:
            tracker(m, step, seconds)
        if stop is not None and step > 0 and step % every == 0:  # the codebase's `if prep.auto_stop(...): break`
            out["stop_now"] = stop(m, step, seconds)
        return False

    clock = StepClock(callback, torch.device("cpu"))
    clock.report(model, 0)

    def on_step(m: nn.Module, step: int) -> bool:
        if step % every == 0 or step == snapshot_at:
            clock.report(m, step)
        return bool(out.get("stop_now"))

    steps = codebase_finetune(loaders, model, criterion, optimizer, epochs, key, on_step)
    seconds = time.perf_counter() - clock.start - clock.paused
    if clock.last_step != steps:
        tracker(model, steps, seconds)
    out["stop_eval_seconds"] = stop.eval_seconds if stop is not None else 0.0
    # the stop's own evaluations are the user's cost (as unlearn counts them)
    out.update(steps=steps, seconds=seconds + out["stop_eval_seconds"])
    return out


def step_like(step: fastblend.AAMUStep, model: nn.Module, seed: int = 0) -> fastblend.AAMUStep:
    """An A-AMU step on ``model`` with every setting of ``step`` (its criterion: λ, k, κ, σ, steepening, transform,
    log-odds weight; its fixed target's logits; its forget/unseen draw sizes and refresh; its held-out anchor),
    drawing with its own ``seed``."""
    new = fastblend.AAMUStep(model, (step.forget.images, step.forget.labels), (step.unseen.images, step.unseen.labels),
                             batch_size=step.batch_size, seed=seed, forget_batch_factor=step.forget_batch_factor,
                             unseen_batch_factor=step.unseen_batch_factor, max_draw=step.max_draw,
                             unseen_refresh=step.unseen_refresh, unseen_logits=step.unseen_logits,
                             transform=step.criterion.transform, anchor_weight=step.anchor_weight,
                             anchor=step._anchor)
    new.criterion = step.criterion  # the same loss, settings and all
    return new


def gradient_scales(model: nn.Module, prep, batches: int = 3) -> list[dict]:
    """Why plain SGD moves further with the drop-in: per retain batch of ``prep.retain_loader``, at
    ``model``, the gradient norms of the plain cross-entropy, of the steepened retain loss and of the
    whole A-AMU loss (the MMD term's share is the rest)."""
    m = copy.deepcopy(model).train()
    params = [p for p in m.parameters() if p.requires_grad]
    step = step_like(prep.criterion.step, m)

    def norm(loss: torch.Tensor) -> float:
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        return float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads if g is not None)))

    out = []
    for i, (x, y) in enumerate(prep.retain_loader):
        if i == batches:
            break
        per_sample = F.cross_entropy(m(x), y, reduction="none")
        total = step.loss(per_sample)
        out.append({"batch": int(y.numel()), "mean_ce": float(per_sample.mean()), "grad_ce": norm(per_sample.mean()),
                    "grad_steepened": norm(fastblend.aamu.steepen(per_sample)), "grad_total": norm(total.total),
                    "mmd": float(total.mmd)})
    return out


def interleaved_costs(original: nn.Module, retain, forget, unseen, index, batch: int, rounds: int,
                      make_opt) -> dict:
    """Seconds per step of a plain cross-entropy step and of the drop-in's step with capped and uncapped
    draws, at retain batch ``batch``, timed in turns (plain, capped, uncapped, plain, ...) for ``rounds``
    rounds so that a shared machine's load drifts over all three alike: medians and their ratios."""
    import statistics

    runs = {}
    for name, kw in (("plain", None), ("capped", {}), ("uncapped", {"max_draw": None})):
        m = copy.deepcopy(original).train()
        if kw is None:
            crit, loader = nn.CrossEntropyLoss(), DataLoader(TensorDataset(*retain), batch_size=batch, shuffle=True,
                                                             generator=torch.Generator().manual_seed(0))
            draws = None
        else:
            prep = fastblend.prepare_unlearning(m, None, forget, unseen, index=index, batch_size=batch, seed=0,
                                                stop=None, request="sample", **kw)
            crit, draws = prep.criterion, [prep.criterion.step.forget_draw, prep.criterion.step.unseen_draw]
            loader = DataLoader(TensorDataset(*retain), batch_size=batch, shuffle=True,
                                generator=torch.Generator().manual_seed(0))  # full batches of the same size
        runs[name] = {"model": m, "crit": crit, "opt": make_opt(m), "it": iter(loader), "loader": loader,
                      "times": [], "draws": draws}
    for r in range(rounds + 1):
        for run in runs.values():
            try:
                x, y = next(run["it"])
            except StopIteration:
                run["it"] = iter(run["loader"])
                x, y = next(run["it"])
            t0 = time.perf_counter()
            loss = run["crit"](run["model"](x), y)
            run["opt"].zero_grad()
            loss.backward()
            run["opt"].step()
            if r:  # the first round warms up
                run["times"].append(time.perf_counter() - t0)
    med = {name: statistics.median(run["times"]) for name, run in runs.items()}
    return {"batch": batch, "rounds": rounds, "seconds": med,
            "capped_vs_plain": med["capped"] / med["plain"], "uncapped_vs_plain": med["uncapped"] / med["plain"],
            "draws_capped": runs["capped"]["draws"], "draws_uncapped": runs["uncapped"]["draws"]}


def table(result: dict) -> str:
    """The results file's rows as a Markdown table (what the results README shows)."""
    band = result["yardstick"]["band"]
    lines = ["| variant | optimiser, batch | steps | draws f/u | step cost vs plain | seconds | time to band "
             "| forget | test | MIA | retain | inside the band | codebase's retain rows / acc |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in result["rows"].items():
        draws = f"{r['forget_draw']}/{r['unseen_draw']}" if "forget_draw" in r else "-"
        cost = f"{r['step_cost']:.2f}x" if "step_cost" in r else "-"
        t = r.get("t_band")
        where = "-" if name == "original" else f"{r.get('optimizer', 'Retrain recipe')}, {r.get('batch_size', 128)}"
        ev = r.get("codebase_eval")
        lines.append(f"| {name} | {where} | {r.get('steps', 0)} | {draws} | {cost} | {r.get('seconds', 0.0):.1f} | "
                     + ("n/r" if t is None else f"{t:.1f} s") + f" | {r['forget_acc']:.1f} | {r['test_acc']:.1f} | "
                     f"{r['mia']:.1f} | {r['retain_acc']:.1f} | {'yes' if r['in_band'] else 'no'} | "
                     + (f"{ev['retain_rows']} / {ev['retain_acc']:.1f}" if ev else "-") + " |")
    edges = ", ".join(f"{m} [{band[m]['low']:.1f}, {band[m]['high']:.1f}]" if isinstance(band.get(m), dict)
                      else f"{m} {band.get(m)}" for m in ("forget_acc", "test_acc", "mia"))
    return "\n".join(lines) + f"\n\nRetrain's band ({result['yardstick']['setting']} cell): {edges}\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limit", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=10, help="the codebase's fine-tune epochs")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS[:5]), choices=VARIANTS)
    ap.add_argument("--evaluations", type=int, default=12, help="tracked evaluations per variant (about)")
    ap.add_argument("--forget", default="hard", choices=("hard", "uniform", "classwise"), help="the forget kind")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--table", type=Path, default=None, help="print a results file's table and exit")
    ap.add_argument("--cost", type=int, default=0, metavar="FORGET_ROWS",
                    help="only the per-step cost, interleaved, with a uniform forget set of this many rows "
                         "(e.g. 800, the issue's), to cost.json beside --out")
    ap.add_argument("--gradients", action="store_true", help="only the gradient scales at the original model "
                    "(batch 64 and 256), to gradients.json beside --out")
    args = ap.parse_args(argv)
    if args.table is not None:
        print(table(json.loads(args.table.read_text())))
        return
    seed = args.seed
    t_start = time.perf_counter()
    cfg = pipeline.with_overrides(pipeline.DEMO, limit=args.limit, forget=args.forget, quiet=True, device="cpu")
    device = torch.device("cpu")
    log = print
    train, test = load_dataset(cfg.dataset, cfg.data_root, per_class=cfg.per_class, limit=cfg.limit)
    if args.forget == "hard":
        split, _ = pipeline.hard_split(cfg, train, test, seed, device, False, log)
    else:
        split = make_split(train, test, forget=args.forget, forget_fraction=cfg.forget_fraction,
                           forget_class=cfg.forget_class, seed=seed)
    heldout = pipeline.heldout_tensors(split)
    retain_rows = pipeline.klom_retain_rows(split, cfg.klom_retain, seed)
    retain, forget, unseen = split.retain_tensors(), split.forget_tensors(), split.unseen_tensors()
    ipc = cfg.ipc if cfg.ipc is not None else pipeline.default_ipc(cfg, train)
    original, _, cached = pipeline.original_model(cfg, train.images, train.labels, train.num_classes, seed, device,
                                                  False)
    log(f"{len(train)} train: {retain[1].numel()} retain, {forget[1].numel()} forget (hard), {unseen[1].numel()} "
        f"unseen, {split.evaluation.numel()} evaluation; original model {'cached' if cached else 'trained'}")

    if args.cost:
        index, _, _ = pipeline.blend_index(cfg, train, ipc, seed, device, False)
        usplit = make_split(train, test, forget="uniform", forget_fraction=args.cost / len(train), seed=seed)
        costs = [interleaved_costs(original, usplit.retain_tensors(), usplit.forget, usplit.unseen_tensors(), index,
                                   256, 12, codebase_optimizer),
                 interleaved_costs(original, usplit.retain_tensors(), usplit.forget, usplit.unseen_tensors(), index,
                                   64, 12, lambda m: torch.optim.Adam(m.parameters(), lr=2.4e-4))]
        for c in costs:
            log(f"batch {c['batch']}: capped {c['draws_capped']} {c['capped_vs_plain']:.2f}x a plain step, "
                f"uncapped {c['draws_uncapped']} {c['uncapped_vs_plain']:.2f}x")
        path = args.out.parent / "cost.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"forget_rows": int(usplit.forget.numel()), "limit": args.limit,
                                    "command": "OMP_NUM_THREADS=1 python -m benchmarks.bench_codebase_loop "
                                               + " ".join(argv if argv is not None else sys.argv[1:]),
                                    "costs": costs, "machine": machine_info()}, indent=1))
        return
    if args.gradients:
        index, _, _ = pipeline.blend_index(cfg, train, ipc, seed, device, False)
        scales = {}
        for bs in (64, 256):
            prep = fastblend.prepare_unlearning(copy.deepcopy(original), None, split.forget, unseen, index=index,
                                                batch_size=bs, seed=seed, request="sample")
            scales[str(bs)] = gradient_scales(original, prep)
            for r in scales[str(bs)]:
                log(f"batch {bs}: |grad CE| {r['grad_ce']:.3f}  |grad steepened CE| {r['grad_steepened']:.3f} "
                    f"(mean CE {r['mean_ce']:.3f})  |grad A-AMU| {r['grad_total']:.3f}")
        path = args.out.parent / "gradients.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"forget": args.forget, "limit": args.limit, "scales": scales}, indent=1))
        return
    rows: dict[str, dict] = {}
    marg: dict[str, dict] = {}
    curves: dict[str, list] = {}

    def record(name: str, m: nn.Module, extra: dict) -> None:
        metrics, _, marg[name] = pipeline.evaluate_model(m, split, device, cfg, heldout, retain_rows, seed)
        rows[name] = {"variant": name, **metrics, **extra}
        log(f"{name:<24} forget {metrics['forget_acc']:5.1f} test {metrics['test_acc']:5.1f} "
            f"MIA {metrics['mia']:5.1f} retain {metrics['retain_acc']:5.1f}  "
            + " ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in extra.items()
                       if k in ("seconds", "steps", "step_cost")))

    def tracker() -> Tracker:
        return Tracker(forget, split.eval_tensors(), max_samples=cfg.track_samples, seed=seed, heldout=heldout,
                       mia=cfg.mia_statistic, mia_samples=None)

    record("original", original, {"seconds": 0.0, "steps": 0})
    # Retrain, timed and tracked (the run's own ensemble member 0), and the cached members
    tr = tracker()
    steps = planned_steps("retrain", cfg.retrain_config, retain[1].numel())
    res = unlearn("retrain", original, retain, forget, config=cfg.retrain_config, device=device, seed=seed,
                  callback=tr, eval_every=eval_every_for(steps, args.evaluations))
    curves["retrain"] = tr.points
    record("retrain", res.model, {"seconds": res.seconds, "steps": steps})
    ensemble, ensemble_margins = [rows["retrain"]], [marg["retrain"]]
    for model_j, _ in zip(*pipeline.retrain_ensemble(cfg, split, seed, device, False, log)):
        metrics, _, mm = pipeline.evaluate_model(model_j, split, device, cfg, heldout, retain_rows, seed)
        ensemble.append(metrics)
        ensemble_margins.append(mm)

    # the codebase's loaders; the index is built once per training set (the cache: the demo's)
    batch = 256
    loaders = {"retain": DataLoader(TensorDataset(*retain), batch_size=batch, shuffle=True,
                                    generator=torch.Generator().manual_seed(seed)),
               "forget": DataLoader(TensorDataset(*forget), batch_size=batch),
               "unseen": DataLoader(TensorDataset(*unseen), batch_size=batch),
               "test": DataLoader(TensorDataset(*split.eval_tensors()), batch_size=batch)}
    index, index_seconds, index_cached = pipeline.blend_index(cfg, train, ipc, seed, device, False)
    for name in args.variants:
        if name == "retrain":
            continue
        model = copy.deepcopy(original)
        tr = tracker()
        extra: dict = {}
        if name == "plain":
            every = max(1, args.epochs * len(loaders["retain"]) // args.evaluations)
            plain = plain_step_seconds(original, loaders["retain"], codebase_optimizer, 8)
            run = tracked_run(loaders, model, nn.CrossEntropyLoss(), codebase_optimizer(model), args.epochs,
                              "retain", tr, every)
            extra.update(epochs=args.epochs, batch_size=batch, optimizer="codebase SGD lr 0.01 m 0.9 wd 5e-4")
            mine = loaders
        else:
            adam = name.startswith("dropin_adam64")
            auto = name.endswith("_autostop")
            bs = 64 if adam else batch
            kw = {"max_draw": None} if name.endswith("uncapped") else {}
            t0 = time.perf_counter()
            prep = fastblend.prepare_unlearning(model, loaders["retain"], loaders["forget"], loaders["unseen"],
                                                index=index, batch_size=bs, seed=seed, request="sample",
                                                stop="auto" if auto else None, **kw)
            request = time.perf_counter() - t0
            mine = {**loaders, "unlearn": prep.retain_loader}  # the codebase's loaders stay what they were
            make_opt = prep.optimizer if adam else codebase_optimizer
            # a plain step of the same batch size and optimiser (Adam/64: on the reduced loader of 64)
            plain = plain_step_seconds(original, prep.retain_loader if adam else loaders["retain"], make_opt, 8)
            every = max(1, args.epochs * len(prep.retain_loader) // args.evaluations)
            run = tracked_run(mine, model, prep.criterion, make_opt(model), args.epochs, "unlearn", tr, every,
                              snapshot_at=None if auto else prep.steps, stop=prep.auto_stop if auto else None)
            run["seconds"] += request
            step = prep.criterion.step
            extra.update(epochs=args.epochs, batch_size=bs, request_seconds=request, reduced_size=len(prep.reduced),
                         forget_draw=step.forget_draw, unseen_draw=step.unseen_draw,
                         optimizer="prep.optimizer (Adam lr 2.4e-4)" if adam else "codebase SGD lr 0.01 m 0.9 wd 5e-4",
                         recipe_epochs=prep.epochs, recipe_steps=prep.steps,
                         **({"auto_stop": prep.auto_stop.summary()} if auto else {}))
        per_step = (run["seconds"] - extra.get("request_seconds", 0.0) - run.get("stop_eval_seconds", 0.0)) \
            / max(run["steps"], 1)
        extra.update(steps=run["steps"], seconds=run["seconds"], step_seconds=per_step, plain_step_seconds=plain,
                     step_cost=per_step / plain)
        extra["codebase_eval"] = codebase_evaluate(mine, model)
        curves[name] = tr.points
        if "snapshot" in run:
            snap, secs = run["snapshot"]
            record(f"{name}@budget", snap, {**{k: v for k, v in extra.items() if k not in ("steps", "seconds")},
                                            "steps": prep.steps, "seconds": secs + extra["request_seconds"],
                                            "epochs": prep.epochs, "codebase_eval": codebase_evaluate(mine, snap)})
        record(name, model, extra)

    yard, band = pipeline.yardstick(cfg, rows, ensemble, marg, ensemble_margins, split)
    for name, points in curves.items():
        t = time_to_target(points, None, band)
        if name not in ("retrain", "plain"):  # the drop-in's curve starts after the request's set-up
            t = None if t is None else t + rows[name]["request_seconds"]
        rows[name]["t_band"] = t
        rows[name]["curve"] = [p.__dict__ for p in points]
    t_retrain = rows["retrain"]["t_band"]
    for row in rows.values():
        t = row.get("t_band")
        row["speedup_vs_retrain_band"] = t_retrain / t if t and t_retrain else None
        row["speedup_vs_retrain_total"] = rows["retrain"]["seconds"] / t if t else None
        row["final_in_band"] = bool(row["in_band"])
    out = {"command": "OMP_NUM_THREADS=1 python -m benchmarks.bench_codebase_loop "
                      + " ".join(argv if argv is not None else sys.argv[1:]),
           "scale": {"limit": args.limit, "forget": args.forget, "epochs": args.epochs,
                     "retain": int(retain[1].numel()), "forget_rows": int(forget[1].numel()),
                     "unseen": int(unseen[1].numel())},
           "index": {"seconds": index_seconds, "cached": index_cached},
           "yardstick": yard, "rows": rows, "machine": machine_info(), "wall_seconds": time.perf_counter() - t_start}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1, default=float))
    log("band: " + ", ".join(f"{m} [{getattr(band, m).low:.1f}, {getattr(band, m).high:.1f}]"
                              for m in ("forget_acc", "test_acc", "mia")))
    for name, row in rows.items():
        log(f"{name:<24} t_band {row.get('t_band')}  in band at the end: {row['in_band']:.0f}  "
            f"step cost {row.get('step_cost', float('nan')):.2f}x  seconds {row.get('seconds', 0):.1f}")
    log(f"results: {args.out}")


if __name__ == "__main__":
    main()
