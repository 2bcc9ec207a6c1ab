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
import hashlib
import json
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .condense import Blender, BlendIndex, ReducedRetainSet, condense
from .data import dataset_info, load_dataset, make_split
from .grouping import Clustering, extract_features, group
from .machine import machine_info
from .methods import train_model as _train_model
from .methods import unlearn
from .metrics import StageTimer, accuracy, mia_score_from_logits, predict_logits
from .models import ConvNet3, build_model

VARIANTS = ("original", "retrain", "base", "accelerated")
STAGES = ("features", "grouping", "split", "blend", "unlearning", "evaluation", "index")
#: stages outside a request's latency: evaluation, and the index built once per training set
NOT_PER_REQUEST = ("evaluation", "index")
ACCELERATED_NAMES = {"finetune": "a_finetune", "scrub": "a_scrub", "l1_sparse": "a_sparse"}


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

    def check(self) -> None:
        if self.rounds < 1:
            raise ValueError(f"ExperimentConfig: rounds must be >= 1, got {self.rounds}")
        if self.round_mode not in ("cached", "reference"):
            raise ValueError(f"ExperimentConfig: round_mode must be 'cached' or 'reference', got {self.round_mode!r}")
        if not self.seeds:
            raise ValueError("ExperimentConfig: seeds must name at least one seed")
        if self.blend_iterations < 0:
            raise ValueError(f"ExperimentConfig: blend_iterations must be >= 0, got {self.blend_iterations}")

    @property
    def accelerated(self) -> str:
        return self.accelerated_method or ACCELERATED_NAMES.get(self.method, f"accelerated:{self.method}")


DEMO = ExperimentConfig(
    width=64,
    train_config={"epochs": 8, "lr": 0.05, "batch_size": 128, "schedule": "cosine", "warmup_epochs": 1},
    retrain_config={"epochs": 8, "lr": 0.05, "batch_size": 128, "warmup_epochs": 1},
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
    return dev


def _cache_dir(cfg: ExperimentConfig) -> Path:
    if cfg.cache_dir:
        return Path(cfg.cache_dir)
    return Path(os.environ.get("FASTBLEND_CACHE", Path.home() / ".cache" / "fastblend"))


def _build(cfg: ExperimentConfig, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    if cfg.model.lower().replace("-", "").replace("_", "") == "convnet3":
        return ConvNet3(in_channels, num_classes, image_size, width=cfg.width)
    return build_model(cfg.model, in_channels, num_classes, image_size)


def original_model(cfg: ExperimentConfig, train_images: torch.Tensor, train_labels: torch.Tensor,
                   num_classes: int, seed: int, device: torch.device, progress: bool) -> tuple[nn.Module, float, bool]:
    """The trained model to unlearn from, trained on the whole training set or loaded from the cache.

    Returns ``(model, training seconds, loaded_from_cache)``.
    """
    key_src = json.dumps({"dataset": cfg.dataset, "per_class": cfg.per_class, "limit": cfg.limit,
                          "model": cfg.model, "width": cfg.width, "train": cfg.train_config, "seed": seed,
                          "n": int(train_labels.numel()), "version": 2}, sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    path = _cache_dir(cfg) / "models" / f"{cfg.dataset}-{cfg.model}-{key}.pt"
    with torch.random.fork_rng(devices=[]):  # the initial weights come from the seed, not the global RNG
        torch.manual_seed(seed)
        model = _build(cfg, train_images.shape[1], num_classes, train_images.shape[-1])
    if path.exists():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.to(device), 0.0, True
    timer = StageTimer(device)
    with timer("train"):
        model = _train_model(model, (train_images, train_labels), config=cfg.train_config, device=device,
                             seed=seed, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)
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


# --------------------------------------------------------------------------------------------
# one repetition
# --------------------------------------------------------------------------------------------
def run_seed(cfg: ExperimentConfig, seed: int, out_dir: Path, log: Callable[[str], None]) -> dict:
    device = _resolve_device(cfg.device)
    progress = not cfg.quiet
    train, test = load_dataset(cfg.dataset, cfg.data_root, per_class=cfg.per_class, limit=cfg.limit)
    split = make_split(train, test, forget=cfg.forget, forget_fraction=cfg.forget_fraction,
                       forget_class=cfg.forget_class, seed=seed)
    retain, forget, unseen = split.retain_tensors(), split.forget_tensors(), split.unseen_tensors()
    ipc = cfg.ipc or default_ipc(cfg, train)
    log(f"[seed {seed}] {train.name}: {len(train)} train ({split.retain.numel()} retain, {split.forget.numel()} "
        f"forget, {cfg.forget}), {split.unseen.numel()} unseen, {split.evaluation.numel()} evaluation; ipc {ipc}")

    model, train_seconds, cached = original_model(cfg, train.images, train.labels, train.num_classes, seed,
                                                  device, progress)
    log(f"[seed {seed}] original model: {'loaded from cache' if cached else f'trained in {train_seconds:.1f}s'}")
    rows: dict[str, dict] = {}
    losses: dict[str, dict] = {}

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
                      progress=progress)
        record("retrain", "retrain", res.model, {"unlearning": res.seconds})

    if cfg.run_base:
        res = unlearn(cfg.method, model, retain, forget, unseen=unseen, config=cfg.base_config or None,
                      device=device, seed=seed, progress=progress)
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
                  device=device, seed=seed, progress=progress)
    stages["unlearning"] = res.seconds
    record("accelerated", cfg.accelerated, res.model, stages)
    rows["accelerated"].update({"reduced_size": len(reduced), "retain_size": int(split.retain.numel()),
                                "compression": reduced.compression, "blend_loss_initial": reduced.initial_loss,
                                "blend_loss_final": reduced.final_loss, "ipc": ipc,
                                "grouping_backend": clustering.backend,
                                "index_blend": index.timings["blend"]})

    for variant in ("base", "accelerated"):
        if variant in rows:
            for ref in ("base", "retrain"):
                if ref in rows and ref != variant:
                    rows[variant][f"speedup_vs_{ref}"] = rows[ref]["t_total"] / max(rows[variant]["t_total"], 1e-12)
    if "retrain" in rows:
        for row in rows.values():
            for key in ("retain_acc", "forget_acc", "test_acc", "mia"):
                row[f"gap_{key}"] = row[key] - rows["retrain"][key]

    round_rows = run_rounds(cfg, seed, train, split, clustering, model, unseen, device, log) \
        if cfg.rounds > 1 else []

    if cfg.plots:
        seed_dir = out_dir / f"seed{seed}"
        seed_dir.mkdir(parents=True, exist_ok=True)
        from . import plots

        plots.stage_times(list(rows.values()), seed_dir / "stage_times.png")
        plots.loss_histograms(losses, seed_dir / "loss_histograms.png")
        plots.save_blend_grid(reduced, train.denormalize(), clustering, seed_dir / "blend_grid.png",
                              n=min(train.num_classes, 12))
    return {"seed": seed, "rows": list(rows.values()), "rounds": round_rows, "split": split.summary()}


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
           "gap_forget_acc", "t_index", "gap_test_acc", "gap_mia")


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
            f"{'unlearn':>8} {'eval':>6} {'total':>8} {'index':>7} {'vs base':>8} {'vs retr.':>8} {'retain':>7} "
            f"{'forget':>7} "
            f"{'test':>6} "
            f"{'MIA':>6}  gap to retrain (retain/forget/test/MIA)")
    lines = [head, "-" * len(head)]
    for r in summary:
        speeds = [r.get("speedup_vs_base"), r.get("speedup_vs_retrain")]
        speed_cols = " ".join(f"{(f'{v:.1f}x' if v else '-'):>8}" for v in speeds)
        gaps = "/".join(f"{r[f'gap_{k}']:+.1f}" for k in ("retain_acc", "forget_acc", "test_acc", "mia")) \
            if "gap_mia" in r else "-"
        lines.append(
            f"{r['variant']:<12} {r['method']:<14} {r.get('t_features', 0):8.2f} {r.get('t_grouping', 0):8.2f} "
            f"{r.get('t_split', 0):6.2f} {r.get('t_blend', 0):7.2f} {r.get('t_unlearning', 0):8.2f} "
            f"{r.get('t_evaluation', 0):6.2f} {r.get('t_total', 0):8.2f} {r.get('t_index', 0):7.2f} "
            f"{speed_cols} {r['retain_acc']:7.1f} {r['forget_acc']:7.1f} "
            f"{r['test_acc']:6.1f} {r['mia']:6.1f}  {gaps}")
    return "\n".join(lines)


def run_experiment(cfg: ExperimentConfig, log: Callable[[str], None] | None = None) -> dict:
    """Run every seed of ``cfg``; write ``results.json``, ``results.csv``, ``summary.csv``, plots."""
    cfg.check()
    log = log or (lambda msg: None)
    out_dir = Path(cfg.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    per_seed = [run_seed(cfg, seed, out_dir, log) for seed in cfg.seeds]
    summary = summarise(per_seed)
    result = {"config": asdict(cfg), "machine": machine_info(), "summary": summary, "per_seed": per_seed,
              "wall_seconds": time.perf_counter() - t0}
    (out_dir / "results.json").write_text(json.dumps(result, indent=2, default=_json_default))
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
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def with_overrides(base: ExperimentConfig, **overrides: Any) -> ExperimentConfig:
    cfg = copy.deepcopy(base)
    for key, value in overrides.items():
        if not hasattr(cfg, key):
            raise ValueError(f"ExperimentConfig has no setting {key!r}")
        setattr(cfg, key, value)
    return cfg
