"""The one way benchmarks time, measure memory and write results.

Every benchmark writes JSON lines, one ROW per line, to ``<out>/<name>.jsonl`` (default folder
``fastblend-out/bench``) through :class:`Recorder`; ``python -m benchmarks.summarize`` reads them all.

ROW schema::

    {
      "benchmark": "segment_blend",   # what is measured: an op, a stage or a component
      "case":      "N=50000 K=10000", # the workload: sizes/data set, as a short label
      "variant":   "fwd+bwd grad=w",  # which pass or step of it (fwd, bwd, extract, blend ...)
      "backend":   "cpp",             # the implementation timed; BASELINES names the baselines
      "params":    {...},             # the settings behind case/variant (N, K, ipc, iterations ...)
      "median_s":  0.0123,            # median wall-clock seconds over the repeats
      "p10_s":     0.0120,            # 10th / 90th percentile (linear interpolation): the spread
      "p90_s":     0.0131,
      "repeats":   5,                 # timed runs (after `warmup` untimed ones)
      "warmup":    1,
      "metrics":   {...},             # anything else measured: peak_bytes, loss, objective ...
      "machine":   {...}              # fastblend.experiments.machine.machine_info(), the same for every row of a file
    }

Within one (benchmark, case, variant) the rows compare like for like: the summary reports each
row's speed-up over every baseline present in the group, as a ratio of medians measured in the
same run on the same machine. Timings are wall clock with the device synchronised before each
clock read; nothing here, or in any benchmark, asserts on a timing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from fastblend._device import synchronize
from fastblend.experiments.machine import machine_info

DEFAULT_OUT = Path("fastblend-out/bench")

# backend names the summary divides by: eager/loop references from fastblend.ops.reference and
# fastblend.condensation.reference, and the plain-Python or plain-PyTorch ways of doing the same job
BASELINES = ("eager", "loop", "straightforward", "python_scan", "own_forward")


@dataclass
class Timing:
    """Seconds of the timed repeats, summarised."""

    median_s: float
    p10_s: float
    p90_s: float
    repeats: int
    warmup: int = 0

    @classmethod
    def of(cls, seconds: list[float], warmup: int = 0) -> Timing:
        """Summary of measured ``seconds`` (one or more runs)."""
        s = sorted(seconds)
        return cls(statistics.median(s), _percentile(s, 0.1), _percentile(s, 0.9), len(s), warmup)


def _percentile(sorted_values: list[float], q: float) -> float:
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def measure(fn: Callable[[], Any], *, repeats: int, warmup: int = 1, device: torch.device | None = None,
            setup: Callable[[], tuple] | None = None) -> tuple[Timing, Any]:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed; return the timing and the
    last result. ``setup()`` (untimed) returns the positional arguments of each call."""
    device = device or torch.device("cpu")
    seconds, out = [], None
    for i in range(warmup + repeats):
        args = setup() if setup else ()
        synchronize(device)
        t0 = time.perf_counter()
        out = fn(*args)
        synchronize(device)
        if i >= warmup:
            seconds.append(time.perf_counter() - t0)
    return Timing.of(seconds, warmup), out


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # no procfs (not Linux)
        return None


def track_rss_closely() -> None:
    """Make glibc serve every allocation above 64 KiB with mmap and give it back on free, so that the
    resident set follows the live tensors instead of a growing free list (CPU memory measurements
    of small ops). Affects the whole process: benchmarks call it in their own process only."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
    except OSError:
        pass


class PeakMemory:
    """Peak memory during a ``with`` block, in bytes: the CUDA allocator's peak on a GPU, else the
    resident set size sampled every ``interval`` seconds on a thread. ``.metrics()`` gives
    ``peak_bytes`` (absolute), ``growth_bytes`` (over the size before the block) and ``memory_kind``;
    the byte counts are ``None`` where the resident set cannot be read."""

    def __init__(self, device: torch.device, interval: float = 0.0002):
        self.device, self.interval = device, interval
        self.before: int | None = None
        self.peak: int | None = None
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device)
        else:
            self.before = self.peak = _rss_bytes()
            if self.before is not None:
                self._thread = threading.Thread(target=self._sample, daemon=True)
                self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        elif self.before is not None:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _rss_bytes())

    def metrics(self) -> dict:
        growth = None if self.peak is None else max(0, self.peak - self.before)
        return {"memory_kind": "cuda_allocated" if self.device.type == "cuda" else "cpu_rss",
                "peak_bytes": self.peak, "growth_bytes": growth}


def peak_memory(fn: Callable[[], Any], device: torch.device) -> dict:
    """:class:`PeakMemory` metrics of one call of ``fn``."""
    with PeakMemory(device) as mem:
        fn()
    return mem.metrics()


class Recorder:
    """Writes ROWs to ``<out>/<name>.jsonl`` (replacing an earlier file) as they are measured, and
    prints one line per row."""

    def __init__(self, out: Path | str, name: str):
        self.path = Path(out) / f"{name}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("")
        self.machine = machine_info()

    def add(self, benchmark: str, case: str, variant: str, backend: str, timing: Timing,
            params: dict | None = None, metrics: dict | None = None) -> dict:
        row = {"benchmark": benchmark, "case": case, "variant": variant, "backend": backend,
               "params": params or {}, "median_s": timing.median_s, "p10_s": timing.p10_s, "p90_s": timing.p90_s,
               "repeats": timing.repeats, "warmup": timing.warmup, "metrics": metrics or {},
               "machine": self.machine}
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(f"{benchmark:<14} {case:<28} {variant:<18} {backend:<26} median {_seconds(timing.median_s):>10}  "
              f"p10-p90 {_seconds(timing.p10_s)}-{_seconds(timing.p90_s)}  n={timing.repeats}", flush=True)
        return row


def _seconds(s: float) -> str:
    return f"{s * 1e3:.3f} ms" if s < 1 else f"{s:.3f} s"


def parser(description: str) -> argparse.ArgumentParser:
    """Argument parser with the options every benchmark takes: ``--out DIR``, ``--quick``, ``--device``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results folder (default {DEFAULT_OUT})")
    p.add_argument("--quick", action="store_true", help="smallest sizes: checks the benchmark runs end to end")
    p.add_argument("--device", type=torch.device, default="cuda" if torch.cuda.is_available() else "cpu")
    return p
