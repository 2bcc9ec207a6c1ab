"""Peak resident memory of ``fastblend.condense`` on a CIFAR-10-sized data set: in memory vs streamed.

    python -m benchmarks.bench_memory [--quick] [--out DIR] [--ipc 50] [--member-chunk 4096] [--iterations 2]

The data set (50,000 synthetic 3x32x32 float32 images, seeded, 10 classes: 614 MB) is written once
to a memory-mapped ``.npy`` in a temporary folder. Each case runs in a fresh interpreter and reports
its peak resident set (``VmHWM`` of ``/proc/self/status``: anonymous memory plus the file pages
mapped into the process), the peak of its anonymous part (``RssAnon``, sampled every 5 ms by a
thread) and its resident set after the imports (``baseline_bytes``: torch, ``torch._dynamo`` and
fastblend, no data):

* ``memmap_chunked``: a :class:`fastblend.MemmapImages` over the memory map (batched reads whose
  pages are unmapped again once copied out), ``condense(dataset, forget, member_chunk=...)``: content
  hashes, features and each Blend chunk's members are read a batch at a time and the reduced set
  serves its residual rows from the map;
* ``memmap_chunked`` at half size (the first 25,000 rows of the same file, through a Dataset view):
  what grows with N is the features (``[N, 2048]`` float32, 8 KB per image) and the clustering,
  not the images;
* ``in_memory``: the whole array loaded into a tensor, ``condense(images, labels, forget, ...)``
  (the baseline). ``--cases`` picks some of the three (``half``, ``streamed``, ``in_memory``).

A cheap Blend setting (``iterations=2``, ipc 50, 100 images forgotten) keeps the whole benchmark to
a few minutes on one core; ``--quick``: N = 2,000 / 1,000. Writes ``<out>/memory.jsonl`` (the
runner's ROW schema; ``median_s`` is the wall time of the one condense call).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .runner import Recorder, Timing, parser

SHAPE = (3, 32, 32)
CLASSES = 10


def _status_bytes(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def write_npy(folder: Path, n: int, seed: int = 0) -> tuple[Path, Path]:
    """``images.npy`` (``[n, 3, 32, 32]`` float32, standard normal, seeded) written in blocks through a
    memory map, and ``labels.npy`` (``i % 10``)."""
    images = folder / "images.npy"
    mm = np.lib.format.open_memmap(images, mode="w+", dtype=np.float32, shape=(n,) + SHAPE)
    rng = np.random.default_rng(seed)
    for s in range(0, n, 4096):
        mm[s:s + 4096] = rng.standard_normal((min(4096, n - s),) + SHAPE, dtype=np.float32)
    mm.flush()
    del mm
    labels = folder / "labels.npy"
    np.save(labels, (np.arange(n) % CLASSES).astype(np.int64))
    return images, labels


def _head(data, n: int):
    """The first ``n`` rows of a :class:`fastblend.MemmapImages`, as a Dataset that keeps its batched reads."""
    from torch.utils.data import Dataset

    class Head(Dataset):
        labels = data.labels[:n]

        def __len__(self) -> int:
            return n

        def __getitem__(self, i: int):
            if not 0 <= i < n:
                raise IndexError(i)
            return data[i]

        def __getitems__(self, rows):
            return data.__getitems__(rows)

    return Head()


def forget_count(n: int) -> int:
    """Images forgotten: 100 (at most 5% of a tiny set)."""
    return max(1, min(100, n // 20))


def _anon_peak_sampler():
    """Start a thread that keeps the peak ``RssAnon`` (bytes) in a one-item list; returns
    ``(that list, stop)``, ``stop()`` ending the thread (after a last sample)."""
    import threading

    peak, done = [0], threading.Event()

    def sample() -> None:
        while True:
            peak[0] = max(peak[0], _status_bytes("RssAnon") or 0)
            if done.wait(0.005):
                return

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()

    def stop() -> None:
        done.set()
        thread.join()

    return peak, stop


def _run_case(case: str, images_path: str, labels_path: str, n: int, ipc: int, member_chunk: int,
              iterations: int) -> dict:
    """One case, in this (fresh) process: returns the measurements."""
    import torch
    import torch._dynamo  # noqa: F401  (imported by the first custom-op call anyway: counted in the baseline)

    import fastblend

    baseline = _status_bytes("VmRSS")
    baseline_anon = _status_bytes("RssAnon")
    anon_peak, stop_sampler = _anon_peak_sampler()
    labels = np.load(labels_path)[:n]
    forget = torch.randperm(n, generator=torch.Generator().manual_seed(1))[:forget_count(n)]
    kw = dict(ipc=ipc, iterations=iterations, seed=0, progress=False)
    t0 = time.perf_counter()
    if case == "in_memory":
        header = np.load(images_path, mmap_mode="r").offset
        x = torch.empty((n,) + SHAPE, dtype=torch.float32)  # one copy, read straight in (no mapped pages)
        with open(images_path, "rb") as fh:
            fh.seek(header)
            fh.readinto(x.numpy().reshape(-1).view(np.uint8))
        reduced = fastblend.condense(x, torch.from_numpy(labels), forget, **kw)
    else:
        data = fastblend.MemmapImages(images_path, np.load(labels_path))
        if n < len(data):
            data = _head(data, n)  # the first n rows
        reduced = fastblend.condense(data, forget, member_chunk=member_chunk, **kw)
    seconds = time.perf_counter() - t0
    stop_sampler()
    return {"seconds": seconds, "peak_bytes": _status_bytes("VmHWM"), "baseline_bytes": baseline,
            "anon_peak_bytes": anon_peak[0], "baseline_anon_bytes": baseline_anon,
            "rows": len(reduced), "blended": reduced.num_blended, "residual": reduced.num_residual,
            "final_loss": reduced.final_loss, "timings": {k: round(v, 3) for k, v in reduced.timings.items()}}


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--ipc", type=int, default=50)
    p.add_argument("--member-chunk", type=int, default=4096)
    p.add_argument("--iterations", type=int, default=2)
    p.add_argument("--cases", nargs="+", choices=("half", "streamed", "in_memory"),
                   default=["half", "streamed", "in_memory"],
                   help="memmap_chunked at N/2 and N, in_memory at N (default: all three)")
    p.add_argument("--case", help=argparse_hidden())
    p.add_argument("--images")
    p.add_argument("--labels")
    p.add_argument("--n", type=int)
    args = p.parse_args(argv)
    if args.case:  # a child: one case, its measurements as one JSON line
        print(json.dumps(_run_case(args.case, args.images, args.labels, args.n, args.ipc, args.member_chunk,
                                   args.iterations)), flush=True)
        return 0
    n_full = 2000 if args.quick else 50000
    ipc = min(args.ipc, 5) if args.quick else args.ipc
    member_chunk = min(args.member_chunk, 256) if args.quick else args.member_chunk
    rec = Recorder(args.out, "memory")
    with tempfile.TemporaryDirectory(prefix="fastblend-bench-memory-") as tmp:
        images, labels = write_npy(Path(tmp), n_full)
        cases = {"half": ("memmap_chunked", n_full // 2), "streamed": ("memmap_chunked", n_full),
                 "in_memory": ("in_memory", n_full)}
        for case, n in (cases[c] for c in ("half", "streamed", "in_memory") if c in args.cases):
            cmd = [sys.executable, "-m", "benchmarks.bench_memory", "--case", case, "--images", str(images),
                   "--labels", str(labels), "--n", str(n), "--ipc", str(ipc), "--member-chunk", str(member_chunk),
                   "--iterations", str(args.iterations)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            m = json.loads(out.strip().splitlines()[-1])
            params = {"N": n, "shape": list(SHAPE), "ipc": ipc, "iterations": args.iterations,
                      "forget": forget_count(n),
                      "member_chunk": member_chunk if case != "in_memory" else None,
                      "dataset_bytes": n * int(np.prod(SHAPE)) * 4}
            metrics = {"memory_kind": "cpu_rss_hwm", "peak_bytes": m["peak_bytes"],
                       "baseline_bytes": m["baseline_bytes"],
                       "growth_bytes": (m["peak_bytes"] - m["baseline_bytes"]) if m["peak_bytes"] else None,
                       "anon_peak_bytes": m["anon_peak_bytes"], "baseline_anon_bytes": m["baseline_anon_bytes"],
                       **{k: m[k] for k in ("rows", "blended", "residual", "final_loss", "timings")}}
            rec.add("memory", f"N={n} 3x32x32", "condense", case, Timing.of([m["seconds"]]), params, metrics)
    return 0


def argparse_hidden() -> str:
    return "internal: run one case in this process"


if __name__ == "__main__":
    raise SystemExit(main())
