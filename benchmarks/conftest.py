"""Shared benchmark set-up: machine/version info recorded in every result row."""

import os
import platform

import pytest
import torch


def machine_info() -> dict:
    info = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info


@pytest.fixture
def record(benchmark):
    """``record(**fields)`` adds fields plus machine info to the benchmark's JSON row."""
    def _record(**fields):
        benchmark.extra_info.update(machine_info())
        benchmark.extra_info.update(fields)
    return _record
