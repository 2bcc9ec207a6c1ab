"""``segment_blend``: weighted blend of the rows of each CSR segment, with a fused backward.

``out[k] = Σ_{i in segment k} ŵ_i · x_i`` where ``ŵ`` is ``w / Σ_seg w`` (``"sum"``, the
reference semantics of Blend), ``softmax(w)`` within the segment (``"softmax"``) or ``w``
(``"none"``). Backends: Triton kernels (CUDA, or the interpreter), the C++/OpenMP extension
(CPU) and PyTorch; all share one hand-written backward:

    d_i   = <G[seg(i)], x_i>,   t_k = Σ_{j in k} ŵ_j d_j
    dx_i  = ŵ_i · G[seg(i)]
    dw_i  = d_i  |  (d_i − t_k) / S_k  |  ŵ_i (d_i − t_k)        (none | sum | softmax)

A segment whose weights sum to exactly zero has no defined ``"sum"`` normalisation; it yields a
zero output row and zero gradients (never inf/NaN). Empty segments yield zero rows.
"""

from __future__ import annotations

import torch

from . import _dispatch
from ._aot import Specialization, pointer, spec
from ._common import (
    DTYPE_CODE,
    SUPPORTED_DTYPES,
    acc_dtype,
    bounded_indptr,
    normalize_segment_weights,
    segment_ids,
    tl,
    triton,
)

OP_NAME = "segment_blend"
NORMALIZE_MODES = {"none": 0, "sum": 1, "softmax": 2}


# --------------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------------
if triton is not None:

    @triton.jit
    def _normalize_kernel(w_ptr, indptr_ptr, what_ptr, MODE: tl.constexpr, BLOCK: tl.constexpr):
        k = tl.program_id(0)
        start = tl.load(indptr_ptr + k)
        end = tl.load(indptr_ptr + k + 1)
        offs = tl.arange(0, BLOCK)
        acc_ty = w_ptr.dtype.element_ty
        if MODE == 0:
            for s in range(start, end, BLOCK):
                idx = s + offs
                m = idx < end
                tl.store(what_ptr + idx, tl.load(w_ptr + idx, mask=m, other=0.0), mask=m)
        elif MODE == 1:
            acc = tl.zeros([BLOCK], dtype=acc_ty)
            for s in range(start, end, BLOCK):
                idx = s + offs
                acc += tl.load(w_ptr + idx, mask=idx < end, other=0.0)
            total = tl.sum(acc, axis=0)
            for s in range(start, end, BLOCK):
                idx = s + offs
                m = idx < end
                w = tl.load(w_ptr + idx, mask=m, other=0.0)
                tl.store(what_ptr + idx, tl.where(total == 0, 0.0, w / tl.where(total == 0, 1.0, total)), mask=m)
        else:
            peak = tl.full([BLOCK], float("-inf"), dtype=acc_ty)
            for s in range(start, end, BLOCK):
                idx = s + offs
                peak = tl.maximum(peak, tl.load(w_ptr + idx, mask=idx < end, other=float("-inf")))
            mx = tl.max(peak, axis=0)
            z = tl.zeros([BLOCK], dtype=acc_ty)
            for s in range(start, end, BLOCK):
                idx = s + offs
                m = idx < end
                w = tl.load(w_ptr + idx, mask=m, other=0.0)
                z += tl.where(m, tl.exp(w - mx), 0.0)
            total = tl.sum(z, axis=0)
            for s in range(start, end, BLOCK):
                idx = s + offs
                m = idx < end
                w = tl.load(w_ptr + idx, mask=m, other=0.0)
                tl.store(what_ptr + idx, tl.exp(w - mx) / total, mask=m)

    @triton.jit
    def _forward_kernel(x_ptr, what_ptr, indptr_ptr, out_ptr, F, BLOCK_R: tl.constexpr, BLOCK_F: tl.constexpr):
        k = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
        cmask = cols < F
        start = tl.load(indptr_ptr + k)
        end = tl.load(indptr_ptr + k + 1)
        acc_ty = what_ptr.dtype.element_ty
        acc = tl.zeros([BLOCK_F], dtype=acc_ty)
        for s in range(start, end, BLOCK_R):
            rows = s + tl.arange(0, BLOCK_R)
            rmask = rows < end
            a = tl.load(what_ptr + rows, mask=rmask, other=0.0)
            tile = tl.load(x_ptr + rows[:, None] * F + cols[None, :], mask=rmask[:, None] & cmask[None, :], other=0.0)
            acc += tl.sum(a[:, None] * tile.to(acc_ty), axis=0)
        tl.store(out_ptr + k * F + cols, acc.to(out_ptr.dtype.element_ty), mask=cmask)

    @triton.jit
    def _backward_rows_kernel(grad_ptr, x_ptr, what_ptr, seg_ptr, d_ptr, dx_ptr, F,
                              NEED_X: tl.constexpr, NEED_W: tl.constexpr, BLOCK_F: tl.constexpr):
        i = tl.program_id(0).to(tl.int64)
        k = tl.load(seg_ptr + i)
        a = tl.load(what_ptr + i)
        acc_ty = what_ptr.dtype.element_ty
        acc = tl.zeros([BLOCK_F], dtype=acc_ty)
        for f0 in range(0, F, BLOCK_F):
            cols = f0 + tl.arange(0, BLOCK_F)
            m = cols < F
            g = tl.load(grad_ptr + k * F + cols, mask=m, other=0.0).to(acc_ty)
            if NEED_W:
                xv = tl.load(x_ptr + i * F + cols, mask=m, other=0.0).to(acc_ty)
                acc += g * xv
            if NEED_X:
                tl.store(dx_ptr + i * F + cols, (a * g).to(dx_ptr.dtype.element_ty), mask=m)
        if NEED_W:
            tl.store(d_ptr + i, tl.sum(acc, axis=0))

    @triton.jit
    def _backward_weights_kernel(w_ptr, what_ptr, d_ptr, indptr_ptr, dw_ptr, MODE: tl.constexpr, BLOCK: tl.constexpr):
        k = tl.program_id(0)
        start = tl.load(indptr_ptr + k)
        end = tl.load(indptr_ptr + k + 1)
        offs = tl.arange(0, BLOCK)
        acc_ty = w_ptr.dtype.element_ty
        if MODE == 0:
            for s in range(start, end, BLOCK):
                idx = s + offs
                m = idx < end
                tl.store(dw_ptr + idx, tl.load(d_ptr + idx, mask=m, other=0.0), mask=m)
        else:
            tacc = tl.zeros([BLOCK], dtype=acc_ty)
            sacc = tl.zeros([BLOCK], dtype=acc_ty)
            for s in range(start, end, BLOCK):
                idx = s + offs
                m = idx < end
                tacc += tl.load(what_ptr + idx, mask=m, other=0.0) * tl.load(d_ptr + idx, mask=m, other=0.0)
                sacc += tl.load(w_ptr + idx, mask=m, other=0.0)
            t = tl.sum(tacc, axis=0)
            total = tl.sum(sacc, axis=0)
            for s in range(start, end, BLOCK):
                idx = s + offs
                m = idx < end
                d = tl.load(d_ptr + idx, mask=m, other=0.0)
                if MODE == 1:
                    g = tl.where(total == 0, 0.0, (d - t) / tl.where(total == 0, 1.0, total))
                else:
                    g = tl.load(what_ptr + idx, mask=m, other=0.0) * (d - t)
                tl.store(dw_ptr + idx, g, mask=m)


# --------------------------------------------------------------------------------------------
# Block sizes: the compiled launchers pick only from this table, and triton_specializations()
# enumerates it, so tests/test_aot.py compiles every variant a GPU can be asked to run.
# --------------------------------------------------------------------------------------------
TRITON_DTYPES = SUPPORTED_DTYPES  # float64 runs on Triton as well (accumulating in float64)
BLOCK_R = 8  # rows per step of the forward
BLOCK_F_CHOICES = (16, 32, 64, 128, 256, 512)  # feature columns per program: the smallest >= F, at most 512
SEGMENT_BLOCK = 128  # weights per step of the per-segment normalisation and weight-gradient kernels
_INTERPRET_BLOCKS = (4, (16, 32, 64), 32)  # the same roles under the CPU interpreter (small: it is slow)


def _pick_block(n: int, choices: tuple[int, ...]) -> int:
    return next((c for c in choices if c >= n), choices[-1])


def _triton_blocks(F: int) -> tuple[int, int]:
    if _dispatch.triton_interpret():
        return _INTERPRET_BLOCKS[0], _pick_block(F, _INTERPRET_BLOCKS[1])
    return BLOCK_R, _pick_block(F, BLOCK_F_CHOICES)


def _segment_block() -> int:
    return _INTERPRET_BLOCKS[2] if _dispatch.triton_interpret() else SEGMENT_BLOCK


def triton_specializations() -> list[Specialization]:
    """Every (kernel, argument types, constexprs) the compiled launchers can request: each dtype of
    ``x``, each normalisation mode, each gradient flag pair the backward launches, each block size."""
    out = []
    for dtype in TRITON_DTYPES:
        x, acc, i64 = pointer(dtype), pointer(torch.float64 if dtype == torch.float64 else torch.float32), "*i64"
        for mode in NORMALIZE_MODES.values():
            out.append(spec("_normalize_kernel", {"w_ptr": acc, "indptr_ptr": i64, "what_ptr": acc},
                            {"MODE": mode, "BLOCK": SEGMENT_BLOCK}))
            out.append(spec("_backward_weights_kernel", {"w_ptr": acc, "what_ptr": acc, "d_ptr": acc,
                                                         "indptr_ptr": i64, "dw_ptr": acc},
                            {"MODE": mode, "BLOCK": SEGMENT_BLOCK}))
        for block_f in BLOCK_F_CHOICES:
            out.append(spec("_forward_kernel", {"x_ptr": x, "what_ptr": acc, "indptr_ptr": i64, "out_ptr": x,
                                                "F": "i32"}, {"BLOCK_R": BLOCK_R, "BLOCK_F": block_f}))
            for need_x, need_w in ((True, True), (True, False), (False, True)):
                out.append(spec("_backward_rows_kernel",
                                {"grad_ptr": x, "x_ptr": x, "what_ptr": acc, "seg_ptr": i64, "d_ptr": acc,
                                 "dx_ptr": x, "F": "i32"},
                                {"NEED_X": need_x, "NEED_W": need_w, "BLOCK_F": block_f}))
    return list(dict.fromkeys(out))  # the normalisation kernels depend on the accumulation dtype only


def _triton_store_dtype(dtype: torch.dtype) -> torch.dtype:
    # Triton's interpreter truncates float32 -> bfloat16 (compiled kernels round to nearest even):
    # under the interpreter bfloat16 results are written in float32 and rounded by torch.
    if dtype == torch.bfloat16 and _dispatch.triton_interpret():
        return torch.float32
    return dtype


def _triton_normalize(w: torch.Tensor, indptr: torch.Tensor, mode: int) -> torch.Tensor:
    what = torch.empty_like(w)
    k = indptr.numel() - 1
    if k > 0 and w.numel() > 0:
        _normalize_kernel[(k,)](w, indptr, what, MODE=mode, BLOCK=_segment_block())
    return what


def _triton_forward(x, w, indptr, normalize):
    n, f = x.shape
    k = indptr.numel() - 1
    mode = NORMALIZE_MODES[normalize]
    x = x.contiguous()
    w = w.to(acc_dtype(x)).contiguous()
    indptr = bounded_indptr(indptr, n)
    out = torch.zeros((k, f), dtype=_triton_store_dtype(x.dtype), device=x.device)
    if k > 0 and f > 0 and n > 0:
        what = _triton_normalize(w, indptr, mode)
        block_r, block_f = _triton_blocks(f)
        _forward_kernel[(k, triton.cdiv(f, block_f))](x, what, indptr, out, f, BLOCK_R=block_r, BLOCK_F=block_f)
    return out.to(x.dtype)


def _triton_backward(grad, x, w, indptr, normalize, need_x, need_w):
    n, f = x.shape
    mode = NORMALIZE_MODES[normalize]
    acc = acc_dtype(x)
    x = x.contiguous()
    grad = grad.to(x.dtype).contiguous()
    w_acc = w.to(acc).contiguous()
    indptr = bounded_indptr(indptr, n)
    dx = torch.zeros_like(x, dtype=_triton_store_dtype(x.dtype)) if need_x else None
    d = torch.zeros(n, dtype=acc, device=x.device)
    dw = torch.zeros(n, dtype=acc, device=x.device)
    if n > 0:
        what = _triton_normalize(w_acc, indptr, mode)
        seg = segment_ids(indptr, n)
        _, block_f = _triton_blocks(f)
        if f > 0:
            _backward_rows_kernel[(n,)](grad, x, what, seg, d, dx if need_x else x, f,
                                        NEED_X=need_x, NEED_W=need_w, BLOCK_F=block_f)
        if need_w:
            _backward_weights_kernel[(indptr.numel() - 1,)](w_acc, what, d, indptr, dw, MODE=mode,
                                                             BLOCK=_segment_block())
    return (dx.to(x.dtype) if need_x else None), dw.to(w.dtype)


# --------------------------------------------------------------------------------------------
# C++ launcher
# --------------------------------------------------------------------------------------------
def _cpp_forward(x, w, indptr, normalize):
    ext = _dispatch.cpp_extension()
    n, f = x.shape
    k = indptr.numel() - 1
    x = x.contiguous()
    w = w.to(acc_dtype(x)).contiguous()
    indptr = indptr.contiguous()
    out = torch.empty((k, f), dtype=x.dtype)
    what = torch.empty(n, dtype=w.dtype)
    ext.segment_blend_forward(x.data_ptr(), DTYPE_CODE[x.dtype], w.data_ptr(), indptr.data_ptr(), n, k, f,
                              NORMALIZE_MODES[normalize], out.data_ptr(), what.data_ptr(), torch.get_num_threads())
    return out


def _cpp_backward(grad, x, w, indptr, normalize, need_x, need_w):
    ext = _dispatch.cpp_extension()
    n, f = x.shape
    k = indptr.numel() - 1
    x = x.contiguous()
    grad = grad.to(x.dtype).contiguous()
    w_acc = w.to(acc_dtype(x)).contiguous()
    indptr = indptr.contiguous()
    dx = torch.empty_like(x) if need_x else None
    dw = torch.empty(n, dtype=w_acc.dtype) if need_w else None
    ext.segment_blend_backward(grad.data_ptr(), x.data_ptr(), DTYPE_CODE[x.dtype], w_acc.data_ptr(),
                               indptr.data_ptr(), n, k, f, NORMALIZE_MODES[normalize],
                               dx.data_ptr() if need_x else 0, dw.data_ptr() if need_w else 0,
                               torch.get_num_threads())
    return dx, (dw.to(w.dtype) if need_w else None)


# --------------------------------------------------------------------------------------------
# PyTorch backend (same explicit backward, no autograd graph)
# --------------------------------------------------------------------------------------------
_TORCH_CHUNK_ELEMS = 1 << 23  # bound the [rows, F] temporaries of the backward to ~32 MB


def _torch_forward(x, w, indptr, normalize):
    n, f = x.shape
    k = indptr.numel() - 1
    acc = acc_dtype(x)
    what = normalize_segment_weights(w.to(acc), indptr, normalize)
    seg = segment_ids(indptr, n)
    out = torch.zeros((k, f), dtype=acc, device=x.device)
    step = max(1, _TORCH_CHUNK_ELEMS // max(f, 1))
    for s in range(0, n, step):
        out.index_add_(0, seg[s : s + step], x[s : s + step].to(acc) * what[s : s + step, None])
    return out.to(x.dtype)


def _torch_backward(grad, x, w, indptr, normalize, need_x, need_w):
    n, f = x.shape
    k = indptr.numel() - 1
    acc = acc_dtype(x)
    w_acc = w.to(acc)
    what = normalize_segment_weights(w_acc, indptr, normalize)
    seg = segment_ids(indptr, n)
    g_acc = grad.to(acc)
    d = torch.empty(n, dtype=acc, device=x.device)
    dx = torch.empty_like(x) if need_x else None
    step = max(1, _TORCH_CHUNK_ELEMS // max(f, 1))
    for s in range(0, n, step):
        gs = g_acc.index_select(0, seg[s : s + step])
        if need_w:
            d[s : s + step] = (gs * x[s : s + step].to(acc)).sum(1)
        if need_x:
            dx[s : s + step] = (gs * what[s : s + step, None]).to(x.dtype)
    if not need_w:
        return dx, None
    if normalize == "none":
        return dx, d.to(w.dtype)
    t = torch.zeros(k, dtype=acc, device=x.device).index_add_(0, seg, what * d)
    if normalize == "sum":
        total = torch.zeros(k, dtype=acc, device=x.device).index_add_(0, seg, w_acc)
        safe = torch.where(total == 0, torch.ones_like(total), total)
        dw = torch.where(total[seg] == 0, torch.zeros_like(d), (d - t[seg]) / safe[seg])
    else:
        dw = what * (d - t[seg])
    return dx, dw.to(w.dtype)


_FORWARD = {"triton": _triton_forward, "cpp": _cpp_forward, "torch": _torch_forward}
_BACKWARD = {"triton": _triton_backward, "cpp": _cpp_backward, "torch": _torch_backward}


# --------------------------------------------------------------------------------------------
# torch.library registration
# --------------------------------------------------------------------------------------------
@torch.library.custom_op("fastblend::segment_blend", mutates_args=())
def _segment_blend_op(x: torch.Tensor, weights: torch.Tensor, indptr: torch.Tensor, normalize: str,
                      backend: str) -> torch.Tensor:
    return _FORWARD[_dispatch.resolve(OP_NAME, backend, (x, weights, indptr))](x, weights, indptr, normalize)


@_segment_blend_op.register_fake
def _(x, weights, indptr, normalize, backend):
    return x.new_empty((indptr.shape[0] - 1, x.shape[1]))


@torch.library.custom_op("fastblend::segment_blend_backward", mutates_args=())
def _segment_blend_backward_op(grad: torch.Tensor, x: torch.Tensor, weights: torch.Tensor, indptr: torch.Tensor,
                               normalize: str, backend: str, need_x: bool,
                               need_w: bool) -> tuple[torch.Tensor, torch.Tensor]:
    chosen = _dispatch.resolve(OP_NAME, backend, (x, weights, indptr))
    dx, dw = _BACKWARD[chosen](grad, x, weights, indptr, normalize, need_x, need_w)
    # custom ops cannot return None: an empty tensor stands for "not requested"
    return (dx if dx is not None else x.new_empty(0)), (dw if dw is not None else weights.new_empty(0))


@_segment_blend_backward_op.register_fake
def _(grad, x, weights, indptr, normalize, backend, need_x, need_w):
    return (torch.empty_like(x) if need_x else x.new_empty(0)), (
        torch.empty_like(weights) if need_w else weights.new_empty(0))


def _setup_context(ctx, inputs, output):
    x, weights, indptr, normalize, backend = inputs
    ctx.save_for_backward(x, weights, indptr)
    ctx.normalize = normalize
    ctx.backend = backend


def _backward(ctx, grad):
    x, weights, indptr = ctx.saved_tensors
    need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if not (need_x or need_w):
        return None, None, None, None, None
    dx, dw = _segment_blend_backward_op(grad, x, weights, indptr, ctx.normalize, ctx.backend, need_x, need_w)
    return (dx if need_x else None), (dw if need_w else None), None, None, None


_segment_blend_op.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------------
# Validation and the public entry point
# --------------------------------------------------------------------------------------------
def _check_inputs(x, weights, indptr, normalize: str, validate_indptr: bool) -> None:
    for name, t in (("x", x), ("weights", weights), ("indptr", indptr)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"segment_blend: {name} must be a torch.Tensor, got {type(t).__name__}")
    if normalize not in NORMALIZE_MODES:
        raise ValueError(f"segment_blend: normalize must be one of {sorted(NORMALIZE_MODES)}, got {normalize!r}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"segment_blend: x must be float32, float16, bfloat16 or float64, got {x.dtype}")
    if x.dim() < 1:
        raise ValueError("segment_blend: x must have shape [N, *F], got a 0-d tensor")
    if not weights.is_floating_point():
        raise TypeError(f"segment_blend: weights must be a floating tensor, got {weights.dtype}")
    if weights.dim() != 1 or weights.shape[0] != x.shape[0]:
        raise ValueError(f"segment_blend: weights must have shape [N] = [{x.shape[0]}] (one per row of x), "
                         f"got {list(weights.shape)}")
    if indptr.is_floating_point():
        detail = " and holds non-finite values" if not torch.isfinite(indptr).all() else ""
        raise TypeError(f"segment_blend: indptr must be an int64 tensor of CSR offsets; got {indptr.dtype}{detail}")
    if indptr.dtype != torch.int64:
        raise TypeError(f"segment_blend: indptr must be int64, got {indptr.dtype} (use indptr.long())")
    if indptr.dim() != 1 or indptr.numel() < 1:
        raise ValueError(f"segment_blend: indptr must have shape [K+1] with K >= 0, got {list(indptr.shape)}")
    if len({x.device, weights.device, indptr.device}) != 1:
        raise ValueError(f"segment_blend: x, weights and indptr must be on one device; got x on {x.device}, "
                         f"weights on {weights.device}, indptr on {indptr.device}")
    if validate_indptr and not torch.compiler.is_compiling():  # host reads: eager only
        bounds = indptr.cpu()
        if int(bounds[0]) != 0:
            raise ValueError(f"segment_blend: indptr must start at 0, got indptr[0] = {int(bounds[0])}")
        if int(bounds[-1]) != x.shape[0]:
            raise ValueError(f"segment_blend: indptr must end at N = {x.shape[0]} (rows of x), "
                             f"got indptr[-1] = {int(bounds[-1])}")
        steps = bounds[1:] - bounds[:-1]
        if bool((steps < 0).any()):
            bad = int(torch.nonzero(steps < 0)[0])
            raise ValueError(f"segment_blend: indptr must be non-decreasing; indptr[{bad + 1}] = "
                             f"{int(bounds[bad + 1])} < indptr[{bad}] = {int(bounds[bad])}")


# every backend runs every input that passes _check_inputs: no op-specific limits
_dispatch.register(OP_NAME)


def segment_blend(x: torch.Tensor, weights: torch.Tensor, indptr: torch.Tensor, normalize: str = "sum",
                  backend: str = "auto", *, validate: bool = True) -> torch.Tensor:
    """Blend the rows of each CSR segment into one row.

    Args:
        x: ``[N, *F]`` float32/float16/bfloat16/float64 rows, sorted by segment.
        weights: ``[N]`` floating weights, one per row.
        indptr: ``[K+1]`` int64 offsets; segment ``k`` is rows ``indptr[k]:indptr[k+1]``.
        normalize: ``"sum"`` (``w / Σ_seg w``, reference semantics; a zero-sum segment gives a zero
            row and zero gradients), ``"softmax"`` (softmax within the segment) or ``"none"``.
        backend: ``"auto" | "triton" | "cpp" | "torch"``; see :func:`fastblend.explain`. Resolved when
            the op runs, so a compiled or exported graph keeps ``"auto"`` (``fastblend.ops._dispatch``).
        validate: check ``indptr`` (starts at 0, ends at N, non-decreasing). This reads ``indptr`` on
            the host; pass ``False`` in a hot loop once the layout is known to be valid. Skipped while
            ``torch.compile``/``torch.export`` trace the call (shape, dtype and device checks stay).

    Returns:
        ``[K, *F]`` in ``x.dtype``, accumulated in float32 (float64 for float64 input). Differentiable in
        ``x`` and ``weights``.
    """
    _check_inputs(x, weights, indptr, normalize, validate)
    _dispatch.check_backend(OP_NAME, backend)
    # flatten/unflatten touch only the feature dims: no guard on the (dynamic) N or K
    flat = x.unsqueeze(1) if x.dim() == 1 else x.flatten(1)
    out = _segment_blend_op(flat, weights, indptr, normalize, backend)
    if x.dim() == 2:
        return out
    return out.squeeze(1) if x.dim() == 1 else out.unflatten(1, x.shape[1:])
