"""The benchmark suite: ``python -m benchmarks [--out DIR] [--quick] [--only NAME ...] [--device DEV]``.

Runs each benchmark in its own process (``python -m benchmarks.bench_<name>``: memory measurements
start clean and one failure does not stop the rest), each writing ``<out>/<name>.jsonl`` in the
runner's ROW schema, then writes the Markdown summary ``<out>/summary.md`` and prints it.
``--quick`` runs the smallest sizes, a check that everything runs end to end (a few minutes on a
CPU); the full sizes take the better part of an hour on a CPU.
"""

from __future__ import annotations

import subprocess
import sys

from . import summarize
from .runner import parser

BENCHMARKS = ("segment_blend", "quantile_mmd", "grouping", "condense", "request", "memory", "distributed")


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", default=list(BENCHMARKS), help=f"benchmarks by name: {' '.join(BENCHMARKS)}")
    args = p.parse_args(argv)
    unknown = sorted(set(args.only) - set(BENCHMARKS))
    if unknown:
        raise SystemExit(f"benchmarks: unknown benchmarks {unknown}; known: {list(BENCHMARKS)}")
    failed = []
    for name in args.only:
        cmd = [sys.executable, "-m", f"benchmarks.bench_{name}", "--out", str(args.out), "--device", str(args.device)]
        cmd += ["--quick"] if args.quick else []
        print(f"\n== {name}: {' '.join(cmd)}", flush=True)
        if subprocess.call(cmd) != 0:
            failed.append(name)
    print()
    summarize.main([str(args.out)])
    if failed:
        print(f"benchmarks: failed: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
