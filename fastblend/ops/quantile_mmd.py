"""``quantile_transform`` and ``quantile_mmd``: the loss-distribution regulariser of A-AMU (docs/method.md §2).

Per set of M samples (logits ``z [M, C]``, labels ``y [M]``)::

    ℓ_i = CE(z_i, y_i),   u_i = log(1 + ℓ_i + 1e-8)
    c_i = (1/M) Σ_j σ(k · max(0, u_i − u_j)),   g_i = clamp(Φ⁻¹(c_i), −κ, κ)

and between the unseen set (``g_u``, ``M_u`` samples) and the forget set (``g_f``, ``M_f``)::

    MMD² = mean κ_σ(g_u, g_u') + mean κ_σ(g_f, g_f') − 2 mean κ_σ(g_u, g_f),  κ_σ(a, b) = exp(−(a−b)²/2σ²)

Every backend runs the whole chain (cross-entropy → log1p → pairwise soft CDF → probit → clamp →
kernel means) in one op whose forward keeps only O(M) float64 statistics per set (``lse``, ``u``
and the CDF tail ``q = 1 − c``), and whose hand-written backward recomputes the pairwise terms in
O(M²) time without materialising an M×M tensor:

    dg_a  = −(2 w_a / σ²) Σ_b w_b (G_a − G_b) κ_σ(G_a, G_b)      over G = [g_u; g_f],
                                                                  w = [+1/M_u; −1/M_f]
    dc_i  = dg_i · √(2π) · exp(p_i² / 2) · [|p_i| < κ]            (p = Φ⁻¹(c) before the clamp)
    du_m  = (1/M) [dc_m Σ_{u_j < u_m} s'(u_m − u_j) − Σ_{u_i > u_m} dc_i s'(u_i − u_m)]
    dz_m  = du_m · exp(−u_m) · (softmax(z_m) − onehot(y_m))

with ``s'(d) = k σ(kd)(1 − σ(kd))`` for ``d > 0`` and ``0`` for ``d ≤ 0``: the subgradient of
``max(0, ·)`` at 0 is 0 (PyTorch's ``relu``), so exactly tied losses, and the diagonal ``j = i``,
pass no gradient through the soft CDF, exactly as autograd of the literal reference does.
``clamp`` passes no gradient at or beyond ``±κ`` (PyTorch's rule as well).

Precision. MMD² is tiny (≈1e-5 for random 10-class logits at M = 256) while each kernel mean is
close to 1, so the literal float32 formula loses 2-3 digits. The fused backends therefore write
``MMD² = Σ_ab w_a w_b (κ_σ(G_a, G_b) − 1)`` (the ones cancel because Σ w = 0) with ``κ − 1``
evaluated as ``expm1`` (no cancellation), accumulate every sum in float64, and take the probit in
float64 from the accumulated tail ``q = 1 − c`` (``g = −Φ⁻¹(q)``), which stays accurate where c is
close to 1. Pairwise terms are evaluated in float32 (C++ and Triton; float64 for float64 logits in
C++) and in float64 by the torch backend. The result is within 1e-4 relative of a float64
evaluation from the same float32 inputs. Since every pair with ``u_j ≥ u_i`` contributes 1/2,
``c ≤ 1 − 1/(2M)`` and the probit is always finite.
"""

from __future__ import annotations

import functools
import math

import torch

from ..recipe import RECIPE
from . import _dispatch
from ._aot import Specialization, pointer, spec
from ._common import DTYPE_CODE, SUPPORTED_DTYPES, acc_dtype, bounded_labels, tl, triton

OP_NAME = "quantile_mmd"
TRANSFORM_OP_NAME = "quantile_transform"
_SQRT_2PI = math.sqrt(2.0 * math.pi)


# --------------------------------------------------------------------------------------------
# Shared O(M) glue: probit from the CDF tail, its derivative, and the MMD weights
# --------------------------------------------------------------------------------------------
def _probit(stats: torch.Tensor) -> torch.Tensor:
    """Unclamped ``p = Φ⁻¹(c) = −Φ⁻¹(q)`` in float64 from ``stats[2] = q = 1 − c``."""
    return -torch.special.ndtri(stats[2])


def _nan_unless_finite(values: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """``values``, or all NaN when any of ``inputs`` is not finite (on the device, no host sync).

    Non-finite logits give a NaN or infinite per-sample loss ``u``; every ``g_i`` depends on every
    ``u_j``, so one such sample makes the whole set's result NaN, identically on every backend (the
    kernels' own arithmetic on NaN differs, and is never returned)."""
    return torch.where(torch.isfinite(inputs).all(), values, torch.full_like(values, math.nan))


def _clamped(stats: torch.Tensor, kappa: float) -> torch.Tensor:
    return _nan_unless_finite(_probit(stats).clamp(-kappa, kappa), stats[1])


def _dc_from_dg(dg: torch.Tensor, stats: torch.Tensor, kappa: float) -> torch.Tensor:
    p = _probit(stats)
    active = (p > -kappa) & (p < kappa)
    dc = torch.where(active, dg * _SQRT_2PI * torch.exp(0.5 * p * p), torch.zeros_like(dg))
    return _nan_unless_finite(dc, stats[1])


def _mmd_weights(mu: int, mf: int, device) -> torch.Tensor:
    return torch.cat([torch.full((mu,), 1.0 / mu, dtype=torch.float64, device=device),
                      torch.full((mf,), -1.0 / mf, dtype=torch.float64, device=device)])


# --------------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------------
if triton is not None:

    @triton.jit
    def _ce_forward_kernel(z_ptr, y_ptr, lse_ptr, u_ptr, C, BLOCK_C: tl.constexpr):
        # one program per row; online logsumexp over class blocks
        i = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, BLOCK_C)
        peak = tl.full([BLOCK_C], float("-inf"), dtype=tl.float32)
        total = tl.zeros([BLOCK_C], dtype=tl.float32)
        for c0 in range(0, C, BLOCK_C):
            cols = c0 + offs
            x = tl.load(z_ptr + i * C + cols, mask=cols < C, other=float("-inf")).to(tl.float32)
            new_peak = tl.maximum(peak, x)
            # lanes that have seen only padding stay at -inf; a finite stand-in avoids -inf - -inf
            ref = tl.where(new_peak > float("-inf"), new_peak, 0.0)
            total = total * tl.exp(peak - ref) + tl.exp(x - ref)
            peak = new_peak
        mx = tl.max(peak, axis=0)
        s = tl.sum(tl.where(peak > float("-inf"), total * tl.exp(peak - mx), 0.0), axis=0)
        lse = mx + tl.log(s)
        zy = tl.load(z_ptr + i * C + tl.load(y_ptr + i)).to(tl.float32)
        loss = (lse - zy).to(tl.float64)
        tl.store(lse_ptr + i, lse.to(tl.float64))
        tl.store(u_ptr + i, tl.log(1.0 + loss + 1e-8))

    @triton.jit
    def _cdf_tail_kernel(u_ptr, q_ptr, M, k, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
        # q_i = (1/M) Σ_j t(u_i − u_j), t = r/(1+r) (r = exp(−k d)) for d > 0, else 1/2
        rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        rmask = rows < M
        ui = tl.load(u_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
        acc = tl.zeros([BLOCK_R], dtype=tl.float64)
        for c0 in range(0, M, BLOCK_C):
            cols = c0 + tl.arange(0, BLOCK_C)
            cmask = cols < M
            uj = tl.load(u_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
            d = ui[:, None] - uj[None, :]
            r = tl.exp(-k * tl.maximum(d, 0.0))
            t = tl.where(d > 0, r / (1.0 + r), 0.5)
            acc += tl.sum(tl.where(cmask[None, :], t, 0.0), axis=1).to(tl.float64)
        tl.store(q_ptr + rows, acc / M, mask=rmask)

    @triton.jit
    def _cdf_backward_kernel(u_ptr, dc_ptr, du_ptr, M, k, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        rmask = rows < M
        um = tl.load(u_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
        dcm = tl.load(dc_ptr + rows, mask=rmask, other=0.0)
        below = tl.zeros([BLOCK_R], dtype=tl.float64)
        above = tl.zeros([BLOCK_R], dtype=tl.float64)
        for c0 in range(0, M, BLOCK_C):
            cols = c0 + tl.arange(0, BLOCK_C)
            cmask = cols < M
            uj = tl.load(u_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
            dcj = tl.load(dc_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
            d = um[:, None] - uj[None, :]
            r = tl.exp(-k * tl.abs(d))
            sp = k * r / ((1.0 + r) * (1.0 + r))
            below += tl.sum(tl.where(cmask[None, :] & (d > 0), sp, 0.0), axis=1).to(tl.float64)
            above += tl.sum(tl.where(cmask[None, :] & (d < 0), dcj[None, :] * sp, 0.0), axis=1).to(tl.float64)
        tl.store(du_ptr + rows, (dcm * below - above) / M, mask=rmask)

    @triton.jit
    def _ce_backward_kernel(z_ptr, y_ptr, lse_ptr, u_ptr, du_ptr, dz_ptr, C, BLOCK_C: tl.constexpr):
        i = tl.program_id(0).to(tl.int64)
        dl = (tl.load(du_ptr + i) * tl.exp(-tl.load(u_ptr + i))).to(tl.float32)
        lse = tl.load(lse_ptr + i).to(tl.float32)
        y = tl.load(y_ptr + i)
        for c0 in range(0, C, BLOCK_C):
            cols = c0 + tl.arange(0, BLOCK_C)
            m = cols < C
            x = tl.load(z_ptr + i * C + cols, mask=m, other=0.0).to(tl.float32)
            g = dl * (tl.exp(x - lse) - tl.where(cols == y, 1.0, 0.0))
            tl.store(dz_ptr + i * C + cols, g.to(dz_ptr.dtype.element_ty), mask=m)

    @triton.jit
    def _expm1_neg(x):
        # expm1 for x <= 0 from exp and log (Kahan): the rounding errors of y and log(y) cancel
        y = tl.exp(x)
        safe = tl.where((y < 1.0) & (y >= 0.5), y, 0.75)
        kahan = (safe - 1.0) * x / tl.log(safe)
        return tl.where(y >= 1.0, x, tl.where(y < 0.5, y - 1.0, kahan))

    @triton.jit
    def _mmd_forward_kernel(g_ptr, w_ptr, part_ptr, N, scale, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
        # part[pid] = Σ_{a in block} w_a Σ_b w_b expm1(scale (G_a − G_b)²), scale = −1/(2σ²)
        pid = tl.program_id(0)
        rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
        rmask = rows < N
        ga = tl.load(g_ptr + rows, mask=rmask, other=0.0)
        wa = tl.load(w_ptr + rows, mask=rmask, other=0.0)
        acc = tl.zeros([BLOCK_R], dtype=tl.float64)
        for c0 in range(0, N, BLOCK_C):
            cols = c0 + tl.arange(0, BLOCK_C)
            cmask = cols < N
            gb = tl.load(g_ptr + cols, mask=cmask, other=0.0)
            wb = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
            d = (ga[:, None] - gb[None, :]).to(tl.float32)
            e = _expm1_neg(scale * d * d)
            acc += tl.sum(tl.where(cmask[None, :], wb[None, :] * e, 0.0), axis=1).to(tl.float64)
        tl.store(part_ptr + pid, tl.sum(tl.where(rmask, wa * acc, 0.0), axis=0))

    @triton.jit
    def _mmd_backward_kernel(g_ptr, w_ptr, dg_ptr, N, scale, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
        # dg_a = 4 scale w_a Σ_b w_b (G_a − G_b) exp(scale (G_a − G_b)²)   (4 scale = −2/σ²)
        rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        rmask = rows < N
        ga = tl.load(g_ptr + rows, mask=rmask, other=0.0)
        wa = tl.load(w_ptr + rows, mask=rmask, other=0.0)
        acc = tl.zeros([BLOCK_R], dtype=tl.float64)
        for c0 in range(0, N, BLOCK_C):
            cols = c0 + tl.arange(0, BLOCK_C)
            cmask = cols < N
            gb = tl.load(g_ptr + cols, mask=cmask, other=0.0)
            wb = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
            d = (ga[:, None] - gb[None, :]).to(tl.float32)
            term = wb[None, :] * d * tl.exp(scale * d * d)
            acc += tl.sum(tl.where(cmask[None, :], term, 0.0), axis=1).to(tl.float64)
        tl.store(dg_ptr + rows, 4.0 * scale * wa * acc, mask=rmask)


# --------------------------------------------------------------------------------------------
# Block sizes: the compiled launchers pick only from this table, and triton_specializations()
# enumerates it, so tests/test_aot.py compiles every variant a GPU can be asked to run.
# --------------------------------------------------------------------------------------------
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # float64 logits run on cpp/torch
BLOCK_R = 64  # rows (samples) per program of the pairwise kernels
BLOCK_C = 64  # columns (samples) per step of the pairwise kernels
CLASS_BLOCK_CHOICES = (16, 32, 64, 128, 256, 512, 1024)  # classes per step: the smallest >= C, at most 1024
_INTERPRET_BLOCKS = (16, 32, (16, 32))  # the same roles under the CPU interpreter (small: it is slow)
_TRITON_HELPERS = ("_expm1_neg",)  # @triton.jit functions called from kernels, never launched


def _pick_block(n: int, choices: tuple[int, ...]) -> int:
    return next((c for c in choices if c >= n), choices[-1])


def _triton_blocks(c: int) -> tuple[int, int, int]:
    """(rows per program, columns per step, classes per step for ``c`` classes)."""
    if _dispatch.triton_interpret():
        return _INTERPRET_BLOCKS[0], _INTERPRET_BLOCKS[1], _pick_block(c, _INTERPRET_BLOCKS[2])
    return BLOCK_R, BLOCK_C, _pick_block(c, CLASS_BLOCK_CHOICES)


def triton_specializations() -> list[Specialization]:
    """Every (kernel, argument types, constexprs) the compiled launchers can request: each logits
    dtype and class block for the per-row kernels; the pairwise kernels work on float64 statistics."""
    f64, i64, blocks = pointer(torch.float64), "*i64", {"BLOCK_R": BLOCK_R, "BLOCK_C": BLOCK_C}
    out = [spec("_cdf_tail_kernel", {"u_ptr": f64, "q_ptr": f64, "M": "i32", "k": "fp32"}, blocks),
           spec("_cdf_backward_kernel", {"u_ptr": f64, "dc_ptr": f64, "du_ptr": f64, "M": "i32", "k": "fp32"}, blocks),
           spec("_mmd_forward_kernel", {"g_ptr": f64, "w_ptr": f64, "part_ptr": f64, "N": "i32", "scale": "fp32"},
                blocks),
           spec("_mmd_backward_kernel", {"g_ptr": f64, "w_ptr": f64, "dg_ptr": f64, "N": "i32", "scale": "fp32"},
                blocks)]
    for dtype in TRITON_DTYPES:
        z = pointer(dtype)
        for block_c in CLASS_BLOCK_CHOICES:
            out.append(spec("_ce_forward_kernel", {"z_ptr": z, "y_ptr": i64, "lse_ptr": f64, "u_ptr": f64, "C": "i32"},
                            {"BLOCK_C": block_c}))
            out.append(spec("_ce_backward_kernel", {"z_ptr": z, "y_ptr": i64, "lse_ptr": f64, "u_ptr": f64,
                                                    "du_ptr": f64, "dz_ptr": z, "C": "i32"}, {"BLOCK_C": block_c}))
    return out


def _triton_set_forward(z, y, k):
    m, c = z.shape
    z = z.contiguous()
    y = bounded_labels(y, c)
    stats = torch.empty((3, m), dtype=torch.float64, device=z.device)
    br, bc, bk = _triton_blocks(c)
    _ce_forward_kernel[(m,)](z, y, stats[0], stats[1], c, BLOCK_C=bk)
    _cdf_tail_kernel[(triton.cdiv(m, br),)](stats[1], stats[2], m, float(k), BLOCK_R=br, BLOCK_C=bc)
    return stats


def _triton_set_backward(z, y, k, stats, dc):
    m, c = z.shape
    z = z.contiguous()
    y = bounded_labels(y, c)
    du = torch.empty(m, dtype=torch.float64, device=z.device)
    dz = torch.empty_like(z)
    br, bc, bk = _triton_blocks(c)
    _cdf_backward_kernel[(triton.cdiv(m, br),)](stats[1], dc.contiguous(), du, m, float(k), BLOCK_R=br, BLOCK_C=bc)
    _ce_backward_kernel[(m,)](z, y, stats[0], stats[1], du, dz, c, BLOCK_C=bk)
    return dz


def _triton_mmd_forward(g, w, sigma):
    n = g.numel()
    br, bc, _ = _triton_blocks(1)
    part = torch.empty(triton.cdiv(n, br), dtype=torch.float64, device=g.device)
    _mmd_forward_kernel[(part.numel(),)](g, w, part, n, -0.5 / sigma**2, BLOCK_R=br, BLOCK_C=bc)
    return part.sum()


def _triton_mmd_backward(g, w, sigma):
    n = g.numel()
    br, bc, _ = _triton_blocks(1)
    dg = torch.empty(n, dtype=torch.float64, device=g.device)
    _mmd_backward_kernel[(triton.cdiv(n, br),)](g, w, dg, n, -0.5 / sigma**2, BLOCK_R=br, BLOCK_C=bc)
    return dg


# --------------------------------------------------------------------------------------------
# C++ launcher
# --------------------------------------------------------------------------------------------
_CPP_PARALLEL_PAIRS = 1 << 20  # below this many pairs a second thread costs more than it saves


def _cpp_threads(pairs: int) -> int:
    return torch.get_num_threads() if pairs >= _CPP_PARALLEL_PAIRS else 1


def _cpp_set_forward(z, y, k):
    ext = _dispatch.cpp_extension()
    m, c = z.shape
    z = z.contiguous()
    y = y.contiguous()
    stats = torch.empty((3, m), dtype=torch.float64)
    ext.quantile_set_forward(z.data_ptr(), DTYPE_CODE[z.dtype], y.data_ptr(), m, c, float(k), stats.data_ptr(),
                             _cpp_threads(m * m))
    return stats


def _cpp_set_backward(z, y, k, stats, dc):
    ext = _dispatch.cpp_extension()
    m, c = z.shape
    z = z.contiguous()
    y = y.contiguous()
    stats = stats.contiguous()
    dc = dc.contiguous()
    dz = torch.empty_like(z)
    ext.quantile_set_backward(z.data_ptr(), DTYPE_CODE[z.dtype], y.data_ptr(), m, c, float(k), stats.data_ptr(),
                              dc.data_ptr(), dz.data_ptr(), _cpp_threads(m * m))
    return dz


def _cpp_mmd_forward(g, w, sigma, *, single):
    ext = _dispatch.cpp_extension()
    g, w = g.contiguous(), w.contiguous()
    value = ext.quantile_mmd_forward(g.data_ptr(), w.data_ptr(), g.numel(), float(sigma), single,
                                     _cpp_threads(g.numel() ** 2))
    return torch.tensor(value, dtype=torch.float64)


def _cpp_mmd_backward(g, w, sigma, *, single):
    ext = _dispatch.cpp_extension()
    g, w = g.contiguous(), w.contiguous()
    dg = torch.empty_like(g)
    ext.quantile_mmd_backward(g.data_ptr(), w.data_ptr(), g.numel(), float(sigma), single, dg.data_ptr(),
                              _cpp_threads(g.numel() ** 2))
    return dg


# --------------------------------------------------------------------------------------------
# PyTorch backend: the same explicit backward in float64, pairwise terms in row chunks
# --------------------------------------------------------------------------------------------
_TORCH_CHUNK_ELEMS = 1 << 21  # bound the [rows, M] float64 temporaries to ~16 MB


def _row_chunks(rows: int, cols: int):
    step = max(1, _TORCH_CHUNK_ELEMS // max(cols, 1))
    for s in range(0, rows, step):
        yield slice(s, min(rows, s + step))


def _torch_set_forward(z, y, k):
    zd = z.double()
    lse = torch.logsumexp(zd, 1)
    u = torch.log1p(lse - zd.gather(1, y[:, None]).squeeze(1) + 1e-8)
    q = torch.empty_like(u)
    for rows in _row_chunks(u.numel(), u.numel()):
        d = u[rows, None] - u[None, :]
        r = torch.exp(-k * d.clamp_min(0))
        q[rows] = torch.where(d > 0, r / (1 + r), 0.5).mean(1)
    return torch.stack([lse, u, q])


def _torch_set_backward(z, y, k, stats, dc):
    lse, u = stats[0], stats[1]
    m = u.numel()
    du = torch.empty_like(u)
    for rows in _row_chunks(m, m):
        d = u[rows, None] - u[None, :]
        r = torch.exp(-k * d.abs())
        sp = k * r / (1 + r) ** 2
        below = torch.where(d > 0, sp, 0.0).sum(1)
        above = (torch.where(d < 0, sp, 0.0) * dc[None, :]).sum(1)
        du[rows] = (dc[rows] * below - above) / m
    dl = du * torch.exp(-u)
    p = torch.exp(z.double() - lse[:, None])
    p.scatter_add_(1, y[:, None], torch.full_like(dl[:, None], -1.0))
    return (dl[:, None] * p).to(z.dtype)


def _torch_mmd_forward(g, w, sigma):
    total = torch.zeros((), dtype=torch.float64, device=g.device)
    for rows in _row_chunks(g.numel(), g.numel()):
        d = g[rows, None] - g[None, :]
        total = total + (w[rows, None] * w[None, :] * torch.expm1(-d * d / (2 * sigma**2))).sum()
    return total


def _torch_mmd_backward(g, w, sigma):
    dg = torch.empty_like(g)
    for rows in _row_chunks(g.numel(), g.numel()):
        d = g[rows, None] - g[None, :]
        dg[rows] = (w[None, :] * d * torch.exp(-d * d / (2 * sigma**2))).sum(1)
    return -2.0 / sigma**2 * w * dg


_SET_FORWARD = {"triton": _triton_set_forward, "cpp": _cpp_set_forward, "torch": _torch_set_forward}
_SET_BACKWARD = {"triton": _triton_set_backward, "cpp": _cpp_set_backward, "torch": _torch_set_backward}
_MMD_FORWARD = {"triton": _triton_mmd_forward, "cpp": _cpp_mmd_forward, "torch": _torch_mmd_forward}
_MMD_BACKWARD = {"triton": _triton_mmd_backward, "cpp": _cpp_mmd_backward, "torch": _torch_mmd_backward}


def _mmd_launcher(table, backend, forget_logits, unseen_logits):
    """``table[backend]`` as a function of ``(g, w, sigma)``. The C++ kernels evaluate the pairwise terms in
    float unless either logits tensor is float64 (Triton's always use float, the torch backend double)."""
    if backend != "cpp":
        return table[backend]
    return functools.partial(table["cpp"], single=acc_dtype(forget_logits, unseen_logits) != torch.float64)


# --------------------------------------------------------------------------------------------
# torch.library registration
# --------------------------------------------------------------------------------------------
@torch.library.custom_op("fastblend::quantile_transform", mutates_args=())
def _quantile_transform_op(logits: torch.Tensor, labels: torch.Tensor, k: float, kappa: float,
                           backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    backend = _dispatch.resolve(TRANSFORM_OP_NAME, backend, (logits, labels))
    stats = _SET_FORWARD[backend](logits, labels, k)
    return _clamped(stats, kappa).to(acc_dtype(logits)), stats


@_quantile_transform_op.register_fake
def _(logits, labels, k, kappa, backend):
    m = logits.shape[0]
    return logits.new_empty((m,), dtype=acc_dtype(logits)), logits.new_empty((3, m), dtype=torch.float64)


@torch.library.custom_op("fastblend::quantile_transform_backward", mutates_args=())
def _quantile_transform_backward_op(grad: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
                                    stats: torch.Tensor, k: float, kappa: float, backend: str) -> torch.Tensor:
    backend = _dispatch.resolve(TRANSFORM_OP_NAME, backend, (logits, labels))
    dc = _dc_from_dg(grad.double(), stats, kappa)
    return _SET_BACKWARD[backend](logits, labels, k, stats, dc)


@_quantile_transform_backward_op.register_fake
def _(grad, logits, labels, stats, k, kappa, backend):
    return torch.empty_like(logits)


def _transform_setup_context(ctx, inputs, output):
    logits, labels, k, kappa, backend = inputs
    ctx.save_for_backward(logits, labels, output[1])
    ctx.k, ctx.kappa, ctx.backend = k, kappa, backend


def _transform_backward(ctx, grad_g, grad_stats):
    logits, labels, stats = ctx.saved_tensors
    if not ctx.needs_input_grad[0] or grad_g is None:
        return None, None, None, None, None
    dz = _quantile_transform_backward_op(grad_g, logits, labels, stats, ctx.k, ctx.kappa, ctx.backend)
    return dz, None, None, None, None


_quantile_transform_op.register_autograd(_transform_backward, setup_context=_transform_setup_context)


@torch.library.custom_op("fastblend::quantile_mmd", mutates_args=())
def _quantile_mmd_op(forget_logits: torch.Tensor, forget_labels: torch.Tensor, unseen_logits: torch.Tensor,
                     unseen_labels: torch.Tensor, k: float, kappa: float, sigma: float,
                     backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    backend = _dispatch.resolve(OP_NAME, backend, (forget_logits, forget_labels, unseen_logits, unseen_labels))
    stats_f = _SET_FORWARD[backend](forget_logits, forget_labels, k)
    stats_u = _SET_FORWARD[backend](unseen_logits, unseen_labels, k)
    g = torch.cat([_clamped(stats_u, kappa), _clamped(stats_f, kappa)])
    w = _mmd_weights(unseen_logits.shape[0], forget_logits.shape[0], g.device)
    # MMD² is a squared RKHS norm; rounding can take an exact 0 (identical sets) to −1e-10
    value = _mmd_launcher(_MMD_FORWARD, backend, forget_logits, unseen_logits)(g, w, sigma).clamp_min(0)
    value = _nan_unless_finite(value, g)
    return value.to(acc_dtype(forget_logits, unseen_logits)), stats_f, stats_u


@_quantile_mmd_op.register_fake
def _(forget_logits, forget_labels, unseen_logits, unseen_labels, k, kappa, sigma, backend):
    acc = acc_dtype(forget_logits, unseen_logits)
    return (forget_logits.new_empty((), dtype=acc),
            forget_logits.new_empty((3, forget_logits.shape[0]), dtype=torch.float64),
            unseen_logits.new_empty((3, unseen_logits.shape[0]), dtype=torch.float64))


@torch.library.custom_op("fastblend::quantile_mmd_backward", mutates_args=())
def _quantile_mmd_backward_op(grad: torch.Tensor, forget_logits: torch.Tensor, forget_labels: torch.Tensor,
                              unseen_logits: torch.Tensor, unseen_labels: torch.Tensor, stats_f: torch.Tensor,
                              stats_u: torch.Tensor, k: float, kappa: float, sigma: float, backend: str,
                              need_forget: bool, need_unseen: bool) -> tuple[torch.Tensor, torch.Tensor]:
    backend = _dispatch.resolve(OP_NAME, backend, (forget_logits, forget_labels, unseen_logits, unseen_labels))
    mu, mf = unseen_logits.shape[0], forget_logits.shape[0]
    g = torch.cat([_clamped(stats_u, kappa), _clamped(stats_f, kappa)])
    w = _mmd_weights(mu, mf, g.device)
    dg = _mmd_launcher(_MMD_BACKWARD, backend, forget_logits, unseen_logits)(g, w, sigma) * grad.double()
    dg = _nan_unless_finite(dg, g)
    d_forget, d_unseen = forget_logits.new_empty(0), unseen_logits.new_empty(0)
    if need_forget:
        dc = _dc_from_dg(dg[mu:], stats_f, kappa)
        d_forget = _SET_BACKWARD[backend](forget_logits, forget_labels, k, stats_f, dc)
    if need_unseen:
        dc = _dc_from_dg(dg[:mu], stats_u, kappa)
        d_unseen = _SET_BACKWARD[backend](unseen_logits, unseen_labels, k, stats_u, dc)
    return d_forget, d_unseen  # an empty tensor stands for "not requested"


@_quantile_mmd_backward_op.register_fake
def _(grad, forget_logits, forget_labels, unseen_logits, unseen_labels, stats_f, stats_u, k, kappa, sigma,
      backend, need_forget, need_unseen):
    return (torch.empty_like(forget_logits) if need_forget else forget_logits.new_empty(0),
            torch.empty_like(unseen_logits) if need_unseen else unseen_logits.new_empty(0))


def _mmd_setup_context(ctx, inputs, output):
    forget_logits, forget_labels, unseen_logits, unseen_labels, k, kappa, sigma, backend = inputs
    ctx.save_for_backward(forget_logits, forget_labels, unseen_logits, unseen_labels, output[1], output[2])
    ctx.params = (k, kappa, sigma, backend)


def _mmd_backward(ctx, grad, grad_stats_f, grad_stats_u):
    need_f, need_u = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
    if not (need_f or need_u) or grad is None:
        return (None,) * 8
    fl, fy, ul, uy, stats_f, stats_u = ctx.saved_tensors
    d_f, d_u = _quantile_mmd_backward_op(grad, fl, fy, ul, uy, stats_f, stats_u, *ctx.params, need_f, need_u)
    return (d_f if need_f else None), None, (d_u if need_u else None), None, None, None, None, None


_quantile_mmd_op.register_autograd(_mmd_backward, setup_context=_mmd_setup_context)


# --------------------------------------------------------------------------------------------
# Validation and the public entry points
# --------------------------------------------------------------------------------------------
def _check_set(fn: str, logits, labels, logits_name: str, labels_name: str, validate: bool) -> None:
    for name, t in ((logits_name, logits), (labels_name, labels)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if logits.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{fn}: {logits_name} must be float32, float16, bfloat16 or float64, got {logits.dtype}")
    if logits.dim() != 2:
        raise ValueError(f"{fn}: {logits_name} must have shape [M, C] (2-D), got {list(logits.shape)}")
    if logits.shape[0] == 0:
        raise ValueError(f"{fn}: {logits_name} must hold at least one sample, got shape {list(logits.shape)}")
    if logits.shape[1] == 0:
        raise ValueError(f"{fn}: {logits_name} must have at least one class column, got {list(logits.shape)}")
    if labels.dtype != torch.int64:
        raise TypeError(f"{fn}: {labels_name} must be int64 class indices, got {labels.dtype} (use .long())")
    if labels.dim() != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"{fn}: {labels_name} must have shape [M] = [{logits.shape[0]}] (one per row of "
                         f"{logits_name}), got {list(labels.shape)}")
    if labels.device != logits.device:
        raise ValueError(f"{fn}: {logits_name} and {labels_name} must be on one device; got {logits.device} "
                         f"and {labels.device}")
    if validate and not torch.compiler.is_compiling():  # host reads: eager only
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= logits.shape[1]:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{fn}: {labels_name} must be in [0, {logits.shape[1]}) (the class count of "
                             f"{logits_name}), got {bad}")
        _check_finite(fn, logits, logits_name)


def _check_finite(fn: str, logits: torch.Tensor, logits_name: str) -> None:
    """Refuse NaN/Inf logits (a host read, part of ``validate``); unvalidated they give NaN."""
    finite = torch.isfinite(logits).all(1)
    if not bool(finite.all()):
        row = int(torch.nonzero(~finite)[0])
        raise ValueError(f"{fn}: {logits_name} must be finite; row {row} holds NaN or Inf "
                         f"({int((~finite).sum())} of {logits.shape[0]} rows); pass validate=False to get NaN instead")


# The quantiles g lie in [-κ, κ] and are float32 in the fused kernels (spacing ~1e-5 near κ = 60): a
# narrower Gaussian kernel would compare rounding errors (and 1/2σ² overflows float32 below ~1e-19).
MIN_SIGMA = 1e-4


def _plain(value):
    """A numpy scalar (``np.float32(2)``) as the Python number its ``item()`` gives; else ``value``
    (ops/ imports nothing from the rest of the package, so not ``fastblend._checks``)."""
    return value.item() if type(value).__module__ == "numpy" and hasattr(value, "item") else value


def _check_params(fn: str, k: float, kappa: float, sigma: float | None = None) -> None:
    named = [("k", k), ("kappa", kappa)] + ([("sigma", sigma)] if sigma is not None else [])
    for name, value in named:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{fn}: {name} must be a number, got {type(value).__name__}")
    if torch.compiler.is_compiling():  # the tracer may hand a symbolic float: value checks are eager-only
        return
    checks = [("k", k, k >= 0, "a finite number >= 0"), ("kappa", kappa, kappa > 0, "a number > 0")]
    if sigma is not None:
        checks.append(("sigma", sigma, sigma >= MIN_SIGMA, f"a finite number >= {MIN_SIGMA:g}"))
    for name, value, ok, what in checks:
        if math.isnan(value) or not ok or (name != "kappa" and math.isinf(value)):
            raise ValueError(f"{fn}: {name} must be {what}, got {value}")


def unsupported(backend: str, *tensors: object) -> str | None:
    """Why ``backend`` cannot run these validated inputs (both ops), or ``None``."""
    if backend == "triton" and any(isinstance(t, torch.Tensor) and t.dtype == torch.float64 for t in tensors):
        return "the Triton kernels compute in float32; float64 logits run on the cpp or torch backend"
    return None


_dispatch.register(OP_NAME, unsupported)
_dispatch.register(TRANSFORM_OP_NAME, unsupported)


def quantile_transform(logits: torch.Tensor, labels: torch.Tensor, k: float = RECIPE.k, kappa: float = RECIPE.kappa,
                       backend: str = "auto", *, validate: bool = True) -> torch.Tensor:
    """Per-sample loss quantiles ``g`` of one set (docs/method.md §2.2).

    Args:
        logits: ``[M, C]`` float32/float16/bfloat16/float64 logits, M >= 1.
        labels: ``[M]`` int64 class indices in ``[0, C)``.
        k: steepness of the soft CDF (``>= 0``).
        kappa: clamp of the probit (``> 0``).
        backend: ``"auto" | "triton" | "cpp" | "torch"``; see :func:`fastblend.explain`.
        validate: check the label range and that ``logits`` are finite (reads them on the host; pass
            ``False`` in a hot loop). Unvalidated, NaN/Inf logits make every output NaN (all backends);
            a label outside ``[0, C)`` raises in the C++ kernels and is clamped by the Triton launcher.
            The host checks are skipped while ``torch.compile``/``torch.export`` trace the call
            (shape/dtype checks stay).

    Returns:
        ``[M]`` float32 (float64 for float64 logits), each in ``[0, min(κ, Φ⁻¹(1 − 1/(2M)))]``.
        Differentiable in ``logits``; the probit is taken in float64 (see the module docstring).
    """
    _check_set("quantile_transform", logits, labels, "logits", "labels", validate)
    k, kappa = _plain(k), _plain(kappa)  # numpy numbers too
    _check_params("quantile_transform", k, kappa)
    _dispatch.check_backend(TRANSFORM_OP_NAME, backend)
    g, _ = _quantile_transform_op(logits, labels, float(k), float(kappa), backend)
    return g


def quantile_mmd(forget_logits: torch.Tensor, forget_labels: torch.Tensor, unseen_logits: torch.Tensor,
                 unseen_labels: torch.Tensor, k: float = RECIPE.k, kappa: float = RECIPE.kappa,
                 sigma: float = RECIPE.sigma, backend: str = "auto", *, validate: bool = True) -> torch.Tensor:
    """Biased MMD² between the loss quantiles of the unseen and the forget set (docs/method.md §2.3).

    Args:
        forget_logits: ``[M_f, C]`` float32/float16/bfloat16/float64 logits of the forget batch.
        forget_labels: ``[M_f]`` int64 labels in ``[0, C)``.
        unseen_logits: ``[M_u, C']`` logits of the unseen batch (``M_u`` may differ from ``M_f``).
        unseen_labels: ``[M_u]`` int64 labels in ``[0, C')``.
        k, kappa: soft-CDF steepness and probit clamp (:func:`quantile_transform`).
        sigma: width of the Gaussian kernel, finite and ``>= MIN_SIGMA = 1e-4`` (narrower kernels would
            compare the float32 rounding of the quantiles).
        backend: ``"auto" | "triton" | "cpp" | "torch"``; see :func:`fastblend.explain`.
        validate: check the label ranges and that the logits are finite (reads them on the host).
            Unvalidated, NaN/Inf logits give a NaN result on every backend. The host checks are
            skipped while ``torch.compile``/``torch.export`` trace the call (shape/dtype checks stay).

    Returns:
        A 0-d float32 tensor (float64 if either logits tensor is float64), ``>= 0``. Computed as
        ``Σ w_a w_b expm1(−(G_a − G_b)²/2σ²)`` with float64 accumulation (module docstring): within
        1e-4 relative of a float64 evaluation of the formula. The gradient flows into
        ``forget_logits`` and, only when that tensor requires grad, into ``unseen_logits`` (docs/method.md
        §2.3 detaches the unseen set: pass ``unseen_logits.detach()`` or compute them under
        ``torch.no_grad()``, as :class:`fastblend.AAMULoss` does).
    """
    fn = "quantile_mmd"
    _check_set(fn, forget_logits, forget_labels, "forget_logits", "forget_labels", validate)
    _check_set(fn, unseen_logits, unseen_labels, "unseen_logits", "unseen_labels", validate)
    k, kappa, sigma = _plain(k), _plain(kappa), _plain(sigma)  # numpy numbers too
    _check_params(fn, k, kappa, sigma)
    if forget_logits.device != unseen_logits.device:
        raise ValueError(f"{fn}: forget_logits and unseen_logits must be on one device; got {forget_logits.device} "
                         f"and {unseen_logits.device}")
    _dispatch.check_backend(fn, backend)
    value, _, _ = _quantile_mmd_op(forget_logits, forget_labels, unseen_logits, unseen_labels, float(k),
                                   float(kappa), float(sigma), backend)
    return value
