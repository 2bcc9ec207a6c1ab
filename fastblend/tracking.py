"""Time to target: quality curves during training and the wall time until a model reaches Retrain's band.

A speed-up is only meaningful at equal quality. :class:`Tracker` is a step callback for
:func:`fastblend.unlearn` (``unlearn(..., callback=tracker, eval_every=N)``): every ``N`` optimiser
steps (and before the first and after the last) it evaluates the model being trained on a fixed,
seeded evaluation subset — forget accuracy, test accuracy and the docs/method.md §4 MIA — and
records a :class:`CurvePoint` at the method's training wall time. The training loop stops its
clock around each evaluation (the device synchronised on both ends), so evaluation time is
excluded from the method's time and reported apart (``Tracker.eval_seconds``,
``UnlearnResult.info["eval_seconds"]``).

:class:`Band` is the fixed band (an option, off in the harness): forget accuracy, test accuracy and
MIA each within a tolerance of one Retrain run's final values. :class:`fastblend.evaluation.SeedBand`
(from :func:`fastblend.evaluation.seed_band`, or :func:`band_from_ensemble` here) is the default: the
range of a Retrain seed ensemble widened by the evaluation split's sampling error (docs/method.md
§4.1); it is absolute, so ``time_to_target(points, None, seed_band)`` needs no reference.
:func:`time_to_target` is the wall time at the first evaluation where a curve is inside the band
and still inside at the next evaluation (the last evaluation counts as staying: the run ends with
that model), or ``None`` ("not reached").

Retrain's own time to target uses the same rule and band (a fixed band: around its own final
values), so every variant is judged by one rule; it is at most Retrain's total time, which makes
speed-ups against it conservative.
"""

from __future__ import annotations

import contextvars
import math
import numbers
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import nn
from torch.utils.data import Dataset

from ._checks import check_has_data, plain_number
from ._device import synchronize
from .data_adapter import dataset_items, model_device
from .distributed import broadcast_object
from .evaluation import SeedBand, SmallGroupWarning, mia_with_interval, seed_band
from .metrics import mia_score_from_logits, predict_logits

METRICS = ("forget_acc", "test_acc", "mia")
_READ = 512  # rows per read of a Dataset


@dataclass(frozen=True)
class Band:
    """Tolerances (percentage points) of Retrain's band: a model is on target when its forget
    accuracy, test accuracy and MIA are each within these of Retrain's final values."""

    forget_acc: float = 2.0
    test_acc: float = 2.0
    mia: float = 5.0

    def __post_init__(self) -> None:
        for name in METRICS:
            value = plain_number(getattr(self, name))  # numpy numbers too
            object.__setattr__(self, name, value)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"Band: {name} must be a number >= 0, got {value!r}")

    def contains(self, point: dict | CurvePoint, reference: dict | CurvePoint) -> bool:
        """Whether ``point`` is within the tolerances of ``reference`` on every metric (NaN is outside)."""
        p = point if isinstance(point, dict) else asdict(point)
        r = reference if isinstance(reference, dict) else asdict(reference)
        return all(abs(p[m] - r[m]) <= getattr(self, m) for m in METRICS)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class CurvePoint:
    """One evaluation during training: the optimiser ``step``, the method's training wall time
    ``seconds`` up to it (evaluations excluded), the three metrics (percent) and what this
    evaluation itself cost (``eval_seconds``, not part of ``seconds``)."""

    step: int
    seconds: float
    forget_acc: float
    test_acc: float
    mia: float
    eval_seconds: float


_FINAL_REPORT: contextvars.ContextVar[bool] = contextvars.ContextVar("fastblend_final_report", default=False)


def final_report() -> bool:
    """Inside a step callback: whether this call is the training loop's report after its last step."""
    return _FINAL_REPORT.get()


class StepClock:
    """The training loop's side of a step callback: training wall time with evaluations cut out.

    ``report(model, step)`` synchronises the device, reads the clock, calls
    ``callback(model, step, seconds)`` and adds the callback's own time (synchronised again) to
    ``paused``, so ``seconds`` counts training only. A callback that returns ``True`` asks the
    training to stop after this step: ``stop`` becomes ``True`` and the loop ends there.
    """

    def __init__(self, callback: Callable[[nn.Module, int, float], bool | None], device: torch.device):
        self.callback = callback
        self.device = device
        self.paused = 0.0
        self.last_step = -1
        self.stop = False
        synchronize(device)
        self.start = time.perf_counter()

    def report(self, model: nn.Module, step: int, final: bool = False) -> None:
        """``final``: the report after the run's last step (:func:`final_report` says so to the callback)."""
        if step == self.last_step:
            return
        self.last_step = step
        synchronize(self.device)
        now = time.perf_counter()
        token = _FINAL_REPORT.set(final)
        try:
            stop = self.callback(model, step, now - self.start - self.paused) is True
        finally:
            _FINAL_REPORT.reset(token)
        # every rank reports at the same steps; rank 0's answer holds everywhere, so no rank waits alone
        self.stop = self.stop or bool(broadcast_object(stop))
        synchronize(self.device)
        self.paused += time.perf_counter() - now


def _subset(data: object, limit: int | None, generator: torch.Generator, arg: str, fn: str = "Tracker",
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)`` of at most ``limit`` rows of ``data`` (a pair of tensors or a map-style
    Dataset of ``(image, label)``), drawn with ``generator``; a Dataset is read only at those rows,
    :data:`_READ` at a time (the same rows, so the same subset, as the pair of tensors)."""
    return _subset_rows(data, limit, generator, arg, fn)[0]


def _subset_rows(data: object, limit: int | None, generator: torch.Generator, arg: str, fn: str,
                 ) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor | None]:
    """:func:`_subset` and which rows of ``data`` it drew (sorted indices; ``None``: all, in order)."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
        check_has_data(fn, f"{arg} images and labels", x, y)
        if y.dim() != 1 or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise TypeError(f"{fn}: {arg} labels must be a 1-D integer tensor, got {y.dtype} of shape "
                            f"{list(y.shape)}")
        if x.dim() < 1 or x.shape[0] != y.shape[0]:
            raise ValueError(f"{fn}: {arg} has {x.shape[0] if x.dim() else 0} images but {y.shape[0]} labels")
        n = y.numel()
    elif isinstance(data, Dataset) and hasattr(data, "__len__"):
        x, n = None, len(data)
    else:
        raise TypeError(f"{fn}: {arg} must be an (images, labels) pair of tensors or a map-style Dataset of "
                        f"(image, label) rows, got {type(data).__name__}")
    keep = None if limit is None or n <= limit else torch.randperm(n, generator=generator)[:limit].sort().values
    if x is not None:
        return ((x, y) if keep is None else (x[keep], y[keep])), keep
    rows = list(range(n)) if keep is None else keep.tolist()
    images, labels = [], []
    for s in range(0, len(rows), _READ):
        part = rows[s:s + _READ]
        for i, item in zip(part, dataset_items(data, part)):
            if not isinstance(item, (tuple, list)) or len(item) < 2 or not isinstance(item[0], torch.Tensor):
                raise TypeError(f"{fn}: {arg} rows must be (image tensor, label) pairs, got "
                                f"{type(item).__name__} at row {i}")
            images.append(item[0])
            labels.append(int(item[1]))
    if not images:
        return (torch.zeros(0), torch.zeros(0, dtype=torch.int64)), keep
    return (torch.stack(images), torch.tensor(labels, dtype=torch.int64)), keep


class Tracker:
    """Step callback recording forget accuracy, test accuracy and MIA during training.

    Args:
        forget: ``(images [F, ...] float, labels [F] int64)`` of the forget set, or a map-style
            ``Dataset`` of ``(image, label)`` rows (only the evaluation subset's rows are read, once).
        test: ``(images [T, ...], labels [T])`` or a ``Dataset``, held out from training (the
            evaluation split); the MIA uses its samples of the forget set's classes (as the
            pipeline's evaluation does).
        max_samples: evaluate on at most this many samples of each set, a subset drawn once with
            ``seed`` (``None``: every sample).
        seed: seeds the subset and the MIA's equal-size subsampling.
        offset: seconds added to every point's time (work done before training, e.g. Blend).
        budget: stop the training at the first evaluation whose time (offset included) has reached
            ``budget`` seconds (``None``: never); ``stopped`` then says so. The pipeline uses it to stop
            a method that has not reached Retrain's band by the time Retrain finished.
        heldout: the MIA's held-out group, ``(images, labels)`` or a ``Dataset`` (``None``: ``test``);
            only its samples of the forget set's classes are used (the pipeline passes the unseen pool
            plus the evaluation split, docs/method.md §4.3).
        mia: the MIA statistic, ``"paper"`` (docs/method.md §4, the default) or ``"auc"`` (§4.3's direct
            AUC, what the pipeline's tables use).
        mia_samples: at most this many rows of ``forget`` and of ``heldout`` (``None``: every row);
            ``"max_samples"`` (the default): as ``max_samples``. Without ``heldout`` the MIA's held-out group
            is the ``test`` subset, drawn with ``max_samples``. The subsets share one generator, so the test
            subset of a seed depends on whether the forget set was subsampled first. The pipeline passes
            ``None``, so the curve's forget accuracy and MIA are scored on exactly the rows of the final
            evaluation and its point on a model equals the final evaluation's on that model.

    Use: ``unlearn(method, ..., callback=tracker, eval_every=N)``; afterwards ``tracker.points``
    holds the curve and ``tracker.eval_seconds`` the evaluation time excluded from it.
    """

    def __init__(self, forget: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
                 max_samples: int | None = 2000, seed: int = 0, offset: float = 0.0,
                 budget: float | None = None, heldout: object = None, mia: str = "paper",
                 mia_samples: int | str | None = "max_samples"):
        if mia not in ("paper", "auc"):
            raise ValueError(f"Tracker: mia must be 'paper' or 'auc', got {mia!r}")
        if isinstance(mia_samples, str) and mia_samples == "max_samples":
            mia_samples = max_samples
        max_samples, seed, offset, budget, mia_samples = map(plain_number, (max_samples, seed, offset, budget,
                                                                            mia_samples))  # numpy's too
        for name, value in (("max_samples", max_samples), ("mia_samples", mia_samples)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 5):
                raise ValueError(f"Tracker: {name} must be None or an int >= 5 (the MIA's folds), got {value!r}")
        if isinstance(offset, bool) or not isinstance(offset, (int, float)) or not math.isfinite(offset) or offset < 0:
            raise ValueError(f"Tracker: offset must be a finite number of seconds >= 0, got {offset!r}")
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float))
                                   or not math.isfinite(budget) or budget <= 0):
            raise ValueError(f"Tracker: budget must be None or a positive number of seconds, got {budget!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"Tracker: seed must be an int, got {type(seed).__name__}")
        gen = torch.Generator().manual_seed(seed)
        limit = None if max_samples is None else int(max_samples)
        mia_limit = None if mia_samples is None else int(mia_samples)
        fx, fy = _subset(forget, mia_limit, gen, "forget")
        tx, ty = _subset(test, limit, gen, "test")
        if fy.numel() < 5:
            raise ValueError(f"Tracker: forget must hold at least 5 samples, got {fy.numel()}")
        self.forget = (fx, fy)
        self.test = (tx, ty)
        if heldout is None:
            self.heldout = None
            self.mia_keep = torch.isin(ty, torch.unique(fy))
        else:
            hx, hy = _subset(heldout, mia_limit, gen, "heldout")
            keep = torch.isin(hy, torch.unique(fy))
            self.heldout = (hx[keep], hy[keep])
            self.mia_keep = torch.ones(int(keep.sum()), dtype=torch.bool)
        self.mia = mia
        self.seed = seed
        self.offset = float(offset)
        self.budget = None if budget is None else float(budget)
        self.stopped = False
        self.points: list[CurvePoint] = []

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Forget accuracy, test accuracy (percent) and MIA of ``model`` on the fixed subsets."""
        dev = model_device(model)
        lf = predict_logits(model, self.forget[0], device=dev).float().cpu()
        lt = predict_logits(model, self.test[0], device=dev).float().cpu()
        fy, ty = self.forget[1].cpu(), self.test[1].cpu()
        if self.heldout is None:
            keep = self.mia_keep.cpu()
            lh, hy = lt[keep], ty[keep]
        else:
            lh = predict_logits(model, self.heldout[0], device=dev).float().cpu() if self.heldout[1].numel() \
                else lt[:0]
            hy = self.heldout[1].cpu()
        if hy.numel() < 5:
            mia = math.nan
        elif self.mia == "paper":
            mia = mia_score_from_logits(lf, fy, lh, hy, seed=self.seed)
        else:
            with warnings.catch_warnings():  # the curve's points are not reported one by one; finals carry the mark
                warnings.simplefilter("ignore", SmallGroupWarning)
                mia = mia_with_interval(lf, fy, lh, hy, statistic="auc", seed=self.seed, boot=10).score
        return {"forget_acc": float((lf.argmax(1) == fy).double().mean() * 100),
                "test_acc": float((lt.argmax(1) == ty).double().mean() * 100) if ty.numel() else math.nan,
                "mia": mia}

    def __call__(self, model: nn.Module, step: int, seconds: float) -> bool:
        """Record one point; ``True`` (stop training) once the budget is spent."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"Tracker: model must be a torch.nn.Module, got {type(model).__name__}")
        start = time.perf_counter()
        metrics = self.evaluate(model)
        self.points.append(CurvePoint(step, self.offset + seconds, **metrics,
                                      eval_seconds=time.perf_counter() - start))
        if self.budget is not None and self.offset + seconds >= self.budget:
            self.stopped = True
        return self.stopped

    @property
    def eval_seconds(self) -> float:
        return sum(p.eval_seconds for p in self.points)

    def curve(self) -> list[dict]:
        """The points as dicts (JSON-ready)."""
        return [asdict(p) for p in self.points]


def time_to_target(points: list[CurvePoint] | list[dict], reference: dict | CurvePoint | None,
                   band: Band | SeedBand | None = None) -> float | None:
    """Seconds at the first point inside ``band`` whose next point is inside too (the last point needs
    no successor); ``None`` when no point qualifies ("not reached"). ``band``: a :class:`Band` around
    ``reference`` (Retrain's final values), or a :class:`fastblend.evaluation.SeedBand`, which is
    absolute (``reference`` is then ignored and may be ``None``)."""
    band = band or Band()
    if reference is None and not isinstance(band, SeedBand):
        raise ValueError("time_to_target: reference (Retrain's final values) is needed with a fixed Band; "
                         "pass a SeedBand to judge against a seed ensemble")
    inside = [band.contains(p, reference) for p in points]
    for i, ok in enumerate(inside):
        if ok and (i + 1 == len(inside) or inside[i + 1]):
            p = points[i]
            return float(p["seconds"] if isinstance(p, dict) else p.seconds)
    return None


def band_from_ensemble(finals: list[dict], n: dict[str, int], mia_se: float, z: float = 1.96,
                       floor: float | dict[str, float] = 0.5) -> SeedBand:
    """Retrain's :class:`fastblend.evaluation.SeedBand` from the final metrics of a seed ensemble
    (``finals``: one dict per Retrain model with ``forget_acc``, ``test_acc`` and ``mia``, percent),
    ``n`` the evaluation samples per metric and ``mia_se`` the MIA's standard error (points, e.g. the mean
    :attr:`fastblend.evaluation.MIAResult.se` over the ensemble). See :func:`fastblend.evaluation.seed_band`."""
    if not finals:
        raise ValueError("band_from_ensemble: finals must hold at least one Retrain model's metrics")
    values = {m: [float(f[m]) for f in finals] for m in METRICS}
    return seed_band(values, n, {"mia": mia_se}, z=z, floor=floor)


def eval_every_for(steps: int, evaluations: int) -> int:
    """Steps between evaluations so that a run of ``steps`` optimiser steps is evaluated about
    ``evaluations`` times (at least every step)."""
    if evaluations < 1:
        raise ValueError(f"eval_every_for: evaluations must be >= 1, got {evaluations}")
    return max(1, math.ceil(max(steps, 1) / evaluations))


__all__ = ["Band", "CurvePoint", "SeedBand", "StepClock", "Tracker", "band_from_ensemble", "eval_every_for",
           "final_report", "time_to_target"]
