"""Builds the optional C++/OpenMP extension fastblend._C from csrc/.

The package works without it (every op falls back to PyTorch), so a failed build warns and
continues unless FASTBLEND_REQUIRE_CPP=1. FASTBLEND_NATIVE=1 adds -march=native (faster on
the build machine, not portable: leave it off when building wheels for others).
"""

import os
import sys
from glob import glob

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup


class OptionalBuildExt(build_ext):
    def run(self):
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any compiler failure
            self._fail(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)

    def _fail(self, exc):
        if os.environ.get("FASTBLEND_REQUIRE_CPP", "") not in ("", "0"):
            raise exc
        sys.stderr.write(
            f"WARNING: fastblend C++ extension not built ({exc}); the torch backend will be used. "
            "Set FASTBLEND_REQUIRE_CPP=1 to make this an error.\n"
        )


compile_args = ["-O3", "-fopenmp"]
if os.environ.get("FASTBLEND_NATIVE", "") not in ("", "0"):
    compile_args.append("-march=native")

ext_modules = [
    Pybind11Extension(
        "fastblend._C",
        sorted(glob("csrc/*.cpp")),
        include_dirs=["csrc"],
        cxx_std=17,
        extra_compile_args=compile_args,
        extra_link_args=["-fopenmp"],
        depends=sorted(glob("csrc/*.h")),
    )
]

setup(ext_modules=ext_modules, cmdclass={"build_ext": OptionalBuildExt})
