"""The main job's request with and without the frozen prefix (docs/method.md §7.11): ``fastblend demo``'s split
(8,000 images, 10% uniform, seed 0) and original, a_finetune with ``stop="auto"``, judged against the band of
``demo_full_uniform_default/`` (the same split and original; its Retrain ensemble is not retrained here).

    FASTBLEND_CACHE=<cache> python benchmarks/results-2026-12-05-cpu/quality/full_prefix.py <out.json>
"""

import json
import sys
import time

import torch

from fastblend.datasets import load_dataset, make_split
from fastblend.experiments import pipeline
from fastblend.experiments.settings import DEMO, resolve_device, with_overrides
from fastblend.methods import unlearn

#: demo_full_uniform_default/results.json, per_seed[0].yardstick.band (low, high)
BAND = {"forget_acc": (95.58, 98.67), "test_acc": (96.76, 99.41), "mia": (47.94, 52.91)}


def main(out_path: str) -> None:
    cfg = with_overrides(DEMO, quiet=True, plots=False)
    dev = resolve_device(cfg.device)
    train, test = load_dataset(cfg.dataset, cfg.data_root, per_class=cfg.per_class, limit=cfg.limit)
    split = make_split(train, test, forget=cfg.forget, forget_fraction=cfg.forget_fraction,
                       forget_class=cfg.forget_class, seed=0)
    heldout = pipeline.heldout_tensors(split)
    rows = pipeline.klom_retain_rows(split, cfg.klom_retain, 0)
    model, _, _ = pipeline.original_model(cfg, train.images, train.labels, train.num_classes, 0, dev, False)
    started = time.perf_counter()
    index, _, _ = pipeline.blend_index(cfg, train, pipeline.default_ipc(cfg, train), 0, dev, False)
    print("index", time.perf_counter() - started, flush=True)
    out = {}
    for name, conf in (("prefix", None), ("whole", {"frozen_prefix": None})):
        retain, request = pipeline.request_reduced(index, split.forget)
        res = unlearn("a_finetune", model, retain, split.forget_tensors(), split.unseen_tensors(), config=conf,
                      device=dev, seed=0, stop="auto")
        m, _, _ = pipeline.evaluate_model(res.model, split, dev, cfg, heldout, rows, 0)
        out[name] = {"seconds": request + res.seconds, "forget_acc": m["forget_acc"], "test_acc": m["test_acc"],
                     "mia": m["mia"], "in_band": all(BAND[k][0] <= m[k] <= BAND[k][1] for k in BAND),
                     "stopped": res.info["auto_stop"]["stopped"], "step": res.steps,
                     "frozen_prefix": res.info.get("frozen_prefix"), "setup_seconds": res.info.get("setup_seconds")}
        print(name, out[name], flush=True)
    with open(out_path, "w") as fh:
        json.dump({"band (demo_full_uniform_default/, same split and original)": BAND, "runs": out,
                   "threads": torch.get_num_threads()}, fh, indent=1, default=str)


if __name__ == "__main__":
    main(sys.argv[1])
