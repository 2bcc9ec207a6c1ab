#!/usr/bin/env bash
# Sets fastblend up from nothing: a virtual environment at .venv/ in this checkout, PyTorch,
# the package (editable, C++ extension built) with its dev extras, and the default data set.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${FASTBLEND_TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip setuptools wheel pybind11
# shellcheck disable=SC2086
.venv/bin/python -m pip install -q $TORCH_SPEC
FASTBLEND_REQUIRE_CPP="${FASTBLEND_REQUIRE_CPP:-1}" \
  .venv/bin/python -m pip install -q --no-build-isolation -e ".[dev]"
# animal-mnist ships the default data in its wheel; its metadata pulls tensorflow, never needed.
.venv/bin/python -m pip install -q --no-deps "animal-mnist==0.4"
.venv/bin/python -c "import fastblend, fastblend._C; print('fastblend', fastblend.__version__, 'ready')"
