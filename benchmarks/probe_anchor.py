"""The probe behind the held-out anchor (docs/method.md §7.9), kept as it ran: does anchoring the model's outputs
on unseen images to the untouched model's close the hard kind's MIA gap? ``nu · KL(original || current)`` on 64
unseen images per step, added through a hook on the methods' regulariser before the library had
``config.anchor_weight``. Its anchor set is the unseen images of the forget classes ("all"; every class on the
hard kind's splits, as the library's) or the matched images ("matched"); it also reports the MIA against the
evaluation split alone. Results: ``results-2026-12-05-cpu/quality/anchor_probe.json``.

    FASTBLEND_CACHE=<cache> OMP_NUM_THREADS=1 python -m benchmarks.probe_anchor hard@0 OUT.json \
        '[["nu5_all", "a_finetune", {"target": "matched_fixed", "odds_weight": 0.3, "epochs": 2}, 5.0, "all"]]'
"""
import json
import sys
import time

import torch
import torch.nn.functional as F

from benchmarks.explore_quality import Setting
from fastblend.evaluation import mia_with_interval
from fastblend.methods import base as mbase
from fastblend.methods import sparse as msparse
from fastblend.metrics import predict_logits

torch.set_num_threads(1)
kind = sys.argv[1]
out = sys.argv[2]
rows = json.loads(sys.argv[3])  # [[name, method, config, nu, anchor_set], ...]
S = Setting(kind.partition("@")[0], seed=int(kind.partition("@")[2] or 0))
split = S.split
ux, uy = split.unseen_tensors()
keep = torch.isin(uy, torch.unique(split.train.labels[split.forget]))
ux, uy = ux[keep], uy[keep]
orig_u = predict_logits(S.model, ux, device=S.device).float().cpu()
from fastblend.difficulty import matched_unseen  # noqa: E402

midx = matched_unseen(S.model, split.retain_tensors(), split.forget_tensors(), (ux, uy), device=S.device)
ex, ey = split.eval_tensors()
ekeep = torch.isin(ey, torch.unique(split.train.labels[split.forget]))
ex, ey = ex[ekeep], ey[ekeep]
STATE = {"nu": 0.0, "x": None, "z": None, "g": None}
orig_reg = {mbase.Method: mbase.Method.regulariser, msparse.L1Sparse: msparse.L1Sparse.regulariser}


def make(cls):
    inner = orig_reg[cls]

    def reg(self, model, epoch, ctx):
        r = inner(self, model, epoch, ctx)
        if STATE["nu"] <= 0:
            return r
        i = torch.randint(0, STATE["x"].shape[0], (64,), generator=STATE["g"])
        z = model(STATE["x"][i])
        a = F.kl_div(F.log_softmax(z, 1), F.log_softmax(STATE["z"][i], 1), log_target=True, reduction="batchmean")
        return STATE["nu"] * a if r is None else r + STATE["nu"] * a
    return reg


for cls in orig_reg:
    cls.regulariser = make(cls)
_ev = S.evaluate


def ev(model):
    m = _ev(model)
    lf = predict_logits(model, split.forget_tensors()[0], device=S.device).float().cpu()
    le = predict_logits(model, ex, device=S.device).float().cpu()
    STATE["eval_mia"] = mia_with_interval(lf, split.forget_tensors()[1], le, ey, statistic=S.cfg.mia_statistic,
                                          seed=S.seed, min_group=S.cfg.mia_min_group).as_dict()
    return m


S.evaluate = ev
res = {"band": S.band.as_dict(), "original": S.original, "rows": {}}
for name, method, config, nu, aset in rows:
    sel = midx if aset == "matched" else torch.arange(ux.shape[0])
    STATE.update(nu=nu, x=ux[sel], z=orig_u[sel], g=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    r = S.run(method, dict(config))
    # the MIA against the evaluation split only (images no run trained on or anchored)
    r["eval_only_mia"] = STATE["eval_mia"]
    r["wall"] = time.perf_counter() - t0
    res["rows"][name] = r
    f = r["final"]
    print(f"{name:<40} forget {f['forget_acc']:5.1f} test {f['test_acc']:5.1f} MIA {f['mia']:5.1f} "
          f"[{f['mia_low']:.1f},{f['mia_high']:.1f}] evalMIA {r['eval_only_mia']['mia']:.1f} in {r['in_band']} "
          f"first {r['first_in']} dist {r['dist']}",
          flush=True)
    json.dump(res, open(out, "w"), indent=1, default=str)
print(json.dumps(S.band.as_dict(), default=str))
