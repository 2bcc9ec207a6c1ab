"""One command that proves the GPU path: ``python -m benchmarks.gpu_suite --out DIR [--smoke]``.

On a CUDA machine (made to finish in under 8 minutes on one H100) it runs, in order:

1. ``tests``: the test files that exercise CUDA (kernels compiled: ``tests/conftest.py`` enables the
   Triton interpreter only without a GPU) and the CPU tests that matter on CUDA devices, via pytest;
2. ``segment_blend`` forward, backward and forward+backward at CIFAR shapes (N = 50,000 x 3x32x32,
   K = 1,000 and 10,000): GB/s of the bytes each pass must move, and the fraction of a
   device-to-device copy of the same bytes measured in the same run (``copy`` rows; target >= 70%);
3. ``quantile_mmd`` forward+backward at M = 256 and 2,048 against the eager reference and
   ``torch.compile`` of it;
4. ``condense``: features, grouping (FAISS-GPU where it imports, else the batched torch k-means) and
   Blend against the literal per-cluster loop at CIFAR-10 scale (synthetic 50,000 images, ipc 1,000;
   ``benchmarks.bench_condense``; target >= 30x);
5. ``aamu``: an A-AMU epoch of the instance-norm ResNet-18 on a CIFAR-sized reduced set (synthetic,
   B = 64): per-step time, every step after the first under ``torch.cuda.set_sync_debug_mode("error")``
   (``metrics.sync_free``);
6. ``end_to_end``: CIFAR-10-shaped synthetic data (50,000 train images, 10% forgotten, ResNet-18):
   features + grouping + Blend + one A-AMU epoch + evaluation, each stage's seconds and the total
   (target <= 10 s on one H100).

Writes ``DIR/gpu_suite.jsonl`` (the runner's ROW schema), ``DIR/gpu_suite.json`` (card, driver,
CUDA and torch versions, each section's status, every row) and ``DIR/gpu_suite.md`` (the same as a
table). A failing section is recorded with its error and the rest still run; the exit code is 1 if
any section failed. ``--smoke`` shrinks every size so the whole suite runs on a CPU in seconds (CI:
``tests/test_gpu_suite_smoke.py``): its numbers mean nothing, it only keeps the suite from rotting.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

import fastblend
from fastblend._device import synchronize
from fastblend.models import ConvNet3, resnet18_in
from fastblend.ops import reference as ref

from . import bench_condense
from .runner import Recorder, Timing, measure, parser

ROOT = Path(__file__).resolve().parents[1]
# CUDA-exercising test files first, then CPU tests whose code paths CUDA devices share
TEST_FILES = ("tests/test_segment_blend.py", "tests/test_quantile_mmd.py", "tests/test_aamu.py",
              "tests/test_sync_free.py", "tests/test_aot.py", "tests/test_condense.py", "tests/test_grouping.py")
SMOKE_TESTS = ("tests/test_aamu.py::test_steepen_modes",)


@dataclass(frozen=True)
class Sizes:
    blend_n: int  # segment_blend rows (images)
    blend_shape: tuple[int, int, int]
    blend_k: tuple[int, ...]
    mmd_m: tuple[int, ...]
    cifar_n: int  # images of the condense and end-to-end runs
    ipc: int
    iterations: int
    loop_clusters: int
    aamu_reduced: int  # reduced retain set of the A-AMU epoch
    image_size: int
    batch: int
    repeats: int
    model: str  # "resnet18": the instance-norm ResNet-18; "convnet": a width-8 ConvNet-3 (smoke only)

    def make_model(self) -> torch.nn.Module:
        torch.manual_seed(0)
        if self.model == "resnet18":
            return resnet18_in(3, 10)
        return ConvNet3(3, 10, self.image_size, width=8)


FULL = Sizes(50_000, (3, 32, 32), (1_000, 10_000), (256, 2_048), 50_000, 1_000, 12, 2_000, 10_000, 32, 64, 10,
             "resnet18")
SMOKE = Sizes(256, (3, 4, 4), (8,), (32,), 200, 2, 1, 4, 16, 8, 4, 2, "convnet")


def environment(device: torch.device) -> dict:
    """Card, driver, CUDA and library versions."""
    info = {"device": str(device), "torch": torch.__version__, "cuda": torch.version.cuda, "card": None,
            "driver": None, "capability": None}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device.type == "cuda":
        info["card"] = torch.cuda.get_device_name(device)
        info["capability"] = "sm_{}{}".format(*torch.cuda.get_device_capability(device))
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30)
            info["driver"] = out.stdout.strip().splitlines()[0] if out.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired, IndexError):
            pass
    return info


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------
def run_tests(rec: Recorder, sizes: Sizes, device: torch.device, out: Path, smoke: bool) -> None:
    files = list(SMOKE_TESTS if smoke else TEST_FILES)
    junit = out / "gpu_suite_tests.xml"
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
                           *files], cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    rec.add("tests", "pytest", "run", "compiled" if device.type == "cuda" else "interpreter", Timing.of([seconds]),
            {"files": files}, {**counts, "returncode": done.returncode})
    if done.returncode != 0:
        raise RuntimeError(f"pytest failed ({counts}):\n{done.stdout[-3000:]}")


def _gbps(nbytes: int, timing: Timing) -> float:
    return nbytes / timing.median_s / 1e9


def run_segment_blend(rec: Recorder, sizes: Sizes, device: torch.device, out: Path, smoke: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(sizes.blend_n, *sizes.blend_shape, generator=gen).to(device)
    w = torch.rand(sizes.blend_n, generator=gen).to(device) + 0.1
    for k in sizes.blend_k:
        _segment_blend_case(rec, x, w, k, sizes.repeats, device)


def _segment_blend_case(rec: Recorder, x: torch.Tensor, w: torch.Tensor, k: int, repeats: int,
                        device: torch.device) -> None:
    n, feat, elem = x.shape[0], x[0].numel(), x.element_size()
    indptr = torch.linspace(0, n, k + 1).round().long().to(device)
    case, params = f"N={n} F={feat} K={k}", {"N": n, "F": feat, "K": k}
    # bytes each pass must move: read x (and the output gradient), write the output (and dx)
    moved = {"fwd": (n + k) * feat * elem, "bwd": (k + 2 * n) * feat * elem,
             "fwd+bwd": (2 * k + 3 * n) * feat * elem}
    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
    grad = torch.randn(k, *x.shape[1:], device=device)
    kept = fastblend.segment_blend(xg, wg, indptr, validate=False)

    def fwd():
        return fastblend.segment_blend(x, w, indptr, validate=False)

    def bwd():
        torch.autograd.grad(kept, (xg, wg), grad, retain_graph=True)

    def fwd_bwd():
        torch.autograd.grad(fastblend.segment_blend(xg, wg, indptr, validate=False), (xg, wg), grad)

    for variant, fn in (("fwd", fwd), ("bwd", bwd), ("fwd+bwd", fwd_bwd)):
        timing, _ = measure(fn, repeats=repeats, device=device)
        src = torch.empty(moved[variant] // 2 // elem, dtype=x.dtype, device=device)
        dst = torch.empty_like(src)
        copy, _ = measure(lambda s=src, d=dst: d.copy_(s), repeats=repeats, device=device)
        copy_gbps = _gbps(moved[variant], copy)  # a copy of B/2 bytes moves B bytes
        rec.add("segment_blend", case, variant, "copy", copy, params, {"GBps": copy_gbps, "bytes": moved[variant]})
        rec.add("segment_blend", case, variant, "fastblend", timing, params,
                {"GBps": _gbps(moved[variant], timing), "bytes": moved[variant],
                 "fraction_of_copy": _gbps(moved[variant], timing) / copy_gbps})


def run_quantile_mmd(rec: Recorder, sizes: Sizes, device: torch.device, out: Path, smoke: bool) -> None:
    compiled_ref = torch.compile(ref.quantile_mmd, backend="eager" if smoke else "inductor")
    impls = {"eager": ref.quantile_mmd, "torch.compile": compiled_ref,
             "fastblend": lambda *a: fastblend.quantile_mmd(*a, validate=False)}
    for m in sizes.mmd_m:
        classes = 10 if m <= 256 else 100
        gen = torch.Generator().manual_seed(0)
        fl = torch.randn(m, classes, generator=gen).to(device).requires_grad_()
        ul = torch.randn(m, classes, generator=gen).to(device)
        fy = torch.randint(0, classes, (m,), generator=gen).to(device)
        uy = torch.randint(0, classes, (m,), generator=gen).to(device)
        for name, fn in impls.items():
            timing, value = measure(_mmd_step, repeats=sizes.repeats, warmup=2, device=device,
                                    setup=lambda fn=fn, args=(fl, fy, ul, uy): (fn, *args))
            rec.add("quantile_mmd", f"M={m} C={classes}", "fwd+bwd", name, timing, {"M": m, "classes": classes},
                    {"value": float(value)})


def _mmd_step(fn, fl, fy, ul, uy) -> torch.Tensor:
    value = fn(fl, fy, ul, uy)
    torch.autograd.grad(value, fl)
    return value.detach()


def run_condense(rec: Recorder, sizes: Sizes, device: torch.device, out: Path, smoke: bool) -> None:
    images, labels = bench_condense.cifar_like(sizes.cifar_n)
    if smoke:
        images = F.avg_pool2d(images, 32 // sizes.image_size)
    bench_condense.run_case(rec, "cifar-like", images, labels, sizes.ipc, iterations=sizes.iterations,
                            chunk_size=None, loop_clusters=sizes.loop_clusters, device=device)


def _synthetic(n: int, sizes: Sizes, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    s = sizes.image_size
    return torch.randn(n, 3, s, s, generator=gen), torch.arange(n) % 10


def aamu_epoch(model: torch.nn.Module, retain: tuple, acc: fastblend.AAMUStep, batch: int, device: torch.device,
               sync_check: bool) -> tuple[int, float, str | None]:
    """One A-AMU epoch over ``retain``; the first step (which checks labels on the host) runs before the
    clock and, on CUDA with ``sync_check``, the rest under ``set_sync_debug_mode("error")``.
    Returns (steps timed, seconds, the synchronisation error or None)."""
    opt = torch.optim.Adam(model.parameters(), lr=2.4e-4, capturable=device.type == "cuda")
    rx, ry = retain
    gen = torch.Generator(device=device).manual_seed(0)
    perm = torch.randperm(rx.shape[0], generator=gen, device=device)
    batches = [perm[s : s + batch] for s in range(0, rx.shape[0] - batch + 1, batch)]

    def step(idx):
        per_sample = F.cross_entropy(model(rx[idx]), ry[idx], reduction="none")
        loss = acc.loss(per_sample).total
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step(batches[0])
    synchronize(device)
    error = None
    t0 = time.perf_counter()
    guard = sync_check and device.type == "cuda"
    if guard:
        torch.cuda.set_sync_debug_mode("error")
    try:
        for idx in batches[1:]:
            step(idx)
    except RuntimeError as exc:
        error = str(exc).splitlines()[0]
    finally:
        if guard:
            torch.cuda.set_sync_debug_mode("default")
    synchronize(device)
    return len(batches) - 1, time.perf_counter() - t0, error


def run_aamu(rec: Recorder, sizes: Sizes, device: torch.device, out: Path, smoke: bool) -> None:
    r = sizes.aamu_reduced
    rx, ry = (t.to(device) for t in _synthetic(r, sizes, 0))
    fx, fy = (t.to(device) for t in _synthetic(r // 2, sizes, 1))
    ux, uy = (t.to(device) for t in _synthetic(r, sizes, 2))
    model = sizes.make_model().to(device)
    acc = fastblend.AAMUStep(model, (fx, fy), (ux, uy), batch_size=sizes.batch)
    steps, seconds, error = aamu_epoch(model, (rx, ry), acc, sizes.batch, device, sync_check=True)
    rec.add("aamu", f"{sizes.model} R={r} B={sizes.batch}", "step", "fastblend", Timing.of([seconds / max(steps, 1)]),
            {"reduced": r, "batch": sizes.batch, "steps": steps},
            {"sync_free": None if device.type != "cuda" else error is None, "sync_error": error,
             "epoch_s": seconds})
    if error is not None:
        raise RuntimeError(f"A-AMU step synchronised with the host: {error}")


def run_end_to_end(rec: Recorder, sizes: Sizes, device: torch.device, out: Path, smoke: bool) -> None:
    n = sizes.cifar_n
    images, labels = bench_condense.cifar_like(n)
    test_x, test_y = bench_condense.cifar_like(n // 5, seed=1)
    if smoke:
        images, test_x = (F.avg_pool2d(t, 32 // sizes.image_size) for t in (images, test_x))
    forget = torch.randperm(n, generator=torch.Generator().manual_seed(1))[: n // 10]
    model = sizes.make_model().to(device)
    stages: dict[str, float] = {}

    def stage(name, fn):
        synchronize(device)
        t0 = time.perf_counter()
        result = fn()
        synchronize(device)
        stages[name] = time.perf_counter() - t0
        return result

    feats = stage("features", lambda: fastblend.extract_features(images, device=device, progress=False))
    clustering = stage("grouping", lambda: fastblend.group(feats, labels, sizes.ipc))
    reduced = stage("blend", lambda: fastblend.condense(images, labels, forget, clustering=clustering,
                                                         iterations=sizes.iterations, device=device, progress=False))
    rx, ry = reduced.images.to(device), reduced.labels.to(device)
    ux, uy = test_x[: n // 10].to(device), test_y[: n // 10].to(device)
    fx, fy = images[forget].to(device), labels[forget].to(device)

    def unlearn():
        acc = fastblend.AAMUStep(model, (fx, fy), (ux, uy), batch_size=sizes.batch)
        return aamu_epoch(model, (rx, ry), acc, sizes.batch, device, sync_check=False)

    stage("aamu", unlearn)
    accs = stage("evaluation", lambda: {name: fastblend.accuracy(model, x, y, device=device) for name, (x, y) in
                                        {"forget": (fx, fy), "test": (test_x, test_y)}.items()})
    total = sum(stages.values())
    rec.add("end_to_end", f"cifar-like N={n} forget=10% {sizes.model}", "total", "fastblend", Timing.of([total]),
            {"N": n, "ipc": sizes.ipc, "iterations": sizes.iterations, "batch": sizes.batch,
             "reduced": int(ry.numel())},
            {**{f"{k}_s": v for k, v in stages.items()}, **{f"{k}_accuracy": v for k, v in accs.items()},
             "grouping_backend": clustering.backend})


SECTIONS = {"tests": run_tests, "segment_blend": run_segment_blend, "quantile_mmd": run_quantile_mmd,
            "condense": run_condense, "aamu": run_aamu, "end_to_end": run_end_to_end}


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------
def _metric_summary(metrics: dict) -> str:
    keep = ("GBps", "fraction_of_copy", "sync_free", "failures", "tests", "final_loss", "compression",
            "features_s", "grouping_s", "blend_s", "aamu_s", "evaluation_s", "test_accuracy")
    parts = []
    for key in keep:
        if key in metrics and metrics[key] is not None:
            v = metrics[key]
            parts.append(f"{key}={v:.3g}" if isinstance(v, float) else f"{key}={v}")
    return ", ".join(parts)


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"# fastblend GPU suite{' (smoke: sizes shrunk, numbers meaningless)' if report['smoke'] else ''}", "",
             f"card **{env['card'] or 'none (CPU)'}** ({env['capability']}), driver {env['driver']}, "
             f"CUDA {env['cuda']}, torch {env['torch']}, triton {env['triton']}; total {report['total_s']:.1f} s", "",
             "| section | status | seconds |", "|---|---|---|"]
    lines += [f"| {name} | {s['status']} | {s['seconds']:.1f} |" for name, s in report["sections"].items()]
    lines += ["", "| benchmark | case | variant | backend | median | metrics |", "|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['benchmark']} | {r['case']} | {r['variant']} | {r['backend']} | "
                     f"{r['median_s'] * 1e3:.3f} ms | {_metric_summary(r['metrics'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks the suite runs end to end (CPU, CI)")
    p.add_argument("--only", nargs="+", default=list(SECTIONS), help=f"sections: {' '.join(SECTIONS)}")
    args = p.parse_args(argv)
    unknown = sorted(set(args.only) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"gpu_suite: unknown sections {unknown}; known: {list(SECTIONS)}")
    smoke = args.smoke or args.quick
    sizes = SMOKE if smoke else FULL
    device = args.device
    if device.type != "cuda" and not smoke:
        print("gpu_suite: no CUDA device; the full sizes take hours on a CPU (use --smoke)", file=sys.stderr)
    rec = Recorder(args.out, "gpu_suite")
    sections, t_all = {}, time.perf_counter()
    for name in args.only:
        t0 = time.perf_counter()
        try:
            SECTIONS[name](rec, sizes, device, args.out, smoke)
            status = "ok"
        except Exception:  # one failing section must not hide the others
            status = "failed: " + traceback.format_exc(limit=3).strip().splitlines()[-1]
            traceback.print_exc()
        sections[name] = {"status": status, "seconds": time.perf_counter() - t0}
    rows = [json.loads(line) for line in rec.path.read_text().splitlines()]
    for row in rows:
        row.pop("machine")
    report = {"smoke": smoke, "environment": {**environment(device), **rec.machine}, "sections": sections,
              "total_s": time.perf_counter() - t_all, "rows": rows}
    report["environment"]["device"] = str(device)
    (args.out / "gpu_suite.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "gpu_suite.md").write_text(markdown(report))
    print(markdown(report))
    return 0 if all(s["status"] == "ok" for s in sections.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
