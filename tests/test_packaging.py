"""`pip wheel .` builds a wheel that installs into a fresh environment and works there."""

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SMOKE = """
import sys, torch, fastblend, fastblend._C
assert fastblend.__file__.startswith(sys.prefix), fastblend.__file__
x = torch.randn(6, 3, 4, 4); w = torch.rand(6) + 0.5; ip = torch.tensor([0, 2, 2, 6])
out = fastblend.segment_blend(x, w, ip, backend="cpp")
ref = fastblend.segment_blend(x, w, ip, backend="torch")
assert torch.allclose(out, ref, atol=1e-6)
assert fastblend.explain("segment_blend", x, w, ip).chosen == "cpp"
print("smoke ok", fastblend.__version__)
"""


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="needs a C++ compiler")
def test_wheel_installs_into_fresh_environment(tmp_path):
    wheels = tmp_path / "wheels"
    env = {**os.environ, "FASTBLEND_REQUIRE_CPP": "1"}
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels)],
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("fastblend-*.whl")

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
        capture_output=True, text=True, timeout=300,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    clean_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRITON_INTERPRET")}
    smoke = subprocess.run([str(py), "-c", SMOKE], capture_output=True, text=True, cwd=tmp_path, env=clean_env,
                           timeout=300)
    assert smoke.returncode == 0 and "smoke ok" in smoke.stdout, smoke.stderr[-3000:]
    assert (target / "bin" / "fastblend").exists(), "console script not installed"
