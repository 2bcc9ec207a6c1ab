"""A stop that needs no Retrain: decide when an unlearning run is done from the data a user has.

:class:`AutoStop` is a step callback (``unlearn(..., stop="auto")`` builds one; the drop-in and the command
line expose it too). At every evaluation it compares the forget set with held-out data of the same classes
(the unseen pool: images the model never trained on) under the model being trained, and checks that the
model has not lost accuracy on held-out data. Retrain's numbers are never an input: Retrain's seed band is
only the judge of where the stop lands (docs/method.md §4.5).

What "done" means depends on the request (docs/method.md §4.5):

- **scattered samples** (``kind="sample"``: some images of classes the retain set still holds). A model
  that never trained on them treats them like other unseen images of their classes. The run is done when
  (a) forget accuracy is at most the held-out accuracy of the same classes (class-weighted to the forget
  set's class mix) plus one standard error of their difference; (b) the membership attack does not see
  the forget set as members: the MIA (:func:`fastblend.evaluation.mia_with_interval`, direct AUC, forget
  against held-out) is at most 50 plus one of its standard errors (its interval is recorded); (c) held-out
  accuracy has not fallen below its value before unlearning by more than ``max(max_drop, z·se)`` points.
- **a whole class** (``kind="class"``: every training image of a class is forgotten, so the retain set
  holds none). A model that never saw the class never predicts it, and cannot tell its training images from
  other images of it: done when the forgotten classes' accuracy, on the forget set and on held-out images of
  those classes, is at most ``class_floor`` percent, the MIA of the forget set against those held-out images is
  at most 50 plus one of its standard errors (as (b)), and (c) holds on the held-out images of the other
  classes.

A request of both kinds (some classes whole, others in part) applies each rule to its part. The rule must
hold at ``patience`` consecutive evaluations. A run that ends without the rule holding (its recipe's steps
spent) returns, with ``keep_closest`` (default), the model of the evaluation that came closest to the rule:
:meth:`AutoStop.finish`, which ``unlearn`` calls. :attr:`AutoStop.history` keeps every evaluation's statistics
(accuracies, the MIA with its interval, the Kolmogorov-Smirnov distance between the forget and held-out
loss distributions, the quantity A-AMU's regulariser matches) so a user can see why it stopped or not.
"""

from __future__ import annotations

import inspect
import math
import numbers
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ._checks import plain_number
from .data_adapter import model_device
from .datasets import whole_classes
from .distributed import broadcast_object
from .evaluation import SmallGroupWarning, binomial_se, mia_with_interval
from .metrics import predict_logits
from .tracking import _subset_rows

__all__ = ["AutoStop", "AutoStopCheck"]

KINDS = ("auto", "sample", "class")


@dataclass
class AutoStopCheck:
    """One evaluation of :class:`AutoStop`: the statistics and whether each part of the rule held."""

    step: int
    seconds: float
    forget_acc: float
    heldout_acc: float
    heldout_same_class_acc: float
    mia: float
    mia_low: float
    mia_high: float
    loss_ks: float
    conditions: dict[str, bool]
    done: bool
    #: how far the model is from the rule: each failing condition's shortfall in its own standard errors,
    #: summed (0 when every condition holds; ``inf`` before ``min_steps``)
    shortfall: float = 0.0
    #: ``True`` when (c) was not measured (``staged``): before ``min_steps``, or when a forget-side condition had
    #: failed (with ``defer_kept=False``: and the evaluation could not be the closest so far); ``heldout_acc`` is
    #: NaN, ``conditions`` lacks ``"heldout_kept"`` and ``shortfall`` is a lower bound. :meth:`AutoStop.finish` and
    #: :meth:`AutoStop.recover` may measure (c) later for the kept and final evaluations (then ``False``)
    partial: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _pair(data: Any, limit: int | None, gen: torch.Generator, arg: str, rows: bool = False) -> Any:
    """``(images, labels)`` of at most ``limit`` rows of ``data``; with ``rows``, also which rows of ``data``
    they are (``None``: all, in order)."""
    (x, y), keep = _subset_rows(data, limit, gen, arg, "AutoStop")
    return ((x, y.cpu().long()), keep) if rows else (x, y.cpu().long())


def _labels_of(retain_labels: Any) -> torch.Tensor | None:
    if retain_labels is None:
        return None
    if isinstance(retain_labels, torch.Tensor):
        y = retain_labels
    elif isinstance(retain_labels, (tuple, list)) and len(retain_labels) >= 2 and isinstance(retain_labels[1],
                                                                                                torch.Tensor):
        y = retain_labels[1]
    else:
        raise TypeError("AutoStop: retain_labels must be a 1-D integer tensor of the retain set's labels or an "
                        f"(images, labels) pair, got {type(retain_labels).__name__}")
    if y.dim() != 1 or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"AutoStop: retain_labels must be a 1-D integer tensor, got {y.dtype} of shape {list(y.shape)}")
    return y.detach().cpu().long()


def _ks(a: torch.Tensor, b: torch.Tensor) -> float:
    """Two-sample Kolmogorov-Smirnov distance between the samples ``a`` and ``b`` (1-D)."""
    if a.numel() == 0 or b.numel() == 0:
        return math.nan
    grid = torch.cat([a, b]).sort().values
    ca = torch.searchsorted(a.sort().values.contiguous(), grid, right=True).double() / a.numel()
    cb = torch.searchsorted(b.sort().values.contiguous(), grid, right=True).double() / b.numel()
    return float((ca - cb).abs().max())


def _under(value: float, limit: float, se: float, into: list[float]) -> bool:
    """``value <= limit``; appends to ``into`` its shortfall ``(value − limit) / se`` when not (infinite for a NaN)."""
    if not value <= limit:
        gap = (value - limit) / max(se, 1e-6)
        into.append(gap if math.isfinite(gap) else math.inf)
    return value <= limit


def _takes_full_below(check: Any) -> bool:
    """Whether a ``check`` method accepts ``full_below`` (a subclass may override it with the older signature)."""
    try:
        params = inspect.signature(check).parameters
    except (TypeError, ValueError):
        return False
    return "full_below" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"{x.dtype} of shape {list(x.shape)}"
    return type(x).__name__


def _distinct_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(keep, inverse)``: the first row of each group of identical rows of ``x`` and, for every row, its
    group's position in ``keep`` (``x[keep][inverse]`` equals ``x``). Rows are grouped by two seeded random
    projections and every group is checked for equality, so no two different rows ever share a group."""
    n = x.shape[0]
    flat = x.reshape(n, -1)
    if n < 2 or flat.shape[1] == 0:
        return torch.arange(n), torch.arange(n)
    gen = torch.Generator().manual_seed(0)
    proj = torch.randn(flat.shape[1], 2, generator=gen, dtype=torch.float64).to(flat.device)
    chunk = max(1, (1 << 22) // flat.shape[1])  # rows at a time: float64 copies of about 32 MB
    keys = torch.cat([(flat[s:s + chunk].double() @ proj).cpu() for s in range(0, n, chunk)])
    _, group = torch.unique(keys, dim=0, return_inverse=True)
    first = torch.full((int(group.max()) + 1,), n, dtype=torch.long).scatter_reduce(0, group, torch.arange(n),
                                                                                  reduce="amin")
    rep = first[group].to(flat.device)
    if not all(bool((flat[s:s + chunk] == flat[rep[s:s + chunk]]).all()) for s in range(0, n, chunk)):
        return torch.arange(n), torch.arange(n)  # a projection collision (or NaN pixels): forward every row
    keep = first.sort().values
    position = torch.empty(n, dtype=torch.long)
    position[keep] = torch.arange(keep.numel())
    return keep, position[first[group]]


def _beats(a: AutoStopCheck, b: AutoStopCheck) -> bool:
    """Whether the evaluation ``a`` is closer to the rule than ``b``: a smaller shortfall, or as small and later."""
    return a.shortfall < b.shortfall or (a.shortfall == b.shortfall and a.step > b.step)


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``model``'s ``state_dict`` on its device."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _fold_pruning(weights: dict[str, torch.Tensor], current: dict[str, Any]) -> dict[str, torch.Tensor]:
    """``weights`` in the key layout of ``current``: a copy taken while ``torch.nn.utils.prune`` reparametrised a
    weight (``name_orig`` and ``name_mask``) whose pruning was made permanent since (``name``) is folded into
    ``name = name_orig · name_mask``."""
    out = dict(weights)
    for key in [k for k in weights if k.endswith("_orig")]:
        base, mask = key[: -len("_orig")], key[: -len("_orig")] + "_mask"
        if base in current and key not in current and mask in weights:
            out[base] = weights[key] * weights[mask]
            del out[key], out[mask]
    return out


class AutoStop:
    """Step callback ``(model, step, seconds) -> bool`` that says when unlearning is done, without Retrain.

    Args:
        forget: the forget set, ``(images, labels)`` tensors or a map-style ``Dataset`` of ``(image, label)``.
        heldout: in-distribution images the model never trained on, with labels (the unseen pool), in the
            same forms; it needs images of the forget set's classes.
        retain_labels: the retain set's labels (a 1-D tensor or an ``(images, labels)`` pair), used only to
            tell a whole-class request from scattered samples when ``kind="auto"``.
        kind: ``"auto"`` (from ``retain_labels``: a forget class with no retain image is forgotten whole),
            ``"sample"`` or ``"class"`` (every forget class forgotten whole).
        max_samples: evaluate on at most this many forget and held-out samples (a subset drawn once with
            ``seed``).
        z, max_drop: held-out accuracy may fall by ``max(max_drop, z · se)`` points (se: its binomial standard
            error, floored at 0.5): a model trained without the forget set generalises a little worse than
            one trained with it (on the reduced demo Retrain's models score about 2 points below the
            original), so the untouched model's accuracy is not the level to keep exactly.
        match_z, slack: forget accuracy may exceed held-out accuracy, and the MIA 50, by ``slack + match_z · se``
            points (``se``: the standard error of the difference, binomial, each part floored at 0.5; the
            MIA's bootstrap one). 1 standard error: a forget set that a model never saw sits at the held-out
            level only in expectation, so at 0 a finite forget set often never stops; at 1.96 the rule
            stops while forget accuracy is still well above that level.
        class_floor: whole-class rule: the forgotten classes' accuracy (percent) at or below which the class
            counts as no longer predicted (0: none of their images is; a model that never saw a class).
        patience: the rule must hold at this many consecutive evaluations.
        min_steps: never stop before this many optimiser steps (1: the untouched model is never returned).
        evaluations: how many evaluations ``unlearn(..., stop=...)`` spreads over the planned steps when it
            is given no ``eval_every``.
        seed: seeds the subsets and the MIA's bootstrap.
        matched_heldout: held-out images to compare the forget set with, in place of ``heldout``, for the
            scattered-samples rule's (a) and (b) (``None``: ``heldout``). The difficulty-matched target
            (:func:`fastblend.difficulty.matched_unseen`: held-out images as hard as the forget images, so an
            atypical forget set is done when it looks like atypical held-out images, not like typical ones).
            ``heldout`` still gives (c) and the whole-class rule.
        staged: forward first what the forget-side conditions need (the forget images, the matched images, the
            held-out images of the forget classes) and the rest of ``heldout`` (for (c) alone) only when those
            conditions hold (a possible stop), or, with ``defer_kept=False``, when the evaluation could be the
            closest so far: the same stops as a full evaluation at fewer forwards (on an atypical request the
            stop's evaluations shrink to about a third); the evaluations that skip it are recorded with
            ``partial=True``. :meth:`check` always evaluates everything.
        defer_kept: with ``staged``, measure (c) for the closest evaluation only when the run ends without a stop
            (:meth:`finish`): the closest and the runner-up are kept on the shortfall their evaluations measured
            (the forget side's, a lower bound). At the end, when the closest is not the final evaluation, (c) is
            measured for the final model and, with their weights, for those kept ones that could still be closer,
            and the closest of the three with (c) counted is handed back; when the final evaluation is the closest
            on what it measured, the final model stays and (c) is not measured. :meth:`recover` measures the kept
            one's (c) after loading it and says in :attr:`reason` if its held-out accuracy fell. Stops are those of
            a full evaluation; the model handed back differs from ``defer_kept=False``'s (the exact closest, which
            measures (c) at every evaluation that could be the closest) only where the two evaluations closest on
            the forget side (or the final one, when it is the closest there) lost held-out accuracy. Costs a second
            copy of the weights and at most three forwards of (c)'s images at the end instead of one at almost every
            evaluation of a run nearing the rule.
        keep_closest: keep a copy of the weights at the evaluation closest to the rule (the smallest
            :attr:`AutoStopCheck.shortfall`, the later one on a tie; never before ``min_steps``), so that a run
            whose recipe ends without the rule holding, e.g. one that passed near it and moved away, returns
            that model (:meth:`finish`; with ``defer_kept``, closest on what was measured, see there). Costs one
            copy of the model's ``state_dict`` on its device (two for a moment in :meth:`finish`).

    The first call (``unlearn`` makes it with the untouched model, before any step), or :meth:`start`,
    records the held-out accuracy the rule must keep. After a run: :attr:`stopped`, :attr:`stop_step`,
    :attr:`stop_seconds` (the method's time at the stop, this callback's own evaluations included, since a
    user pays for them), :attr:`reason`, :attr:`history` and :meth:`summary`. A hand-written loop that ran out
    of steps without a stop calls :meth:`finish` to get the closest evaluation's model back, and one that failed
    (diverged, or interrupted) :meth:`recover`.
    """

    def __init__(self, forget: Any, heldout: Any, retain_labels: Any = None, *, kind: str = "auto",
                 max_samples: int | None = 1000, z: float = 1.96, match_z: float = 1.0, slack: float = 0.0,
                 max_drop: float = 3.0,
                 class_floor: float = 0.0,
                 patience: int = 1,
                 min_steps: int = 1, evaluations: int = 8, seed: int = 0, matched_heldout: Any = None,
                 keep_closest: bool = True, staged: bool = True, defer_kept: bool = True):
        fn = "AutoStop"
        max_samples, z, match_z, slack, max_drop, class_floor, patience, min_steps, evaluations, seed = map(
            plain_number, (max_samples, z, match_z, slack, max_drop, class_floor, patience, min_steps, evaluations,
                           seed))
        if kind not in KINDS:
            raise ValueError(f"{fn}: kind must be one of {KINDS}, got {kind!r}")
        if max_samples is not None and (isinstance(max_samples, bool) or not isinstance(max_samples, numbers.Integral)
                                        or max_samples < 10):
            raise ValueError(f"{fn}: max_samples must be None or an int >= 10, got {max_samples!r}")
        for name, value, low in (("z", z, 0.0), ("match_z", match_z, 0.0), ("slack", slack, 0.0),
                                 ("max_drop", max_drop, 0.0),
                                 ("class_floor", class_floor, 0.0)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
                    or value < low:
                raise ValueError(f"{fn}: {name} must be a finite number >= {low}, got {value!r}")
        for name, value, low in (("patience", patience, 1), ("min_steps", min_steps, 0),
                                 ("evaluations", evaluations, 1), ("seed", seed, None)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or (low is not None and value < low):
                raise ValueError(f"{fn}: {name} must be an int" + (f" >= {low}" if low is not None else "")
                                 + f", got {value!r}")
        for name, flag in (("keep_closest", keep_closest), ("staged", staged), ("defer_kept", defer_kept)):
            if not isinstance(flag, (bool, np.bool_)):
                raise TypeError(f"{fn}: {name} must be a bool, got {type(flag).__name__}")
        self.keep_closest, self.staged, self.defer_kept = bool(keep_closest), bool(staged), bool(defer_kept)
        self._closest: tuple[AutoStopCheck, dict[str, torch.Tensor]] | None = None  # (its evaluation, weights)
        # defer_kept: the runner-up on the shortfall measured, with its weights (resolved in finish, with (c))
        self._runner: tuple[AutoStopCheck, dict[str, torch.Tensor]] | None = None
        self.restored_step: int | None = None  # the step whose weights finish() or recover() put back
        gen = torch.Generator().manual_seed(int(seed))
        limit = None if max_samples is None else int(max_samples)
        self.forget = _pair(forget, limit, gen, "forget")
        self.heldout, self._heldout_rows = _pair(heldout, limit, gen, "heldout", rows=True)
        self._heldout_total = len(heldout) if isinstance(heldout, Dataset) else int(heldout[1].shape[0])
        self.matched = None if matched_heldout is None else _pair(matched_heldout, limit, gen, "matched_heldout")
        fy, hy = self.forget[1], self.heldout[1]
        if fy.numel() < 5:
            raise ValueError(f"{fn}: forget must hold at least 5 samples, got {fy.numel()}")
        classes = torch.unique(fy)
        missing = [int(c) for c in classes if not bool((hy == c).any())]
        if missing:
            drawn = "" if self._heldout_rows is None else (
                f" among the {hy.numel()} drawn by max_samples={max_samples} (raise it, or pass held-out images of "
                "every forget class)")
            raise ValueError(f"{fn}: heldout has no images of the forget classes {missing}{drawn}; the stop compares "
                             "the forget set with unseen images of its own classes")
        if self.matched is not None:
            if not bool(torch.isin(classes, self.matched[1]).any()):
                raise ValueError(f"{fn}: matched_heldout has no images of the forget classes "
                                 f"{[int(c) for c in classes]}")
            # a forget class the matched images lack (e.g. dropped by the subset) is compared with its held-out
            # images, so every forget row has a reference of its own class
            lacking = torch.isin(hy, classes[~torch.isin(classes, self.matched[1])])
            if bool(lacking.any()):
                self.matched = (torch.cat([self.matched[0], self.heldout[0][lacking.to(self.heldout[0].device)]
                                           .to(self.matched[0].device, self.matched[0].dtype)]),
                                torch.cat([self.matched[1], hy[lacking]]))
        retained = _labels_of(retain_labels)
        if kind == "auto":
            if retained is None:
                raise ValueError(f"{fn}: kind='auto' needs retain_labels to tell a whole-class request from "
                                 "scattered samples; pass retain_labels or kind='sample'/'class'")
            whole = whole_classes(classes, retained)
        elif kind == "class":
            whole = [int(c) for c in classes]
        else:
            whole = []
        self.whole_classes = whole
        self.kind = "class" if len(whole) == len(classes) else "sample" if not whole else "mixed"
        # the held-out rows the forget-side conditions read, forwarded at every evaluation (the rest only for (c)):
        # those of the whole classes, and of every forget class when no matched images stand in for them
        self._first_rows = torch.isin(hy, torch.tensor(whole if self.matched is not None else classes.tolist(),
                                                       dtype=torch.long))
        if self.matched is not None:  # a matched image drawn for several forget images is forwarded once
            keep, self._matched_inverse = _distinct_rows(self.matched[0])
            self._matched_distinct = self.matched[0][keep.to(self.matched[0].device)]
        self.z, self.match_z, self.slack = float(z), float(match_z), float(slack)
        self.max_drop, self.class_floor = float(max_drop), float(class_floor)
        self.patience, self.min_steps, self.evaluations, self.seed = int(patience), int(min_steps), int(evaluations), \
            int(seed)
        self.baseline: float | None = None
        self._untouched: nn.Module | None = None  # start(defer_baseline=True)'s model, until the baseline is measured
        self._untouched_versions: list[int] = []  # its parameters' version counters then (changed: it was trained)
        self._finished = False  # finish() ran for this run
        self.history: list[AutoStopCheck] = []
        self.stopped = False
        self.stop_step: int | None = None
        self.stop_seconds: float | None = None
        self.reason = "not evaluated yet"
        self.eval_seconds = 0.0
        self._run = 0
        self._baseline_width: int | None = None  # the width of start()'s heldout_logits, checked at the first check
        kept = ~torch.isin(hy, torch.tensor(whole, dtype=torch.long))
        if not bool(kept.any()):
            warnings.warn(f"{fn}: heldout holds images of the classes forgotten whole ({whole}) only, so rule (c) "
                          "(held-out accuracy kept on the other classes) cannot be checked; pass held-out images of "
                          "the classes the model keeps", UserWarning, stacklevel=2)

    # ------------------------------------------------------------------------------------------------
    def _held_out_accuracy(self, correct_h: torch.Tensor) -> tuple[float, int]:
        """Held-out accuracy on the classes the model still has to predict (all, less whole forgotten ones)."""
        hy = self.heldout[1]
        keep = ~torch.isin(hy, torch.tensor(self.whole_classes, dtype=torch.long))
        n = int(keep.sum())
        return (float(correct_h[keep].double().mean() * 100) if n else math.nan), n

    def _mia(self, lf: torch.Tensor, fy: torch.Tensor, lh: torch.Tensor, hy: torch.Tensor, rows_f: torch.Tensor,
             rows_h: torch.Tensor) -> Any:
        """The direct-AUC MIA of the forget rows ``rows_f`` against the held-out rows ``rows_h`` (``None`` when a
        side has fewer than 5 samples: no interval to speak of)."""
        if min(int(rows_f.sum()), int(rows_h.sum())) < 5:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SmallGroupWarning)
            return mia_with_interval(lf[rows_f], fy[rows_f], lh[rows_h], hy[rows_h], statistic="auc", seed=self.seed,
                                     boot=100)

    @staticmethod
    def _logits(model: nn.Module, x: torch.Tensor, dev: torch.device, what: str, step: int) -> torch.Tensor:
        """``model``'s float32 logits of ``x`` on the CPU; ``FloatingPointError`` naming ``what`` and ``step`` when
        any is not finite (the run diverged)."""
        out = predict_logits(model, x, device=dev).float().cpu()
        if not bool(torch.isfinite(out).all()):
            raise FloatingPointError(f"AutoStop: the model's logits on the {what} are not finite at step {step}: "
                                     "the run diverged (lower the learning rate)")
        return out

    def start(self, model: nn.Module, heldout_logits: torch.Tensor | None = None, *,
              defer_baseline: bool = False) -> float | None:
        """Record the held-out accuracy of ``model`` (the untouched model) that the rule must keep; returns it.
        Starts a new run: the history, the stop and the closest evaluation's weights of an earlier run are
        dropped (an AutoStop passed to a second ``unlearn`` judges that run alone). ``heldout_logits``: the
        untouched model's logits ``[N, C]`` of every row of the ``heldout`` given to the constructor, when already
        computed (``unlearn`` shares its set-up's forward): no forward here. ``defer_baseline``: keep a reference to
        ``model`` and measure that accuracy only when rule (c) is first measured (a possible stop, or
        :meth:`finish`; a run that never needs it skips the forward); ``model``'s weights must not change meanwhile
        (``unlearn`` passes the caller's model and trains a copy). Returns ``None`` then."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"AutoStop.start: model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(defer_baseline, (bool, np.bool_)):
            raise TypeError(f"AutoStop.start: defer_baseline must be a bool, got {type(defer_baseline).__name__}")
        if defer_baseline and heldout_logits is not None:
            raise ValueError("AutoStop.start: pass heldout_logits or defer_baseline=True, not both (the logits give "
                             "the baseline at no cost)")
        rows = self._heldout_rows
        if heldout_logits is not None and not (
                isinstance(heldout_logits, torch.Tensor) and heldout_logits.dim() == 2
                and heldout_logits.is_floating_point() and heldout_logits.shape[0] == self._heldout_total
                and heldout_logits.shape[1] >= 1):
            raise ValueError("AutoStop.start: heldout_logits must be a floating [N, C] tensor (C >= 1) with one row "
                             f"per held-out image given to AutoStop ({self._heldout_total}), got "
                             f"{_describe(heldout_logits)}")
        if heldout_logits is not None and not bool(torch.isfinite(heldout_logits).all()):
            raise ValueError("AutoStop.start: heldout_logits must be finite (NaN or inf logits would set the held-out "
                             "accuracy the rule keeps from arbitrary predictions)")
        self.history, self._run, self._closest, self.restored_step = [], 0, None, None
        self._runner = None
        self._finished = False
        self.stopped, self.stop_step, self.stop_seconds, self.reason = False, None, None, "not evaluated yet"
        self.eval_seconds = 0.0
        self._untouched = model if defer_baseline else None
        self._untouched_versions = [p._version for p in model.parameters()] if defer_baseline else []
        self._baseline_width = None
        if defer_baseline:
            self.baseline = None
            return None
        t0 = time.perf_counter()
        dev = model_device(model)
        if heldout_logits is not None:
            lh = heldout_logits.detach().float().cpu()
            lh = lh if rows is None else lh[rows]
        else:
            lh = predict_logits(model, self.heldout[0], device=dev).float().cpu()
        self.baseline, _ = self._held_out_accuracy(lh.argmax(1) == self.heldout[1])
        self._baseline_width = None if heldout_logits is None else int(heldout_logits.shape[1])
        self.eval_seconds += time.perf_counter() - t0
        return self.baseline

    def check(self, model: nn.Module, step: int = 0, seconds: float = 0.0,
              full_below: float | None = None) -> AutoStopCheck:
        """Evaluate ``model`` against the rule (recorded in :attr:`history`); does not decide the stop. With
        ``full_below=None`` (default) everything is measured. Otherwise (``__call__`` passes the closest
        evaluation's shortfall, or ``-inf`` with ``defer_kept``) the held-out images that only (c) needs are
        forwarded only at or after ``min_steps`` (before, a check is never a stop nor the closest) and when the
        forget-side conditions hold, or when the forget-side shortfall, a lower bound of the whole one, is at most
        ``full_below`` (the check could be the closest so far); else the check is ``partial``. Not ``staged``, or
        with no baseline known yet (and none deferred), everything is measured."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"AutoStop: model must be a torch.nn.Module, got {type(model).__name__}")
        if model is self._untouched:
            raise ValueError("AutoStop: the model evaluated is the one given to start(..., defer_baseline=True), whose "
                             "held-out accuracy is the level to keep: it must not be the model being trained; pass "
                             "a copy to start(), or start() without defer_baseline")
        step, seconds, full_below = (plain_number(v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v)
                                     for v in (step, seconds, full_below))
        if isinstance(step, bool) or not isinstance(step, numbers.Integral):
            raise TypeError(f"AutoStop: step must be an int, got {type(step).__name__}")
        if isinstance(seconds, bool) or not isinstance(seconds, numbers.Real):
            raise TypeError(f"AutoStop: seconds must be a number, got {type(seconds).__name__}")
        if step < 0:
            raise ValueError(f"AutoStop: step must be >= 0 (optimiser steps taken), got {step}")
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"AutoStop: seconds must be a finite number >= 0 (the run's time so far), got {seconds}")
        if full_below is not None and (isinstance(full_below, bool) or not isinstance(full_below, numbers.Real)):
            raise TypeError(f"AutoStop: full_below must be None or a number, got {type(full_below).__name__}")
        if full_below is not None and math.isnan(full_below):
            raise ValueError("AutoStop: full_below must be None or a number (inf allowed), got nan")
        dev = model_device(model)
        (fx, fy), (hx, hy) = self.forget, self.heldout
        lf = predict_logits(model, fx, device=dev).float().cpu()
        if self._baseline_width is not None and lf.shape[1] != self._baseline_width:
            raise ValueError(f"AutoStop: the model gives {lf.shape[1]} logits per image, and the heldout_logits "
                             f"given to start() had {self._baseline_width}; pass the untouched model's logits of the "
                             "held-out images")
        if not bool(torch.isfinite(lf).all()):
            raise FloatingPointError(f"AutoStop: the model's logits on the forget images are not finite at step "
                                     f"{step}: the run diverged (lower the learning rate)")
        lh = torch.full((hy.numel(), lf.shape[1]), math.nan)
        first = self._first_rows
        if bool(first.any()):
            lh[first] = self._logits(model, hx[first.to(hx.device)], dev, "held-out images", step)
        if self.matched is not None:  # (a) and (b) compare with held-out images as hard as the forget images
            ry = self.matched[1]
            lr = self._logits(model, self._matched_distinct, dev, "matched held-out images", step)
            lr = lr[self._matched_inverse]
        else:
            ry, lr = hy, lh
        whole = torch.tensor(self.whole_classes, dtype=torch.long)
        conditions: dict[str, bool] = {}
        short: list[float] = []  # each failing condition's shortfall, in its standard errors

        cf = lf.argmax(1) == fy
        cr = lr.argmax(1) == ry  # rows not forwarded yet are never read (NaN argmax is never compared)
        # scattered samples: forget like held-out of the same classes
        part = ~torch.isin(fy, whole)
        same = math.nan
        mia = (math.nan, math.nan, math.nan)
        ks = math.nan
        if bool(part.any()):
            f_cls, f_counts = torch.unique(fy[part], return_counts=True)
            per_class, weights = [], []
            n_same = int(torch.isin(ry, f_cls).sum())
            for c, k in zip(f_cls.tolist(), f_counts.tolist()):
                rows = ry == c
                if bool(rows.any()):  # matched images lacking this class: the others decide
                    per_class.append(float(cr[rows].double().mean()))
                    weights.append(k)
            same = 100 * sum(p * w for p, w in zip(per_class, weights)) / sum(weights)
            acc_f = float(cf[part].double().mean() * 100)
            n_f = int(part.sum())
            se_diff = math.hypot(max(binomial_se(acc_f, n_f), 0.5), max(binomial_se(same, n_same), 0.5))
            conditions["forget_acc_like_heldout"] = _under(acc_f, same + self.slack + self.match_z * se_diff, se_diff,
                                                          short)
            ref = torch.isin(ry, f_cls)
            r = self._mia(lf, fy, lr, ry, part, ref)
            if r is not None:
                mia = (r.score, r.low, r.high)
                conditions["mia_not_member"] = _under(r.score, 50.0 + self.slack + self.match_z * r.se, max(r.se, 0.5),
                                                     short)
                ce_f = F.cross_entropy(lf[part], fy[part], reduction="none")
                ce_h = F.cross_entropy(lr[ref], ry[ref], reduction="none")
                ks = _ks(ce_f, ce_h)
        # whole classes: no longer predicted, on the forget set and on held-out images of those classes, and the
        # attack cannot tell the forget images from held-out images of their class (a model that never saw the
        # class ranks both alike)
        if self.whole_classes:
            ch_first = lh.argmax(1) == hy
            fw, hw = torch.isin(fy, whole), torch.isin(hy, whole)
            kept_f, kept_h = float(cf[fw].double().mean() * 100), float(ch_first[hw].double().mean() * 100)
            conditions["class_forgotten"] = all([  # both evaluated: each adds its shortfall
                _under(kept_f, self.class_floor, max(binomial_se(kept_f, int(fw.sum())), 0.5), short),
                _under(kept_h, self.class_floor, max(binomial_se(kept_h, int(hw.sum())), 0.5), short)])
            r = self._mia(lf, fy, lh, hy, fw, hw)
            if r is not None:
                if not bool(part.any()):
                    mia = (r.score, r.low, r.high)
                conditions["class_not_member"] = _under(r.score, 50.0 + self.slack + self.match_z * r.se,
                                                       max(r.se, 0.5), short)
        eligible = step >= self.min_steps
        partial_short = sum(short) if eligible else math.inf
        complete = (full_below is None or not self.staged or (self.baseline is None and self._untouched is None)
                    or (eligible and (all(conditions.values()) or partial_short <= full_below)))
        check = AutoStopCheck(step=int(step), seconds=float(seconds), forget_acc=float(cf.double().mean() * 100),
                              heldout_acc=math.nan, heldout_same_class_acc=same, mia=mia[0], mia_low=mia[1],
                              mia_high=mia[2], loss_ks=ks, conditions=conditions, done=False,
                              shortfall=float(partial_short), partial=True)
        # what (c) needs later (the held-out rows forwarded already), should it be measured after this evaluation
        check._first_correct = lh[first].argmax(1) == hy[first]  # type: ignore[attr-defined]
        if complete:
            self._measure_kept(check, model, dev)
        self.history.append(check)
        return check

    def _measure_kept(self, check: AutoStopCheck, model: nn.Module, dev: torch.device) -> None:
        """Complete the partial evaluation ``check`` with rule (c), forwarding with ``model`` (whose weights are
        that evaluation's) the held-out images it did not forward: sets its ``heldout_acc``, ``conditions``,
        ``done``, ``shortfall`` and ``partial`` (nothing when it is complete already)."""
        if not check.partial:
            return
        hx, hy = self.heldout
        first = self._first_rows
        ch = torch.zeros(hy.numel(), dtype=torch.bool)
        ch[first] = check._first_correct  # type: ignore[attr-defined]
        rest = ~first
        if bool(rest.any()):
            ch[rest] = self._logits(model, hx[rest.to(hx.device)], dev, "held-out images", check.step).argmax(1) \
                == hy[rest]
        if self.baseline is None and self._untouched is not None:  # start(defer_baseline=True): measured now
            if [p._version for p in self._untouched.parameters()] != self._untouched_versions:
                raise ValueError("AutoStop: the model given to start(..., defer_baseline=True) was changed since (its "
                                 "weights were written), so the held-out accuracy to keep can no longer be measured "
                                 "on it; pass a model that is not trained, or start() without defer_baseline")
            self.baseline, _ = self._held_out_accuracy(
                predict_logits(self._untouched, hx, device=model_device(self._untouched)).float().cpu().argmax(1) == hy)
            self._untouched = None
        if self.baseline is None:  # never started: the first evaluation measured in full sets it
            self.baseline, _ = self._held_out_accuracy(ch)
        # (c) held-out accuracy kept, on the classes the model must still predict
        acc_h, n_h_kept = self._held_out_accuracy(ch)
        head: list[float] = []
        if n_h_kept:
            se_h = max(binomial_se(self.baseline, n_h_kept), 0.5)
            margin = max(self.max_drop, self.z * se_h)
            check.conditions = {"heldout_kept": _under(-acc_h, -(self.baseline - margin), se_h, head),
                                **check.conditions}
        eligible = check.step >= self.min_steps
        check.heldout_acc = acc_h
        check.done = all(check.conditions.values()) and eligible
        check.shortfall = float(sum(head) + check.shortfall) if eligible else math.inf  # 0 when done
        check.partial = False

    def __call__(self, model: nn.Module, step: int | None = None, seconds: float | None = None) -> bool:
        """Evaluate ``model`` at optimiser step ``step`` (default: one more than the previous call) and
        ``seconds`` of training; ``True`` once the rule has held at ``patience`` consecutive evaluations.
        Under ``torch.distributed`` call it on every rank at the same steps: rank 0's answer is returned
        on all of them."""
        t0 = time.perf_counter()
        if step is None:
            step = self.history[-1].step + 1 if self.history else 0
        if seconds is None:
            seconds = 0.0
        last = self.history[-1].step if self.history else None
        if last is not None and isinstance(step, numbers.Integral) and not isinstance(step, bool) and step < last:
            raise ValueError(f"AutoStop: step {step} comes before the last evaluation's step {last}; a new run starts "
                             "with start(model) (unlearn and prepare_unlearning call it)")
        # (c)'s held-out forwards are needed only where the check could stop the run or (not defer_kept) be the
        # closest so far; deferred, the closest's (c) is measured by finish() if the run ends without a stop
        best = (self._closest[0].shortfall if self._closest is not None else math.inf) \
            if self.keep_closest and not self.defer_kept else -math.inf
        check = self.check(model, step, seconds, full_below=best) if _takes_full_below(self.check) else \
            self.check(model, step, seconds)  # a subclass's check of the older signature: everything measured
        self._run = self._run + 1 if check.done else 0
        # under torch.distributed every rank calls at the same steps; rank 0's answer holds everywhere,
        # so no rank trains on alone (a DDP hang) even if float differences split the ranks' statistics
        done = bool(broadcast_object(self._run >= self.patience))
        if self.keep_closest and not self.stopped and not done:  # rank 0's evaluation decides what every rank keeps
            best = self._closest[0].shortfall if self._closest is not None else math.inf
            second = self._runner[0].shortfall if self._runner is not None else math.inf
            finite = math.isfinite(check.shortfall)
            # 1: the closest so far; 2 (defer_kept): the runner-up, since a partial shortfall is only a lower bound
            slot = int(broadcast_object(1 if finite and check.shortfall <= best else
                                        2 if finite and self.defer_kept and check.shortfall <= second else 0))
            if slot == 1:
                if self.defer_kept:
                    self._runner = self._closest
                self._closest = (check, _weights(model))
            elif slot == 2:
                self._runner = (check, _weights(model))
        spent = time.perf_counter() - t0
        self.eval_seconds += spent
        if done and not self.stopped:
            self.stopped = True
            self.stop_step = int(step)
            self.stop_seconds = float(seconds) + self.eval_seconds
            self.reason = (f"every condition held at {self.patience} consecutive evaluation(s): "
                           + ", ".join(k for k in check.conditions))
        elif not self.stopped:
            self.reason = self._not_stopped(check)
        return self.stopped

    def _not_stopped(self, check: AutoStopCheck) -> str:
        """The reason of a run not stopped at the evaluation ``check``."""
        failing = [k for k, ok in check.conditions.items() if not ok]
        return ("not stopped: " + (", ".join(failing) + " did not hold" if failing else
                                   f"fewer than min_steps={self.min_steps} steps")
                + (" (heldout_kept not measured: staged)" if check.partial and failing else ""))

    def finish(self, model: nn.Module, step: int | None = None, seconds: float | None = None) -> bool:
        """Call once when the run has ended without this stop (its recipe's steps spent, or the caller's own
        budget) with the final ``model``, its ``step`` and ``seconds``. With ``keep_closest``, if the rule never
        held, the final model is evaluated (unless ``step`` was the last evaluation) and the weights of the
        evaluation closest to the rule are loaded into ``model`` when that evaluation is not the final one
        (nothing happens after a stop, with ``keep_closest=False``, or on a second call). Returns ``True`` when it
        replaced the weights (:attr:`restored_step` says which step's). Under ``torch.distributed`` call it on
        every rank."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"AutoStop.finish: model must be a torch.nn.Module, got {type(model).__name__}")
        if self.stopped or not self.keep_closest or self.restored_step is not None or self._finished:
            return False
        self._finished = True
        if step is None:
            step = self.history[-1].step + 1 if self.history else 0
        if not self.history or self.history[-1].step != int(step):
            if self(model, step, seconds):  # the final model meets the rule: it is the stop
                return False
        if self._closest is None or self._closest[0].step == self.history[-1].step:
            return False
        t0 = time.perf_counter()
        last = self.history[-1]
        kept = self._closest[0]
        if self.defer_kept:
            chosen = self._resolve([c for c in (self._closest, self._runner)
                                    if c is not None and c[1] and c[0].step != last.step], last, model)
        else:
            chosen = self._closest
            model.load_state_dict(_fold_pruning(chosen[1], model.state_dict()))
        self._runner = None  # its copy is no longer needed
        self.reason = self._not_stopped(last)  # (c) may have been measured for it since
        if chosen is None:
            self._closest = (last, {})  # the final model is the closest: the kept copies are dropped
            self.reason += (f"; the run ended without it, and the final model (shortfall {last.shortfall:.2f} standard "
                            f"errors) is the closest to the rule: step {kept.step}'s, the closest on what its "
                            f"evaluation measured, falls {kept.shortfall:.2f} short with (c) measured")
            self.eval_seconds += time.perf_counter() - t0
            return False
        check = chosen[0]
        self._closest = (check, {})  # the copy is the model's now
        self.restored_step = check.step
        self.reason += (f"; the run ended without it, so the model is the one of step {check.step}, the evaluation "
                        f"closest to the rule (shortfall {check.shortfall:.2f} standard errors against "
                        f"{'at least ' if self.history[-1].partial else ''}{self.history[-1].shortfall:.2f} at the "
                        "end)")
        self.eval_seconds += time.perf_counter() - t0
        return True

    def _resolve(self, candidates: list[tuple[AutoStopCheck, dict[str, torch.Tensor]]], last: AutoStopCheck,
                 model: nn.Module) -> tuple[AutoStopCheck, dict[str, torch.Tensor]] | None:
        """The closest to the rule, (c) included, of the kept ``candidates`` (the closest and the runner-up on the
        shortfall measured, with their weights) and the final evaluation ``last`` (``model`` holds its weights);
        ``None``: the final one (the later one wins a tie). A partial evaluation is completed only where the answer
        depends on it: the final one with ``model``'s weights, a candidate with its weights loaded into ``model``.
        ``model`` ends holding the chosen weights. Under ``torch.distributed`` rank 0's statistics decide every
        branch, so all ranks forward together."""
        dev = model_device(model)
        if broadcast_object(last.partial):  # rank 0's, on every rank
            self._measure_kept(last, model, dev)
        best: tuple[AutoStopCheck, dict[str, torch.Tensor]] | None = None
        final: dict[str, torch.Tensor] | None = None
        for cand in sorted(candidates, key=lambda c: (c[0].shortfall, -c[0].step)):
            check, weights = cand
            leader = last if best is None else best[0]
            if not broadcast_object(_beats(check, leader)):  # a lower bound (or exact value) that cannot win
                continue
            if broadcast_object(check.partial):
                if final is None:
                    final = _weights(model)
                model.load_state_dict(_fold_pruning(weights, model.state_dict()))
                self._measure_kept(check, model, dev)
            if broadcast_object(_beats(check, leader)):
                best = cand
        if best is None:
            if final is not None:
                model.load_state_dict(final)
        else:
            model.load_state_dict(_fold_pruning(best[1], model.state_dict()))
        return best

    def recover(self, model: nn.Module, why: str = "the run failed") -> bool:
        """After a run that ended in an error (its weights diverged, or it was interrupted): load the weights of
        the evaluation closest to the rule into ``model``, without evaluating the broken final model. ``why``
        goes into :attr:`reason`. Returns ``True`` when it loaded weights (:attr:`restored_step` says which
        step's); ``False`` when there are none (no evaluation counted yet, ``keep_closest=False``, already
        restored, or the rule held: the stop's model is the result). :func:`fastblend.unlearn` calls it for you
        and hands the model back on the exception (``exc.result``)."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"AutoStop.recover: model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(why, str):
            raise TypeError(f"AutoStop.recover: why must be a str, got {type(why).__name__}")
        if self.stopped or self.restored_step is not None or self._closest is None or not self._closest[1]:
            return False  # after a stop the model that met the rule is the result, not an older closest
        check, weights = self._closest
        model.load_state_dict(_fold_pruning(weights, model.state_dict()))
        self._closest = (check, {})  # the copy is the model's now
        self.restored_step = check.step
        if check.partial:  # deferred (c): measured now, with the weights handed back, so the reason says how far
            t0 = time.perf_counter()
            try:
                self._measure_kept(check, model, model_device(model))
            except Exception:  # noqa: BLE001 - the weights are back; the statistic stays unmeasured
                pass
            self.eval_seconds += time.perf_counter() - t0
        lost = "" if check.partial or check.conditions.get("heldout_kept", True) else (
            f"; its held-out accuracy fell to {check.heldout_acc:.1f} against {self.baseline:.1f} before unlearning "
            "(it was chosen on the forget side; (c) was measured only now)")
        self.reason = (f"{self.reason + '; ' if self.reason else ''}{why}, so the model is the one of step "
                       f"{check.step}, the evaluation closest to the rule (shortfall "
                       f"{'at least ' if check.partial else ''}{check.shortfall:.2f} standard errors){lost}")
        return True

    def summary(self) -> dict[str, Any]:
        """JSON-ready: ``stopped``, ``step``, ``seconds`` (at the stop, own evaluations included), ``reason``,
        ``kind``, ``whole_classes``, ``baseline_heldout_acc``, ``compared_with``, ``evaluations``,
        ``partial_evaluations`` (those that skipped (c): ``staged``), ``eval_seconds``,
        ``restored_step`` (the step whose weights :meth:`finish` or :meth:`recover` put back, else ``None``),
        ``closest`` (that evaluation's step, seconds and shortfall, ``None`` before one counts) and the last
        evaluation. Plain Python values for ``json.dump``; a statistic that is undefined (the MIA of a group under 5
        samples, the held-out accuracy of a partial evaluation, the shortfall before ``min_steps``) is NaN or inf,
        which Python's ``json`` writes and strict JSON (``allow_nan=False``) refuses."""
        return {"stopped": self.stopped, "step": self.stop_step, "seconds": self.stop_seconds, "reason": self.reason,
                "kind": self.kind, "whole_classes": list(self.whole_classes), "baseline_heldout_acc": self.baseline,
                "compared_with": "heldout" if self.matched is None else "matched_heldout",
                "evaluations": len(self.history), "partial_evaluations": sum(h.partial for h in self.history),
                "eval_seconds": self.eval_seconds,
                "restored_step": self.restored_step,
                "closest": None if self._closest is None else {k: self._closest[0].as_dict()[k] for k in
                                                               ("step", "seconds", "shortfall", "partial")},
                "last": self.history[-1].as_dict() if self.history else None}
