"""Probe a_finetune settings on the matrix's BatchNorm ResNet-18 hard cell (seed 0), final and auto stop.

    FASTBLEND_CACHE=... PYTHONPATH=. python resnet_probe.py OUT.json '{"name": {config overrides}, ...}'

(reads the cell's Retrain unit from matrix-default/; the file this produced is resnet_probe.json)"""
import json
import sys
import time
from pathlib import Path

import torch

from benchmarks import bench_matrix as bm
from fastblend.experiments import pipeline
from fastblend.methods import unlearn

torch.set_num_threads(1)

out = Path(sys.argv[1])
variants = json.loads(sys.argv[2])
seed = 0
dev = torch.device("cpu")
results = json.loads(out.read_text()) if out.exists() else {}
with bm._resnet_models():
    cfg = bm.family_config("hard", 2000, {}, 8)
    folder = Path(__file__).resolve().parents[1] / "matrix-default" / "resnet18bn-w8-hard" / "seed0"
    ctx = bm.prepare(cfg, "hard", seed, folder, dev, print)
    ipc = cfg.ipc if cfg.ipc is not None else pipeline.default_ipc(cfg, ctx.train)
    index, _, _ = pipeline.blend_index(cfg, ctx.train, ipc, seed, dev, False)
    retain, req = pipeline.request_reduced(index, ctx.split.forget)
    forget, unseen = ctx.split.forget_tensors(), ctx.split.unseen_tensors()
    band = ctx.retrain["band"]
    for name, over in variants.items():
        for stop in (None, "auto"):
            key = f"{name}/{stop or 'final'}"
            if key in results:
                continue
            t = time.perf_counter()
            res = unlearn("a_finetune", ctx.model, retain, forget, unseen=unseen, config=over or None, device=dev,
                          seed=seed, progress=False, stop=stop)
            m, _, _ = pipeline.evaluate_model(res.model, ctx.split, dev, cfg, ctx.heldout, ctx.retain_rows, seed)
            row = {k: m[k] for k in ("forget_acc", "test_acc", "mia")}
            inside = all(band[k]["low"] <= row[k] <= band[k]["high"] for k in row)
            results[key] = {"config": over, "metrics": row, "in_band": inside, "seconds": res.seconds,
                            "steps": res.steps, "recipe": res.info.get("recipe")}
            print(key, row, "IN" if inside else "out", round(res.seconds, 1), res.steps, flush=True)
            out.write_text(json.dumps(results, indent=1))
    print("band", {k: (band[k]["low"], band[k]["high"]) for k in ("forget_acc", "test_acc", "mia")})
