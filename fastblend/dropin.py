"""A drop-in for loader-based unlearning code: a reduced-retain ``DataLoader`` and an A-AMU criterion.

Unlearning codebases usually hold the retain, forget and unseen data apart (a dict of
``DataLoader``\\ s), fine-tune with a criterion called as ``criterion(model(x), y)`` and an optimiser
loop. :func:`prepare_unlearning` turns such a set-up into Blend + A-AMU (docs/method.md §1-§2) without
touching the loop::

    prep = fastblend.prepare_unlearning(model, loaders["retain"], loaders["forget"], loaders["unseen"])
    loaders["retain"], criterion = prep.retain_loader, prep.criterion
    optimizer = torch.optim.Adam(model.parameters(), lr=2.4e-4)   # A-AMU's optimiser, 1 epoch
    for x, y in loaders["retain"]:                                 # the codebase's own loop
        loss = criterion(model(x), y)
        optimizer.zero_grad(); loss.backward(); optimizer.step()

The criterion computes the per-sample cross-entropy of the retain batch, steepens it and adds
``λ·MMD²`` between a forget batch and an unseen batch it draws itself (4B each); its forget and
unseen forwards leave BatchNorm running statistics untouched.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ._device import module_device
from .aamu import AAMULossOutput, Accelerator
from .condense import BlendIndex, ReducedRetainSet
from .condense.checks import content_keys
from .dataview import as_data

__all__ = ["AAMUCriterion", "PreparedUnlearning", "prepare_unlearning"]

#: A-AMU's optimiser (docs/method.md §2.4), the setting the criterion's λ and steepening are tuned for.
RECOMMENDED = {"optimizer": "Adam", "lr": 2.4e-4, "batch_size": 64, "epochs": 1}


class AAMUCriterion(nn.Module):
    """``criterion(logits [B, C], targets [B] int64) -> 0-d loss``, ``nn.CrossEntropyLoss``'s call
    signature, returning the A-AMU loss ``steepen(CE) + λ·MMD²`` (docs/method.md §2.4).

    Each call draws its own forget and unseen batches through ``accelerator`` (BatchNorm-safe).
    ``last`` holds the latest :class:`fastblend.AAMULossOutput` (``main``/``mmd`` detached, for logging).
    """

    def __init__(self, accelerator: Accelerator) -> None:
        super().__init__()
        self.accelerator = accelerator
        self.last: AAMULossOutput | None = None

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        per_sample = F.cross_entropy(logits, targets, reduction="none")
        self.last = self.accelerator.loss(per_sample)
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
        recommended: the optimiser the method is tuned for (Adam lr 2.4e-4, batch 64, one epoch).
    """

    retain_loader: DataLoader
    criterion: AAMUCriterion
    reduced: ReducedRetainSet
    index: BlendIndex
    timings: dict = field(default_factory=dict)
    recommended: dict = field(default_factory=lambda: dict(RECOMMENDED))

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """``torch.optim.Adam(model.parameters(), lr=2.4e-4)``: A-AMU's optimiser."""
        return torch.optim.Adam(model.parameters(), lr=RECOMMENDED["lr"])


def _tensors(obj: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    view = as_data(obj, name, "prepare_unlearning").materialise("prepare_unlearning")
    return view.images, view.labels


def _rows_in_index(index: BlendIndex, forget: Any) -> torch.Tensor:
    """Training indices of ``forget``'s rows in ``index`` (given as indices, or as data found by content)."""
    fn = "prepare_unlearning"
    if isinstance(forget, torch.Tensor) and forget.dim() == 1 and not forget.is_floating_point():
        return forget.long().cpu()
    if isinstance(forget, (list, range)) and all(isinstance(i, int) for i in forget):
        return torch.as_tensor(list(forget), dtype=torch.int64)
    fx, _ = _tensors(forget, "forget")
    if tuple(fx.shape[1:]) != tuple(index.images.shape[1:]):
        raise ValueError(f"{fn}: forget images have shape {list(fx.shape[1:])} but the index holds "
                         f"{list(index.images.shape[1:])}")
    keys = content_keys(index.images)
    order = torch.argsort(keys)
    want = content_keys(fx.to(index.images.dtype))
    pos = torch.searchsorted(keys[order], want).clamp(max=keys.numel() - 1)
    rows = order[pos]
    found = keys[rows] == want
    found &= (index.images[rows.to(index.images.device)].flatten(1).cpu()
              == fx.to(index.images.dtype).flatten(1).cpu()).all(1)
    if not bool(found.all()):
        raise ValueError(f"{fn}: {int((~found).sum())} of the {found.numel()} forget rows are not in the index's "
                         "training set (pass forget as training indices, or an index built on retain + forget)")
    return rows


def prepare_unlearning(model: nn.Module, retain: Any, forget: Any, unseen: Any, *, ipc: int | None = None,
                       batch_size: int = 64, index: BlendIndex | None = None, seed: int = 0, lam: float = 34.0,
                       k: float = 2.0, kappa: float = 60.0, sigma: float = 1.0, steepen: str = "batch_mean_sq",
                       forget_batch_factor: int = 4, unseen_batch_factor: int = 4, iterations: int = 12,
                       backend: str = "auto", device: torch.device | str | None = None,
                       progress: bool = False) -> PreparedUnlearning:
    """Blend + A-AMU for an existing loader-based fine-tune loop (see the module docstring).

    Args:
        model: the model being unlearned (the criterion runs it on forget and unseen batches).
        retain: the retain set: a ``DataLoader``, a ``Dataset`` or an ``(images [N, C, H, W],
            labels [N])`` pair (read once, in memory). Unused when ``index`` is given (may be ``None``).
        forget: the forget set, in the same forms; with ``index``, also training indices into it
            (else its rows are found in the index by content).
        unseen: labelled in-distribution data the model never trained on, in the same forms.
        ipc: clusters per class of the Blend grouping when the index is built here; default about a
            fifth of the mean class size (about five images per cluster).
        batch_size: the retain batch size of ``retain_loader``; the criterion draws ``4·batch_size``
            forget and unseen samples per call and refuses larger retain batches.
        index: a :class:`fastblend.BlendIndex` of the training set (retain ∪ forget) built before
            the request; without one it is built here on ``retain`` followed by ``forget``.
        seed: seeds the grouping, the matcher, the loader's shuffling and the samplers.
        lam, k, kappa, sigma, steepen, forget_batch_factor, unseen_batch_factor: A-AMU settings
            (:class:`fastblend.Accelerator`).
        iterations, backend: Blend settings when the index is built here.
        device: where the index is built (default: the model's device).
        progress: tqdm bars while building the index.

    Returns:
        :class:`PreparedUnlearning` with ``retain_loader`` and ``criterion``. Train with A-AMU's
        optimiser: Adam lr 2.4e-4, one epoch (``prep.optimizer(model)``).
    """
    fn = "prepare_unlearning"
    if not isinstance(model, nn.Module):
        raise TypeError(f"{fn}: model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"{fn}: batch_size must be an int >= 1, got {batch_size!r}")
    if index is not None and not isinstance(index, BlendIndex):
        raise TypeError(f"{fn}: index must be a fastblend.BlendIndex or None, got {type(index).__name__}")
    dev = torch.device(device) if device is not None else (module_device(model) or torch.device("cpu"))
    t0 = time.perf_counter()
    build_seconds = 0.0
    if index is None:
        rx, ry = _tensors(retain, "retain")
        fx, fy = _tensors(forget, "forget")
        if tuple(rx.shape[1:]) != tuple(fx.shape[1:]):
            raise ValueError(f"{fn}: retain images are {list(rx.shape[1:])} but forget images {list(fx.shape[1:])}")
        images, labels = torch.cat([rx, fx.to(rx.device, rx.dtype)]), torch.cat([ry, fy.to(ry.device)])
        if ipc is None:
            present = int(torch.unique(labels).numel())
            ipc = max(1, round(labels.numel() / present / 5))
        index = BlendIndex.build(images, labels, ipc=ipc, seed=seed, iterations=iterations, backend=backend,
                                 device=dev, progress=progress)
        build_seconds = index.timings["total"]
        forget_rows = torch.arange(rx.shape[0], images.shape[0])
    else:
        forget_rows = _rows_in_index(index, forget)
        fx, fy = index.images[forget_rows.to(index.images.device)], index.labels[forget_rows]
    t1 = time.perf_counter()
    reduced = index.reduce(forget_rows)
    ux, uy = _tensors(unseen, "unseen")
    accelerator = Accelerator(model, fx.to(dev), fy.to(dev), ux.to(dev), uy.to(dev), batch_size=batch_size, lam=lam,
                              k=k, kappa=kappa, sigma=sigma, steepen=steepen, seed=seed,
                              forget_batch_factor=forget_batch_factor, unseen_batch_factor=unseen_batch_factor)
    loader = DataLoader(reduced, batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    timings = {"index": build_seconds, "request": time.perf_counter() - t1,
               "total": time.perf_counter() - t0}
    return PreparedUnlearning(loader, AAMUCriterion(accelerator), reduced, index, timings)
