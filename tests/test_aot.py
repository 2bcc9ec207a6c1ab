"""Every Triton kernel compiles for real GPUs (sm_80, sm_90) at every specialisation its launchers can
request, checked without a GPU (issue: GPU-proven without a GPU). The interpreter tests check the
numbers; this checks that the code is real CUDA code: PTX, ptxas, a cubin, no register spills."""

import importlib
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from fastblend.ops import _aot, _dispatch
from fastblend.ops._common import triton

pytestmark = pytest.mark.skipif(triton is None, reason="triton not installed")

OPS = [importlib.import_module(f"fastblend.ops.{name}") for name in ("segment_blend", "quantile_mmd")]
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("module", OPS, ids=lambda m: m.__name__.rsplit(".", 1)[1])
def test_every_kernel_and_flag_is_in_the_specialisation_table(module):
    assert _aot.coverage_problems(module) == []


def test_coverage_check_catches_a_kernel_missing_from_the_table():
    sb = OPS[0]

    @triton.jit
    def _new_kernel(x_ptr, FLAG: triton.language.constexpr):
        pass

    fake = types.SimpleNamespace(__name__="fake", _new_kernel=_new_kernel, _forward_kernel=sb._forward_kernel,
                                 triton_specializations=lambda: [_aot.spec(
                                     "_forward_kernel", {"x_ptr": "*fp32", "what_ptr": "*fp32"}, {"BLOCK_F": 16})])
    problems = _aot.coverage_problems(fake)
    assert any("_new_kernel: not in triton_specializations()" in p for p in problems)
    assert any("_forward_kernel" in p and "differ" in p for p in problems)


def test_compiled_launchers_pick_block_sizes_only_from_the_table(monkeypatch):
    sb, qm = OPS
    monkeypatch.setattr(_dispatch, "triton_interpret", lambda: False)
    table = {(s.kernel, s.constexprs) for m in OPS for s in m.triton_specializations()}
    for f in [1, 2, 3, 15, 16, 17, 100, 511, 512, 513, 3072, 10**6]:
        block_r, block_f = sb._triton_blocks(f)
        assert ("_forward_kernel", (("BLOCK_R", block_r), ("BLOCK_F", block_f))) in table
        assert ("_backward_rows_kernel", (("NEED_X", True), ("NEED_W", True), ("BLOCK_F", block_f))) in table
        block_r, block_c, block_k = qm._triton_blocks(f)
        assert ("_ce_forward_kernel", (("BLOCK_C", block_k),)) in table
        assert ("_cdf_tail_kernel", (("BLOCK_R", block_r), ("BLOCK_C", block_c))) in table
    for mode in sb.NORMALIZE_MODES.values():
        assert ("_normalize_kernel", (("MODE", mode), ("BLOCK", sb._segment_block()))) in table


@pytest.mark.slow
def test_every_specialisation_compiles_for_sm80_and_sm90_without_spills(tmp_path):
    # the suite runs the kernels in the interpreter (tests/conftest.py): compile in a process without it
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-m", "benchmarks.aot_report", "--out", str(tmp_path), "--arch", "80", "90",
                           "--jobs", "2"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    report = json.loads((tmp_path / "aot_report.json").read_text())
    assert report["errors"] == [] and report["uncovered"] == [], done.stderr[-4000:]
    assert done.returncode == 0, done.stderr[-4000:]
    assert report["specializations"] == 2 * sum(len(m.triton_specializations()) for m in OPS)
    assert {r["arch"] for r in report["kernels"]} == {"sm_80", "sm_90"}
    assert report["spilling"] == []
    assert all(0 < r["registers"] <= 255 for r in report["kernels"])
    for op in ("segment_blend", "quantile_mmd"):
        labels = " ".join(r["spec"] for r in report["kernels"] if r["op"] == op)
        assert all(f"=*{ty} " in labels for ty in ("fp32", "fp16", "bf16")), op
