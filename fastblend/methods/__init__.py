"""Approximate machine unlearning methods behind one call, :func:`unlearn`.

Base methods (docs/method.md §3): ``retrain``, ``finetune`` (CF), ``neggrad_plus``, ``scrub``, ``l1_sparse``,
``bad_teacher``, ``ssd``, ``distill``, ``prune``. Accelerated methods (docs/method.md §2.4): ``a_finetune``
(A-AMU, the paper's headline), ``a_sparse``, ``a_scrub``, ``a_neggrad_plus``, ``a_bad_teacher``,
``a_prune``; :func:`accelerated` maps a base method to its accelerated name. Each method's config is
a dataclass whose defaults are the paper's hyperparameters (docs/method.md) (:func:`config_class`, :func:`presets`);
an accelerated method's ``config.request`` ("auto") runs a measured recipe in their place where the paper's does not
reach Retrain's band: the whole-class recipe on a class forgotten whole (§7.6), the difficulty-matched one on
scattered samples for a_finetune, a_neggrad_plus, a_sparse and a_scrub (§7.10).
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DistributedSampler, IterableDataset, Subset, TensorDataset

from .._checks import as_device, check_finite_images, plain_number, user_stacklevel
from ..autostop import AutoStop
from ..data_adapter import (
    DataView,
    as_data,
    cast_to_model,
    check_disjoint,
    check_label_range,
    declared_batch_size,
    model_device,
    model_dtype,
    read_forget,
)
from ..datasets import whole_classes
from ..distributed import broadcast_object, is_distributed
from ..metrics import predict_logits, true_class_log_odds
from ..recipe import RECIPE
from ..tracking import StepClock, eval_every_for, final_report
from .aamu_configs import (
    MATCHED_RECIPE,
    ABadTeacherConfig,
    AFinetuneConfig,
    ANegGradPlusConfig,
    APruneConfig,
    AScrubConfig,
    ASparseConfig,
    chose_other_target,
    given_fields,
    head_recipe,
    matched_recipe,
    request_config,
)
from .bad_teacher import BadTeacher, BadTeacherConfig
from .base import (
    Method,
    RunData,
    probe_num_classes,
    timed,
    train,
)
from .config import AAMUFields, TrainConfig, resolve_config
from .context import RunContext
from .distill import Distill, DistillConfig
from .finetune import Finetune, FinetuneConfig
from .neggrad import NegGradPlus, NegGradPlusConfig
from .prune import Prune, PruneConfig
from .retrain import Retrain, RetrainConfig
from .scrub import Scrub, ScrubConfig
from .sparse import L1Sparse, L1SparseConfig
from .ssd import SSDConfig, run_ssd


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its config class, its hooks (``None`` for SSD) and whether it is an
    accelerated (A-AMU) variant, which requires ``unseen`` data."""

    name: str
    config_class: type
    impl: type[Method] | None
    accelerated: bool
    summary: str


METHODS: dict[str, MethodSpec] = {s.name: s for s in (
    MethodSpec("retrain", RetrainConfig, Retrain, False, "fresh model trained on retain only"),
    MethodSpec("finetune", FinetuneConfig, Finetune, False, "cross-entropy fine-tuning on retain (CF)"),
    MethodSpec("neggrad_plus", NegGradPlusConfig, NegGradPlus, False, "CE on retain − β·CE on forget"),
    MethodSpec("scrub", ScrubConfig, Scrub, False, "forget max-steps / retain min-steps against a teacher"),
    MethodSpec("l1_sparse", L1SparseConfig, L1Sparse, False, "CE + decaying α‖θ‖₁"),
    MethodSpec("bad_teacher", BadTeacherConfig, BadTeacher, False, "competent/incompetent teacher KD"),
    MethodSpec("ssd", SSDConfig, None, False, "selective synaptic dampening (one shot)"),
    MethodSpec("distill", DistillConfig, Distill, False, "KD into a fresh student on retain"),
    MethodSpec("prune", PruneConfig, Prune, False, "global L1 pruning to 95% + fine-tune"),
    MethodSpec("a_finetune", AFinetuneConfig, Finetune, True, "A-AMU: steepened CE + λ·MMD² (headline)"),
    MethodSpec("a_sparse", ASparseConfig, L1Sparse, True, "A-AMU + α‖θ‖₁"),
    MethodSpec("a_scrub", AScrubConfig, Scrub, True, "SCRUB with steepened CE + λ·MMD²"),
    MethodSpec("a_neggrad_plus", ANegGradPlusConfig, NegGradPlus, True, "NegGrad+ with steepened CE + λ·MMD²"),
    MethodSpec("a_bad_teacher", ABadTeacherConfig, BadTeacher, True, "Bad Teacher with steepened KL + λ·MMD²"),
    MethodSpec("a_prune", APruneConfig, Prune, True, "prune, then steepened CE + λ·MMD²"),
)}

_ALIASES = {"cf": "finetune", "ft": "finetune", "neggrad+": "neggrad_plus", "neggradplus": "neggrad_plus",
            "l1": "l1_sparse", "sparse": "l1_sparse", "badteacher": "bad_teacher", "aamu": "a_finetune",
            "a_amu": "a_finetune", "a_l1_sparse": "a_sparse", "pruning": "prune", "distillation": "distill"}

_ACCELERATED_OF = {"finetune": "a_finetune", "l1_sparse": "a_sparse", "scrub": "a_scrub",
                   "neggrad_plus": "a_neggrad_plus", "bad_teacher": "a_bad_teacher", "prune": "a_prune"}


def available_methods() -> list[str]:
    """Names of every registered method."""
    return list(METHODS)


def _spec(method: str, fn: str) -> MethodSpec:
    if not isinstance(method, str):
        raise TypeError(f"{fn}: method must be a string, got {type(method).__name__}")
    key = method.strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in METHODS:
        raise ValueError(f"{fn}: unknown method {method!r}; expected one of {available_methods()}")
    return METHODS[key]


def accelerated(method: str) -> str:
    """Name of the accelerated (A-AMU) version of a base method: ``finetune`` -> ``a_finetune``,
    ``l1_sparse`` -> ``a_sparse``, ``scrub`` -> ``a_scrub``, ``neggrad_plus`` -> ``a_neggrad_plus``,
    ``bad_teacher`` -> ``a_bad_teacher``, ``prune`` -> ``a_prune``. ``retrain``, ``distill`` and
    ``ssd`` have none (see :mod:`fastblend.methods.aamu_configs`)."""
    spec = _spec(method, "accelerated")
    if spec.accelerated:
        return spec.name
    if spec.name not in _ACCELERATED_OF:
        raise ValueError(f"accelerated: method {spec.name!r} cannot be accelerated; supported: "
                         f"{sorted(_ACCELERATED_OF)}")
    return _ACCELERATED_OF[spec.name]


def config_class(method: str) -> type:
    """The config dataclass of ``method``; its defaults are the paper's hyperparameters (docs/method.md)."""
    return _spec(method, "config_class").config_class


def planned_steps(method: str, config: object, retain_size: int, whole_class: bool = False,
                  matched_ok: bool = True, model: nn.Module | None = None) -> int:
    """Optimiser steps ``unlearn(method, ..., config=config)`` takes on ``retain_size`` retain rows
    (epochs x batches; extra passes such as SCRUB's forget pass are not counted): what
    :func:`fastblend.tracking.eval_every_for` spreads evaluations over. ``whole_class``: the request forgets
    whole classes, so an accelerated method with ``config.request`` "auto" runs its whole-class recipe (else its
    difficulty-matched recipe where it has one); ``matched_ok=False``: the data do not allow that recipe (a request
    mixing whole and partial classes, unseen data lacking a forget class, retain labels without a labels attribute),
    so "auto" runs the paper's there, as ``unlearn`` decides from the data (``info["request"]``). A recipe that trains
    the head of a frozen prefix (docs/method.md §7.11) has settings of its own there: ``model`` says whether it can be
    cut; without it the cut is taken to apply (it does on fastblend's ConvNet-3 and ResNets). A streamed retain set
    or torch.distributed, where the whole model trains, are not seen here."""
    spec = _spec(method, "planned_steps")
    for name, value in (("whole_class", whole_class), ("matched_ok", matched_ok)):
        if not isinstance(value, bool):
            raise TypeError(f"planned_steps: {name} must be a bool, got {type(value).__name__}")
    cfg = resolve_config(config, spec.config_class, "planned_steps")
    if spec.accelerated:
        request, cfg, _ = request_config(spec.name, cfg, config, whole_class, matched_ok)
        head = head_recipe(spec.name, request, cfg, config) if cfg.frozen_prefix is not None else {}
        if head and model is not None and spec.name not in _NO_PREFIX:
            from ..prefix import split_model

            try:
                split_model(model, cfg.frozen_prefix, "planned_steps")
            except ValueError:
                head = {}
        if head:
            cfg = replace(cfg, **head)
    return _steps_of(cfg, retain_size)


def _steps_of(cfg: Any, rows: int) -> int:
    """Epochs x batches of a resolved config on ``rows`` retain rows."""
    batch = getattr(cfg, "batch_size", rows) or 1
    return getattr(cfg, "epochs", 1) * math.ceil(rows / batch)


PRESET_DATASETS = ("cifar10", "svhn", "cinic10")
PRESET_ARCHS = ("resnet18", "resnet50")
# docs/method.md §2.4: A-AMU's Adam lr is 1e-4 on CINIC-10; every other docs/method.md setting is given for CIFAR-10 /
# ResNet-18 and applies unchanged to the other pairs. A-SCRUB keeps SCRUB's SGD, so it is not listed.
_PRESET_OVERRIDES: dict[tuple[str, str], dict[str, Any]] = {
    (m, "cinic10"): {"lr": RECIPE.cinic10_lr} for m in ("a_finetune", "a_neggrad_plus", "a_bad_teacher", "a_prune")
}


def presets(setting: str, method: str | None = None) -> dict[str, Any]:
    """Hyperparameters of the paper's settings as config overrides (dicts ``unlearn`` accepts).

    ``setting``: ``"<dataset>-<arch>"`` with dataset ``cifar10``/``svhn``/``cinic10`` and arch
    ``resnet18``/``resnet50`` (``"<dataset>"`` alone means ResNet-18). With ``method``: that method's
    full config as a dict; without: ``{method: dict}`` for every method. Epoch counts are the paper's (docs/method.md)
    (CIFAR-10 / ResNet-18); override them for small demos, e.g.
    ``unlearn("a_finetune", ..., config={**presets("cinic10-resnet18", "a_finetune"), "epochs": 2})``.
    As a config, the dict sets every field of an accelerated method, so ``config.request="auto"``'s recipes (the
    whole-class and difficulty-matched ones, docs/method.md §7.6 / §7.10) fill none of them: the paper's recipe runs.
    ``fastblend run --preset`` passes only the fields a preset changes from the defaults, and the request's recipe
    fills the rest.
    """
    if not isinstance(setting, str):
        raise TypeError(f"presets: setting must be a string like 'cifar10-resnet18', got {type(setting).__name__}")
    parts = setting.lower().replace("_", "-").split("-")
    ds = parts[0]
    ar = "".join(parts[1:]) or "resnet18"
    if ds not in PRESET_DATASETS:
        raise ValueError(f"presets: dataset must be one of {PRESET_DATASETS}, got {setting!r}")
    if ar not in PRESET_ARCHS:
        raise ValueError(f"presets: arch must be one of {PRESET_ARCHS}, got {setting!r}")
    if method is None:
        return {name: presets(setting, name) for name in METHODS}
    spec = _spec(method, "presets")
    cfg = replace(spec.config_class(), **_PRESET_OVERRIDES.get((spec.name, ds), {}))
    return {f.name: getattr(cfg, f.name) for f in fields(cfg)}


@dataclass
class TrainModelConfig(TrainConfig):
    """Supervised training of the model to unlearn from (not an AMU method): Retrain's docs/method.md §3
    recipe — SGD lr 0.1, momentum 0.9, weight decay 5e-4, 5 warm-up epochs then cosine, 100 epochs."""

    epochs: int = 100
    lr: float = 0.1
    schedule: str = "cosine"
    warmup_epochs: int = 5


def train_model(model: nn.Module, data: Any, config: Any = None, device: torch.device | str | None = None,
                seed: int = 0, progress: bool | None = None) -> nn.Module:
    """Train ``model`` with cross-entropy on ``data`` (any data form of :func:`unlearn`) and return
    it (a trained deep copy unless ``config.inplace``), in eval mode. ``config``: ``None``, a dict of
    overrides or a :class:`TrainModelConfig`. Data parallel under ``torch.distributed`` as :func:`unlearn`."""
    fn = "train_model"
    seed = plain_number(seed)  # numpy integers too
    cfg = resolve_config(config, TrainModelConfig, fn)
    if not isinstance(model, nn.Module):
        raise TypeError(f"{fn}: model must be a torch.nn.Module, got {type(model).__name__}")
    model, ddp_options = _unwrap(model, fn)
    dev = as_device(device, fn) or model_device(model)
    view = as_data(data, "data", fn)
    work = (model if cfg.inplace else _copy_model(model, fn)).to(dev)
    probe = view.probe(fn)
    num_classes = probe_num_classes(work, probe.to(dev, model_dtype(work)))
    check_label_range(view, num_classes, fn)
    cast_to_model(view, work)
    if cfg.data_on_device:
        view = view.to(dev)
    ctx = RunContext(cfg, dev, seed, progress, fn)
    ctx.num_classes = num_classes
    ctx.ddp_options = ddp_options
    trainer = Finetune(cfg)
    trainer.name = "train"  # the progress bar's label
    outcome = train(trainer, work, RunData(view, view, None), cfg, ctx, accelerated=False)
    return outcome.model.eval()


@dataclass
class UnlearnResult:
    """What :func:`unlearn` returns.

    Attributes:
        model: the unlearned model (a new object unless ``config.inplace``), in eval mode.
        seconds: wall time of the method (model preparation, teachers, training), the device
            synchronised before and after; data checks and transfers are not included.
        losses: mean training loss of each epoch (empty for SSD).
        config: the config used.
        method: the method's canonical name.
        steps: optimiser steps taken (SSD: importance batches).
        info: method-specific facts (SSD: ``ssd_selected``/``ssd_total``; all: ``num_classes``,
            ``retain_size``, ``reduced_retain``, ``backends``: the backend of each fastblend op the run
            used, e.g. ``{"quantile_mmd": "cpp"}`` for an accelerated method, ``{}`` for the others).
    """

    model: nn.Module
    seconds: float
    losses: list[float]
    config: Any
    method: str
    steps: int
    info: dict[str, Any] = field(default_factory=dict)


def unlearn(method: str, model: nn.Module, retain: Any, forget: Any, unseen: Any = None, config: Any = None,
            device: torch.device | str | None = None, seed: int = 0, progress: bool | None = None,
            callback: Callable[[nn.Module, int, float], None] | None = None, eval_every: int = 0,
            stop: str | AutoStop | None = None) -> UnlearnResult:
    """Unlearn ``forget`` from ``model`` with ``method``.

    Args:
        method: a name from :func:`available_methods` (aliases such as ``"cf"``, ``"neggrad+"``,
            ``"a_amu"`` work too). Names are fastblend's recipes with docs/method.md's settings:
            ``"finetune"`` (alias ``"ft"``/``"cf"``) is 50 epochs of SGD, not one; pass ``config`` to change.
        model: a trained classifier returning logits ``[N, C]``. Not modified unless
            ``config.inplace``.
        retain: the retain set, or the reduced retain set (``ReducedRetainSet``) for the accelerated
            methods: a pair ``(images [N, ...] float, labels [N] int)``, a triple adding training-set
            ``indices [N]``, a ``Dataset`` (``Subset``/``TensorDataset``/anything with ``images`` and
            ``labels`` tensors are used in place; any other, e.g. :class:`fastblend.MemmapImages`, is
            streamed: each epoch reads the same seeded batches as the tensors would give, one batch in
            memory at a time), or a ``DataLoader`` (streamed as is, batch size and shuffling its own; an
            accelerated method whose config sets no ``batch_size`` takes the loader's batch size, or its batch
            sampler's, as its ``B`` when it is above the config's 64: its forget and unseen draws, and the matched
            recipe's scaling, follow the batches it trains on. A loader over an ``IterableDataset`` is read into
            memory and batched at ``config.batch_size``. Under torch.distributed the loader must yield the same
            batches on every rank: one with a ``DistributedSampler`` is refused. ``config.request="auto"`` needs the
            retain labels to tell a class forgotten whole: over a dataset without a ``labels``/``targets`` attribute
            it runs the paper's recipe with a warning, unless ``stop="auto"`` reads them).
        forget: the forget set, in the same forms (read into memory: the samplers draw from it by index).
        unseen: in-distribution data the model never trained on, with labels; required by the
            accelerated methods, unused by the others (read into memory, as ``forget``).
        config: ``None`` (the defaults: the paper's hyperparameters, docs/method.md, and for an accelerated method the
            recipe ``config.request`` picks, §7.6 / §7.10), a dict of overrides, or the method's config dataclass
            (an instance sets every field: its ``target`` counts as chosen, so "auto" runs the paper's recipe on
            scattered samples unless it is ``"matched_fixed"``). ``info["request"]`` names the recipe that ran,
            ``info["recipe"]`` the settings it chose, ``info["request_reason"]`` why "auto" fell back to the
            paper's on scattered samples. The matched recipe trains only the model's head on features of a frozen
            prefix where the model allows it (``config.frozen_prefix``, docs/method.md §7.11):
            ``info["frozen_prefix"]`` names the cut, or says why it was skipped; ``{"frozen_prefix": None}`` trains
            the whole model.
        device: where to run; default the model's device.
        seed: seeds batch order, samplers and fresh initialisations (own generators; the global RNG
            is untouched). A ``DataLoader`` passed as data keeps its transforms, and the retain loader its own
            batch order (a shuffling one reads differently on each run unless the torch RNG is seeded first). The
            forget and unseen sets are read once into memory, a loader that only shuffles (``shuffle=True``,
            ``drop_last=False``) in its dataset's order, so they do not change a rerun; random transforms in a
            dataset still do.
        progress: a tqdm bar over epochs; ``None``: off unless ``FASTBLEND_PROGRESS=1`` (``fastblend._progress``).
        callback: ``callback(model, step, seconds)`` before the first optimiser step, after every
            ``eval_every``-th and after the last (SSD: before and after), ``seconds`` being the
            method's wall time so far (an accelerated method's set-up before its first step included,
            ``info["setup_seconds"]``); e.g. a :class:`fastblend.tracking.Tracker`. Its own time is
            excluded from ``seconds`` (here and in the result) and reported as ``info["eval_seconds"]``.
            Returning ``True`` stops the training after that step (a budget, e.g. ``Tracker(budget=)``);
            ``info["stopped_at_step"]`` then names the step.
        eval_every: steps between ``callback`` calls (``0``: only before and after; with ``stop``: about
            ``stop.evaluations`` evaluations over the planned steps). The stop itself evaluates about
            ``stop.evaluations`` times over the planned steps whatever ``eval_every`` is (the loop pauses at
            both cadences; ``callback`` also sees the model where the stop ends the run).
        stop: ``None`` (run the method's whole budget), ``"auto"`` or a :class:`fastblend.AutoStop`: end the
            run as soon as the forget set behaves like the held-out ``unseen`` data of its classes and held-out
            accuracy has not fallen (docs/method.md §4.5; no Retrain input). ``"auto"`` builds
            ``AutoStop(forget, unseen, retain labels, seed=seed)`` and needs ``unseen``. The run's budget
            (``config.epochs``) stays the upper bound. ``info["auto_stop"]`` holds :meth:`AutoStop.summary`;
            ``seconds`` includes the stop's own evaluations (a user pays for them).

    Data parallel: when a default process group of P > 1 ranks is initialised (``torchrun
    --nproc_per_node=P``), call ``unlearn`` on every rank with the same arguments (the same data,
    model, config and seed); ``model`` may be the plain model or a ``DistributedDataParallel``
    wrapper of it. Training then runs under ``DistributedDataParallel`` (device ``device``, e.g.
    ``cuda:LOCAL_RANK``): each rank draws the same seeded global batches (retain permutation, forget
    and unseen samplers) and processes its contiguous part of each; batch means are rescaled and the
    A-AMU loss is computed on gathered rows, so the run equals single-process training on the same
    global batches up to float reassociation (models without training-mode BatchNorm; BatchNorm
    normalises each rank's part alone unless you convert it to ``SyncBatchNorm``). A ``DataLoader``
    retain set must yield the same batches on every rank. SCRUB's forget pass, SSD, teachers and
    the evaluation ``callback`` run whole on every rank. The returned model is the plain module.

    Raises ``ValueError``/``TypeError`` for an unknown method or config key, malformed or empty data,
    labels outside the model's classes, images and labels on different devices, retain and forget
    sharing training indices, or an accelerated method without ``unseen``.
    """
    fn = "unlearn"
    spec = _spec(method, fn)
    if callback is not None and not callable(callback):
        raise TypeError(f"{fn}: callback must be callable(model, step, seconds) or None, got {type(callback).__name__}")
    eval_every, seed = plain_number(eval_every), plain_number(seed)  # numpy integers too
    if isinstance(eval_every, bool) or not isinstance(eval_every, int) or eval_every < 0:
        raise ValueError(f"{fn}: eval_every must be an int >= 0 (0: before and after only), got {eval_every!r}")
    cfg = resolve_config(config, spec.config_class, fn)
    if not isinstance(model, nn.Module):
        raise TypeError(f"{fn}: model must be a torch.nn.Module, got {type(model).__name__}")
    model, ddp_options = _unwrap(model, fn)
    dev = as_device(device, fn) or model_device(model)

    r = as_data(retain, "retain", fn)
    f = as_data(forget, "forget", fn)
    u = as_data(unseen, "unseen", fn) if unseen is not None else None
    if spec.accelerated and u is None:
        raise ValueError(f"{fn}: method {spec.name!r} requires unseen data (images and labels the model never "
                         "trained on), got None")
    if stop is not None and spec.impl is None:
        raise ValueError(f"{fn}: stop applies to training-based methods; {spec.name!r} is one-shot, got stop={stop!r}")
    if stop is not None and not isinstance(stop, AutoStop) and stop != "auto":
        raise ValueError(f"{fn}: stop must be None, 'auto' or a fastblend.AutoStop, got {stop!r}")
    if stop == "auto" and u is None:
        raise ValueError(f"{fn}: stop='auto' compares the forget set with held-out data: pass unseen (images and "
                         "labels of the forget classes the model never trained on)")
    if r.reduced and not spec.accelerated:
        warnings.warn(f"{fn}: method {spec.name!r} is not accelerated but retain is a reduced retain set (Blend): "
                      f"it runs its full recipe ({getattr(cfg, 'epochs', 'one-shot')} epochs) on blended images "
                      f"it was not designed for; use {accelerated(spec.name)!r} for Blend + A-AMU, or pass the "
                      "real retain set" if spec.name in _ACCELERATED_OF else
                      f"{fn}: method {spec.name!r} is not accelerated but retain is a reduced retain set (Blend); "
                      "pass the real retain set", stacklevel=2)
    check_disjoint(r, f, fn)
    f = read_forget(f, fn)
    if spec.name != "retrain" or stop is not None:  # retrain never reads the forget set; the stop does
        check_finite_images(fn, "forget", f.images)
    if u is not None:
        u = u.materialise(fn)
        if spec.accelerated or stop is not None:  # the methods (and the stop) that read it
            check_finite_images(fn, "unseen", u.images)

    work = model if cfg.inplace else _copy_model(model, fn)
    work = work.to(dev)
    probe = r.probe(fn)
    if spec.accelerated:  # after the probe: a loader that declares no batch size is sized by its first batch
        cfg, config = _loader_batch(r, cfg, config, fn)
    num_classes = probe_num_classes(work, probe.to(dev, model_dtype(work)))
    for view in (r, f, u):
        if view is not None:
            check_label_range(view, num_classes, fn)
            cast_to_model(view, work)
    if cfg.data_on_device:
        r = r.to(dev)
        if spec.name != "retrain":  # retrain never touches the forget set
            f = f.to(dev)
        u = u.to(dev) if u is not None else None

    read: list[torch.Tensor] = []

    def retain_labels(use: str) -> torch.Tensor:
        """The retain set's labels, read once for every reader below (a Dataset without a labels attribute costs a
        pass over it); ``use`` names the reader in the error when they cannot be read."""
        if not read:
            read.append(_retain_labels(r, fn, use))
        return read[0]

    request, recipe, why_not = None, {}, None
    if spec.accelerated:
        whole, matched_ok, why_not = False, True, None  # an explicit request decides by itself
        auto = cfg.request == "auto"
        if auto:
            # the auto stop reads the retain labels anyway (a pass, where they are not cheap): the request uses them
            whole, matched_ok, why_not = (_auto_request(r, f, u, fn, (lambda: retain_labels("stop"))
                                                        if stop is not None else None) if u is not None
                                          else (False, False, "no unseen data"))
        try:
            request, cfg, recipe = request_config(spec.name, cfg, config, whole, matched_ok)
            cfg.check(fn)  # the settings the request filled in, with the caller's
        except ValueError as exc:
            raise ValueError(f"{fn}: {str(exc).removeprefix(fn + ': ')}") from None
        if getattr(cfg, "unseen_refresh", 1) > 1 and cfg.target == "matched_fixed":
            warnings.warn(f"{fn}: config.unseen_refresh={cfg.unseen_refresh} does nothing here: the fixed matched "
                          f"target (the {request!r} request's) forwards no unseen batch to refresh", UserWarning,
                          stacklevel=2)
    # a frozen prefix (§7.11): every set the run reads goes through the prefix once and the set-up's forwards and the
    # training read those features, with the head as the model
    cut, prefix_info = None, {}
    if spec.accelerated and cfg.frozen_prefix is not None:
        # "auto" applies where it can (the recipe's, or a caller's: matched_recipe() dicts hold it); a module the
        # caller named is refused where it cannot
        cut = _frozen_prefix(work, cfg.frozen_prefix, spec.name, r, cfg.frozen_prefix != "auto", prefix_info, fn)
        head = head_recipe(spec.name, request, cfg, config) if cut is not None else {}
        if head:  # the recipe's settings for training the head
            cfg = replace(cfg, **head)
            recipe = {**recipe, **head}
    ctx = RunContext(cfg, dev, seed, progress, fn)
    ctx.info.update(prefix_info)
    ctx.num_classes = num_classes
    ctx.ddp_options = ddp_options
    if request is not None:
        ctx.info["request"], ctx.info["recipe"] = request, recipe
        ctx.info["class_recipe"] = recipe if request == "class" else {}
        if request == "sample" and auto and spec.name in MATCHED_RECIPE:
            chosen = (f"the config sets target={cfg.target!r}" + ("" if isinstance(config, dict) else
                                                                  " (a config instance sets every field)")
                      if chose_other_target(config, cfg) else None)
            reason = paper_reason(why_not, chosen)
            if reason is not None:
                ctx.info["request_reason"] = reason
    matched = fixed = odds_target = None
    # the untouched model's logits of the unseen images, one forward shared by the matched target and the anchor;
    # what that set-up costs is the method's (in the result's seconds)
    t_setup = time.perf_counter()
    unseen_logits = None
    if spec.accelerated and cfg.target == "matched_fixed":  # refused before the set-up's forwards
        refuse_fixed_on_whole_classes(f.labels, retain_labels("target"), fn, "config.target")
    if cut is not None:
        f, u = cut.view(f), cut.view(u)
    net = cut.head if cut is not None else work  # the model the set-up forwards and the loop trains
    # (under a cut the stop's baseline too: the untouched model reads images, the stop features)
    if spec.accelerated and (cfg.target != "unseen" or cfg.anchor_weight or (cut is not None and stop is not None)):
        unseen_logits = predict_logits(net, u.images, device=dev).float()
    if spec.accelerated and cfg.target != "unseen":  # held-out images as hard as the forget images (§7.7)
        idx, fixed, reference_rows = matched_rows(net, retain, r, (f.images, f.labels), (u.images, u.labels),
                                                  cfg.target, lambda: retain_labels("target"), seed, dev, fn,
                                                  "config.target", unseen_logits=unseen_logits,
                                                  embed=cut.embed if cut is not None else None)
        idx = idx.to(u.images.device)
        matched = DataView("unseen", u.images[idx], u.labels[idx])
        matched.num_classes, matched.image_dtype = u.num_classes, u.image_dtype
        ctx.info["target"] = {"kind": cfg.target, "rows": len(matched), "distinct": int(idx.unique().numel()),
                              "reference_rows": reference_rows, "odds_pairing": cfg.odds_pairing}
        if cfg.odds_pairing == "image":
            odds_target = image_odds_target(fixed, matched.labels, len(f), fn, "config.odds_pairing")
    anchor = None
    if spec.accelerated and cfg.anchor_weight:  # held-out images of the classes kept, as the untouched model sees them
        anchor = anchor_rows(net, (u.images, u.labels), f.labels, retain_labels("anchor"), dev, fn,
                             "config.anchor_weight", unseen_logits=unseen_logits)
        ctx.info["anchor"] = {"rows": int(anchor[0].shape[0]), "weight": float(cfg.anchor_weight)}
    if cut is not None:  # the retain rows last: those the ranking read already are not forwarded again
        r = cut.view(r, retain=True)
        ctx.info["frozen_prefix"] = cut.summary()
    setup_seconds = time.perf_counter() - t_setup if unseen_logits is not None or cut is not None else 0.0
    if setup_seconds:
        ctx.info["setup_seconds"] = setup_seconds
    data = RunData(r, f, matched if matched is not None else u, fixed, anchor, odds_target)
    if cut is not None and callback is not None:  # the caller's callback sees the whole model
        callback = _on_model(callback, work)
    stopper = None
    if stop is not None:
        own = not isinstance(stop, AutoStop)
        stopper = stop if not own else AutoStop(
            (f.images, f.labels), (u.images, u.labels), retain_labels("stop"), seed=seed,
            matched_heldout=None if matched is None else (matched.images, matched.labels))
        # the untouched model's held-out accuracy, which the rule keeps (from the set-up's forward when it is ours;
        # without one, measured on the caller's model, which the run does not train, only if the rule ever needs it)
        # a caller's stop evaluates the whole model on its own images; ours the head on the features
        judged = net if own else work
        if own and unseen_logits is None and work is not model and model_device(model) == model_device(work):
            stopper.start(model, defer_baseline=True)
        else:
            stopper.start(judged, heldout_logits=unseen_logits if own else None)
        # rows an epoch reads: a loader's own batches (drop_last, a subset sampler) may read fewer than its dataset
        rows = len(r) if r.loader is None or r.dataset is not None else r.num_batches(cfg.batch_size) * cfg.batch_size
        # cfg is resolved: the request's recipe is in it already (planning it again would read a caller's setting at
        # its default, e.g. epochs=1, as "not set" and plan the recipe's 3 epochs)
        every = eval_every_for(_steps_of(cfg, rows), stopper.evaluations)
        user_every = eval_every or every  # the caller's cadence (0: the stop's)
        callback = _with_stop(callback, stopper, every, user_every, None if judged is net else judged)
        # a caller's denser cadence carries the stop's (it evaluates at the first report `every` steps after its last,
        # as before); a sparser one would thin it: the loop pauses at both then
        eval_every = user_every if user_every <= every else (lambda s: s % user_every == 0 or s % every == 0)
    del unseen_logits  # [N_u, C]: not needed while training
    if setup_seconds and callback is not None:  # the caller's and the stop's clock count the set-up: the method's time
        callback = _after_setup(callback, setup_seconds)
    before = stopper.eval_seconds if stopper is not None else 0.0
    started = time.perf_counter()
    pruned_before = _pruning_hooks(work)
    finishing = 0.0
    try:
        if spec.impl is None:
            outcome, seconds = timed(lambda: _ssd_tracked(work, data, cfg, ctx, callback), dev)
        else:
            outcome, seconds = timed(lambda: train(spec.impl(cfg), net, data, cfg, ctx, spec.accelerated,
                                                   callback, eval_every), dev)
        seconds -= ctx.info.get("eval_seconds", 0.0)
        seconds += setup_seconds
        # the recipe ran out before the rule held: the closest evaluation's model (rank 0's view decides, so every
        # rank evaluates, or not, together); its evaluation of the final model can find it diverged too
        if stopper is not None and not broadcast_object(stopper.stopped):
            start = stopper.eval_seconds
            stopper.finish(outcome.model if judged is net else judged, outcome.steps, seconds)
            finishing = stopper.eval_seconds - start
    except (FloatingPointError, KeyboardInterrupt) as exc:  # nothing the run computed is lost: the stop's kept model
        try:
            _hand_back(exc, stopper, judged if stopper is not None and cut is not None else
                       ctx.trained if ctx.trained is not None else work, cfg, spec.name, ctx,
                       setup_seconds + time.perf_counter() - started, num_classes, len(r), r.reduced, pruned_before,
                       full=work if cut is not None else None)
        except Exception as failed:  # the caller's error stays the error; what went wrong here is said beside it
            warnings.warn(f"{fn}: the closest evaluation's model could not be handed back ({type(failed).__name__}: "
                          f"{failed})", UserWarning, stacklevel=2)
        raise
    if stopper is not None:  # the stop's evaluations are the method's cost, not the caller's
        ctx.info["eval_seconds"] = ctx.info.get("eval_seconds", 0.0) - (stopper.eval_seconds - before - finishing)
        seconds += stopper.eval_seconds
        ctx.info["auto_stop"] = stopper.summary()
    # "backends": the backend of each fastblend op the method ran (A-AMU: quantile_mmd); {} for none
    info = {"num_classes": num_classes, "retain_size": len(r), "reduced_retain": r.reduced, "backends": {},
            **ctx.info}
    return UnlearnResult((work if cut is not None else outcome.model).eval(), seconds, outcome.losses, cfg, spec.name,
                         outcome.steps, info)


def _copy_model(model: nn.Module, fn: str) -> nn.Module:
    """A deep copy of ``model``; a model torch cannot copy (a weight computed from others: ``torch.nn.utils.prune``
    or the old ``weight_norm`` reparametrisation) gets a ``ValueError`` saying what to do."""
    try:
        return copy.deepcopy(model)
    except RuntimeError as exc:
        if "deepcopy" not in str(exc):
            raise
        raise ValueError(f"{fn}: model cannot be copied (torch: {str(exc).split('.')[0]}): it holds a weight computed "
                         "from others, e.g. torch.nn.utils.prune's or weight_norm's reparametrisation; make it "
                         "permanent first (torch.nn.utils.prune.remove / remove_weight_norm), or pass "
                         "config={'inplace': True} to train this model itself") from None


def _pruning_hooks(model: nn.Module) -> set[tuple[int, str]]:
    """``(id(module), tensor name)`` of every ``torch.nn.utils.prune`` reparametrisation on ``model``."""
    from torch.nn.utils import prune

    return {(id(m), h._tensor_name) for m in model.modules() for h in m._forward_pre_hooks.values()
            if isinstance(h, prune.BasePruningMethod)}


def _fold_new_pruning(model: nn.Module, before: set[tuple[int, str]]) -> None:
    """Make permanent the pruning the run added (``prune``'s own ``finish`` on a run that did not get there); a
    reparametrisation the caller's model came with stays."""
    from torch.nn.utils import prune

    modules = {id(m): m for m in model.modules()}
    for key in _pruning_hooks(model) - before:
        prune.remove(modules[key[0]], key[1])


def _hand_back(exc: BaseException, stopper: AutoStop | None, work: nn.Module, cfg: Any, name: str, ctx: RunContext,
               seconds: float, num_classes: int, retain_size: int, reduced: bool,
               pruned_before: set[tuple[int, str]], full: nn.Module | None = None) -> None:
    """A run that diverged (``FloatingPointError``) or was interrupted (``KeyboardInterrupt``) under an auto stop:
    the weights of the stop's evaluation closest to its rule go into ``work`` (the model that trained: a new one for
    retrain and distill) and onto the exception as ``exc.result`` (an :class:`UnlearnResult` whose
    ``info["failed"]`` says what happened and whose ``seconds`` is the wall time until the failure), with a note
    saying so. Without a stop, or before its first counted evaluation, there is nothing to hand back. After the stop
    had fired (the failure came in the caller's callback there, or later) the model is the
    one the stop judged, handed back as it is. ``full``: the whole model ``work`` is the trained head of (§7.11), the
    one handed back."""
    why = ("the run was interrupted" if isinstance(exc, KeyboardInterrupt) else
           "the run diverged (non-finite loss, weights or logits)")
    if stopper is None:
        return
    if stopper.stopped:  # training ended at the stop: work holds the model that met the rule
        step, what = int(stopper.stop_step), "the model the auto stop judged done"
    elif stopper.recover(work, why):
        step, what = int(stopper.restored_step), "the auto stop's evaluation closest to its rule"
    else:
        return
    _fold_new_pruning(work, pruned_before)
    info = {"num_classes": num_classes, "retain_size": retain_size, "reduced_retain": reduced, "backends": {},
            **ctx.info, "auto_stop": stopper.summary(), "failed": f"{type(exc).__name__}: {exc}"}
    exc.result = UnlearnResult((work if full is None else full).eval(), seconds, [], cfg, name, step, info)
    note = (f"fastblend: {why}; the model of step {step}, {what}, is kept in this exception's .result (an "
            "UnlearnResult)")
    if hasattr(exc, "add_note"):  # Python 3.11+
        exc.add_note(note)
    else:  # before 3.11 an exception has no notes: say it on stderr as a warning
        warnings.warn(note, UserWarning, stacklevel=3)


def matched_rows(model: nn.Module, retain: Any, r: DataView | None, forget: tuple[torch.Tensor, torch.Tensor],
                 unseen: tuple[torch.Tensor, torch.Tensor], target: str, retain_labels: Callable[[], torch.Tensor],
                 seed: int, dev: torch.device, fn: str, arg: str = "target", unseen_logits: torch.Tensor | None = None,
                 embed: Callable[[torch.Tensor, list | None], torch.Tensor] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """``config.target`` / the drop-in's ``target`` (docs/method.md §7.7), for ``unlearn`` and the drop-in:
    ``(indices into unseen of the images as hard as the forget images, their logits under the untouched model
    for "matched_fixed" else None, how many reference rows ranked them)``, ranked against
    :func:`retained_reference`. ``"matched_fixed"`` is refused when a forget class has no retain image
    (``retain_labels()``, read only then; ``arg`` names the setting in the message). ``unseen_logits``: the untouched
    model's logits of the unseen images when already computed (one forward fewer). ``embed(images, row
    keys or None)``: what ``model`` reads instead of the reference's images (a frozen prefix's features, §7.11;
    ``forget`` and ``unseen`` are given as such then)."""
    from ..difficulty import matched_unseen

    if target == "matched_fixed":
        refuse_fixed_on_whole_classes(forget[1], retain_labels(), fn, arg)
    rx, ry, ri = retained_reference(retain, r, seed, dev, model_dtype(model), fn, classes=forget[1].unique(),
                                    with_index=True)
    if embed is not None:
        rx = embed(rx, ri)
    idx = matched_unseen(model, (rx, ry), forget, unseen, max_reference=None, device=dev, unseen_logits=unseen_logits)
    fixed = None
    if target == "matched_fixed":  # their losses under the untouched model: a target that does not move
        fixed = (unseen_logits[idx.to(unseen_logits.device)] if unseen_logits is not None else
                 predict_logits(model, unseen[0][idx.to(unseen[0].device)], device=dev).float())
    return idx, fixed, int(rx.shape[0])


def refuse_fixed_on_whole_classes(forget_labels: torch.Tensor, retain_labels: torch.Tensor, fn: str,
                                  arg: str = "target") -> None:
    """``target="matched_fixed"`` refused when a forget class has no retain image (a class forgotten whole)."""
    whole = whole_classes(forget_labels.unique(), retain_labels)
    if whole:
        raise ValueError(f"{fn}: {arg}='matched_fixed' fixes the target at the untouched model's losses, and "
                         f"the forget classes {whole} have no retain image (forgotten whole): for them those are "
                         "the losses of a model that still predicts the class. Use target='unseen' or 'matched' "
                         "for a request that forgets whole classes")


def image_odds_target(fixed: torch.Tensor, labels: torch.Tensor, n_forget: int, fn: str,
                      arg: str = "odds_pairing") -> torch.Tensor:
    """The per-image log-odds targets (docs/method.md §7.10), for ``unlearn`` and the drop-in: the true-class log-odds
    of each forget row's matched image under the untouched model (``fixed``: their logits, one row per forget row
    in its order; ``labels``: theirs, the forget rows' classes), float64. Refused when a forget image got no
    match (its class has no held-out image): the rows would no longer line up."""
    if fixed.shape[0] != n_forget:
        raise ValueError(f"{fn}: {arg}='image' needs a held-out image of every forget image's class to match it with; "
                         f"{n_forget - fixed.shape[0]} of the {n_forget} forget images have none. Pass unseen images "
                         f"of every forget class, or use {arg}='quantile'")
    return true_class_log_odds(fixed.double(), labels.to(fixed.device))


def anchor_keep(unseen_labels: torch.Tensor, forget_labels: torch.Tensor, retain_labels: torch.Tensor) -> torch.Tensor:
    """Which unseen rows the held-out anchor holds (a CPU mask): those of a class the retain set still holds."""
    whole = whole_classes(forget_labels.unique(), retain_labels)
    return ~torch.isin(unseen_labels.cpu(), torch.tensor(whole, dtype=torch.long))


def anchor_rows(model: nn.Module, unseen: tuple[torch.Tensor, torch.Tensor], forget_labels: torch.Tensor,
                retain_labels: torch.Tensor, dev: torch.device, fn: str, arg: str = "anchor_weight",
                unseen_logits: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The held-out anchor's rows (docs/method.md §7.9), for ``unlearn`` and the drop-in: the unseen images of every
    class the retain set still holds (a class forgotten whole is left out: a model that never saw it predicts it
    nowhere) in the model's dtype, and their logits under the untouched ``model``, fixed (``unseen_logits``: those of
    every unseen image, when already computed)."""
    keep = anchor_keep(unseen[1], forget_labels, retain_labels)
    if not bool(keep.any()):
        whole = whole_classes(forget_labels.unique(), retain_labels)
        raise ValueError(f"{fn}: {arg} > 0 needs unseen images of a class the retain set still holds, and every "
                         f"unseen image is of a class forgotten whole ({whole})")
    x = unseen[0][keep.to(unseen[0].device)].to(model_dtype(model) or torch.float32)
    if unseen_logits is not None:
        return x, unseen_logits[keep.to(unseen_logits.device)]
    return x, predict_logits(model, x, device=dev).float()


def retained_reference(retain: Any, r: DataView | None, seed: int, dev: torch.device, dtype: torch.dtype | None,
                       fn: str, classes: torch.Tensor | None = None,
                       limit: int = 4096, with_index: bool = False) -> tuple[torch.Tensor, ...]:
    """A seeded sample of the training images a model keeps, with labels, on ``dev``: of the classes
    ``classes`` only (``None``: all), at most ``limit`` rows shared evenly among them (at least 64 per class).
    The rows are the retain set's (``r``, its view; built here when ``None``), or for a Blend-reduced set the
    members of its blends and its residual rows, read from its source. A reduced set's rows themselves would
    bias a ranking against them: its residual rows are the forget images' neighbours, its blended rows no
    training images. ``with_index``: a third item, each row's keys (``[("train", training index)]`` for a reduced set's
    rows read from its source, ``[("row", position)]`` for rows of ``r`` itself; ``None`` where neither is known): what
    a frozen prefix's retain view matches its rows with (``_Cut``).
    """
    from ..condensation.source import read_rows, source_labels

    gen = torch.Generator().manual_seed(int(seed))

    def pick(labels: torch.Tensor) -> torch.Tensor:
        labels = labels.cpu()
        keep = torch.isin(labels, classes.cpu()) if classes is not None else torch.ones_like(labels, dtype=torch.bool)
        rows = torch.nonzero(keep).flatten()
        if rows.numel() == 0:  # every forget class forgotten whole: nothing of theirs to rank against
            rows = torch.arange(labels.numel())
        wanted = labels[rows].unique()
        quota = max(64, limit // max(1, wanted.numel()))
        out = []
        for c in wanted.tolist():
            rc = rows[labels[rows] == c]
            out.append(rc[torch.randperm(rc.numel(), generator=gen)[:quota]])
        return torch.cat(out) if out else rows

    members = getattr(retain, "blend_members", None)
    if members is not None and getattr(retain, "source", None) is not None:
        blended = retain.is_blended.cpu()
        counts = torch.diff(retain.blend_indptr.cpu())
        train_idx = torch.cat([members.cpu(), retain.source_index.cpu()[~blended]])
        labels = torch.cat([retain.labels.cpu()[blended].repeat_interleave(counts), retain.labels.cpu()[~blended]])
        rows = pick(labels)
        out = read_rows(retain.source, train_idx[rows], fn).to(dev, dtype), labels[rows].to(dev)
        return (*out, [[("train", k)] for k in train_idx[rows].tolist()]) if with_index else out
    if members is not None:  # a reduced set without its source (materialised, or loaded self-contained)
        warnings.warn(f"{fn}: the reduced retain set has no source, so the matched target ranks the forget images "
                      "against its own rows (blended ones included) instead of the training images it condensed; "
                      "the target may come out harder or easier than it should. Keep the set with its source (as "
                      "BlendIndex.reduce and condense return it, or ReducedRetainSet.load(path, source=...) of a "
                      "file saved with with_residual=False)", UserWarning, stacklevel=4)
    r = r if r is not None else as_data(retain, "retain", fn)
    if r.indexable:
        rows = pick(_retain_labels(r, fn, "target"))
        out = r.take(rows, dev)
        return (*out, [[("row", k)] for k in rows.tolist()]) if with_index else out
    data = getattr(r.loader, "dataset", None)
    if getattr(data, "blend_members", None) is not None:  # a DataLoader over a reduced set: rank as the set
        return retained_reference(data, None, seed, dev, dtype, fn, classes, limit, with_index)
    if data is not None and _reads_whole_dataset(r.loader):
        # sample the dataset's rows: the loader's own iteration would read only its first batches, and draw its
        # shuffle from the global RNG
        labels = source_labels(data, fn).long()
        rows = pick(labels)
        out = read_rows(data, rows, fn).to(dev, dtype), labels[rows].to(dev)
        return (*out, None) if with_index else out
    # any other loader (a sampler of its own, a custom collate, an iterable dataset): its first batches, up to
    # ``limit`` rows of those classes, with the global RNG kept as it was
    xs, ys, n = [], [], 0
    with torch.random.fork_rng(devices=[]):
        for x, y in r.batches(512, None, dev, fn, shuffle=False):
            if classes is not None:
                keep = torch.isin(y, classes.to(y.device))
                x, y = x[keep], y[keep]
            xs.append(x)
            ys.append(y)
            n += x.shape[0]
            if n >= limit:
                break
    out = torch.cat(xs)[:limit], torch.cat(ys)[:limit]
    return (*out, None) if with_index else out


def _loader_batch(r: DataView, cfg: Any, config: Any, fn: str) -> tuple[Any, Any]:
    """``(cfg, config)`` with a streamed retain ``DataLoader``'s batch size as ``batch_size`` where the loader's batches
    are larger than the config's and the caller set none (a dict without the key, ``None``, or an instance at the
    default): an accelerated method draws its forget and unseen batches as multiples of the retain batch, and the
    matched recipe scales its lr and epochs with it (``aamu_configs.batch_scaled``), so both must see the batches the
    loader yields (a step sized for 64 refused them). A loader of smaller batches keeps the config's ``batch_size``
    (the step takes retain batches up to it). A ``batch_size`` the caller set below the loader's is refused; one
    above it is kept, with a warning (the draws and the scaling follow it, not the batches trained on). Under
    torch.distributed a retain loader with a ``DistributedSampler`` is refused: each rank keeps its part of every
    global batch, so the loader must yield the same batches on every rank."""
    loader = r.loader if r.dataset is None else None
    if loader is None:
        return cfg, config
    sampler = getattr(loader.batch_sampler, "sampler", None)  # a custom batch sampler's own, else the loader's
    sampler = loader.sampler if sampler is None else sampler
    if is_distributed() and isinstance(sampler, DistributedSampler):
        raise ValueError(f"{fn}: under torch.distributed each rank keeps its own part of every global retain batch, "
                         "so the retain DataLoader must yield the same batches on every rank; this one has a "
                         "DistributedSampler (each rank would drop most of its rows). Pass a DataLoader without it, "
                         "or the Dataset itself (then sharded by index)")
    batch = declared_batch_size(loader)
    if batch is not None:
        batch = min(batch, len(r))  # a batch larger than the set holds the set
    else:  # a batch sampler of its own, or pre-batched items (the dataset's length then counts batches)
        batch = r.first_batch_rows
    if not isinstance(batch, int) or batch == cfg.batch_size:
        return cfg, config
    # a batch size at the default counts as not set (a config instance's, or a dict of every field like presets')
    if "batch_size" in given_fields(config, cfg) and cfg.batch_size != type(cfg)().batch_size:
        if cfg.batch_size < batch:
            raise ValueError(f"{fn}: config.batch_size is {cfg.batch_size} but the retain DataLoader yields batches "
                             f"of {batch}; leave batch_size out (the loader's is taken) or set it to {batch}")
        warnings.warn(f"{fn}: config.batch_size is {cfg.batch_size} and the retain DataLoader yields batches of "
                      f"{batch}: the forget and unseen draws (and the matched recipe's lr and epochs) are sized for "
                      f"{cfg.batch_size}; leave batch_size out to size them for the loader's batches",
                      UserWarning, stacklevel=user_stacklevel())
        return cfg, config
    if batch < cfg.batch_size:
        return cfg, config
    cfg = replace(cfg, batch_size=batch)
    return cfg, ({**config, "batch_size": batch} if isinstance(config, dict) else
                 {"batch_size": batch} if config is None else cfg)


def _reads_whole_dataset(loader: Any) -> bool:
    """Whether ``loader`` reads every row of its map-style dataset once, as the dataset's own ``(image, label)``
    items collated by torch's default (its default sequential or random sampler, batches of a size): then
    reading the dataset's rows directly gives what the loader would."""
    from torch.utils.data import BatchSampler, RandomSampler, SequentialSampler, default_collate

    data = loader.dataset
    if isinstance(data, IterableDataset) or not hasattr(data, "__len__") or loader.batch_size is None \
            or loader.collate_fn is not default_collate or type(loader.batch_sampler) is not BatchSampler:
        return False
    sampler = loader.batch_sampler.sampler
    if type(sampler) is SequentialSampler:
        return True
    return type(sampler) is RandomSampler and not sampler.replacement and sampler.num_samples == len(data)


#: what each reader of the retain set's labels needs them for, and what to do instead (its error's text)
_LABEL_USES = {
    "stop": ("stop='auto' needs the retain set's labels to tell a whole-class request from scattered samples",
             "pass stop=fastblend.AutoStop(forget, unseen, kind='sample' or 'class')"),
    "target": ("the matched target (target='matched' or 'matched_fixed') needs the retain set's labels to rank the "
               "forget images among the training images of their classes", "give its Dataset a labels or targets "
               "attribute, or use target='unseen'"),
    "anchor": ("config.anchor_weight needs the retain set's labels to leave out of the anchor the classes "
               "forgotten whole", "give its Dataset a labels or targets attribute, or leave anchor_weight at 0"),
}


def _retain_labels(r: Any, fn: str, use: str) -> torch.Tensor:
    """The retain set's labels, for ``use`` (a key of :data:`_LABEL_USES`: the auto stop's whole-class test, the
    matched target's ranking, the anchor's classes): in memory, or read from a Dataset / a
    DataLoader's dataset (without a pass where :func:`_cheap_retain_labels` finds them, else one pass). Unreadable
    labels raise ``ValueError`` saying what needed them."""
    from ..condensation.source import source_labels

    cheap = _cheap_retain_labels(r)
    if cheap is not None:
        return cheap
    source = r.dataset if r.dataset is not None else getattr(r.loader, "dataset", None)
    try:
        return source_labels(source, fn)
    except Exception as exc:  # noqa: BLE001 - any unreadable source gets the same advice
        why, instead = _LABEL_USES[use]
        raise ValueError(f"{fn}: {why}, and they could not be read ({exc}); {instead}") from None


def _auto_request(r: Any, f: Any, u: Any, fn: str,
                  labels: Callable[[], torch.Tensor] | None = None) -> tuple[bool, bool, str | None]:
    """What ``config.request="auto"`` may run: ``(whole class, difficulty-matched recipe possible, why not)``, from
    the retain set's labels read from memory or a labels attribute (a ``Subset``'s through its dataset's), else by
    ``labels()`` where given (a reader that passes over the set anyway, e.g. the auto stop's), never by a pass of its
    own: then the paper's recipe runs, with a warning (it cannot tell a class forgotten whole; a whole class needs
    the whole-class recipe to be forgotten). :func:`auto_request_of_labels` decides."""
    retained = _cheap_retain_labels(r)
    if retained is None and labels is not None:
        retained = labels()
    if retained is None:
        warnings.warn(f"{fn}: config.request='auto' cannot read the retain set's labels without a pass over it (no "
                      "labels/targets attribute), so it runs the paper's recipe, which leaves a class forgotten whole "
                      "largely unforgotten: pass config={'request': 'class'} for a request that forgets whole "
                      "classes, {'request': 'matched'} for scattered samples (each reads the labels with a pass), or "
                      "{'request': 'sample'} to keep the paper's and silence this", UserWarning,
                      stacklevel=user_stacklevel())
        return False, False, ("the retain set's labels are neither in memory nor a labels/targets attribute with one "
                              "value per row (pass config={'request': 'class'} for whole classes or "
                              "{'request': 'matched'} for scattered samples to read them with a pass)")
    return auto_request_of_labels(f.labels, retained, u.labels)


def auto_request_of_labels(forget_labels: torch.Tensor, retain_labels: torch.Tensor,
                           unseen_labels: torch.Tensor) -> tuple[bool, bool, str | None]:
    """``(whole class, difficulty-matched recipe possible, why not)`` for ``config.request="auto"`` (``unlearn`` and
    the drop-in): a whole-class request when no forget class keeps a retain row; the matched recipe needs every
    forget class still in the retain set (its fixed target refuses a class forgotten whole, and a request mixing
    whole and partial classes gets the paper's) and unseen images of every forget class."""
    forget_classes = forget_labels.unique()
    whole = whole_classes(forget_classes, retain_labels)
    if len(whole) == forget_classes.numel():
        return True, False, None
    if whole:
        return False, False, f"forget classes {sorted(whole)} have no retain image left (a class forgotten whole)"
    missing = sorted(set(forget_classes.tolist()) - set(unseen_labels.unique().tolist()))
    if missing:
        return False, False, f"the unseen data hold no image of forget classes {missing}"
    return False, True, None


def paper_reason(why_not: str | None, chosen_target: str | None) -> str | None:
    """``request_reason`` of a ``config.request="auto"`` that ran the paper's recipe on scattered samples: the caller's
    own target (``chosen_target``, how the caller set it) or what in the data ruled the matched recipe out
    (``why_not``); ``None`` when neither."""
    why = chosen_target or why_not
    return None if why is None else f"the paper's recipe, not the difficulty-matched one: {why}"


def _cheap_retain_labels(r: Any) -> torch.Tensor | None:
    """The retain set's labels when they cost no pass over its images (in memory, or :func:`_cheap_labels_of` its
    dataset); ``None`` otherwise."""
    if r.labels is not None:
        return r.labels.detach().cpu()
    source = r.dataset if r.dataset is not None else getattr(r.loader, "dataset", None)
    return _cheap_labels_of(source)


def _cheap_labels_of(source: Any) -> torch.Tensor | None:
    """A dataset's labels when they cost no pass over its images: a ``TensorDataset``'s, a labels/targets attribute
    with one value per row, or a ``Subset``'s through its dataset's; ``None`` otherwise."""
    from ..condensation.source import _attribute_labels

    if source is None:
        return None
    if isinstance(source, Subset):
        base = _cheap_labels_of(source.dataset)
        if base is None:
            return None
        try:
            return base[torch.as_tensor(list(source.indices), dtype=torch.long)]
        except (IndexError, TypeError, ValueError, RuntimeError):
            return None
    tensors = getattr(source, "tensors", None)  # a TensorDataset: its labels are already in memory
    if isinstance(source, TensorDataset) and len(tensors) >= 2 and tensors[1].dim() == 1:
        return tensors[1].detach().cpu()
    try:
        return _attribute_labels(source)  # one per row, or None: never a pass
    except Exception:  # noqa: BLE001 - a source without len() or with odd attributes: not cheap to read
        return None


def _after_setup(callback: Callable, setup_seconds: float) -> Callable[[nn.Module, int, float], Any]:
    """``callback`` with ``seconds`` counted from before the set-up (``setup_seconds`` earlier than the training's
    clock), so a curve, a budget and the stop's time include what the set-up cost."""

    def shifted(model: nn.Module, step: int, seconds: float) -> Any:
        return callback(model, step, seconds + setup_seconds)

    return shifted


def _with_stop(callback: Callable | None, stopper: AutoStop, every: int, user_every: int,
               judged: nn.Module | None = None) -> Callable[[nn.Module, int, float], bool]:
    """The training loop's one callback for a run with a stop: ``callback`` (the caller's) before the first step,
    at every ``user_every``-th step, after the last and where the stop ends the run; ``stopper`` at the first report
    at least ``every`` steps after its last evaluation (a caller's denser ``eval_every`` does not multiply the stop's
    cost; one that does not divide ``every`` spaces it up to ``every + eval_every - 1`` apart, as before; a sparser
    one no longer starves it: the loop then pauses at both cadences); stop when either asks to. ``judged``: the
    model the stop evaluates instead of the one the loop trains (a caller's stop under a frozen prefix)."""
    last = [-every]

    def both(model: nn.Module, step: int, seconds: float) -> bool:
        user_due = callback is not None and (step == 0 or step % user_every == 0 or final_report())
        asked = callback(model, step, seconds) is True if user_due else False
        if step - last[0] < every:
            return asked
        last[0] = step
        done = stopper(model if judged is None else judged, step, seconds)
        if done and callback is not None and not user_due:  # the run ends here: the caller sees its last model
            asked = callback(model, step, seconds) is True
        return done or asked

    return both


def _on_model(callback: Callable, model: nn.Module) -> Callable[[nn.Module, int, float], Any]:
    """``callback`` given ``model`` (the whole model) whatever the loop trains (its head, §7.11)."""

    def whole(_trained: nn.Module, step: int, seconds: float) -> Any:
        return callback(model, step, seconds)

    return whole


class _Cut:
    """A run's frozen prefix (docs/method.md §7.11): the head it trains, and its sets as the prefix's features, each
    image forwarded through the prefix once. The ranking's reference rows and the retain rows are the same images
    where they share a key, ``("row", position in the retain set)`` or ``("train", training index)`` of a reduced set's
    raw rows read from its source: the retain view reuses those; no other set does (their indices may be of another
    dataset)."""

    def __init__(self, split: Any) -> None:
        self.split, self.head = split, split.head
        self.known: dict[tuple[str, int], torch.Tensor] = {}  # key -> a reference row's features, until the retain's
        self.rows = self.reused = 0
        self.seconds = 0.0
        self.shape: list[int] | None = None

    def features(self, images: torch.Tensor, keys: list[list[tuple[str, int]]] | None = None,
                 remember: bool = False) -> torch.Tensor:
        """``prefix(images)``; rows whose key (any of ``keys[i]``) is known are reused; ``remember``: keep these rows'
        features under their keys."""
        from ..prefix import prefix_features

        started = time.perf_counter()
        n = images.shape[0]
        hits = [None] * n
        if keys is not None and self.known:
            hits = [next((self.known[k] for k in ks if k in self.known), None) for ks in keys]
        todo = [i for i in range(n) if hits[i] is None]
        if len(todo) == n:
            out = prefix_features(self.split.prefix, images)
        else:  # the known rows, and the others forwarded
            rows = list(hits)
            if todo:
                for i, row in zip(todo, prefix_features(self.split.prefix, images[todo])):
                    rows[i] = row
            out = torch.stack(rows)
        if remember and keys is not None:
            for i, ks in enumerate(keys):
                for k in ks:
                    self.known[k] = out[i]
        self.rows += len(todo)
        self.reused += n - len(todo)
        self.shape = list(out.shape[1:])
        self.seconds += time.perf_counter() - started
        return out

    def embed(self, images: torch.Tensor, keys: list[list[tuple[str, int]]] | None) -> torch.Tensor:
        """The ranking's reference rows (``matched_rows``' ``embed``), kept for the retain set's."""
        return self.features(images, keys, remember=True)

    def view(self, v: DataView | None, retain: bool = False) -> DataView | None:
        """``v`` with its images replaced by their features (``retain``: reusing the reference rows', then dropping
        them)."""
        if v is None:
            return None
        keys = None
        if retain:
            index = v.indices.reshape(-1).tolist() if v.indices is not None and v.indices.numel() == len(v) else None
            keys = [[("row", i)] + ([("train", index[i])] if index is not None and index[i] >= 0 else [])
                    for i in range(len(v))]
        out = DataView(v.name, self.features(v.images, keys), v.labels, None, v.indices, v.reduced)
        out.num_classes, out.image_dtype = v.num_classes, out.images.dtype
        if retain:
            self.known.clear()  # nothing reads them after the retain set
        return out

    def summary(self) -> dict:
        s = self.split
        return {"at": s.at, "head_parameters": s.head_parameters, "parameters": s.parameters,
                "feature_shape": self.shape, "rows": self.rows, "reused": self.reused, "seconds": self.seconds}


#: methods a frozen prefix does not apply to: a_prune prunes the whole model, a_bad_teacher's incompetent teacher is a
#: whole model of its own
_NO_PREFIX = ("a_prune", "a_bad_teacher")


def _frozen_prefix(work: nn.Module, at: str, name: str, r: DataView, explicit: bool, info: dict,
                   fn: str) -> _Cut | None:
    """``work`` cut at ``at`` (:func:`fastblend.prefix.split_model`). Where it cannot be, a module the caller named
    (``explicit``) is refused with a ``ValueError``; ``"auto"`` falls back to training the whole model,
    ``info["frozen_prefix"]["skipped"]`` saying why."""
    from ..prefix import split_model

    def skip(reason: str) -> None:
        if explicit:
            raise ValueError(f"{fn}: config.frozen_prefix={at!r}: {reason}; set it to None to train the whole model")
        info["frozen_prefix"] = {"at": at, "skipped": reason}

    if name in _NO_PREFIX:
        return skip(f"method {name!r} " + ("prunes the whole model" if name == "a_prune" else
                                           "distils from a whole incompetent model of its own"))
    if not r.in_memory:
        return skip("the retain set is streamed (a DataLoader or a dataset read in batches): its features would be "
                    "read once, freezing any random transform; pass tensors")
    if is_distributed():
        return skip("it is not supported under torch.distributed")
    try:  # split_model's "auto" holds the rules of where a cut applies (BatchNorm, convolutions, the head's share)
        split = split_model(work, at, fn, "config.frozen_prefix")
    except ValueError as exc:
        if explicit:
            raise
        info["frozen_prefix"] = {"at": at, "skipped": str(exc).removeprefix(f"{fn}: ")}
        return None
    return _Cut(split)


def _unwrap(model: nn.Module, fn: str) -> tuple[nn.Module, dict]:
    """``(the module inside a DistributedDataParallel wrapper, the wrapper's options that train's own
    wrapper keeps)``; a plain model gives ``(model, {})``. A wrapper on a process sub-group is refused
    (batches are split over the default group's ranks)."""
    from torch.nn.parallel import DistributedDataParallel

    if not isinstance(model, DistributedDataParallel):
        return model, {}
    group = getattr(model, "process_group", None)
    if group is not None and torch.distributed.get_world_size(group) != torch.distributed.get_world_size():
        raise ValueError(f"{fn}: the model's DistributedDataParallel runs on a process sub-group; {fn} splits "
                         "batches over the default group's ranks: wrap it on the default group or pass the plain model")
    options = {name: getattr(model, name) for name in ("find_unused_parameters", "broadcast_buffers",
                                                       "gradient_as_bucket_view", "static_graph")
               if isinstance(getattr(model, name, None), bool)}
    return model.module, options


def _ssd_tracked(model: nn.Module, data: RunData, cfg: Any, ctx: RunContext,
                 callback: Callable[[nn.Module, int, float], None] | None):
    """SSD with ``callback`` reported before and after (it takes no optimiser steps)."""
    if callback is None:
        return run_ssd(model, data, cfg, ctx)
    clock = StepClock(callback, ctx.device)
    clock.report(model, 0)
    outcome = run_ssd(model, data, cfg, ctx)
    clock.report(outcome.model, outcome.steps, final=True)
    ctx.info["eval_seconds"] = clock.paused
    return outcome


__all__ = [
    "AAMUFields",
    "ABadTeacherConfig",
    "AFinetuneConfig",
    "ANegGradPlusConfig",
    "APruneConfig",
    "AScrubConfig",
    "ASparseConfig",
    "BadTeacherConfig",
    "DistillConfig",
    "FinetuneConfig",
    "L1SparseConfig",
    "METHODS",
    "MethodSpec",
    "NegGradPlusConfig",
    "PruneConfig",
    "RetrainConfig",
    "SSDConfig",
    "ScrubConfig",
    "TrainConfig",
    "TrainModelConfig",
    "UnlearnResult",
    "accelerated",
    "available_methods",
    "config_class",
    "matched_recipe",
    "planned_steps",
    "presets",
    "train_model",
    "unlearn",
]
