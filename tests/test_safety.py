"""Issue 14: no public input crashes the interpreter, returns a silently wrong value, or scores a
broken model as good. One test (or a few) per numbered defect; the table of bad inputs per public
name is tests/test_contract.py and the cross-backend differential tests tests/test_differential.py."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import fastblend
from fastblend.condensation.blend import blend_clusters
from tests._support import HAS_CPP, backend_params, device_for


# --------------------------------------------------------------------------------------------
# 1. Triton launchers hand the kernels contiguous index tensors
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", backend_params("triton", "cpp", "torch"))
def test_strided_labels_and_indptr_match_the_reference(backend):
    dev = device_for(backend)
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 5, (16,), generator=g).to(dev)[::2]  # strided on the device itself
    z = torch.randn(8, 5, generator=g)
    want = fastblend.quantile_transform(z, y.cpu().contiguous(), backend="torch")
    got = fastblend.quantile_transform(z.to(dev), y, backend=backend)
    torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-5)

    x, w = torch.randn(9, 3, generator=g), torch.rand(9, generator=g) + 0.1
    indptr = torch.tensor([0, 1, 2, 3, 5, 7, 9], device=dev)[::2]  # [0, 2, 5, 9], stride 2
    assert not indptr.is_contiguous()
    want = fastblend.segment_blend(x, w, indptr.cpu().contiguous(), backend="torch")
    got = fastblend.segment_blend(x.to(dev), w.to(dev), indptr, backend=backend)
    torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# 2. Memory safety: hostile indices raise a Python exception, never a signal
# --------------------------------------------------------------------------------------------
_HOSTILE = textwrap.dedent("""
    import torch, fastblend
    x, w, z = torch.randn(6, 4), torch.ones(6), torch.randn(4, 3)
    ops = torch.ops.fastblend
    cases = {
        "indptr_past_end": lambda: fastblend.segment_blend(x, w, torch.tensor([0, 3, 600]), backend="cpp",
                                                          validate=False),
        "indptr_negative": lambda: fastblend.segment_blend(x, w, torch.tensor([0, -500, 6]), backend="cpp",
                                                          validate=False),
        "indptr_backward": lambda: ops.segment_blend_backward(torch.ones(2, 4), x, w, torch.tensor([0, 9, 6]),
                                                              "sum", "cpp", True, True),
        "label_huge": lambda: fastblend.quantile_mmd(z, torch.tensor([0, 1, 10**12, 2]), z,
                                                     torch.tensor([0, 1, 2, 2]), backend="cpp", validate=False),
        "label_negative_backward": lambda: ops.quantile_transform_backward(
            torch.ones(4), z, torch.tensor([0, -7, 2, 2]), torch.rand(3, 4, dtype=torch.float64), 2.0, 60.0,
            "cpp"),
    }
    for name, call in cases.items():
        try:
            call()
            print(name, "no exception")
        except ValueError as exc:
            print(name, "ValueError", exc)
""")


@pytest.mark.skipif(not HAS_CPP, reason="C++ extension not built")
def test_cpp_ops_raise_on_hostile_indices_with_validate_false():
    """Run in a child process: before the in-kernel bounds checks these segfaulted or aborted."""
    proc = subprocess.run([sys.executable, "-c", _HOSTILE], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"process died with {proc.returncode}: {proc.stdout}{proc.stderr[-500:]}"
    lines = proc.stdout.splitlines()
    assert len(lines) == 5, proc.stdout
    for line in lines:
        assert line.split()[1] == "ValueError", line
    assert "indptr must end at N = 6" in lines[0]
    assert "labels must be in [0, 3), got 1000000000000" in lines[3]


def test_triton_launchers_bound_hostile_indices():
    """Under validate=False the Triton kernels never index out of bounds: the launchers clamp the
    layout and the labels (values are then unspecified, but the process survives)."""
    from fastblend.ops._common import bounded_indptr, bounded_labels

    assert bounded_indptr(torch.tensor([0, 3, 600]), 6).tolist() == [0, 3, 6]
    assert bounded_indptr(torch.tensor([5, -500, 2, 1]), 6).tolist() == [0, 5, 5, 6]
    assert bounded_indptr(torch.tensor([0, 2, 4, 6])[::1], 6).tolist() == [0, 2, 4, 6]  # valid: unchanged
    assert bounded_labels(torch.tensor([-1, 10**12, 2]), 3).tolist() == [0, 2, 2]


def test_blend_clusters_validates_indptr():
    net = fastblend.random_convnet(1, 8, seed=0).eval()
    x = torch.randn(6, 1, 8, 8)
    with pytest.raises(ValueError, match="blend_clusters: indptr must start at 0 and end at M = 6"):
        blend_clusters(x, torch.tensor([0, 3, 600]), net, lr=0.1)
    with pytest.raises(ValueError, match="blend_clusters: indptr must be strictly increasing"):
        blend_clusters(x, torch.tensor([0, 4, 3, 6]), net, lr=0.1)
    with pytest.raises(ValueError, match="blend_clusters: lr"):
        blend_clusters(x, torch.tensor([0, 3, 6]), net, lr=float("nan"))
    with pytest.raises(TypeError, match="blend_clusters: matcher"):
        blend_clusters(x, torch.tensor([0, 3, 6]), nn.Linear(2, 2).state_dict(), lr=0.1)


# --------------------------------------------------------------------------------------------
# 4. A diverged model is never scored as good; training stops when the loss goes non-finite
# --------------------------------------------------------------------------------------------
def _task(n: int = 40, c: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = torch.randint(0, c, (n,), generator=g)
    return x, y


class _NaNModel(nn.Module):
    def __init__(self, c: int = 4):
        super().__init__()
        self.lin = nn.Linear(6, c)

    def forward(self, x):
        return self.lin(x) * float("nan")


def test_metrics_refuse_non_finite_logits():
    x, y = _task()
    model = _NaNModel()
    with pytest.raises(ValueError, match="accuracy: the model's logits on images are not finite"):
        fastblend.accuracy(model, x, y)
    with pytest.raises(ValueError, match="mia_score: the model's logits on forget are not finite"):
        fastblend.mia_score(model, (x, y), (x, y))
    with pytest.raises(ValueError, match="svc_mia: the model's logits on retain are not finite"):
        fastblend.svc_mia(model, (x, y), (x, y), (x, y))


def test_true_class_log_odds_propagates_nan():
    from fastblend.metrics import true_class_log_odds

    phi = true_class_log_odds(torch.tensor([[float("nan"), 1.0], [2.0, 0.0]]), torch.tensor([0, 0]))
    assert math.isnan(float(phi[0])) and math.isfinite(float(phi[1]))


def test_training_stops_on_a_non_finite_loss():
    x, y = _task()
    bad = x.clone()
    bad[7] = float("nan")
    with pytest.raises(FloatingPointError, match=r"unlearn: the training loss became non-finite .* in epoch 1, "
                                                 r"first at step \d+ of \d+"):
        fastblend.unlearn("finetune", nn.Linear(6, 4), (bad[:30], y[:30]), (x[30:], y[30:]),
                          config=dict(epochs=1, batch_size=8))
    with pytest.raises(FloatingPointError, match="train_model: training left non-finite weights"):
        fastblend.train_model(nn.Linear(6, 4), (x * 1e20, y), config=dict(epochs=1, batch_size=64, lr=1e20,
                                                                    warmup_epochs=0))


@pytest.mark.parametrize("lr", [float("inf"), float("nan")])
def test_train_config_rejects_non_finite_lr(lr):
    from fastblend.methods import FinetuneConfig

    with pytest.raises(ValueError, match="unlearn: config.lr must be a finite number > 0"):
        FinetuneConfig(lr=lr).check("unlearn")


# --------------------------------------------------------------------------------------------
# 5. Labels outside the model's classes
# --------------------------------------------------------------------------------------------
def test_metrics_check_labels_against_logit_width():
    x, y = _task()
    model = nn.Linear(6, 4)
    y_bad = y.clone()
    y_bad[3] = 9
    with pytest.raises(ValueError, match=r"accuracy: images labels must be in \[0, 4\).*got 9"):
        fastblend.accuracy(model, x, y_bad)
    with pytest.raises(ValueError, match=r"mia_score: forget labels must be in \[0, 4\).*got 9"):
        fastblend.mia_score(model, (x, y_bad), (x, y))
    with pytest.raises(ValueError, match=r"svc_mia: test labels must be in \[0, 4\).*got 9"):
        fastblend.svc_mia(model, (x, y), (x, y), (x, y_bad))


# --------------------------------------------------------------------------------------------
# 7. DataLoader inputs get the checks of tensors
# --------------------------------------------------------------------------------------------
def _loader(x, y, batch_size=8):
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size)


def test_dataloader_float_labels_are_refused_not_truncated():
    x, y = _task()
    with pytest.raises(TypeError, match="accuracy: images labels must be a 1-D integer tensor, got torch.float32"):
        fastblend.accuracy(nn.Linear(6, 4), _loader(x, y.float() + 0.7))


def test_dataloader_labels_beyond_the_model_are_refused():
    x, y = _task()
    y_bad = y.clone()
    y_bad[5] = 7
    with pytest.raises(ValueError, match=r"unlearn: retain labels must be in \[0, 4\)"):
        fastblend.unlearn("finetune", nn.Linear(6, 4), _loader(x[:30], y_bad[:30]), (x[30:], y[30:]),
                          config=dict(epochs=1))


def test_empty_dataloader_is_a_clear_error():
    x, y = _task()
    empty = _loader(x[:0], y[:0])
    with pytest.raises(ValueError, match="unlearn: retain is empty"):
        fastblend.unlearn("finetune", nn.Linear(6, 4), empty, (x, y), config=dict(epochs=1))
    with pytest.raises(ValueError, match="train_model: data is empty"):
        fastblend.train_model(nn.Linear(6, 4), empty)
    with pytest.raises(ValueError, match="accuracy: images is empty"):
        fastblend.accuracy(nn.Linear(6, 4), empty)


# --------------------------------------------------------------------------------------------
# 3. One NaN/Inf behaviour on every backend: refused when validating, NaN otherwise
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("backend", backend_params())
def test_non_finite_logits_are_refused_or_give_nan(backend, bad):
    dev = device_for(backend)
    g = torch.Generator().manual_seed(3)
    z, u = torch.randn(8, 5, generator=g), torch.randn(6, 5, generator=g)
    y, yu = torch.randint(0, 5, (8,), generator=g), torch.randint(0, 5, (6,), generator=g)
    z[2, y[2]] = bad
    z, u, y, yu = z.to(dev), u.to(dev), y.to(dev), yu.to(dev)
    with pytest.raises(ValueError, match="quantile_mmd: forget_logits must be finite; row 2"):
        fastblend.quantile_mmd(z, y, u, yu, backend=backend)
    with pytest.raises(ValueError, match="quantile_transform: logits must be finite; row 2"):
        fastblend.quantile_transform(z, y, backend=backend)
    zz = z.clone().requires_grad_(True)
    value = fastblend.quantile_mmd(zz, y, u, yu, backend=backend, validate=False)
    value.backward()
    assert math.isnan(float(value.detach()))
    assert bool(zz.grad.isnan().all())
    assert bool(fastblend.quantile_transform(z, y, backend=backend, validate=False).isnan().all())


@pytest.mark.parametrize("sigma", [1e-30, 1e-5, float("inf")])
def test_sigma_must_be_finite_and_not_below_the_quantile_resolution(sigma):
    z, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match="quantile_mmd: sigma must be a finite number >= 0.0001"):
        fastblend.quantile_mmd(z, y, z, y, sigma=sigma)


@pytest.mark.parametrize("backend", backend_params())
def test_smallest_sigma_agrees_across_backends(backend):
    dev = device_for(backend)
    g = torch.Generator().manual_seed(4)
    z, u = torch.randn(8, 5, generator=g), torch.randn(6, 5, generator=g)
    y, yu = torch.randint(0, 5, (8,), generator=g), torch.randint(0, 5, (6,), generator=g)
    want = fastblend.quantile_mmd(z.double(), y, u.double(), yu, sigma=1e-4, backend="torch")
    got = fastblend.quantile_mmd(z.to(dev), y.to(dev), u.to(dev), yu.to(dev), sigma=1e-4, backend=backend)
    assert math.isfinite(float(got))
    torch.testing.assert_close(got.double().cpu(), want, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------------------------
# 8. Samplers and the A-AMU loss check their arguments at construction
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("indices, match", [(torch.tensor([-1, 2, 3]), "forget indices must be >= 0, got -1"),
                                            (torch.tensor([0, 2, 2]), "forget indices must be distinct, got 1")])
def test_forget_sampler_rejects_negative_and_duplicate_indices(indices, match):
    with pytest.raises(ValueError, match=f"ForgetSampler: {match}"):
        fastblend.ForgetSampler(indices, batch_size=2)


def test_aamu_step_rejects_float_labels():
    x, y = _task()
    with pytest.raises(TypeError, match="AAMUStep: forget labels must be a 1-D integer tensor, got torch.float32"):
        fastblend.AAMUStep(nn.Linear(6, 4), (x, y.float() + 0.7), (x, y))


@pytest.mark.parametrize("kwargs, match", [
    (dict(k=-1.0), "k must be a finite number >= 0"),
    (dict(backend="bogus"), "backend must be one of 'auto'"),
    (dict(lam=float("inf")), "lam must be a finite number >= 0"),
    (dict(sigma=0.0), "sigma must be a finite number >= 0.0001"),
    (dict(kappa=float("nan")), "kappa must be a number > 0"),
])
def test_aamu_settings_are_checked_at_construction(kwargs, match):
    x, y = _task()
    with pytest.raises(ValueError, match=f"AAMULoss: {match}"):
        fastblend.AAMULoss(**kwargs)
    with pytest.raises(ValueError, match=f"AAMUStep: {match}"):
        fastblend.AAMUStep(nn.Linear(6, 4), (x, y), (x, y), **kwargs)


# --------------------------------------------------------------------------------------------
# 6. Images of any floating dtype run, cast to the network's dtype
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_images_of_other_floating_dtypes_are_cast_to_the_network(dtype):
    g = torch.Generator().manual_seed(5)
    x32 = torch.randn(16, 1, 8, 8, generator=g)
    x, y = x32.to(dtype), torch.arange(16) % 4
    want = fastblend.extract_features(x.float(), progress=False)
    torch.testing.assert_close(fastblend.extract_features(x, progress=False), want)
    reduced = fastblend.condense(x, y, [0, 1], ipc=2, iterations=1, progress=False)
    assert reduced.images.dtype == dtype and bool(torch.isfinite(reduced.images.float()).all())
    net = fastblend.random_convnet(1, 8, 0, num_classes=4).requires_grad_(True)
    assert 0.0 <= fastblend.accuracy(net, x, y) <= 100.0
    res = fastblend.unlearn("finetune", net, (x[4:], y[4:]), (x[:4], y[:4]), config=dict(epochs=1, batch_size=8))
    assert res.steps == 2
    acc = fastblend.AAMUStep(net, (x[:4], y[:4]), (x[4:], y[4:]), batch_size=2)
    assert acc.forget.take(torch.arange(2), torch.device("cpu"))[0].dtype == torch.float32


# --------------------------------------------------------------------------------------------
# 9. Persistence: loads are validated and name the file; writes are atomic
# --------------------------------------------------------------------------------------------
def _reduced():
    from fastblend.condensation import ReducedRetainSet

    r = 5
    none = torch.zeros(0, dtype=torch.long)
    return ReducedRetainSet(images=torch.randn(r, 1, 4, 4), labels=torch.arange(r),
                            is_blended=torch.zeros(r, dtype=torch.bool), source_cluster=torch.full((r,), -1),
                            source_index=torch.arange(r), free_clusters=none, touched_clusters=none, compression=1.0)


@pytest.mark.parametrize("field, value, match", [
    ("images", "not a tensor", "images must be a floating tensor"),
    ("labels", torch.arange(3), r"labels must be a torch.int64 tensor of shape \[5\]"),
    ("is_blended", torch.zeros(5), "is_blended must be a torch.bool tensor"),
    ("compression", "high", "compression must be a number"),
])
def test_reduced_set_load_validates_fields(tmp_path, field, value, match):
    from fastblend.condensation import ReducedRetainSet

    path = tmp_path / "r.pt"
    _reduced().save(path)
    state = torch.load(path, weights_only=True)
    state[field] = value
    torch.save(state, path)
    with pytest.raises(ValueError, match=f"ReducedRetainSet.load: {path}: {match}"):
        ReducedRetainSet.load(path)


def test_truncated_files_raise_naming_the_path(tmp_path):
    from fastblend.condensation import ReducedRetainSet

    path = tmp_path / "r.pt"
    _reduced().save(path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match=f"ReducedRetainSet.load: cannot read '{path}'"):
        ReducedRetainSet.load(path)
    clustering = fastblend.group(torch.randn(12, 3), torch.arange(12) % 2, ipc=2)
    cpath = tmp_path / "c.pt"
    clustering.save(cpath)
    assert fastblend.Clustering.load(cpath).ipc == 2
    cpath.write_bytes(cpath.read_bytes()[:-50])
    with pytest.raises(ValueError, match=f"Clustering.load: cannot read '{cpath}'"):
        fastblend.Clustering.load(cpath)


def test_saves_are_atomic(tmp_path, monkeypatch):
    """A write that fails half-way leaves the previous file intact and no temporary behind."""
    path = tmp_path / "c.pt"
    clustering = fastblend.group(torch.randn(12, 3), torch.arange(12) % 2, ipc=2)
    clustering.save(path)
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        if isinstance(f, (str, bytes, os.PathLike)):
            with open(f, "wb") as fh:
                fh.write(b"partial")
        else:  # a file object
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        clustering.save(path)
    with pytest.raises(OSError, match="disk full"):
        _reduced().save(tmp_path / "r.pt")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


# --------------------------------------------------------------------------------------------
# 11. Environment variables and available_backends
# --------------------------------------------------------------------------------------------
def test_bad_fastblend_backend_names_the_variable(monkeypatch):
    monkeypatch.setenv("FASTBLEND_BACKEND", "garbage")
    expected = "segment_blend: backend must be one of .*got 'garbage' from the environment variable FASTBLEND_BACKEND"
    with pytest.raises(ValueError, match=expected):
        fastblend.segment_blend(torch.ones(2, 2), torch.ones(2), torch.tensor([0, 2]))


@pytest.mark.skipif(not HAS_CPP, reason="C++ extension not built")
@pytest.mark.parametrize("value, disabled", [("false", False), ("0", False), ("off", False), ("1", True),
                                             ("yes", True)])
def test_fastblend_no_cpp_reads_false_as_false(monkeypatch, value, disabled):
    monkeypatch.setenv("FASTBLEND_NO_CPP", value)
    assert (fastblend.available_backends()["cpp"] is not None) == disabled


@pytest.mark.skipif(fastblend.ops._dispatch.triton_unavailable_reason() is not None, reason="triton not installed")
def test_available_backends_says_triton_is_interpreter_only_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    reason = fastblend.available_backends()["triton"]
    assert reason is not None and "interpreter" in reason


# --------------------------------------------------------------------------------------------
# 10. Dataset readers: restricted unpickling, clear errors naming the file
# --------------------------------------------------------------------------------------------
class _Exploit:
    def __reduce__(self):
        return (print, ("pwned",))


def _cifar_folder(tmp_path):
    import numpy as np

    from tests.test_data import _write_cifar

    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar(folder, per_batch=10)
    return folder, np


def test_cifar_pickles_refuse_foreign_globals(tmp_path, capsys):
    import pickle

    folder, _ = _cifar_folder(tmp_path)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": _Exploit()}, f)
    with pytest.raises(ValueError, match=r"load_dataset: cifar10: cannot read .*batches.meta.*refusing to load "
                                         r"global builtins.print"):
        fastblend.load_dataset("cifar10", tmp_path)
    assert "pwned" not in capsys.readouterr().out


def test_truncated_cifar_batch_names_the_file(tmp_path):
    folder, _ = _cifar_folder(tmp_path)
    path = folder / "data_batch_3"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="load_dataset: cifar10: cannot read .*data_batch_3"):
        fastblend.load_dataset("cifar10", tmp_path)


def test_cifar_data_beyond_uint8_is_refused(tmp_path):
    import pickle

    folder, np = _cifar_folder(tmp_path)
    batch = {"data": np.full((10, 3072), 300, dtype=np.int64), "labels": list(range(10))}
    with open(folder / "data_batch_2", "wb") as f:
        pickle.dump(batch, f)
    with pytest.raises(ValueError, match=r"load_dataset: cifar10: .*data_batch_2 holds data of dtype int64"):
        fastblend.load_dataset("cifar10", tmp_path)


def test_cinic_empty_class_folder_is_an_error(tmp_path):
    pytest.importorskip("PIL")
    from tests.test_data import _write_cinic

    _write_cinic(tmp_path / "cinic10")
    victim = sorted((tmp_path / "cinic10" / "test").iterdir())[0]
    for p in victim.iterdir():
        p.unlink()
    with pytest.raises(ValueError, match=f"load_dataset: cinic10: .*{victim.name} holds no images"):
        fastblend.load_dataset("cinic10", tmp_path)


def test_group_bounds_what_it_allocates_from_arguments():
    feats, labels = torch.randn(6, 2), torch.arange(6) % 2
    with pytest.raises(ValueError, match=r"group: num_classes \* ipc = 2 \* 1099511627776"):
        fastblend.group(feats, labels, ipc=2**40)
    labels[0] = 10**7
    with pytest.raises(ValueError, match="group: num_classes \\* ipc = 10000001 \\* 2 .*largest label, 10000000"):
        fastblend.group(feats, labels, ipc=2)


def test_make_split_refuses_duplicate_and_nested_indices():
    train, test = fastblend.load_dataset("digits")
    with pytest.raises(ValueError, match="make_split: forget indices must be distinct, got 1 duplicates"):
        fastblend.make_split(train, test, forget=[3, 5, 5])
    with pytest.raises(ValueError, match="make_split: forget indices must be 1-D"):
        fastblend.make_split(train, test, forget=[[3, 5], [6, 7]])


def test_written_files_get_the_mode_of_a_plain_open(tmp_path):
    """Atomic writes end with 0o666 & ~umask (a bare temporary file would stay 0o600)."""
    old = os.umask(0o022)
    try:
        clustering = fastblend.group(torch.randn(12, 3), torch.arange(12) % 2, ipc=2)
        clustering.save(tmp_path / "c.pt")
        _reduced().save(tmp_path / "r.pt")
        m = fastblend.MemmapImages.write(tmp_path / "m.npy", torch.zeros(3, 1, 2, 2, dtype=torch.uint8),
                                          torch.arange(3))
        index = fastblend.BlendIndex.build(torch.rand(12, 1, 8, 8), torch.arange(12) % 2, ipc=2, iterations=1)
        index.save(tmp_path / "i.index")
        (tmp_path / "plain").write_text("x")
        names = ["c.pt", "r.pt", "m.npy", m.path.name.replace(".npy", ".labels.npy"), "i.index", "plain"]
        modes = {n: oct((tmp_path / n).stat().st_mode & 0o777) for n in names}
        assert modes == {n: oct(0o644) for n in names}
    finally:
        os.umask(old)


def test_a_save_into_a_missing_folder_names_the_folder(tmp_path):
    missing = tmp_path / "nonexist"
    with pytest.raises(FileNotFoundError, match=f"ReducedRetainSet.save: .*no such folder '{missing}'"):
        _reduced().save(missing / "r.pt")
    index = fastblend.BlendIndex.build(torch.rand(12, 1, 8, 8), torch.arange(12) % 2, ipc=2, iterations=1)
    with pytest.raises(FileNotFoundError, match=f"BlendIndex.save: .*no such folder '{missing}'"):
        index.save(missing / "i.index")


def test_loading_a_junk_file_raises_value_error_naming_it(tmp_path):
    from fastblend.condensation import ReducedRetainSet

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk" * 100)  # torch.load's legacy unpickler raises a bare KeyError on it
    with pytest.raises(ValueError, match=f"ReducedRetainSet.load: cannot read '{junk}'"):
        ReducedRetainSet.load(junk)
    with pytest.raises(ValueError, match=f"BlendIndex.load: cannot read {junk}"):
        fastblend.BlendIndex.load(junk)


# ============================================================================================
# Issue 24: hostile files, shrinking memory maps, refusals at the edges
# ============================================================================================
# --------------------------------------------------------------------------------------------
# 24.4 a file altered after it was written is refused (a user's file) or rebuilt (a cache entry)
# --------------------------------------------------------------------------------------------
def _flip_inside(path, tensor: torch.Tensor, count: int = 4) -> None:
    """Flip ``count`` bytes of ``path`` inside the stored bytes of ``tensor`` (found by content), the way a
    failing disk or a bad copy would: the file stays a readable torch.save zip."""
    raw = bytearray(path.read_bytes())
    payload = tensor.detach().cpu().contiguous().numpy().tobytes()
    at = bytes(raw).find(payload)
    assert at >= 0, "the tensor's bytes are not stored verbatim"
    for k in range(count):
        raw[at + 3 + 7 * k] ^= 0x5A
    path.write_bytes(bytes(raw))


def _small_index():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(24) % 3
    return fastblend.BlendIndex.build(torch.randn(24, 1, 8, 8, generator=g), y, ipc=2, iterations=1, seed=0)


def test_a_saved_index_with_flipped_bytes_is_refused_naming_the_file(tmp_path):
    index = _small_index()
    path = tmp_path / "train.index"
    index.save(path)
    _flip_inside(path, index.blends)
    with pytest.raises(ValueError, match=rf"^BlendIndex.load: {path}.*checksum"):
        fastblend.BlendIndex.load(path)


def test_a_saved_reduced_set_with_flipped_bytes_is_refused_naming_the_file(tmp_path):
    from fastblend.condensation import ReducedRetainSet

    reduced = _small_index().reduce([0, 1])
    for with_residual in (True, False):
        path = tmp_path / f"r{with_residual}.pt"
        reduced.save(path, with_residual=with_residual)
        _flip_inside(path, reduced.images if with_residual else reduced.blends)
        with pytest.raises(ValueError, match=rf"^ReducedRetainSet.load: {path}.*checksum"):
            ReducedRetainSet.load(path, source=reduced.source)


def test_a_cache_entry_with_altered_weights_is_warned_rebuilt_and_replaced(tmp_path):
    from fastblend.experiments import cache

    net = nn.Sequential(nn.Linear(8, 4))
    path = tmp_path / "models" / "m.pt"
    assert cache.save_model(net, path)
    other = nn.Sequential(nn.Linear(8, 4))
    assert cache.load_model(other, path)
    assert torch.equal(other[0].weight, net[0].weight)
    _flip_inside(path, net[0].weight)
    with pytest.warns(RuntimeWarning, match=rf"model cache entry {path} is unreadable.*checksum"):
        assert not cache.load_model(other, path)
    assert cache.save_model(net, path)  # what the caller does after retraining: the entry is replaced
    assert cache.load_model(other, path)

    index = _small_index()
    ipath = tmp_path / "indexes" / "i.pt"
    assert cache.save_index(index, ipath)
    _flip_inside(ipath, index.blends)
    with pytest.warns(RuntimeWarning, match=rf"index cache entry {ipath} is unreadable.*checksum"):
        assert cache.load_index(ipath) is None


def test_files_written_before_checksums_load_with_a_warning_and_old_cache_entries_are_rebuilt(tmp_path):
    """The decision (README "Saved files"): a user's file without a checksum (an earlier fastblend)
    still loads, with a RuntimeWarning that it was not verified; a cache entry without one is rebuilt."""
    from fastblend._io import CHECKSUM_KEY
    from fastblend.condensation import ReducedRetainSet
    from fastblend.experiments import cache

    index = _small_index()
    path = tmp_path / "old.index"
    index.save(path)
    blob = torch.load(path, weights_only=True)
    blob.pop(CHECKSUM_KEY)
    blob["version"] = 1
    torch.save(blob, path)
    with pytest.warns(RuntimeWarning, match=f"{path}.*no checksum"):
        old = fastblend.BlendIndex.load(path)
    assert torch.equal(old.blends, index.blends)
    blob["version"] = 2  # a current file that lost its checksum is corrupt, not old
    torch.save(blob, path)
    with pytest.raises(ValueError, match="checksum"):
        fastblend.BlendIndex.load(path)

    rpath = tmp_path / "old.pt"
    index.reduce([0]).save(rpath)
    state = torch.load(rpath, weights_only=True)
    state.pop(CHECKSUM_KEY)
    torch.save(state, rpath)
    with pytest.warns(RuntimeWarning, match=f"{rpath}.*no checksum"):
        ReducedRetainSet.load(rpath)

    net = nn.Linear(3, 2)
    mpath = tmp_path / "models" / "m.pt"
    mpath.parent.mkdir()
    torch.save(net.state_dict(), mpath)  # how the model cache wrote an entry before checksums
    with pytest.warns(RuntimeWarning, match=f"model cache entry {mpath} is unreadable"):
        assert not cache.load_model(nn.Linear(3, 2), mpath)


# --------------------------------------------------------------------------------------------
# 24.5 a memory-mapped file that shrinks after it was opened: an error, not SIGBUS
# --------------------------------------------------------------------------------------------
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SHRINK = """
import os, sys, torch
import fastblend
from fastblend import MemmapImages
path = sys.argv[1]
images = torch.randint(0, 255, (64, 1, 8, 8), dtype=torch.uint8)
ds = MemmapImages.write(path, images, torch.arange(64) % 4)
ds.take([0, 1])  # the file is mapped
with open(path, "r+b") as fh:  # shrunk in place (another process rewriting it, a full disk, ...)
    fh.truncate(2048)
for read in (lambda: ds.take(list(range(60, 64))), lambda: ds[63],
             lambda: fastblend.BlendIndex.build(ds, ipc=2, iterations=1)):
    try:
        read()
        print("READ")
    except ValueError as exc:
        print("ERROR", exc)
"""


def test_a_memmap_that_shrinks_after_opening_raises_not_sigbus(tmp_path):
    res = subprocess.run([sys.executable, "-c", _SHRINK, str(tmp_path / "x.npy")], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONPATH": _ROOT})
    assert res.returncode == 0, (res.returncode, res.stderr[-2000:])  # -7 / 135: killed by SIGBUS
    lines = res.stdout.splitlines()
    assert len(lines) == 3 and all(line.startswith("ERROR") for line in lines), res.stdout
    assert all("x.npy" in line and "shrank" in line for line in lines), res.stdout


# --------------------------------------------------------------------------------------------
# 24.9 refusals at the edges: numpy numbers accepted, bad devices and meta tensors named, NaN refused
# --------------------------------------------------------------------------------------------
def _tiny(n: int = 40, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    return torch.randn(n, 1, 8, 8, generator=g) + y.view(-1, 1, 1, 1).float(), y


def _net(seed: int = 0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 4))


def test_numpy_numbers_are_accepted_wherever_python_numbers_are():
    import numpy as np

    from fastblend.tracking import Band, Tracker

    assert Band(np.float32(2), np.int64(3), np.float64(4)) == Band(2.0, 3, 4.0)
    assert isinstance(Band(np.float32(2)).forget_acc, float)
    x, y = _tiny()
    tr = Tracker((x[:8], y[:8]), (x[8:16], y[8:16]), max_samples=np.int64(8), seed=np.int64(1),
                 offset=np.float32(0.5), budget=np.float32(10))
    assert tr is not None

    def run(cast):
        calls = []
        res = fastblend.unlearn("finetune", _net(), (x[8:], y[8:]), (x[:8], y[:8]), eval_every=cast(2),
                                callback=lambda m, step, s: calls.append(step), seed=cast(3),
                                config={"epochs": cast(1), "lr": cast(0.01), "batch_size": cast(8)})
        return res, calls

    want, want_calls = run(lambda v: v)
    got, got_calls = run(lambda v: np.float32(v) if isinstance(v, float) else np.int64(v))
    assert got_calls == want_calls and len(want_calls) > 2
    for a, b in zip(got.model.parameters(), want.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)

    a = fastblend.condense(x, y, forget=[0, 1], ipc=np.int64(2), iterations=np.int64(2), lr=np.float32(0.5), seed=0)
    b = fastblend.condense(x, y, forget=[0, 1], ipc=2, iterations=2, lr=float(np.float32(0.5)), seed=0)
    assert torch.equal(a.images, b.images)
    acc = fastblend.AAMUStep(_net(), (x[:8], y[:8]), (x[8:], y[8:]), batch_size=np.int64(4), lam=np.float32(34),
                             seed=np.int64(0), forget_batch_factor=np.int64(2))
    assert acc.batch_size == 4 and isinstance(acc.batch_size, int)
    prep = fastblend.prepare_unlearning(_net(), (x[8:], y[8:]), (x[:8], y[:8]), (x[:8], y[:8]),
                                        batch_size=np.int64(8), ipc=np.int64(2), iterations=np.int64(1),
                                        seed=np.int64(0))
    assert prep.retain_loader.batch_size == 8

    i64, f32 = np.int64, np.float32
    z, zy = torch.randn(24, 3, generator=torch.Generator().manual_seed(4)), torch.arange(24) % 3
    assert torch.equal(fastblend.group(z, zy, ipc=i64(2), seed=i64(1), niter=i64(5), tol=f32(0)).assignment,
                       fastblend.group(z, zy, ipc=2, seed=1, niter=5, tol=0.0).assignment)
    assert torch.equal(fastblend.BlendIndex.build(x, y, ipc=2, iterations=1, seed=i64(1)).blends,
                       fastblend.BlendIndex.build(x, y, ipc=2, iterations=1, seed=1).blends)
    assert torch.equal(fastblend.condense(x, y, [0], ipc=2, iterations=1, seed=i64(1)).images,
                       fastblend.condense(x, y, [0], ipc=2, iterations=1, seed=1).images)
    assert torch.equal(fastblend.extract_features(x, batch_size=i64(8), seed=i64(0)), fastblend.extract_features(x))
    assert fastblend.random_convnet(i64(1), i64(8), i64(0), num_classes=i64(4), width=i64(8)) is not None
    fastblend.train_model(_net(), (x, y), config={"epochs": i64(1)}, seed=i64(0))
    logits = torch.randn(8, 4, generator=torch.Generator().manual_seed(5))
    assert float(fastblend.quantile_mmd(logits, y[:8], logits.flip(0), y[:8], k=f32(2), kappa=f32(60), sigma=f32(1))) \
        == float(fastblend.quantile_mmd(logits, y[:8], logits.flip(0), y[:8], k=2.0, kappa=60.0, sigma=1.0))
    assert fastblend.mia_score(_net(), (x[:20], y[:20]), (x[20:], y[20:]), seed=i64(0)) == \
        fastblend.mia_score(_net(), (x[:20], y[:20]), (x[20:], y[20:]), seed=0)


@pytest.mark.parametrize("device", ["gpu0", "meta", "cuda:x"])
def test_a_bad_device_is_one_clear_message(device):
    x, y = _tiny()
    calls = {
        "condense": lambda: fastblend.condense(x, y, forget=[0], ipc=2, iterations=1, device=device),
        "BlendIndex.build": lambda: fastblend.BlendIndex.build(x, y, ipc=2, iterations=1, device=device),
        "unlearn": lambda: fastblend.unlearn("finetune", _net(), (x[8:], y[8:]), (x[:8], y[:8]), device=device,
                                             config={"epochs": 1}),
        "prepare_unlearning": lambda: fastblend.prepare_unlearning(_net(), (x[8:], y[8:]), (x[:8], y[:8]),
                                                                   (x[:8], y[:8]), ipc=2, iterations=1,
                                                                   device=device),
    }
    for fn, call in calls.items():
        with pytest.raises(ValueError, match=rf"^{fn}: device {device!r}"):
            call()


def test_meta_tensors_are_one_clear_message():
    x, y = _tiny()
    xm, ym = x.to("meta"), y.to("meta")
    calls = {
        "condense": lambda: fastblend.condense(xm, y, forget=[0], ipc=2, iterations=1),
        "BlendIndex.build": lambda: fastblend.BlendIndex.build(xm, ym, ipc=2, iterations=1),
        "unlearn": lambda: fastblend.unlearn("finetune", _net(), (xm, ym), (x[:8], y[:8]), config={"epochs": 1}),
        "AAMUStep": lambda: fastblend.AAMUStep(_net(), (xm[:8], ym[:8]), (x[8:], y[8:])),
        "prepare_unlearning": lambda: fastblend.prepare_unlearning(_net(), (xm, ym), (x[:8], y[:8]),
                                                                   (x[:8], y[:8]), ipc=2, iterations=1),
    }
    for fn, call in calls.items():
        with pytest.raises(ValueError, match=rf"^{fn}: .*meta"):
            call()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_pixels_are_refused_with_a_precomputed_clustering(bad):
    x, y = _tiny()
    x[5, 0, 3, 3] = bad
    clustering = fastblend.group(torch.randn(40, 3), y, ipc=2)
    with pytest.raises(ValueError, match=r"^condense: images must be finite.*row 5"):
        fastblend.condense(x, y, forget=[0], clustering=clustering, iterations=1)
    with pytest.raises(ValueError, match=r"^BlendIndex.build: images must be finite.*row 5"):
        fastblend.BlendIndex.build(x, y, clustering=clustering, iterations=1)


def test_prepare_unlearning_refuses_settings_an_index_overrides():
    x, y = _tiny()
    index = fastblend.BlendIndex.build(x, y, ipc=2, iterations=1)
    args = (_net(), (x[8:], y[8:]), (x[:8], y[:8]), (x[:8], y[:8]))
    fastblend.prepare_unlearning(*args, index=index)  # nothing to conflict
    fastblend.prepare_unlearning(*args, index=index, ipc=2, iterations=1)  # the index's own settings
    with pytest.raises(ValueError, match=r"^prepare_unlearning: ipc=3 .*index.*ipc=2"):
        fastblend.prepare_unlearning(*args, index=index, ipc=3)
    with pytest.raises(ValueError, match=r"^prepare_unlearning: iterations=12 .*index.*iterations=1"):
        fastblend.prepare_unlearning(*args, index=index, iterations=12)


def test_memmap_take_of_no_rows_is_an_empty_batch(tmp_path):
    import numpy as np

    ds = fastblend.MemmapImages.write(tmp_path / "m.npy", torch.zeros(4, 1, 2, 2, dtype=torch.uint8), [0, 1, 2, 3])
    for empty in ([], (), np.array([]), torch.tensor([], dtype=torch.long)):
        images, labels = ds.take(empty)
        assert images.shape == (0, 1, 2, 2) and labels.shape == (0,) and labels.dtype == torch.int64


def test_index_load_uses_the_same_images_as_source_and_refuses_others(tmp_path):
    index = _small_index()
    path = tmp_path / "i.index"
    index.save(path)
    same = index.images.clone()
    loaded = fastblend.BlendIndex.load(path, source=same)
    assert loaded.images is same
    with pytest.raises(ValueError, match=rf"^BlendIndex.load: {path}: source does not match"):
        fastblend.BlendIndex.load(path, source=same + 1)
    with pytest.raises(ValueError, match=r"^BlendIndex.load: .*holds its own training images"):
        fastblend.BlendIndex.load(path, source=torch.utils.data.TensorDataset(same, index.labels))
