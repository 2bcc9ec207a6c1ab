"""How well does the fixed matched target predict Retrain's view of the forget images? (docs/method.md §7.7, §7.10)

The difficulty-matched recipe fixes A-AMU's target at the untouched model's losses on held-out images chosen as
hard as the forget images (:func:`fastblend.difficulty.match_by_rank`: each forget image's loss quantile among the
model's own training images of its class, matched to the held-out image of the class at that quantile). This
script compares, per cell, the untouched model's accuracy and mean loss on the matched held-out images (the
target) with the Retrain seed ensemble's on the forget images (what the target stands in for), for that ranking
and for alternatives: the k nearest held-out images of the class in a random network's features or in the
model's own, and the quantile match on losses averaged over Gaussian input noise. Models, splits and Retrain
ensembles come from ``$FASTBLEND_CACHE`` (the demo's, and the matrix's BatchNorm ResNet-18 cell)::

    FASTBLEND_CACHE=... python -m benchmarks.target_diagnosis {reduced,resnet,full} --out FILE.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks import bench_matrix as bm
from benchmarks.explore_quality import demo_config
from fastblend import extract_features
from fastblend.datasets import load_dataset
from fastblend.difficulty import match_by_rank
from fastblend.experiments import pipeline
from fastblend.metrics import predict_logits


def _scores(model, x, y, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image cross-entropy and correctness under ``model``."""
    z = predict_logits(model, x, device=device).float().cpu()
    return F.cross_entropy(z, y, reduction="none"), (z.argmax(1) == y).float()


def _nearest(forget_feats, forget_y, pool_feats, pool_y, k: int) -> torch.Tensor:
    """Indices of the ``k`` nearest pool rows of the same class for every forget row."""
    out = []
    for i in range(forget_feats.shape[0]):
        rows = torch.nonzero(pool_y == forget_y[i]).flatten()
        d = torch.cdist(forget_feats[i:i + 1], pool_feats[rows]).flatten()
        out.append(rows[d.argsort()[:k]])
    return torch.cat(out)


def cell(cfg, seed: int, device: torch.device) -> dict:
    train, test = load_dataset(cfg.dataset, cfg.data_root, per_class=cfg.per_class, limit=cfg.limit)
    split, _ = pipeline.hard_split(cfg, train, test, seed, device, False, lambda m: None)
    model, _, _ = pipeline.original_model(cfg, train.images, train.labels, train.num_classes, seed, device, False)
    (rx, ry), (fx, fy), (ux, uy) = split.retain_tensors(), split.forget_tensors(), split.unseen_tensors()
    r_loss, _ = _scores(model, rx, ry, device)
    f_loss, f_right = _scores(model, fx, fy, device)
    u_loss, u_right = _scores(model, ux, uy, device)
    accs, losses = [], []
    for j in range(cfg.retrain_seeds):
        member, _, _ = pipeline._retrain_cached(cfg, split, pipeline.ensemble_seed(seed, j), device, False)
        loss, right = _scores(member, fx, fy, device)
        accs.append(100 * float(right.mean()))
        losses.append(float(loss.mean()))
    out = {"retrain_forget_acc": sum(accs) / len(accs), "retrain_forget_loss": sum(losses) / len(losses),
           "retrain_forget_acc_members": accs, "original_forget_acc": 100 * float(f_right.mean()),
           "heldout_acc": 100 * float(u_right.mean()), "targets": {}}

    def target(idx: torch.Tensor) -> dict:
        return {"acc": 100 * float(u_right[idx].mean()), "loss": float(u_loss[idx].mean()),
                "distinct": int(idx.unique().numel())}

    out["targets"]["loss_rank"] = target(match_by_rank(r_loss, ry, f_loss, fy, u_loss, uy))
    feats = extract_features(torch.cat([fx, ux]), seed=seed, progress=False)
    embed = getattr(model, "embed", None)
    with torch.no_grad():
        own = torch.cat([embed(b.to(device)).cpu() for b in torch.cat([fx, ux]).split(256)]) if embed else None
    for k in (1, 5):
        out["targets"][f"knn_random_k{k}"] = target(_nearest(feats[:len(fy)], fy, feats[len(fy):], uy, k))
        if own is not None:
            out["targets"][f"knn_model_k{k}"] = target(_nearest(own[:len(fy)], fy, own[len(fy):], uy, k))
    gen = torch.Generator().manual_seed(seed)
    std = float(rx.std())
    for sigma in (0.25, 0.5):
        def noisy(x, y, sigma=sigma):
            return torch.stack([_scores(model, x + sigma * std * torch.randn(x.shape, generator=gen), y, device)[0]
                                for _ in range(3)]).mean(0)
        out["targets"][f"noise_rank_{sigma}"] = target(match_by_rank(noisy(rx, ry), ry, noisy(fx, fy), fy,
                                                                     noisy(ux, uy), uy))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cells", choices=["reduced", "resnet", "full"])
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    device = torch.device("cpu")
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    if args.cells == "reduced":
        todo = [(f"hard@{s}", demo_config("hard"), s) for s in (0, 1, 2)]
    elif args.cells == "full":
        todo = [("hard_full@0", demo_config("hard_full"), 0)]
    else:
        todo = [("resnet18bn-w8-hard@0", bm.family_config("hard", 2000, {}, 8), 0)]
    with bm._resnet_models():
        for name, cfg, seed in todo:
            results[name] = cell(cfg, seed, device)
            row = results[name]
            print(name, f"Retrain {row['retrain_forget_acc']:.1f}", " ".join(
                f"{k} {v['acc']:.1f}" for k, v in row["targets"].items()), flush=True)
            args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
