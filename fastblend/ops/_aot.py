"""Ahead-of-time compilation of the Triton kernels for GPUs this machine need not have.

Each op file defines ``triton_specializations()``: every ``(kernel, signature, constexprs,
num_warps)`` its compiled launchers can request, built from the same block-size tables the
launchers pick from. :func:`compile_specialization` compiles one entry to PTX and a cubin for
``sm_<arch>`` with Triton's own compiler and ``ptxas`` (shipped in Triton's wheel); no GPU and no
CUDA driver are needed. :func:`ptxas_usage` reads registers per thread, spills and shared memory
from ``ptxas -v``. ``tests/test_aot.py`` and ``benchmarks/aot_report.py`` use these.

The kernels must be real ``triton.jit`` functions: import the op modules with ``TRITON_INTERPRET``
unset (the test suite sets it, so the test compiles in a subprocess).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ._common import triton

TRITON_TYPE = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
               torch.int64: "i64"}


@dataclass(frozen=True)
class Specialization:
    """One compiled variant of one kernel.

    ``signature``: ``(argument, Triton type)`` pairs for every non-constexpr argument, in order
    (``"*fp32"`` a float32 pointer, ``"i32"`` an integer, ``"fp32"`` a float scalar); ``constexprs``:
    ``(argument, value)`` pairs; ``num_warps``: what the launcher passes (Triton's default is 4).
    """

    kernel: str
    signature: tuple[tuple[str, str], ...]
    constexprs: tuple[tuple[str, object], ...]
    num_warps: int = 4

    @property
    def label(self) -> str:
        """``"_forward_kernel x_ptr=*bf16 ... BLOCK_F=512 warps=4"``: unique within an op."""
        sig = " ".join(f"{name}={ty}" for name, ty in self.signature if ty.startswith("*"))
        const = " ".join(f"{name}={value}" for name, value in self.constexprs)
        return f"{self.kernel} {sig} {const} warps={self.num_warps}"


def spec(kernel: str, signature: dict[str, str], constexprs: dict[str, object], num_warps: int = 4) -> Specialization:
    """A :class:`Specialization` from dicts (argument order kept)."""
    return Specialization(kernel, tuple(signature.items()), tuple(constexprs.items()), num_warps)


def pointer(dtype: torch.dtype) -> str:
    """Triton pointer type of a tensor of ``dtype``: ``torch.float16 -> "*fp16"``."""
    return "*" + TRITON_TYPE[dtype]


def _constexpr_args(fn) -> list[str]:
    """Constexpr arguments of a ``triton.jit`` function, compiled or interpreted, in order."""
    if hasattr(fn, "params"):
        return [fn.arg_names[p.num] for p in fn.params if p.is_constexpr]
    params = inspect.signature(fn.fn).parameters.values()
    return [p.name for p in params if "constexpr" in str(p.annotation)]


def coverage_problems(module) -> list[str]:
    """Kernels of op ``module`` missing from its ``triton_specializations()``, and entries whose arguments
    differ from their kernel's: so a new kernel, argument or constexpr flag cannot escape the compile
    test. ``module._TRITON_HELPERS`` names ``triton.jit`` functions that are only called from kernels."""
    helpers = set(getattr(module, "_TRITON_HELPERS", ()))
    kernels = {name: fn for name, fn in vars(module).items() if isinstance(fn, triton.runtime.KernelInterface)}
    table = module.triton_specializations()
    problems = [f"{module.__name__}.{name}: not in triton_specializations()"
                for name in sorted(set(kernels) - {s.kernel for s in table} - helpers)]
    for s in table:
        fn = kernels.get(s.kernel)
        args = [name for name, _ in s.signature] + [name for name, _ in s.constexprs]
        if fn is None:
            problems.append(f"{module.__name__}.{s.kernel}: listed but not a triton.jit function")
        elif sorted(args) != sorted(fn.arg_names) or [name for name, _ in s.constexprs] != _constexpr_args(fn):
            problems.append(f"{module.__name__}: {s.label}: arguments {args} differ from the kernel's "
                            f"{fn.arg_names}")
    return problems


def compile_specialization(module, s: Specialization, arch: int):
    """Compile ``module.<s.kernel>`` for ``sm_<arch>`` (e.g. 80, 90). Returns the
    ``triton.compiler.CompiledKernel`` (``.asm`` holds ``ptx`` and ``cubin``) and its resource use
    (:func:`ptxas_usage`). Raises whatever Triton raises on a compile error."""
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(module, s.kernel)
    if not hasattr(fn, "cache_key"):
        raise RuntimeError(f"compile_specialization: {s.kernel} is not a compiled triton.jit function "
                           "(TRITON_INTERPRET was set when the op module was imported)")
    signature = dict(s.signature)
    signature.update({name: "constexpr" for name, _ in s.constexprs})
    src = ASTSource(fn=fn, signature=signature, constexprs=dict(s.constexprs))
    # Triton already runs `ptxas -v`; have it print the log (captured here) instead of running ptxas twice
    log, dump = io.StringIO(), knobs.nvidia.dump_ptxas_log
    knobs.nvidia.dump_ptxas_log = True
    try:
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": s.num_warps})
    finally:
        knobs.nvidia.dump_ptxas_log = dump
    text = log.getvalue()
    return compiled, (_parse_ptxas_log(text) if _USAGE.search(text) else ptxas_usage(compiled.asm["ptx"]))


_USAGE = re.compile(r"Used (\d+) registers")
_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_STACK = re.compile(r"(\d+) bytes stack frame")
_SMEM = re.compile(r"(\d+) bytes smem")


def ptxas_path() -> str:
    """The ``ptxas`` binary Triton compiles with (in Triton's wheel unless ``TRITON_PTXAS_PATH`` is set)."""
    from triton import knobs

    return knobs.nvidia.ptxas.path


def ptxas_usage(ptx: str) -> dict:
    """Resource use of one kernel's PTX from ``ptxas -v`` for the PTX's own target: ``registers`` per
    thread, ``spill_store_bytes``, ``spill_load_bytes``, ``stack_bytes`` and static ``smem_bytes``
    (used when Triton served the kernel from its cache and so printed no log)."""
    arch = re.search(r"^\.target\s+(\w+)", ptx, re.MULTILINE).group(1)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ptx"
        src.write_text(ptx)
        done = subprocess.run([ptxas_path(), "-v", f"--gpu-name={arch}", str(src), "-o", str(Path(tmp) / "k.cubin")],
                              capture_output=True, text=True, check=True)
    return _parse_ptxas_log(done.stdout + done.stderr)


def _parse_ptxas_log(log: str) -> dict:
    spills = _SPILL.search(log)
    return {"registers": int(_USAGE.search(log).group(1)),
            "spill_store_bytes": int(spills.group(1)), "spill_load_bytes": int(spills.group(2)),
            "stack_bytes": int(_STACK.search(log).group(1)),
            "smem_bytes": int(m.group(1)) if (m := _SMEM.search(log)) else 0}
