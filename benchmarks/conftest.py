"""Shared benchmark set-up: machine/version info recorded in every result row."""

import pytest

from fastblend.pipeline import machine_info


@pytest.fixture
def record(benchmark):
    """``record(**fields)`` adds fields plus machine info to the benchmark's JSON row."""
    def _record(**fields):
        benchmark.extra_info.update(machine_info())
        benchmark.extra_info.update(fields)
    return _record
