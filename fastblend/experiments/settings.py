"""The settings of an end-to-end experiment (`ExperimentConfig`), checked whole before any work
(`ConfigError` names the setting), and the demo's recipe (`DEMO`, `DEMO_RECIPE`)."""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from ..condensation.recipe import blend_lr
from ..dataset_readers import canonical_name
from ..datasets import dataset_info
from ..methods import TrainModelConfig, accelerated, config_class
from ..methods.config import resolve_config
from ..models import MODELS
from ..ops._dispatch import BACKENDS, available_backends
from ..tracking import Band

VARIANTS = ("original", "retrain", "base", "accelerated")


STAGES = ("features", "grouping", "split", "blend", "unlearning", "evaluation", "index")


#: stages outside a request's latency: evaluation, and the index built once per training set
NOT_PER_REQUEST = ("evaluation", "index")


# the type each ExperimentConfig setting must have (None: the setting may be None)
_PATH = (str, os.PathLike)


_TYPES: dict[str, tuple] = {
    "dataset": (str,), "data_root": (*_PATH, None), "per_class": (int, None), "limit": (int, None),
    "model": (str,), "width": (int,), "method": (str,), "accelerated_method": (str, None), "forget": (str,),
    "forget_fraction": (float, int), "forget_class": (int, None), "ipc": (int, None), "blend_iterations": (int,),
    "blend_width": (int,),
    "blend_amp": (bool,), "grouping_backend": (str,), "seeds": (list, tuple), "rounds": (int,),
    "round_mode": (str,), "run_retrain": (bool,), "run_base": (bool,), "train_config": (dict,),
    "retrain_config": (dict,), "base_config": (dict,), "accelerated_config": (dict,), "device": (str, None),
    "out": _PATH, "cache_dir": (*_PATH, None), "plots": (bool,), "quiet": (bool,),
    "base_budget": (str, float, int, None), "track": (bool,), "track_evaluations": (int,),
    "track_samples": (int, None), "band": (dict,),
    "retrain_seeds": (int,), "band_kind": (str,), "band_z": (float, int),
    "band_floor": (float, int), "mia_statistic": (str,), "mia_min_group": (int,), "hard_pool": (int,),
    "klom_estimator": (str,), "klom_retain": (int,), "stop": (str,),
}


class ConfigError(ValueError):
    """An :class:`ExperimentConfig` setting that cannot run; ``setting`` names it (a field name, or
    ``FASTBLEND_BACKEND`` for the environment variable)."""

    def __init__(self, setting: str, message: str):
        super().__init__(f"ExperimentConfig: {message}")
        self.setting = setting


def _is(value: Any, kinds: tuple) -> bool:
    if value is None:
        return None in kinds
    if isinstance(value, bool):  # bool is an int subclass: only a bool setting takes one
        return bool in kinds
    return isinstance(value, tuple(k for k in kinds if k is not None))


@dataclass
class ExperimentConfig:
    """Every setting of a run; saved next to the results.

    ``*_config`` dicts override the method configs' docs/method.md defaults (e.g. ``{"epochs": 5}``).
    ``ipc=None`` picks about five images per cluster (the paper's CIFAR-10 ratio) unless the data
    set has a paper value and the full data is used.
    """

    dataset: str = "animal-mnist"
    data_root: str | None = None
    per_class: int | None = None
    limit: int | None = None
    model: str = "convnet3"
    width: int = 128
    method: str = "finetune"
    accelerated_method: str | None = None
    forget: str = "uniform"
    forget_fraction: float = 0.1
    forget_class: int | None = None
    ipc: int | None = None
    blend_iterations: int = 12
    #: width of Blend's random ConvNet-3 matcher (128: the paper's; the ``fast`` preset's 64)
    blend_width: int = 128
    blend_amp: bool = False
    grouping_backend: str = "auto"
    seeds: list[int] = field(default_factory=lambda: [0])
    rounds: int = 1
    round_mode: str = "cached"
    run_retrain: bool = True
    run_base: bool = True
    train_config: dict = field(default_factory=lambda: {"epochs": 10, "lr": 0.05, "batch_size": 128,
                                                        "schedule": "cosine", "warmup_epochs": 1})
    retrain_config: dict = field(default_factory=dict)
    base_config: dict = field(default_factory=dict)
    accelerated_config: dict = field(default_factory=dict)
    device: str | None = None
    out: str = "fastblend-out"
    cache_dir: str | None = None
    plots: bool = True
    quiet: bool = False
    track: bool = True
    track_evaluations: int = 30
    track_samples: int | None = 2000
    band: dict = field(default_factory=lambda: Band().as_dict())
    #: stop the base method once its per-request time reaches this many seconds, or ``"retrain"``:
    #: Retrain's own time (a method that is not in Retrain's band by then loses to retraining);
    #: ``None``: run its whole schedule. Needs ``track`` (the stop is decided at an evaluation).
    base_budget: str | float | None = None
    #: Retrain's seed ensemble (docs/method.md §4.1): ``retrain_seeds`` models on the same split, the
    #: first the run's own (timed) Retrain, the others cached; they define the band and KLOM's reference
    retrain_seeds: int = 3
    #: ``"seeds"``: the band from the ensemble, ``[min − m, max + m]``, ``m = max(band_floor, band_z · se)``;
    #: ``"fixed"``: the run's Retrain final ± ``band`` (the old band, an option)
    band_kind: str = "seeds"
    band_z: float = 1.96
    band_floor: float = 0.5
    #: the MIA the tables use (docs/method.md §4.3): ``"auc"`` (direct AUC of the log-odds) or ``"paper"``
    #: (§4's cross-validated logistic regression); both are in the results files
    mia_statistic: str = "auc"
    #: an MIA group smaller than this warns and is marked (``mia_small``)
    mia_min_group: int = 200
    #: ``forget="hard"``: the candidate pool is this many times the forget set (docs/method.md §6)
    hard_pool: int = 4
    #: KLOM's estimator (``"gaussian"`` or ``"histogram"``) and the size of its seeded retain sample
    klom_estimator: str = "gaussian"
    klom_retain: int = 1000
    #: how the base and accelerated variants end (docs/method.md §4.5): ``"auto"`` (:class:`fastblend.AutoStop`:
    #: as soon as the forget set behaves like held-out data, no Retrain input; the budget stays the recipe's,
    #: and the base method's ``base_budget``) or ``"none"`` (the whole recipe). Retrain always runs whole. The
    #: oracle time to Retrain's band is reported beside it either way.
    stop: str = "auto"

    def check(self) -> None:
        """Validate every setting without loading data or training: types, names (data set, model,
        methods, backends), ranges, the method configs' keys and values, the device and
        ``$FASTBLEND_BACKEND``. Raises :class:`ConfigError` (a ``ValueError``) naming the setting."""
        for name, kinds in _TYPES.items():
            value = getattr(self, name)
            if not _is(value, kinds):
                expected = " or ".join("None" if k is None else k.__name__ for k in kinds)
                raise ConfigError(name, f"{name} must be {expected}, got {type(value).__name__} {value!r}")
        if not self.seeds or not all(_is(s, (int,)) for s in self.seeds) or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError("seeds", f"seeds must be distinct ints, at least one, got {self.seeds!r}")
        for name in ("per_class", "limit", "width", "rounds", "ipc"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(name, f"{name} must be >= 1" + (" (or None for the default)" if name == "ipc"
                                                                    else "") + f", got {value}")
        if self.blend_width < 1:
            raise ConfigError("blend_width", f"blend_width must be >= 1, got {self.blend_width}")
        if self.blend_iterations < 0:
            raise ConfigError("blend_iterations", f"blend_iterations must be >= 0, got {self.blend_iterations}")
        if self.ipc is not None:
            try:
                blend_lr(self.ipc)
            except ValueError:
                raise ConfigError("ipc", f"ipc {self.ipc} is beyond what the reference Blend learning rate "
                                  "(docs/method.md §1.3) serves: at most 5277") from None
        if not str(self.out):
            raise ConfigError("out", "out must name a folder, got ''")
        choices = {"round_mode": ("cached", "reference"), "forget": ("uniform", "classwise", "hard"),
                   "grouping_backend": ("auto", "faiss", "torch"), "band_kind": ("seeds", "fixed"),
                   "mia_statistic": ("auc", "paper"), "klom_estimator": ("gaussian", "histogram"),
                   "stop": ("auto", "none")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(name, f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        try:
            dataset = canonical_name(self.dataset)
        except ValueError as exc:
            raise ConfigError("dataset", str(exc)) from None
        if self.model.lower().replace("-", "").replace("_", "") not in MODELS:
            raise ConfigError("model", f"model must be one of {sorted(MODELS)}, got {self.model!r}")
        if not 0 < self.forget_fraction < 1:
            raise ConfigError("forget_fraction", f"forget_fraction must be in (0, 1), got {self.forget_fraction}")
        classes = len(dataset_info(dataset).class_names)
        if self.forget_class is not None and (self.forget != "classwise" or not 0 <= self.forget_class < classes):
            raise ConfigError("forget_class", f"forget_class must be in [0, {classes}) with forget='classwise', "
                              f"got {self.forget_class} with forget={self.forget!r}")
        if self.base_budget is not None:
            if isinstance(self.base_budget, bool):
                raise ConfigError("base_budget", f"base_budget must be None, 'retrain' or a positive number of "
                                  f"seconds, got {self.base_budget!r}")
            if isinstance(self.base_budget, str) and self.base_budget != "retrain":
                raise ConfigError("base_budget", f"base_budget must be None, 'retrain' or a positive number of "
                                  f"seconds, got {self.base_budget!r}")
            if not isinstance(self.base_budget, str) and not (math.isfinite(self.base_budget) and self.base_budget > 0):
                raise ConfigError("base_budget", f"base_budget must be a positive number of seconds, got "
                                  f"{self.base_budget!r}")
            if not self.track:
                raise ConfigError("base_budget", "base_budget needs track=True (the budget is checked when the "
                                  "quality curve is evaluated)")
            if self.base_budget == "retrain" and not self.run_retrain:
                raise ConfigError("base_budget", "base_budget='retrain' needs run_retrain=True")
        for name in ("retrain_seeds", "mia_min_group", "hard_pool", "klom_retain"):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("band_z", "band_floor"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ConfigError(name, f"{name} must be a finite number >= 0, got {getattr(self, name)!r}")
        if self.forget == "hard" and not self.forget_fraction * self.hard_pool < 1:
            raise ConfigError("hard_pool", f"forget='hard' draws its forget set from a pool of hard_pool x "
                              f"forget_fraction of the training set, which must be < 1; got {self.hard_pool} x "
                              f"{self.forget_fraction}")
        if self.track_evaluations < 1:
            raise ConfigError("track_evaluations", f"track_evaluations must be >= 1, got {self.track_evaluations}")
        if self.track_samples is not None and self.track_samples < 5:  # what Tracker's max_samples takes
            raise ConfigError("track_samples", f"track_samples must be None or an int >= 5 (the MIA's folds), got "
                              f"{self.track_samples}")
        try:
            Band(**self.band)
        except (TypeError, ValueError) as exc:
            raise ConfigError("band", f"band: {exc}") from None
        self._check_methods()
        most = self._max_forget(classes)
        if most is not None and self.rounds > most:
            raise ConfigError("rounds", f"rounds ({self.rounds}) must be at most the number of forget samples "
                              f"(at most {most} with these settings)")
        try:
            resolve_device(self.device)
        except (RuntimeError, ValueError) as exc:
            raise ConfigError("device", f"device {self.device!r}: {exc}") from None
        backend = os.environ.get("FASTBLEND_BACKEND", "auto").strip().lower() or "auto"
        why = "unknown" if backend not in BACKENDS + ("auto",) else available_backends().get(backend)
        if why is not None:
            raise ConfigError("FASTBLEND_BACKEND", f"$FASTBLEND_BACKEND={backend!r} cannot be used ({why}); "
                              f"expected auto or one of {BACKENDS} available here")

    def _check_methods(self) -> None:
        try:
            base_cls = config_class(self.method)
        except ValueError as exc:
            raise ConfigError("method", str(exc)) from None
        if self.accelerated_method is not None:
            try:
                acc_cls = config_class(self.accelerated_method)
            except ValueError as exc:
                raise ConfigError("accelerated_method", str(exc)) from None
        else:
            try:
                acc_cls = config_class(accelerated(self.method))
            except ValueError:
                raise ConfigError("method", f"method {self.method!r} has no accelerated variant (retrain, distill "
                                  "and ssd have none); name one with accelerated_method "
                                  "(--accelerated-method), e.g. 'a_finetune'") from None
        for name, cls in (("train_config", TrainModelConfig), ("retrain_config", config_class("retrain")),
                          ("base_config", base_cls), ("accelerated_config", acc_cls)):
            try:
                resolved = resolve_config(getattr(self, name) or None, cls, f"ExperimentConfig {name}")
            except (TypeError, ValueError) as exc:
                raise ConfigError(name, str(exc).removeprefix("ExperimentConfig ")) from None
            if name == "accelerated_config" and getattr(resolved, "request", None) == "matched":  # before training
                from ..methods.aamu_configs import MATCHED_METHODS, chose_other_target

                acc = self.accelerated_method or accelerated(self.method)
                if acc not in MATCHED_METHODS:
                    raise ConfigError(name, f"{name} request='matched': {acc} has no difficulty-matched recipe (it is "
                                      f"measured for {', '.join(MATCHED_METHODS)}); use request='sample' or 'auto'")
                if self.forget == "classwise":
                    raise ConfigError(name, f"{name} request='matched' is for scattered samples: its fixed target "
                                      "refuses a class forgotten whole (forget='classwise'); use request='auto'")
                if chose_other_target(getattr(self, name), resolved):
                    raise ConfigError(name, f"{name} request='matched' runs the fixed matched target, and target is "
                                      f"{resolved.target!r}; leave target out or use request='sample'")
            if self.forget == "classwise" and getattr(resolved, "target", None) == "matched_fixed":  # before training
                raise ConfigError(name, f"{name} target='matched_fixed' fixes the target at the untouched model's "
                                  "losses, which a class forgotten whole (forget='classwise') refuses; use "
                                  "target='unseen' or 'matched' there")

    def _max_forget(self, classes: int) -> int | None:
        """An upper bound on the forget set's size where the settings give one (else ``None``)."""
        sizes = [v for v in (self.limit, None if self.per_class is None else self.per_class * classes) if v]
        if not sizes:
            return None
        if self.forget == "classwise":
            return min([*sizes, self.per_class or sizes[0]])
        n = min(sizes)
        return max(min(math.floor(self.forget_fraction * n + 0.5), n - 1), 1)

    @property
    def accelerated(self) -> str:
        """The accelerated method: ``accelerated_method``, else the methods package's accelerated
        variant of ``method`` (``ValueError`` for retrain, distill and ssd, which have none)."""
        return self.accelerated_method or accelerated(self.method)


#: Blend settings by name (``--blend-preset``): ``paper`` (docs/method.md §1.3: a width-128 matcher, 12
#: iterations) and ``fast`` (a width-64 matcher, 3 iterations: about a quarter of the index's Blend cost
#: on the demo; README "Blend's own cost" gives the measured quality, a departure from the reference).
BLEND_PRESETS = {"paper": {"blend_width": 128, "blend_iterations": 12},
                 "fast": {"blend_width": 64, "blend_iterations": 3}}


#: The demo's training recipe, for the original model and for Retrain alike: SGD (momentum 0.9, weight
#: decay 5e-4) at lr 0.05, batch 128, one warm-up epoch then cosine decay, 20 epochs — run to
#: convergence (training accuracy ~100%, test accuracy flat over the last epochs of Retrain's curve).
DEMO_RECIPE = {"epochs": 20, "lr": 0.05, "batch_size": 128, "schedule": "cosine", "warmup_epochs": 1}


DEMO = ExperimentConfig(
    width=64,
    base_budget="retrain",
    train_config=dict(DEMO_RECIPE),
    retrain_config=dict(DEMO_RECIPE),
    base_config={},
    accelerated_config={},
)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def with_overrides(base: ExperimentConfig, **overrides: Any) -> ExperimentConfig:
    cfg = copy.deepcopy(base)
    for key, value in overrides.items():
        if not hasattr(cfg, key):
            raise ValueError(f"ExperimentConfig has no setting {key!r}")
        setattr(cfg, key, value)
    return cfg
