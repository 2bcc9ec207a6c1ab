"""A Retrain-free target for atypical forget sets: held-out images as hard as the forget images (docs/method.md §7.7).

A-AMU's regulariser pulls the forget set's loss distribution towards that of unseen images of the same
classes. That is the right target when the forget images are a random draw (a model that never trained on
them sees them like any other unseen image), and the wrong one when they are atypical: a model that never
trained on the most atypical images gets many of them wrong, far more than typical unseen images.

How hard a forget image would be to a model that never saw it is not observable without retraining, but
its rank is nearly so: a converged model's loss on its own training images still orders them by how
atypical they are (the atypical ones are learned last and kept with the least margin). So each forget image
``i`` of class ``c`` gets its quantile ``q_i`` among the training (retain) images of class ``c`` under the
original model, and is matched with the unseen image of class ``c`` at the same quantile of the unseen
images' losses under the same model (which never trained on them). The matched unseen images, one per forget
image, replace the unseen pool as the regulariser's target and as the auto stop's reference.

On uniformly drawn forget images the quantiles are spread evenly and the matched images are a resample of
the unseen pool (the paper's target); on atypical ones they are the hard tail of the unseen pool.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ._checks import plain_number
from .data_adapter import as_data, materialises_in_order, order_error, read_forget
from .metrics import predict_logits

__all__ = ["match_by_rank", "matched_unseen"]


def _mid_quantile(sorted_ref: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Each value's mid-rank quantile in ``sorted_ref`` (ties count half): in ``(0, 1)``."""
    below = torch.searchsorted(sorted_ref, values, right=False).double()
    upto = torch.searchsorted(sorted_ref, values, right=True).double()
    return (below + upto) / (2.0 * sorted_ref.numel()) if sorted_ref.numel() else torch.full_like(below, 0.5)


def match_by_rank(reference_loss: torch.Tensor, reference_labels: torch.Tensor, forget_loss: torch.Tensor,
                  forget_labels: torch.Tensor, pool_loss: torch.Tensor, pool_labels: torch.Tensor) -> torch.Tensor:
    """For each forget row, the index of the pool row of its class at the same loss quantile.

    ``reference_*``: the losses and labels of the model's own training images (members); ``forget_*``: of
    the forget images; ``pool_*``: of held-out images (non-members). A forget row's quantile is its
    mid-rank among the reference rows of its class; it is matched with the pool row of that class at the
    same quantile of the pool's losses. A class without reference rows (forgotten whole) spreads its forget
    rows evenly over the class's pool rows, in the order of their own losses. A forget row whose class has no
    pool row is left out. Returns int64 indices into the pool, at most one per forget row (repeats allowed).
    """
    tensors = {"reference_loss": reference_loss, "reference_labels": reference_labels, "forget_loss": forget_loss,
               "forget_labels": forget_labels, "pool_loss": pool_loss, "pool_labels": pool_labels}
    for name, t in tensors.items():
        if not torch.is_tensor(t) or t.dim() != 1:
            raise TypeError(f"match_by_rank: {name} must be a 1-D tensor, got "
                            f"{tuple(t.shape) if torch.is_tensor(t) else type(t).__name__}")
    for a, b in (("reference_loss", "reference_labels"), ("forget_loss", "forget_labels"),
                 ("pool_loss", "pool_labels")):
        if tensors[a].numel() != tensors[b].numel():
            raise ValueError(f"match_by_rank: {a} and {b} must have the same length, got {tensors[a].numel()} "
                             f"and {tensors[b].numel()}")
    for name in ("reference_loss", "forget_loss", "pool_loss"):
        if not bool(torch.isfinite(tensors[name].double()).all()):
            raise ValueError(f"match_by_rank: {name} must be finite (a diverged model cannot rank images)")
    ref_l, ref_y = reference_loss.detach().double().cpu(), reference_labels.detach().long().cpu()
    f_l, f_y = forget_loss.detach().double().cpu(), forget_labels.detach().long().cpu()
    p_l, p_y = pool_loss.detach().double().cpu(), pool_labels.detach().long().cpu()
    out = torch.full((f_l.numel(),), -1, dtype=torch.long)
    for c in f_y.unique().tolist():
        rows = torch.nonzero(f_y == c).flatten()
        pool_rows = torch.nonzero(p_y == c).flatten()
        if pool_rows.numel() == 0:
            continue
        pool_sorted, order = p_l[pool_rows].sort()
        ref = ref_l[ref_y == c].sort().values
        if ref.numel():
            q = _mid_quantile(ref, f_l[rows])
        else:  # a whole class: no member of it is left to rank against; spread evenly, hardest to hardest
            rank = f_l[rows].argsort().argsort().double()
            q = (rank + 0.5) / rows.numel()
        pos = (q * pool_sorted.numel() - 0.5).round().clamp(0, pool_sorted.numel() - 1).long()
        out[rows] = pool_rows[order[pos]]
    return out[out >= 0]


def _check_given_logits(logits: Any, rows: int, width: int | None, name: str, fn: str) -> None:
    """``{name}_logits`` given by the caller: a finite floating ``[rows, width]`` tensor (``width``: the model's output
    width when known)."""
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{fn}: {name}_logits must be a floating [{rows}, C] tensor (one row per {name} image), got "
                        f"{type(logits).__name__}")
    if logits.dim() != 2 or logits.shape[0] != rows or not logits.is_floating_point() \
            or (width is not None and logits.shape[1] != width):
        cols = "C" if width is None else f"{width} (the model's output width)"
        raise ValueError(f"{fn}: {name}_logits must be a floating [{rows}, {cols}] tensor (one row per {name} image), "
                         f"got {logits.dtype} of shape {list(logits.shape)}")
    if not bool(torch.isfinite(logits).all()):
        raise ValueError(f"{fn}: {name}_logits must be finite")


def _losses(model: nn.Module, data: Any, name: str, fn: str, device: Any,
            logits: torch.Tensor | None = None, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(per-image losses, labels, the logits' width)`` of one data argument under ``model`` (or of the caller's
    ``logits`` for it, checked against ``width``)."""
    view = as_data(data, name, fn).materialise(fn)
    if logits is not None:
        _check_given_logits(logits, view.labels.shape[0], width, name, fn)
    logits = (predict_logits(model, view.images, device=device) if logits is None else logits.detach()).float().cpu()
    labels = view.labels.cpu().long()
    if logits.dim() != 2 or int(labels.max()) >= logits.shape[1] or int(labels.min()) < 0:
        raise ValueError(f"{fn}: {name} labels must be in [0, {logits.shape[1]}) (the model's output width)")
    return F.cross_entropy(logits, labels, reduction="none"), labels, int(logits.shape[1])


def matched_unseen(model: nn.Module, reference: Any, forget: Any, unseen: Any, *, max_reference: int | None = 4096,
                   seed: int = 0, device: Any = None, unseen_logits: torch.Tensor | None = None) -> torch.Tensor:
    """Indices into ``unseen`` of the held-out images as hard as the forget images (:func:`match_by_rank`
    under ``model``, the model *before* unlearning).

    ``reference``: training images the model kept (the retain set, real images: a Blend-reduced set's blended
    rows are not training images); at most ``max_reference`` rows of it are scored (a seeded sample;
    ``None``: all). ``forget``, ``unseen``: data forms of :func:`fastblend.unlearn` (a ``DataLoader`` as
    ``unseen`` must read each item of its dataset once with torch's default samplers, ``shuffle=False`` or
    ``True``, read in the dataset's order either way: the indices name its rows). Returns int64
    indices, one per forget image whose class has unseen images. ``unseen_logits``: ``model``'s logits of the
    ``unseen`` images (``[N_u, C]``) when the caller has them already; skips that forward.
    """
    fn = "matched_unseen"
    max_reference, seed = plain_number(max_reference), plain_number(seed)  # numpy integers too
    if not isinstance(model, nn.Module):
        raise TypeError(f"{fn}: model must be a torch.nn.Module, got {type(model).__name__}")
    if max_reference is not None and (isinstance(max_reference, bool) or not isinstance(max_reference, int)
                                      or max_reference < 1):
        raise ValueError(f"{fn}: max_reference must be an int >= 1 or None, got {max_reference!r}")
    if isinstance(unseen, DataLoader) and not materialises_in_order(unseen):
        raise order_error(unseen, fn, "indices into unseen would name rows of one shuffled pass")
    if unseen_logits is not None:  # before any forward: what can be checked without the model's width
        view = as_data(unseen, "unseen", fn).materialise(fn)
        unseen = (view.images, view.labels)  # read once
        _check_given_logits(unseen_logits, view.labels.shape[0], None, "unseen", fn)
    ref = as_data(reference, "reference", fn).materialise(fn)
    rx, ry = ref.images, ref.labels
    if max_reference is not None and rx.shape[0] > max_reference:
        keep = torch.randperm(rx.shape[0], generator=torch.Generator().manual_seed(int(seed)))[:max_reference]
        rx, ry = rx[keep.to(rx.device)], ry[keep.to(ry.device)]
    ref_l, ref_y, _ = _losses(model, (rx, ry), "reference", fn, device)
    f_view = read_forget(forget, fn, "the indices, one per forget row, would follow one random pass, not the "
                                     "forget set's rows")
    f_l, f_y, width = _losses(model, (f_view.images, f_view.labels), "forget", fn, device)
    u_l, u_y, _ = _losses(model, unseen, "unseen", fn, device, unseen_logits, width)
    idx = match_by_rank(ref_l, ref_y, f_l, f_y, u_l, u_y)
    if idx.numel() == 0:
        raise ValueError(f"{fn}: unseen holds no image of any forget class ({sorted(f_y.unique().tolist())}); "
                         "the matched target needs held-out images of the forget classes")
    return idx
