"""An evaluation of unlearning that can fail (docs/method.md §4.1-§4.4): Retrain's band from a seed
ensemble, an MIA with a confidence interval and its group sizes, KLOM (a per-sample distributional
check against the Retrain ensemble) and the ``hard`` forget kind's draw.

Everything here works on numbers already computed (metric values, logits, per-sample margins), so it
needs no data set, model cache or training loop; the harness (:mod:`fastblend.experiments.pipeline`) trains the
ensembles and calls it.

- :func:`seed_band` -> :class:`SeedBand`: per metric ``[min − m, max + m]`` of the Retrain ensemble's
  values, ``m = max(floor, z · se)``, with ``se`` the evaluation split's sampling error (binomial for
  accuracies, the MIA's bootstrap standard error); every part is kept so a reader can recompute it.
  :meth:`SeedBand.contains` has :class:`fastblend.tracking.Band`'s signature, so
  :func:`fastblend.tracking.time_to_target` takes either.
- :func:`mia_with_interval` -> :class:`MIAResult`: the MIA score with a bootstrap interval and the
  group sizes; a group smaller than ``min_group`` warns (:class:`SmallGroupWarning`) and marks the
  result ``small``.
- :func:`margins`, :func:`klom`, :func:`klom_summary`: per-sample KL divergence between the
  distributions of a sample's margin under two model ensembles, summarised by percentiles, with the
  Retrain-vs-Retrain noise floor.
- :func:`hardest`: the ``hard`` forget kind's selection (the highest-loss candidates under a model
  that did not train on them).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from .metrics import _check_scored, _equal_size, true_class_log_odds

#: the metrics a band covers (percent): forget accuracy, test accuracy, MIA score
BAND_METRICS = ("forget_acc", "test_acc", "mia")
#: the per-sample groups KLOM is summarised over
KLOM_GROUPS = ("forget", "retain", "eval")


class SmallGroupWarning(UserWarning):
    """An MIA was computed on a group smaller than the minimum: its score is mostly noise."""


# --------------------------------------------------------------------------------------------
# the band from a Retrain seed ensemble
# --------------------------------------------------------------------------------------------
def binomial_se(percent: float, n: int) -> float:
    """Standard error (percentage points) of an accuracy of ``percent`` measured on ``n`` samples:
    ``100 · sqrt(p (1 − p) / n)`` with ``p = percent / 100``. ``n`` must be >= 1."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"binomial_se: n must be an int >= 1, got {n!r}")
    if not 0.0 <= percent <= 100.0:
        raise ValueError(f"binomial_se: percent must be in [0, 100], got {percent!r}")
    p = percent / 100.0
    return 100.0 * math.sqrt(p * (1.0 - p) / n)


@dataclass(frozen=True)
class MetricBand:
    """One metric's band: ``[low, high] = [min(values) − margin, max(values) + margin]`` with
    ``margin = max(floor, z · se)``. ``values`` are the Retrain ensemble's (percent), ``n`` the
    evaluation samples behind each value, ``se`` the standard error (points) ``source`` names."""

    values: tuple[float, ...]
    n: int
    se: float
    z: float
    floor: float
    source: str
    margin: float
    low: float
    high: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2.0

    def distance(self, value: float) -> float:
        """Signed distance (points) of ``value`` outside the band: 0 inside, negative below, positive above
        (NaN for NaN)."""
        if math.isnan(value):
            return math.nan
        return value - self.high if value > self.high else (value - self.low if value < self.low else 0.0)


@dataclass(frozen=True)
class SeedBand:
    """Retrain's band from a seed ensemble (docs/method.md §4.1): a :class:`MetricBand` per metric.

    Use as ``time_to_target(points, None, band)`` (the reference is not needed: the band is absolute).
    """

    forget_acc: MetricBand
    test_acc: MetricBand
    mia: MetricBand
    kind: str = "seeds"

    def contains(self, point: Any, reference: Any = None) -> bool:
        """Whether ``point`` (a dict or an object with the metric attributes) is inside on every metric
        (NaN is outside); ``reference`` is ignored (accepted for :class:`fastblend.tracking.Band`'s
        signature)."""
        p = point if isinstance(point, dict) else {m: getattr(point, m) for m in BAND_METRICS}
        return all(self.distance(p)[m] == 0.0 for m in BAND_METRICS)

    def distance(self, point: dict) -> dict[str, float]:
        """Per metric, the signed distance (points) of ``point`` outside the band (0 inside)."""
        return {m: getattr(self, m).distance(float(point[m])) for m in BAND_METRICS}

    def is_easy(self, original: dict) -> bool:
        """The do-nothing test (docs/method.md §4.2): ``True`` when the untouched original model is inside
        the band or within one band half-width of it on every metric, i.e. a method barely has to move
        to "reach the target"."""
        d = self.distance(original)
        return all(not math.isnan(d[m]) and abs(d[m]) <= getattr(self, m).half_width for m in BAND_METRICS)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        for m in BAND_METRICS:
            b = getattr(self, m)
            out[m] = {**asdict(b), "values": list(b.values), "half_width": b.half_width}
        return out


def seed_band(values: dict[str, Sequence[float]], n: dict[str, int], se: dict[str, float] | None = None,
              z: float = 1.96, floor: float | dict[str, float] = 0.5) -> SeedBand:
    """The band of a Retrain seed ensemble.

    Args:
        values: per metric of :data:`BAND_METRICS`, the ensemble's final values (percent), one per model.
        n: per metric, the number of evaluation samples behind each value (forget-set size, evaluation
            split size, the MIA's group size).
        se: per metric, a standard error (points) to use instead of the binomial one; the MIA needs one
            (e.g. the mean of the ensemble's :attr:`MIAResult.se`). Accuracies default to
            :func:`binomial_se` at the ensemble's mean value.
        z: the multiple of the standard error (1.96: a 95% normal interval).
        floor: the smallest margin (points), one for all metrics or per metric.

    Returns a :class:`SeedBand`; each metric's band is ``[min − m, max + m]``, ``m = max(floor, z·se)``.
    """
    fn = "seed_band"
    if isinstance(z, bool) or not isinstance(z, (int, float)) or not math.isfinite(z) or z < 0:
        raise ValueError(f"{fn}: z must be a finite number >= 0, got {z!r}")
    se = dict(se or {})
    bands = {}
    for m in BAND_METRICS:
        vals = values.get(m) if isinstance(values, dict) else None
        if vals is None or len(vals) < 1:
            raise ValueError(f"{fn}: values must hold at least one value for each of {BAND_METRICS}, "
                             f"missing {m!r}")
        vals = tuple(float(v) for v in vals)
        if not all(math.isfinite(v) for v in vals):
            raise ValueError(f"{fn}: values[{m!r}] must be finite, got {list(vals)}")
        f = floor[m] if isinstance(floor, dict) else floor
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not f >= 0:
            raise ValueError(f"{fn}: floor must be a number >= 0 (or one per metric), got {f!r} for {m!r}")
        count = n.get(m) if isinstance(n, dict) else None
        if count is None or isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
            raise ValueError(f"{fn}: n[{m!r}] must be an int >= 1 (evaluation samples), got {count!r}")
        if m in se:
            s, source = float(se[m]), "given"
            if not math.isfinite(s) or s < 0:
                raise ValueError(f"{fn}: se[{m!r}] must be a finite number >= 0, got {se[m]!r}")
        elif m == "mia":
            raise ValueError(f"{fn}: se['mia'] is needed (the MIA's bootstrap standard error, MIAResult.se)")
        else:
            mean = min(max(sum(vals) / len(vals), 0.0), 100.0)
            s, source = binomial_se(mean, int(count)), "binomial at the ensemble mean"
        margin = max(float(f), z * s)
        bands[m] = MetricBand(vals, int(count), s, float(z), float(f), source, margin, min(vals) - margin,
                              max(vals) + margin)
    return SeedBand(**bands)


def fixed_band(reference: dict[str, float], tolerances: dict[str, float]) -> SeedBand:
    """The old band as a :class:`SeedBand` (``kind="fixed"``): ``reference ± tolerance`` per metric (a
    single Retrain run ± fixed points; an option, off by default)."""
    bands = {}
    for m in BAND_METRICS:
        v, t = float(reference[m]), float(tolerances[m])
        if not t >= 0:
            raise ValueError(f"fixed_band: tolerance for {m!r} must be >= 0, got {t!r}")
        bands[m] = MetricBand((v,), 1, 0.0, 0.0, t, "fixed tolerance", t, v - t, v + t)
    return SeedBand(**bands, kind="fixed")


# --------------------------------------------------------------------------------------------
# an MIA with confidence
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MIAResult:
    """An MIA score (percent, ROC-AUC × 100) with its bootstrap interval and the groups behind it.

    ``statistic``: ``"auc"`` (the direct AUC of the log-odds, forget vs held-out, no fit) or ``"paper"``
    (docs/method.md §4's cross-validated logistic regression). ``n_forget``/``n_heldout``: the group sizes
    used (all of both for ``"auc"``; after equal-size truncation for ``"paper"``); ``small``: a group was
    below ``min_group``.
    """

    score: float
    low: float
    high: float
    se: float
    n_forget: int
    n_heldout: int
    statistic: str
    interval: str
    min_group: int
    small: bool

    def as_dict(self, prefix: str = "mia") -> dict[str, Any]:
        return {prefix: self.score, f"{prefix}_low": self.low, f"{prefix}_high": self.high, f"{prefix}_se": self.se,
                f"{prefix}_n_forget": self.n_forget, f"{prefix}_n_heldout": self.n_heldout,
                f"{prefix}_small": self.small}


def _auc(neg: np.ndarray, pos: np.ndarray) -> float:
    """P(pos > neg) + P(tie)/2 (the Mann-Whitney ROC-AUC) of two 1-D samples."""
    allv = np.concatenate([neg, pos])
    order = np.argsort(allv, kind="mergesort")
    ranks = np.empty(len(allv))
    sorted_v = allv[order]
    # average ranks of ties
    _, first, counts = np.unique(sorted_v, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    r_pos = ranks[len(neg):].sum()
    return float((r_pos - len(pos) * (len(pos) + 1) / 2.0) / (len(pos) * len(neg)))


def mia_with_interval(forget_logits: torch.Tensor, forget_labels: torch.Tensor, heldout_logits: torch.Tensor,
                      heldout_labels: torch.Tensor, statistic: str = "auc", seed: int = 0, boot: int = 400,
                      level: float = 0.95, min_group: int = 200, clamp: float = 100.0,
                      n_splits: int = 5) -> MIAResult:
    """The MIA score of docs/method.md §4.3 with a bootstrap confidence interval.

    Forget samples (``[F, C]`` logits, ``[F]`` labels, the model's training members before unlearning)
    against held-out samples (``[H, C]``, ``[H]``, never trained on), on the true-class log-odds ``φ``
    (:func:`fastblend.metrics.true_class_log_odds`).

    ``statistic="auc"``: ``100 · P(φ_forget > φ_heldout)`` (ties count half) over **every** forget ×
    held-out pair, no fit and no draw: 50 in expectation for a model that treats both groups alike, above
    50 when it is more confident on the forget set. The same logits give the same score whatever
    ``seed`` is (a curve's evaluation and the final one agree on the same model).
    ``statistic="paper"``: the paper's score (5-fold cross-validated logistic regression on ``φ``, AUC
    of the out-of-fold probabilities); the fit wants balanced classes, so the larger group is truncated
    to a random subset (drawn with ``seed``) of the smaller one's size, as
    :func:`fastblend.metrics.mia_score`; with no signal it scatters below 50 on small groups.

    Interval: ``boot`` stratified bootstrap resamples (each group resampled at its own size; for
    ``"paper"``: of the out-of-fold probabilities, so the refit's own variability is not in it), drawn
    with ``seed``, percentile interval at ``level``; ``se`` is the bootstrap standard deviation. A group
    smaller than ``min_group`` warns with :class:`SmallGroupWarning` and sets ``small``.
    """
    fn = "mia_with_interval"
    if statistic not in ("auc", "paper"):
        raise ValueError(f"{fn}: statistic must be 'auc' or 'paper', got {statistic!r}")
    if isinstance(boot, bool) or not isinstance(boot, int) or boot < 10:
        raise ValueError(f"{fn}: boot must be an int >= 10, got {boot!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"{fn}: level must be in (0, 1), got {level!r}")
    if isinstance(min_group, bool) or not isinstance(min_group, int) or min_group < 1:
        raise ValueError(f"{fn}: min_group must be an int >= 1, got {min_group!r}")
    _check_scored(forget_logits, forget_labels.to(forget_logits.device), "forget", fn)
    _check_scored(heldout_logits, heldout_labels.to(heldout_logits.device), "heldout", fn)
    phi_f = true_class_log_odds(forget_logits, forget_labels.to(forget_logits.device), clamp)
    phi_h = true_class_log_odds(heldout_logits, heldout_labels.to(heldout_logits.device), clamp)
    a, b = phi_f.cpu().double().numpy(), phi_h.cpu().double().numpy()
    if statistic == "paper":
        a, b = _equal_size(a, b, seed)
    n = min(len(a), len(b))
    if n < n_splits:
        raise ValueError(f"{fn}: forget and heldout need at least {n_splits} samples each, got "
                         f"{phi_f.numel()} and {phi_h.numel()}")
    small = n < min_group
    if small:
        warnings.warn(f"{fn}: an MIA group of {n} samples (forget {phi_f.numel()}, held-out {phi_h.numel()}) is "
                      f"below min_group={min_group}; its score is mostly noise", SmallGroupWarning, stacklevel=2)
    if statistic == "auc":
        neg, pos = b, a  # a forget sample scoring above a held-out one is the attack's signal
    else:
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold, cross_val_predict

        x = np.concatenate([a, b])[:, None]
        y = np.concatenate([np.zeros(n), np.ones(n)])
        cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=0)
        prob = cross_val_predict(LogisticRegression(), x, y, cv=cv, method="predict_proba")[:, 1]
        neg, pos = prob[:n], prob[n:]  # label 1 = held-out, as mia_score
    score = _auc(neg, pos) * 100.0
    rng = np.random.default_rng(seed)
    n_neg, n_pos = len(neg), len(pos)
    reps = np.array([_auc(neg[rng.integers(0, n_neg, n_neg)], pos[rng.integers(0, n_pos, n_pos)])
                     for _ in range(boot)]) * 100.0
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(reps, [tail, 100.0 - tail])
    return MIAResult(score, float(low), float(high), float(reps.std(ddof=1)), len(a), len(b), statistic,
                     f"bootstrap percentile {level:.0%}, {boot} stratified resamples of the samples"
                     + (" (out-of-fold probabilities)" if statistic == "paper" else ""), min_group, small)


# --------------------------------------------------------------------------------------------
# KLOM: per-sample margins under two ensembles
# --------------------------------------------------------------------------------------------
def margins(logits: torch.Tensor, labels: torch.Tensor, clamp: float = 100.0) -> torch.Tensor:
    """A sample's margin ``[N]`` float32: the true-class log-odds ``z_y − logsumexp_{c≠y} z_c``
    (:func:`fastblend.metrics.true_class_log_odds`), the quantity KLOM compares."""
    _check_scored(logits, labels.to(logits.device), "logits", "margins")
    return true_class_log_odds(logits, labels, clamp).cpu()


def klom(p: torch.Tensor | np.ndarray, q: torch.Tensor | np.ndarray, estimator: str = "gaussian", bins: int = 20,
         eps: float = 1e-5, sd_floor: float = 0.5) -> np.ndarray:
    """Per-sample ``KL(P_i || Q_i)`` ``[N]`` float64 between the distributions of sample ``i``'s margin
    under the models of ``p`` (``[K, N]``: K models, e.g. unlearned) and of ``q`` (``[R, N]``, e.g.
    Retrain), docs/method.md §4.4.

    ``estimator="gaussian"``: a normal fit per sample and side, ``KL = log(σ_q/σ_p) + (σ_p² + (μ_p −
    μ_q)²) / (2σ_q²) − 1/2``, each ``σ`` the sample standard deviation (ddof 1) floored at ``sd_floor``;
    a side with one model takes the other side's ``σ`` (so one model gives ``(μ_p − μ_q)² / (2σ_q²)``).
    ``estimator="histogram"``: ``bins`` equal bins over the sample's combined range of both sides
    (shared), each side's frequencies smoothed by ``eps`` and renormalised, ``Σ p log(p/q)``; needs
    many models per side to mean much.
    """
    fn = "klom"
    p = np.asarray(p.detach().cpu() if torch.is_tensor(p) else p, dtype=np.float64)
    q = np.asarray(q.detach().cpu() if torch.is_tensor(q) else q, dtype=np.float64)
    if p.ndim != 2 or q.ndim != 2 or p.shape[1] != q.shape[1] or min(p.shape[0], q.shape[0]) < 1:
        raise ValueError(f"{fn}: expected p [K, N] and q [R, N] with the same N and K, R >= 1, got "
                         f"{list(p.shape)} and {list(q.shape)}")
    if not (np.isfinite(p).all() and np.isfinite(q).all()):
        raise ValueError(f"{fn}: margins must be finite")
    if estimator == "gaussian":
        if not sd_floor > 0:
            raise ValueError(f"{fn}: sd_floor must be > 0, got {sd_floor!r}")
        if p.shape[0] < 2 and q.shape[0] < 2:
            sp = sq = np.full(p.shape[1], float(sd_floor))
        else:
            sq = np.maximum(q.std(0, ddof=1), sd_floor) if q.shape[0] > 1 else None
            sp = np.maximum(p.std(0, ddof=1), sd_floor) if p.shape[0] > 1 else None
            sp = sq if sp is None else sp
            sq = sp if sq is None else sq
        mp, mq = p.mean(0), q.mean(0)
        return np.log(sq / sp) + (sp ** 2 + (mp - mq) ** 2) / (2 * sq ** 2) - 0.5
    if estimator == "histogram":
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
            raise ValueError(f"{fn}: bins must be an int >= 2, got {bins!r}")
        if not eps > 0:
            raise ValueError(f"{fn}: eps must be > 0, got {eps!r}")
        lo = np.minimum(p.min(0), q.min(0))
        hi = np.maximum(p.max(0), q.max(0))
        width = np.where(hi > lo, (hi - lo) / bins, 1.0)

        def freq(x: np.ndarray) -> np.ndarray:
            idx = np.clip(((x - lo) / width).astype(np.int64), 0, bins - 1)  # [M, N]
            h = np.zeros((bins, x.shape[1]))
            np.add.at(h, (idx, np.broadcast_to(np.arange(x.shape[1]), idx.shape)), 1.0)
            h = h / x.shape[0] + eps
            return h / h.sum(0)

        hp, hq = freq(p), freq(q)
        return (hp * np.log(hp / hq)).sum(0)
    raise ValueError(f"{fn}: estimator must be 'gaussian' or 'histogram', got {estimator!r}")


@dataclass
class KlomSummary:
    """KLOM percentiles per group for each compared ensemble, with the noise floor.

    ``values[name][group]`` = ``{"p50": ..., "p95": ..., "p99": ..., "mean": ...}`` for each compared
    ensemble ``name`` and for ``"floor"`` (Retrain against Retrain, same sizes); ``sizes`` the models per
    side; ``estimator`` and ``rotations`` how it was computed.
    """

    values: dict[str, dict[str, dict[str, float]]]
    sizes: dict[str, int]
    estimator: str
    rotations: int
    groups: dict[str, int] = field(default_factory=dict)

    def flat(self, name: str, prefix: str = "klom") -> dict[str, float]:
        """``{f"{prefix}_{group}_{stat}": value}`` for ensemble ``name`` (for a results row)."""
        return {f"{prefix}_{g}_{s}": v for g, stats in self.values.get(name, {}).items() for s, v in stats.items()}


def klom_summary(compared: dict[str, torch.Tensor | np.ndarray], retrain: torch.Tensor | np.ndarray,
                 groups: dict[str, torch.Tensor | np.ndarray | slice], percentiles: Sequence[float] = (50, 95, 99),
                 estimator: str = "gaussian", **klom_kwargs: Any) -> KlomSummary:
    """KLOM of each compared ensemble (``name -> [K, N]`` margins, e.g. ``{"original": [1, N],
    "accelerated": [1, N]}``) against Retrain's (``[R, N]``), and the noise floor, as percentiles over
    each group of samples (``name -> indices into N``).

    So that a compared value and the floor are measured alike, the Retrain ensemble is rotated: in
    rotation ``j`` the ``k`` models starting at ``j`` (``k`` = the largest compared ensemble, at most
    ``R − 1``; wrapping around) are held out; the floor is KLOM(held-out Retrain || the other Retrain
    models) and each compared ensemble is scored against the same other models. Per-sample values are
    averaged over the ``R`` rotations, then summarised (percentiles and mean per group).
    """
    fn = "klom_summary"
    r = np.asarray(retrain.detach().cpu() if torch.is_tensor(retrain) else retrain, dtype=np.float64)
    if r.ndim != 2 or r.shape[0] < 2:
        raise ValueError(f"{fn}: retrain must be [R, N] margins of R >= 2 models (one held out for the noise "
                         f"floor), got shape {list(r.shape)}")
    comp = {k: np.asarray(v.detach().cpu() if torch.is_tensor(v) else v, dtype=np.float64)
            for k, v in compared.items()}
    for k, v in comp.items():
        if v.ndim != 2 or v.shape[1] != r.shape[1]:
            raise ValueError(f"{fn}: compared[{k!r}] must be [K, {r.shape[1]}] margins, got {list(v.shape)}")
    if "floor" in comp:
        raise ValueError(f"{fn}: 'floor' is reserved for the noise floor; rename that compared ensemble")
    k = min(max([v.shape[0] for v in comp.values()] + [1]), r.shape[0] - 1)
    total = {name: np.zeros(r.shape[1]) for name in (*comp, "floor")}
    for j in range(r.shape[0]):
        held = [(j + i) % r.shape[0] for i in range(k)]
        rest = [i for i in range(r.shape[0]) if i not in held]
        total["floor"] += klom(r[held], r[rest], estimator, **klom_kwargs)
        for name, v in comp.items():
            total[name] += klom(v, r[rest], estimator, **klom_kwargs)
    values: dict[str, dict[str, dict[str, float]]] = {}
    sizes_g = {}
    for name, t in total.items():
        per = t / r.shape[0]
        values[name] = {}
        for g, idx in groups.items():
            sel = per[idx]
            sizes_g[g] = int(sel.size)
            if sel.size == 0:
                continue
            stats = {f"p{int(q) if float(q).is_integer() else q}": float(np.percentile(sel, q)) for q in percentiles}
            stats["mean"] = float(sel.mean())
            values[name][g] = stats
    return KlomSummary(values, {"retrain": int(r.shape[0]), "held_out": k, "reference": int(r.shape[0] - k),
                                **{n: int(v.shape[0]) for n, v in comp.items()}}, estimator, int(r.shape[0]),
                       sizes_g)


# --------------------------------------------------------------------------------------------
# the hard forget kind
# --------------------------------------------------------------------------------------------
def hardest(candidates: torch.Tensor, losses: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` candidates (``[P]`` int64 train indices) with the highest ``losses`` (``[P]``, the
    per-sample loss under a model that did not train on them), sorted ``[k]`` int64; ties go to the
    smaller index (deterministic)."""
    fn = "hardest"
    candidates = torch.as_tensor(candidates)
    losses = torch.as_tensor(losses, dtype=torch.float64).cpu()
    if candidates.dim() != 1 or losses.shape != candidates.shape:
        raise ValueError(f"{fn}: candidates and losses must be [P] each, got {list(candidates.shape)} and "
                         f"{list(losses.shape)}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= candidates.numel():
        raise ValueError(f"{fn}: k must be an int in [1, {candidates.numel()}], got {k!r}")
    if not bool(torch.isfinite(losses).all()):
        raise ValueError(f"{fn}: losses must be finite")
    cand = candidates.cpu().long()
    order = sorted(range(cand.numel()), key=lambda i: (-float(losses[i]), int(cand[i])))
    return cand[order[:k]].sort().values


__all__ = ["BAND_METRICS", "KLOM_GROUPS", "KlomSummary", "MIAResult", "MetricBand", "SeedBand", "SmallGroupWarning",
           "binomial_se", "fixed_band", "hardest", "klom", "klom_summary", "margins", "mia_with_interval",
           "seed_band"]
