"""Can a retain-only difficulty proxy tell the auto stop how far to forget an atypical forget set?

docs/method.md §4.5: the auto stop compares the forget set with typical held-out images of its classes, so
on the ``hard`` kind (atypical images) it stops while forget accuracy is still far above Retrain's. This
script measures one candidate fix that needs no Retrain: score every forget and held-out image by a
k-nearest-neighbour vote among the retain images (the fraction of its k nearest retain images that carry
its label; in the original model's features or in pixels), and predict Retrain's forget accuracy as the
original model's held-out accuracy at matching scores. It prints and writes (``--out``) the prediction
beside the Retrain ensemble's actual forget accuracy, on the demo's reduced setting
(``fastblend demo --limit 2000``; the original, the hard proxy and the ensemble come from the model cache).

    python -m benchmarks.explore_autostop_proxy --forget hard --out result.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from fastblend.datasets import load_dataset
from fastblend.experiments import pipeline as P
from fastblend.metrics import predict_logits


def _agreement(e: torch.Tensor, ref_e: torch.Tensor, ref_y: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    top = (e @ ref_e.T).topk(k, dim=1).indices
    return (ref_y[top] == y[:, None]).float().mean(1)


def _accuracy(model, x, y) -> float:
    return float((predict_logits(model, x).argmax(1) == y).double().mean() * 100)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--forget", choices=["hard", "uniform"], default="hard")
    p.add_argument("--limit", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    cfg = P.with_overrides(P.DEMO, limit=args.limit, forget=args.forget, track_evaluations=10, quiet=True,
                           **({"cache_dir": args.cache_dir} if args.cache_dir else {}))
    dev = torch.device("cpu")
    train, test = load_dataset(cfg.dataset, cfg.data_root, per_class=cfg.per_class, limit=cfg.limit)
    if args.forget == "hard":
        split, _ = P.hard_split(cfg, train, test, args.seed, dev, False, lambda m: None)
    else:
        split = P.make_split(train, test, forget="uniform", forget_fraction=cfg.forget_fraction, seed=args.seed)
    model, *_ = P.original_model(cfg, train.images, train.labels, train.num_classes, args.seed, dev, False)
    members, _ = P.retrain_ensemble(cfg, split, args.seed, dev, False, lambda m: None)
    (rx, ry), (fx, fy), (ux, uy) = split.retain_tensors(), split.forget_tensors(), split.unseen_tensors()
    model.eval()
    with torch.no_grad():
        spaces = {"original features": tuple(F.normalize(model.embed(t), dim=1) for t in (rx, fx, ux)),
                  "pixels": tuple(F.normalize(t.flatten(1), dim=1) for t in (rx, fx, ux))}
    held_correct = predict_logits(model, ux).argmax(1) == uy
    out = {"forget": args.forget, "limit": args.limit, "seed": args.seed,
           "original": {"forget_acc": _accuracy(model, fx, fy), "heldout_acc": _accuracy(model, ux, uy)},
           "retrain_members_forget_acc": [_accuracy(m, fx, fy) for m in members], "proxies": []}
    bins = torch.linspace(0, 1, 6)
    for name, (er, ef, eu) in spaces.items():
        for k in (10, 25):
            sf, su = _agreement(ef, er, ry, fy, k), _agreement(eu, er, ry, uy, k)
            bf, bu = torch.bucketize(sf, bins), torch.bucketize(su, bins)
            est = [float(held_correct[bu == b].double().mean()) if bool((bu == b).any())
                   else float(held_correct.double().mean()) for b in bf.tolist()]
            out["proxies"].append({"space": name, "k": k, "agreement_forget": float(sf.mean()),
                                   "agreement_heldout": float(su.mean()),
                                   "predicted_forget_acc": 100 * sum(est) / len(est)})
            print(f"{name:>18} k={k:<3} agreement forget {sf.mean():.2f} held-out {su.mean():.2f}  "
                  f"predicted forget acc {out['proxies'][-1]['predicted_forget_acc']:.1f}  "
                  f"(Retrain members {', '.join(f'{a:.1f}' for a in out['retrain_members_forget_acc'])})")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
