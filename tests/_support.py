"""The test toolkit: which backends run on this machine, on which device, and how close is close.

Imported by the test modules after ``conftest.py`` has set ``TRITON_INTERPRET`` (pytest loads the
conftest first), so importing fastblend here defines the Triton kernels in the right mode.
"""

from __future__ import annotations

import importlib.util
import os
from typing import NamedTuple

import pytest
import torch

import fastblend

# --------------------------------------------------------------------------------------------
# Devices
# --------------------------------------------------------------------------------------------
HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")


def device_for(backend: str) -> str:
    """Device whose tensors ``backend`` is tested on: Triton on CUDA when present (else in the
    interpreter on CPU); every other backend on CPU."""
    return "cuda" if backend == "triton" and HAS_CUDA else "cpu"


# --------------------------------------------------------------------------------------------
# Backend matrix
# --------------------------------------------------------------------------------------------
OP_BACKENDS = ("torch", "cpp", "triton")  # the backends of every op in fastblend.ops
CPU_BACKENDS = ("torch", "cpp")  # those that run CPU tensors natively (no interpreter)


def unavailable_reason(backend: str) -> str | None:
    """Why ``backend`` cannot be tested here, or ``None``. Knows the op backends and faiss (grouping)."""
    if backend == "faiss":
        return None if importlib.util.find_spec("faiss") is not None else "faiss not installed"
    reason = fastblend.available_backends()[backend]
    if reason is None and backend == "triton" and not HAS_CUDA and os.environ.get("TRITON_INTERPRET", "") in ("", "0"):
        reason = "no CUDA device and TRITON_INTERPRET is off"
    return reason


def backends(*names: str) -> list[str]:
    """Those of ``names`` (default: every op backend) that can be tested here."""
    return [b for b in names or OP_BACKENDS if unavailable_reason(b) is None]


def backend_params(*names: str) -> list:
    """``names`` (default: every op backend) as pytest params; one that cannot run here is skipped
    with the reason."""
    return [pytest.param(b, marks=pytest.mark.skipif(unavailable_reason(b) is not None,
                                                     reason=f"{b}: {unavailable_reason(b)}"))
            for b in names or OP_BACKENDS]


HAS_CPP = unavailable_reason("cpp") is None
HAS_FAISS = unavailable_reason("faiss") is None


# --------------------------------------------------------------------------------------------
# Tolerances
# --------------------------------------------------------------------------------------------
class Tol(NamedTuple):
    rtol: float
    atol: float


# A result computed in this dtype against a float64 reference (or against the same computation in
# another summation order). half/bfloat16 rows are torch.testing's defaults; low-precision kernels
# are held to assert_within_eager_error instead.
TOLERANCES = {
    torch.float64: Tol(rtol=1e-10, atol=1e-12),
    torch.float32: Tol(rtol=1e-5, atol=1e-5),
    torch.float16: Tol(rtol=1e-3, atol=1e-5),
    torch.bfloat16: Tol(rtol=1.6e-2, atol=1e-5),
}

# Deliberately looser, shared by several files: float32 results of many dependent steps (a training
# run, a blend optimisation, a deep network on batches of another size) drift beyond one op's
# rounding when the summation order changes.
FP32_MULTISTEP = Tol(rtol=1e-4, atol=1e-5)
# The quantile-MMD value is a difference of nearly equal kernel sums: float32 keeps about 4 digits,
# and the fused kernels evaluate each O(1) Gaussian term in float32 (spacing 6e-8) before averaging
# the M^2 pairs, so a near-zero MMD carries an absolute error of ~1e-9 (seen: 2.0e-9 at 3.3e-6).
MMD_VALUE = Tol(rtol=1e-4, atol=1e-8)


def tolerance(dtype: torch.dtype) -> Tol:
    return TOLERANCES[dtype]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, *, dtype: torch.dtype | None = None,
                 tol: Tol | None = None, msg: str | None = None) -> None:
    """``torch.testing.assert_close`` with ``tol``, else the standard tolerance of ``dtype`` (default:
    ``actual``'s dtype, the precision under test). A lower-precision ``actual`` against a float64
    ``expected`` is compared in float64; otherwise the dtypes must match."""
    tol = tol or tolerance(dtype or actual.dtype)
    if expected.dtype == torch.float64 and actual.is_floating_point():
        actual = actual.double()
    torch.testing.assert_close(actual, expected, rtol=tol.rtol, atol=tol.atol, msg=msg)


def max_abs_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


EAGER_ERROR_FACTOR = 2.0


def assert_within_eager_error(actual: torch.Tensor, eager: torch.Tensor, reference: torch.Tensor, *,
                              factor: float = EAGER_ERROR_FACTOR, floor: float = 0.0, msg: str = "") -> None:
    """flash-attention's rule for low precision: the largest error of ``actual`` against a float64
    ``reference`` is at most ``factor`` times that of ``eager`` (eager PyTorch in the same dtype),
    plus ``floor``, an absolute slack for when eager happens to be exact."""
    err, eager_err = max_abs_error(actual, reference), max_abs_error(eager, reference)
    assert err <= factor * eager_err + floor, (
        f"{msg}: error {err:.3g} > {factor:g} x eager error {eager_err:.3g} + {floor:.3g}")


def class_images(n: int, gen: torch.Generator, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` labelled ``[1, 8, 8]`` images, labels ``arange(n) % classes``, each class's images a noisy level of
    its own (``2·label``), drawn from ``gen``: tiny data that a Blend index and a linear model separate."""
    y = torch.arange(n) % classes
    return (y.float() * 2.0).view(-1, 1, 1, 1) + torch.randn(n, 1, 8, 8, generator=gen), y


def dropin_request(classes: int = 3) -> tuple:
    """A tiny request for :func:`fastblend.prepare_unlearning`: ``(model, retain, forget, unseen)`` over
    :func:`class_images` (150 training images, every tenth forgotten, 60 unseen; generator seed 0) and an untrained
    linear model."""
    g = torch.Generator().manual_seed(0)
    x, y = class_images(150, g, classes)
    ux, uy = class_images(60, g, classes)
    forget = torch.zeros(150, dtype=torch.bool)
    forget[::10] = True
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, classes))
    return model, (x[~forget], y[~forget]), (x[forget], y[forget]), (ux, uy)


BLOB_CENTRES = torch.tensor([[0.0, 0.0], [2.5, 0.0], [0.0, 2.5]])


def blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` 2-D points of 3 overlapping Gaussian classes (labels ``arange(n) % 3``), drawn with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    return BLOB_CENTRES[y] + 1.2 * torch.randn(n, 2, generator=g), y


def blob_model() -> torch.nn.Module:
    """A small MLP trained to convergence on ``blobs(300, 0)`` (deterministic: its own seed, the global RNG left
    alone)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    x, y = blobs(300, 0)
    return fastblend.train_model(net, (x, y), config={"epochs": 20, "lr": 0.05, "batch_size": 32,
                                                      "warmup_epochs": 0})


# --------------------------------------------------------------------------------------------
# Pinned numbers: are this machine's CPU kernels the ones the fixtures were recorded with?
# --------------------------------------------------------------------------------------------
def kernel_canary() -> list[str]:
    """A conv, a matmul and a log-sum-exp of fixed data, as ``float.hex`` strings, on one thread: where
    these bits differ from the recorded ones, the CPU's kernels round differently and pinned float results
    can only be compared with a tolerance."""
    import torch.nn.functional as F

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gen = torch.Generator().manual_seed(7)
        x, w = torch.randn(8, 3, 8, 8, generator=gen), torch.randn(6, 3, 3, 3, generator=gen)
        y = F.conv2d(x, w, padding=1).flatten(1)
        z = y @ torch.randn(y.shape[1], 5, generator=gen)
        return [float(v).hex() for v in torch.stack([y.sum(), z.sum(), torch.logsumexp(z, 1).sum()]).double()]
    finally:
        torch.set_num_threads(threads)


def recorded_kernels() -> bool:
    """True where pinned float results may be compared bit for bit: ``FASTBLEND_PINNED_EXACT=1`` is set (on the
    machine that recorded the fixtures) and :func:`kernel_canary` matches the canary recorded with them
    (``tests/data/aamu_pinned.json``; ``tests/fixtures/index_requests.pt`` was recorded on the same kind of
    machine). A matching canary alone is not enough: on a machine whose canary matched, the pinned runs moved by
    float32 rounding (losses about 1e-7 relative, a BatchNorm probe's logits 6.4e-4, the index's images too), its
    conv and BatchNorm kernels taking other paths than the canary's."""
    import json
    import os
    from pathlib import Path

    if os.environ.get("FASTBLEND_PINNED_EXACT") != "1":
        return False
    recorded = json.loads((Path(__file__).resolve().parent / "data" / "aamu_pinned.json").read_text())["canary"]
    return kernel_canary() == recorded
