#!/usr/bin/env bash
# Sets fastblend up from nothing: a virtual environment at .venv/ in this checkout, PyTorch,
# the package (editable, C++ extension built) with its dev extras, and the default data set.
#
# The C++/OpenMP extension needs a C++17 compiler with OpenMP (g++ on Linux; macOS's Apple clang has
# no OpenMP: `brew install llvm libomp` and CXX=$(brew --prefix llvm)/bin/clang++). Without one this
# script stops; FASTBLEND_REQUIRE_CPP=0 bash scripts/setup.sh installs anyway and every CPU op then
# runs on the PyTorch fallback, several times slower (measured: segment_blend forward+backward
# ~8x, quantile_mmd ~20x), with a one-time warning when an op first runs.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${FASTBLEND_TORCH_SPEC:-torch==2.14.1}"
# torchvision (the dev extra's, for the BatchNorm tests) is installed in the same pip command as torch,
# so an --index-url in FASTBLEND_TORCH_SPEC (the CPU-only wheels) applies to it too and the dev extra
# then finds it installed (a CPU build "0.29.1+cpu" satisfies "torchvision==0.29.1") instead of pulling
# the default (CUDA) torch from PyPI; set it to match another torch in FASTBLEND_TORCH_SPEC.
TORCHVISION_SPEC="${FASTBLEND_TORCHVISION_SPEC:-torchvision==0.29.1}"
REQUIRE_CPP="${FASTBLEND_REQUIRE_CPP:-1}"

have_openmp_compiler() {
  local cxx="${CXX:-c++}" dir
  command -v "$cxx" >/dev/null 2>&1 || return 1
  dir="$(mktemp -d)"
  printf '#include <omp.h>\nint main() { return omp_get_max_threads() > 0 ? 0 : 1; }\n' > "$dir/t.cpp"
  "$cxx" -std=c++17 -fopenmp "$dir/t.cpp" -o "$dir/t" >/dev/null 2>&1
  local rc=$?
  rm -rf "$dir"
  return $rc
}

if [ "$REQUIRE_CPP" != "0" ] && ! have_openmp_compiler; then
  cat >&2 <<'MSG'
setup.sh: no C++17 compiler with OpenMP found (tried `$CXX` or `c++` with -std=c++17 -fopenmp).
  Linux:  sudo apt install g++        (or your distribution's gcc-c++)
  macOS:  brew install llvm libomp && export CXX="$(brew --prefix llvm)/bin/clang++"
Or install without the C++ extension: FASTBLEND_REQUIRE_CPP=0 bash scripts/setup.sh
  (every CPU op then runs on the PyTorch fallback: segment_blend ~8x, quantile_mmd ~20x slower;
   fastblend warns once when an op first runs; GPU ops use Triton and are unaffected).
MSG
  exit 1
fi

# PyTorch's CUDA build needs several GB in .venv/ (and pip's cache, which is skipped here): say so up front
# instead of failing half-way through an install with "No space left on device".
free_mb="$(df -Pm . 2>/dev/null | awk 'NR==2 {print $4}')"
if [ -n "${free_mb:-}" ] && [ "$free_mb" -lt 8000 ] && [ ! -x .venv/bin/python ]; then
  echo "setup.sh: only ${free_mb} MB free here; PyTorch with its CUDA libraries needs about 6 GB (the CPU-only" >&2
  echo "  build about 1 GB: see FASTBLEND_TORCH_SPEC in the README). Trying anyway." >&2
fi
export PIP_NO_CACHE_DIR=1

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip "setuptools>=77" wheel pybind11
# shellcheck disable=SC2086
.venv/bin/python -m pip install -q $TORCH_SPEC $TORCHVISION_SPEC
FASTBLEND_REQUIRE_CPP="$REQUIRE_CPP" \
  .venv/bin/python -m pip install -q --no-build-isolation -e ".[dev]"
# animal-mnist ships the default data in its wheel; its metadata pulls tensorflow, never needed.
.venv/bin/python -m pip install -q --no-deps "animal-mnist==0.4"
.venv/bin/python -c "
import fastblend
reason = fastblend.available_backends()['cpp']
print('fastblend', fastblend.__version__, 'ready', '(C++ backend)' if reason is None else f'WITHOUT the C++ backend: {reason}')
"
