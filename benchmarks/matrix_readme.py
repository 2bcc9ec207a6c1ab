"""``python -m benchmarks.matrix_readme DIR``: the README of a matrix folder (``benchmarks/bench_matrix.py``),
generated whole from its unit files (nothing in it is typed by hand): how it was run, one table per
family (hard cells first), then issue 23's targets checked one by one with their numbers.

Definitions (the README states them too): a *cell* is (family, method) over its seeds; *time to band*
is :func:`fastblend.tracking.time_to_target` on the tracked curve (first evaluation inside whose next
is inside too), mean ± standard deviation over the seeds that reached it; a speed-up is a ratio
within one seed (its Retrain and base method ran on the same split and machine), averaged over the
seeds where both ends reached the band (``>x``: the other end never reached it in its run, so its
whole run is a lower bound); *final in band* is the model the user gets.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any

from .bench_matrix import ACCELERATED, TWIN

BASE_OF = {v: k for k, v in TWIN.items()}
METRICS = ("forget_acc", "test_acc", "mia")


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------
def load(folder: str | Path) -> dict[str, dict[int, dict[str, dict]]]:
    """``{family: {seed: {unit: record}}}`` of every unit file under ``folder`` (``retrain`` included)."""
    out: dict[str, dict[int, dict[str, dict]]] = {}
    for path in sorted(Path(folder).glob("*/seed*/*.json")):
        family, seed = path.parent.parent.name, int(path.parent.name.removeprefix("seed"))
        out.setdefault(family, {}).setdefault(seed, {})[path.stem] = json.loads(path.read_text())
    return out


def _mean_sd(values: list[float], digits: int = 1) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _mean(values: list[float]) -> float | None:
    return statistics.mean(values) if values else None


def _fmt_x(value: float | None, lower: bool = False) -> str:
    return "–" if value is None else (">" if lower else "") + f"{value:.1f}x"


# --------------------------------------------------------------------------------------------
# one cell
# --------------------------------------------------------------------------------------------
def cell(seeds: dict[int, dict[str, dict]], method: str) -> dict[str, Any]:
    """The numbers of one (family, method) cell over its seeds."""
    runs = {s: u[method] for s, u in seeds.items() if method in u and "retrain" in u}
    autos = {s: u[method + ".auto"] for s, u in seeds.items() if method + ".auto" in u}
    out: dict[str, Any] = {"method": method, "seeds": sorted(runs), "n": len(runs)}
    if not runs:
        return out
    reached = {s: r["t_target"] for s, r in runs.items() if r.get("t_target") is not None}
    out["reached"] = len(reached)
    out["t_target"] = list(reached.values())
    out["t_stay"] = [r["t_stay"] for r in runs.values() if r.get("t_stay") is not None]
    out["seconds"] = [r["seconds"] for r in runs.values()]
    out["in_band"] = sum(bool(r["in_band"]) for r in runs.values())
    out["stopped_at_budget"] = sum(bool(r.get("stopped_at_budget")) for r in runs.values())
    out["budget"] = [r["budget_seconds"] for r in runs.values() if r.get("budget_seconds") is not None]
    out["points"] = [len(r.get("curve", [])) for r in runs.values()]
    out["final"] = {m: _mean([r["final"][m] for r in runs.values()]) for m in (*METRICS, "mia_low", "mia_high")}
    out["dist"] = {m: _mean([r["final"][f"dist_{m}"] for r in runs.values()]) for m in METRICS}
    out["klom"] = {p: _mean([r["final"].get(f"klom_forget_{p}") for r in runs.values()
                             if r["final"].get(f"klom_forget_{p}") is not None]) for p in ("p50", "p95", "p99")}
    # speed-ups within each seed
    vs_retrain = [seeds[s]["retrain"]["retrain_seconds"] / max(t, 1e-12) for s, t in reached.items()]
    out["vs_retrain"] = _mean(vs_retrain)
    out["vs_retrain_all"] = len(reached) == len(runs) and len(runs) > 0
    vs_rt = [seeds[s]["retrain"]["retrain_t_target"] / max(t, 1e-12) for s, t in reached.items()
             if seeds[s]["retrain"].get("retrain_t_target")]
    out["vs_retrain_to_band"] = _mean(vs_rt)
    if method in ACCELERATED:
        base = BASE_OF[method]
        pairs, lower = [], False
        for s, t in reached.items():
            b = seeds[s].get(base)
            if b is None:
                continue
            if b.get("t_target") is not None:
                pairs.append(b["t_target"] / max(t, 1e-12))
            else:
                pairs.append(b["seconds"] / max(t, 1e-12))
                lower = True
        out["vs_base"], out["vs_base_lower"] = _mean(pairs), lower
        out["base_pairs"] = [(seeds[s][base]["t_target"], t) for s, t in reached.items()
                             if base in seeds[s] and seeds[s][base].get("t_target") is not None]
        out["base_reached_seeds"] = [s for s in runs if base in seeds[s] and seeds[s][base].get("t_target") is not None]
    if autos:
        out["auto_n"] = len(autos)
        out["auto_in_band"] = sum(bool(a["in_band"]) for a in autos.values())
        out["auto_stop"] = [a["stop_seconds"] for a in autos.values()]
        out["auto_vs_retrain"] = _mean([seeds[s]["retrain"]["retrain_seconds"] / max(a["stop_seconds"], 1e-12)
                                        for s, a in autos.items()])
        out["auto_klom"] = {p: _mean([a["final"].get(f"klom_forget_{p}") for a in autos.values()
                                      if a["final"].get(f"klom_forget_{p}") is not None])
                            for p in ("p50", "p95", "p99")}
        by = [a.get("stopped_by", "auto" if a.get("auto_stop", {}).get("stopped") else "?") for a in autos.values()]
        out["auto_by"] = ", ".join(f"{k} {by.count(k)}" for k in sorted(set(by)))
        out["auto_when_reached"] = [(s, bool(a["in_band"])) for s, a in autos.items() if s in reached]
        # the model where each run ended (differs only where the stop returned its closest evaluation's weights)
        out["auto_end_when_reached"] = [(s, bool(a.get("end_of_run", a)["in_band"])) for s, a in autos.items()
                                        if s in reached]
        out["auto_closest"] = sum("end_of_run" in a for a in autos.values())
    return out


def family_summary(seeds: dict[int, dict[str, dict]]) -> dict[str, Any]:
    """The family's Retrain, do-nothing control and label over its seeds."""
    rt = [u["retrain"] for u in seeds.values() if "retrain" in u]
    labels = [r["setting"] for r in rt]
    return {"labels": labels, "setting": max(set(labels), key=labels.count) if labels else "?",
            "retrain_seconds": [r["retrain_seconds"] for r in rt],
            "retrain_t_target": [r["retrain_t_target"] for r in rt if r.get("retrain_t_target") is not None],
            "do_nothing": {m: _mean([r["original"][f"dist_{m}"] for r in rt]) for m in METRICS},
            "original": {m: _mean([r["original"][m] for r in rt]) for m in METRICS},
            "retrain": {m: _mean([r["retrain"][m] for r in rt]) for m in METRICS},
            "floor": {p: _mean([r["retrain"].get(f"klom_forget_{p}") for r in rt
                                if r["retrain"].get(f"klom_forget_{p}") is not None]) for p in ("p50", "p95", "p99")},
            "band": {m: (_mean([r["band"][m]["low"] for r in rt]), _mean([r["band"][m]["high"] for r in rt]))
                     for m in METRICS},
            "hard_info": [r.get("hard") for r in rt if r.get("hard")],
            "seeds": sorted(s for s, u in seeds.items() if "retrain" in u)}


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------
def _k(v: float | None, d: int = 1) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{d}f}"


def family_table(name: str, seeds: dict[int, dict[str, dict]]) -> tuple[list[str], list[dict]]:
    fs = family_summary(seeds)
    methods = sorted({u.removesuffix(".auto") for s in seeds.values() for u in s if u != "retrain"},
                     key=lambda m: (m not in ACCELERATED, m))
    cells = [cell(seeds, m) for m in methods]
    lines = [f"### `{name}` — **{fs['setting'].upper()}** (per seed: {', '.join(fs['labels'])})", ""]
    dn = fs["do_nothing"]
    lines.append(f"- seeds {fs['seeds']}; do-nothing (the untouched original: forget "
                 f"{_k(fs['original']['forget_acc'])}, "
                 f"test {_k(fs['original']['test_acc'])}, MIA {_k(fs['original']['mia'])}) is "
                 f"{_k(dn['forget_acc'])} / {_k(dn['test_acc'])} / {_k(dn['mia'])} points from the band "
                 "(forget / test / MIA, mean over seeds)")
    lines.append("- Retrain: " + ", ".join(f"{m} {_k(fs['retrain'][m])} (band {_k(fs['band'][m][0])} .. "
                                          f"{_k(fs['band'][m][1])})" for m in METRICS)
                 + f"; its training {_mean_sd(fs['retrain_seconds'])} s, its own time to band "
                 f"{_mean_sd(fs['retrain_t_target'])} s; KLOM floor (Retrain vs Retrain, forget p50/p95/p99) "
                 + " / ".join(_k(fs["floor"][p], 2) for p in ("p50", "p95", "p99")))
    model = next((u["retrain"]["config"] for u in seeds.values() if "retrain" in u), {})
    lines.append(f"- model {model.get('model')} width {model.get('width')}")
    if fs["hard_info"]:
        h = fs["hard_info"][0]
        lines.append(f"- hard kind: the {h['forget']} highest-loss images of a {h['pool']}-image uniform pool under a "
                     "proxy that never saw the pool")
    offsets = {}  # per seed: the curve's MIA at its last point minus the final evaluation's, same model
    for sd, units in sorted(seeds.items()):
        diffs = [u["curve"][-1]["mia"] - u["final"]["mia"] for u in units.values()
                 if u.get("curve") and not u.get("stopped_at_budget") and u.get("final", {}).get("mia") is not None]
        if diffs:
            offsets[sd] = _mean(diffs)
    if offsets and any(abs(v) >= 0.05 for v in offsets.values()):
        lines.append("- the curves' MIA is another estimate than the final evaluation's (units made before "
                     "2026-12-06 (late): each truncated the held-out group to the forget set's size with its own "
                     "draw): at a curve's last point, the same model, it "
                     "is " + ", ".join(f"{v:+.1f}" for v in offsets.values()) + " points off the final MIA (seeds "
                     + ", ".join(str(sd) for sd in offsets) + "), so a time to band can count points the final "
                     "evaluation would put outside on the MIA")
    budgets = [b for c in cells for b in c.get("budget", [])]
    if budgets:
        factors = {r.get("budget_factor") for s in seeds.values() for r in s.values() if r.get("budget_factor")}
        lines.append(f"- base methods stop at the first evaluation past {', '.join(str(f) for f in sorted(factors))} x "
                     f"their seed's Retrain time ({_mean_sd(budgets)} s)")
    lines += ["", "| method | seeds | time to band s (reached) | stays in from s | run s | vs Retrain's training | "
              "vs Retrain's time to band | vs base | final forget / test / MIA [CI] | final in band | "
              "distance f / t / MIA | KLOM forget p50/p95/p99 | auto stop s (ended by) | auto in band | "
              "auto vs Retrain | auto KLOM p50/p95/p99 |",
              "|" + "---|" * 16]
    for c in cells:
        if not c["n"]:
            continue
        f = c["final"]
        auto = c.get("auto_n")
        lines.append(
            f"| {c['method']} | {c['n']} | {_mean_sd(c['t_target'])} ({c['reached']}/{c['n']}) | "
            f"{_mean_sd(c['t_stay'])} | {_mean_sd(c['seconds'])}"
            + (f" (budget hit {c['stopped_at_budget']}/{c['n']})" if c["budget"] else "")
            + f", {_mean_sd(c['points'], 0)} evaluations | "
            f"{_fmt_x(c['vs_retrain'])} | {_fmt_x(c['vs_retrain_to_band'])} | "
            f"{_fmt_x(c.get('vs_base'), c.get('vs_base_lower', False)) if c['method'] in ACCELERATED else '–'} | "
            f"{_k(f['forget_acc'])} / {_k(f['test_acc'])} / {_k(f['mia'])} [{_k(f['mia_low'])}, {_k(f['mia_high'])}] | "
            f"{c['in_band']}/{c['n']} | " + " / ".join(f"{c['dist'][m]:+.1f}" for m in METRICS) + " | "
            + " / ".join(_k(c["klom"][p], 2) for p in ("p50", "p95", "p99")) + " | "
            + (f"{_mean_sd(c['auto_stop'])} ({c['auto_by']}) | {c['auto_in_band']}/{auto} | "
               f"{_fmt_x(c['auto_vs_retrain'])} | "
               + " / ".join(_k(c["auto_klom"][p], 2) for p in ("p50", "p95", "p99")) if auto else
               "pending | pending | pending | pending") + " |")
    lines.append("")
    return lines, [{"family": name, "setting": fs["setting"], "floor": fs["floor"], **c} for c in cells if c["n"]]


def targets(cells: list[dict], auto_available: bool) -> list[str]:
    """Issue 23's targets, each checked with its numbers."""
    lines = ["## Targets (issue 23), checked from the files", ""]
    # 1a: accelerated >= 5x sooner than its base wherever the base reaches the band
    rows, met = [], True
    for c in cells:
        if c["method"] not in ACCELERATED or not c.get("base_reached_seeds"):
            continue
        ratios = [b / max(a, 1e-12) for b, a in c.get("base_pairs", [])]
        missing = len(c["base_reached_seeds"]) - len(ratios)  # base reached, twin did not
        ok = missing == 0 and all(r >= 5 for r in ratios)
        met &= ok
        rows.append(f"  - `{c['family']}` {c['method']}: base reached in seeds {c['base_reached_seeds']}; twin "
                    f"{', '.join(f'{r:.1f}x' for r in ratios) or 'never reached'}"
                    + (f" ({missing} seed(s) where the twin did not reach)" if missing else "")
                    + (" — met" if ok else " — **missed**"))
    lines.append("1. **Accelerated twin ≥ 5x sooner than its base method wherever the base reaches the band**: "
                 + ("no cell where a base method reached the band (under its budget), so nothing to check"
                    if not rows else ("**met**" if met else "**missed**") + f" ({len(rows)} cells)"))
    lines += rows
    # 1b: >= 10x sooner than Retrain's training in >= 3/4 of the hard cells
    hard = [c for c in cells if c["method"] in ACCELERATED and c["setting"] == "hard"]
    good = [c for c in hard if c.get("vs_retrain_all") and (c.get("vs_retrain") or 0) >= 10]
    frac = len(good) / len(hard) if hard else 0.0
    lines.append(f"2. **Accelerated ≥ 10x sooner than Retrain's training in ≥ 3/4 of the hard cells** (a cell counts "
                 f"when every seed reached the band and the mean speed-up is ≥ 10x): {len(good)}/{len(hard)} "
                 f"({frac:.0%}) — " + ("**met**" if hard and frac >= 0.75 else "**missed**"))
    for c in hard:
        lines.append(f"  - `{c['family']}` {c['method']}: reached {c.get('reached', 0)}/{c['n']}, "
                     f"{_fmt_x(c.get('vs_retrain'))} (seeds that reached); final model's distance to the band "
                     "forget / test / MIA " + " / ".join(f"{c['dist'][m]:+.1f}" for m in METRICS)
                     + f" points (mean), in band {c['in_band']}/{c['n']}")
    # 2: classwise a_finetune and a_scrub enter the band
    cw = {c["method"]: c for c in cells if c["family"] == "classwise"}
    parts, ok = [], bool(cw)
    for m in ("a_finetune", "a_scrub"):
        c = cw.get(m)
        if c is None:
            parts.append(f"{m}: not run")
            ok = False
            continue
        ok &= c.get("reached", 0) == c["n"]
        parts.append(f"{m} entered in {c.get('reached', 0)}/{c['n']} seeds, final in band {c['in_band']}/{c['n']}")
    lines.append("3. **Classwise: a_finetune and a_scrub enter the band**: " + "; ".join(parts) + " — "
                 + ("**met**" if ok else "**missed**"))
    # 3: auto stop in band in >= 80% of the cells where the method reaches the band
    if not auto_available:
        lines.append("4. **Auto stop inside the band in ≥ 80% of the cells where the method reaches it**: pending — "
                     "no auto-stop units in this folder (the auto stop is not merged yet, or not rerun)")
        lines.append("5. **KLOM at the auto stop within 2x of the floor (hard kind, accelerated)**: pending (as 4); "
                     "the full recipe's final KLOM against the floor, for now:")
        for c in cells:
            if c["method"] in ACCELERATED and c["family"] == "hard":
                lines.append("  - " + _klom_ratio(c, "klom"))
    else:
        runs = [(c, s, ok) for c in cells for s, ok in c.get("auto_when_reached", [])]
        cell_ok = [c for c in cells if c.get("auto_when_reached")]
        landed = [c for c in cell_ok if sum(ok for _, ok in c["auto_when_reached"]) * 2 > len(c["auto_when_reached"])]
        frac = len(landed) / len(cell_ok) if cell_ok else 0.0
        lines.append(f"4. **Auto stop inside the band in ≥ 80% of the cells where the method reaches it** (a cell "
                     "lands when the auto-stopped model is in the band in most of its seeds that reached the band): "
                     f"{len(landed)}/{len(cell_ok)} cells ({frac:.0%}); "
                     f"{sum(ok for *_, ok in runs)}/{len(runs)} runs — "
                     + ("**met**" if cell_ok and frac >= 0.8 else "**missed**"))
        closest = sum(c.get("auto_closest", 0) for c in cells)
        if closest:  # the same runs judged on the model where each ended, as before keep_closest
            end_runs = [ok for c in cells for _, ok in c.get("auto_end_when_reached", [])]
            end_landed = [c for c in cell_ok if sum(ok for _, ok in c["auto_end_when_reached"]) * 2
                          > len(c["auto_end_when_reached"])]
            lines.append(f"  - {closest} auto-stop runs ended their budget before the rule held and returned the "
                         "weights of their evaluation closest to the rule (docs/method.md §4.5); judged on the model "
                         f"where each run ended instead: {len(end_landed)}/{len(cell_ok)} cells, "
                         f"{sum(end_runs)}/{len(end_runs)} runs")
        for c in cell_ok:
            hits = sum(ok for _, ok in c["auto_when_reached"])
            lines.append(f"  - `{c['family']}` {c['method']}: auto in band {hits}"
                         f"/{len(c['auto_when_reached'])} (seeds that reached), stop {_mean_sd(c['auto_stop'])} s vs "
                         f"oracle time to band {_mean_sd(c['t_target'])} s")
        lines.append("5. **KLOM at the auto stop within 2x of the Retrain-vs-Retrain floor (hard kind, accelerated)**:")
        for c in cells:
            if c["method"] in ACCELERATED and c["family"] == "hard" and c.get("auto_klom"):
                lines.append("  - " + _klom_ratio(c, "auto_klom"))
    lines.append("")
    return lines


def _klom_ratio(c: dict, key: str) -> str:
    ratios = {p: (c[key][p] / c["floor"][p]) if c[key].get(p) and c["floor"].get(p) else None
              for p in ("p50", "p95", "p99")}
    ok = all(r is not None and r <= 2 for r in ratios.values())
    return (f"`{c['family']}` {c['method']}: forget KLOM p50/p95/p99 "
            + " / ".join(_k(c[key][p], 2) for p in ratios) + " vs floor "
            + " / ".join(_k(c["floor"][p], 2) for p in ratios) + " = "
            + " / ".join(_fmt_x(r) for r in ratios.values()) + " the floor — " + ("met" if ok else "**missed**"))


def render(folder: str | Path) -> str:
    """The whole README of ``folder``."""
    data = load(folder)
    stamps = [r for fam in data.values() for s in fam.values() for r in s.values()]
    machine = stamps[0]["machine"] if stamps else {}
    loads = [r["load_average"][0] for r in stamps if r.get("load_average")]
    cfg = next((r["config"] for r in stamps if r.get("unit") == "retrain"), {})
    auto = any(u.endswith(".auto") for fam in data.values() for s in fam.values() for u in s)
    commands: list[list[str]] = []
    for r in sorted(stamps, key=lambda r: r["finished_utc"]):
        if r.get("argv") and r["argv"][1:] not in commands:
            commands.append(r["argv"][1:])
    order = sorted(data, key=lambda f: (family_summary(data[f])["setting"] != "hard", f.startswith("resnet"), f))
    lines = ["# The matrix on the yardstick (issue 23 §1)", "",
             "Generated by `python -m benchmarks.matrix_readme` from the unit files of "
             "`python -m benchmarks.bench_matrix` in this folder; nothing here is typed by hand.", "",
             "## How it ran", "",
             f"- data `{cfg.get('dataset')}`, limit {cfg.get('limit')} (training and test images), forget fraction "
             f"{cfg.get('forget_fraction')}, model {cfg.get('model')} width {cfg.get('width')}, the demo's recipe "
             f"{cfg.get('retrain_config')} for the original and Retrain; Retrain ensemble of "
             f"{cfg.get('retrain_seeds')} (the run's own timed Retrain + cached members); "
             f"{cfg.get('track_evaluations')} evaluations per quality curve on at most {cfg.get('track_samples')} "
             f"samples; MIA `{cfg.get('mia_statistic')}`, KLOM `{cfg.get('klom_estimator')}`",
             f"- machine: {machine.get('platform')}, {machine.get('cores')} cores, torch {machine.get('torch')} with "
             f"{machine.get('threads')} thread(s), device {machine.get('device')}"
             + (f"; load average at the end of the units {min(loads):.1f} .. {max(loads):.1f}" if loads else "")
             + " — the machine was shared with other jobs, so absolute seconds are noisy; every ratio is within one "
             "seed (same split)" + _load_note(stamps),
             f"- {len(stamps)} unit files; summed unit wall time "
             f"{sum(r.get('wall_seconds', 0) for r in stamps) / 60:.0f} "
             f"min; first unit finished {min(r['finished_utc'] for r in stamps) if stamps else '–'}, last "
             f"{max(r['finished_utc'] for r in stamps) if stamps else '–'}",
             "- commands (`OMP_NUM_THREADS=1`, `FASTBLEND_CACHE` the shared model cache), in the order first used: "
             + "; ".join(f"`python -m benchmarks.bench_matrix {' '.join(a)}`" for a in commands) if commands else
             "- commands: not recorded",
             "- columns: *time to band* = first evaluation inside the band whose next is inside too (mean ± sd over "
             "the seeds that reached it; reached/seeds); *stays in from* = the evaluation from which every later one "
             "and the final model are inside; *run s* = the whole run's time and its curve's evaluations (a base "
             "method's curve is spread over its whole planned schedule, so under a budget it has few points and its "
             "time to band is coarse: an over-estimate, which favours its twin); speed-ups are per-seed ratios "
             "averaged (`>`: the base never reached the band in its budget, its whole run is a lower bound); "
             "*final* = the model the user gets (mean over seeds); an accelerated run's time is the index request "
             "plus the unlearning (the index is built once per training set and not counted, as in the demo)", ""]
    all_cells: list[dict] = []
    for fam in order:
        table, cells = family_table(fam, data[fam])
        lines += table
        all_cells += cells
    lines += targets(all_cells, auto)
    return "\n".join(lines)


def _load_note(stamps: list[dict]) -> str:
    """Where the auto-stop units ran at another load than the tracked ones (a later process), say so."""
    auto = [r["load_average"][0] for r in stamps if r.get("load_average") and str(r.get("unit", "")).endswith(".auto")]
    rest = [r["load_average"][0] for r in stamps if r.get("load_average")
            and not str(r.get("unit", "")).endswith(".auto")]
    if not auto or not rest or abs(sum(auto) / len(auto) - sum(rest) / len(rest)) < 1.5:
        return ""
    return (f"; the auto-stop units ran in a later process at load {min(auto):.1f} .. {max(auto):.1f} against "
            f"{min(rest):.1f} .. {max(rest):.1f} for the tracked units and Retrain, so *auto vs Retrain* overstates "
            "the speed-up by up to that load ratio (the in-band and KLOM columns do not depend on it)")


BEGIN, END = "<!-- matrix table: generated by benchmarks/matrix_readme.py --readme -->", "<!-- end of matrix table -->"


def markers(block: str | None = None) -> tuple[str, str]:
    """The README's markers around the generated table: :data:`BEGIN` / :data:`END` for the main matrix, and a pair
    of its own for each named ``block`` (an option's matrix folder, ``--block NAME``)."""
    if block is None:
        return BEGIN, END
    return (f"<!-- matrix table {block}: generated by benchmarks/matrix_readme.py --readme --block {block} -->",
            f"<!-- end of matrix table {block} -->")


def readme_block(folder: str | Path, block: str | None = None) -> str:
    """The project README's compact table of the accelerated methods, hard cells first, from the unit files."""
    begin, end = markers(block)
    data = load(folder)
    order = sorted(data, key=lambda f: (family_summary(data[f])["setting"] != "hard", f.startswith("resnet"), f))
    lines = [begin, "",
             "| cell | label | method | final in band | time to band s (reached) | vs Retrain's training | "
             "auto stop: in band | auto stop s | ended by |", "|---|---|---|---|---|---|---|---|---|"]
    for fam in order:
        label = family_summary(data[fam])["setting"]
        for method in ACCELERATED:
            c = cell(data[fam], method)
            if not c.get("n"):
                continue
            auto_in = f"{c['auto_in_band']}/{c['auto_n']}" if c.get("auto_n") else "–"
            lines.append(f"| `{fam}` | {label} | {method} | {c['in_band']}/{c['n']} | "
                         f"{_mean_sd(c['t_target']) if c['t_target'] else '–'} ({c['reached']}/{c['n']}) | "
                         f"{_fmt_x(c['vs_retrain'])} | {auto_in} | "
                         f"{_mean_sd(c['auto_stop']) if c.get('auto_stop') else '–'} | {c.get('auto_by', '–')} |")
    lines += ["", f"Source: [`{Path(folder).as_posix()}/`]({Path(folder).as_posix()}/README.md) (every column, the "
              "base methods, KLOM and the targets checked one by one).", "", end]
    return "\n".join(lines)


def write_readme_block(readme: str | Path, folder: str | Path, block: str | None = None) -> str:
    """Replace the block between the markers of ``block`` (:func:`markers`) in ``readme`` with :func:`readme_block`."""
    begin, end = markers(block)
    text = Path(readme).read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"matrix_readme: {readme} has no block between {begin!r} and {end!r}")
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    new = head + readme_block(folder, block) + tail
    Path(readme).write_text(new)
    return new


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(prog="python -m benchmarks.matrix_readme", description=__doc__.splitlines()[0])
    p.add_argument("folder", help="the matrix folder (bench_matrix's --out)")
    p.add_argument("--readme", type=Path, help="also rewrite this file's generated matrix table (the project README)")
    p.add_argument("--block", default=None, help="the named table to rewrite (an option's matrix folder; default: the "
                   "main matrix's)")
    args = p.parse_args(argv)
    text = render(args.folder)
    (Path(args.folder) / "README.md").write_text(text + "\n")
    if args.readme is not None:
        write_readme_block(args.readme, args.folder, args.block)
    return text


if __name__ == "__main__":
    print(main())
