"""What a result names the machine by: versions, CPU, threads and the GPU (imports only torch and the
standard library, so every layer and the benchmarks may use it)."""

from __future__ import annotations

import importlib.metadata
import os
import platform

import torch


def package_version(distribution: str = "fastblend") -> str | None:
    """Installed version of ``distribution`` from its package metadata; for fastblend itself an
    uninstalled source tree gives ``"0+unknown"``, any other missing distribution ``None``."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown" if distribution == "fastblend" else None


def machine_info() -> dict:
    """Versions (fastblend, python, torch, triton, faiss), platform, CPU, cores, torch threads and the
    GPU if any: recorded by every run and benchmark row."""
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"fastblend": package_version(), "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "threads": torch.get_num_threads(), "gpu": gpu, "device": gpu or "cpu",
            **{name: package_version(name) for name in ("triton", "faiss-cpu", "faiss-gpu-cu12")}}
