"""Method configs: the settings every method shares and how a ``config`` argument becomes one.

:class:`RuntimeConfig` (how any method runs: precision, memory format, data placement),
:class:`TrainConfig` (what every training-based method adds: epochs, optimiser, schedule),
:class:`AAMUFields` (the A-AMU settings mixed into each accelerated method's config) and
:func:`resolve_config` (``None``, a dict of overrides or an instance -> a checked config).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from .._checks import plain_numbers
from ..recipe import RECIPE


@dataclass
class RuntimeConfig:
    """How a method runs, shared by every method's config (training-based ones and SSD).

    Attributes:
        amp: run forwards under ``torch.autocast`` (changes numerics; off by default).
        amp_dtype: ``"auto"`` (bfloat16 on CPU and on GPUs that support it, else float16 with a
            gradient scaler), ``"bfloat16"`` or ``"float16"``.
        channels_last: channels-last memory format for the model and 4-D batches.
        inference_mode: forwards that need no gradient (teachers, the unseen batch) run under
            ``torch.inference_mode`` instead of ``torch.no_grad`` (same numbers, less overhead).
        data_on_device: move in-memory data to the device once, before training, instead of
            per batch.
        inplace: train the given model instead of a deep copy (methods that start from a fresh
            model — retrain, distill — always return a new one).
    """

    amp: bool = False
    amp_dtype: str = "auto"
    channels_last: bool = False
    inference_mode: bool = True
    data_on_device: bool = True
    inplace: bool = False

    def check(self, fn: str) -> None:
        """Raise ``ValueError`` for out-of-range settings (``fn`` names the caller)."""
        if self.amp_dtype not in ("auto", "bfloat16", "float16"):
            raise ValueError(f"{fn}: config.amp_dtype must be 'auto', 'bfloat16' or 'float16', got {self.amp_dtype!r}")


@dataclass
class TrainConfig(RuntimeConfig):
    """Settings every training-based method shares (plus those of :class:`RuntimeConfig`).

    Attributes:
        epochs: passes over the retain set.
        batch_size: retain batch size ``B``.
        optimizer: ``"sgd"`` or ``"adam"`` (Adam with default betas).
        lr, momentum, weight_decay: optimiser settings (momentum is ignored by Adam).
        schedule: ``"constant"`` or ``"cosine"`` (per-step cosine decay to 0 after a linear warm-up
            of ``warmup_epochs`` epochs; the warm-up is cut to ``epochs - 1`` for short runs).
        fuse_forward: run the retain and forget batches of a step in one forward. Only for models
            without batch statistics (a BatchNorm in training mode makes every output depend on the
            batch); such models fall back to separate forwards with a warning.
        micro_batch: run forwards that need gradients in micro-batches of this many samples, each
            recomputed during the backward (activation checkpointing); ``0`` (default) is off. Same
            gradients up to float reassociation for models without batch statistics (BatchNorm in
            training mode is refused with a warning), fewer activations in memory, and on a CPU faster
            for big batches, whose activations fall out of cache: a 320-sample forward+backward of a
            width-64 ConvNet-3 ran 1.2x faster with ``micro_batch=32`` on a 2-core AVX-512 machine
            (the whole A-AMU step about 1.1x); batches of 64 or fewer only pay the recomputation.
    """

    epochs: int = 1
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "constant"
    warmup_epochs: int = 0
    fuse_forward: bool = False
    micro_batch: int = 0

    def check(self, fn: str) -> None:
        """Raise ``ValueError`` for out-of-range settings (``fn`` names the caller)."""
        super().check(fn)
        if self.epochs < 1:
            raise ValueError(f"{fn}: config.epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"{fn}: config.batch_size must be >= 1, got {self.batch_size}")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"{fn}: config.optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"{fn}: config.lr must be a finite number > 0, got {self.lr}")
        for name in ("momentum", "weight_decay"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{fn}: config.{name} must be a finite number >= 0, got {value}")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"{fn}: config.schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        if self.micro_batch < 0:
            raise ValueError(f"{fn}: config.micro_batch must be >= 0 (0 = off), got {self.micro_batch}")
        if self.warmup_epochs < 0:
            raise ValueError(f"{fn}: config.warmup_epochs must be >= 0, got {self.warmup_epochs}")


#: the regulariser's targets (``AAMUFields.target``, docs/method.md §7.7)
TARGETS = ("unseen", "matched", "matched_fixed")
#: the recipes ``config.request`` names (docs/method.md §7.6, §7.10)
REQUESTS = ("auto", "sample", "matched", "class")


@dataclass
class AAMUFields:
    """The A-AMU settings of docs/method.md §2.2-2.4, mixed into the config of every accelerated method
    (defaults: :data:`fastblend.recipe.RECIPE`; they are :class:`fastblend.AAMUStep`'s options).

    Attributes:
        lam: weight ``λ`` of the MMD² regulariser.
        k, kappa: sharpness and clamp of the loss-distribution transform ``g``.
        sigma: Gaussian kernel width of the MMD.
        steepen: how the retain-side loss is steepened (``"batch_mean_sq"``: square of the batch
            mean, the reference; see :func:`fastblend.aamu.steepen`).
        transform: how the loss-quantile transform ranks the losses: ``"per_set"`` (the paper's: each
            set against itself, blind to a shift of all of a set's losses) or ``"pooled"`` (both sets
            against their union, so the regulariser also closes a gap in level between the forget and
            unseen losses; docs/method.md §7.3).
        forget_batch_factor, unseen_batch_factor: forget and unseen batches hold this many times
            ``batch_size`` samples (4B in the reference).
        max_draw: the most forget and unseen samples a step draws (each; ``None``: no cap), default
            256 = 4·64: the reference's draws at ``batch_size`` 64, no more at a larger batch.
        unseen_refresh: draw and forward a new unseen batch every this many steps and reuse its
            logits in between (``1``, the default, is the paper's every-step batch). A departure
            from docs/method.md §2.4 when > 1: the unseen losses are up to ``k - 1`` steps stale
            and their classes follow the forget batch of the refresh step only.
        request: which recipe :func:`fastblend.unlearn` runs (docs/method.md §7.6, §7.10): ``"auto"`` (default)
            runs the whole-class recipe (:data:`fastblend.methods.aamu_configs.CLASS_REQUEST`) when every
            forget class is absent from the retain set, and on scattered samples the difficulty-matched recipe
            (:data:`fastblend.methods.aamu_configs.MATCHED_RECIPE`, for a_finetune, a_neggrad_plus, a_sparse and
            a_scrub) when the data allow it (every forget class still in the retain set, its labels readable, the
            unseen data holding every forget class) and the caller chose no other ``target``; else the paper's
            (``info["request_reason"]`` says why). ``"class"``, ``"matched"`` or ``"sample"`` (the paper's recipe)
            force one. A recipe only sets what the caller did not: keys missing from a dict ``config``, or fields
            left at their defaults in a config instance. The result's ``config.request`` is the request that ran.
        target: the regulariser's target (docs/method.md §7.7): ``"unseen"`` (default, the paper's: the
            unseen pool) or ``"matched"``: the unseen images as hard as the forget images, ranked by the
            model before unlearning (:func:`fastblend.difficulty.matched_unseen`, against the retain set's
            real images); with ``stop="auto"`` the stop compares the forget set with them too. For a forget
            set of atypical images, which a model that never saw them gets wrong far more often than
            typical unseen images. ``"matched_fixed"``: the same images with their losses under the
            untouched model (it never trained on them), fixed for the run: the target does not move with
            the model being trained.
        odds_weight: weight ``μ`` of a term matching the forget batch's true-class log-odds to the target's
            (quantile to quantile, ``W₂²``; docs/method.md §7.8); 0 (default): off, the paper's loss.
        odds_pairing: how that term pairs them: ``"quantile"`` (default, above) or ``"image"`` (docs/method.md
            §7.10): each forget image's log-odds against those of its own difficulty-matched held-out image under
            the untouched model, one-sided (``μ · mean max(0, φ_i − φ*_i)²``); needs ``target="matched_fixed"``.
        anchor_weight: weight ``ν`` of the held-out anchor (docs/method.md §7.9): ``ν · KL(p₀ ‖ p)`` on a batch of
            unseen images per step (the pool's images of every class the retain set still holds), ``p₀`` the
            untouched model's predictions on them, fixed; 0 (default): off, the paper's loss.
        frozen_prefix: train only the top of the model (docs/method.md §7.11): ``None`` trains every parameter, as
            the paper does (the field's default; the matched and whole-class recipes set ``"auto"`` where the
            caller did not: pass ``{"frozen_prefix": None}`` in a dict, since a config instance's ``None`` reads as
            left at its default); ``"auto"`` cuts the model (traced by ``torch.fx``, in eval mode) at the latest
            point whose remainder, the *head*, still holds half of its parameters in two or more layers and reads
            nothing from before it, and trains the whole model where that cannot apply; a module name
            (``"features.7"``, ``"layers.2"``) cuts after that module's output and is refused where it cannot. Every
            image set the run reads goes through the frozen prefix once (eval mode, no gradient) and the head trains
            on those features: a step and an auto-stop evaluation cost the head's forward (and backward) only. Needs
            the retain set in memory (tensors, a ``TensorDataset`` or ``Subset`` of one, a reduced retain set; not a
            ``DataLoader`` or another dataset, which stream their own batches) and one process. The features are
            held for the run: a prefix whose output is larger than its input costs that much more memory.
    """

    lam: float = RECIPE.lam
    k: float = RECIPE.k
    kappa: float = RECIPE.kappa
    sigma: float = RECIPE.sigma
    steepen: str = RECIPE.steepen
    transform: str = RECIPE.transform
    forget_batch_factor: int = RECIPE.forget_batch_factor
    unseen_batch_factor: int = RECIPE.unseen_batch_factor
    max_draw: int | None = RECIPE.max_draw
    unseen_refresh: int = RECIPE.unseen_refresh
    request: str = "auto"
    target: str = "unseen"
    odds_weight: float = 0.0
    odds_pairing: str = "quantile"
    anchor_weight: float = 0.0
    frozen_prefix: str | None = None

    def check(self, fn: str) -> None:
        """Check the base method's settings (the next class in the MRO), then these."""
        super().check(fn)
        if not (isinstance(self.lam, (int, float)) and math.isfinite(self.lam) and self.lam >= 0):
            raise ValueError(f"{fn}: config.lam must be a finite number >= 0, got {self.lam}")
        from ..aamu import check_odds_pairing, check_odds_weight

        check_odds_weight(fn, self.odds_weight, "config.odds_weight")
        check_odds_pairing(fn, self.odds_pairing, "config.odds_pairing")
        check_odds_weight(fn, self.anchor_weight, "config.anchor_weight")
        if self.forget_batch_factor < 1 or self.unseen_batch_factor < 1:
            raise ValueError(f"{fn}: config.forget_batch_factor and unseen_batch_factor must be >= 1, got "
                             f"{self.forget_batch_factor} and {self.unseen_batch_factor}")
        if self.max_draw is not None and (isinstance(self.max_draw, bool) or not isinstance(self.max_draw, int)
                                          or self.max_draw < 1):
            raise ValueError(f"{fn}: config.max_draw must be an int >= 1 or None (no cap), got {self.max_draw!r}")
        if self.transform not in ("per_set", "pooled"):
            raise ValueError(f"{fn}: config.transform must be 'per_set' or 'pooled', got {self.transform!r}")
        if self.request not in REQUESTS:
            raise ValueError(f"{fn}: config.request must be one of {REQUESTS}, got {self.request!r}")
        if self.target not in TARGETS:
            raise ValueError(f"{fn}: config.target must be one of {TARGETS}, got {self.target!r}")
        if not (self.request in ("auto", "matched") and self.target == "unseen"):  # else the request may set target
            check_odds_pairing(fn, self.odds_pairing, "config.odds_pairing", self.target, "config.target")
        if self.unseen_refresh < 1:
            raise ValueError(f"{fn}: config.unseen_refresh must be >= 1 (1 = every step), got {self.unseen_refresh}")
        if self.frozen_prefix is not None and (not isinstance(self.frozen_prefix, str) or not self.frozen_prefix):
            raise TypeError(f"{fn}: config.frozen_prefix must be None, 'auto' or a module name of the model, got "
                            f"{self.frozen_prefix!r}")


_SIMPLE_TYPES = {"int": "an int", "float": "a number", "str": "a str", "bool": "a bool", "None": "None"}


def _matches(value: Any, name: str) -> bool:
    if name == "int":
        return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
    if name == "float":
        return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
    if name == "str":
        return isinstance(value, str)
    if name == "bool":  # 0 and 1 too, as a JSON or hand-written config may say it
        return isinstance(value, (bool, np.bool_)) or (isinstance(value, numbers.Integral) and value in (0, 1))
    return value is None


def _check_types(config: dict, cls: type, fn: str) -> dict:
    """Each override of a plain-typed field (``int``, ``float``, ``str``, ``bool``, optionally ``| None``) of the
    dataclass ``cls`` is of that type (a ``TypeError`` naming the key, what it expected and what it got: a config
    file's ``"3"`` for an int, ``2.5`` for epochs); fields of other types are left to ``check``. Returns ``config``
    with 0 / 1 for a bool field read as ``False`` / ``True``."""
    annotations = {f.name: f.type for f in fields(cls)}
    for key, value in config.items():
        kinds = [part.strip() for part in str(annotations.get(key, "")).split("|")]
        if not kinds or not all(kind in _SIMPLE_TYPES for kind in kinds):
            continue
        if not any(_matches(value, kind) for kind in kinds):
            expected = " or ".join(_SIMPLE_TYPES[kind] for kind in kinds)
            raise TypeError(f"{fn}: config[{key!r}] must be {expected}, got {type(value).__name__} {value!r}")
        if "bool" in kinds and value is not None:
            config = {**config, key: bool(value)}  # 0 / 1 as False / True
    return config


def resolve_config(config: Any, cls: type, fn: str):
    """``None`` -> defaults; a dict -> defaults with those overrides; an instance of ``cls`` -> itself."""
    if config is None:
        cfg = cls()
    elif isinstance(config, dict):
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(config) - names)
        if unknown:
            raise ValueError(f"{fn}: unknown config keys {unknown} for {cls.__name__}; "
                             f"expected some of {sorted(names)}")
        config = plain_numbers({k: v.item() if isinstance(v, torch.Tensor) and v.dim() == 0 else v
                                for k, v in config.items()})  # numpy numbers and 0-d tensors as Python's
        config = _check_types(config, cls, fn)
        cfg = cls(**config)
    elif type(config) is cls:
        cfg = config
    else:
        raise TypeError(f"{fn}: config must be None, a dict of overrides or a {cls.__name__}; "
                        f"got {type(config).__name__}")
    cfg.check(fn)
    return cfg
