"""Ahead-of-time compilation of every Triton kernel specialisation for real GPUs, without a GPU.

    python -m benchmarks.aot_report [--out DIR] [--arch 80 90] [--jobs N]

Compiles each entry of ``triton_specializations()`` of every op module (``fastblend.ops.segment_blend``,
``fastblend.ops.quantile_mmd``) for each ``sm_<arch>`` with Triton's compiler and the ``ptxas`` in
Triton's wheel, in a fresh Triton cache (nothing is reused across runs), and writes
``<out>/aot_report.json``: per kernel, specialisation and target the registers per thread, spill
bytes, stack and shared memory (``ptxas -v``; Triton's own ``shared`` as well) and the compile
seconds; ``errors`` lists every failed compile and ``uncovered`` every ``@triton.jit`` function of an
op module that its table does not list, or lists with the wrong arguments. Exits 1 if either is
non-empty. ``tests/test_aot.py`` runs this script; the target is zero spills at the chosen block sizes.
"""

from __future__ import annotations

import os
import sys

# kernels must be real triton.jit functions: the interpreter flag has to go before fastblend is imported
os.environ.pop("TRITON_INTERPRET", None)

import argparse  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

OP_MODULES = ("fastblend.ops.segment_blend", "fastblend.ops.quantile_mmd")
DEFAULT_ARCHS = (80, 90)


def _compile_one(name: str, index: int, arch: int) -> tuple[dict, str | None]:
    """Compile specialisation ``index`` of op module ``name`` for ``sm_<arch>``: ``(its row, its error or None)``
    (a worker's task: imports by name, so it runs in a fresh process too)."""
    from fastblend.ops import _aot

    module = importlib.import_module(name)
    s = module.triton_specializations()[index]
    row = {"op": name.rsplit(".", 1)[1], "kernel": s.kernel, "spec": s.label, "arch": f"sm_{arch}",
           "num_warps": s.num_warps, "constexprs": {k: v for k, v in s.constexprs}}
    t0 = time.perf_counter()
    error = None
    try:
        compiled, usage = _aot.compile_specialization(module, s, arch)
        row.update(usage, triton_shared_bytes=compiled.metadata.shared)
    except Exception as exc:  # every failure is reported, not just the first
        error = f"{row['op']} {s.label} sm_{arch}: {type(exc).__name__}: {exc}"
        row["error"] = str(exc)
    row["compile_s"] = round(time.perf_counter() - t0, 3)
    return row, error


def compile_all(archs: tuple[int, ...], jobs: int = 1) -> dict:
    """Every specialisation for every arch; ``jobs`` > 1 compiles in that many fresh processes (the rows keep
    the one-process order)."""
    from fastblend.experiments.machine import machine_info
    from fastblend.ops import _aot

    tasks, uncovered = [], []
    for name in OP_MODULES:
        module = importlib.import_module(name)
        uncovered += _aot.coverage_problems(module)
        tasks += [(name, i, arch) for i in range(len(module.triton_specializations())) for arch in archs]
    if jobs > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            done = list(pool.map(_compile_one, *zip(*tasks)))
    else:
        done = [_compile_one(*task) for task in tasks]
    rows = [row for row, _ in done]
    errors = [error for _, error in done if error is not None]
    import triton

    return {"triton": triton.__version__, "ptxas": _aot.ptxas_path(), "archs": [f"sm_{a}" for a in archs],
            "machine": machine_info(), "specializations": len(rows),
            "max_registers": max((r.get("registers", 0) for r in rows), default=0),
            "spilling": [f"{r['op']} {r['spec']} {r['arch']}" for r in rows
                         if r.get("spill_store_bytes", 0) or r.get("spill_load_bytes", 0)],
            "errors": errors, "uncovered": uncovered, "kernels": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("fastblend-out/bench"), help="folder of aot_report.json")
    p.add_argument("--arch", type=int, nargs="+", default=list(DEFAULT_ARCHS), help="compute capabilities (x10)")
    p.add_argument("--jobs", type=int, default=1, help="compile in this many processes (default 1)")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error(f"--jobs must be >= 1, got {args.jobs}")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TRITON_CACHE_DIR"] = cache  # compile everything afresh
        t0 = time.perf_counter()
        report = compile_all(tuple(args.arch), args.jobs)
        report["total_s"] = round(time.perf_counter() - t0, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "aot_report.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"aot_report: {report['specializations']} compiles for {report['archs']} in {report['total_s']} s; "
          f"max {report['max_registers']} registers/thread; spilling {len(report['spilling'])}; "
          f"errors {len(report['errors'])}; uncovered {len(report['uncovered'])}")
    for line in report["errors"] + report["uncovered"] + report["spilling"]:
        print("  " + line, file=sys.stderr)
    return 1 if report["errors"] or report["uncovered"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
