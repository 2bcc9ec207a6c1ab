"""Test configuration.

Without a GPU the Triton kernels run in Triton's interpreter: TRITON_INTERPRET must be set before
any kernel is defined, i.e. before fastblend.ops is first imported, so it is set here. The helpers
the tests share (backends, devices, tolerances) live in tests/_support.py.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# The same examples on every run (CI included): a failure is reproducible, never a coin toss.
settings.register_profile("fastblend", derandomize=True, print_blob=True)
settings.load_profile("fastblend")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
