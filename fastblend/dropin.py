"""A drop-in for loader-based unlearning code: a reduced-retain ``DataLoader`` and an A-AMU criterion.

Unlearning codebases usually hold the retain, forget and unseen data apart (a dict of
``DataLoader``\\ s), fine-tune with a criterion called as ``criterion(model(x), y)`` and an optimiser
loop. :func:`prepare_unlearning` turns such a set-up into Blend + A-AMU (docs/method.md §1-§2) without
touching the loop. Give the reduced loader a key of its own (or a copy of the dict): the codebase's
evaluation keeps reading ``loaders["retain"]``, the whole retain set::

    prep = fastblend.prepare_unlearning(model, loaders["retain"], loaders["forget"], loaders["unseen"])
    loaders = {**loaders, "unlearn": prep.retain_loader}           # loaders["retain"] stays the retain set
    criterion, optimizer = prep.criterion, prep.optimizer(model)   # the recipe's optimiser: Adam, lr prep.lr
    step = 0
    for epoch in range(prep.epochs):                               # the recipe's budget in epochs
        for x, y in loaders["unlearn"]:                            # the codebase's own loop
            loss = criterion(model(x), y)
            optimizer.zero_grad(); loss.backward(); optimizer.step()
            step += 1
            if step % 5 == 0 and prep.auto_stop(model, step):      # optional: no Retrain needed
                break
        if prep.auto_stop.stopped:                                 # and leave the epoch loop
            break
    prep.auto_stop.finish(model, step)    # steps spent before a stop: the closest evaluation's weights back

The recipe is the one ``unlearn("a_finetune", ...)`` runs on the same request (``request="auto"``): on scattered
samples the difficulty-matched recipe of docs/method.md §7.10 (the criterion's fixed matched target, per-image
log-odds term, held-out anchor and forget draws of one batch; ``prep.lr`` 1e-3, ``prep.epochs`` 3), on a request
that forgets whole classes (no retain image of any forget class left) the whole-class recipe of §7.6 (the pooled
transform and λ 5; ``prep.lr`` 5e-4, ``prep.epochs`` 3), else, or with ``request="sample"``, the paper's (Adam lr
2.4e-4, one epoch); ``prep.request`` says which runs and ``prep.request_reason`` why it fell back to the paper's.

``prep.auto_stop`` (:class:`fastblend.AutoStop`, docs/method.md §4.5) compares the forget set with the
unseen data under the model and is started on the untouched model when the request is prepared;
``prep.auto_stop.finish(model, step)`` after the loop returns the weights of the evaluation closest to its rule
when the loop's steps ran out before it held (nothing after a stop).

The criterion computes the per-sample cross-entropy of the retain batch, steepens it and adds
``λ·MMD²`` between a forget batch and an unseen batch it draws itself (on the paper's recipe 4B each, at most 256 each:
a retain batch of 256 draws 256, not 1,024, and never more forget rows than the forget set holds);
its forget and unseen forwards leave BatchNorm running statistics (and every other buffer of a
training-mode module) untouched, also when the model checkpoints activations. It is a thin layer
over :class:`fastblend.AAMUStep`, the one A-AMU step.

Pass ``prep.optimizer(model)`` in place of a loop's own optimiser: each recipe is tuned for its Adam (``prep.lr``),
which normalises the step, and on a converged model this loss's gradient is 10-40x the cross-entropy's (the
default recipe's per-image log-odds term and anchor; on the paper's, the MMD term dominates because the steepened
retain loss ``mean(ℓ)²`` passes on about a tenth of the cross-entropy's gradient). An optimiser that steps by the
gradient's size at a codebase's learning rate (SGD lr 0.01, momentum 0.9, batch 256) collapses the model under the
default recipe within a few steps; the criterion then warns once (``criterion.collapsed_at``). Keep to
``prep.epochs`` epochs (``prep.steps`` steps) and evaluate (benchmarks/results-2026-12-05-cpu/codebase_loop
measures the paper's recipe both ways).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ._checks import as_device, check_finite_images, plain_number, user_stacklevel
from ._device import module_device
from .aamu import AAMULossOutput, AAMUStep, check_odds_pairing, check_odds_weight, check_step_settings
from .autostop import AutoStop
from .condensation import BlendIndex, ReducedRetainSet
from .condensation.checks import forget_mask
from .condensation.recipe import default_ipc
from .condensation.source import content_keys, read_rows, row_keys, source_labels, source_sample
from .data_adapter import (
    _unpack_batch,
    as_tensors,
    check_batch_labels,
    declared_batch_size,
    is_streamed_dataset,
    model_dtype,
)
from .methods import (
    anchor_rows,
    auto_request_of_labels,
    image_odds_target,
    matched_rows,
    paper_reason,
    probe_num_classes,
    refuse_fixed_on_whole_classes,
)
from .methods.aamu_configs import AFinetuneConfig, chose_other_target, request_config
from .methods.config import REQUESTS, TARGETS
from .metrics import predict_logits
from .recipe import RECIPE

__all__ = ["AAMUCriterion", "PreparedUnlearning", "prepare_unlearning"]

#: A-AMU's optimiser (docs/method.md §2.4), the setting the criterion's λ and steepening are tuned for.
RECOMMENDED = {"optimizer": "Adam", "lr": RECIPE.lr, "batch_size": RECIPE.batch_size, "epochs": RECIPE.epochs}


class AAMUCriterion(nn.Module):
    """``criterion(logits [B, C], targets [B] int64) -> 0-d loss``, ``nn.CrossEntropyLoss``'s call
    signature, returning the A-AMU loss ``steepen(CE) + λ·MMD²`` (docs/method.md §2.4).

    Each call is one :meth:`fastblend.AAMUStep.loss` of ``step``: it draws and forwards its own forget
    and unseen batches (leaving running statistics untouched). ``last`` holds the latest
    :class:`fastblend.AAMULossOutput` (``main``/``mmd`` detached, for logging).
    """

    def __init__(self, step: AAMUStep, lr: float | None = None) -> None:
        super().__init__()
        self.step = step
        step.loss_name = "AAMUCriterion"  # errors of a call name the criterion the caller holds
        self.last: AAMULossOutput | None = None
        self.lr = lr  # the recipe optimiser's learning rate, for the collapse warning
        self.calls = 0
        self.collapsed_at: int | None = None  # the call whose retain batch first scored worse than a uniform guess
        self._best = math.inf  # the lowest retain-batch cross-entropy read so far

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        per_sample = F.cross_entropy(logits, targets, reduction="none")
        self.last = self.step.loss(per_sample)
        self.calls += 1
        # a collapsed model (an optimiser that steps by the gradient's size, e.g. SGD at a codebase's learning rate:
        # this loss's gradient is 10-40x the cross-entropy's on a converged model) is said once, not left silent;
        # read every call for the first 8 and every 8th after (one host sync each)
        if self.collapsed_at is None and (self.calls <= 8 or self.calls % 8 == 0) \
                and not torch.compiler.is_compiling() and logits.dim() == 2 and logits.shape[1] > 1:
            mean = float(per_sample.detach().float().mean())
            chance = math.log(logits.shape[1])
            self._best = min(self._best, mean)
            # clearly better than a guess before (half its loss), worse than one now: not a model that never learned,
            # nor one near chance whose batches fluctuate around it
            if mean > chance and self._best <= chance / 2:
                self.collapsed_at = self.calls
                recipe = f"Adam, lr {self.lr:g}" if self.lr is not None else "Adam"
                warnings.warn(f"AAMUCriterion: the retain batch's cross-entropy is {mean:.2f} at call {self.calls}, "
                              f"above a uniform guess's ({chance:.2f}): the model has collapsed. The recipe's "
                              f"terms assume its optimiser (prep.optimizer(model): {recipe}); an optimiser that "
                              "steps by the gradient's size (SGD) takes steps 10-40x a cross-entropy step's with "
                              "this loss: use prep.optimizer(model), or lower your learning rate by that much",
                              UserWarning, stacklevel=user_stacklevel())
        return self.last.total


@dataclass
class PreparedUnlearning:
    """What :func:`prepare_unlearning` returns.

    Attributes:
        retain_loader: shuffling ``DataLoader`` over the reduced retain set, batches of ``batch_size``.
        criterion: :class:`AAMUCriterion`, a drop-in for ``nn.CrossEntropyLoss()``.
        reduced: the :class:`fastblend.ReducedRetainSet` behind ``retain_loader``.
        index: the :class:`fastblend.BlendIndex` used (built here unless one was passed): keep it to
            answer later requests without rebuilding.
        timings: seconds: ``index`` (building it, 0 when passed in) and ``request`` (reduce + set-up).
        recommended: the optimiser the recipe is tuned for (Adam, the batch it was prepared for, ``lr`` and
            ``epochs`` below).
        epochs: the recipe's budget in epochs over ``retain_loader`` (three on the matched and whole-class recipes,
            the matched one's times ``sqrt(batch_size / 64)`` above a batch of 64, rounded; one on the paper's,
            :data:`fastblend.recipe.RECIPE`); the learning rate is constant (no schedule).
        request: the request that runs: ``"matched"`` (the difficulty-matched recipe of docs/method.md §7.10),
            ``"class"`` (the whole-class recipe of §7.6: pooled transform, λ 5, Adam lr 5e-4, three epochs) or
            ``"sample"`` (the paper's recipe).
        class_recipe: the settings the whole-class recipe chose (empty on any other request).
        lr: the learning rate of :meth:`optimizer` (1e-3 matched, times ``sqrt(batch_size / 64)`` above a batch of
            64; 5e-4 whole-class; 2.4e-4 the paper's).
        recipe: the settings the request's recipe chose (those the caller did not pass).
        request_reason: why ``request="auto"`` fell back to the paper's recipe on scattered samples (``None``
            otherwise).
        auto_stop: a :class:`fastblend.AutoStop` on the forget set against the unseen data (no Retrain
            input, docs/method.md §4.5), holding the untouched model's held-out accuracy: in the loop,
            ``if prep.auto_stop(model, step, seconds): break`` every few steps. Raises ``ValueError``
            when there is none (``stop=None``, or data it cannot judge: the message says why).

    A loop that keeps its own optimiser and batch size should still stop after ``epochs`` epochs
    (:attr:`steps` optimiser steps): λ and the steepening are tuned for that budget, not for the
    codebase's epoch count (see the module docstring).
    """

    retain_loader: DataLoader
    criterion: AAMUCriterion
    reduced: ReducedRetainSet
    index: BlendIndex
    timings: dict = field(default_factory=dict)
    recommended: dict = field(default_factory=lambda: dict(RECOMMENDED))
    epochs: int = RECIPE.epochs
    request: str = "sample"
    class_recipe: dict = field(default_factory=dict)
    lr: float = RECIPE.lr
    recipe: dict = field(default_factory=dict)
    request_reason: str | None = None
    _auto_stop: AutoStop | None = field(default=None, repr=False)
    _no_stop: str = field(default="prepare_unlearning was called with stop=None", repr=False)

    @property
    def auto_stop(self) -> AutoStop:
        """The :class:`fastblend.AutoStop` of this request (see the class docstring)."""
        if self._auto_stop is None:
            raise ValueError(f"PreparedUnlearning.auto_stop: no auto stop: {self._no_stop}")
        return self._auto_stop

    @property
    def steps(self) -> int:
        """The recipe's budget in optimiser steps: ``epochs`` passes over ``retain_loader``."""
        return self.epochs * len(self.retain_loader)

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """``torch.optim.Adam(model.parameters(), lr=prep.lr)``: the recipe's optimiser (lr 1e-3 on the matched
        recipe, 5e-4 on the whole-class one, 2.4e-4 on the paper's)."""
        if not isinstance(model, nn.Module):
            raise TypeError("PreparedUnlearning.optimizer: model must be a torch.nn.Module, got "
                            f"{type(model).__name__}")
        return torch.optim.Adam(model.parameters(), lr=self.lr, weight_decay=RECIPE.weight_decay)


class _Joined(Dataset):
    """A streamed retain Dataset followed by the (in-memory) forget rows: ``(image, label)`` rows with
    ``.labels [N]`` int64, read in batches (``__getitems__``), so an index builds on it without
    reading the retain set whole."""

    def __init__(self, retain: Dataset, retain_labels: torch.Tensor, fx: torch.Tensor, fy: torch.Tensor):
        self.retain, self.n_retain = retain, len(retain)
        self.dtype = source_sample(retain, "prepare_unlearning").dtype
        self.fx = fx.cpu().to(self.dtype)
        self.labels = torch.cat([retain_labels.cpu().long(), fy.cpu().long()])

    def __len__(self) -> int:
        return int(self.labels.numel())

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.__getitems__([int(i)])[0]

    def __getitems__(self, rows: list[int]) -> list[tuple[torch.Tensor, int]]:
        idx = torch.as_tensor(rows, dtype=torch.int64).reshape(-1)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= len(self)):
            raise IndexError(f"prepare_unlearning: row {rows} out of range for {len(self)} rows")
        mine = idx < self.n_retain
        out = self.fx.new_empty((idx.numel(),) + tuple(self.fx.shape[1:]))
        if bool(mine.any()):
            out[mine] = read_rows(self.retain, idx[mine], "prepare_unlearning").to(self.dtype)
        if not bool(mine.all()):
            out[~mine] = self.fx[idx[~mine] - self.n_retain]
        return list(zip(out, self.labels[idx].tolist()))


def _index_rows(index: BlendIndex, rows: torch.Tensor) -> torch.Tensor:
    """Images of training rows ``rows`` of the index (a tensor's rows, or a Dataset's read in one batch)."""
    return read_rows(index.images, rows, "prepare_unlearning")


def _content_matches(source: Any, fx: torch.Tensor, fn: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Every pair ``(forget position, source row)`` whose images are bit-equal: ``([P] int64, [P] int64)``.

    ``source`` is an ``[N, C, H, W]`` tensor or a map-style Dataset (read in batches); ``fx`` the
    ``[F, C, H, W]`` forget images, compared in the source's dtype. Rows are paired by
    :func:`content_keys` and confirmed byte for byte, so a forget image held by several rows (duplicates
    in the training set) pairs with each of them."""
    sample = source_sample(source, fn)
    fx = fx.to(sample.dtype)
    keys = content_keys(source) if isinstance(source, torch.Tensor) else row_keys(source, None, fn)
    want = content_keys(fx)
    order = torch.argsort(keys, stable=True)
    ordered = keys[order]
    lo = torch.searchsorted(ordered, want, side="left")
    counts = torch.searchsorted(ordered, want, side="right") - lo
    total = int(counts.sum())
    fpos = torch.arange(want.numel()).repeat_interleave(counts, output_size=total)
    start = torch.cumsum(counts, 0) - counts
    offset = torch.arange(total) - start.repeat_interleave(counts, output_size=total)
    rows = order[lo.repeat_interleave(counts, output_size=total) + offset]
    if total == 0:
        return fpos, rows
    equal = (read_rows(source, rows, fn).flatten(1).cpu() == fx[fpos.to(fx.device)].flatten(1).cpu()).all(1)
    return fpos[equal], rows[equal]


def _rows_in_index(index: BlendIndex, forget: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mask [N] bool, rows [F] int64)``: the training rows of ``index`` to forget, and one row per
    forget row the caller passed (its A-AMU forget set).

    ``forget`` given as training indices or a ``[N]`` bool mask names the rows itself (checked as the
    caller passed them). Given as data, its rows are found by content: **every** training row holding
    a forget image is forgotten (an image duplicated in the training set is forgotten in all its copies,
    whatever their labels), and each forget row's A-AMU row is the first of them."""
    fn = "prepare_unlearning"
    n = len(index)
    if isinstance(forget, torch.Tensor) and forget.dim() == 1 and not forget.is_floating_point():
        mask = forget_mask(fn, forget, n)
        rows = mask.nonzero().flatten() if forget.dtype == torch.bool else forget.long().cpu()
        return mask, rows
    if isinstance(forget, (list, range)) and all(isinstance(i, int) and not isinstance(i, bool) for i in forget):
        return forget_mask(fn, forget, n), torch.as_tensor(list(forget), dtype=torch.int64)
    fx, _ = as_tensors(forget, "forget", fn)
    sample = source_sample(index.images, fn)  # the index's images: a tensor, or a Dataset read in batches
    if tuple(fx.shape[1:]) != tuple(sample.shape):
        raise ValueError(f"{fn}: forget images have shape {list(fx.shape[1:])} but the index holds "
                         f"{list(sample.shape)}")
    fpos, matched = _content_matches(index.images, fx, fn)
    found = torch.zeros(fx.shape[0], dtype=torch.bool)
    found[fpos] = True
    if not bool(found.all()):
        raise ValueError(f"{fn}: {int((~found).sum())} of the {found.numel()} forget rows are not in the index's "
                         "training set (pass forget as training indices, or an index built on retain + forget)")
    mask = torch.zeros(n, dtype=torch.bool)
    mask[matched] = True
    first = torch.full((fx.shape[0],), n, dtype=torch.int64)
    first.scatter_reduce_(0, fpos, matched, "amin")  # the lowest training row holding each forget image
    return mask, first


def _refuse_forget_in_retain(retain: Any, fx: torch.Tensor, fn: str) -> None:
    """``ValueError`` when any forget image is also a row of ``retain`` (a tensor or a streamed Dataset):
    the reduced retain set would serve it back."""
    fpos, rows = _content_matches(retain, fx, fn)
    if fpos.numel():
        count = int(torch.unique(fpos).numel())
        raise ValueError(f"{fn}: {count} of the {fx.shape[0]} forget rows are also in retain (bit-equal images; "
                         f"e.g. forget row {int(fpos[0])} is retain row {int(rows[0])}); the reduced retain set "
                         "would serve them back: pass a retain set without the forget rows")


def _loader_batch_size(data: Any, fn: str) -> int | None:
    """The batch size of a ``DataLoader``: its own, else its batch sampler's, else its first batch's rows (a batch
    sampler of its own, pre-batched items); ``None`` for anything else."""
    if not isinstance(data, DataLoader):
        return None
    batch = declared_batch_size(data)
    if batch is not None:
        return batch if batch >= 1 else None
    for item in data:
        return int(_unpack_batch(item, "retain", fn)[0].shape[0]) or None
    return None


def prepare_unlearning(model: nn.Module, retain: Any, forget: Any, unseen: Any, *, ipc: int | None = None,
                       batch_size: int | None = None, index: BlendIndex | None = None, seed: int = 0,
                       lam: float | None = None, k: float = RECIPE.k, kappa: float = RECIPE.kappa,
                       sigma: float = RECIPE.sigma, steepen: str = RECIPE.steepen,
                       forget_batch_factor: int | None = None,
                       unseen_batch_factor: int | None = None,
                       max_draw: int | None = RECIPE.max_draw, iterations: int | None = None,
                       backend: str = "auto", device: torch.device | str | None = None,
                       progress: bool = False, stop: str | AutoStop | None = "auto", request: str = "auto",
                       transform: str | None = None, target: str | None = None,
                       odds_weight: float | None = None, anchor_weight: float | None = None,
                       odds_pairing: str | None = None) -> PreparedUnlearning:
    """Blend + A-AMU for an existing loader-based fine-tune loop (see the module docstring).

    Args:
        model: the model being unlearned (the criterion runs it on forget and unseen batches).
        retain: the retain set: a ``DataLoader``, a ``Dataset`` or an ``(images [N, C, H, W],
            labels [N])`` pair (read once, in memory); a map-style ``Dataset`` that holds no image
            tensor (e.g. :class:`fastblend.MemmapImages`) is streamed instead: the index is built on
            it batch by batch and the reduced retain loader reads its residual rows from it. Unused
            when ``index`` is given (may be ``None``; an index built on a Dataset works the same).
        forget: the forget set, in the same forms; with ``index``, also training indices into it
            or a ``[N]`` bool mask, else its rows are found in the index by content: every training
            row holding a forget image is forgotten (all copies of an image duplicated in the
            training set, whatever their labels). Without ``index``, forget images that are also rows
            of ``retain`` (or ``forget is retain``) are refused: the retain loader would serve them.
        unseen: labelled in-distribution data the model never trained on, in the same forms.
        ipc: clusters per class of the Blend grouping when the index is built here; default about a
            fifth of the mean class size (about five images per cluster).
        batch_size: the retain batch size of ``retain_loader`` (the codebase's, e.g. 256; ``None``, the default:
            the batch size of ``retain`` when it is a ``DataLoader`` of batches above 64, else 64, as ``unlearn``
            takes a retain loader's); the
            criterion draws ``forget_batch_factor·batch_size`` forget and ``unseen_batch_factor·batch_size`` unseen
            samples per call (the request's factors: 1 each on the whole-class recipe, 1 forget and no unseen
            batch on the matched one, 4 each on the paper's), at most ``max_draw`` each (and forget rows at most
            the forget set's size), and refuses larger retain batches.
        index: a :class:`fastblend.BlendIndex` of the training set (retain ∪ forget) built before
            the request; without one it is built here on ``retain`` followed by ``forget``.
        seed: seeds the grouping, the matcher, the loader's shuffling and the samplers.
        lam, k, kappa, sigma, steepen, forget_batch_factor, unseen_batch_factor, max_draw: A-AMU
            settings (:class:`fastblend.AAMUStep`; defaults :data:`fastblend.recipe.RECIPE`, ``max_draw``
            256 = 4·64: on the paper's recipe a batch of 256 draws 256 forget and 256 unseen rows; ``None``: 4B
            each). ``lam`` ``None`` (default): the request's, the paper's 34 or the whole-class recipe's 5;
            ``forget_batch_factor`` ``None`` (default): the request's, 1 on the matched and whole-class recipes,
            else 4; ``unseen_batch_factor`` ``None`` (default): the request's, 1 on the whole-class recipe, else 4.
        iterations, backend: Blend settings when the index is built here (default 12 iterations). With
            ``index``, an ``ipc`` or ``iterations`` other than the index's raises ``ValueError``.
        device: where the index is built (default: the model's device).
        progress: tqdm bars while building the index.
        stop: ``"auto"`` (default): ``prep.auto_stop`` is ``AutoStop(forget, unseen, the reduced set's
            labels, seed=seed)``, started on ``model`` as passed (the untouched model's held-out accuracy;
            seconds in ``timings["auto_stop"]``); a :class:`fastblend.AutoStop` of your own (started here on
            ``model``: a new run, an earlier run's history and stop dropped, as ``unlearn`` does); ``None``: no
            auto stop. With ``"auto"``, data the stop cannot judge (fewer than
            5 forget rows, unseen data lacking a forget class) leaves ``prep.auto_stop`` raising why.
        request: ``"auto"`` (default): a request that leaves no retain image of any forget class (whole
            class) runs the whole-class recipe (docs/method.md §7.6: the pooled transform, λ 5 unless
            ``lam`` is given, Adam lr 5e-4, three epochs; ``prep.request == "class"``); scattered samples the
            difficulty-matched recipe (§7.10: ``target="matched_fixed"``, ``odds_weight=1``,
            ``odds_pairing="image"``, ``anchor_weight=10``, ``forget_batch_factor=1``, Adam lr 1e-3, three epochs;
            ``prep.request == "matched"``) when every forget class keeps retain images and has unseen images and
            no other ``target`` is passed, else the paper's (``prep.request_reason`` says why); ``"class"``,
            ``"matched"`` or ``"sample"`` (the paper's) force one. What the caller passes is kept; ``prep.lr``,
            ``prep.epochs`` and ``prep.optimizer`` follow the request.
        transform: the loss-quantile transform (``"per_set"``, the paper's, or ``"pooled"``); default: the
            request's (``"pooled"`` on a whole-class request).
        target: the regulariser's target (docs/method.md §7.7); ``None`` (default): the request's. ``"unseen"``
            (the paper's) or
            ``"matched"``: the unseen images as hard as the forget images, ranked by ``model`` as passed
            here (the model before unlearning); ``prep.auto_stop`` then compares the forget set with them;
            ``"matched_fixed"``: the same images with their losses under ``model`` as passed here, fixed
            for the run (not on a request that forgets whole classes).
        odds_weight: weight of A-AMU's log-odds term (docs/method.md §7.8; ``None``, the default: the request's,
            1 on the matched recipe, else 0: off), meant for ``target="matched_fixed"``.
        odds_pairing: how that term pairs the forget images with the target (``None``, the default: the request's,
            ``"image"`` on the matched recipe): ``"quantile"`` (§7.8) or
            ``"image"`` (docs/method.md §7.10: each forget image against its own matched image's log-odds under
            ``model`` as passed here, one-sided); ``"image"`` needs ``target="matched_fixed"``.
        anchor_weight: weight of the held-out anchor (docs/method.md §7.9; ``None``, the default: the request's, 10
            on the matched recipe, else 0: off): the criterion
            also keeps the model's predictions on the unseen images (of the classes the retain set still holds)
            near those of ``model`` as passed here; one more forward of a retain batch's size per step.

    Returns:
        :class:`PreparedUnlearning` with ``retain_loader`` and ``criterion``. Train with the recipe's
        optimiser (``prep.optimizer(model)``: Adam at ``prep.lr``) for ``prep.epochs`` epochs (``prep.steps``
        steps). A loop that keeps its own optimiser: see the module docstring.
    """
    fn = "prepare_unlearning"
    ipc, batch_size, seed, iterations = map(plain_number, (ipc, batch_size, seed, iterations))  # numpy's too
    # the codebase's loader keeps its batch size: the reduced loader yields batches of it (set once the reduced set's
    # size is known: a batch larger than the set holds the set)
    loader_batch = _loader_batch_size(retain, fn) if batch_size is None else None
    if not isinstance(model, nn.Module):
        raise TypeError(f"{fn}: model must be a torch.nn.Module, got {type(model).__name__}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"{fn}: batch_size must be None or an int >= 1, got {batch_size!r}")
    if stop is not None and not isinstance(stop, AutoStop) and not (isinstance(stop, str) and stop == "auto"):
        raise ValueError(f"{fn}: stop must be 'auto', a fastblend.AutoStop or None, got {stop!r}")
    if not isinstance(request, str) or request not in REQUESTS:
        raise ValueError(f"{fn}: request must be one of {REQUESTS}, got {request!r}")
    if transform is not None and (not isinstance(transform, str) or transform not in ("per_set", "pooled")):
        raise ValueError(f"{fn}: transform must be 'per_set', 'pooled' or None (the request's), got {transform!r}")
    if target is not None and (not isinstance(target, str) or target not in TARGETS):
        raise ValueError(f"{fn}: target must be one of {TARGETS} or None (the request's), got {target!r}")
    # what the caller set; None: the request's recipe decides (below), each checked before the index is built
    given: dict[str, Any] = {}
    if odds_weight is not None:
        given["odds_weight"] = check_odds_weight(fn, odds_weight)
    if anchor_weight is not None:
        given["anchor_weight"] = check_odds_weight(fn, anchor_weight, "anchor_weight")
    if odds_pairing is not None:
        # before the index is built: against the target given, else the one the request sets (the matched recipe's
        # on "auto" or "matched"; a request that falls back to the paper's for its data is checked after the build)
        check_odds_pairing(fn, odds_pairing, target=target or ("matched_fixed" if request in ("auto", "matched")
                                                                else "unseen"))
        given["odds_pairing"] = odds_pairing
    if target is not None:
        given["target"] = target
    if forget_batch_factor is not None:
        given["forget_batch_factor"] = forget_batch_factor
    if unseen_batch_factor is not None:
        given["unseen_batch_factor"] = unseen_batch_factor
    if transform is not None:
        given["transform"] = transform
    if lam is not None:  # a λ of the caller's own is kept, the paper's value included; None: the request's
        given["lam"] = lam
    check_step_settings(fn, RECIPE.lam if lam is None else lam, k, kappa, sigma, "auto",
                        RECIPE.forget_batch_factor if forget_batch_factor is None else forget_batch_factor,
                        RECIPE.unseen_batch_factor if unseen_batch_factor is None else unseen_batch_factor,
                        max_draw, steepen)  # and the step's settings
    if index is not None and not isinstance(index, BlendIndex):
        raise TypeError(f"{fn}: index must be a fastblend.BlendIndex or None, got {type(index).__name__}")
    if index is not None:  # the index was built with its own settings: a different one here would be ignored
        built = {"ipc": index.clustering.ipc, "iterations": index.settings.get("iterations")}
        for name, value in (("ipc", ipc), ("iterations", iterations)):
            if value is not None and value != built[name]:
                raise ValueError(f"{fn}: {name}={value!r} conflicts with the index passed, built with "
                                 f"{name}={built[name]!r}; leave {name} out (the index decides it) or build the "
                                 "index with it")
    dev = as_device(device, fn) or module_device(model) or torch.device("cpu")
    t0 = time.perf_counter()
    build_seconds = 0.0
    if index is None:
        if forget is retain:
            raise ValueError(f"{fn}: forget is retain (the same object); pass the retain set without the forget rows")
        fx, fy = as_tensors(forget, "forget", fn)
        check_finite_images(fn, "forget", fx)
        if is_streamed_dataset(retain):  # e.g. MemmapImages: the index streams it, the reduced set serves rows from it
            shape = tuple(source_sample(retain, fn).shape)
            if shape != tuple(fx.shape[1:]):
                raise ValueError(f"{fn}: retain images are {list(shape)} but forget images {list(fx.shape[1:])}")
            _refuse_forget_in_retain(retain, fx, fn)
            data, labels = _Joined(retain, source_labels(retain, fn), fx, fy), None
            n_retain = len(retain)
        else:
            rx, ry = as_tensors(retain, "retain", fn)
            if tuple(rx.shape[1:]) != tuple(fx.shape[1:]):
                raise ValueError(f"{fn}: retain images are {list(rx.shape[1:])} but forget images "
                                 f"{list(fx.shape[1:])}")
            _refuse_forget_in_retain(rx, fx, fn)
            data, labels = torch.cat([rx, fx.to(rx.device, rx.dtype)]), torch.cat([ry, fy.to(ry.device)])
            n_retain = rx.shape[0]
        all_labels = labels if labels is not None else data.labels
        # labels inside the model's output width before the index is built (the build can take minutes)
        width = probe_num_classes(model, fx[:1].to(dev, model_dtype(model)))
        check_batch_labels(fy, width, "forget", fn)
        check_batch_labels(all_labels[:n_retain], width, "retain", fn)
        if ipc is None:
            ipc = default_ipc(all_labels.numel(), int(torch.unique(all_labels).numel()))
        iterations = 12 if iterations is None else iterations
        index = BlendIndex.build(data, labels, ipc=ipc, seed=seed, iterations=iterations, backend=backend,
                                 device=dev, progress=progress)
        build_seconds = index.timings["total"]
        forget_rows = torch.arange(n_retain, all_labels.numel())
    else:
        forget_rows, rows = _rows_in_index(index, forget)
        if bool(forget_rows.all()):
            raise ValueError(f"{fn}: forget (with every training row holding one of its images) covers all "
                             f"{len(index)} training images of the index; nothing would be retained")
        fx, fy = _index_rows(index, rows), index.labels[rows]
        # the index's labels inside the model's output width (checked above before a build)
        width = probe_num_classes(model, fx[:1].to(dev, model_dtype(model)))
        check_batch_labels(fy, width, "forget", fn)
        check_batch_labels(index.labels[~forget_rows], width, "retain", fn)
    t1 = time.perf_counter()
    reduced = index.reduce(forget_rows)
    if batch_size is None:
        batch_size = max(min(loader_batch or 0, len(reduced)), RECIPE.batch_size)
    if batch_size != RECIPE.batch_size:  # the matched recipe's lr and epochs scale with a larger batch (§7.10)
        given["batch_size"] = batch_size
    ux, uy = as_tensors(unseen, "unseen", fn)
    check_finite_images(fn, "unseen", ux)
    if tuple(ux.shape[1:]) != tuple(fx.shape[1:]):
        raise ValueError(f"{fn}: unseen images are {list(ux.shape[1:])} but forget images {list(fx.shape[1:])}")
    # every label inside the model's output width, before any criterion call (torch's IndexError from inside the
    # loss, or a forget class "missing from the unseen pool", otherwise): retain and forget checked above
    check_batch_labels(uy, width, "unseen", fn)
    # the fine-tune's recipes (the criterion is a fine-tune's) through the one rule unlearn uses: "auto" is a
    # whole-class request when no forget class has a retain row, else the difficulty-matched one when every forget
    # class keeps retain rows and has unseen images; what the caller passed here is kept
    auto = request == "auto"
    whole, matched_ok, why_not = (auto_request_of_labels(fy, reduced.labels, uy) if auto
                                  else (False, True, None))  # an explicit request decides by itself
    try:
        request, cfg, recipe = request_config("a_finetune", AFinetuneConfig(request=request, **given), given, whole,
                                              matched_ok=matched_ok)
        cfg.check(fn)
    except ValueError as exc:  # the settings are this function's keyword arguments, not a config's fields
        raise ValueError(f"{fn}: {str(exc).removeprefix(fn + ': ').replace('config.', '')}") from None
    # the caller's loop trains its own model whole: unlearn's frozen prefix (§7.11) is not the drop-in's
    recipe = {k: v for k, v in recipe.items() if k != "frozen_prefix"}
    lam, target, odds_weight, anchor_weight = cfg.lam, cfg.target, cfg.odds_weight, cfg.anchor_weight
    odds_pairing, forget_batch_factor, unseen_batch_factor = (cfg.odds_pairing, cfg.forget_batch_factor,
                                                              cfg.unseen_batch_factor)
    tx, ty, fixed, odds_target = ux, uy, None, None
    if target == "matched_fixed":  # refused before the set-up's forwards
        refuse_fixed_on_whole_classes(fy, reduced.labels, fn)
    # the untouched model's logits of the unseen images: one forward for the matched target and the anchor
    u_logits = predict_logits(model, ux, device=dev).float() if target != "unseen" or anchor_weight else None
    if target != "unseen":  # held-out images as hard as the forget images, ranked by the untouched model
        idx, fixed, _ = matched_rows(model, reduced, None, (fx, fy), (ux, uy), target, lambda: reduced.labels, seed,
                                     dev, fn, unseen_logits=u_logits)
        idx = idx.to(ux.device)
        tx, ty = ux[idx], uy[idx]
        if odds_pairing == "image":
            odds_target = image_odds_target(fixed, ty, fx.shape[0], fn)
    step = AAMUStep(model, (fx.to(dev), fy.to(dev)), (tx.to(dev), ty.to(dev)), batch_size=batch_size, lam=lam, k=k,
                    kappa=kappa, sigma=sigma, steepen=steepen, seed=seed, forget_batch_factor=forget_batch_factor,
                    unseen_batch_factor=unseen_batch_factor, max_draw=max_draw, fn=fn, transform=cfg.transform,
                    # every label the request holds (not the unseen labels' max: a forget class they lack would
                    # read as an out-of-range label instead of a missing class)
                    num_classes=int(max(fy.max(), uy.max(), reduced.labels.max())) + 1,
                    unseen_logits=fixed, odds_weight=odds_weight, anchor_weight=anchor_weight,
                    odds_pairing=odds_pairing, forget_odds_target=odds_target,
                    anchor=anchor_rows(model, (ux, uy), fy, reduced.labels, dev, fn, unseen_logits=u_logits)
                    if anchor_weight else None)
    loader = DataLoader(reduced, batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    timings = {"index": build_seconds, "request": time.perf_counter() - t1}
    t2 = time.perf_counter()
    auto_stop, why = None, "prepare_unlearning was called with stop=None"
    if stop is not None:
        if isinstance(stop, AutoStop):
            auto_stop = stop
        else:
            try:
                auto_stop = AutoStop((step.forget.images, step.forget.labels), (ux, uy), reduced.labels, seed=seed,
                                     matched_heldout=None if target == "unseen" else (tx, ty))
            except ValueError as exc:  # the request itself is fine; only the stop cannot judge this data
                why = str(exc)
        if auto_stop is not None:  # a new run (a stop of the caller's too, as unlearn does): the untouched model's
            # held-out accuracy, which the rule keeps (from the set-up's forward of the unseen images when the stop
            # is this function's)
            auto_stop.start(step._plain, heldout_logits=u_logits if auto_stop is not stop else None)
    timings["auto_stop"] = time.perf_counter() - t2
    timings["total"] = time.perf_counter() - t0
    recommended = {**RECOMMENDED, "lr": cfg.lr, "epochs": cfg.epochs, "batch_size": batch_size}
    return PreparedUnlearning(loader, AAMUCriterion(step, cfg.lr), reduced, index, timings, recommended, cfg.epochs,
                              request, recipe if request == "class" else {}, cfg.lr, recipe=recipe,
                              request_reason=paper_reason(why_not, f"target={cfg.target!r} was passed"
                                                          if chose_other_target(given, cfg) else None)
                              if auto and request == "sample" else None,
                              _auto_stop=auto_stop, _no_stop=why)
