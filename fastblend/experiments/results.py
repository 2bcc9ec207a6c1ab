"""The results of an experiment: mean and spread over seeds, the printed table, and the files
(`results.json`, `results.csv`, `summary.csv`), written atomically."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_write_text
from .settings import VARIANTS, ConfigError, ExperimentConfig

# --------------------------------------------------------------------------------------------
# many repetitions, aggregation and files
# --------------------------------------------------------------------------------------------
NUMERIC = ("retain_acc", "forget_acc", "test_acc", "mia", "t_total", "t_features", "t_grouping", "t_split",
           "t_blend", "t_unlearning", "t_evaluation", "speedup_vs_base", "speedup_vs_retrain", "gap_retain_acc",
           "gap_forget_acc", "gap_test_acc", "gap_mia", "t_index", "t_target", "target_reached", "t_eval_tracking",
           "speedup_target_vs_retrain", "speedup_target_vs_base", "speedup_target_vs_base_lower", "budget_seconds",
           "stopped_at_budget", "mia_low", "mia_high", "mia_se", "mia_n_forget", "mia_n_heldout", "mia_small",
           "mia_paper", "in_band", "auto_stop", "auto_stopped", "auto_stop_step", "auto_stop_seconds",
           *(f"{k}_{m}{e}" for m in ("forget_acc", "test_acc", "mia") for k, e in
             (("band", "_low"), ("band", "_high"), ("dist", ""))),
           *(f"klom_{g}_{q}" for g in ("forget", "retain", "eval") for q in ("p50", "p95", "p99", "mean")))


def summarise(per_seed: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds of every numeric column, per variant."""
    out = []
    for variant in VARIANTS:
        rows = [r for s in per_seed for r in s["rows"] if r["variant"] == variant]
        if not rows:
            continue
        agg: dict[str, Any] = {"variant": variant, "method": rows[0]["method"], "seeds": len(rows)}
        settings = {r["setting"] for r in rows if "setting" in r}
        if settings:
            agg["setting"] = settings.pop() if len(settings) == 1 else "mixed"
        requests = {r["request"] for r in rows if r.get("request")}  # the recipe the accelerated method ran
        if requests:
            agg["request"] = requests.pop() if len(requests) == 1 else "mixed"
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
    if any("in_band" in r for r in summary):
        lines += ["", format_yardstick(summary)]
    for r in summary:
        if r.get("stopped_at_budget"):
            lines.append(f"({r['variant']}: stopped at its time budget of {r['budget_seconds']:.3g}s "
                         "(base_budget); its numbers are at the stop, and where it had not reached the band the "
                         "speed-ups against it are lower bounds)")
    return "\n".join(lines)


def format_yardstick(summary: list[dict]) -> str:
    """The yardstick's table (docs/method.md §4.1-§4.4): Retrain's seed band, each variant's finals with
    the MIA's interval, its distance to the band per metric (0 = inside; the original's row is the
    do-nothing control), time to the band, and KLOM percentiles over the forget / evaluation samples
    (the Retrain row: the noise floor). The setting is labelled **easy** when doing nothing is inside
    the band or within one half-width of it on every metric; its speed-ups are then marked."""
    by = {r["variant"]: r for r in summary}
    ref = by.get("retrain") or next(iter(by.values()))
    setting = ref.get("setting", "?")
    band = "  ".join(f"{m} [{ref[f'band_{m}_low']:.1f}, {ref[f'band_{m}_high']:.1f}]"
                     for m in ("forget_acc", "test_acc", "mia") if f"band_{m}_low" in ref)
    head = (f"{'variant':<12} {'forget':>6} {'test':>6} {'MIA [95% CI]':>18} {'n min':>6} "
            f"{'dist to band f/t/MIA':>22} {'target':>8} {'@t retr.':>9} "
            f"{'KLOM forget p50/p95/p99':>24} {'KLOM eval p50/p99':>18}")
    lines = [f"setting: {setting.upper()}" + (" (doing nothing is within one band half-width of Retrain's band on "
                                              "every metric: speed-ups here are not evidence)" if setting == "easy"
                                              else "") + f"; Retrain's band: {band}", head, "-" * len(head)]
    for r in summary:
        if "in_band" not in r:
            continue
        mia = f"{r['mia']:.1f} [{r.get('mia_low', math.nan):.1f},{r.get('mia_high', math.nan):.1f}]"
        n_forget = r.get("mia_n_forget", 0)
        n = f"{min(n_forget, r.get('mia_n_heldout', n_forget)):.0f}" + ("!" if r.get("mia_small") else "")
        dist = "/".join(f"{r.get(f'dist_{m}', math.nan):+.1f}" for m in ("forget_acc", "test_acc", "mia"))
        t = "-" if "target_reached" not in r else (f"{r['t_target']:.1f}s" if r.get("t_target") is not None
                                                    else "n/r")
        v = r.get("speedup_target_vs_retrain")
        low = r.get("speedup_target_vs_retrain_lower")
        sp = f"{v:.1f}x" if v else (f">{low:.1f}x" if low else "-")
        if setting == "easy" and sp != "-":
            sp += "(e)"
        klf = "/".join(f"{r[f'klom_forget_{q}']:.2f}" for q in ("p50", "p95", "p99")) if "klom_forget_p50" in r \
            else "-"
        kle = "/".join(f"{r[f'klom_eval_{q}']:.2f}" for q in ("p50", "p99")) if "klom_eval_p50" in r else "-"
        name = r["variant"] + (" (floor)" if r["variant"] == "retrain" and "klom_forget_p50" in r else "")
        name = "do-nothing" if r["variant"] == "original" else name
        lines.append(f"{name:<12} {r['forget_acc']:6.1f} {r['test_acc']:6.1f} {mia:>18} {n:>6} {dist:>22} {t:>8} "
                     f"{sp:>9} {klf:>24} {kle:>18}")
    orig = by.get("original", {})
    if orig.get("in_band"):
        lines.append("(the do-nothing row is INSIDE Retrain's band: doing nothing reaches the target, so no time to "
                     "target here measures forgetting)")
    if any(r.get("mia_small") for r in summary):
        lines.append("(n min, the smaller MIA group, marked !: below the minimum size; that score is mostly noise)")
    for r in summary:
        if r.get("auto_stop"):
            n, fired, inside = r.get("seeds", 1), r.get("auto_stopped", 0.0), r.get("in_band", 0.0)
            if n == 1:
                restored = r.get("auto_stop_restored_step")
                how = (f"fired at step {r['auto_stop_step']:.0f}, {r['auto_stop_seconds']:.1f}s of unlearning"
                       if fired else "did not fire; the run ended at its budget or the end of its recipe"
                       + ("" if restored is None or (isinstance(restored, float) and math.isnan(restored)) else
                          f" and returned the model of step {restored:.0f}, its evaluation closest to the rule"))
                where = "inside" if inside else "OUTSIDE"
            else:
                how = f"fired in {round(fired * n)} of {n} seeds"
                where = f"inside in {round(inside * n)} of {n} seeds"
            lines.append(f"({r['variant']}: auto stop (no Retrain input) {how}; its row is the model the run "
                         f"returned, {where} Retrain's band; 'target' is the oracle time to the band on its curve)")
    return "\n".join(lines)


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
