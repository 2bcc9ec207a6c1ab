"""The bad-input contract of the public API: for every name in ``fastblend.__all__``, a table of bad
inputs and the exception each must raise, whose message names the function and the argument.

Adding a public name? Add rows to ``ROWS`` (at least one; the suite fails otherwise). A name whose
rows are not written yet may sit in ``PENDING`` with a comment saying who adds them; a name that
takes no input to check sits in ``NO_INPUT`` with the reason. Each row is
``(name, case id, thunk, exception type, regex the message must match)``; keep inputs tiny.
"""

from __future__ import annotations

import math
from pathlib import Path

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
# public names outside fastblend.__all__ that the contract covers too, as "module.name" (None: the module's
# whole __all__)
SUBMODULES: dict[str, list[str] | None] = {"tracking": ["Band", "Tracker"], "distributed": None,
                                           "methods": ["planned_steps"], "prefix": ["split_model", "prefix_features"]}
NO_INPUT.update({
    "distributed.is_distributed": "takes no arguments",
    "distributed.rank": "takes no arguments",
    "distributed.world_size": "takes no arguments",
    "distributed.is_main_process": "takes no arguments",
    "distributed.barrier": "takes no arguments",
    "distributed.all_gather_objects": "takes any picklable object",
})
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
     ValueError, "prepare_unlearning: batch_size must be None or an int >= 1"),
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
    ("AAMULoss", "odds_weight < 0", lambda: F.AAMULoss(odds_weight=-1.0), ValueError,
     "AAMULoss: odds_weight must be a finite number >= 0"),
    ("AAMUStep", "odds_weight nan", lambda: F.AAMUStep(_lin(), _xy4(), _xy4(), odds_weight=NAN), ValueError,
     "AAMUStep: odds_weight must be a finite number >= 0"),
    ("AAMUStep", "odds_pairing unknown", lambda: F.AAMUStep(_lin(), _xy4(), _xy4(), odds_pairing="sorted"),
     ValueError, r"AAMUStep: odds_pairing must be one of \('quantile', 'image'\)"),
    ("AAMUStep", "odds_pairing image without targets", lambda: F.AAMUStep(_lin(), _xy4(), _xy4(),
                                                                          odds_pairing="image"),
     ValueError, "AAMUStep: odds_pairing='image' needs forget_odds_target"),
    ("prefix.split_model", "not a module", lambda: _prefix().split_model("net"), TypeError,
     "split_model: model must be a torch.nn.Module, got str"),
    ("prefix.split_model", "cut not a string", lambda: _prefix().split_model(_conv(), 3), TypeError,
     "split_model: config.frozen_prefix must be 'auto' or a module name"),
    ("prefix.split_model", "no such module", lambda: _prefix().split_model(_conv(), "nope"), ValueError,
     "split_model: config.frozen_prefix='nope' is not a module of Sequential"),
    ("prefix.split_model", "no cut for auto", lambda: _prefix().split_model(_lin(), "auto"), ValueError,
     "split_model: config.frozen_prefix='auto' found no point"),
    ("prefix.prefix_features", "not a module", lambda: _prefix().prefix_features("p", torch.zeros(2, 1, 4, 4)),
     TypeError, "prefix_features: prefix must be a torch.nn.Module"),
    ("prefix.prefix_features", "images not a tensor", lambda: _prefix().prefix_features(_conv(), [[0.0]]), TypeError,
     "prefix_features: images must be a torch.Tensor, got list"),
    ("prefix.prefix_features", "empty images", lambda: _prefix().prefix_features(_conv(), torch.zeros(0, 1, 4, 4)),
     ValueError, "prefix_features: images is empty"),
    ("prefix.prefix_features", "wrong shape", lambda: _prefix().prefix_features(_conv(), torch.zeros(2, 3, 4, 4)),
     ValueError, r"prefix_features: the prefix cannot read images of shape \[2, 3, 4, 4\]"),
    ("prefix.prefix_features", "bad batch size", lambda: _prefix().prefix_features(_conv(), torch.zeros(2, 1, 4, 4), 0),
     ValueError, "prefix_features: batch_size must be an int >= 1, got 0"),
    ("matched_recipe", "a method it was not measured on", lambda: F.matched_recipe("a_bad_teacher"), ValueError,
     "matched_recipe: method must be one of"),
    ("matched_recipe", "not a string", lambda: F.matched_recipe(3), ValueError,
     "matched_recipe: method must be one of"),
    ("unlearn", "request matched for a method without the recipe",
     lambda: F.unlearn("a_prune", _lin(), _xy4(), _xy4(), _xy4(), config=dict(request="matched")), ValueError,
     "unlearn: config.request='matched': method 'a_prune' has no difficulty-matched recipe"),
    ("unlearn", "request matched with another target",
     lambda: F.unlearn("a_finetune", _lin(), _xy4(), _xy4(), _xy4(), config=dict(request="matched", target="unseen")),
     ValueError, "unlearn: config.request='matched' runs the fixed matched target"),
    ("unlearn", "request unknown",
     lambda: F.unlearn("a_finetune", _lin(), _xy4(), _xy4(), _xy4(), config=dict(request="paper")), ValueError,
     r"unlearn: config.request must be one of \('auto', 'sample', 'matched', 'class'\)"),
    ("methods.planned_steps", "matched_ok not a bool",
     lambda: F.methods.planned_steps("a_finetune", None, 64, matched_ok="no"), TypeError,
     "planned_steps: matched_ok must be a bool"),
    ("unlearn", "odds_pairing image on the paper's target",
     lambda: F.unlearn("a_finetune", _lin(), _xy4(), _xy4(), _xy4(),
                       config=dict(odds_pairing="image", request="sample")), ValueError,
     "unlearn: config.odds_pairing='image' .* needs config.target='matched_fixed'"),
    ("AAMUStep", "anchor_weight without anchor", lambda: F.AAMUStep(_lin(), _xy4(), _xy4(), anchor_weight=1.0),
     TypeError, r"AAMUStep: anchor_weight > 0 needs anchor=\(images, logits\)"),
    ("AAMUStep", "anchor_weight inf", lambda: F.AAMUStep(_lin(), _xy4(), _xy4(), anchor_weight=INF), ValueError,
     "AAMUStep: anchor_weight must be a finite number >= 0"),
    ("AAMUStep", "unseen_logits a list", lambda: F.AAMUStep(_lin(), _xy4(), _xy4(), unseen_logits=[[0.0, 1.0]] * 4),
     TypeError, "AAMUStep: unseen_logits must be a floating"),
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
    ("AAMUStep", "float forget labels", lambda: F.AAMUStep(_lin(), (_xy4()[0], _xy4()[1].float()), _xy4()),
     TypeError, "AAMUStep: forget labels must be a 1-D integer tensor"),
    ("AAMUStep", "model not a module", lambda: F.AAMUStep("net", _xy4(), _xy4()), TypeError,
     "AAMUStep: model must be a torch.nn.Module"),
    ("AAMUStep", "int images", lambda: F.AAMUStep(_lin(), (_xy4()[0].long(), _xy4()[1]), _xy4()), TypeError,
     "AAMUStep: forget images must be a floating-point tensor"),
    ("AAMUStep", "sigma 0", lambda: F.AAMUStep(_lin(), _xy4(), _xy4(), sigma=0.0), ValueError,
     "AAMUStep: sigma must be"),
    ("AAMUStep", "batch_size 0", lambda: F.AAMUStep(_lin(), _xy4(), _xy4(), batch_size=0), ValueError,
     "AAMUStep: batch_size must be"),
    # ---------------- methods
    ("unlearn", "unknown method", lambda: F.unlearn("forget-it", _lin(), _xy4(), _xy4()), ValueError, "unlearn: "),
    ("unlearn", "forget loader dropping its only batch",
     lambda: F.unlearn("finetune", _lin(), _xy4(), torch.utils.data.DataLoader(
         torch.utils.data.TensorDataset(*_xy4(6)), batch_size=8, drop_last=True)), ValueError,
     r"unlearn: forget is empty: its DataLoader drops its last partial batch \(drop_last=True\) and its batch size "
     "8 is larger than its 6 rows"),
    ("unlearn", "lr inf", lambda: F.unlearn("finetune", _lin(), _xy4(), _xy4(), config=dict(lr=INF)), ValueError,
     "unlearn: config.lr must be a finite number"),
    ("unlearn", "neggrad ascent unknown", lambda: F.unlearn("neggrad_plus", _lin(), _xy4(), _xy4(),
                                                           config=dict(ascent="bounded")), ValueError,
     "unlearn: config.ascent must be one of"),
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


# --------------------------------------------------------------------------------------------
# issue 24: the index, the drop-in, memory maps, Tracker/Band and the distributed helpers under hostile
# input: wrong types, shapes, dtypes, devices, empty inputs, loaders, corrupted and truncated files
# --------------------------------------------------------------------------------------------
_TMP = None


def _tmp() -> Path:
    """A new folder inside one temporary folder removed when the test process ends."""
    import tempfile

    global _TMP
    if _TMP is None:
        _TMP = tempfile.TemporaryDirectory(prefix="fastblend-contract-")
    return Path(tempfile.mkdtemp(dir=_TMP.name))


def _saved_index(alter=None) -> Path:
    """A saved index, optionally altered by ``alter(path, index)``."""
    index = _index()
    path = _tmp() / "train.index"
    index.save(path)
    if alter is not None:
        alter(path, index)
    return path


def _truncate(path: Path, *_):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_blends(path: Path, index):
    raw = bytearray(path.read_bytes())
    at = bytes(raw).find(index.blends.numpy().tobytes())
    raw[at + 9] ^= 0x21
    path.write_bytes(bytes(raw))


def _saved_reduced(alter) -> Path:
    reduced = _index().reduce([0])
    path = _tmp() / "r.pt"
    reduced.save(path)
    raw = bytearray(path.read_bytes())
    if alter == "flip":
        at = bytes(raw).find(reduced.images.numpy().tobytes())
        raw[at + 5] ^= 0x10
    else:
        raw = raw[: len(raw) // 3]
    path.write_bytes(bytes(raw))
    return path


def _mm_file(name: str, array) -> Path:
    import numpy as np

    path = _tmp() / name
    np.save(path, array)
    return path


def _mm4():
    return F.MemmapImages.write(_tmp() / "x.npy", torch.zeros(4, 1, 2, 2, dtype=torch.uint8), _ip(0, 1, 2, 3))


def _truncated_npy() -> Path:
    path = _mm4().path
    _truncate(path)
    return path


def _raw_file(size: int) -> Path:
    path = _tmp() / "x.raw"
    path.write_bytes(b"\0" * size)
    return path


def _tensor_set(n=12):
    return torch.utils.data.TensorDataset(_x(n), _y(n))


def _pu(retain=None, forget=None, unseen=None, **kw):
    retain = (_x(12), _y(12)) if retain is None else retain
    forget = (_x(2) + 100.0, _y(2)) if forget is None else forget  # not bit-equal to any retain row
    unseen = (_x(12), _y(12)) if unseen is None else unseen
    return F.prepare_unlearning(_net(), retain, forget, unseen, **{"ipc": 2, "iterations": 1, **kw})


def _pair(n=8):
    return _x(n), _y(n)


def _nan_at(i, n=12):
    x = _x(n)
    x[i, 0, 1, 1] = NAN
    return x


D = fastblend.distributed
T = fastblend.tracking
DL = torch.utils.data.DataLoader
ROWS += [
    # ---------------- the auto stop
    ("AutoStop", "recover: a model that is not a Module",
     lambda: F.AutoStop(_xy4(), _xy4(9), kind="sample").recover("model"), TypeError,
     "AutoStop.recover: model must be a torch.nn.Module"),
    ("AutoStop", "recover: why not a str", lambda: F.AutoStop(_xy4(), _xy4(9), kind="sample").recover(_lin(), 3),
     TypeError, "AutoStop.recover: why must be a str"),
    ("AutoStop", "unknown kind", lambda: F.AutoStop(_xy4(), _xy4(9), kind="whole"), ValueError,
     "AutoStop: kind must be one of"),
    ("AutoStop", "auto kind without retain labels", lambda: F.AutoStop(_xy4(), _xy4(9)), ValueError,
     "AutoStop: kind='auto' needs retain_labels"),
    ("AutoStop", "held-out lacks a forget class", lambda: F.AutoStop(_xy4(), (_xy4(9)[0][:2], _xy4(9)[1][:2]),
                                                                     kind="sample"),
     ValueError, r"AutoStop: heldout has no images of the forget classes \[2\]"),
    ("AutoStop", "float retain labels", lambda: F.AutoStop(_xy4(), _xy4(9), _xy4()[1].float()), TypeError,
     "AutoStop: retain_labels must be a 1-D integer tensor"),
    ("AutoStop", "negative slack", lambda: F.AutoStop(_xy4(), _xy4(9), kind="sample", slack=-1), ValueError,
     "AutoStop: slack must be a finite number >= 0"),
    ("AutoStop", "bool patience", lambda: F.AutoStop(_xy4(), _xy4(9), kind="sample", patience=True), ValueError,
     "AutoStop: patience must be an int >= 1"),
    ("AutoStop", "string staged", lambda: F.AutoStop(_xy4(), _xy4(9), kind="sample", staged="yes"), TypeError,
     "AutoStop: staged must be a bool"),
    ("AutoStop", "start: heldout_logits of the wrong rows",
     lambda: F.AutoStop(_xy4(), _xy4(9), kind="sample").start(nn.Linear(4, 3), heldout_logits=torch.zeros(5, 3)),
     ValueError, r"AutoStop.start: heldout_logits must be a floating \[N, C\] tensor .* \(9\), got "
                 r"torch.float32 of shape \[5, 3\]"),
    ("AutoStop", "start: integer heldout_logits",
     lambda: F.AutoStop(_xy4(), _xy4(9), kind="sample").start(nn.Linear(4, 3),
                                                             heldout_logits=torch.zeros(9, 3, dtype=torch.long)),
     ValueError, "AutoStop.start: heldout_logits must be a floating"),
    ("AutoStop", "start: empty-width heldout_logits",
     lambda: F.AutoStop(_xy4(), _xy4(9), kind="sample").start(nn.Linear(4, 3), heldout_logits=torch.zeros(9, 0)),
     ValueError, r"AutoStop.start: heldout_logits must be a floating \[N, C\] tensor \(C >= 1\)"),
    ("AutoStop", "start: NaN heldout_logits",
     lambda: F.AutoStop(_xy4(), _xy4(9), kind="sample").start(nn.Linear(4, 3),
                                                             heldout_logits=torch.full((9, 3), NAN)),
     ValueError, "AutoStop.start: heldout_logits must be finite"),
    ("AutoStop", "check: string step",
     lambda: F.AutoStop(_xy4(), _xy4(9), kind="sample").check(nn.Linear(4, 3), "3"), TypeError,
     "AutoStop: step must be an int"),
    ("AutoStop", "check: string full_below",
     lambda: F.AutoStop(_xy4(), _xy4(9), kind="sample").check(nn.Linear(4, 3), 1, 0.0, full_below="x"), TypeError,
     "AutoStop: full_below must be None or a number"),
    ("AutoStop", "check: NaN full_below",
     lambda: F.AutoStop(_xy4(), _xy4(9), kind="sample").check(nn.Linear(4, 3), 1, 0.0, full_below=NAN), ValueError,
     "AutoStop: full_below must be None or a number"),
    ("AutoStop", "held-out a list", lambda: F.AutoStop(_xy4(), [1, 2, 3], kind="sample"), TypeError,
     r"AutoStop: heldout must be an \(images, labels\) pair"),
    ("AutoStop", "model not a module", lambda: F.AutoStop(_xy4(), _xy4(9), kind="sample").start("net"), TypeError,
     "AutoStop.start: model must be a torch.nn.Module"),
    ("AutoStop", "matched_heldout lacks the forget classes",
     lambda: F.AutoStop(_xy4(), _xy4(9), kind="sample", matched_heldout=(_xy4()[0], _xy4()[1] * 0 + 5)),
     ValueError, "AutoStop: matched_heldout has no images of the forget classes"),
    # ---------------- the difficulty-matched target
    ("matched_unseen", "model not a module", lambda: F.matched_unseen("net", _xy4(), _xy4(), _xy4(9)), TypeError,
     "matched_unseen: model must be a torch.nn.Module"),
    ("matched_unseen", "no unseen image of a forget class",
     lambda: F.matched_unseen(torch.nn.Linear(4, 6), _xy4(), _xy4(), (_xy4()[0], _xy4()[1] * 0 + 5)), ValueError,
     "matched_unseen: unseen holds no image of any forget class"),
    ("matched_unseen", "labels beyond the model's width",
     lambda: F.matched_unseen(torch.nn.Linear(4, 2), _xy4(), _xy4(), _xy4(9)), ValueError,
     r"matched_unseen: reference labels must be in \[0, 2\)"),
    ("matched_unseen", "bool max_reference",
     lambda: F.matched_unseen(torch.nn.Linear(4, 3), _xy4(), _xy4(), _xy4(9), max_reference=True), ValueError,
     "matched_unseen: max_reference must be an int >= 1 or None"),
    ("matched_unseen", "a list for forget", lambda: F.matched_unseen(torch.nn.Linear(4, 3), _xy4(), [1, 2], _xy4(9)),
     TypeError, "matched_unseen: forget: images and labels must be tensors"),
]
ROWS += [
    # ---------------- BlendIndex: build
    ("BlendIndex", "3-D images", lambda: F.BlendIndex.build(_x(12)[:, 0], _y(12), ipc=2), ValueError,
     r"BlendIndex.build: images must have shape \[N, C, H, W\]"),
    ("BlendIndex", "no images", lambda: F.BlendIndex.build(_x(0), _y(0), ipc=2), ValueError,
     "BlendIndex.build: images must hold at least one image"),
    ("BlendIndex", "empty Dataset", lambda: F.BlendIndex.build(torch.utils.data.TensorDataset(_x(0), _y(0)), ipc=2),
     ValueError, "BlendIndex.build: data is empty"),
    ("BlendIndex", "labels too short", lambda: F.BlendIndex.build(_x(12), _y(10), ipc=2), ValueError,
     "BlendIndex.build: images and labels must have the same length"),
    ("BlendIndex", "shuffling loader", lambda: F.BlendIndex.build(DL(_tensor_set(), batch_size=4, shuffle=True), ipc=2),
     ValueError, "BlendIndex.build: the DataLoader reads its dataset through"),
    ("BlendIndex", "clustering of other data",
     lambda: F.BlendIndex.build(_x(12), _y(12), clustering=fastblend.group(torch.randn(10, 3), _y(10), ipc=2)),
     ValueError, "BlendIndex.build: clustering covers 10 samples but there are 12 images"),
    ("BlendIndex", "NaN pixel with a clustering",
     lambda: F.BlendIndex.build(_nan_at(4), _y(12), clustering=fastblend.group(torch.randn(12, 3), _y(12), ipc=2)),
     ValueError, "BlendIndex.build: images must be finite; row 4"),
    ("BlendIndex", "device string", lambda: F.BlendIndex.build(_x(12), _y(12), ipc=2, device="gpu0"), ValueError,
     "BlendIndex.build: device 'gpu0' is not a device"),
    ("BlendIndex", "meta images", lambda: F.BlendIndex.build(_x(12).to("meta"), _y(12), ipc=2), ValueError,
     "BlendIndex.build: images must hold data, got a meta tensor"),
    # ---------------- BlendIndex: reduce
    ("BlendIndex", "float forget", lambda: _index().reduce([0.5]), TypeError,
     "BlendIndex.reduce: forget indices must be integers"),
    ("BlendIndex", "mask of another length", lambda: _index().reduce(torch.zeros(5, dtype=torch.bool)), ValueError,
     r"BlendIndex.reduce: a boolean forget mask must have shape \[12\]"),
    ("BlendIndex", "forget everything", lambda: _index().reduce(torch.ones(12, dtype=torch.bool)), ValueError,
     "BlendIndex.reduce: forget covers all 12 images"),
    ("BlendIndex", "forget a string", lambda: _index().reduce("0"), TypeError,
     "BlendIndex.reduce: forget must be indices or a boolean mask"),
    # ---------------- BlendIndex: files
    ("BlendIndex", "truncated file", lambda: F.BlendIndex.load(_saved_index(_truncate)), ValueError,
     "BlendIndex.load: cannot read .*train.index"),
    ("BlendIndex", "flipped bytes", lambda: F.BlendIndex.load(_saved_index(_flip_blends)), ValueError,
     "BlendIndex.load: .*train.index is corrupt: its content checksum"),
    ("BlendIndex", "foreign file", lambda: F.BlendIndex.load(_saved_reduced("flip")), ValueError,
     "BlendIndex.load: .*r.pt is not a saved fastblend BlendIndex"),
    ("BlendIndex", "other images as source", lambda: F.BlendIndex.load(_saved_index(), source=_x(12) + 1), ValueError,
     "BlendIndex.load: .*train.index: source does not match"),
    ("BlendIndex", "save into a missing folder", lambda: _index().save(_tmp() / "no" / "i.pt"), FileNotFoundError,
     "BlendIndex.save: cannot write .*no such folder"),
    # ---------------- ReducedRetainSet files
    ("ReducedRetainSet", "flipped bytes", lambda: F.ReducedRetainSet.load(_saved_reduced("flip")), ValueError,
     "ReducedRetainSet.load: .*r.pt is corrupt: its content checksum"),
    ("ReducedRetainSet", "truncated file", lambda: F.ReducedRetainSet.load(_saved_reduced("truncate")), ValueError,
     "ReducedRetainSet.load: cannot read .*r.pt"),
    # ---------------- the drop-in
    ("prepare_unlearning", "request unknown", lambda: _pu(request="paper"), ValueError,
     r"prepare_unlearning: request must be one of \('auto', 'sample', 'matched', 'class'\)"),
    ("prepare_unlearning", "request matched with another target", lambda: _pu(request="matched", target="unseen"),
     ValueError, "prepare_unlearning: request='matched' runs the fixed matched target"),
    ("prepare_unlearning", "index not an index", lambda: _pu(retain=None, index="idx", ipc=None, iterations=None),
     TypeError, "prepare_unlearning: index must be a fastblend.BlendIndex or None"),
    ("prepare_unlearning", "empty forget", lambda: _pu(forget=(_x(0), _y(0))), ValueError,
     "prepare_unlearning: forget is empty"),
    ("prepare_unlearning", "empty unseen", lambda: _pu(unseen=(_x(0), _y(0))), ValueError,
     "prepare_unlearning: unseen is empty"),
    ("prepare_unlearning", "forget of another shape", lambda: _pu(forget=(_x(2, s=4), _y(2))), ValueError,
     r"prepare_unlearning: retain images are \[1, 8, 8\] but forget images \[1, 4, 4\]"),
    ("prepare_unlearning", "unseen of another shape", lambda: _pu(unseen=(_x(12, s=4), _y(12))), ValueError,
     r"prepare_unlearning: unseen images are \[1, 4, 4\] but forget images \[1, 8, 8\]"),
    ("prepare_unlearning", "forget index beyond the index",
     lambda: _pu(retain=None, forget=[100], index=_index(), ipc=None, iterations=None), ValueError,
     r"prepare_unlearning: forget indices must be in \[0, 12\)"),
    ("prepare_unlearning", "forget images not in the index",
     lambda: _pu(retain=None, forget=(_x(2) + 5, _y(2)), index=_index(), ipc=None, iterations=None), ValueError,
     "prepare_unlearning: 2 of the 2 forget rows are not in the index"),
    ("prepare_unlearning", "ipc other than the index's",
     lambda: _pu(retain=None, forget=[0], index=_index(), ipc=3, iterations=None), ValueError,
     "prepare_unlearning: ipc=3 conflicts with the index passed"),
    ("prepare_unlearning", "negative lam", lambda: _pu(lam=-1.0), ValueError,
     "prepare_unlearning: lam must be a finite number >= 0"),
    ("prepare_unlearning", "unknown steepen", lambda: _pu(steepen="cube"), ValueError,
     "prepare_unlearning: steepen must be one of"),
    ("prepare_unlearning", "zero forget_batch_factor", lambda: _pu(forget_batch_factor=0), ValueError,
     "prepare_unlearning: forget_batch_factor must be an int >= 1"),
    ("prepare_unlearning", "device string", lambda: _pu(device="gpu0"), ValueError,
     "prepare_unlearning: device 'gpu0' is not a device"),
    ("prepare_unlearning", "meta retain", lambda: _pu(retain=(_x(12).to("meta"), _y(12).to("meta"))), ValueError,
     "prepare_unlearning: .*meta tensor"),
    # ---------------- MemmapImages
    ("MemmapImages", "float indices", lambda: _mm4().take([0.5]), TypeError,
     "MemmapImages.take: indices must be integers"),
    ("MemmapImages", "bool indices", lambda: _mm4().take(torch.tensor([True])), TypeError,
     "MemmapImages.take: indices must be integers"),
    ("MemmapImages", "index beyond the end", lambda: _mm4().take([4]), IndexError,
     r"MemmapImages.take: indices must be in \[-4, 4\)"),
    ("MemmapImages", "float row", lambda: _mm4()[0.5], TypeError, "MemmapImages: index must be an int"),
    ("MemmapImages", "row beyond the end", lambda: _mm4()[4], IndexError, "MemmapImages: index 4 out of range"),
    ("MemmapImages", "truncated .npy", lambda: F.MemmapImages(_truncated_npy(), labels=[0, 1, 2, 3]), ValueError,
     "MemmapImages: cannot map .*x.npy"),
    ("MemmapImages", "raw file too small", lambda: F.MemmapImages(_raw_file(10), labels=[0], shape=(1, 1, 4, 4)),
     ValueError, r"MemmapImages: .*x.raw has 10 bytes, shape \(1, 1, 4, 4\)"),
    ("MemmapImages", "int32 images", lambda: F.MemmapImages(_mm_file("i.npy", _x(2).int().numpy()), labels=[0, 1]),
     TypeError, "MemmapImages: images must be stored as uint8, float16, float32 or float64"),
    ("MemmapImages", "no images", lambda: F.MemmapImages(_mm_file("e.npy", _x(0).numpy()), labels=[]), ValueError,
     "MemmapImages: .*holds no images"),
    ("MemmapImages", "divide_by 0", lambda: F.MemmapImages(_mm4().path, divide_by=0), ValueError,
     "MemmapImages: divide_by must be a number > 0"),
    ("MemmapImages", "std 0", lambda: F.MemmapImages(_mm4().path, std=0.0), ValueError,
     "MemmapImages: std must be > 0"),
    ("MemmapImages", "negative label", lambda: F.MemmapImages(_mm4().path, labels=[0, -1, 2, 3]), ValueError,
     "MemmapImages: labels must be >= 0"),
    ("MemmapImages", "write no images", lambda: _memmap_write(torch.zeros(0, 1, 2, 2, dtype=torch.uint8), _ip()),
     ValueError, r"MemmapImages.write: images must be a non-empty \[N, C, H, W\]"),
    ("MemmapImages", "write a list", lambda: _memmap_write([[1]], _ip(0)), TypeError,
     "MemmapImages.write: images must be a tensor or a numpy array"),
    ("MemmapImages", "write chunk_size 0",
     lambda: _memmap_write(torch.zeros(2, 1, 2, 2, dtype=torch.uint8), _ip(0, 1), chunk_size=0), ValueError,
     "MemmapImages.write: chunk_size must be an int >= 1"),
    ("MemmapImages", "write into a missing folder",
     lambda: F.MemmapImages.write(_tmp() / "no" / "x.npy", torch.zeros(2, 1, 2, 2, dtype=torch.uint8), [0, 1]),
     FileNotFoundError, "MemmapImages.write: no such folder"),
    # ---------------- Tracker and Band
    ("tracking.Band", "negative", lambda: T.Band(-1), ValueError, "Band: forget_acc must be a number >= 0"),
    ("tracking.Band", "string", lambda: T.Band(test_acc="2"), ValueError, "Band: test_acc must be a number >= 0"),
    ("tracking.Band", "NaN", lambda: T.Band(mia=NAN), ValueError, "Band: mia must be a number >= 0"),
    ("tracking.Band", "bool", lambda: T.Band(True), ValueError, "Band: forget_acc must be a number >= 0"),
    ("tracking.Tracker", "max_samples 2", lambda: T.Tracker(_pair(), _pair(), max_samples=2), ValueError,
     "Tracker: max_samples must be None or an int >= 5"),
    ("tracking.Tracker", "mia_samples 2", lambda: T.Tracker(_pair(), _pair(), mia_samples=2), ValueError,
     "Tracker: mia_samples must be None or an int >= 5"),
    ("tracking.Tracker", "mia_samples a string", lambda: T.Tracker(_pair(), _pair(), mia_samples="all"), ValueError,
     "Tracker: mia_samples must be None or an int >= 5"),
    ("tracking.Tracker", "negative offset", lambda: T.Tracker(_pair(), _pair(), offset=-1.0), ValueError,
     "Tracker: offset must be a finite number of seconds >= 0"),
    ("tracking.Tracker", "budget 0", lambda: T.Tracker(_pair(), _pair(), budget=0), ValueError,
     "Tracker: budget must be None or a positive number of seconds"),
    ("tracking.Tracker", "forget a string", lambda: T.Tracker("f", _pair()), TypeError,
     "Tracker: forget must be an \\(images, labels\\) pair"),
    ("tracking.Tracker", "empty forget", lambda: T.Tracker((_x(0), _y(0)), _pair()), ValueError,
     "Tracker: forget must hold at least 5 samples, got 0"),
    ("tracking.Tracker", "float labels", lambda: T.Tracker((_x(8), _y(8).float()), _pair()), TypeError,
     "Tracker: forget labels must be a 1-D integer tensor"),
    ("tracking.Tracker", "labels too short", lambda: T.Tracker((_x(8), _y(6)), _pair()), ValueError,
     "Tracker: forget has 8 images but 6 labels"),
    ("tracking.Tracker", "meta tensors", lambda: T.Tracker((_x(8).to("meta"), _y(8).to("meta")), _pair()), ValueError,
     "Tracker: forget images and labels must hold data"),
    ("tracking.Tracker", "seed a string", lambda: T.Tracker(_pair(), _pair(), seed="a"), TypeError,
     "Tracker: seed must be an int"),
    ("tracking.Tracker", "called with no model", lambda: T.Tracker(_pair(), _pair())("model", 0, 0.0), TypeError,
     "Tracker: model must be a torch.nn.Module"),
    # ---------------- the distributed helpers (no process group needed to refuse)
    ("distributed.balanced_shards", "parts 0", lambda: D.balanced_shards([1, 2], 0), ValueError,
     "balanced_shards: parts must be an int >= 1"),
    ("distributed.balanced_shards", "negative weight", lambda: D.balanced_shards([1, -2], 2), ValueError,
     "balanced_shards: weights must be non-negative"),
    ("distributed.balanced_shards", "float weights", lambda: D.balanced_shards(torch.tensor([1.5, 2.0]), 2), TypeError,
     "balanced_shards: weights must be a 1-D integer tensor"),
    ("distributed.balanced_shards", "string weights", lambda: D.balanced_shards("ab", 2), TypeError,
     "balanced_shards: weights must be a sequence of ints"),
    ("distributed.row_shard", "negative n", lambda: D.row_shard(-1), ValueError, "row_shard: n must be an int >= 0"),
    ("distributed.row_shard", "string n", lambda: D.row_shard("3"), ValueError, "row_shard: n must be an int >= 0"),
    ("distributed.all_gather_rows", "not a tensor", lambda: D.all_gather_rows("x"), TypeError,
     "all_gather_rows: x must be a torch.Tensor"),
    ("distributed.all_gather_rows", "0-d tensor", lambda: D.all_gather_rows(torch.tensor(1.0)), ValueError,
     "all_gather_rows: x must have a row dimension"),
    ("distributed.all_gather_rows_with_grad", "a list", lambda: D.all_gather_rows_with_grad([1]), TypeError,
     "all_gather_rows_with_grad: x must be a torch.Tensor"),
    ("distributed.broadcast_object", "src -1", lambda: D.broadcast_object(1, src=-1), ValueError,
     r"broadcast_object: src must be a rank in \[0, 1\)"),
    # ---------------- condense and unlearn: devices, meta tensors, non-finite pixels
    ("condense", "device string", lambda: F.condense(_x(12), _y(12), [0], ipc=2, device="gpu0"), ValueError,
     "condense: device 'gpu0' is not a device"),
    ("condense", "meta labels", lambda: F.condense(_x(12), _y(12).to("meta"), [0], ipc=2), ValueError,
     "condense: labels must hold data"),
    ("condense", "inf pixel with a clustering",
     lambda: F.condense(_nan_at(7) * -1, _y(12), [0], clustering=fastblend.group(torch.randn(12, 3), _y(12), ipc=2)),
     ValueError, "condense: images must be finite; row 7"),
    ("unlearn", "device string", lambda: F.unlearn("finetune", _net(), _pair(12), _pair(2), device="cuda:x"),
     ValueError, "unlearn: device 'cuda:x' is not a device"),
    # a CUDA device torch cannot see: said up front, not torch's "Found no NVIDIA driver" from deep inside
    ("unlearn", "a CUDA ordinal beyond the devices",
     lambda: F.unlearn("finetune", _net(), _pair(12), _pair(2), device="cuda:99"),
     ValueError, "unlearn: device 'cuda:99' but torch sees"),
    ("prepare_unlearning", "a CUDA ordinal beyond the devices", lambda: _pu(device="cuda:99"), ValueError,
     "prepare_unlearning: device 'cuda:99' but torch sees"),
    # labels beyond the model's 3 classes: torch's IndexError at the first criterion call, or "missing classes"
    ("prepare_unlearning", "retain label beyond the model's classes", lambda: _pu(retain=(_x(12), _y(12, 4))),
     ValueError, r"prepare_unlearning: retain labels must be in \[0, 3\) \(the model's output width\), got 3"),
    ("prepare_unlearning", "forget label beyond the model's classes",
     lambda: _pu(forget=(_x(2) + 100.0, torch.tensor([0, 3]))), ValueError,
     r"prepare_unlearning: forget labels must be in \[0, 3\)"),
    # NaN/inf pixels in the forget or unseen images: named, with the row (were "forget_loss must be finite" from
    # match_by_rank, "unseen_logits must be finite" from matched_unseen, or the joined index's row number)
    ("prepare_unlearning", "NaN forget pixel", lambda: _pu(forget=(_nan_at(1, 2) + 100.0, _y(2))), ValueError,
     "prepare_unlearning: forget images must be finite; row 1 holds NaN or inf"),
    ("prepare_unlearning", "inf unseen pixel", lambda: _pu(unseen=(_nan_at(7) * -1, _y(12))), ValueError,
     "prepare_unlearning: unseen images must be finite; row 7 holds NaN or inf"),
    ("unlearn", "NaN forget pixel", lambda: F.unlearn("a_finetune", _net(), _pair(12), (_nan_at(1, 4), _y(4)),
                                                      _pair(12)), ValueError,
     "unlearn: forget images must be finite; row 1 holds NaN or inf"),
    ("unlearn", "inf unseen pixel", lambda: F.unlearn("a_finetune", _net(), _pair(12), _pair(4),
                                                      (_nan_at(7) * -1, _y(12))), ValueError,
     "unlearn: unseen images must be finite; row 7 holds NaN or inf"),
    ("prepare_unlearning", "an index's labels beyond the model's classes",
     lambda: F.prepare_unlearning(_net(), _pair(12), torch.tensor([0]),
                                  _pair(12), index=F.BlendIndex.build(_x(12), _y(12, 4), ipc=1, iterations=1)),
     ValueError, r"prepare_unlearning: (forget|retain) labels must be in \[0, 3\) \(the model's output width\)"),
    ("prepare_unlearning", "unseen label beyond the model's classes", lambda: _pu(unseen=(_x(12), _y(12) + 90)),
     ValueError, r"prepare_unlearning: unseen labels must be in \[0, 3\)"),
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


def _public() -> set[str]:
    """``fastblend.__all__`` and, as ``module.name``, the public names of :data:`SUBMODULES`."""
    import importlib

    names = set(fastblend.__all__)
    for module, chosen in SUBMODULES.items():
        mod = importlib.import_module(f"fastblend.{module}")
        names |= {f"{module}.{n}" for n in (chosen or mod.__all__)}
    return names


def _prefix():
    import fastblend.prefix

    return fastblend.prefix


def _conv() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(32, 3))


def test_every_public_name_has_rows():
    covered = {row[0] for row in ROWS}
    public = _public()
    missing = sorted(public - covered - set(NO_INPUT) - set(PENDING))
    assert not missing, f"public names without bad-input rows in tests/test_contract.py: {missing}"
    stale = sorted((set(NO_INPUT) | set(PENDING) | covered) - public)
    assert not stale, f"rows or exemptions for names not in fastblend.__all__: {stale}"
    assert not (set(PENDING) & covered), "a PENDING name has rows now: take it out of PENDING"


@pytest.mark.parametrize("name, case, thunk, exc, match", ROWS, ids=[f"{r[0]}-{r[1]}" for r in ROWS])
def test_bad_input_raises_naming_the_argument(name, case, thunk, exc, match):
    with pytest.raises(exc, match=match):
        thunk()
