"""What a result names the machine by: versions, CPU, threads and the GPU (the runs and the benchmarks
record it)."""

from __future__ import annotations

import os
import platform

import torch

from .._version import package_version

__all__ = ["load_average", "machine_info", "package_version"]


def machine_info() -> dict:
    """Versions (fastblend, python, torch, triton, faiss), platform, CPU, cores, torch threads and the
    GPU if any: recorded by every run and benchmark row."""
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"fastblend": package_version(), "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "threads": torch.get_num_threads(), "gpu": gpu, "device": gpu or "cpu",
            **{name: package_version(name) for name in ("triton", "faiss-cpu", "faiss-gpu-cu12")}}


def load_average() -> list[float] | None:
    """The 1-, 5- and 15-minute load averages (``None`` where the platform has none): a timing taken while
    other jobs ran is slower, so runs record the load beside their seconds."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None
