"""The sdist builds a wheel (with setuptools 77, the oldest the metadata allows) that installs into a
fresh environment and works there; the sdist ships no tests, the wheel ships ``py.typed``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SMOKE = """
import os, sys, torch, fastblend, fastblend._C
assert fastblend.__file__.startswith(sys.prefix), fastblend.__file__
assert os.path.exists(os.path.join(os.path.dirname(fastblend.__file__), "py.typed"))
x = torch.randn(6, 3, 4, 4); w = torch.rand(6) + 0.5; ip = torch.tensor([0, 2, 2, 6])
out = fastblend.segment_blend(x, w, ip, backend="cpp")
ref = fastblend.segment_blend(x, w, ip, backend="torch")
assert torch.allclose(out, ref, atol=1e-6)
assert fastblend.explain("segment_blend", x, w, ip).chosen == "cpp"
print("smoke ok", fastblend.__version__)
"""


def _copy_tree(dest: Path) -> Path:
    """The checkout's sources without build outputs (an in-tree egg-info or _C*.so would leak into the build)."""
    skip = shutil.ignore_patterns("*.egg-info", "__pycache__", "*.so", "build", "dist", "fastblend-out", ".*")
    for name in ("fastblend", "csrc", "docs", "tests", "benchmarks", "scripts"):
        shutil.copytree(ROOT / name, dest / name, ignore=skip)
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "LICENSE", "CONTRIBUTING.md"):
        shutil.copy2(ROOT / name, dest / name)
    return dest


def _setuptools_77(tmp_path: Path, env: dict) -> Path | None:
    """setuptools 77.0.3 (the oldest that reads ``license = "MIT"``) in a folder to put first on
    PYTHONPATH, or ``None`` when it cannot be downloaded (offline): then the environment's is used."""
    target = tmp_path / "setuptools77"
    got = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                          "setuptools==77.0.3"], capture_output=True, text=True, env=env, timeout=120)
    return target if got.returncode == 0 else None


@pytest.mark.slow  # one C++ build (~30 s on 2 cores)
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="needs a C++ compiler")
def test_sdist_and_wheel_build_and_install_into_fresh_environment(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRITON_INTERPRET")}
    src = _copy_tree(tmp_path / "src")

    # the sdist: what builds and documents the package, none of the test suite, no build outputs
    sdist_dir = tmp_path / "sdist"
    made = subprocess.run([sys.executable, "-c", f"from setuptools import build_meta as b; "
                           f"print(b.build_sdist({str(sdist_dir)!r}))"],
                          capture_output=True, text=True, cwd=src, env=env, timeout=300)
    assert made.returncode == 0, made.stderr[-3000:]
    (sdist,) = sdist_dir.glob("fastblend-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = [n.split("/", 1)[1] for n in tar.getnames() if "/" in n]
        tar.extractall(tmp_path / "unpacked", filter="data")
    assert not [n for n in names if n.startswith(("tests", "benchmarks"))], "sdist ships part of the test suite"
    assert {"LICENSE", "fastblend/py.typed", "csrc/bindings.cpp", "setup.py"} <= set(names)
    assert not [n for n in names if n.endswith((".so", ".pyc"))]

    # the wheel, built from the sdist with setuptools 77 where it can be had
    build_env = {**env, "FASTBLEND_REQUIRE_CPP": "1"}
    st77 = _setuptools_77(tmp_path, env)
    if st77 is not None:
        build_env["PYTHONPATH"] = str(st77)
        version = subprocess.run([sys.executable, "-c", "import setuptools; print(setuptools.__version__)"],
                                 capture_output=True, text=True, env=build_env, check=True).stdout.strip()
        assert version == "77.0.3"
    wheels = tmp_path / "wheels"
    (unpacked,) = (tmp_path / "unpacked").iterdir()
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(unpacked), "--no-deps", "--no-build-isolation", "-q", "-w",
         str(wheels)], capture_output=True, text=True, env=build_env, timeout=900,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("fastblend-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        members = zf.namelist()
        metadata = zf.read(next(n for n in members if n.endswith(".dist-info/METADATA"))).decode()
    assert "fastblend/py.typed" in members, "type checkers would not see the annotations"
    assert any(n.startswith("fastblend/_C") for n in members), "wheel built without the C++ extension"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in members)
    assert "License-Expression: MIT" in metadata
    # torchvision is a test dependency (the dev extra), never a requirement of the package itself
    assert not [line for line in metadata.splitlines()
                if line.startswith("Requires-Dist: torchvision") and "extra ==" not in line]

    target = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(target)
    py = target / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # Torch/numpy come from the test environment (several GB; reinstalling them proves nothing
    # about our wheel). A plain path entry: the test environment's own .pth hooks (e.g. the
    # editable fastblend) are not processed, so only the wheel can provide `fastblend`.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    smoke = subprocess.run([str(py), "-W", "error::UserWarning", "-c", SMOKE], capture_output=True, text=True,
                           cwd=tmp_path, env=env, timeout=300)
    assert smoke.returncode == 0 and "smoke ok" in smoke.stdout, smoke.stderr[-3000:]
    assert (target / "bin" / "fastblend").exists(), "console script not installed"
