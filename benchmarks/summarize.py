"""Summarise pytest-benchmark JSON files: median, spread and speed-up ratios per group.

    python -m benchmarks.summarize results/*.json [--csv results/summary.csv]

Within each benchmark group the ratio column is ``median(baseline) / median(row)`` for every
baseline present (``eager``, ``loop``, ``torch_backend``, ``reference``...), i.e. how many times
faster the row is than that baseline in the same run on the same machine.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path

BASELINES = ("eager", "loop", "reference", "literal_loop", "python_scan", "straightforward")


def load_rows(paths: list[Path]) -> list[dict]:
    rows = []
    for path in paths:
        doc = json.loads(Path(path).read_text())
        machine = doc.get("machine_info", {})
        for bench in doc.get("benchmarks", []):
            stats = bench["stats"]
            extra = bench.get("extra_info", {})
            rows.append({
                "group": bench.get("group") or bench["name"],
                "impl": extra.get("impl", bench["name"]),
                "median_s": stats["median"],
                "iqr_s": stats["iqr"],
                "min_s": stats["min"],
                "rounds": stats["rounds"],
                "device": extra.get("device", machine.get("cpu", {}).get("brand_raw", "")),
                "file": str(path),
                **{k: v for k, v in extra.items() if k not in ("impl", "device")},
            })
    return rows


def add_ratios(rows: list[dict]) -> list[dict]:
    by_group: dict[str, dict[str, float]] = defaultdict(dict)
    for row in rows:
        by_group[row["group"]][row["impl"]] = row["median_s"]
    for row in rows:
        for base in BASELINES:
            if base in by_group[row["group"]] and base != row["impl"]:
                row[f"speedup_vs_{base}"] = by_group[row["group"]][base] / row["median_s"]
    return rows


def format_table(rows: list[dict]) -> str:
    lines = []
    for group in sorted({r["group"] for r in rows}):
        lines.append(f"\n{group}")
        for row in sorted((r for r in rows if r["group"] == group), key=lambda r: r["median_s"]):
            ratios = "  ".join(f"{k[len('speedup_vs_'):]}: {v:6.1f}x" for k, v in row.items()
                               if k.startswith("speedup_vs_"))
            lines.append(f"  {row['impl']:<16} median {row['median_s'] * 1e3:10.2f} ms  "
                         f"iqr {row['iqr_s'] * 1e3:8.2f} ms  {ratios}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", nargs="+", type=Path)
    parser.add_argument("--csv", type=Path, default=None)
    args = parser.parse_args(argv)
    rows = add_ratios(load_rows(args.json))
    print(format_table(rows))
    if args.csv:
        keys = sorted({k for r in rows for k in r})
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with args.csv.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
