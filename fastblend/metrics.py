"""Evaluation of unlearning (docs/method.md §4): accuracies, the paper's MIA score, the SVC-based membership
attack of other unlearning papers, and a device-synchronised stage timer.

Data arguments (``forget``, ``test``, ...) take the same forms as :func:`fastblend.unlearn`: a pair
``(images, labels)`` of tensors, a ``Dataset``, a ``DataLoader`` or a ``ReducedRetainSet``; a
``Dataset`` that is not tensors already (e.g. :class:`fastblend.MemmapImages`) and a ``DataLoader``
are streamed, so only the ``[N, C]`` logits are held.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._checks import plain_number
from ._device import synchronize
from ._io import atomic_write_text
from .data_adapter import as_data, model_device, model_dtype


def _eval_device(model: nn.Module, device: torch.device | str | None, fn: str) -> torch.device:
    here = model_device(model)
    if device is None:
        return here
    dev = torch.device(device)
    if dev.type != here.type or (dev.index is not None and here.index is not None and dev.index != here.index):
        raise ValueError(f"{fn}: model is on {here} but device is {dev}; move the model or pass device=None")
    return here


def predict_logits(model: nn.Module, images: Any, batch_size: int = 1024,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """Float32 logits ``[N, C]`` on the model's device: batched, eval mode, ``inference_mode``
    (the model's train/eval mode is restored afterwards). Images are cast to the model's floating
    dtype batch by batch. ``images``: a tensor ``[N, ...]``, or any data form of :func:`accuracy`
    (a ``Dataset`` of ``(image, label)`` or a ``DataLoader`` is streamed)."""
    if batch_size < 1:
        raise ValueError(f"predict_logits: batch_size must be >= 1, got {batch_size}")
    if not torch.is_tensor(images):
        return _logits_labels(model, images, None, "images", "predict_logits", batch_size, device)[0]
    dev = _eval_device(model, device, "predict_logits")
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            dtype = model_dtype(model)
            out = [model(images[s:s + batch_size].to(dev, dtype, non_blocking=True)).float()
                   for s in range(0, images.shape[0], batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 0, device=dev)


def _logits_labels(model: nn.Module, data: Any, labels: torch.Tensor | None, name: str, fn: str, batch_size: int,
                   device: torch.device | str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``[N, C]`` float32 and labels ``[N]`` int64 of one data argument. Tensors are scored in
    place; a ``Dataset`` or ``DataLoader`` is streamed batch by batch (in its order; a ``Dataset`` in
    index order, batches of ``batch_size`` as for tensors), so only the logits are held."""
    if batch_size < 1:
        raise ValueError(f"{fn}: batch_size must be >= 1, got {batch_size}")
    if labels is not None and not torch.is_tensor(data):
        raise TypeError(f"{fn}: labels must be None when {name} is a {type(data).__name__} (its rows hold the "
                        f"labels); pass labels only with an images tensor, got labels {type(labels).__name__}")
    view = as_data((data, labels) if labels is not None else data, name, fn)
    if view.in_memory:
        return predict_logits(model, view.images, batch_size, device), view.labels
    dev = _eval_device(model, device, fn)
    logits, ys = [], []
    for x, y in view.batches(batch_size, None, dev, fn, shuffle=False):
        logits.append(predict_logits(model, x, batch_size, dev))
        ys.append(y)
    if not logits:
        raise ValueError(f"{fn}: {name} is empty")
    return torch.cat(logits), torch.cat(ys)


def _check_scored(logits: torch.Tensor, labels: torch.Tensor, name: str, fn: str) -> None:
    """Refuse what cannot be scored honestly: non-finite logits (a diverged model would otherwise
    score like a perfectly unlearned one) and labels outside the logits' width."""
    if logits.dim() != 2 or labels.dim() != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"{fn}: expected {name} logits [N, C] and labels [N], got {list(logits.shape)} and "
                         f"{list(labels.shape)}")
    finite = torch.isfinite(logits).all(1)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise ValueError(f"{fn}: the model's logits on {name} are not finite (NaN/Inf in {bad} of "
                         f"{logits.shape[0]} rows); a diverged model cannot be scored")
    if labels.numel():
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= logits.shape[1]:
            raise ValueError(f"{fn}: {name} labels must be in [0, {logits.shape[1]}) (the model's output "
                             f"width), got {lo if lo < 0 else hi}")


def accuracy(model: nn.Module, images: Any, labels: torch.Tensor | None = None, batch_size: int = 1024,
             device: torch.device | str | None = None) -> float:
    """Top-1 accuracy in percent (0..100) of ``model`` on ``images [N, ...]`` with ``labels [N]``
    (or on a data object passed as ``images`` with ``labels=None``). Batched under
    ``inference_mode`` on the model's device; ``device``, when given, must be that device."""
    logits, y = _logits_labels(model, images, labels, "images", "accuracy", batch_size, device)
    _check_scored(logits, y.to(logits.device), "images", "accuracy")
    return float((logits.argmax(1) == y.to(logits.device)).double().mean()) * 100.0


def true_class_log_odds(logits: torch.Tensor, labels: torch.Tensor, clamp: float = 100.0) -> torch.Tensor:
    """``φ = log p_y − log(1 − p_y)`` per sample, float32 ``[N]`` (float64 for float64 logits), from logits ``[N, C]``.

    Computed without forming probabilities: ``log p_y = z_y − LSE(z)`` and ``log(1 − p_y) =
    LSE_{c≠y}(z) − LSE(z)``, so ``φ = z_y − LSE_{c≠y}(z)``, exact where ``p_y`` rounds to 1.
    Clamped to ``[−clamp, clamp]`` (a single class gives ``+inf`` otherwise). NaN logits give NaN:
    the callers (:func:`mia_score`) refuse non-finite logits.
    """
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"true_class_log_odds: expected logits [N, C] and labels [N], got {tuple(logits.shape)} "
                         f"and {tuple(labels.shape)}")
    z = logits if logits.dtype == torch.float64 else logits.float()
    y = labels.to(z.device).long()[:, None]
    z_y = z.gather(1, y).squeeze(1)
    others = z.scatter(1, y, float("-inf"))
    return (z_y - torch.logsumexp(others, 1)).clamp(-clamp, clamp)


def _equal_size(a: np.ndarray, b: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    n = min(len(a), len(b))
    g = torch.Generator().manual_seed(seed)
    ia = torch.randperm(len(a), generator=g)[:n].sort().values.numpy()
    ib = torch.randperm(len(b), generator=g)[:n].sort().values.numpy()
    return a[ia], b[ib]


def mia_score(model: nn.Module, forget: Any, test: Any, batch_size: int = 1024,
              device: torch.device | str | None = None, seed: int = 0, fold_back: bool = False,
              fold_back_below: float = 42.0, clamp: float = 100.0, n_splits: int = 5) -> float:
    """The paper's MIA score (docs/method.md §4), ROC-AUC × 100: how well a logistic regression on the
    per-sample log-odds ``φ`` (:func:`true_class_log_odds`) tells forget samples (label 0) from
    held-out test samples (label 1).

    The two sets are truncated to equal size (a seeded random subset of the larger one); the score is
    the AUC of out-of-fold probabilities of ``StratifiedKFold(n_splits, shuffle=True, random_state=0)``.
    About 50 means forget samples look like unseen ones (what a retrained model gets). ``test``
    should hold the held-out samples of the forgotten classes. ``fold_back=True`` reproduces the
    reference's reflection ``AUC -> 100 − AUC`` when ``AUC <= fold_back_below`` (off by default).
    """
    fn = "mia_score"
    f_logits, f_labels = _logits_labels(model, forget, None, "forget", fn, batch_size, device)
    t_logits, t_labels = _logits_labels(model, test, None, "test", fn, batch_size, device)
    return mia_score_from_logits(f_logits, f_labels, t_logits, t_labels, seed=seed, fold_back=fold_back,
                                 fold_back_below=fold_back_below, clamp=clamp, n_splits=n_splits)


def mia_score_from_logits(forget_logits: torch.Tensor, forget_labels: torch.Tensor, test_logits: torch.Tensor,
                          test_labels: torch.Tensor, seed: int = 0, fold_back: bool = False,
                          fold_back_below: float = 42.0, clamp: float = 100.0, n_splits: int = 5) -> float:
    """:func:`mia_score` from logits already computed (``[M, C]`` and ``[M]`` for each set), so a
    caller that also needs accuracies runs the model once per set."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    fn = "mia_score"
    seed = plain_number(seed)  # numpy integers too
    _check_scored(forget_logits, forget_labels.to(forget_logits.device), "forget", fn)
    _check_scored(test_logits, test_labels.to(test_logits.device), "test", fn)
    phi_f = true_class_log_odds(forget_logits, forget_labels.to(forget_logits.device), clamp)
    phi_t = true_class_log_odds(test_logits, test_labels.to(test_logits.device), clamp)
    a, b = _equal_size(phi_f.cpu().double().numpy(), phi_t.cpu().double().numpy(), seed)
    if len(a) < n_splits:
        raise ValueError(f"{fn}: forget and test need at least n_splits={n_splits} samples each, got {len(a)}")
    x = np.concatenate([a, b])[:, None]
    y = np.concatenate([np.zeros(len(a)), np.ones(len(b))])
    cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=0)
    prob = cross_val_predict(LogisticRegression(), x, y, cv=cv, method="predict_proba")[:, 1]
    auc = float(roc_auc_score(y, prob)) * 100.0
    if fold_back and auc <= fold_back_below:
        auc = 100.0 - auc
    return auc


SVC_FEATURES = ("correctness", "confidence", "entropy", "m_entropy", "prob")


def attack_features(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, np.ndarray]:
    """The membership-attack features of Song & Mittal (2021) per sample, float64 numpy:
    ``correctness`` [N, 1] (top-1 hit), ``confidence`` [N, 1] (``p_y``), ``entropy`` [N, 1]
    (``−Σ p log p``), ``m_entropy`` [N, 1] (modified entropy ``−(1−p_y) log p_y −
    Σ_{c≠y} p_c log(1−p_c)``), ``prob`` [N, C] (the softmax vector)."""
    z = logits.double()
    y = labels.to(z.device).long()
    logp = F.log_softmax(z, 1)
    p = logp.exp()
    p_y = p.gather(1, y[:, None]).squeeze(1)
    log1m = torch.log((1.0 - p).clamp_min(1e-300))
    hit = F.one_hot(y, z.shape[1]).bool()
    m_ent = -(1.0 - p_y) * logp.gather(1, y[:, None]).squeeze(1) - torch.where(hit, 0.0, p * log1m).sum(1)
    feats = {
        "correctness": (z.argmax(1) == y).double()[:, None],
        "confidence": p_y[:, None],
        "entropy": -(p * logp).nan_to_num(nan=0.0).sum(1)[:, None],
        "m_entropy": m_ent[:, None],
        "prob": p,
    }
    return {k: v.cpu().numpy() for k, v in feats.items()}


def svc_mia(model: nn.Module, retain: Any, forget: Any, test: Any, batch_size: int = 1024,
            device: torch.device | str | None = None, seed: int = 0, max_shadow: int = 5000,
            features: tuple[str, ...] = SVC_FEATURES) -> dict[str, float]:
    """The SVC membership attack used by many unlearning papers ("MIA-efficacy").

    For each feature of :func:`attack_features`, an RBF SVC (``C=3``, ``gamma="auto"``) is fit on
    shadow data — retain samples as members (1), test samples as non-members (0), equal numbers
    (a seeded subset of the larger set, at most ``max_shadow`` each: SVC training is quadratic) — and
    applied to the forget set. Returned per feature: the percentage of forget samples the attack calls
    non-members (higher = the model treats the forget set more like unseen data; a model that never
    saw the forget set scores roughly its test-set rate).
    """
    from sklearn.svm import SVC

    fn = "svc_mia"
    seed, max_shadow = plain_number(seed), plain_number(max_shadow)  # numpy integers too
    unknown = sorted(set(features) - set(SVC_FEATURES))
    if unknown:
        raise ValueError(f"{fn}: unknown features {unknown}; expected some of {list(SVC_FEATURES)}")
    if max_shadow < 1:
        raise ValueError(f"{fn}: max_shadow must be >= 1, got {max_shadow}")
    feats, sizes = {}, {}
    for name, d in (("retain", retain), ("forget", forget), ("test", test)):
        logits, labels = _logits_labels(model, d, None, name, fn, batch_size, device)
        _check_scored(logits, labels.to(logits.device), name, fn)
        feats[name] = attack_features(logits, labels)
        sizes[name] = labels.shape[0]
    n = min(sizes["retain"], sizes["test"], max_shadow)
    g = torch.Generator().manual_seed(seed)
    ir = torch.randperm(sizes["retain"], generator=g)[:n].numpy()
    it = torch.randperm(sizes["test"], generator=g)[:n].numpy()
    y = np.concatenate([np.ones(n), np.zeros(n)])
    out = {}
    for name in features:
        x = np.concatenate([feats["retain"][name][ir], feats["test"][name][it]])
        clf = SVC(C=3, gamma="auto", kernel="rbf").fit(x, y)
        out[name] = float(1.0 - clf.predict(feats["forget"][name]).mean()) * 100.0
    return out


class StageTimer:
    """Wall-clock time of named stages, the device synchronised before each clock read.

    >>> timer = StageTimer(device)
    >>> with timer("grouping"):
    ...     clustering = fastblend.group(features, labels, ipc)
    >>> timer.stages            # {"grouping": 1.93}
    >>> timer.to_json("results/timings.json", dataset="cifar10")

    A stage entered twice accumulates. ``device=None`` synchronises every initialised CUDA device.
    """

    def __init__(self, device: torch.device | str | None = None):
        self.device = torch.device(device) if device is not None else None
        self.stages: dict[str, float] = {}

    def _sync(self) -> None:
        if self.device is not None:
            synchronize(self.device)
        elif torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if not isinstance(name, str) or not name:
            raise ValueError(f"StageTimer: stage name must be a non-empty string, got {name!r}")
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        """Record ``seconds`` for stage ``name`` (e.g. a time measured elsewhere, such as
        ``UnlearnResult.seconds``)."""
        self.stages[name] = self.stages.get(name, 0.0) + float(seconds)

    @property
    def total(self) -> float:
        return sum(self.stages.values())

    def as_dict(self) -> dict[str, float]:
        return {**self.stages, "total": self.total}

    def to_json(self, path: str | Path, **extra: Any) -> dict[str, Any]:
        """Write ``{"stages": {...}, "total": ..., **extra}`` to ``path`` and return it."""
        record = {"stages": dict(self.stages), "total": self.total, **extra}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(record, indent=2, default=str))
        return record


__all__ = [
    "SVC_FEATURES",
    "StageTimer",
    "accuracy",
    "attack_features",
    "mia_score",
    "predict_logits",
    "svc_mia",
    "true_class_log_odds",
]
