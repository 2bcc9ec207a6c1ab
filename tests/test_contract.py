"""The bad-input contract of the public API: for every name in ``fastblend.__all__``, a table of bad
inputs and the exception each must raise, whose message names the function and the argument.

Adding a public name? Add rows to ``ROWS`` (at least one; the suite fails otherwise). A name whose
rows are not written yet may sit in ``PENDING`` with a comment saying who adds them; a name that
takes no input to check sits in ``NO_INPUT`` with the reason. Each row is
``(name, case id, thunk, exception type, regex the message must match)``; keep inputs tiny.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import fastblend

NAN, INF = math.nan, math.inf

# public names that take no input a caller could get wrong (records, constants, zero-argument queries)
NO_INPUT = {
    "__version__": "a string",
    "AAMULossOutput": "a NamedTuple of results, built by AAMULoss",
    "UnlearnResult": "a record of results, built by unlearn",
    "available_methods": "takes no arguments",
    "available_backends": "takes no arguments",
}
# public names whose rows are still to be written, each with who adds them (keep this small)
PENDING: dict[str, str] = {}


def _x(n=6, c=1, s=8):
    return torch.randn(n, c, s, s, generator=torch.Generator().manual_seed(0))


def _y(n=6, c=3):
    return torch.arange(n) % c


def _z(m=4, c=3):
    return torch.randn(m, c, generator=torch.Generator().manual_seed(1))


def _net(c=1, s=8, k=3):
    return fastblend.random_convnet(c, s, 0, num_classes=k)


def _lin():
    return nn.Linear(4, 3)


def _ip(*v):
    return torch.tensor(v, dtype=torch.long)


def _clustering():
    return fastblend.group(torch.randn(12, 3, generator=torch.Generator().manual_seed(2)), torch.arange(12) % 2, ipc=2)


def _reduced_fields(**over):
    r = 3
    fields = dict(images=torch.zeros(r, 1, 2, 2), labels=torch.arange(r), is_blended=torch.zeros(r, dtype=torch.bool),
                  source_cluster=torch.full((r,), -1), source_index=torch.arange(r),
                  free_clusters=torch.zeros(0, dtype=torch.long), touched_clusters=torch.zeros(0, dtype=torch.long),
                  compression=1.0)
    return {**fields, **over}


def _index():
    return fastblend.BlendIndex.build(_x(12), _y(12), ipc=2, iterations=1)


def _xy4(n=8):
    return torch.randn(n, 4, generator=torch.Generator().manual_seed(3)), torch.arange(n) % 3


F = fastblend
ROWS = [
    # ---------------- kernels
    ("segment_blend", "x not a tensor", lambda: F.segment_blend([1.0], torch.ones(1), _ip(0, 1)), TypeError,
     "segment_blend: x must be a torch.Tensor"),
    ("segment_blend", "int x", lambda: F.segment_blend(torch.ones(2, 2, dtype=torch.long), torch.ones(2), _ip(0, 2)),
     TypeError, "segment_blend: x must be float32"),
    ("segment_blend", "weights wrong length", lambda: F.segment_blend(torch.ones(3, 2), torch.ones(2), _ip(0, 3)),
     ValueError, r"segment_blend: weights must have shape \[N\]"),
    ("segment_blend", "float indptr", lambda: F.segment_blend(torch.ones(2, 2), torch.ones(2), torch.tensor([0., 2.])),
     TypeError, "segment_blend: indptr must be an int64"),
    ("segment_blend", "int32 indptr", lambda: F.segment_blend(torch.ones(2, 2), torch.ones(2), _ip(0, 2).int()),
     TypeError, "segment_blend: indptr must be int64"),
    ("segment_blend", "indptr past N", lambda: F.segment_blend(torch.ones(2, 2), torch.ones(2), _ip(0, 5)),
     ValueError, "segment_blend: indptr must end at N = 2"),
    ("segment_blend", "indptr decreasing", lambda: F.segment_blend(torch.ones(3, 2), torch.ones(3), _ip(0, 2, 1, 3)),
     ValueError, "segment_blend: indptr must be non-decreasing"),
    ("segment_blend", "empty indptr", lambda: F.segment_blend(torch.ones(2, 2), torch.ones(2), _ip()),
     ValueError, r"segment_blend: indptr must have shape \[K\+1\]"),
    ("segment_blend", "bad normalize", lambda: F.segment_blend(torch.ones(2, 2), torch.ones(2), _ip(0, 2), "mean"),
     ValueError, "segment_blend: normalize must be one of"),
    ("segment_blend", "bad backend", lambda: F.segment_blend(torch.ones(2, 2), torch.ones(2), _ip(0, 2), backend="gpu"),
     ValueError, "backend must be one of"),
    ("segment_blend", "meta device mix",
     lambda: F.segment_blend(torch.ones(2, 2), torch.ones(2, device="meta"), _ip(0, 2)), ValueError,
     "segment_blend: x, weights and indptr must be on one device"),
    ("quantile_transform", "1-D logits", lambda: F.quantile_transform(torch.ones(3), _ip(0, 1, 2)), ValueError,
     r"quantile_transform: logits must have shape \[M, C\]"),
    ("quantile_transform", "no samples", lambda: F.quantile_transform(torch.ones(0, 3), _ip()), ValueError,
     "quantile_transform: logits must hold at least one sample"),
    ("quantile_transform", "float labels", lambda: F.quantile_transform(_z(), torch.zeros(4)), TypeError,
     "quantile_transform: labels must be int64"),
    ("quantile_transform", "label out of range", lambda: F.quantile_transform(_z(), _ip(0, 1, 2, 3)), ValueError,
     r"quantile_transform: labels must be in \[0, 3\)"),
    ("quantile_transform", "NaN logits", lambda: F.quantile_transform(_z().fill_(NAN), _ip(0, 1, 2, 0)), ValueError,
     "quantile_transform: logits must be finite"),
    ("quantile_transform", "k < 0", lambda: F.quantile_transform(_z(), _ip(0, 1, 2, 0), k=-1.0), ValueError,
     "quantile_transform: k must be"),
    ("quantile_transform", "k string", lambda: F.quantile_transform(_z(), _ip(0, 1, 2, 0), k="2"), TypeError,
     "quantile_transform: k must be a number"),
    ("quantile_transform", "kappa 0", lambda: F.quantile_transform(_z(), _ip(0, 1, 2, 0), kappa=0.0), ValueError,
     "quantile_transform: kappa must be"),
    ("quantile_mmd", "Inf unseen logits",
     lambda: F.quantile_mmd(_z(), _ip(0, 1, 2, 0), _z().fill_(INF), _ip(0, 1, 2, 0)), ValueError,
     "quantile_mmd: unseen_logits must be finite"),
    ("quantile_mmd", "sigma tiny", lambda: F.quantile_mmd(_z(), _ip(0, 1, 2, 0), _z(), _ip(0, 1, 2, 0), sigma=1e-30),
     ValueError, "quantile_mmd: sigma must be"),
    ("quantile_mmd", "sigma nan", lambda: F.quantile_mmd(_z(), _ip(0, 1, 2, 0), _z(), _ip(0, 1, 2, 0), sigma=NAN),
     ValueError, "quantile_mmd: sigma must be"),
    ("quantile_mmd", "labels wrong length", lambda: F.quantile_mmd(_z(), _ip(0, 1), _z(), _ip(0, 1, 2, 0)), ValueError,
     r"quantile_mmd: forget_labels must have shape \[M\]"),
    ("explain", "unknown op", lambda: F.explain("blend", torch.ones(1)), ValueError, "unknown op 'blend'"),
    ("explain", "bad backend", lambda: F.explain("segment_blend", torch.ones(1), backend="cuda"), ValueError,
     "backend must be one of"),
    # ---------------- Blend
    ("extract_features", "not a tensor", lambda: F.extract_features([[0.0]], progress=False), TypeError,
     "extract_features: images must be a torch.Tensor"),
    ("extract_features", "int images", lambda: F.extract_features(torch.zeros(2, 1, 8, 8, dtype=torch.uint8),
                                                                  progress=False), TypeError,
     "extract_features: images must be a floating-point tensor"),
    ("extract_features", "empty", lambda: F.extract_features(torch.zeros(0, 1, 8, 8), progress=False), ValueError,
     "extract_features: images must hold at least one image"),
    ("extract_features", "batch_size 0", lambda: F.extract_features(_x(), batch_size=0, progress=False), ValueError,
     "extract_features: batch_size must be"),
    ("group", "1-D features", lambda: F.group(torch.ones(6), _y(), ipc=1), ValueError, "group: features must be 2-D"),
    ("group", "ipc 0", lambda: F.group(torch.randn(6, 2), _y(), ipc=0), ValueError, "group: ipc"),
    ("group", "float labels", lambda: F.group(torch.randn(6, 2), _y().float(), ipc=1), TypeError, "group: labels"),
    ("Clustering", "inconsistent fields", lambda: F.Clustering(_ip(0), _ip(0), _ip(0, 2), _ip(0), 1, 1,
                                                                torch.zeros(1)).validate(), ValueError,
     "Clustering: inconsistent fields"),
    ("Clustering", "load missing file", lambda: F.Clustering.load("/nonexistent/c.pt"), FileNotFoundError,
     "Clustering.load: no such file"),
    # ---------------- the index and the drop-in
    ("BlendIndex", "float labels", lambda: F.BlendIndex.build(_x(12), _y(12).float(), ipc=2), TypeError,
     "BlendIndex.build: labels must be a 1-d integer tensor"),
    ("BlendIndex", "ipc 0", lambda: F.BlendIndex.build(_x(12), _y(12), ipc=0), ValueError,
     "BlendIndex.build: ipc must be a positive int"),
    ("BlendIndex", "int images", lambda: F.BlendIndex.build(_x(12).long(), _y(12), ipc=2), TypeError,
     "BlendIndex.build: images must be a floating tensor"),
    ("BlendIndex", "forget out of range", lambda: _index().reduce([100]), ValueError,
     "BlendIndex.reduce: forget indices must be in"),
    ("BlendIndex", "duplicate forget", lambda: _index().reduce([0, 0]), ValueError,
     "BlendIndex.reduce: forget indices must be distinct"),
    ("BlendIndex", "missing file", lambda: F.BlendIndex.load("/nonexistent/index.pt"), ValueError,
     "BlendIndex.load: cannot read /nonexistent/index.pt"),
    ("prepare_unlearning", "batch_size 0",
     lambda: F.prepare_unlearning(_net(), (_x(12), _y(12)), (_x(2), _y(2)), (_x(12), _y(12)), batch_size=0, ipc=2),
     ValueError, "prepare_unlearning: batch_size must be an int >= 1"),
    ("prepare_unlearning", "model not a module",
     lambda: F.prepare_unlearning("net", (_x(12), _y(12)), (_x(2), _y(2)), (_x(12), _y(12)), ipc=2),
     TypeError, "prepare_unlearning: model must be a torch.nn.Module"),
    ("prepare_unlearning", "no forget",
     lambda: F.prepare_unlearning(_net(), (_x(12), _y(12)), None, (_x(12), _y(12)), ipc=2),
     ValueError, "prepare_unlearning: forget is required"),
    ("prepare_unlearning", "float retain labels",
     lambda: F.prepare_unlearning(_net(), (_x(12), _y(12).float()), (_x(2), _y(2)), (_x(12), _y(12)), ipc=2),
     TypeError, "prepare_unlearning: retain labels must be a 1-D integer tensor"),
    ("condense", "float labels", lambda: F.condense(_x(), _y().float(), [0], ipc=1, progress=False), TypeError,
     "condense: labels must be a 1-d integer tensor"),
    ("condense", "forget out of range", lambda: F.condense(_x(), _y(), [10], ipc=1, progress=False), ValueError,
     "condense: forget indices must be in"),
    ("condense", "duplicate forget", lambda: F.condense(_x(), _y(), [0, 0], ipc=1, progress=False), ValueError,
     "condense: forget"),
    ("condense", "int images", lambda: F.condense(_x().long(), _y(), [0], ipc=1, progress=False), TypeError,
     "condense: images must be a floating tensor"),
    ("condense", "member_chunk 0", lambda: F.condense(_x(), _y(), [0], ipc=1, member_chunk=0), ValueError,
     "condense: member_chunk must be None or an int >= 1"),
    ("ReducedRetainSet", "load wrong labels", lambda: _save_load_reduced(labels=torch.arange(2)), ValueError,
     r"ReducedRetainSet.load: .*: labels must be a torch.int64 tensor of shape \[3\]"),
    ("ReducedRetainSet", "load images as string", lambda: _save_load_reduced(images="pixels"), ValueError,
     "ReducedRetainSet.load: .*: images must be a floating tensor"),
    ("ReducedRetainSet", "load without its source", lambda: _save_load_lean_reduced(None), ValueError,
     "ReducedRetainSet.load: .* holds no residual images .* pass source="),
    ("ReducedRetainSet", "load with another source", lambda: _save_load_lean_reduced(torch.ones(3, 1, 2, 2)),
     ValueError, "ReducedRetainSet.load: .*: source does not match"),
    # ---------------- A-AMU
    ("steepen", "int loss", lambda: F.steepen(torch.ones(3, dtype=torch.long)), TypeError,
     "steepen: per_sample_loss must be a floating"),
    ("steepen", "2-D loss", lambda: F.steepen(torch.ones(3, 2)), ValueError,
     r"steepen: per_sample_loss must have shape \[B\]"),
    ("steepen", "bad mode", lambda: F.steepen(torch.ones(3), "max"), ValueError, "steepen: mode must be one of"),
    ("AAMULoss", "k < 0", lambda: F.AAMULoss(k=-1.0), ValueError, "AAMULoss: k must be"),
    ("AAMULoss", "lam inf", lambda: F.AAMULoss(lam=INF), ValueError, "AAMULoss: lam must be a finite number"),
    ("AAMULoss", "bogus backend", lambda: F.AAMULoss(backend="bogus"), ValueError, "AAMULoss: backend must be one of"),
    ("AAMULoss", "bad steepen", lambda: F.AAMULoss(steepen="cube"), ValueError, "AAMULoss: steepen must be one of"),
    ("ForgetSampler", "negative index", lambda: F.ForgetSampler(_ip(-1, 2), 2), ValueError,
     "ForgetSampler: forget indices must be >= 0"),
    ("ForgetSampler", "duplicates", lambda: F.ForgetSampler(_ip(2, 2), 2), ValueError,
     "ForgetSampler: forget indices must be distinct"),
    ("ForgetSampler", "count 2**40", lambda: F.ForgetSampler(2**40, 2), ValueError,
     "ForgetSampler: forget count must be at most 2147483647"),
    ("ForgetSampler", "float indices", lambda: F.ForgetSampler(torch.tensor([0.5]), 2), TypeError,
     "ForgetSampler: forget must be a count or a 1-D integer index tensor"),
    ("ForgetSampler", "empty", lambda: F.ForgetSampler(0, 2), ValueError, "ForgetSampler: the forget set is empty"),
    ("ForgetSampler", "batch_size 0", lambda: F.ForgetSampler(3, 0), ValueError, "ForgetSampler: batch_size must be"),
    ("UnseenSampler", "float labels", lambda: F.UnseenSampler(torch.zeros(3), 2), TypeError,
     "UnseenSampler: unseen_labels must be an integer tensor"),
    ("UnseenSampler", "label beyond num_classes", lambda: F.UnseenSampler(_ip(0, 5), 2, num_classes=3), ValueError,
     r"UnseenSampler: unseen_labels must be in \[0, 3\)"),
    ("Accelerator", "float forget labels", lambda: F.Accelerator(_lin(), *_xy4()[:1], _xy4()[1].float(), *_xy4()),
     TypeError, "Accelerator: forget_y must be integer class labels"),
    ("Accelerator", "model not a module", lambda: F.Accelerator("net", *_xy4(), *_xy4()), TypeError,
     "Accelerator: model must be a torch.nn.Module"),
    ("Accelerator", "int images", lambda: F.Accelerator(_lin(), _xy4()[0].long(), _xy4()[1], *_xy4()), TypeError,
     "Accelerator: forget_x must be floating-point images"),
    ("accelerate", "sigma 0", lambda: F.accelerate(_lin(), *_xy4(), *_xy4(), sigma=0.0), ValueError,
     "Accelerator: sigma must be"),
    ("accelerate", "batch_size 0", lambda: F.accelerate(_lin(), *_xy4(), *_xy4(), batch_size=0), ValueError,
     "Accelerator: batch_size must be"),
    # ---------------- methods
    ("unlearn", "unknown method", lambda: F.unlearn("forget-it", _lin(), _xy4(), _xy4()), ValueError, "unlearn: "),
    ("unlearn", "lr inf", lambda: F.unlearn("finetune", _lin(), _xy4(), _xy4(), config=dict(lr=INF)), ValueError,
     "unlearn: config.lr must be a finite number"),
    ("unlearn", "labels beyond the model", lambda: F.unlearn("finetune", _lin(), (_xy4()[0], _ip(*range(8))), _xy4()),
     ValueError, r"unlearn: retain labels must be in \[0, 3\)"),
    ("unlearn", "accelerated without unseen", lambda: F.unlearn("a_finetune", _lin(), _xy4(), _xy4()), ValueError,
     "unlearn: method .* requires unseen data"),
    ("unlearn", "model not a module", lambda: F.unlearn("finetune", "net", _xy4(), _xy4()), TypeError,
     "unlearn: model must be a torch.nn.Module"),
    ("train_model", "lam-free config key", lambda: F.train_model(_lin(), _xy4(), config=dict(lam=1.0)), ValueError,
     "train_model: unknown config keys"),
    ("train_model", "float labels", lambda: F.train_model(_lin(), (_xy4()[0], _xy4()[1].float())), TypeError,
     "train_model: data labels must be a 1-D integer tensor"),
    ("presets", "unknown setting", lambda: F.presets("imagenet-1k"), ValueError, "presets: "),
    # ---------------- evaluation
    ("accuracy", "labels beyond logits", lambda: F.accuracy(_lin(), _xy4()[0], _ip(*range(8))), ValueError,
     r"accuracy: images labels must be in \[0, 3\)"),
    ("accuracy", "NaN model", lambda: F.accuracy(_lin().requires_grad_(False).apply(_nan_weights), *_xy4()), ValueError,
     "accuracy: the model's logits on images are not finite"),
    ("accuracy", "empty", lambda: F.accuracy(_lin(), torch.zeros(0, 4), _ip()), ValueError,
     "accuracy: images is empty"),
    ("mia_score", "labels beyond logits", lambda: F.mia_score(_lin(), (_xy4()[0], _ip(*range(8))), _xy4()), ValueError,
     r"mia_score: forget labels must be in \[0, 3\)"),
    ("mia_score", "NaN model", lambda: F.mia_score(_lin().apply(_nan_weights), _xy4(), _xy4()), ValueError,
     "mia_score: the model's logits on forget are not finite"),
    ("svc_mia", "unknown feature", lambda: F.svc_mia(_lin(), _xy4(), _xy4(), _xy4(), features=("loss",)), ValueError,
     "svc_mia: unknown features"),
    ("svc_mia", "labels beyond logits", lambda: F.svc_mia(_lin(), _xy4(), (_xy4()[0], _ip(*range(8))), _xy4()),
     ValueError, r"svc_mia: forget labels must be in \[0, 3\)"),
    # ---------------- data and models
    ("load_dataset", "unknown name", lambda: F.load_dataset("imagenet-22k"), ValueError, "load_dataset: "),
    ("make_split", "train not ImageData", lambda: F.make_split(_x(), _x()), TypeError, "make_split: "),
    ("MemmapImages", "missing file", lambda: F.MemmapImages("/nonexistent/fastblend/x.npy"), FileNotFoundError,
     "MemmapImages: no such file"),
    ("MemmapImages", "labels too short", lambda: _memmap(_x(4).numpy(), labels=[0, 1]), ValueError,
     r"MemmapImages: labels must have one entry per image \(4\)"),
    ("MemmapImages", "3-D array", lambda: _memmap(_x(4).numpy()[:, 0], labels=[0, 1, 2, 3]), ValueError,
     r"MemmapImages: images must be \[N, C, H, W\]"),
    ("MemmapImages", "float labels", lambda: _memmap(_x(2).numpy(), labels=[0.0, 1.0]), TypeError,
     "MemmapImages: labels must be a 1-D integer array"),
    ("MemmapImages", "float images to uint8", lambda: _memmap_write(_x(2), _ip(0, 1), dtype="uint8"), TypeError,
     "MemmapImages.write: floating images are not quantised"),
    ("random_convnet", "in_channels 0", lambda: F.random_convnet(0, 8, 0), ValueError,
     "random_convnet: in_channels must be an int >= 1"),
    ("random_convnet", "float image_size", lambda: F.random_convnet(1, 8.0, 0), ValueError,
     "random_convnet: image_size must be an int >= 1"),
    ("random_convnet", "width 0", lambda: F.random_convnet(1, 8, 0, width=0), ValueError,
     "random_convnet: width must be an int >= 1"),
]


def _nan_weights(module):
    if isinstance(module, nn.Linear):
        with torch.no_grad():
            module.weight.fill_(NAN)


def _memmap(array, **kwargs):
    import tempfile
    from pathlib import Path

    import numpy as np

    with tempfile.TemporaryDirectory() as d:
        np.save(Path(d) / "x.npy", array)
        return fastblend.MemmapImages(Path(d) / "x.npy", **kwargs)


def _memmap_write(images, labels, **kwargs):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        return fastblend.MemmapImages.write(Path(d) / "x.npy", images, labels, **kwargs)


def _save_load_lean_reduced(source):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "r.pt"
        fields = _reduced_fields(images=None, blends=torch.zeros(0, 1, 2, 2), source=torch.zeros(3, 1, 2, 2))
        fastblend.ReducedRetainSet(**fields).save(path, with_residual=False)
        return fastblend.ReducedRetainSet.load(path, source=source)


def _save_load_reduced(**over):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "r.pt"
        torch.save(_reduced_fields(**over), path)
        return fastblend.ReducedRetainSet.load(path)


def test_every_public_name_has_rows():
    covered = {row[0] for row in ROWS}
    missing = sorted(set(fastblend.__all__) - covered - set(NO_INPUT) - set(PENDING))
    assert not missing, f"public names without bad-input rows in tests/test_contract.py: {missing}"
    stale = sorted((set(NO_INPUT) | set(PENDING) | covered) - set(fastblend.__all__))
    assert not stale, f"rows or exemptions for names not in fastblend.__all__: {stale}"
    assert not (set(PENDING) & covered), "a PENDING name has rows now: take it out of PENDING"


@pytest.mark.parametrize("name, case, thunk, exc, match", ROWS, ids=[f"{r[0]}-{r[1]}" for r in ROWS])
def test_bad_input_raises_naming_the_argument(name, case, thunk, exc, match):
    with pytest.raises(exc, match=match):
        thunk()
