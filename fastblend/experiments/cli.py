"""The ``fastblend`` command (also ``python -m fastblend``).

    fastblend demo                       # the main job on the built-in data, no arguments needed
    fastblend run --dataset cifar10 --data-root ~/data --model resnet18 --method scrub --seeds 0 1 2
    fastblend run --config experiment.toml --rounds 4 --round-mode cached
    fastblend condense --ipc 160 --out reduced.pt

Every setting is checked before any data is loaded or any model trained. Exit codes: 0 success;
1 an error during the run (results of the seeds already finished are on disk); 2 a mistake in the
command line or the configuration (nothing was run); 130 interrupted (Ctrl-C); 143 terminated
(SIGTERM). Errors are one line on stderr; ``--debug`` (or ``FASTBLEND_DEBUG=1``) shows the traceback.

Many processes: ``torchrun --nproc_per_node=P -m fastblend run ...`` (or ``python -m
torch.distributed.run``). ``run`` and ``demo`` find torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``,
initialise the default process group (NCCL with device ``cuda:LOCAL_RANK`` when the device is CUDA,
gloo on CPU) and run the experiment data parallel (:mod:`fastblend.experiments.pipeline`); only rank 0 prints,
logs and writes files.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
import warnings
from dataclasses import fields
from pathlib import Path

from ..distributed import is_main_process
from ..methods import METHODS, accelerated
from . import pipeline
from .machine import package_version
from .pipeline import DEMO, ConfigError, ExperimentConfig
from .settings import BLEND_PRESETS

# the flag that sets each ExperimentConfig setting, where it is not simply --<setting with dashes>
_FLAGS = {"base_config": "--epochs", "train_config": "--train-epochs", "retrain_config": "--retrain-epochs",
          "accelerated_config": "--config (accelerated_config)", "run_retrain": "--no-retrain",
          "run_base": "--no-base", "plots": "--no-plots", "FASTBLEND_BACKEND": "FASTBLEND_BACKEND"}


class UsageError(ValueError):
    """A mistake in the command line, found before any work; the message names the flag."""


class _Terminated(BaseException):
    """Raised in the main thread by SIGTERM, so that the run unwinds (files already written stay)."""


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own usage dump would be several lines
        print(f"{self.prog}: error: {' '.join(message.split())}", file=sys.stderr)
        raise SystemExit(2)


def _log(quiet: bool):
    return (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))


def _load_config_file(path: Path) -> dict:
    if not path.is_file():
        raise UsageError(f"--config {path}: no such file")
    if path.suffix not in (".toml", ".tml", ".yaml", ".yml", ".json"):
        raise UsageError(f"--config {path}: expected a .toml, .yaml/.yml or .json file")
    try:
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
            except ImportError:
                raise UsageError(f"--config {path}: YAML configs need pyyaml: `pip install pyyaml`") from None
            try:
                data = yaml.safe_load(text) or {}
            except yaml.YAMLError as exc:  # a syntax error, or a tag safe loading refuses (!!python/...)
                raise UsageError(f"--config {path}: not valid YAML ({' '.join(str(exc).split())})") from None
        else:
            data = json.loads(text)
    except (OSError, ValueError) as exc:  # TOML and JSON decoding errors are ValueErrors
        if isinstance(exc, UsageError):
            raise
        raise UsageError(f"--config {path}: cannot read it ({' '.join(str(exc).split())})") from None
    if not isinstance(data, dict):
        raise UsageError(f"--config {path}: expected a table of settings, got {type(data).__name__}")
    known = {f.name for f in fields(ExperimentConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UsageError(f"--config {path}: unknown settings {unknown}; known: {sorted(known)}")
    return data


def _method_help() -> str:
    base = [name for name, spec in METHODS.items() if not spec.accelerated]
    with_variant, without = [], []
    for name in base:
        try:
            accelerated(name)
            with_variant.append(name)
        except ValueError:
            without.append(name)
    named = ", ".join(f"{name} (alias cf)" if name == "finetune" else name for name in with_variant)
    return (f"base AMU method (default finetune), one of: {named}, each run accelerated as a_<name> "
            f"(l1_sparse: a_sparse); {', '.join(without)} have no accelerated variant and need --accelerated-method")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=None, help="output folder (default: fastblend-out/<command>)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or log lines (warnings still show)")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")


def _data_args(p: argparse.ArgumentParser, condense: bool = False) -> None:
    """The flags of every command: the config file, the data, the forget request and the Blend index (``condense``:
    its own forget kinds and seed; the hard kind needs a proxy model trained by ``run``/``demo``)."""
    p.add_argument("--config", type=Path, help="TOML/YAML/JSON file with ExperimentConfig settings")
    p.add_argument("--dataset", help="animal-mnist (default), digits, cifar10, svhn, cinic10")
    p.add_argument("--data-root", help="folder holding the local data set (default $FASTBLEND_DATA or ./data)")
    p.add_argument("--per-class", type=int, help="use the first N training images of each class")
    p.add_argument("--limit", type=int, help="seeded stratified subset of at most N images")
    if condense:
        p.add_argument("--forget", choices=["uniform", "classwise"], help="forget-set kind (docs/method.md §6)")
    else:
        p.add_argument("--forget", choices=["uniform", "classwise", "hard"],
                       help="forget-set kind (docs/method.md §6; hard: the highest-loss images of a uniform pool)")
    p.add_argument("--forget-fraction", type=float)
    p.add_argument("--forget-class", type=int)
    p.add_argument("--ipc", type=int, help="clusters per class")
    p.add_argument("--blend-iterations", type=int)
    p.add_argument("--blend-width", type=int, help="width of Blend's random ConvNet-3 matcher (paper: 128)")
    p.add_argument("--blend-preset", choices=sorted(BLEND_PRESETS),
                   help="Blend settings by name: paper (width 128, 12 iterations) or fast (width 64, 3 iterations; "
                   "a departure from the reference, see the README); --blend-width/--blend-iterations override it")
    p.add_argument("--blend-amp", action="store_true",
                   help="run Blend's matcher in bfloat16 (faster; a departure from the reference numerics)")
    p.add_argument("--grouping-backend", choices=["auto", "faiss", "torch"])
    if condense:  # one split, one index
        p.add_argument("--seeds", type=int, nargs=1, metavar="SEED", help="the forget split's and the index's seed")
    else:
        p.add_argument("--seeds", type=int, nargs="+", help="one repetition per seed (mean ± std reported)")
    p.add_argument("--no-plots", action="store_true")


def _experiment_args(p: argparse.ArgumentParser) -> None:
    """The flags of ``demo`` and ``run``: :func:`_data_args` and the models, methods, stop and Retrain."""
    _data_args(p)
    p.add_argument("--preset", help="method hyperparameters of a docs/method.md preset, e.g. cifar10-resnet18")
    p.add_argument("--recipe", choices=["auto", "paper", "matched"], default=None,
                   help="the accelerated method's recipe: auto (default: a whole class gets docs/method.md §7.6's, "
                   "scattered samples the difficulty-matched one of §7.10 with a_finetune, a_neggrad_plus, a_sparse or "
                   "a_scrub, else the paper's), paper (the paper's on scattered samples; a whole class still gets "
                   "§7.6's) or matched (§7.10's, --forget uniform or hard only); settings in --config win")
    p.add_argument("--model", help="convnet3 (default), resnet18, resnet50")
    p.add_argument("--width", type=int, help="ConvNet-3 width")
    p.add_argument("--method", help=_method_help())
    p.add_argument("--accelerated-method", help="the accelerated method, one of: " + ", ".join(
        name for name, spec in METHODS.items() if spec.accelerated) + " (default: the --method's a_<name>)")
    p.add_argument("--retrain-seeds", type=int, help="models in Retrain's seed ensemble (the band, KLOM; default 3)")
    p.add_argument("--band", dest="band_kind", choices=["seeds", "fixed"],
                   help="Retrain's band: from the seed ensemble (default) or the run's Retrain ± fixed points")
    p.add_argument("--stop", choices=["auto", "none"],
                   help="how the base and accelerated variants end: auto (default; when the forget set behaves "
                        "like held-out data, no Retrain input; a run whose recipe ends first keeps the evaluation "
                        "closest to that) or none (the whole recipe)")
    p.add_argument("--rounds", type=int, help="multi-round unlearning: the forget set arrives in R parts")
    p.add_argument("--round-mode", choices=["cached", "reference"])
    p.add_argument("--epochs", type=int, help="epochs of the base method")
    p.add_argument("--train-epochs", type=int, help="epochs of the original model's training")
    p.add_argument("--retrain-epochs", type=int)
    p.add_argument("--no-retrain", action="store_true", help="skip the Retrain gold standard")
    p.add_argument("--no-base", action="store_true", help="skip the base method on the full retain set")
    p.add_argument("--base-budget", type=_budget, metavar="SECONDS|retrain|none",
                   help="stop the base method at the first evaluation past this many seconds, or at Retrain's "
                   "time ('retrain', the demo's default); 'none' runs its whole schedule")
    p.add_argument("--cache-dir", help="where trained original models are cached (default $FASTBLEND_CACHE, "
                   "else $XDG_CACHE_HOME/fastblend, else ~/.cache/fastblend)")


def _budget(text: str) -> str | float:
    """``--base-budget``: ``retrain``, ``none`` or a positive number of seconds."""
    if text in ("retrain", "none"):
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, 'retrain' or 'none', got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _config_from_args(args: argparse.Namespace, base: ExperimentConfig) -> ExperimentConfig:
    overrides = {}
    if getattr(args, "config", None):
        overrides.update(_load_config_file(args.config))
    from_file = set(overrides)  # what an error names as "<setting> (in --config FILE)", unless a flag set it
    for key in ("train_config", "retrain_config", "base_config", "accelerated_config"):
        # a file's recipe dict changes the keys it names, over the command's own recipe (as --train-epochs does)
        if isinstance(overrides.get(key), dict) and isinstance(getattr(base, key, None), dict):
            overrides[key] = {**getattr(base, key), **overrides[key]}
    preset = getattr(args, "blend_preset", None)
    if preset is not None:  # over the file's values, under the explicit flags
        overrides.update(BLEND_PRESETS[preset])
        from_file -= set(BLEND_PRESETS[preset])
    simple = ["dataset", "data_root", "per_class", "limit", "model", "width", "method", "accelerated_method",
              "forget", "forget_fraction", "forget_class", "ipc", "blend_iterations", "blend_width",
              "grouping_backend", "seeds", "rounds", "round_mode", "device", "cache_dir", "retrain_seeds",
              "band_kind", "stop"]
    for name in simple:
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    cfg = pipeline.with_overrides(base, **overrides)
    if getattr(args, "recipe", None) == "matched":  # under --config's own accelerated_config, over --preset's
        from ..methods import matched_recipe
        from ..methods.aamu_configs import MATCHED_METHODS

        try:
            acc = cfg.accelerated
        except ValueError as exc:  # a method without an accelerated variant, or an unknown one
            raise UsageError(f"--recipe matched: {exc}") from None
        if acc not in MATCHED_METHODS:
            raise UsageError(f"--recipe matched: the accelerated method must be one of {', '.join(MATCHED_METHODS)}, "
                             f"got {acc}")
        if cfg.forget == "classwise":
            raise UsageError("--recipe matched is for scattered samples (--forget uniform or hard): its fixed target "
                             "refuses a class forgotten whole, which gets the whole-class recipe by default")
        cfg.accelerated_config = {**matched_recipe(acc), **cfg.accelerated_config}
    elif getattr(args, "recipe", None) == "paper":  # the paper's on scattered samples; a whole class keeps its own
        cfg.accelerated_config = {"request": "sample" if cfg.forget != "classwise" else "auto",
                                  **cfg.accelerated_config}
    if getattr(args, "preset", None):
        from ..methods import config_class, presets

        try:
            cfg.base_config = {**presets(args.preset, cfg.method), **cfg.base_config}
            # only what the preset changes from the defaults: a full config dict sets every field, so the request's
            # recipe (whole-class or difficulty-matched, --recipe) would fill none of them
            default = config_class(cfg.accelerated)()
            changes = {k: v for k, v in presets(args.preset, cfg.accelerated).items() if v != getattr(default, k)}
            cfg.accelerated_config = {**changes, **cfg.accelerated_config}
        except ValueError as exc:
            raise UsageError(f"--preset {args.preset} with --method {cfg.method}: {exc}") from None
    # `is not None`: an explicit 0 reaches the checks (and is refused there), never the defaults
    if getattr(args, "epochs", None) is not None:
        cfg.base_config = {**cfg.base_config, "epochs": args.epochs}
    if getattr(args, "train_epochs", None) is not None:
        cfg.train_config = {**cfg.train_config, "epochs": args.train_epochs}
    if getattr(args, "retrain_epochs", None) is not None:
        cfg.retrain_config = {**cfg.retrain_config, "epochs": args.retrain_epochs}
    budget = getattr(args, "base_budget", None)
    if budget is not None:
        cfg.base_budget = None if budget == "none" else budget
    # a flag turns a setting off (or on); without it the file's value reaches the checks as it is (a "false" string
    # must be refused there, not read as true)
    if getattr(args, "no_retrain", False):
        cfg.run_retrain = False
    if getattr(args, "no_retrain", False) and budget is None and cfg.base_budget == "retrain" \
            and "base_budget" not in from_file:
        cfg.base_budget = None  # the demo's default budget is Retrain's time: without Retrain, no budget
    if getattr(args, "no_base", False):
        cfg.run_base = False
    if getattr(args, "no_plots", False):
        cfg.plots = False
    if getattr(args, "blend_amp", False):
        cfg.blend_amp = True
    if args.quiet:  # --quiet, or quiet: true in the --config file
        cfg.quiet = True
    by_flag = {name for name in simple if getattr(args, name, None) is not None}
    by_flag |= {setting for setting, flag in (("base_config", "epochs"), ("train_config", "train_epochs"),
                                              ("retrain_config", "retrain_epochs"), ("base_budget", "base_budget"))
                if getattr(args, flag, None) is not None}
    args.config_settings = from_file - by_flag
    return cfg


@contextlib.contextmanager
def _torchrun_group(cfg: ExperimentConfig):
    """Under torchrun (``WORLD_SIZE`` > 1 with ``RANK`` and ``LOCAL_RANK`` set, no group yet): the
    default process group for the block (NCCL on ``cuda:LOCAL_RANK``, which becomes ``cfg.device``,
    when the device is CUDA; gloo otherwise), destroyed after it. Elsewhere: nothing."""
    env = os.environ
    if int(env.get("WORLD_SIZE", "1") or 1) <= 1 or "RANK" not in env or "LOCAL_RANK" not in env:
        yield
        return
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        yield
        return
    backend = "gloo"
    wants_cuda = cfg.device in (None, "auto") or str(cfg.device).startswith("cuda")
    if wants_cuda and torch.cuda.is_available():
        device = torch.device("cuda", int(env["LOCAL_RANK"]))
        if str(cfg.device).startswith("cuda:") and torch.device(cfg.device) != device:
            raise UsageError(f"--device {cfg.device}: under torchrun each rank uses its own GPU, cuda:LOCAL_RANK "
                             f"(cuda:{device.index} on this rank); pass --device cuda")
        torch.cuda.set_device(device)  # NCCL and the object collectives use the current device
        cfg.device, backend = str(device), "nccl"
    dist.init_process_group(backend)
    try:
        yield
        dist.barrier()  # every rank done before the group goes: a peer leaving mid-collective aborts the others
    finally:
        dist.destroy_process_group()


def _out(cfg: ExperimentConfig, args: argparse.Namespace, default: str) -> str:
    """Where the results go: ``--out``, else the ``--config`` file's ``out``, else ``default``."""
    if args.out is not None:
        return args.out
    if "out" in getattr(args, "config_settings", ()):
        if not isinstance(cfg.out, (str, os.PathLike)) or not str(cfg.out):
            raise ConfigError("out", f"out must name a folder, got {type(cfg.out).__name__} {cfg.out!r}")
        args.out = os.fspath(cfg.out)  # what the messages about --out name
        return args.out
    return default


def _run(cfg: ExperimentConfig, command: str, args: argparse.Namespace) -> int:
    cfg.out = _out(cfg, args, os.path.join("fastblend-out", command))
    cfg.check()
    with _torchrun_group(cfg):
        return _run_experiment(cfg, args)


def _run_experiment(cfg: ExperimentConfig, args: argparse.Namespace) -> int:
    main = is_main_process()  # under torchrun only rank 0 prints and writes
    if main:
        pipeline.prepare_output(cfg.out)
    args.results = cfg.out
    earlier = Path(cfg.out) / "results.json"  # an earlier run's file is not this run's results
    args.results_before = earlier.stat().st_mtime_ns if earlier.exists() else None
    log = _log(cfg.quiet or not main)
    t0 = time.perf_counter()
    result = pipeline.run_experiment(cfg, log=log)
    if not main:
        return 0
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

    from ..datasets import load_dataset, make_split
    from .plots import save_blend_grid

    cfg = _config_from_args(args, ExperimentConfig())
    log = _log(cfg.quiet)
    out = Path(_out(cfg, args, "fastblend-out/condense/reduced.pt"))
    if out.is_dir() or str(args.out or "").endswith(("/", os.sep)):
        out = out / "reduced.pt"
    elif out.suffix != ".pt":
        raise UsageError(f"--out {args.out}: expected a .pt file (the reduced set; its .clustering.pt and .png "
                         "go beside it) or a folder (an existing one, or a path ending in /)")
    cfg.check()
    if len(cfg.seeds) > 1:  # from a --config file (the flag takes one)
        raise UsageError(f"condense: seeds = {list(cfg.seeds)} (in --config): condense builds one split and one index; "
                         "give one seed")
    if cfg.forget == "hard":  # from a --config file (the flag offers uniform and classwise only)
        raise UsageError("condense: forget = 'hard' (in --config) needs a proxy model to rank the images, which only "
                         "`fastblend run` / `demo` train; use forget 'uniform' or 'classwise' here")
    pipeline.prepare_output(out.parent)
    if cfg.plots and not pipeline.plots_available():
        warnings.warn("matplotlib is not installed, so no PNG grid (`pip install matplotlib`)", RuntimeWarning,
                      stacklevel=1)
        cfg.plots = False
    with _torchrun_group(cfg):  # under torchrun every rank takes its share of features, grouping and Blend
        device = torch.device(cfg.device) if cfg.device else None
        train, test = load_dataset(cfg.dataset, cfg.data_root, per_class=cfg.per_class, limit=cfg.limit)
        split = make_split(train, test, forget=cfg.forget, forget_fraction=cfg.forget_fraction,
                           forget_class=cfg.forget_class, seed=cfg.seeds[0])
        ipc = cfg.ipc if cfg.ipc is not None else pipeline.default_ipc(cfg, train)
        pipeline.check_against_data(cfg, split, ipc)
        main = is_main_process()
        clustering, reduced, _ = pipeline.reduce_retain(cfg, train, split.forget, ipc, cfg.seeds[0], device,
                                                        progress=not cfg.quiet and main)
    if not main:  # every rank holds the same result; rank 0 writes it
        return 0
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


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="fastblend", allow_abbrev=False, description="Fast approximate machine "
                            "unlearning: Blend condensation + A-AMU (arXiv 2507.09786)")
    parser.add_argument("--version", action="version", version=f"fastblend {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", allow_abbrev=False,
                       help="the main job on the built-in animal-mnist data (no arguments needed)")
    _common(p)
    _experiment_args(p)
    p.set_defaults(fn=cmd_demo)
    p = sub.add_parser("run", allow_abbrev=False,
                       help="any data set, model, method, forget mode, ipc, seeds, rounds")
    _common(p)
    _experiment_args(p)
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("condense", allow_abbrev=False,
                       help="build and save a reduced retain set (+ a PNG of blends)")
    _common(p)
    _data_args(p, condense=True)  # no model is trained and no method runs: only the data, the request and the index
    p.set_defaults(fn=cmd_condense)
    return parser


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, (ValueError, TypeError, FileNotFoundError, ModuleNotFoundError)) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"fastblend: warning: {' '.join(str(message).split())}", file=sys.stderr, flush=True)


def _terminate(signum, frame) -> None:
    raise _Terminated()


def main(argv: list[str] | None = None) -> int:
    """The ``fastblend`` command; returns the exit code (see the module docstring)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help and --version exit 0 through argparse; a mistake returns its code
        if exc.code in (0, None):
            raise
        return int(exc.code)
    debug = args.debug or os.environ.get("FASTBLEND_DEBUG", "") not in ("", "0")
    where = f"fastblend {args.command}"
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default", RuntimeWarning)
            warnings.showwarning = _show_warning
            return args.fn(args)
    except (ConfigError, UsageError) as exc:
        if debug:
            raise
        setting = getattr(exc, "setting", None)
        if setting and setting in getattr(args, "config_settings", ()):
            flag = f"{setting} (in --config {args.config})"
        else:
            flag = _FLAGS.get(setting, f"--{setting.replace('_', '-')}") if setting else None
        print(f"{where}: error: {flag + ': ' if flag else ''}{_one_line(exc)}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, _Terminated) as exc:
        if debug:
            raise
        results = getattr(args, "results", None)
        path = Path(results) / "results.json" if results is not None else None
        written = path is not None and path.exists() \
            and path.stat().st_mtime_ns != getattr(args, "results_before", None)  # not an earlier run's file
        kept = "" if results is None else (f"; results of the finished seeds are in {results}" if written else
                                           "; no seed had finished, so no results were written")
        how = "SIGTERM" if isinstance(exc, _Terminated) else "Ctrl-C"
        print(f"{where}: interrupted by {how}{kept}", file=sys.stderr)
        return 143 if isinstance(exc, _Terminated) else 130
    except Exception as exc:
        if debug:
            raise
        print(f"{where}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    raise SystemExit(main())
