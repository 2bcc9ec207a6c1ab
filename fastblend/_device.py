"""Device helpers shared by every layer (imports nothing from the rest of fastblend)."""

from __future__ import annotations

import torch
from torch import nn


def synchronize(device: torch.device) -> None:
    """Wait for queued work on ``device`` (a no-op off CUDA): call before reading a clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def module_device(module: object) -> torch.device | None:
    """Device of a module's first parameter (else buffer); ``None`` for a parameterless module or a
    plain callable."""
    if isinstance(module, nn.Module):
        for tensor in module.parameters():
            return tensor.device
        for tensor in module.buffers():
            return tensor.device
    return None


def cpu_lacks_native(dtype: torch.dtype) -> bool:
    """Whether this CPU runs ``dtype`` (bfloat16 / float16) matmuls and convolutions without native instructions
    (AVX512-BF16 / AMX / AVX512-FP16), i.e. emulated and several times slower than float32 (about 10x for Blend's
    matcher on a 2-core AVX2 EPYC). ``False`` when torch cannot say."""
    probe = {torch.bfloat16: "_is_mkldnn_bf16_supported", torch.float16: "_is_mkldnn_fp16_supported"}.get(dtype)
    try:
        return probe is not None and not bool(getattr(torch.ops.mkldnn, probe)())
    except (AttributeError, RuntimeError):
        return False


def warn_slow_cpu_amp(device: torch.device, dtype: torch.dtype, what: str, stacklevel: int) -> None:
    """A ``UserWarning`` when ``what`` (the option that asked for it, e.g. ``"condense: amp=True"``) runs ``dtype``
    autocast on a CPU without native instructions for it (:func:`cpu_lacks_native`). ``stacklevel``: as
    ``warnings.warn``'s, counted from the caller of this function (``fastblend._checks.user_stacklevel()``)."""
    import warnings

    if device.type == "cpu" and cpu_lacks_native(dtype):
        warnings.warn(f"{what} runs {str(dtype).removeprefix('torch.')} on a CPU without native instructions for it "
                      "(no AVX512-BF16/AMX/AVX512-FP16): it is emulated, several times slower than float32 and no "
                      "more accurate; leave it off on this machine", UserWarning, stacklevel=stacklevel + 1)
