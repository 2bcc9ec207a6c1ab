"""Which backend runs each op, and why.

Three backends exist for each op:

* ``"triton"``: Triton kernels; runs on CUDA tensors, or on any device when the Triton
  interpreter is on (``TRITON_INTERPRET=1``, slow, for tests).
* ``"cpp"``: the C++/OpenMP extension ``fastblend._C``; CPU tensors only.
* ``"torch"``: plain PyTorch with the same hand-written backward; always available.

``backend="auto"`` (the default of every op) picks Triton for CUDA tensors and the C++ extension
for CPU tensors, falling back to PyTorch; the interpreter is never picked. A named backend that
cannot run the inputs raises instead of silently falling back. Environment variables:

* ``FASTBLEND_BACKEND=triton|cpp|torch|auto`` replaces ``"auto"``; an explicit ``backend=`` wins,
  because a caller who names a backend means it.
* ``FASTBLEND_NO_CPP=1`` behaves as if the C++ extension were not built.
* ``TRITON_INTERPRET=1`` (set before fastblend is imported) lets the Triton backend run on CPU
  tensors in Triton's interpreter.

The backend is resolved when an op *runs*, inside its ``torch.library`` custom op, never while it is
traced: ``torch.compile`` and ``torch.export`` record the requested string (``"auto"`` by default),
so a compiled or exported graph picks the fastest backend of the machine and tensors it runs on
(a ``.pt2`` exported where the C++ extension exists loads and runs where it does not). A named
backend is recorded as named and raises at run time if it cannot run there.

When ``"auto"`` falls back to PyTorch on CPU tensors because the C++ extension is missing (not
switched off by ``FASTBLEND_NO_CPP``), the first such op of the process warns once
(:class:`SlowPathWarning`) with the command that builds the extension.

Each op registers its name and, where some backend cannot run inputs that pass the op's
validation, an ``unsupported(backend, *tensors) -> str | None`` giving the reason.
Nothing here compiles or imports an optional dependency at import time.
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable

import torch

BACKENDS = ("triton", "cpp", "torch")

_CPP_INSTALL_HINT = (
    "install a C++17 compiler with OpenMP (e.g. `apt install g++`), then rebuild fastblend from source "
    "without pip's cached wheel: `pip install --force-reinstall --no-deps --no-cache-dir --no-binary fastblend "
    "fastblend` (or `pip install --force-reinstall --no-deps --no-cache-dir .` in a checkout); "
    "set FASTBLEND_REQUIRE_CPP=1 to make a failed build an error"
)
_TRITON_INSTALL_HINT = "`pip install triton` (CUDA builds of torch already bring it)"

_cpp_state: tuple[object | None, str | None] | None = None
_triton_state: tuple[bool, str | None] | None = None
_slow_path_warned = False


class SlowPathWarning(UserWarning):
    """An op ran on the PyTorch fallback because the C++ extension is missing (several times slower)."""


def cpp_extension():
    """The compiled extension module, or ``None``; see :func:`cpp_unavailable_reason`."""
    return _load_cpp()[0]


def cpp_unavailable_reason() -> str | None:
    return _load_cpp()[1]


def _load_cpp():
    global _cpp_state
    if _env_flag("FASTBLEND_NO_CPP"):
        return None, "disabled by FASTBLEND_NO_CPP"
    if _cpp_state is None:
        try:
            mod = importlib.import_module("fastblend._C")
            _cpp_state = (mod, None)
        except ImportError as exc:
            _cpp_state = (None, f"C++ extension fastblend._C not built ({exc}); {_CPP_INSTALL_HINT}")
    return _cpp_state


def _env_flag(name: str) -> bool:
    """An environment switch: unset, empty, ``0``, ``false``, ``no`` and ``off`` (any case) mean off."""
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") not in ("", "0")


def triton_unavailable_reason() -> str | None:
    global _triton_state
    if _triton_state is None:
        try:
            importlib.import_module("triton")
            _triton_state = (True, None)
        except ImportError as exc:
            _triton_state = (False, f"triton is not installed ({exc}); {_TRITON_INSTALL_HINT}")
    return _triton_state[1]


def _devices(tensors: Sequence[object]) -> set[torch.device]:
    return {t.device for t in tensors if isinstance(t, torch.Tensor)}


def default_reasons(backend: str, tensors: Sequence[object]) -> str | None:
    """Why ``backend`` cannot run on these tensors (device and availability only)."""
    devices = _devices(tensors)
    if backend == "torch":
        return None
    if backend == "cpp":
        reason = cpp_unavailable_reason()
        if reason:
            return reason
        if any(d.type != "cpu" for d in devices):
            return "the C++ backend runs on CPU tensors only"
        return None
    if backend == "triton":
        reason = triton_unavailable_reason()
        if reason:
            return reason
        if triton_interpret():
            return None
        if not devices or any(d.type != "cuda" for d in devices):
            return "Triton kernels need CUDA tensors (or TRITON_INTERPRET=1 for the slow interpreter)"
        return None
    raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")


_REGISTRY: dict[str, Callable[..., str | None] | None] = {}


def register(op: str, unsupported: Callable[..., str | None] | None = None) -> None:
    """Make ``op`` known to :func:`resolve`; ``unsupported(backend, *tensors)`` says why ``backend``
    cannot run validated inputs (``None`` if it can), beyond device and availability."""
    _REGISTRY[op] = unsupported


def op_names() -> list[str]:
    return sorted(_REGISTRY)


def preference(tensors: Sequence[object]) -> tuple[str, ...]:
    """Fastest first: Triton on CUDA, C++ on CPU; the interpreter is never picked by auto."""
    devices = _devices(tensors)
    if devices and all(d.type == "cuda" for d in devices):
        return ("triton", "torch")
    return ("cpp", "torch")


def reasons(op: str, tensors: Sequence[object]) -> dict[str, str | None]:
    if op not in _REGISTRY:
        raise ValueError(f"unknown op {op!r}; expected one of {op_names()}")
    unsupported = _REGISTRY[op]
    out: dict[str, str | None] = {}
    for backend in BACKENDS:
        why = default_reasons(backend, tensors)
        if why is None and unsupported is not None:
            why = unsupported(backend, *tensors)
        out[backend] = why
    return out


def check_backend(fn: str, backend: object) -> str:
    """Check the ``backend`` argument of ``fn`` (a string check only: safe while tracing)."""
    if not isinstance(backend, str):
        raise TypeError(f"{fn}: backend must be a str, got {type(backend).__name__}")
    if backend not in BACKENDS + ("auto",):
        raise ValueError(f"{fn}: backend must be one of 'auto', {', '.join(map(repr, BACKENDS))}; got {backend!r}")
    return backend


def resolve(op: str, backend: str, tensors: Sequence[object]) -> str:
    """Return the concrete backend that runs ``op`` for ``tensors`` (called when the op runs)."""
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, got {type(backend).__name__}")
    requested = backend
    if requested == "auto":
        requested = os.environ.get("FASTBLEND_BACKEND", "auto").strip().lower() or "auto"
    if requested not in BACKENDS + ("auto",) and backend == "auto":
        raise ValueError(f"{op}: backend must be one of 'auto', {', '.join(map(repr, BACKENDS))}; got "
                         f"{os.environ.get('FASTBLEND_BACKEND')!r} from the environment variable FASTBLEND_BACKEND")
    if requested not in BACKENDS + ("auto",):
        raise ValueError(f"backend must be one of 'auto', {', '.join(map(repr, BACKENDS))}; got {backend!r}")
    why = reasons(op, tensors)
    if requested != "auto":
        if why[requested] is not None:
            raise RuntimeError(f"{op}: backend {requested!r} cannot run these inputs: {why[requested]}")
        return requested
    for candidate in preference(tensors):
        if why[candidate] is None:
            return candidate
        if candidate == "cpp":
            _warn_slow_path(op, why[candidate])
    return "torch"


def _warn_slow_path(op: str, reason: str | None) -> None:
    """Warn once per process that ``op`` runs on the torch fallback for want of the C++ extension."""
    global _slow_path_warned
    if _slow_path_warned or reason is None or not reason.startswith("C++ extension fastblend._C not built"):
        return
    _slow_path_warned = True
    warnings.warn(f"{op}: running on the PyTorch fallback, several times slower than the C++ backend: {reason}",
                  SlowPathWarning, stacklevel=3)


@dataclass
class Explanation:
    op: str
    chosen: str
    reasons: dict[str, str | None]

    def __str__(self) -> str:
        lines = [f"{self.op}: runs on backend {self.chosen!r}"]
        for backend, why in self.reasons.items():
            if backend == self.chosen:
                continue
            lines.append(f"  {backend}: {'available, lower priority' if why is None else why}")
        return "\n".join(lines)


def explain(op_name: str, *tensors: object, backend: str = "auto") -> Explanation:
    """Say which backend would run ``op_name`` on ``tensors`` and why each other one would not.

    >>> print(fastblend.explain("segment_blend", x, w, indptr))   # doctest: +SKIP
    segment_blend: runs on backend 'cpp'
      triton: Triton kernels need CUDA tensors (or TRITON_INTERPRET=1 for the slow interpreter)
      torch: available, lower priority
    """
    return Explanation(op=op_name, chosen=resolve(op_name, backend, tensors), reasons=reasons(op_name, tensors))


def backend_for(op: str, device: torch.device | str, backend: str = "auto") -> str:
    """The backend ``op`` runs on for float32 tensors on ``device``: what results record."""
    return resolve(op, backend, (torch.empty(0, device=device),))


def available_backends() -> dict[str, str | None]:
    """Each backend mapped to ``None`` if it can run at all here, else the reason it cannot (Triton
    without a CUDA device runs only in the interpreter, ``TRITON_INTERPRET=1``)."""
    triton_reason = triton_unavailable_reason()
    if triton_reason is None and not triton_interpret() and not torch.cuda.is_available():
        triton_reason = "no CUDA device: Triton runs here only in the slow interpreter (set TRITON_INTERPRET=1)"
    return {"triton": triton_reason, "cpp": cpp_unavailable_reason(), "torch": None}
