"""Test configuration.

Without a GPU the Triton kernels run in Triton's interpreter: TRITON_INTERPRET must be set before
any kernel is defined, i.e. before fastblend.ops is first imported, so it is set here.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

HAS_CUDA = torch.cuda.is_available()


def triton_device() -> str:
    """Device on which the Triton backend is exercised: CUDA when present, else the interpreter."""
    return "cuda" if HAS_CUDA else "cpu"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
