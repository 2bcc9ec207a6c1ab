"""The ``fastblend`` command (also ``python -m fastblend``).

    fastblend demo                       # the main job on the built-in data, no arguments needed
    fastblend run --dataset cifar10 --data-root ~/data --model resnet18 --method scrub --seeds 0 1 2
    fastblend run --config experiment.toml --rounds 4 --round-mode cached
    fastblend condense --ipc 160 --out reduced.pt
    fastblend bench                      # points to the benchmark suite: python -m benchmarks (a checkout)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import fields
from pathlib import Path

from . import pipeline
from .pipeline import DEMO, ExperimentConfig


def _log(quiet: bool):
    return (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))


def _load_config_file(path: Path) -> dict:
    if not path.exists():
        raise SystemExit(f"fastblend: --config {path}: no such file")
    text = path.read_text()
    if path.suffix in (".toml", ".tml"):
        try:
            import tomllib
        except ImportError:  # Python < 3.11
            import tomli as tomllib
        data = tomllib.loads(text)
    elif path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:
            raise SystemExit("fastblend: YAML configs need pyyaml: `pip install pyyaml`") from exc
        data = yaml.safe_load(text) or {}
    elif path.suffix == ".json":
        data = json.loads(text)
    else:
        raise SystemExit(f"fastblend: --config {path}: expected a .toml, .yaml/.yml or .json file")
    known = {f.name for f in fields(ExperimentConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SystemExit(f"fastblend: --config {path}: unknown settings {unknown}; known: {sorted(known)}")
    return data


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=None, help="output folder (default: fastblend-out/<command>)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or log lines")


def _experiment_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML/YAML/JSON file with ExperimentConfig settings")
    p.add_argument("--preset", help="method hyperparameters of a docs/method.md preset, e.g. cifar10-resnet18")
    p.add_argument("--dataset", help="animal-mnist (default), digits, cifar10, svhn, cinic10")
    p.add_argument("--data-root", help="folder holding the local data set (default $FASTBLEND_DATA or ./data)")
    p.add_argument("--per-class", type=int, help="use the first N training images of each class")
    p.add_argument("--limit", type=int, help="seeded stratified subset of at most N images")
    p.add_argument("--model", help="convnet3 (default), resnet18, resnet50")
    p.add_argument("--width", type=int, help="ConvNet-3 width")
    p.add_argument("--method", help="base AMU method: finetune, neggrad_plus, scrub, l1_sparse, bad_teacher, ...")
    p.add_argument("--accelerated-method", help="override the accelerated method (default a_<method> or generic)")
    p.add_argument("--forget", choices=["uniform", "classwise"], help="forget-set mode")
    p.add_argument("--forget-fraction", type=float)
    p.add_argument("--forget-class", type=int)
    p.add_argument("--ipc", type=int, help="clusters per class")
    p.add_argument("--blend-iterations", type=int)
    p.add_argument("--blend-amp", action="store_true",
                   help="run Blend's matcher in bfloat16 (faster; a departure from the reference numerics)")
    p.add_argument("--grouping-backend", choices=["auto", "faiss", "torch"])
    p.add_argument("--seeds", type=int, nargs="+", help="one repetition per seed (mean ± std reported)")
    p.add_argument("--rounds", type=int, help="multi-round unlearning: the forget set arrives in R parts")
    p.add_argument("--round-mode", choices=["cached", "reference"])
    p.add_argument("--epochs", type=int, help="epochs of the base method")
    p.add_argument("--train-epochs", type=int, help="epochs of the original model's training")
    p.add_argument("--retrain-epochs", type=int)
    p.add_argument("--no-retrain", action="store_true", help="skip the Retrain gold standard")
    p.add_argument("--no-base", action="store_true", help="skip the base method on the full retain set")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--cache-dir", help="where trained original models are cached (default ~/.cache/fastblend)")


def _config_from_args(args: argparse.Namespace, base: ExperimentConfig) -> ExperimentConfig:
    overrides = {}
    if getattr(args, "config", None):
        overrides.update(_load_config_file(args.config))
    simple = ["dataset", "data_root", "per_class", "limit", "model", "width", "method", "accelerated_method",
              "forget", "forget_fraction", "forget_class", "ipc", "blend_iterations", "grouping_backend", "seeds",
              "rounds", "round_mode", "device", "cache_dir"]
    for name in simple:
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    cfg = pipeline.with_overrides(base, **overrides)
    if getattr(args, "preset", None):
        from .methods import presets

        cfg.base_config = {**presets(args.preset, cfg.method), **cfg.base_config}
        cfg.accelerated_config = {**presets(args.preset, cfg.accelerated), **cfg.accelerated_config}
    if getattr(args, "epochs", None):
        cfg.base_config = {**cfg.base_config, "epochs": args.epochs}
    if getattr(args, "train_epochs", None):
        cfg.train_config = {**cfg.train_config, "epochs": args.train_epochs}
    if getattr(args, "retrain_epochs", None):
        cfg.retrain_config = {**cfg.retrain_config, "epochs": args.retrain_epochs}
    cfg.run_retrain = cfg.run_retrain and not getattr(args, "no_retrain", False)
    cfg.run_base = cfg.run_base and not getattr(args, "no_base", False)
    cfg.plots = cfg.plots and not getattr(args, "no_plots", False)
    cfg.blend_amp = cfg.blend_amp or bool(getattr(args, "blend_amp", False))
    cfg.quiet = bool(args.quiet)
    return cfg


def _run(cfg: ExperimentConfig, command: str, args: argparse.Namespace) -> int:
    cfg.out = args.out or os.path.join("fastblend-out", command)
    log = _log(cfg.quiet)
    t0 = time.perf_counter()
    result = pipeline.run_experiment(cfg, log=log)
    print(pipeline.format_table(result["summary"]))
    machine = result["machine"]
    print(f"\n{len(cfg.seeds)} seed(s), {time.perf_counter() - t0:.0f}s wall; {machine['gpu'] or machine['cpu']}, "
          f"{machine['threads']} threads, torch {machine['torch']}")
    print(f"results: {cfg.out}/results.json, results.csv, summary.csv" + ("; plots in seed*/" if cfg.plots else ""))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    cfg = _config_from_args(args, DEMO)
    return _run(cfg, "demo", args)


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _config_from_args(args, ExperimentConfig())
    return _run(cfg, "run", args)


def cmd_condense(args: argparse.Namespace) -> int:
    import torch

    from .data import load_dataset, make_split
    from .plots import save_blend_grid

    cfg = _config_from_args(args, ExperimentConfig())
    log = _log(cfg.quiet)
    out = Path(args.out or "fastblend-out/condense/reduced.pt")
    out.parent.mkdir(parents=True, exist_ok=True)
    device = torch.device(cfg.device) if cfg.device else None
    train, test = load_dataset(cfg.dataset, cfg.data_root, per_class=cfg.per_class, limit=cfg.limit)
    split = make_split(train, test, forget=cfg.forget, forget_fraction=cfg.forget_fraction,
                       forget_class=cfg.forget_class, seed=cfg.seeds[0])
    ipc = cfg.ipc or pipeline.default_ipc(cfg, train)
    clustering, reduced, _ = pipeline.reduce_retain(cfg, train, split.forget, ipc, cfg.seeds[0], device,
                                                    progress=not cfg.quiet)
    reduced.save(out)
    clustering.save(out.with_suffix(".clustering.pt"))
    grid = save_blend_grid(reduced, train.denormalize(), clustering, out.with_suffix(".png")) if cfg.plots else None
    log(f"reduced retain set: {len(reduced)} rows ({int(reduced.is_blended.sum())} blended, "
        f"{int((~reduced.is_blended).sum())} residual) for {split.retain.numel()} retained images "
        f"({reduced.compression:.2f}x smaller); matching loss {reduced.initial_loss:.4g} -> {reduced.final_loss:.4g}")
    print(json.dumps({"reduced": str(out), "clustering": str(out.with_suffix(".clustering.pt")),
                      "grid": str(grid) if grid else None, "rows": len(reduced), "compression": reduced.compression,
                      "timings": reduced.timings}, indent=2))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    command = ["python", "-m", "benchmarks"] + (["--out", args.out] if args.out else []) + (
        ["--quick"] if args.quick else []) + (["--only", *args.only] if args.only else [])
    raise SystemExit("fastblend bench: the benchmark suite is not part of the installed package; from a checkout "
                     f"of the repository run `{' '.join(command)}`")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastblend", description="Fast approximate machine unlearning: "
                                     "Blend condensation + A-AMU (arXiv 2507.09786)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="the main job on the built-in animal-mnist data (no arguments needed)")
    _common(p)
    _experiment_args(p)
    p.set_defaults(fn=cmd_demo)
    p = sub.add_parser("run", help="any data set, model, method, forget mode, ipc, seeds, rounds")
    _common(p)
    _experiment_args(p)
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("condense", help="build and save a reduced retain set (+ a PNG of blends)")
    _common(p)
    _experiment_args(p)
    p.set_defaults(fn=cmd_condense)
    p = sub.add_parser("bench", help="how to run the benchmark suite (`python -m benchmarks` in a checkout)")
    p.add_argument("--quick", "--small", action="store_true")
    p.add_argument("--only", nargs="+")
    p.add_argument("--out", default=None)
    p.set_defaults(fn=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, TypeError, FileNotFoundError, ModuleNotFoundError) as exc:
        if os.environ.get("FASTBLEND_DEBUG", "") not in ("", "0"):
            raise
        print(f"fastblend {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
