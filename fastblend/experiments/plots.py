"""PNG figures of a run (matplotlib, imported lazily; no display needed).

Every figure is a bare ``matplotlib.figure.Figure`` saved by its own canvas: nothing here calls
``matplotlib.use`` or ``pyplot``, so the caller's backend and pyplot's figure list (a notebook's
inline plots) are left as they were."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ..condensation import ReducedRetainSet
    from ..grouping import Clustering


def _figure(**kwargs):
    """A new ``matplotlib.figure.Figure`` outside pyplot (``savefig`` renders it with Agg for PNG)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("fastblend plots need matplotlib: `pip install matplotlib` (or fastblend[plots])") from exc
    return Figure(**kwargs)


STAGE_COLOURS = {"features": "#4c72b0", "grouping": "#55a868", "split": "#c44e52", "blend": "#8172b2",
                 "unlearning": "#ccb974", "evaluation": "#64b5cd", "index": "#d9d9d9"}


def stage_times(rows: list[dict], path: str | Path) -> Path:
    """Stacked horizontal bars: seconds per stage for each variant (``t_<stage>`` keys of ``rows``); the
    ``index`` stage (built once per training set, not per request) is drawn last, hatched, and the
    label at the end of each bar gives the per-request total (``t_total``) and the index apart."""
    rows = [r for r in rows if r.get("variant") != "original"]
    fig = _figure(figsize=(9, 0.7 * len(rows) + 1.5))
    ax = fig.subplots()
    labels = [f"{r['variant']}\n({r['method']})" for r in rows]
    left = [0.0] * len(rows)
    for stage, colour in STAGE_COLOURS.items():
        widths = [float(r.get(f"t_{stage}", 0.0)) for r in rows]
        once = stage == "index"
        ax.barh(labels, widths, left=left, color=colour, hatch="//" if once else None,
                label="index (once per training set)" if once else stage)
        left = [a + b for a, b in zip(left, widths)]
    for i, (end, r) in enumerate(zip(left, rows)):
        index = float(r.get("t_index", 0.0))
        text = f" {float(r.get('t_total', end)):.1f}s per request"
        if r.get("index_cached"):
            text += f" (index loaded; built once in {float(r.get('index_build_seconds', 0.0)):.0f}s)"
        elif index:
            text += f" (+{index:.1f}s index, once)"
        ax.text(end, i, text, va="center", fontsize=8)
    ax.set_xlabel("wall-clock seconds (device synchronised)")
    ax.set_title("Time per stage")
    ax.invert_yaxis()
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    ax.set_xlim(0, max(left + [1e-9]) * 1.45)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return Path(path)


def loss_histograms(losses: dict[str, dict[str, torch.Tensor]], path: str | Path) -> Path:
    """One panel per variant: histograms of per-sample losses on the forget set and on unseen data.

    After good unlearning the forget losses look like unseen losses (what A-AMU's regulariser aims
    for)."""
    names = list(losses)
    fig = _figure(figsize=(3.6 * len(names), 3.0))
    axes = fig.subplots(1, len(names), squeeze=False)
    top = max(float(torch.log1p(t).max()) for d in losses.values() for t in d.values() if t.numel()) or 1.0
    bins = torch.linspace(0, top, 40).tolist()
    for ax, name in zip(axes[0], names):
        for part, colour in (("unseen", "#4c72b0"), ("forget", "#c44e52")):
            data = torch.log1p(losses[name][part]).tolist()
            ax.hist(data, bins=bins, alpha=0.55, density=True, color=colour, label=part)
        ax.set_title(name)
        ax.set_xlabel("log(1 + cross-entropy)")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return Path(path)


def save_blend_grid(reduced: ReducedRetainSet, images: torch.Tensor, clustering: Clustering, path: str | Path,
                    n: int = 8, members: int = 7) -> Path:
    """Save a PNG grid: each row is a blended image followed by up to ``members`` of its cluster;
    rows cycle through the classes.

    Every tile is min-max scaled on its own for display. Needs matplotlib (``pip install
    fastblend[plots]``).
    """
    if n < 1 or members < 0:
        raise ValueError(f"save_blend_grid: n must be >= 1 and members >= 0, got n={n}, members={members}")
    blended = torch.nonzero(reduced.is_blended).flatten()
    if not blended.numel():
        raise ValueError("save_blend_grid: the reduced set has no blended rows")
    # round-robin over classes so the grid shows every class, not the first class's clusters only
    labels = reduced.labels.cpu()[blended]
    rank = torch.zeros_like(labels)
    for c in torch.unique(labels).tolist():
        rank[labels == c] = torch.arange(int((labels == c).sum()))
    rows = blended[torch.argsort(rank * (int(labels.max()) + 1) + labels)][:n].tolist()
    perm, indptr = clustering.perm.cpu(), clustering.indptr.cpu()

    def tile(img: torch.Tensor):
        img = img.detach().cpu().double()
        img = (img - img.min()) / (img.max() - img.min()).clamp_min(1e-12)
        return img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy()

    cols = members + 1
    fig = _figure(figsize=(1.2 * cols, 1.2 * len(rows)))
    axes = fig.subplots(len(rows), cols, squeeze=False)
    for r, row in enumerate(rows):
        c = int(reduced.source_cluster[row])
        idx = perm[indptr[c] : indptr[c + 1]][:members].tolist()
        for j, ax in enumerate(axes[r]):
            ax.axis("off")
            if j == 0:
                ax.imshow(tile(reduced[row][0]), cmap="gray")
                ax.set_title(f"blend, cluster {c} (class {int(reduced.labels[row])})", fontsize=6, loc="left")
            elif j - 1 < len(idx):
                ax.imshow(tile(images[idx[j - 1]]), cmap="gray")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path


TARGET_METRICS = (("forget_acc", "forget accuracy (%)"), ("test_acc", "test accuracy (%)"), ("mia", "MIA (%)"))


def quality_vs_time(curves: dict[str, list[dict]], reference: dict[str, float], band: dict[str, float],
                    path: str | Path) -> Path:
    """Forget accuracy, test accuracy and MIA against wall time, every variant on one figure, with
    Retrain's band shaded (``curves``: variant -> points with ``seconds`` and the metrics, as
    :meth:`fastblend.tracking.Tracker.curve` gives; ``reference``/``band``: Retrain's final values
    and the tolerances). Draws on its own ``matplotlib.figure.Figure`` (no pyplot state)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 3.8))
    axes = fig.subplots(1, len(TARGET_METRICS))
    for ax, (key, label) in zip(axes, TARGET_METRICS):
        ref, tol = reference[key], band[key]
        ax.axhspan(ref - tol, ref + tol, color="#dddddd", label="Retrain's band")
        for variant, points in curves.items():
            ax.plot([p["seconds"] for p in points], [p[key] for p in points], marker=".", markersize=3,
                    label=variant)
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlabel("wall time (s, evaluations excluded)")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=8)
    fig.suptitle("Quality against wall time (time to target = first entry into the band that holds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return Path(path)
