"""Markdown summary of benchmark results in the runner's ROW schema (``benchmarks/runner.py``).

    python -m benchmarks.summarize [PATH ...] [--md FILE]

PATHs are ``.jsonl`` files or folders of them (default ``fastblend-out/bench``). Prints one table,
rows grouped by (benchmark, case, variant); the ``speed-up`` column is ``median(baseline) /
median(row)`` for every baseline backend of the group (``runner.BASELINES``): how many times faster
the row is than that baseline in the same run on the same machine. ``--md`` (default
``summary.md`` in the first folder given) also writes it to a file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .runner import BASELINES, DEFAULT_OUT


def load_rows(paths: list[Path]) -> list[dict]:
    rows = []
    for path in paths:
        for file in sorted(path.glob("*.jsonl")) if path.is_dir() else [path]:
            rows += [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
    return rows


def is_baseline(backend: str) -> bool:
    """Whether a backend is a baseline: its first word is one of ``BASELINES`` (``own_forward contiguous``)."""
    return backend.split()[0] in BASELINES


def speedups(rows: list[dict]) -> list[dict[str, float]]:
    """Per row: ``{baseline backend: median(baseline) / median(row)}`` within its group."""
    medians: dict[tuple, dict[str, float]] = {}
    for row in rows:
        medians.setdefault(_group(row), {})[row["backend"]] = row["median_s"]
    return [{base: t / row["median_s"] for base, t in medians[_group(row)].items()
             if is_baseline(base) and base != row["backend"] and row["median_s"] > 0} for row in rows]


def _group(row: dict) -> tuple:
    return row["benchmark"], row["case"], row["variant"]


def _seconds(s: float) -> str:
    return f"{s * 1e3:.3g} ms" if s < 1 else f"{s:.3g} s"


def _value(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def format_markdown(rows: list[dict]) -> str:
    machines = {json.dumps(r["machine"], sort_keys=True) for r in rows}
    lines = []
    for m in map(json.loads, sorted(machines)):
        lines.append(f"Machine: {m['device'] if m['gpu'] else m['cpu']}, {m['cores']} cores, {m['threads']} threads; "
                     f"python {m['python']}, torch {m['torch']}, triton {m['triton']}, "
                     f"faiss {m['faiss-cpu'] or m['faiss-gpu-cu12']}, fastblend {m['fastblend']}")
    lines += ["", "| benchmark | case | variant | backend | median | p10-p90 | n | speed-up | metrics |",
              "|---|---|---|---|---:|---:|---:|---|---|"]
    order = sorted(range(len(rows)), key=lambda i: (*_group(rows[i]), rows[i]["median_s"]))
    ratios = speedups(rows)
    for i in order:
        r = rows[i]
        speed = ", ".join(f"{v:.2f}x vs {k}" for k, v in ratios[i].items())
        metrics = ", ".join(f"{k}={_value(v)}" for k, v in r["metrics"].items() if v is not None)
        lines.append(f"| {r['benchmark']} | {r['case']} | {r['variant']} | {r['backend']} | {_seconds(r['median_s'])} "
                     f"| {_seconds(r['p10_s'])}-{_seconds(r['p90_s'])} | {r['repeats']} | {speed} | {metrics} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", type=Path, default=[DEFAULT_OUT])
    parser.add_argument("--md", type=Path, default=None, help="Markdown file to write (default <folder>/summary.md)")
    args = parser.parse_args(argv)
    rows = load_rows(args.paths)
    if not rows:
        raise SystemExit(f"benchmarks.summarize: no result rows in {[str(p) for p in args.paths]}")
    table = format_markdown(rows)
    print(table)
    md = args.md or next((p / "summary.md" for p in args.paths if p.is_dir()), None)
    if md:
        md.parent.mkdir(parents=True, exist_ok=True)
        md.write_text(table)
        print(f"wrote {md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
