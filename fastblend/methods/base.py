"""The training loop of the AMU methods: the :class:`Method` hooks, :func:`train` and their model helpers.

Every training-based method is a :class:`Method` — a handful of hooks (the retain-side loss, an
optional forget-side term, a regulariser, an optional extra pass per epoch) run by one loop,
:func:`train`. The same loop runs the accelerated variant of a method (docs/method.md §2.4) through the one
A-AMU step, :class:`fastblend.AAMUStep`: it draws and forwards the forget and unseen batches, steepens the
retain-side per-sample loss and adds ``λ·MMD²`` between their loss distributions.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .._device import synchronize
from .._progress import bar as progress_bar
from .._progress import progress_enabled
from ..data_adapter import CyclicBatches, DataView, model_device
from ..distributed import all_gather_rows, is_distributed, row_shard, world_size
from ..ops._dispatch import backend_for
from ..tracking import StepClock
from .config import TrainConfig
from .context import RunContext, make_optimizer, make_scheduler

# ---------------------------------------------------------------------------------------------
# models


def reinitialise(model: nn.Module, seed: int, fn: str) -> nn.Module:
    """A deep copy of ``model`` with every parameter re-drawn by its module's ``reset_parameters``.

    The global RNG is forked (its state is restored afterwards) and seeded with ``seed``.
    """
    fresh = copy.deepcopy(model)
    missing = [f"{n or '<root>'} ({type(m).__name__})" for n, m in fresh.named_modules()
               if next(m.parameters(recurse=False), None) is not None and not hasattr(m, "reset_parameters")]
    if missing:
        raise ValueError(f"{fn}: cannot re-initialise modules {missing}: they own parameters but have no "
                         "reset_parameters(); pass config.model_factory")
    device = model_device(fresh)
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for m in fresh.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    return fresh


def probe_num_classes(model: nn.Module, x: torch.Tensor) -> int:
    """Output width of ``model`` on one sample (eval mode for the probe, then restored)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x[:1])
    finally:
        model.train(was_training)
    if out.dim() != 2:
        raise ValueError(f"unlearn: the model must return logits of shape [N, C]; got shape {tuple(out.shape)}")
    return int(out.shape[1])


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float,
            reduction: str = "batchmean") -> torch.Tensor:
    """``KL_T(student‖teacher) = kl_div(log_softmax(s/T), softmax(t/T))·T²`` (docs/method.md §2.4).

    ``reduction="none"`` gives the per-sample KL ``[B]`` (its mean equals ``"batchmean"``).
    """
    log_s = F.log_softmax(student_logits / T, dim=1)
    log_t = F.log_softmax(teacher_logits / T, dim=1)
    per_sample = (log_t.exp() * (log_t - log_s)).sum(1) * (T * T)
    return per_sample if reduction == "none" else per_sample.mean()


def frozen_copy(model: nn.Module) -> nn.Module:
    """An eval-mode deep copy without gradients (teachers)."""
    teacher = copy.deepcopy(model).eval()
    teacher.requires_grad_(False)
    return teacher


# ---------------------------------------------------------------------------------------------
# methods and the loop


@dataclass
class RetainTerms:
    """A method's retain-side loss: ``weight · mean(per_sample) + extra`` (plain), or
    ``weight · steepen(per_sample) + extra`` (accelerated)."""

    per_sample: torch.Tensor
    weight: float = 1.0
    extra: torch.Tensor | None = None


@dataclass
class RunData:
    retain: DataView
    forget: DataView
    unseen: DataView | None
    unseen_logits: torch.Tensor | None = None  # fixed target logits of the unseen rows (AAMUStep's)
    anchor: tuple[torch.Tensor, torch.Tensor] | None = None  # held-out images and their untouched logits (§7.9)
    forget_odds_target: torch.Tensor | None = None  # per forget row, its matched image's log-odds (§7.10)


class Method:
    """Hooks of a training-based AMU method; the defaults give plain fine-tuning (CE on retain)."""

    name = "method"
    #: whether each retain step also draws a forget batch (plain, non-accelerated runs)
    uses_forget_batches = False

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg

    def prepare(self, model: nn.Module, data: RunData, ctx: RunContext) -> nn.Module:
        """Called once before training; returns the model to train (may be a fresh one)."""
        return model

    def forget_batch_size(self, cfg: TrainConfig, data: RunData) -> int:
        return cfg.batch_size

    def extra_steps_per_epoch(self, cfg: TrainConfig, data: RunData, epoch: int) -> int:
        return 0

    def before_epoch(self, model: nn.Module, epoch: int, data: RunData, ctx: RunContext,
                     step: Callable[[torch.Tensor], None]) -> tuple[torch.Tensor, int]:
        """An extra pass before the retain pass of ``epoch`` (``step(loss)`` takes one optimiser step).
        Returns (sum of its losses, its step count)."""
        return torch.zeros((), device=ctx.device), 0

    def retain_terms(self, model: nn.Module, x: torch.Tensor, logits: torch.Tensor, y: torch.Tensor,
                     epoch: int, ctx: RunContext) -> RetainTerms:
        return RetainTerms(F.cross_entropy(logits, y, reduction="none"))

    def forget_loss(self, x: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, epoch: int,
                    ctx: RunContext) -> torch.Tensor | None:
        return None

    def regulariser(self, model: nn.Module, epoch: int, ctx: RunContext) -> torch.Tensor | None:
        return None

    def finish(self, model: nn.Module) -> nn.Module:
        return model


@dataclass
class TrainOutcome:
    model: nn.Module
    losses: list[float]
    steps: int


def train(method: Method, model: nn.Module, data: RunData, cfg: TrainConfig, ctx: RunContext,
          accelerated: bool, callback: Callable[[nn.Module, int, float], None] | None = None,
          eval_every: int | Callable[[int], bool] = 0) -> TrainOutcome:
    """Run ``method`` (plain, or accelerated per docs/method.md §2.4 when ``accelerated``) on ``model``.

    ``callback(model, step, seconds)``, when given, runs before the first step, after every
    ``eval_every``-th optimiser step (or after each step ``s`` with ``eval_every(s)`` true) and after the last
    (:func:`fastblend.tracking.final_report` true there), with ``seconds`` the training wall time so far; its own
    time is excluded from that clock and recorded in ``ctx.info["eval_seconds"]``. If it
    returns ``True`` the training stops there (``ctx.info["stopped_at_step"]`` records the step; under
    ``torch.distributed`` rank 0's answer holds on every rank).

    Under ``torch.distributed`` (a default group of P > 1 ranks) the model is trained as
    ``DistributedDataParallel``: see :class:`_DataParallel` for how batches are split and the loss scaled.
    """
    clock = StepClock(callback, ctx.device) if callback is not None else None
    model = ctx.place(method.prepare(model, data, ctx))
    ctx.trained = model  # what trains (retrain and distill start a new model): a failed run's hand-back loads into it
    model.train()
    par = _DataParallel(model, ctx.device, ctx.ddp_options) if is_distributed() else None
    net = par.net if par is not None else model  # the forwards that need gradients go through DDP
    ctx.forwards.fuse, ctx.forwards.micro = cfg.fuse_forward, cfg.micro_batch
    ctx.forwards.for_model(model, ctx.fn, stacklevel=4)

    forget_stream = aamu = None
    if accelerated:  # the one A-AMU step (fastblend.aamu.AAMUStep), with this run's forwards
        from ..aamu import AAMUStep

        aamu = AAMUStep(net, data.forget, data.unseen, batch_size=cfg.batch_size, lam=cfg.lam, k=cfg.k,
                        kappa=cfg.kappa, sigma=cfg.sigma, steepen=cfg.steepen, seed=ctx.seed,
                        forget_batch_factor=cfg.forget_batch_factor, unseen_batch_factor=cfg.unseen_batch_factor,
                        max_draw=cfg.max_draw, unseen_refresh=cfg.unseen_refresh, num_classes=ctx.num_classes,
                        forwards=ctx.forwards, fn=ctx.fn, transform=cfg.transform, unseen_logits=data.unseen_logits,
                        odds_weight=cfg.odds_weight, anchor=data.anchor, anchor_weight=cfg.anchor_weight,
                        odds_pairing=cfg.odds_pairing, forget_odds_target=data.forget_odds_target)
        ctx.info["backends"] = {"quantile_mmd": "torch (pooled)" if cfg.transform == "pooled" else
                                backend_for("quantile_mmd", ctx.device, aamu.criterion.backend)}
    elif method.uses_forget_batches:
        forget_stream = CyclicBatches(data.forget, method.forget_batch_size(cfg, data), ctx.generator, ctx.device)

    optimizer = make_optimizer(model, cfg)
    per_epoch = data.retain.num_batches(cfg.batch_size)
    total_steps = sum(per_epoch + method.extra_steps_per_epoch(cfg, data, e) for e in range(cfg.epochs))
    scheduler = make_scheduler(optimizer, cfg, total_steps, per_epoch)

    taken = 0

    def due(step_count: int) -> bool:
        """Whether ``step_count`` is on the callback's cadence."""
        return eval_every(step_count) if callable(eval_every) else bool(eval_every) and step_count % eval_every == 0

    def report(step_count: int, final: bool = False) -> None:
        """The callback, after which every module is back in the mode it trained in (a callback that
        evaluates and leaves the model in eval mode must not make training use running statistics)."""
        modes = [(m, m.training) for m in model.modules()]
        try:
            clock.report(model, step_count, final)
        finally:
            for m, training in modes:
                m.training = training

    def step(loss: torch.Tensor) -> None:
        nonlocal taken
        ctx.backward_step(loss, optimizer, scheduler)
        taken += 1
        # the planned last step is reported once, after the loop, as the final report (final_report() true there)
        if clock is not None and taken != total_steps and due(taken):
            report(taken)
            if clock.stop:  # wherever the step was taken: a retain step or a method's own pass (SCRUB's)
                raise _StopTraining

    losses: list[float] = []
    steps = 0
    epochs = range(cfg.epochs)
    show = progress_enabled(ctx.progress)
    if show:
        epochs = progress_bar(epochs, desc=method.name, leave=False, progress=True)
    try:
        if clock is not None:
            report(0)
            if clock.stop:
                raise _StopTraining
        for epoch in epochs:
            total, n = method.before_epoch(model, epoch, data, ctx, step)
            total = total.detach()
            step_losses: list[torch.Tensor] = []  # on the device: read once per epoch, no per-step sync
            # under DDP each rank reads only its part of every global retain batch (where rows are drawn by index)
            own_part = par is not None and data.retain.indexable
            batches = data.retain.batches(cfg.batch_size, ctx.generator, ctx.device, ctx.fn,
                                          part=row_shard if own_part else None)
            for i, (x_r, y_r) in enumerate(batches):
                x_f = y_f = w_f = None
                if own_part:
                    w_r = par.weight(x_r.shape[0], min(cfg.batch_size, len(data.retain) - i * cfg.batch_size))
                elif par is not None:
                    x_r, y_r, w_r = par.part(x_r, y_r)
                if aamu is not None:  # the step draws the forget batch and forwards it with the retain batch
                    logits_r, forget = aamu.forward(net, x_r, ctx.device)
                    x_f, y_f, logits_f = forget.x, forget.y, forget.logits
                    if par is not None:
                        w_f = par.weight(x_f.shape[0], forget.size)
                else:
                    if forget_stream is not None:
                        x_f, y_f = forget_stream.next()
                        if par is not None:
                            x_f, y_f, w_f = par.part(x_f, y_f)
                    logits_r, logits_f = ctx.forward(net, x_r, x_f)
                terms = method.retain_terms(model, x_r, logits_r, y_r, epoch, ctx)
                if aamu is not None:  # gathered across ranks under DDP (labels checked once, on the host)
                    loss = aamu.loss(terms.per_sample, retain_weight=terms.weight).total
                elif par is None:
                    loss = terms.weight * terms.per_sample.mean()
                else:
                    loss = terms.weight * w_r * terms.per_sample.mean() if w_r else terms.per_sample.sum()
                if terms.extra is not None and (par is None or w_r):
                    loss = loss + (terms.extra if par is None else w_r * terms.extra)
                if logits_f is not None and (par is None or w_f):
                    extra = method.forget_loss(x_f, logits_f, y_f, epoch, ctx)
                    if extra is not None:
                        loss = loss + (extra if par is None else w_f * extra)
                reg = method.regulariser(model, epoch, ctx)
                if reg is not None:
                    loss = loss + reg
                step(loss)
                total = total + loss.detach()
                step_losses.append(loss.detach())
                n += 1
            steps += n
            if par is not None:  # the mean over ranks of their losses is the single-process loss
                total = all_gather_rows(total.reshape(1)).mean()
            losses.append(float(total) / max(n, 1))
            _check_finite_loss(losses[-1], step_losses, epoch, ctx.fn)
            if show:
                epochs.set_postfix(loss=f"{losses[-1]:.4f}")
    except _StopTraining:  # the callback asked to stop; an unfinished epoch's loss is not in losses
        ctx.info["stopped_at_step"] = steps = taken
    if par is not None:
        par.sync_buffers()
    if clock is not None:
        report(taken, final=True)
        if clock.stop and "stopped_at_step" not in ctx.info and taken == total_steps and due(taken):
            ctx.info["stopped_at_step"] = taken  # asked at the planned last step, as its in-loop report recorded
        ctx.info["eval_seconds"] = clock.paused
    bad = [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise FloatingPointError(f"{ctx.fn}: training left non-finite weights in {len(bad)} parameters (e.g. "
                                 f"{bad[0]!r}) after epoch {cfg.epochs}; lower config.lr or check the data")
    return TrainOutcome(method.finish(model), losses, steps)


class _DataParallel:
    """How :func:`train` runs under ``torch.distributed``: ``net`` is the model wrapped in
    ``DistributedDataParallel`` (gradients averaged over the P ranks).

    Every rank draws the same global batches (same seeded generators and samplers) and keeps its
    :func:`~fastblend.distributed.row_shard`. A term that is a mean over a batch's ``n`` rows is
    computed on the rank's ``n_r`` rows and scaled by ``w = P·n_r/n`` (:meth:`part`), so DDP's
    average ``(1/P) Σ_r w_r mean_r = (1/n) Σ rows`` is the global mean for any split; the A-AMU loss
    is computed on gathered rows, identically on every rank (each rank's rows get ``P`` times their
    gradient through the gather, divided back by the average); terms of the parameters alone
    (regularisers) and passes every rank runs whole (SCRUB's forget pass) are identical on every
    rank, so averaging leaves them as they are."""

    def __init__(self, model: nn.Module, device: torch.device, options: dict | None = None) -> None:
        from torch.nn.parallel import DistributedDataParallel

        ids = None
        if device.type == "cuda":
            ids = [device.index if device.index is not None else torch.cuda.current_device()]
        self.net = DistributedDataParallel(model, device_ids=ids, **(options or {}))
        self.world = world_size()

    def weight(self, n_local: int, n: int) -> float:
        return self.world * n_local / n

    def part(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        rows = row_shard(x.shape[0])
        return x[rows], y[rows], self.weight(rows.stop - rows.start, x.shape[0])

    def sync_buffers(self) -> None:
        """Rank 0's buffers (BatchNorm running statistics, which each rank's last retain forward
        moved with its own part) on every rank, so every rank returns the same model."""
        for buffer in self.net.module.buffers():
            torch.distributed.broadcast(buffer, 0)


class _StopTraining(Exception):
    """Raised by :func:`train`'s ``step`` once the callback has asked to stop; caught by ``train``."""


def _check_finite_loss(mean: float, step_losses: list[torch.Tensor], epoch: int, fn: str) -> None:
    """Stop a diverged run: the epoch's mean loss is read anyway, so finite losses cost nothing more."""
    if math.isfinite(mean):
        return
    where = ""
    if step_losses:
        bad = torch.nonzero(~torch.isfinite(torch.stack(step_losses).float()))
        if bad.numel():
            where = f", first at step {int(bad[0]) + 1} of {len(step_losses)}"
    raise FloatingPointError(f"{fn}: the training loss became non-finite ({mean}) in epoch {epoch + 1}{where}; "
                             "the weights are no longer usable. Lower config.lr or check the data for NaN/Inf")


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    """Run ``fn`` and return its result and its wall time, synchronising ``device`` on both ends."""
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - start
