"""End-to-end unlearning experiments: the job behind ``fastblend demo`` and ``fastblend run``.

One repetition (seed):

1. load the data set and make the docs/method.md §6 split (retain / forget, unseen 70% / evaluation 30%);
2. train the original model on the whole training set, or load it from the cache;
3. **Retrain** (the gold standard) on the real retain set;
4. the **base** AMU method on the full retain set;
5. the same method **accelerated** by Blend + A-AMU: a :class:`fastblend.BlendIndex` (features ->
   grouping -> blend of every cluster) built once per seed and timed apart as ``index``, then per
   request the split (``index.reduce``) and unlearning on the reduced retain set (device synchronised);
6. evaluation of every model on the real retain set, the forget set, the held-out evaluation split
   and the MIA of docs/method.md §4.

Results (JSON + CSV), the settings and plots go to the output folder (:mod:`fastblend.experiments.results`;
``summarise`` aggregates seeds into mean ± std); the settings are :mod:`fastblend.experiments.settings`'s.

Under ``torch.distributed`` (``torchrun --nproc_per_node=P -m fastblend run ...``; the command line
initialises the default group) every rank runs the same seeds on the same data: training and
unlearning are data parallel (:func:`fastblend.unlearn`), grouping and Blend split their work as
they do; only rank 0 writes files (results, plots, the model cache) and logs, and each seed's
record holds every rank's stage times (``rank_stage_times``, gathered with ``all_gather_objects``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..condensation import BlendIndex, ReducedRetainSet, matcher_seed
from ..condensation.recipe import blend_lr
from ..condensation.recipe import default_ipc as blend_default_ipc
from ..datasets import dataset_info, load_dataset, make_split
from ..distributed import all_gather_objects, is_distributed, is_main_process, world_size
from ..evaluation import (
    KLOM_GROUPS,
    SeedBand,
    SmallGroupWarning,
    fixed_band,
    hardest,
    klom_summary,
    margins,
    mia_with_interval,
)
from ..grouping import Clustering, extract_features, group
from ..methods import SSDConfig, config_class, planned_steps, unlearn
from ..methods import train_model as _train_model
from ..metrics import StageTimer, accuracy, mia_score_from_logits, predict_logits
from ..models import ConvNet3, build_model
from ..tracking import Tracker, band_from_ensemble, eval_every_for, time_to_target
from . import cache
from .machine import load_average, machine_info
from .results import format_table, plots_available, prepare_output, summarise, write_results
from .settings import (
    DEMO,
    DEMO_RECIPE,
    NOT_PER_REQUEST,
    STAGES,
    VARIANTS,
    ConfigError,
    ExperimentConfig,
    resolve_device,
    with_overrides,
)

# the settings (.settings) and the result files (.results) are re-exported here, where the command
# line and users have always found them
__all__ = ["DEMO", "DEMO_RECIPE", "NOT_PER_REQUEST", "STAGES", "VARIANTS", "ConfigError", "ExperimentConfig",
           "check_against_data", "check_evaluable", "default_ipc", "evaluate_model", "format_table", "hard_split",
           "original_model", "plots_available", "prepare_output", "reduce_retain", "retrain_ensemble",
           "run_experiment", "run_rounds", "run_seed", "summarise", "with_overrides", "write_results",
           "yardstick"]















def _build(cfg: ExperimentConfig, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    if cfg.model.lower().replace("-", "").replace("_", "") == "convnet3":
        return ConvNet3(in_channels, num_classes, image_size, width=cfg.width)
    return build_model(cfg.model, in_channels, num_classes, image_size)


def original_model(cfg: ExperimentConfig, train_images: torch.Tensor, train_labels: torch.Tensor,
                   num_classes: int, seed: int, device: torch.device, progress: bool) -> tuple[nn.Module, float, bool]:
    """The trained model to unlearn from, trained on the whole training set or loaded from the cache.

    Returns ``(model, training seconds, loaded_from_cache)``. The cache (:mod:`fastblend.experiments.cache`) is keyed
    by the model and training settings, the seed and a fingerprint of the training data.
    """
    settings = {"dataset": cfg.dataset, "per_class": cfg.per_class, "limit": cfg.limit, "model": cfg.model,
                "width": cfg.width, "train": cfg.train_config, "seed": seed, "classes": num_classes}
    path = cache.model_path(cache.cache_root(cfg.cache_dir), settings,
                            cache.data_fingerprint(train_images, train_labels), f"{cfg.dataset}-{cfg.model}")
    with torch.random.fork_rng(devices=[]):  # the initial weights come from the seed, not the global RNG
        torch.manual_seed(seed)
        model = _build(cfg, train_images.shape[1], num_classes, train_images.shape[-1])
    loaded = cache.load_model(model, path)
    if is_distributed() and not all(all_gather_objects(loaded)):  # every rank trains, or none does
        if loaded:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = _build(cfg, train_images.shape[1], num_classes, train_images.shape[-1])
        loaded = False
    if loaded:
        return model.to(device), 0.0, True
    timer = StageTimer(device)
    with timer("train"):
        model = _train_model(model, (train_images, train_labels), config=cfg.train_config, device=device,
                             seed=seed, progress=progress)
    if is_main_process():
        cache.save_model(model, path)
    return model, timer.stages["train"], False


def blend_index(cfg: ExperimentConfig, train, ipc: int, seed: int, device: torch.device,
                progress: bool) -> tuple[BlendIndex, float, bool]:
    """The training set's :class:`BlendIndex` (features, grouping, a blend for every cluster: the work
    done once per training set), built or loaded from the cache.

    Returns ``(index, seconds spent here, loaded_from_cache)``; ``index.timings`` keeps the seconds of
    the build that made it (``features``, ``grouping``, ``blend``, ``total``). The cache key holds every
    setting the blends depend on, the seed and a fingerprint of the training data.
    """
    settings = {"dataset": cfg.dataset, "per_class": cfg.per_class, "limit": cfg.limit, "ipc": ipc,
                "iterations": cfg.blend_iterations, "amp": cfg.blend_amp, "grouping": cfg.grouping_backend,
                "matcher_width": cfg.blend_width,
                "seed": seed, "classes": train.num_classes, "device": device.type}
    path = cache.model_path(cache.cache_root(cfg.cache_dir), settings,
                            cache.data_fingerprint(train.images, train.labels), f"{cfg.dataset}-index", "indexes")
    timer = StageTimer(device)
    with timer("load"):
        index = cache.load_index(path)
    loaded = index is not None and torch.equal(index.labels.cpu(), train.labels.cpu())
    if is_distributed():  # every rank builds (its share of the work), or none does
        loaded = all(all_gather_objects(loaded))
    if loaded:
        return index, timer.stages["load"], True
    index = build_index(cfg, train, ipc, seed, device, progress)
    if is_main_process():
        cache.save_index(index, path)
    return index, index.timings["total"], False


def build_index(cfg: ExperimentConfig, train, ipc: int, seed: int, device: torch.device | None,
                progress: bool) -> BlendIndex:
    """Features, grouping (``cfg.grouping_backend``) and :meth:`BlendIndex.build` of ``train``, each stage
    timed into ``index.timings`` (``features``, ``grouping``, ``blend``, ``total``): the one way ``run``
    (through the cache, :func:`blend_index`) and ``condense`` condense."""
    timer = StageTimer(device)
    clustering = _grouped(cfg, train, ipc, seed, device, progress, timer)
    with timer("blend"):
        index = BlendIndex.build(train.images, train.labels, clustering=clustering, iterations=cfg.blend_iterations,
                                 matcher=blend_matcher(cfg, train.images, seed, device),
                                 seed=seed, device=device, progress=progress, amp=cfg.blend_amp)
    index.timings.update(features=timer.stages["features"], grouping=timer.stages["grouping"],
                         blend=index.timings.get("blend", timer.stages["blend"]), total=timer.total)
    return index


def heldout_tensors(split) -> tuple[torch.Tensor, torch.Tensor]:
    """The MIA's held-out group (docs/method.md §4.3): the unseen pool plus the evaluation split, their
    images of the forget set's classes (``(images, labels)``), so classwise forgetting's group is not
    the ~60 evaluation images of one class."""
    idx = torch.cat([split.unseen, split.evaluation]).sort().values
    x, y = split.test.images[idx], split.test.labels[idx]
    keep = torch.isin(y, torch.unique(split.train.labels[split.forget]))
    return x[keep], y[keep]


def klom_retain_rows(split, size: int, seed: int) -> torch.Tensor:
    """Positions in the retain set (``[min(size, |D_r|)]`` int64, sorted) of KLOM's retain sample,
    drawn with a generator of its own seeded from ``seed``."""
    n = int(split.retain.numel())
    g = torch.Generator().manual_seed(1_000_003 * (seed + 1))
    return torch.randperm(n, generator=g)[:min(size, n)].sort().values


def evaluate_model(model: nn.Module, split, device: torch.device, cfg: ExperimentConfig,
                   heldout: tuple[torch.Tensor, torch.Tensor], retain_rows: torch.Tensor, seed: int,
                   ) -> tuple[dict, dict, dict]:
    """The yardstick's evaluation of one model (docs/method.md §4): accuracies, the MIA of
    ``cfg.mia_statistic`` on the forget set against ``heldout`` with its bootstrap interval and group
    sizes (``mia``, ``mia_low``, ``mia_high``, ``mia_se``, ``mia_n_forget``, ``mia_n_heldout``,
    ``mia_small``), the paper's statistic on the evaluation split beside it (``mia_paper``); the
    per-sample losses on the forget and unseen sets; and the margins ``[N]`` of each KLOM group
    (forget, the retain sample ``retain_rows``, evaluation)."""
    sets = {"retain": split.retain_tensors(), "forget": split.forget_tensors(), "eval": split.eval_tensors(),
            "unseen": split.unseen_tensors(), "heldout": heldout}
    logits = {name: predict_logits(model, x, device=device).float().cpu() for name, (x, _) in sets.items()}
    labels = {name: y for name, (_, y) in sets.items()}

    def acc(name: str) -> float:
        return float((logits[name].argmax(1) == labels[name]).double().mean() * 100) if labels[name].numel() else \
            math.nan

    with warnings.catch_warnings():  # marked in the row (mia_small); the run logs it once and the table flags it
        warnings.simplefilter("ignore", SmallGroupWarning)
        mia = mia_with_interval(logits["forget"], labels["forget"], logits["heldout"], labels["heldout"],
                                statistic=cfg.mia_statistic, seed=seed, min_group=cfg.mia_min_group)
    keep = torch.isin(labels["eval"], torch.unique(labels["forget"]))
    metrics = {"retain_acc": acc("retain"), "forget_acc": acc("forget"), "test_acc": acc("eval"), **mia.as_dict(),
               "mia_paper": mia_score_from_logits(logits["forget"], labels["forget"], logits["eval"][keep],
                                                  labels["eval"][keep])}
    losses = {name: F.cross_entropy(logits[name], labels[name], reduction="none") for name in ("forget", "unseen")}
    marg = {"forget": margins(logits["forget"], labels["forget"]),
            "retain": margins(logits["retain"][retain_rows], labels["retain"][retain_rows]),
            "eval": margins(logits["eval"], labels["eval"])}
    return metrics, losses, marg


def ensemble_seed(seed: int, member: int) -> int:
    """The training seed of member ``member`` of repetition ``seed``'s Retrain ensemble (member 0 is the
    run's own Retrain, trained with ``seed``)."""
    return seed + 1000 * member


def _retrain_cached(cfg: ExperimentConfig, split, train_seed: int, device: torch.device, progress: bool,
                    ) -> tuple[nn.Module, float, bool]:
    """Retrain on ``split``'s retain set with ``train_seed``, or its cached copy: ``(model, seconds,
    loaded)``. The cache key holds the data settings and fingerprint, the forget set, the recipe and
    the seed."""
    train = split.train
    forget_key = hashlib.sha256(split.forget.to(torch.int64).numpy().tobytes()).hexdigest()[:16]
    settings = {"dataset": cfg.dataset, "per_class": cfg.per_class, "limit": cfg.limit, "model": cfg.model,
                "width": cfg.width, "kind": "retrain", "recipe": cfg.retrain_config, "seed": train_seed,
                "classes": train.num_classes, "forget": forget_key}
    path = cache.model_path(cache.cache_root(cfg.cache_dir), settings,
                            cache.data_fingerprint(train.images, train.labels), f"{cfg.dataset}-{cfg.model}-retrain")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(train_seed)
        model = _build(cfg, train.images.shape[1], train.num_classes, train.images.shape[-1])
    loaded = cache.load_model(model, path)
    if is_distributed():  # every rank trains, or none does
        loaded = all(all_gather_objects(loaded))
    if loaded:
        return model.to(device), 0.0, True
    res = unlearn("retrain", model.to(device), split.retain_tensors(), split.forget_tensors(),
                  config=cfg.retrain_config or None, device=device, seed=train_seed, progress=progress)
    if is_main_process():
        cache.save_model(res.model, path)
    return res.model, res.seconds, False


def retrain_ensemble(cfg: ExperimentConfig, split, seed: int, device: torch.device, progress: bool,
                     log: Callable[[str], None]) -> tuple[list[nn.Module], list[dict]]:
    """Members 1 .. ``cfg.retrain_seeds − 1`` of the Retrain ensemble (member 0 is the run's own, timed
    Retrain), each trained with :func:`ensemble_seed` or loaded from the model cache. Returns the models
    and a record per member (``seed``, ``seconds``, ``cached``)."""
    models, records = [], []
    for j in range(1, cfg.retrain_seeds):
        s = ensemble_seed(seed, j)
        m, secs, cached = _retrain_cached(cfg, split, s, device, progress)
        log(f"[seed {seed}] Retrain ensemble member {j} (seed {s}): "
            + ("loaded from cache" if cached else f"trained in {secs:.1f}s"))
        models.append(m)
        records.append({"member": j, "seed": s, "seconds": secs, "cached": cached})
    return models, records


def hard_split(cfg: ExperimentConfig, train, test, seed: int, device: torch.device, progress: bool,
               log: Callable[[str], None]):
    """The ``hard`` forget kind (docs/method.md §6): a uniform candidate pool of ``cfg.hard_pool`` times
    the forget set's size (drawn as ``make_split(forget="uniform")`` with that fraction and ``seed``), a
    proxy model trained on everything else (Retrain's recipe, seed ``seed + 500``, cached), and the
    forget set = the ``round(forget_fraction · N)`` pool images with the highest loss under the proxy
    (:func:`fastblend.evaluation.hardest`). Returns ``(split, info)``; ``split.forget_mode`` is
    ``"hard"``."""
    pool_split = make_split(train, test, forget="uniform", forget_fraction=cfg.forget_fraction * cfg.hard_pool,
                            seed=seed)
    proxy, secs, cached = _retrain_cached(cfg, pool_split, seed + 500, device, progress)
    pool = pool_split.forget
    x, y = pool_split.forget_tensors()
    losses = F.cross_entropy(predict_logits(proxy, x, device=device).float().cpu(), y, reduction="none")
    n = len(train)
    k = min(max(math.floor(cfg.forget_fraction * n + 0.5), 1), pool.numel())
    forget = hardest(pool, losses, k)
    split = dataclasses.replace(make_split(train, test, forget=forget, seed=seed), forget_mode="hard")
    chosen = torch.isin(pool, forget)
    info = {"pool": int(pool.numel()), "forget": k, "proxy_seed": seed + 500, "proxy_seconds": secs,
            "proxy_cached": cached, "pool_loss_mean": float(losses.mean()),
            "forget_loss_mean": float(losses[chosen].mean()),
            "proxy_forget_acc": float((predict_logits(proxy, train.images[forget], device=device).argmax(1).cpu()
                                       == train.labels[forget]).double().mean() * 100)}
    log(f"[seed {seed}] hard forget set: the {k} highest-loss of a {pool.numel()}-image uniform pool under a proxy "
        + ("loaded from cache" if cached else f"trained in {secs:.1f}s") + " that never saw the pool")
    return split, info


def yardstick(cfg: ExperimentConfig, rows: dict[str, dict], ensemble: list[dict], marg: dict[str, dict],
              ensemble_margins: list[dict], split) -> tuple[dict, SeedBand]:
    """The band, the do-nothing control and KLOM for one repetition (docs/method.md §4.1-§4.4).

    ``rows``: the variants' result rows (updated in place: per metric the band's edges
    ``band_<m>_low/high`` and the distance ``dist_<m>``, ``in_band``, the ``setting`` label, KLOM
    percentiles ``klom_<group>_<stat>``; the Retrain row's KLOM is the noise floor); ``ensemble``: each
    Retrain member's metrics (member 0 the run's Retrain); ``marg``: variant -> group -> margins;
    ``ensemble_margins``: the members' margins. Returns ``(record, band)``: the record holds the band
    (``as_dict``), the label and KLOM."""
    if cfg.band_kind == "fixed" or len(ensemble) < 1:
        band = fixed_band(rows["retrain"], cfg.band)
    else:
        mia_se = sum(e["mia_se"] for e in ensemble) / len(ensemble)
        band = band_from_ensemble(ensemble, {"forget_acc": int(split.forget.numel()),
                                             "test_acc": int(split.evaluation.numel()),
                                             "mia": int(ensemble[0]["mia_n_forget"])},
                                  mia_se, z=cfg.band_z, floor=cfg.band_floor)
    setting = "easy" if band.is_easy(rows["original"]) else "hard"
    for row in rows.values():
        dist = band.distance(row)
        for m, d in dist.items():
            mb = getattr(band, m)
            row.update({f"band_{m}_low": mb.low, f"band_{m}_high": mb.high, f"dist_{m}": d})
        row["in_band"] = float(band.contains(row))
        row["setting"] = setting
    orig = rows["original"]
    orig["do_nothing_reaches_target"] = bool(orig["in_band"])
    out: dict = {"band": band.as_dict(), "setting": setting, "retrain_seeds": len(ensemble),
                 "ensemble": [{k: e[k] for k in ("forget_acc", "test_acc", "mia", "mia_low", "mia_high")}
                              for e in ensemble]}
    if len(ensemble_margins) >= 2:
        groups, start = {}, 0
        for g in KLOM_GROUPS:
            size = int(ensemble_margins[0][g].numel())
            groups[g] = slice(start, start + size)
            start += size

        def flat(per_group: dict) -> torch.Tensor:
            return torch.cat([per_group[g] for g in KLOM_GROUPS])

        retrain = torch.stack([flat(m) for m in ensemble_margins])
        compared = {v: flat(marg[v])[None] for v in marg if v != "retrain"}
        summary = klom_summary(compared, retrain, groups, estimator=cfg.klom_estimator)
        for v in compared:
            rows[v].update(summary.flat(v))
        if "retrain" in rows:
            rows["retrain"].update(summary.flat("floor"))
        out["klom"] = {"values": summary.values, "sizes": summary.sizes, "estimator": summary.estimator,
                       "rotations": summary.rotations, "groups": summary.groups,
                       "note": "the retrain row's klom_* columns are the noise floor (Retrain against Retrain)"}
    else:
        out["klom"] = None
    return out, band


def request_reduced(index: BlendIndex, forget: torch.Tensor) -> tuple[ReducedRetainSet, float]:
    """A forget request against the index, timed whole: ``index.reduce`` (the split and the blends'
    selection) and, for an in-memory source, gathering the residual rows into the set's image tensor
    (which ``reduce`` leaves to the first read). Returns ``(reduced set, seconds)``."""
    t0 = time.perf_counter()
    reduced = index.reduce(forget)
    if reduced.in_memory:
        reduced.tensors()  # the residual rows' copy belongs to the request, not to the unlearning
    return reduced, time.perf_counter() - t0


def blend_matcher(cfg: ExperimentConfig, images: torch.Tensor, seed: int, device: torch.device | None,
                  round_index: int = 0):
    """Blend's matcher for ``cfg``: ``None`` (the library's default, the paper's width-128 random ConvNet-3
    seeded with ``matcher_seed(seed)``) or the same network at ``cfg.blend_width`` channels, seeded with
    ``matcher_seed(seed, round_index)`` (a multi-round reference run's fresh matcher)."""
    if cfg.blend_width == 128 and round_index == 0:
        return None
    from ..models import random_convnet

    dev = device if device is not None else images.device
    return random_convnet(images.shape[1], images.shape[-1], matcher_seed(seed, round_index), device=dev,
                          width=cfg.blend_width)


def _grouped(cfg: ExperimentConfig, train, ipc: int, seed: int, device: torch.device | None, progress: bool,
             timer: StageTimer) -> Clustering:
    """Features then per-class k-means of ``train``, each stage timed into ``timer``."""
    with timer("features"):
        feats = extract_features(train.images, device=device, seed=seed, progress=progress)
    with timer("grouping"):
        return group(feats, train.labels, ipc, backend=cfg.grouping_backend, seed=seed,
                     num_classes=train.num_classes)


def reduce_retain(cfg: ExperimentConfig, train, forget: torch.Tensor, ipc: int, seed: int,
                  device: torch.device | None, progress: bool) -> tuple[Clustering, ReducedRetainSet, dict]:
    """The training set's :class:`BlendIndex` (:func:`build_index`, as ``run`` builds it; not cached) and
    the forget request against it: the clustering, the reduced retain set and the seconds of each stage
    (``features``, ``grouping``, ``blend`` of the index build; ``split``: the request)."""
    index = build_index(cfg, train, ipc, seed, device, progress)
    reduced = index.reduce(forget)
    stages = {k: float(index.timings.get(k, 0.0)) for k in ("features", "grouping", "blend")}
    stages["split"] = reduced.timings["request"]
    reduced.timings.update(stages)
    return index.clustering, reduced, stages


def _prefix_column(info: dict | None) -> str:
    """The frozen prefix's cut where only the model's head trained (docs/method.md §7.11); "" for the whole model."""
    return "" if not info or "skipped" in info else info["at"]


def _tracked(cfg: ExperimentConfig, trackers: dict, variant: str, method: str, config: dict, retain_size: int,
             split, seed: int, budget: float | None = None, heldout: tuple | None = None) -> dict:
    """``unlearn`` keyword arguments that record ``variant``'s quality curve (time to target), or none;
    ``budget`` stops the training at the first evaluation past that many seconds; the MIA of the curve
    is ``cfg.mia_statistic`` against ``heldout`` (as the final evaluation's)."""
    if not cfg.track:
        return {}
    trackers[variant] = Tracker(split.forget_tensors(), split.eval_tensors(), max_samples=cfg.track_samples,
                                seed=seed, budget=budget, heldout=heldout, mia=cfg.mia_statistic,
                                mia_samples=None if heldout is not None else cfg.track_samples)
    steps = planned_steps(method, config or None, retain_size, whole_class=split.whole_class)
    return {"callback": trackers[variant], "eval_every": eval_every_for(steps, cfg.track_evaluations)}


def _time_to_target(cfg: ExperimentConfig, rows: dict[str, dict], trackers: dict, band: SeedBand | None) -> dict:
    """Times to Retrain's band (``t_target``, ``None`` = not reached) and the speed-ups between them.
    The do-nothing row (the original) reaches it at 0 s exactly when it is inside the band; the
    speed-ups divide by the Retrain time of this same run (``retrain_time_in_run``)."""
    if band is None or "retrain" not in trackers or not trackers["retrain"].points:
        return {}
    for variant, tracker in trackers.items():
        row = rows[variant]
        t = time_to_target(tracker.points, None, band)
        row.update(t_target=t, target_reached=float(t is not None), t_eval_tracking=tracker.eval_seconds)
    if "original" in rows:
        inside = band.contains(rows["original"])
        rows["original"].update(t_target=0.0 if inside else None, target_reached=float(inside))
    for variant in ("base", "accelerated"):
        t = rows.get(variant, {}).get("t_target")
        for ref in ("retrain", "base"):
            t_ref = rows.get(ref, {}).get("t_target")
            if variant in rows and ref in rows and ref != variant:
                rows[variant][f"speedup_target_vs_{ref}"] = t_ref / max(t, 1e-12) if t and t_ref else None
                if t and t_ref is None:  # ref never reached the band: its whole run is a lower bound
                    rows[variant][f"speedup_target_vs_{ref}_lower"] = rows[ref]["t_total"] / max(t, 1e-12)
        if variant in rows:
            rows[variant]["retrain_time_in_run"] = True
    mid = {m: (getattr(band, m).low + getattr(band, m).high) / 2 for m in ("forget_acc", "test_acc", "mia")}
    half = {m: getattr(band, m).half_width for m in ("forget_acc", "test_acc", "mia")}
    return {"band": half, "reference": mid, "band_kind": band.kind,
            "curves": {v: tr.curve() for v, tr in trackers.items()}}


# --------------------------------------------------------------------------------------------
# one repetition
# --------------------------------------------------------------------------------------------
def run_seed(cfg: ExperimentConfig, seed: int, out_dir: Path, log: Callable[[str], None],
             on_result: Callable[[dict], None] | None = None) -> dict:
    """One repetition; returns its record (rows, rounds, split). ``on_result`` receives the record as
    soon as it is complete, before the plots are drawn."""
    device = _rank_device(resolve_device(cfg.device))
    progress = not cfg.quiet and is_main_process()
    train, test = load_dataset(cfg.dataset, cfg.data_root, per_class=cfg.per_class, limit=cfg.limit)
    hard_info = None
    if cfg.forget == "hard":
        split, hard_info = hard_split(cfg, train, test, seed, device, progress, log)
    else:
        split = make_split(train, test, forget=cfg.forget, forget_fraction=cfg.forget_fraction,
                           forget_class=cfg.forget_class, seed=seed)
    heldout = heldout_tensors(split)
    retain_rows = klom_retain_rows(split, cfg.klom_retain, seed)
    retain, forget, unseen = split.retain_tensors(), split.forget_tensors(), split.unseen_tensors()
    ipc = cfg.ipc if cfg.ipc is not None else default_ipc(cfg, train)
    check_against_data(cfg, split, ipc)
    check_evaluable(cfg, split, heldout)
    log(f"[seed {seed}] {train.name}: {len(train)} train ({split.retain.numel()} retain, {split.forget.numel()} "
        f"forget, {cfg.forget}), {split.unseen.numel()} unseen, {split.evaluation.numel()} evaluation; ipc {ipc}")

    model, train_seconds, cached = original_model(cfg, train.images, train.labels, train.num_classes, seed,
                                                  device, progress)
    log(f"[seed {seed}] original model: {'loaded from cache' if cached else f'trained in {train_seconds:.1f}s'}")
    rows: dict[str, dict] = {}
    losses: dict[str, dict] = {}
    marg: dict[str, dict] = {}
    trackers: dict[str, Tracker] = {}

    def record(variant: str, method: str, m: nn.Module, stages: dict[str, float]) -> None:
        timer = StageTimer(device)
        with timer("evaluation"):
            metrics, losses[variant], marg[variant] = evaluate_model(m, split, device, cfg, heldout, retain_rows,
                                                                     seed)
        stages = {**stages, **timer.stages}
        total = sum(v for k, v in stages.items() if k not in NOT_PER_REQUEST)
        rows[variant] = {"variant": variant, "method": method, "seed": seed, **metrics,
                         **{f"t_{k}": stages.get(k, 0.0) for k in STAGES}, "t_total": total}
        log(f"[seed {seed}] {variant:<12} {method:<14} {total:8.1f}s  retain {metrics['retain_acc']:5.1f}  "
            f"forget {metrics['forget_acc']:5.1f}  test {metrics['test_acc']:5.1f}  MIA {metrics['mia']:5.1f} "
            f"[{metrics['mia_low']:.1f}, {metrics['mia_high']:.1f}]")

    record("original", "trained", model, {"unlearning": 0.0})
    rows["original"]["t_train"] = train_seconds
    rows["original"]["cached"] = cached

    ensemble: list[dict] = []
    ensemble_margins: list[dict] = []
    ensemble_records: list[dict] = []
    if cfg.run_retrain:
        res = unlearn("retrain", model, retain, forget, config=cfg.retrain_config or None, device=device, seed=seed,
                      progress=progress, **_tracked(cfg, trackers, "retrain", "retrain", cfg.retrain_config,
                                                    len(retain[1]), split, seed, heldout=heldout))
        record("retrain", "retrain", res.model, {"unlearning": res.seconds})
        ensemble.append(rows["retrain"])
        ensemble_margins.append(marg["retrain"])
        ensemble_records.append({"member": 0, "seed": seed, "seconds": res.seconds, "cached": False})
        members, records = retrain_ensemble(cfg, split, seed, device, progress, log)
        for member, rec in zip(members, records):
            metrics, _, member_margins = evaluate_model(member, split, device, cfg, heldout, retain_rows, seed)
            ensemble.append(metrics)
            ensemble_margins.append(member_margins)
            ensemble_records.append({**rec, **{k: metrics[k] for k in ("forget_acc", "test_acc", "mia")}})

    if cfg.run_base:
        budget = cfg.base_budget
        if budget == "retrain":
            budget = rows["retrain"]["t_unlearning"]
        res = unlearn(cfg.method, model, retain, forget, unseen=unseen, config=cfg.base_config or None,
                      device=device, seed=seed, progress=progress, stop=_stop(cfg, cfg.method),
                      **_tracked(cfg, trackers, "base", cfg.method, cfg.base_config, len(retain[1]), split, seed,
                                 budget, heldout))
        record("base", cfg.method, res.model, {"unlearning": res.seconds})
        rows["base"].update(_stop_columns(res.info.get("auto_stop")))
        if budget is not None:  # the budget's own tracker says whether it was spent (an auto stop also ends a run)
            tracker = trackers.get("base")
            hit = tracker.stopped if tracker is not None else \
                "stopped_at_step" in res.info and not (res.info.get("auto_stop") or {}).get("stopped")
            rows["base"].update(budget_seconds=float(budget), stopped_at_budget=float(hit))

    index, index_seconds, index_cached = blend_index(cfg, train, ipc, seed, device, progress)
    log(f"[seed {seed}] Blend index: " + ("loaded from cache" if index_cached else f"built in {index_seconds:.1f}s")
        + f" ({index.num_blends} blends, built once per training set)")
    clustering = index.clustering
    reduced, request = request_reduced(index, split.forget)
    stages = {"split": request, "index": index_seconds}
    res = unlearn(cfg.accelerated, model, reduced, forget, unseen=unseen, config=cfg.accelerated_config or None,
                  device=device, seed=seed, progress=progress, stop=_stop(cfg, cfg.accelerated),
                  **_tracked(cfg, trackers, "accelerated", cfg.accelerated, cfg.accelerated_config, len(reduced),
                             split, seed, heldout=heldout))
    if "accelerated" in trackers:  # per request its curve starts after the split (the index is built beforehand)
        for point in trackers["accelerated"].points:
            point.seconds += sum(v for k, v in stages.items() if k not in NOT_PER_REQUEST)
    stages["unlearning"] = res.seconds
    record("accelerated", cfg.accelerated, res.model, stages)
    rows["accelerated"].update({"reduced_size": len(reduced), "retain_size": int(split.retain.numel()),
                                "compression": reduced.compression, "blend_loss_initial": reduced.initial_loss,
                                "blend_loss_final": reduced.final_loss, "ipc": ipc,
                                "grouping_backend": clustering.backend, **_stop_columns(res.info.get("auto_stop")),
                                "request": res.info.get("request", ""),  # the recipe that ran (method.md §7.6, §7.10)
                                "frozen_prefix": _prefix_column(res.info.get("frozen_prefix")),
                                "index_blend": index.timings["blend"], "index_cached": index_cached,
                                "index_build_seconds": index.timings.get("total", index_seconds),
                                **{f"backend_{op}": name for op, name in {**reduced.settings.get("backends", {}),
                                                                          **res.info.get("backends", {})}.items()}})

    for variant in ("base", "accelerated"):
        if variant in rows:
            for ref in ("base", "retrain"):
                if ref in rows and ref != variant:
                    rows[variant][f"speedup_vs_{ref}"] = rows[ref]["t_total"] / max(rows[variant]["t_total"], 1e-12)
    if "retrain" in rows:
        for row in rows.values():
            for key in ("retain_acc", "forget_acc", "test_acc", "mia"):
                row[f"gap_{key}"] = row[key] - rows["retrain"][key]

    yard, band = yardstick(cfg, rows, ensemble, marg, ensemble_margins, split) if "retrain" in rows else (None, None)
    if yard is not None:
        yard["ensemble_members"] = ensemble_records
        yard["mia"] = {"statistic": cfg.mia_statistic, "min_group": cfg.mia_min_group,
                       "heldout": "unseen pool + evaluation split, forget classes",
                       "heldout_size": int(heldout[1].numel()),
                       "interval": "bootstrap percentile 95%, 400 stratified resamples",
                       "paper_column": "mia_paper: docs/method.md §4 statistic on the evaluation split"}
        if hard_info is not None:
            yard["hard"] = hard_info
        if any(r.get("mia_small") for r in rows.values()):
            log(f"[seed {seed}] warning: the MIA's groups hold {rows['original']['mia_n_forget']} forget and "
                f"{rows['original']['mia_n_heldout']} held-out samples, one below mia_min_group={cfg.mia_min_group}: "
                f"its scores are mostly noise (marked mia_small)")
        log(f"[seed {seed}] setting: {yard['setting']} (the untouched original is "
            + ", ".join(f"{m} {rows['original'][f'dist_{m}']:+.1f}" for m in ("forget_acc", "test_acc", "mia"))
            + " from Retrain's band)")
    target = _time_to_target(cfg, rows, trackers, band)
    round_rows = run_rounds(cfg, seed, train, split, index, model, unseen, device, log) \
        if cfg.rounds > 1 else []
    result = {"seed": seed, "rows": list(rows.values()), "rounds": round_rows, "split": split.summary(),
              "time_to_target": target, "yardstick": yard}
    if is_distributed():  # every rank's own stage times, in rank order
        mine = {row["variant"]: {k: v for k, v in row.items() if k.startswith("t_")} for row in rows.values()}
        result["world_size"] = world_size()
        result["rank_stage_times"] = all_gather_objects(mine)
    if on_result is not None:
        on_result(result)

    if cfg.plots and is_main_process():
        seed_dir = out_dir / f"seed{seed}"
        seed_dir.mkdir(parents=True, exist_ok=True)
        from . import plots

        plots.stage_times(list(rows.values()), seed_dir / "stage_times.png")
        plots.loss_histograms(losses, seed_dir / "loss_histograms.png")
        plots.save_blend_grid(reduced, train.denormalize(), clustering, seed_dir / "blend_grid.png",
                              n=min(train.num_classes, 12))
        if target:
            plots.quality_vs_time(target["curves"], target["reference"], target["band"],
                                  seed_dir / "quality_vs_time.png")
    return result


def _stop(cfg: ExperimentConfig, method: str) -> str | None:
    """``unlearn``'s ``stop`` for a variant: ``"auto"`` under ``cfg.stop == "auto"`` unless the method is one-shot."""
    return "auto" if cfg.stop == "auto" and config_class(method) is not SSDConfig else None


def _stop_columns(summary: dict | None) -> dict:
    """The accelerated row's auto-stop columns (``stop="none"``: ``auto_stop`` 0 and nothing else)."""
    if summary is None:
        return {"auto_stop": 0.0}
    return {"auto_stop": 1.0, "auto_stopped": float(summary["stopped"]), "auto_stop_step": summary["step"],
            "auto_stop_seconds": summary["seconds"], "auto_stop_kind": summary["kind"],
            "auto_stop_reason": summary["reason"], "auto_stop_eval_seconds": summary["eval_seconds"],
            "auto_stop_restored_step": summary.get("restored_step")}


def _rank_device(device: torch.device) -> torch.device:
    """Under ``torch.distributed`` a CUDA device without an index is this rank's GPU (``LOCAL_RANK``)."""
    if device.type != "cuda" or device.index is not None or not is_distributed():
        return device
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def run_rounds(cfg: ExperimentConfig, seed: int, train, split, index: BlendIndex, model: nn.Module, unseen,
               device: torch.device, log: Callable[[str], None]) -> list[dict]:
    """Multi-round unlearning (docs/method.md §1.4): the forget set arrives in ``cfg.rounds`` cumulative parts;
    each round is a request for the cumulative forget set and unlearns from the previous round's model.
    ``cached``: every round asks ``index``; ``reference``: each round after the first blends afresh (a new
    index over ``index``'s clustering with the matcher seeded ``matcher_seed(seed, round)``)."""
    rows = []
    previous = torch.zeros(0, dtype=torch.int64)
    current = model
    for r, cumulative in enumerate(split.forget_rounds(cfg.rounds)):
        new = cumulative[~torch.isin(cumulative, previous)]
        timer = StageTimer(device)
        with timer("condense"):
            if cfg.round_mode == "reference" and r > 0:
                index = BlendIndex.build(train.images, train.labels, clustering=index.clustering,
                                         iterations=cfg.blend_iterations, seed=seed, device=device,
                                         progress=not cfg.quiet, amp=cfg.blend_amp,
                                         matcher=blend_matcher(cfg, train.images, seed, device, round_index=r))
            reduced = index.reduce(cumulative)
        fmask = torch.zeros(len(train), dtype=torch.bool)
        fmask[cumulative] = True
        round_forget = (train.images[cumulative], train.labels[cumulative])
        res = unlearn(cfg.accelerated, current, reduced, round_forget, unseen=unseen,
                      config=cfg.accelerated_config or None, device=device, seed=seed + r, progress=not cfg.quiet)
        current = res.model
        rx, ry = train.images[~fmask], train.labels[~fmask]
        rows.append({"seed": seed, "round": r, "mode": cfg.round_mode, "forget_size": int(cumulative.numel()),
                     "new_requests": int(new.numel()), "t_condense": timer.stages["condense"],
                     "t_unlearning": res.seconds, "reduced_size": len(reduced),
                     "retain_acc": accuracy(current, rx, ry, device=device),
                     "forget_acc": accuracy(current, *round_forget, device=device),
                     "test_acc": accuracy(current, *split.eval_tensors(), device=device)})
        log(f"[seed {seed}] round {r}: +{new.numel()} forgotten, condense {timer.stages['condense']:.2f}s "
            f"({cfg.round_mode}), unlearning {res.seconds:.1f}s, forget acc {rows[-1]['forget_acc']:.1f}")
        previous = cumulative
    return rows


def check_against_data(cfg: ExperimentConfig, split, ipc: int) -> None:
    """The settings that need the loaded data (checked before any training): ``rounds`` at most the
    forget set's size, ``ipc`` (given or default) within the Blend learning-rate formula's range."""
    if cfg.rounds > split.forget.numel():
        raise ConfigError("rounds", f"rounds ({cfg.rounds}) must be at most the number of forget samples "
                          f"({split.forget.numel()})")
    try:
        blend_lr(ipc)
    except ValueError:
        raise ConfigError("ipc", f"ipc {ipc} is beyond what the reference Blend learning rate "
                          "(docs/method.md §1.3) serves: at most 5277; set ipc") from None


#: the fewest forget and held-out images the membership attack and its interval score (docs/method.md §4.3)
MIA_MIN_GROUP = 5


def check_evaluable(cfg: ExperimentConfig, split, heldout: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Before any training: the split holds enough forget images, and held-out images of their classes, for the
    membership attack every row is scored with (a ``ConfigError`` naming the setting to raise, not an error from
    the evaluation after the models were trained)."""
    n_forget, n_heldout = int(split.forget.numel()), int(heldout[1].numel())
    if min(n_forget, n_heldout) >= MIA_MIN_GROUP:
        return
    setting = "forget_fraction" if n_forget < MIA_MIN_GROUP and cfg.forget != "classwise" else \
        "per_class" if cfg.per_class is not None else "limit"
    raise ConfigError(setting, f"the split holds {n_forget} forget images and {n_heldout} held-out images of their "
                               f"classes; the membership attack needs at least {MIA_MIN_GROUP} of each: raise "
                               "limit or per_class (more images per class), or forget_fraction")


def default_ipc(cfg: ExperimentConfig, train) -> int:
    info = dataset_info(cfg.dataset)
    paper = getattr(info, "paper_ipc", None)
    if paper and cfg.per_class is None and cfg.limit is None:
        return int(paper)
    return blend_default_ipc(len(train), train.num_classes)


def run_experiment(cfg: ExperimentConfig, log: Callable[[str], None] | None = None) -> dict:
    """Run every seed of ``cfg``; write ``results.json``, ``results.csv``, ``summary.csv`` (and
    ``rounds.csv``) atomically as each seed finishes, before its plots. Under ``torch.distributed``
    only rank 0 writes and logs; the other ranks return ``{}``.

    Everything is checked before any work (:meth:`ExperimentConfig.check`, the output folder); without
    matplotlib a ``RuntimeWarning`` says so once and the run goes on without plots (``config.plots``
    recorded as false).
    """
    cfg.check()
    main = is_main_process()  # under torch.distributed only rank 0 logs and writes
    log = log if log is not None and main else (lambda msg: None)
    if not main:
        cfg = with_overrides(cfg, quiet=True)  # no progress bars either
    out_dir = prepare_output(cfg.out) if main else Path(cfg.out)
    if cfg.plots and not plots_available():
        warnings.warn("matplotlib is not installed, so no plots (`pip install matplotlib`); every other output "
                      "is written", RuntimeWarning, stacklevel=2)
        cfg = with_overrides(cfg, plots=False)
    t0 = time.perf_counter()
    machine = {**machine_info(), "load_average_start": load_average()}
    per_seed: list[dict] = []
    result: dict = {}

    def finished(record: dict) -> None:
        per_seed.append(record)
        machine["load_average_end"] = load_average()
        if main:
            result.update(write_results(cfg, out_dir, per_seed, machine, time.perf_counter() - t0))

    for seed in cfg.seeds:
        run_seed(cfg, seed, out_dir, log, on_result=finished)
    return result








