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

Results (JSON + CSV), the settings and plots go to the output folder; ``summarise`` aggregates
seeds into mean ± std.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import os
import statistics
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import cache
from ._io import atomic_write_text
from .condense import Blender, BlendIndex, ReducedRetainSet, condense
from .condense.core import blend_lr
from .data import dataset_info, load_dataset, make_split
from .grouping import Clustering, extract_features, group
from .machine import machine_info
from .methods import TrainModelConfig, accelerated, config_class, unlearn
from .methods import train_model as _train_model
from .methods.config import resolve_config
from .metrics import StageTimer, accuracy, mia_score_from_logits, predict_logits
from .models import MODELS, ConvNet3, build_model
from .ops._dispatch import BACKENDS, available_backends
from .readers import canonical_name
from .tracking import Band, Tracker, eval_every_for, planned_steps, time_to_target

VARIANTS = ("original", "retrain", "base", "accelerated")
STAGES = ("features", "grouping", "split", "blend", "unlearning", "evaluation", "index")
#: stages outside a request's latency: evaluation, and the index built once per training set
NOT_PER_REQUEST = ("evaluation", "index")

# the type each ExperimentConfig setting must have (None: the setting may be None)
_PATH = (str, os.PathLike)
_TYPES: dict[str, tuple] = {
    "dataset": (str,), "data_root": (*_PATH, None), "per_class": (int, None), "limit": (int, None),
    "model": (str,), "width": (int,), "method": (str,), "accelerated_method": (str, None), "forget": (str,),
    "forget_fraction": (float, int), "forget_class": (int, None), "ipc": (int, None), "blend_iterations": (int,),
    "blend_amp": (bool,), "grouping_backend": (str,), "seeds": (list, tuple), "rounds": (int,),
    "round_mode": (str,), "run_retrain": (bool,), "run_base": (bool,), "train_config": (dict,),
    "retrain_config": (dict,), "base_config": (dict,), "accelerated_config": (dict,), "device": (str, None),
    "out": _PATH, "cache_dir": (*_PATH, None), "plots": (bool,), "quiet": (bool,),
}


class ConfigError(ValueError):
    """An :class:`ExperimentConfig` setting that cannot run; ``setting`` names it (a field name, or
    ``FASTBLEND_BACKEND`` for the environment variable)."""

    def __init__(self, setting: str, message: str):
        super().__init__(f"ExperimentConfig: {message}")
        self.setting = setting


def _is(value: Any, kinds: tuple) -> bool:
    if value is None:
        return None in kinds
    if isinstance(value, bool):  # bool is an int subclass: only a bool setting takes one
        return bool in kinds
    return isinstance(value, tuple(k for k in kinds if k is not None))


@dataclass
class ExperimentConfig:
    """Every setting of a run; saved next to the results.

    ``*_config`` dicts override the method configs' docs/method.md defaults (e.g. ``{"epochs": 5}``).
    ``ipc=None`` picks about five images per cluster (the paper's CIFAR-10 ratio) unless the data
    set has a paper value and the full data is used.
    """

    dataset: str = "animal-mnist"
    data_root: str | None = None
    per_class: int | None = None
    limit: int | None = None
    model: str = "convnet3"
    width: int = 128
    method: str = "finetune"
    accelerated_method: str | None = None
    forget: str = "uniform"
    forget_fraction: float = 0.1
    forget_class: int | None = None
    ipc: int | None = None
    blend_iterations: int = 12
    blend_amp: bool = False
    grouping_backend: str = "auto"
    seeds: list[int] = field(default_factory=lambda: [0])
    rounds: int = 1
    round_mode: str = "cached"
    run_retrain: bool = True
    run_base: bool = True
    train_config: dict = field(default_factory=lambda: {"epochs": 10, "lr": 0.05, "batch_size": 128,
                                                        "schedule": "cosine", "warmup_epochs": 1})
    retrain_config: dict = field(default_factory=dict)
    base_config: dict = field(default_factory=dict)
    accelerated_config: dict = field(default_factory=dict)
    device: str | None = None
    out: str = "fastblend-out"
    cache_dir: str | None = None
    plots: bool = True
    quiet: bool = False
    track: bool = True
    track_evaluations: int = 30
    track_samples: int | None = 2000
    band: dict = field(default_factory=lambda: Band().as_dict())

    def check(self) -> None:
        """Validate every setting without loading data or training: types, names (data set, model,
        methods, backends), ranges, the method configs' keys and values, the device and
        ``$FASTBLEND_BACKEND``. Raises :class:`ConfigError` (a ``ValueError``) naming the setting."""
        for name, kinds in _TYPES.items():
            value = getattr(self, name)
            if not _is(value, kinds):
                expected = " or ".join("None" if k is None else k.__name__ for k in kinds)
                raise ConfigError(name, f"{name} must be {expected}, got {type(value).__name__} {value!r}")
        if not self.seeds or not all(_is(s, (int,)) for s in self.seeds) or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError("seeds", f"seeds must be distinct ints, at least one, got {self.seeds!r}")
        for name in ("per_class", "limit", "width", "rounds", "ipc"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(name, f"{name} must be >= 1" + (" (or None for the default)" if name == "ipc"
                                                                    else "") + f", got {value}")
        if self.blend_iterations < 0:
            raise ConfigError("blend_iterations", f"blend_iterations must be >= 0, got {self.blend_iterations}")
        if self.ipc is not None:
            try:
                blend_lr(self.ipc)
            except ValueError:
                raise ConfigError("ipc", f"ipc {self.ipc} is beyond what the reference Blend learning rate "
                                  "(docs/method.md §1.3) serves: at most 5277") from None
        if not str(self.out):
            raise ConfigError("out", "out must name a folder, got ''")
        choices = {"round_mode": ("cached", "reference"), "forget": ("uniform", "classwise"),
                   "grouping_backend": ("auto", "faiss", "torch")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(name, f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        try:
            dataset = canonical_name(self.dataset)
        except ValueError as exc:
            raise ConfigError("dataset", str(exc)) from None
        if self.model.lower().replace("-", "").replace("_", "") not in MODELS:
            raise ConfigError("model", f"model must be one of {sorted(MODELS)}, got {self.model!r}")
        if not 0 < self.forget_fraction < 1:
            raise ConfigError("forget_fraction", f"forget_fraction must be in (0, 1), got {self.forget_fraction}")
        classes = len(dataset_info(dataset).class_names)
        if self.forget_class is not None and (self.forget != "classwise" or not 0 <= self.forget_class < classes):
            raise ConfigError("forget_class", f"forget_class must be in [0, {classes}) with forget='classwise', "
                              f"got {self.forget_class} with forget={self.forget!r}")
        if self.track_evaluations < 1:
            raise ConfigError("track_evaluations", f"track_evaluations must be >= 1, got {self.track_evaluations}")
        try:
            Band(**self.band)
        except (TypeError, ValueError) as exc:
            raise ConfigError("band", f"band: {exc}") from None
        self._check_methods()
        most = self._max_forget(classes)
        if most is not None and self.rounds > most:
            raise ConfigError("rounds", f"rounds ({self.rounds}) must be at most the number of forget samples "
                              f"(at most {most} with these settings)")
        try:
            _resolve_device(self.device)
        except (RuntimeError, ValueError) as exc:
            raise ConfigError("device", f"device {self.device!r}: {exc}") from None
        backend = os.environ.get("FASTBLEND_BACKEND", "auto").strip().lower() or "auto"
        why = "unknown" if backend not in BACKENDS + ("auto",) else available_backends().get(backend)
        if why is not None:
            raise ConfigError("FASTBLEND_BACKEND", f"$FASTBLEND_BACKEND={backend!r} cannot be used ({why}); "
                              f"expected auto or one of {BACKENDS} available here")

    def _check_methods(self) -> None:
        try:
            base_cls = config_class(self.method)
        except ValueError as exc:
            raise ConfigError("method", str(exc)) from None
        if self.accelerated_method is not None:
            try:
                acc_cls = config_class(self.accelerated_method)
            except ValueError as exc:
                raise ConfigError("accelerated_method", str(exc)) from None
        else:
            try:
                acc_cls = config_class(accelerated(self.method))
            except ValueError:
                raise ConfigError("method", f"method {self.method!r} has no accelerated variant (retrain, distill "
                                  "and ssd have none); name one with accelerated_method "
                                  "(--accelerated-method), e.g. 'a_finetune'") from None
        for name, cls in (("train_config", TrainModelConfig), ("retrain_config", config_class("retrain")),
                          ("base_config", base_cls), ("accelerated_config", acc_cls)):
            try:
                resolve_config(getattr(self, name) or None, cls, f"ExperimentConfig {name}")
            except (TypeError, ValueError) as exc:
                raise ConfigError(name, str(exc).removeprefix("ExperimentConfig ")) from None

    def _max_forget(self, classes: int) -> int | None:
        """An upper bound on the forget set's size where the settings give one (else ``None``)."""
        sizes = [v for v in (self.limit, None if self.per_class is None else self.per_class * classes) if v]
        if not sizes:
            return None
        if self.forget == "classwise":
            return min([*sizes, self.per_class or sizes[0]])
        n = min(sizes)
        return max(min(math.floor(self.forget_fraction * n + 0.5), n - 1), 1)

    @property
    def accelerated(self) -> str:
        """The accelerated method: ``accelerated_method``, else the methods package's accelerated
        variant of ``method`` (``ValueError`` for retrain, distill and ssd, which have none)."""
        return self.accelerated_method or accelerated(self.method)


#: The demo's training recipe, for the original model and for Retrain alike: SGD (momentum 0.9, weight
#: decay 5e-4) at lr 0.05, batch 128, one warm-up epoch then cosine decay, 20 epochs — run to
#: convergence (training accuracy ~100%, test accuracy flat over the last epochs of Retrain's curve).
DEMO_RECIPE = {"epochs": 20, "lr": 0.05, "batch_size": 128, "schedule": "cosine", "warmup_epochs": 1}

DEMO = ExperimentConfig(
    width=64,
    train_config=dict(DEMO_RECIPE),
    retrain_config=dict(DEMO_RECIPE),
    base_config={},
    accelerated_config={},
)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def _build(cfg: ExperimentConfig, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    if cfg.model.lower().replace("-", "").replace("_", "") == "convnet3":
        return ConvNet3(in_channels, num_classes, image_size, width=cfg.width)
    return build_model(cfg.model, in_channels, num_classes, image_size)


def original_model(cfg: ExperimentConfig, train_images: torch.Tensor, train_labels: torch.Tensor,
                   num_classes: int, seed: int, device: torch.device, progress: bool) -> tuple[nn.Module, float, bool]:
    """The trained model to unlearn from, trained on the whole training set or loaded from the cache.

    Returns ``(model, training seconds, loaded_from_cache)``. The cache (:mod:`fastblend.cache`) is keyed
    by the model and training settings, the seed and a fingerprint of the training data.
    """
    settings = {"dataset": cfg.dataset, "per_class": cfg.per_class, "limit": cfg.limit, "model": cfg.model,
                "width": cfg.width, "train": cfg.train_config, "seed": seed, "classes": num_classes}
    path = cache.model_path(cache.cache_root(cfg.cache_dir), settings,
                            cache.data_fingerprint(train_images, train_labels), f"{cfg.dataset}-{cfg.model}")
    with torch.random.fork_rng(devices=[]):  # the initial weights come from the seed, not the global RNG
        torch.manual_seed(seed)
        model = _build(cfg, train_images.shape[1], num_classes, train_images.shape[-1])
    if cache.load_model(model, path):
        return model.to(device), 0.0, True
    timer = StageTimer(device)
    with timer("train"):
        model = _train_model(model, (train_images, train_labels), config=cfg.train_config, device=device,
                             seed=seed, progress=progress)
    cache.save_model(model, path)
    return model, timer.stages["train"], False


def evaluate(model: nn.Module, split, device: torch.device) -> tuple[dict, dict]:
    """Retain / forget / evaluation accuracy (percent), the docs/method.md §4 MIA score, and the per-sample
    losses on the forget and unseen sets (for the histograms). One forward pass per set."""
    sets = {"retain": split.retain_tensors(), "forget": split.forget_tensors(), "eval": split.eval_tensors(),
            "unseen": split.unseen_tensors()}
    logits = {name: predict_logits(model, x, device=device).float().cpu() for name, (x, _) in sets.items()}
    labels = {name: y for name, (_, y) in sets.items()}

    def acc(name: str) -> float:
        return float((logits[name].argmax(1) == labels[name]).double().mean() * 100) if labels[name].numel() else \
            math.nan

    keep = torch.isin(labels["eval"], torch.unique(labels["forget"]))
    metrics = {"retain_acc": acc("retain"), "forget_acc": acc("forget"), "test_acc": acc("eval"),
               "mia": mia_score_from_logits(logits["forget"], labels["forget"], logits["eval"][keep],
                                            labels["eval"][keep])}
    losses = {name: F.cross_entropy(logits[name], labels[name], reduction="none") for name in ("forget", "unseen")}
    return metrics, losses


def reduce_retain(cfg: ExperimentConfig, train, forget: torch.Tensor, ipc: int, seed: int,
                  device: torch.device | None, progress: bool) -> tuple[Clustering, ReducedRetainSet, dict]:
    """Features -> grouping -> split -> Blend for ``train`` and the forget indices: the clustering,
    the reduced retain set and the seconds of each stage (device synchronised)."""
    timer = StageTimer(device)
    with timer("features"):
        feats = extract_features(train.images, device=device, seed=seed, progress=progress)
    with timer("grouping"):
        clustering = group(feats, train.labels, ipc, backend=cfg.grouping_backend, seed=seed,
                           num_classes=train.num_classes)
    reduced = condense(train.images, train.labels, forget, clustering=clustering, iterations=cfg.blend_iterations,
                       seed=seed, device=device, progress=progress, amp=cfg.blend_amp)
    for stage in ("split", "blend"):
        timer.add(stage, reduced.timings.get(stage, 0.0))
    reduced.timings.update(features=timer.stages["features"], grouping=timer.stages["grouping"])
    return clustering, reduced, dict(timer.stages)


def _tracked(cfg: ExperimentConfig, trackers: dict, variant: str, method: str, config: dict, retain_size: int,
             split, seed: int) -> dict:
    """``unlearn`` keyword arguments that record ``variant``'s quality curve (time to target), or none."""
    if not cfg.track:
        return {}
    trackers[variant] = Tracker(split.forget_tensors(), split.eval_tensors(), max_samples=cfg.track_samples,
                                seed=seed)
    steps = planned_steps(method, config or None, retain_size)
    return {"callback": trackers[variant], "eval_every": eval_every_for(steps, cfg.track_evaluations)}


def _time_to_target(cfg: ExperimentConfig, rows: dict[str, dict], trackers: dict) -> dict:
    """Times to Retrain's band (``t_target``, ``None`` = not reached) and the speed-ups between them."""
    if "retrain" not in trackers or not trackers["retrain"].points:
        return {}
    band = Band(**cfg.band)
    reference = trackers["retrain"].points[-1]
    for variant, tracker in trackers.items():
        row = rows[variant]
        t = time_to_target(tracker.points, reference, band)
        row.update(t_target=t, target_reached=float(t is not None), t_eval_tracking=tracker.eval_seconds)
    for variant in ("base", "accelerated"):
        t = rows.get(variant, {}).get("t_target")
        for ref in ("retrain", "base"):
            t_ref = rows.get(ref, {}).get("t_target")
            if variant in rows and ref in rows and ref != variant:
                rows[variant][f"speedup_target_vs_{ref}"] = t_ref / max(t, 1e-12) if t and t_ref else None
                if t and t_ref is None:  # ref never reached the band: its whole run is a lower bound
                    rows[variant][f"speedup_target_vs_{ref}_lower"] = rows[ref]["t_total"] / max(t, 1e-12)
    return {"band": band.as_dict(), "reference": {k: getattr(reference, k) for k in ("forget_acc", "test_acc", "mia")},
            "curves": {v: tr.curve() for v, tr in trackers.items()}}


# --------------------------------------------------------------------------------------------
# one repetition
# --------------------------------------------------------------------------------------------
def run_seed(cfg: ExperimentConfig, seed: int, out_dir: Path, log: Callable[[str], None],
             on_result: Callable[[dict], None] | None = None) -> dict:
    """One repetition; returns its record (rows, rounds, split). ``on_result`` receives the record as
    soon as it is complete, before the plots are drawn."""
    device = _resolve_device(cfg.device)
    progress = not cfg.quiet
    train, test = load_dataset(cfg.dataset, cfg.data_root, per_class=cfg.per_class, limit=cfg.limit)
    split = make_split(train, test, forget=cfg.forget, forget_fraction=cfg.forget_fraction,
                       forget_class=cfg.forget_class, seed=seed)
    retain, forget, unseen = split.retain_tensors(), split.forget_tensors(), split.unseen_tensors()
    ipc = cfg.ipc if cfg.ipc is not None else default_ipc(cfg, train)
    check_against_data(cfg, split, ipc)
    log(f"[seed {seed}] {train.name}: {len(train)} train ({split.retain.numel()} retain, {split.forget.numel()} "
        f"forget, {cfg.forget}), {split.unseen.numel()} unseen, {split.evaluation.numel()} evaluation; ipc {ipc}")

    model, train_seconds, cached = original_model(cfg, train.images, train.labels, train.num_classes, seed,
                                                  device, progress)
    log(f"[seed {seed}] original model: {'loaded from cache' if cached else f'trained in {train_seconds:.1f}s'}")
    rows: dict[str, dict] = {}
    losses: dict[str, dict] = {}
    trackers: dict[str, Tracker] = {}

    def record(variant: str, method: str, m: nn.Module, stages: dict[str, float]) -> None:
        timer = StageTimer(device)
        with timer("evaluation"):
            metrics, losses[variant] = evaluate(m, split, device)
        stages = {**stages, **timer.stages}
        total = sum(v for k, v in stages.items() if k not in NOT_PER_REQUEST)
        rows[variant] = {"variant": variant, "method": method, "seed": seed, **metrics,
                         **{f"t_{k}": stages.get(k, 0.0) for k in STAGES}, "t_total": total}
        log(f"[seed {seed}] {variant:<12} {method:<14} {total:8.1f}s  retain {metrics['retain_acc']:5.1f}  "
            f"forget {metrics['forget_acc']:5.1f}  test {metrics['test_acc']:5.1f}  MIA {metrics['mia']:5.1f}")

    record("original", "trained", model, {"unlearning": 0.0})
    rows["original"]["t_train"] = train_seconds
    rows["original"]["cached"] = cached

    if cfg.run_retrain:
        res = unlearn("retrain", model, retain, forget, config=cfg.retrain_config or None, device=device, seed=seed,
                      progress=progress, **_tracked(cfg, trackers, "retrain", "retrain", cfg.retrain_config,
                                                    len(retain[1]), split, seed))
        record("retrain", "retrain", res.model, {"unlearning": res.seconds})

    if cfg.run_base:
        res = unlearn(cfg.method, model, retain, forget, unseen=unseen, config=cfg.base_config or None,
                      device=device, seed=seed, progress=progress,
                      **_tracked(cfg, trackers, "base", cfg.method, cfg.base_config, len(retain[1]), split, seed))
        record("base", cfg.method, res.model, {"unlearning": res.seconds})

    index_timer = StageTimer(device)
    with index_timer("index"):  # once per training set: features, grouping, a blend for every cluster
        feats = extract_features(train.images, device=device, seed=seed, progress=progress)
        clustering = group(feats, train.labels, ipc, backend=cfg.grouping_backend, seed=seed,
                           num_classes=train.num_classes)
        index = BlendIndex.build(train.images, train.labels, clustering=clustering, iterations=cfg.blend_iterations,
                                 seed=seed, device=device, progress=progress, amp=cfg.blend_amp)
    reduced = index.reduce(split.forget)  # per request: split + gather
    stages = {"split": reduced.timings["request"], "index": index_timer.stages["index"]}
    res = unlearn(cfg.accelerated, model, reduced, forget, unseen=unseen, config=cfg.accelerated_config or None,
                  device=device, seed=seed, progress=progress,
                  **_tracked(cfg, trackers, "accelerated", cfg.accelerated, cfg.accelerated_config, len(reduced),
                             split, seed))
    if "accelerated" in trackers:  # per request its curve starts after the split (the index is built beforehand)
        for point in trackers["accelerated"].points:
            point.seconds += sum(v for k, v in stages.items() if k not in NOT_PER_REQUEST)
    stages["unlearning"] = res.seconds
    record("accelerated", cfg.accelerated, res.model, stages)
    rows["accelerated"].update({"reduced_size": len(reduced), "retain_size": int(split.retain.numel()),
                                "compression": reduced.compression, "blend_loss_initial": reduced.initial_loss,
                                "blend_loss_final": reduced.final_loss, "ipc": ipc,
                                "grouping_backend": clustering.backend,
                                "index_blend": index.timings["blend"],
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

    target = _time_to_target(cfg, rows, trackers)
    round_rows = run_rounds(cfg, seed, train, split, clustering, model, unseen, device, log) \
        if cfg.rounds > 1 else []
    result = {"seed": seed, "rows": list(rows.values()), "rounds": round_rows, "split": split.summary(),
              "time_to_target": target}
    if on_result is not None:
        on_result(result)

    if cfg.plots:
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


def run_rounds(cfg: ExperimentConfig, seed: int, train, split, clustering, model: nn.Module, unseen,
               device: torch.device, log: Callable[[str], None]) -> list[dict]:
    """Multi-round unlearning (docs/method.md §1.4): the forget set arrives in ``cfg.rounds`` cumulative parts;
    each round condenses (cached or reference mode) and unlearns from the previous round's model."""
    blender = Blender(train.images, train.labels, clustering=clustering, mode=cfg.round_mode,
                      iterations=cfg.blend_iterations, seed=seed, device=device, progress=not cfg.quiet,
                      amp=cfg.blend_amp)
    rows = []
    previous = torch.zeros(0, dtype=torch.int64)
    current = model
    for r, cumulative in enumerate(split.forget_rounds(cfg.rounds)):
        new = cumulative[~torch.isin(cumulative, previous)]
        timer = StageTimer(device)
        with timer("condense"):
            reduced = blender.forget(new)
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


def default_ipc(cfg: ExperimentConfig, train) -> int:
    info = dataset_info(cfg.dataset)
    paper = getattr(info, "paper_ipc", None)
    if paper and cfg.per_class is None and cfg.limit is None:
        return int(paper)
    per_class = max(1, len(train) // max(train.num_classes, 1))
    return max(1, round(per_class / 5))


# --------------------------------------------------------------------------------------------
# many repetitions, aggregation and files
# --------------------------------------------------------------------------------------------
NUMERIC = ("retain_acc", "forget_acc", "test_acc", "mia", "t_total", "t_features", "t_grouping", "t_split",
           "t_blend", "t_unlearning", "t_evaluation", "speedup_vs_base", "speedup_vs_retrain", "gap_retain_acc",
           "gap_forget_acc", "gap_test_acc", "gap_mia", "t_index", "t_target", "target_reached", "t_eval_tracking",
           "speedup_target_vs_retrain", "speedup_target_vs_base", "speedup_target_vs_base_lower")


def summarise(per_seed: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds of every numeric column, per variant."""
    out = []
    for variant in VARIANTS:
        rows = [r for s in per_seed for r in s["rows"] if r["variant"] == variant]
        if not rows:
            continue
        agg: dict[str, Any] = {"variant": variant, "method": rows[0]["method"], "seeds": len(rows)}
        for key in NUMERIC:
            vals = [r[key] for r in rows if key in r and r[key] is not None and not math.isnan(r[key])]
            if vals:
                agg[key] = statistics.fmean(vals)
                agg[f"{key}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        out.append(agg)
    return out


def format_table(summary: list[dict]) -> str:
    head = (f"{'variant':<12} {'method':<14} {'features':>8} {'grouping':>8} {'split':>6} {'blend':>7} "
            f"{'unlearn':>8} {'eval':>6} {'total':>8} {'index':>7} {'vs base':>8} {'vs retr.':>8} {'target':>8} "
            f"{'@t base':>8} {'@t retr.':>8} {'retain':>7} {'forget':>7} "
            f"{'test':>6} "
            f"{'MIA':>6}  gap to retrain (retain/forget/test/MIA)")
    lines = [head, "-" * len(head)]
    for r in summary:
        speeds = [r.get("speedup_vs_base"), r.get("speedup_vs_retrain")]
        speed_cols = " ".join(f"{(f'{v:.1f}x' if v else '-'):>8}" for v in speeds)
        speed_cols += " " + _target_cols(r)
        gaps = "/".join(f"{r[f'gap_{k}']:+.1f}" for k in ("retain_acc", "forget_acc", "test_acc", "mia")) \
            if "gap_mia" in r else "-"
        lines.append(
            f"{r['variant']:<12} {r['method']:<14} {r.get('t_features', 0):8.2f} {r.get('t_grouping', 0):8.2f} "
            f"{r.get('t_split', 0):6.2f} {r.get('t_blend', 0):7.2f} {r.get('t_unlearning', 0):8.2f} "
            f"{r.get('t_evaluation', 0):6.2f} {r.get('t_total', 0):8.2f} {r.get('t_index', 0):7.2f} "
            f"{speed_cols} {r['retain_acc']:7.1f} {r['forget_acc']:7.1f} "
            f"{r['test_acc']:6.1f} {r['mia']:6.1f}  {gaps}")
    return "\n".join(lines)


def plots_available() -> bool:
    """Whether matplotlib (an optional dependency, needed for the plots) can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def prepare_output(out: str | os.PathLike) -> Path:
    """Create the output folder ``out`` and check that a file can be written in it (``ConfigError``
    naming ``out`` otherwise)."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ConfigError("out", f"out {str(path)!r} is a file, expected a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError as exc:
        raise ConfigError("out", f"out {str(path)!r} is not a writable folder ({exc.strerror or exc})") from None
    return path


def _target_cols(r: dict) -> str:
    """``target`` (seconds to Retrain's band, ``n/r`` = not reached) and the speed-ups at the target
    (``>Nx``: the reference never reached the band, so its whole run is a lower bound)."""
    if "target_reached" not in r:
        return " ".join(f"{'-':>8}" for _ in range(3))
    t = f"{r['t_target']:.1f}s" if r.get("t_target") is not None else "n/r"
    cols = [t]
    for ref in ("base", "retrain"):
        v, low = r.get(f"speedup_target_vs_{ref}"), r.get(f"speedup_target_vs_{ref}_lower")
        cols.append(f"{v:.1f}x" if v else (f">{low:.1f}x" if low else "-"))
    return " ".join(f"{c:>8}" for c in cols)


def run_experiment(cfg: ExperimentConfig, log: Callable[[str], None] | None = None) -> dict:
    """Run every seed of ``cfg``; write ``results.json``, ``results.csv``, ``summary.csv`` (and
    ``rounds.csv``) atomically as each seed finishes, before its plots.

    Everything is checked before any work (:meth:`ExperimentConfig.check`, the output folder); without
    matplotlib a ``RuntimeWarning`` says so once and the run goes on without plots (``config.plots``
    recorded as false).
    """
    cfg.check()
    log = log or (lambda msg: None)
    out_dir = prepare_output(cfg.out)
    if cfg.plots and not plots_available():
        warnings.warn("matplotlib is not installed, so no plots (`pip install matplotlib`); every other output "
                      "is written", RuntimeWarning, stacklevel=2)
        cfg = with_overrides(cfg, plots=False)
    t0 = time.perf_counter()
    machine = machine_info()
    per_seed: list[dict] = []
    result: dict = {}

    def finished(record: dict) -> None:
        per_seed.append(record)
        result.update(write_results(cfg, out_dir, per_seed, machine, time.perf_counter() - t0))

    for seed in cfg.seeds:
        run_seed(cfg, seed, out_dir, log, on_result=finished)
    return result


def write_results(cfg: ExperimentConfig, out_dir: Path, per_seed: list[dict], machine: dict,
                  wall_seconds: float) -> dict:
    """Write ``results.json``, ``results.csv``, ``summary.csv`` and (with rounds) ``rounds.csv`` for the
    seeds finished so far, each atomically; returns the ``results.json`` document (``complete``: every
    seed of ``cfg`` is in it)."""
    summary = summarise(per_seed)
    result = {"config": asdict(cfg), "machine": machine, "summary": summary, "per_seed": per_seed,
              "wall_seconds": wall_seconds, "complete": len(per_seed) == len(cfg.seeds)}
    atomic_write_text(out_dir / "results.json", json.dumps(result, indent=2, default=_json_default))
    _write_csv(out_dir / "results.csv", [r for s in per_seed for r in s["rows"]])
    _write_csv(out_dir / "summary.csv", summary)
    rounds = [r for s in per_seed for r in s["rounds"]]
    if rounds:
        _write_csv(out_dir / "rounds.csv", rounds)
    return result


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _write_csv(path: Path, rows: list[dict]) -> None:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def with_overrides(base: ExperimentConfig, **overrides: Any) -> ExperimentConfig:
    cfg = copy.deepcopy(base)
    for key, value in overrides.items():
        if not hasattr(cfg, key):
            raise ValueError(f"ExperimentConfig has no setting {key!r}")
        setattr(cfg, key, value)
    return cfg
