"""Why the MIA stays out on the ``hard`` kind (docs/method.md §7.8): the true-class log-odds of the forget and
held-out images under the untouched model, Retrain and unlearned models, on the reduced demo.

The MIA (§4.3) ranks the true-class log-odds ``φ`` of the forget images against those of held-out images of
the same classes, under one model. This prints, for one split seed of the ``hard`` kind (the reduced demo
of ``benchmarks/explore_quality.py``, models and index from ``$FASTBLEND_CACHE``):

- the band, and ``φ``'s deciles/quartiles (10/25/50/75/90%) with the accuracy on the forget and held-out
  images under the untouched model, Retrain (the run's own, seed ``seed``), and the difficulty-matched
  images (§7.7) under the untouched model (the fixed target; they are unseen images, so part of the held-out
  group they are scored against), with the MIA of each pair;
- the same for a_finetune's final model under each setting of ``VARIANTS``.

Usage::

    FASTBLEND_CACHE=/work/wt/cache OMP_NUM_THREADS=1 python -m benchmarks.diagnose_odds --seeds 0 1 2 \\
        > benchmarks/results-2026-12-05-cpu/quality/odds_diagnosis.txt

(``odds_diagnosis.txt`` was made before the MIA scored every forget × held-out pair; ``odds_diagnosis_allpairs.txt``
after, with ``--seeds 0 1 2 --variants default fixed_odds0.3_epochs2 fixed_odds0.3_epochs2_anchor5``;
``odds_diagnosis_image.txt`` with ``--seeds 0 1 2 --variants fixed_odds0.3_epochs2_anchor5 image_odds1_anchor5_epochs3
image_recipe --per-class``, docs/method.md §7.10.)
"""

from __future__ import annotations

import argparse

import torch

from fastblend.difficulty import matched_unseen
from fastblend.evaluation import mia_with_interval
from fastblend.experiments import pipeline
from fastblend.methods import unlearn
from fastblend.metrics import predict_logits, true_class_log_odds

from .explore_quality import Setting

FIXED = {"target": "matched_fixed"}
#: (name, a_finetune config): the fixed target alone, with the log-odds term, and with a second epoch
VARIANTS = [("default", {}), ("fixed", FIXED), ("fixed_odds0.3", {**FIXED, "odds_weight": 0.3}),
            ("fixed_odds1", {**FIXED, "odds_weight": 1.0}),
            ("fixed_odds0.3_epochs2", {**FIXED, "odds_weight": 0.3, "epochs": 2}),
            ("matched_odds1", {"target": "matched", "odds_weight": 1.0}),
            ("fixed_odds0.3_epochs2_anchor5", {**FIXED, "odds_weight": 0.3, "epochs": 2, "anchor_weight": 5.0}),
            ("image_odds1_anchor5_epochs3", {**FIXED, "odds_weight": 1.0, "odds_pairing": "image", "epochs": 3,
                                             "anchor_weight": 5.0}),
            ("image_recipe", {**FIXED, "odds_weight": 1.0, "odds_pairing": "image", "epochs": 3, "anchor_weight": 10.0,
                              "lr": 5e-4})]
LEVELS = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.float64)


def describe(name: str, model, forget, heldout) -> str:
    """One line: the MIA of ``forget`` against ``heldout`` under ``model``, and each side's φ quantiles and
    accuracy."""
    lf, lh = predict_logits(model, forget[0]).float(), predict_logits(model, heldout[0]).float()
    pf = true_class_log_odds(lf, forget[1]).double()
    ph = true_class_log_odds(lh, heldout[1]).double()
    mia = mia_with_interval(lf, forget[1], lh, heldout[1], min_group=1).score
    acc_f = float((lf.argmax(1) == forget[1]).double().mean()) * 100
    acc_h = float((lh.argmax(1) == heldout[1]).double().mean()) * 100

    def q(p: torch.Tensor) -> str:
        return " ".join(f"{v:6.2f}" for v in p.quantile(LEVELS).tolist())

    return (f"  {name:<24} MIA {mia:5.1f} | forget phi {q(pf)} acc {acc_f:5.1f} | "
            f"held-out phi {q(ph)} acc {acc_h:5.1f}")


def _auc(a: torch.Tensor, b: torch.Tensor) -> float:
    """100 · P(a > b) over every pair (ties count half): the MIA's direct AUC."""
    gt = (a[:, None] > b[None, :]).double().mean()
    return 100 * float(gt + 0.5 * (a[:, None] == b[None, :]).double().mean())


def per_class(models: dict, forget, heldout) -> str:
    """Per forget class: its forget images, the MIA within the class and the mean φ of its forget / held-out
    images under each model; then each model's forget images against each model's held-out images (which
    side moves the MIA)."""
    phi = {n: (true_class_log_odds(predict_logits(m, forget[0]).float(), forget[1]).double(),
               true_class_log_odds(predict_logits(m, heldout[0]).float(), heldout[1]).double())
           for n, m in models.items()}
    lines = ["  forget images of one model against held-out images of another (MIA):"]
    for fn in phi:
        cells = [f"| held-out under {hn}: {_auc(phi[fn][0], phi[hn][1]):5.1f}" for hn in phi]
        lines.append(f"    forget under {fn:<20} " + " ".join(cells))
    lines.append("  per forget class: n, then per model the MIA within the class and mean phi forget / held-out")
    for c in forget[1].unique().tolist():
        mf, mh = forget[1] == c, heldout[1] == c
        lines.append(f"    class {c} n {int(mf.sum()):3d} " + " ".join(
            f"| {n} {_auc(p[0][mf], p[1][mh]):5.1f} {float(p[0][mf].mean()):5.2f}/{float(p[1][mh].mean()):5.2f}"
            for n, p in phi.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--variants", nargs="+", default=None, choices=[name for name, _ in VARIANTS],
                   help="run only these settings of a_finetune (default: all)")
    p.add_argument("--per-class", action="store_true",
                   help="also break the MIA down by forget class and by which model scores each side")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    print("phi quantiles at 10/25/50/75/90%; MIA = 100 P(phi_forget > phi_heldout) under the same model")
    for seed in args.seeds:
        s = Setting("hard", seed)
        split = s.split
        forget, heldout, unseen = split.forget_tensors(), s.heldout, split.unseen_tensors()
        band = s.summary()["band"]
        print(f"\nhard, split seed {seed}: band " + ", ".join(
            f"{m} [{band[m]['low']:.1f}, {band[m]['high']:.1f}]" for m in ("forget_acc", "test_acc", "mia")))
        retrain, _, _ = pipeline._retrain_cached(s.cfg, split, pipeline.ensemble_seed(seed, 0), s.device, False)
        print(describe("untouched original", s.model, forget, heldout))
        print(describe("Retrain", retrain, forget, heldout))
        idx = matched_unseen(s.model, split.retain_tensors(), forget, unseen)
        print(describe("matched | original", s.model, (unseen[0][idx], unseen[1][idx]), heldout))
        retain, _ = pipeline.request_reduced(s.index, split.forget)
        models = {"original": s.model, "Retrain": retrain}
        for name, conf in VARIANTS:
            if args.variants is not None and name not in args.variants:
                continue
            res = unlearn("a_finetune", s.model, retain, forget, unseen=unseen,
                          config={"request": "sample", **conf}, device=s.device, seed=seed)
            print(describe(name, res.model, forget, heldout), flush=True)
            models[name] = res.model
        if args.per_class:
            print(per_class(models, forget, heldout), flush=True)


if __name__ == "__main__":
    main()
