"""The matrix on the yardstick (issue 23 §1): every base method and its accelerated twin, on every forget
kind, several seeds, judged against Retrain's seed band.

    python -m benchmarks.bench_matrix --out DIR [--limit N] [--seeds 0 1 2] [--methods ...]
        [--kinds hard uniform classwise] [--budget-factor F] [--resnet] [--no-convnet] [--config FILE]

One command, resumable. The work is split into units, each written atomically to its own JSON file as
soon as it finishes (``DIR/<family>/seed<s>/<unit>.json``; ``<family>`` is the forget kind, or
``resnet18bn-w<W>-<kind>`` for the BatchNorm ResNet-18 cell); a rerun skips every unit whose file
exists, so an interruption loses at most the unit that was running. ``DIR/matrix.json`` records the settings
that decide what a unit means (the data limit, the budget factor, ``--config``) and the code that ran the units
(commit, and a hash of uncommitted changes): a resume under other settings is refused, and under other code
unless ``--allow-code-change`` (a changed default recipe would otherwise mix into one table). Units per
(family, seed):

- ``retrain``: the untouched original (the do-nothing row, its distance to the band and the
  easy/hard label), the run's own timed and tracked Retrain, the cached members of Retrain's seed
  ensemble, the band and KLOM's Retrain-vs-Retrain floor; the ensemble's and the original's margins
  go to ``retrain_margins.pt`` beside it (KLOM of the later units is measured against them);
- ``<method>`` for each base method and accelerated twin: its tracked run (the quality curve), the
  final model's evaluation (MIA interval, in band or not, distance, KLOM percentiles), time to band
  (the first evaluation inside whose next one is inside too, as :func:`fastblend.tracking.time_to_target`)
  and ``t_stay`` (from which every later evaluation and the final model are inside); base methods run
  under a budget of ``--budget-factor`` x this seed's Retrain time (recorded);
- ``<method>.auto``: the same method with ``unlearn(..., stop="auto")`` (:class:`fastblend.AutoStop`,
  its own evaluation cadence; a base method keeps its budget beside it): when the run ended
  (``stop_seconds``, the stop's evaluations included, as a user pays them), what ended it (``stopped_by``:
  the auto stop, the budget or the end of the recipe, with ", closest evaluation" when the stop then returned
  the weights of its evaluation closest to the rule), whether that model is in the band, its KLOM; with the
  closest evaluation's model, ``end_of_run`` judges the model where the run ended as well.

Everything is the demo's (``python -m fastblend demo``): :data:`fastblend.experiments.settings.DEMO`
(the converged ConvNet-3 width 64, its recipe for the original and Retrain), the pipeline's data
loading, ``make_split`` / ``hard_split``, the model and index caches (``$FASTBLEND_CACHE``), the
Retrain seed ensemble, ``evaluate_model``, ``yardstick`` (band, label, KLOM), the index request
(``request_reduced``: an accelerated run's time is the request plus the unlearning, the index being
built once per training set). ``benchmarks/matrix_readme.py DIR`` turns the files into the README.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

import fastblend
from fastblend._io import atomic_save, atomic_write_text, load_torch
from fastblend.datasets import make_split
from fastblend.experiments import pipeline
from fastblend.experiments.machine import machine_info
from fastblend.experiments.settings import DEMO, resolve_device, with_overrides
from fastblend.methods import unlearn
from fastblend.tracking import time_to_target

BASE_METHODS = ("finetune", "scrub", "l1_sparse", "neggrad_plus")
TWIN = {"finetune": "a_finetune", "scrub": "a_scrub", "l1_sparse": "a_sparse", "neggrad_plus": "a_neggrad_plus"}
ACCELERATED = tuple(TWIN.values())
KINDS = ("hard", "uniform", "classwise")
RESNET_METHODS = ("a_finetune", "finetune")


def auto_stop_available() -> bool:
    """Whether the auto stop (``unlearn(..., stop="auto")``, ``fastblend.AutoStop``) is in this fastblend."""
    return hasattr(fastblend, "AutoStop")


# --------------------------------------------------------------------------------------------
# the BatchNorm ResNet-18 of the extra cell (fastblend.models' ResNets use GroupNorm)
# --------------------------------------------------------------------------------------------
class _BNBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18BN(nn.Module):
    """ResNet-18 (blocks [2, 2, 2, 2], CIFAR stem: 3x3 conv, no max-pool) with BatchNorm and stage
    widths ``width · (1, 2, 4, 8)`` (64 is the usual ResNet-18)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        blocks, cin = [], width
        for i, planes in enumerate(width * m for m in (1, 2, 4, 8)):
            for j in range(2):
                blocks.append(_BNBlock(cin, planes, 2 if (i > 0 and j == 0) else 1))
                cin = planes
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return self.linear(self.pool(self.layers(out)).flatten(1))


@contextmanager
def _resnet_models() -> Iterator[None]:
    """Within: the pipeline builds ``model="resnet18bn"`` configs as :class:`ResNet18BN` of ``cfg.width``
    (its cache keys hold the model name and width, so these models never mix with the ConvNet's)."""
    build = pipeline._build

    def patched(cfg, in_channels, num_classes, image_size):
        if cfg.model == "resnet18bn":
            return ResNet18BN(in_channels, num_classes, width=cfg.width)
        return build(cfg, in_channels, num_classes, image_size)

    pipeline._build = patched
    try:
        yield
    finally:
        pipeline._build = build


# --------------------------------------------------------------------------------------------
# one (family, seed): data, split, original, Retrain and its ensemble
# --------------------------------------------------------------------------------------------
@dataclass
class Context:
    cfg: Any
    kind: str
    seed: int
    device: torch.device
    train: Any
    split: Any
    heldout: tuple
    retain_rows: torch.Tensor
    model: nn.Module
    retrain: dict  # the retrain unit's record
    margins: dict  # {"original": {...}, "ensemble": [{...}, ...]}


def _json(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def write_unit(path: Path, record: dict) -> None:
    """Write one unit's record atomically (a reader sees the whole file or none)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(_json(record), indent=1, sort_keys=True), fn="bench_matrix")


def _stamp(cfg, t0: float) -> dict:
    return {"machine": {**machine_info(), "host": socket.gethostname()}, "load_average": list(os.getloadavg()),
            "argv": list(sys.argv),
            "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "wall_seconds": time.perf_counter() - t0,
            "config": {k: getattr(cfg, k) for k in ("dataset", "limit", "per_class", "model", "width", "forget",
                                                    "forget_fraction", "hard_pool", "train_config", "retrain_config",
                                                    "retrain_seeds", "track_evaluations", "track_samples",
                                                    "mia_statistic", "klom_estimator", "band_z", "band_floor",
                                                    "accelerated_config")}}


def prepare(cfg, kind: str, seed: int, folder: Path, device: torch.device, log: Callable[[str], None]) -> Context:
    """The data, split and original model of one (family, seed), and its ``retrain`` unit (run and
    written unless its file exists)."""
    train, test = pipeline.load_dataset(cfg.dataset, cfg.data_root, per_class=cfg.per_class, limit=cfg.limit)
    hard_info = None
    if kind == "hard":
        split, hard_info = pipeline.hard_split(cfg, train, test, seed, device, False, log)
    else:
        split = make_split(train, test, forget=kind, forget_fraction=cfg.forget_fraction,
                           forget_class=cfg.forget_class, seed=seed)
    heldout = pipeline.heldout_tensors(split)
    retain_rows = pipeline.klom_retain_rows(split, cfg.klom_retain, seed)
    model, train_seconds, cached = pipeline.original_model(cfg, train.images, train.labels, train.num_classes, seed,
                                                           device, False)
    path, mpath = folder / "retrain.json", folder / "retrain_margins.pt"
    if path.exists() and mpath.exists():
        return Context(cfg, kind, seed, device, train, split, heldout, retain_rows, model,
                       json.loads(path.read_text()), load_torch(mpath, "bench_matrix"))
    t0 = time.perf_counter()
    log(f"[{folder.parent.name} seed {seed}] original {'cached' if cached else f'trained {train_seconds:.0f}s'}; "
        f"Retrain and its ensemble")
    retain, forget = split.retain_tensors(), split.forget_tensors()
    trackers: dict = {}
    kw = pipeline._tracked(cfg, trackers, "retrain", "retrain", cfg.retrain_config, len(retain[1]), split, seed,
                           heldout=heldout)
    res = unlearn("retrain", model, retain, forget, config=cfg.retrain_config or None, device=device, seed=seed,
                  progress=False, **kw)
    m_retrain, _, marg_retrain = pipeline.evaluate_model(res.model, split, device, cfg, heldout, retain_rows, seed)
    m_orig, _, marg_orig = pipeline.evaluate_model(model, split, device, cfg, heldout, retain_rows, seed)
    members, records = pipeline.retrain_ensemble(cfg, split, seed, device, False, log)
    ensemble, ensemble_margins = [m_retrain], [marg_retrain]
    for member in members:
        metrics, _, marg = pipeline.evaluate_model(member, split, device, cfg, heldout, retain_rows, seed)
        ensemble.append(metrics)
        ensemble_margins.append(marg)
    rows = {"original": {"variant": "original", **m_orig, "t_total": 0.0},
            "retrain": {"variant": "retrain", **m_retrain, "t_total": res.seconds}}
    yard, band = pipeline.yardstick(cfg, rows, ensemble, {"original": marg_orig, "retrain": marg_retrain},
                                    ensemble_margins, split)
    points = trackers["retrain"].points
    record = {"unit": "retrain", "kind": kind, "seed": seed, "split": split.summary(), "hard": hard_info,
              "original": rows["original"], "retrain": rows["retrain"], "retrain_seconds": res.seconds,
              "retrain_t_target": time_to_target(points, None, band), "retrain_curve": trackers["retrain"].curve(),
              "retrain_eval_seconds": trackers["retrain"].eval_seconds,
              "ensemble": ensemble, "ensemble_members": [{"member": 0, "seed": seed, "seconds": res.seconds,
                                                          "cached": False}, *records],
              "band": yard["band"], "setting": yard["setting"], "klom": yard["klom"],
              "original_training": {"seconds": train_seconds, "cached": cached}, **_stamp(cfg, t0)}
    margins = {"original": marg_orig, "ensemble": ensemble_margins}
    folder.mkdir(parents=True, exist_ok=True)
    atomic_save(margins, mpath, fn="bench_matrix")  # before the JSON: the JSON's presence marks the unit done
    write_unit(path, record)
    log(f"[{folder.parent.name} seed {seed}] retrain {res.seconds:.1f}s, band reached at "
        f"{record['retrain_t_target']}, setting {yard['setting']}")
    return Context(cfg, kind, seed, device, train, split, heldout, retain_rows, model, json.loads(path.read_text()),
                   margins)


def _judge(ctx: Context, row: dict, marg: dict) -> tuple[dict, Any]:
    """``row`` (a variant's final metrics) judged on the band: distances, ``in_band``, the label and KLOM
    against the ensemble (``pipeline.yardstick``); returns the updated row and the band."""
    rows = {"original": dict(ctx.retrain["original"]), "retrain": dict(ctx.retrain["retrain"]), "v": row}
    _, band = pipeline.yardstick(ctx.cfg, rows, ctx.retrain["ensemble"], {"v": marg}, ctx.margins["ensemble"],
                                 ctx.split)
    return rows["v"], band


def t_stay(points: list[dict], band, final_in_band: bool) -> float | None:
    """Seconds at the evaluation from which every later evaluation, and the final model, is inside the
    band (``None``: the final model is outside, or no such evaluation)."""
    if not final_in_band:
        return None
    start = None
    for p in points:
        if band.contains(p):
            start = p["seconds"] if start is None else start
        else:
            start = None
    return start


@contextmanager
def _keeping_end(store: dict) -> Iterator[None]:
    """While open, :meth:`fastblend.AutoStop.finish` first keeps a copy of the model where the run ended in
    ``store["model"]`` (before it puts the closest evaluation's weights back): the unit judges both models. The
    stop is the one ``unlearn(stop="auto")`` builds, whatever the config's target."""
    original = fastblend.AutoStop.finish

    def finish(self, model: nn.Module, step: int | None = None, seconds: float | None = None) -> bool:
        # a run on a frozen prefix (docs/method.md §7.11) judges its head: the whole model is the one to keep
        store["model"] = copy.deepcopy(getattr(model, "whole_model", model))
        return original(self, model, step, seconds)

    fastblend.AutoStop.finish = finish
    try:
        yield
    finally:
        fastblend.AutoStop.finish = original


def run_method(ctx: Context, method: str, budget_factor: float, index_cache: dict, auto: bool = False) -> dict:
    """One method (tracked, or with the auto stop) on ``ctx``: its unit record."""
    cfg, split, device, seed = ctx.cfg, ctx.split, ctx.device, ctx.seed
    t0 = time.perf_counter()
    accelerated = method in ACCELERATED
    forget, unseen = split.forget_tensors(), split.unseen_tensors()
    request, extra = 0.0, {}
    if accelerated:
        ipc = cfg.ipc if cfg.ipc is not None else pipeline.default_ipc(cfg, ctx.train)
        key = (seed, ipc)
        if key not in index_cache:
            index_cache[key] = pipeline.blend_index(cfg, ctx.train, ipc, seed, device, False)
        index, index_seconds, index_cached = index_cache[key]
        retain, request = pipeline.request_reduced(index, split.forget)
        extra = {"reduced_size": len(retain), "retain_size": int(split.retain.numel()), "ipc": ipc,
                 "request_seconds": request, "index_build_seconds": index.timings.get("total", index_seconds),
                 "index_cached": index_cached}
        retain_size = len(retain)
    else:
        retain = split.retain_tensors()
        retain_size = len(retain[1])
    retrain_seconds = float(ctx.retrain["retrain_seconds"])
    budget = budget_factor * retrain_seconds if not accelerated else None
    config = dict(cfg.accelerated_config) if accelerated and cfg.accelerated_config else None  # --config's
    trackers: dict = {}
    end: dict = {}  # the model where an auto-stopped run ended, when the stop returned an earlier one
    if auto:  # the stop's own cadence (AutoStop.evaluations); a base method keeps its budget beside it
        kw: dict = {"stop": "auto"}
        if budget is not None:
            kw["callback"] = lambda _model, _step, seconds: seconds >= budget
    else:
        kw = pipeline._tracked(cfg, trackers, "v", method, config or {}, retain_size, split, seed, budget,
                               ctx.heldout)
    with _keeping_end(end):
        res = unlearn(method, ctx.model, retain, forget, unseen=unseen, config=config, device=device, seed=seed,
                      progress=False, **kw)
    metrics, _, marg = pipeline.evaluate_model(res.model, split, device, cfg, ctx.heldout, ctx.retain_rows, seed)
    total = request + res.seconds
    row, band = _judge(ctx, {"variant": method, "method": method, **metrics, "t_total": total}, marg)
    record = {"unit": method + (".auto" if auto else ""), "method": method, "kind": ctx.kind, "seed": seed,
              "accelerated": accelerated, "method_config": config, "request": res.info.get("request"),
              "recipe": res.info.get("recipe"), "final": row, "in_band": bool(row["in_band"]),
              "seconds": total,
              "unlearning_seconds": res.seconds, "steps": res.steps, "retrain_seconds": retrain_seconds,
              "retrain_t_target": ctx.retrain["retrain_t_target"], "setting": ctx.retrain["setting"], **extra}
    if auto:
        info = res.info.get("auto_stop", {}) or {}
        record["auto_stop"] = info
        record["stop_seconds"] = total  # the run ends at the stop: the request, the steps and the stop's evaluations
        record["stopped_by"] = ("auto" if info.get("stopped") else
                                "budget" if "stopped_at_step" in res.info else "end of the recipe")
        if info.get("restored_step") is not None:  # the run ended first: the closest evaluation's model (§4.5)
            record["stopped_by"] += ", closest evaluation"
            if "model" in end:  # and the model where it ended, judged too
                m_end, _, marg_end = pipeline.evaluate_model(end["model"], split, device, cfg, ctx.heldout,
                                                             ctx.retain_rows, seed)
                record["end_of_run"], _ = _judge(ctx, {"variant": method, "method": method, **m_end,
                                                       "t_total": total}, marg_end)
        record.update(budget_seconds=budget, budget_factor=budget_factor if budget is not None else None)
    else:
        points = trackers["v"].curve()
        for p in points:  # per request, the curve starts after the index request (the index is built beforehand)
            p["seconds"] += request
        record.update(curve=points, t_target=time_to_target(points, None, band),
                      t_stay=t_stay(points, band, bool(row["in_band"])), eval_seconds=trackers["v"].eval_seconds,
                      budget_seconds=budget, budget_factor=budget_factor if budget is not None else None,
                      stopped_at_budget=bool(trackers["v"].stopped))
    record.update(_stamp(cfg, t0))
    return record


# --------------------------------------------------------------------------------------------
# the matrix
# --------------------------------------------------------------------------------------------
def family_config(kind: str, limit: int | None, overrides: dict, resnet_width: int | None = None):
    """The demo's config for one forget kind (``resnet_width``: the BatchNorm ResNet-18 of that width).

    Each quality curve has 10 evaluations (as the committed demo runs at ``--limit 2000``); its test accuracy
    is read on at most 600 evaluation images (the whole evaluation split at that limit), its forget accuracy
    and MIA on every forget and held-out image, the final evaluation's rows (docs/method.md §4.3)."""
    cfg = with_overrides(DEMO, forget=kind, limit=limit, quiet=True, plots=False, track_evaluations=10,
                         track_samples=600, base_budget=None)
    cfg = with_overrides(cfg, **overrides)
    cfg.check()
    if resnet_width is not None:
        cfg = with_overrides(cfg, model="resnet18bn", width=resnet_width)
    return cfg


def units(methods: list[str], auto: bool) -> list[str]:
    """Unit names in running order: the accelerated methods first (cheap), then the base methods, then
    the auto-stop runs."""
    acc = [m for m in methods if m in ACCELERATED]
    base = [m for m in methods if m not in ACCELERATED]
    return acc + base + ([m + ".auto" for m in acc + base] if auto else [])


def run_family(out: Path, family: str, kind: str, cfg, seeds: list[int], methods: list[str], budget_factor: float,
               auto: bool, log: Callable[[str], None]) -> int:
    """Every missing unit of one family; returns how many were run."""
    device = resolve_device(cfg.device)
    index_cache: dict = {}
    done = 0
    for seed in seeds:
        folder = out / family / f"seed{seed}"
        todo = [u for u in units(methods, auto) if not (folder / f"{u}.json").exists()]
        if not todo and (folder / "retrain.json").exists():
            continue
        ctx = prepare(cfg, kind, seed, folder, device, log)
        for unit in todo:
            method, is_auto = unit.removesuffix(".auto"), unit.endswith(".auto")
            record = run_method(ctx, method, budget_factor, index_cache, auto=is_auto)
            write_unit(folder / f"{unit}.json", record)
            done += 1
            log(f"[{family} seed {seed}] {unit:<20} {record['seconds']:7.1f}s  in band {record['in_band']}  "
                + (f"to band {record['t_target']}" if not is_auto else f"stop {record['stop_seconds']:.1f}s")
                + f"  forget {record['final']['forget_acc']:.1f} test {record['final']['test_acc']:.1f} "
                f"MIA {record['final']['mia']:.1f}")
    return done


def code_state() -> dict:
    """Which code runs the units: the checkout's commit and, when its tracked files (outside results and prose)
    differ from it, a hash of that difference (``None`` outside a git checkout)."""
    root = Path(__file__).resolve().parent.parent
    try:
        def git(*args: str) -> bytes:
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True, check=True,
                                  timeout=30).stdout

        commit = git("rev-parse", "HEAD").decode().strip()
        spec = ["--", ".", ":(exclude)benchmarks/results-*", ":(exclude)tests", ":(exclude)*.md"]
        diff = git("diff", "HEAD", *spec)
        for name in sorted(git("ls-files", "--others", "--exclude-standard", *spec).decode().splitlines()):
            diff += name.encode() + b"\0" + (root / name).read_bytes()  # new files not yet committed count too
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "changes": None}
    return {"commit": commit, "changes": hashlib.sha256(diff).hexdigest()[:16] if diff else None}


MANIFEST = "matrix.json"


def check_manifest(out: Path, settings: dict, allow_code_change: bool = False) -> dict:
    """The folder's manifest (``matrix.json``: the settings that decide what a unit means, and the code that ran
    its units), written on a first run. A resumed folder must have the same settings, and the same code unless
    ``allow_code_change`` (then the new code is added to the manifest's ``code`` list): units run under another
    default recipe, data limit or budget would otherwise sit side by side in one table."""
    path = out / MANIFEST
    if out.exists() and not out.is_dir():
        raise ValueError(f"bench_matrix: --out {out} is a file, not a folder")
    code = code_state()
    settings = json.loads(json.dumps(_json(settings), sort_keys=True))
    if path.exists():
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"bench_matrix: {path} cannot be read ({exc}); restore it, or use a new --out") from None
        if not (isinstance(manifest, dict) and isinstance(manifest.get("settings"), dict)
                and isinstance(manifest.get("code"), list) and manifest["code"]):
            raise ValueError(f"bench_matrix: {path} is not a matrix manifest (it needs 'settings' and a non-empty "
                             "'code' list); restore it, or use a new --out")
        there = manifest["settings"]
        differ = sorted(k for k in set(settings) | set(there) if settings.get(k) != there.get(k))
        if differ:
            raise ValueError(f"bench_matrix: {out} holds units run with other settings ("
                             + "; ".join(f"{k}: {there.get(k)!r} there, {settings.get(k)!r} now" for k in differ)
                             + "); use a new --out, or the folder's settings")
        if code not in manifest["code"]:
            if not allow_code_change:
                raise ValueError(f"bench_matrix: {out} holds units run by other code ({manifest['code'][-1]}, now "
                                 f"{code}): a changed default or recipe would mix in one table. Use a new --out, or "
                                 "--allow-code-change to add units anyway (the manifest then lists both)")
            manifest["code"].append(code)
            atomic_write_text(path, json.dumps(manifest, indent=1, sort_keys=True), fn="bench_matrix")
        return manifest
    earlier = any(out.glob("*/seed*/*.json"))
    manifest = {"settings": settings, "code": [code], "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "note": "the folder held units before this manifest was written" if earlier else None}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(manifest, indent=1, sort_keys=True), fn="bench_matrix")
    return manifest


def run_matrix(out: str | Path, kinds: list[str], seeds: list[int], methods: list[str], limit: int | None = 2000,
               budget_factor: float = 1.0, resnet: bool = False, convnet: bool = True, resnet_width: int = 8,
               resnet_seeds: list[int] | None = None, overrides: dict | None = None, auto: bool | None = None,
               log: Callable[[str], None] = print, allow_code_change: bool = False) -> int:
    """Run every missing unit (see the module's docstring); returns how many units were run. The folder's
    manifest (:func:`check_manifest`) refuses a resume under other settings or other code."""
    out = Path(out)
    overrides = dict(overrides or {})
    auto = auto_stop_available() if auto is None else auto
    check_manifest(out, {"limit": limit, "budget_factor": budget_factor, "overrides": overrides},
                   allow_code_change)
    done = 0
    if convnet:
        for seed in seeds:  # seed outermost: a cut-short run has whole seeds of every kind
            for kind in kinds:
                done += run_family(out, kind, kind, family_config(kind, limit, overrides), [seed], methods,
                                   budget_factor, auto, log)
    if resnet:
        with _resnet_models():
            cfg = family_config("hard", limit, overrides, resnet_width)
            done += run_family(out, f"resnet18bn-w{resnet_width}-hard", "hard", cfg, resnet_seeds or seeds[:1],
                               list(RESNET_METHODS), budget_factor, auto, log)
    return done


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_matrix", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder of the unit files (resumed when it holds some)")
    p.add_argument("--limit", type=int, default=2000, help="training and test images (the demo's --limit)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=[*BASE_METHODS, *ACCELERATED],
                   help=f"of {[*BASE_METHODS, *ACCELERATED]}")
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    p.add_argument("--budget-factor", type=float, default=1.0,
                   help="a base method stops at the first evaluation past this many times its seed's Retrain time")
    p.add_argument("--resnet", action="store_true", help="add the BatchNorm ResNet-18 cell (hard kind)")
    p.add_argument("--no-convnet", action="store_true", help="only the ResNet cell")
    p.add_argument("--resnet-width", type=int, default=8)
    p.add_argument("--resnet-seeds", type=int, nargs="+", default=None, help="default: the first of --seeds")
    p.add_argument("--no-auto", action="store_true", help="skip the auto-stop units even where the auto stop exists")
    p.add_argument("--config", default=None, help="a JSON file of ExperimentConfig overrides")
    p.add_argument("--allow-code-change", action="store_true",
                   help="resume a folder whose units other code ran (recorded in its matrix.json)")
    args = p.parse_args(argv)
    unknown = sorted(set(args.methods) - set(BASE_METHODS) - set(ACCELERATED))
    if unknown:
        p.error(f"unknown methods {unknown}")
    if not (math.isfinite(args.budget_factor) and args.budget_factor > 0):
        p.error("--budget-factor must be a finite number > 0")
    overrides = json.loads(Path(args.config).read_text()) if args.config else {}
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)

    auto = auto_stop_available() and not args.no_auto
    log(f"matrix: out {args.out}, limit {args.limit}, seeds {args.seeds}, kinds {args.kinds}, methods {args.methods}, "
        f"budget {args.budget_factor} x Retrain, auto stop {'yes' if auto else 'no'}")
    try:
        done = run_matrix(args.out, args.kinds, args.seeds, args.methods, args.limit, args.budget_factor, args.resnet,
                          not args.no_convnet, args.resnet_width, args.resnet_seeds, overrides,
                          False if args.no_auto else None, log, args.allow_code_change)
    except ValueError as exc:
        if not str(exc).startswith("bench_matrix:"):
            raise
        p.error(str(exc).removeprefix("bench_matrix: "))
    log(f"matrix: {done} units run in {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
