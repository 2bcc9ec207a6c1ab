import time, json, sys, torch
sys.path.insert(0, "/work/main")
from fastblend.datasets import load_dataset, make_split
from fastblend.experiments import pipeline
from fastblend.experiments.settings import DEMO, resolve_device, with_overrides
from fastblend.methods import unlearn
cfg = with_overrides(DEMO, quiet=True, plots=False)
dev = resolve_device(cfg.device)
train, test = load_dataset(cfg.dataset, cfg.data_root, per_class=cfg.per_class, limit=cfg.limit)
split = make_split(train, test, forget=cfg.forget, forget_fraction=cfg.forget_fraction, forget_class=cfg.forget_class, seed=0)
heldout = pipeline.heldout_tensors(split); rows = pipeline.klom_retain_rows(split, cfg.klom_retain, 0)
model, _, _ = pipeline.original_model(cfg, train.images, train.labels, train.num_classes, 0, dev, False)
ipc = pipeline.default_ipc(cfg, train)
t = time.perf_counter(); index, _, _ = pipeline.blend_index(cfg, train, ipc, 0, dev, False); print("index", time.perf_counter() - t, flush=True)
band = {"forget_acc": (95.58, 98.67), "test_acc": (96.76, 99.41), "mia": (47.94, 52.91)}
out = {}
for name, conf in (("prefix", None), ("whole", {"frozen_prefix": None})):
    retain, request = pipeline.request_reduced(index, split.forget)
    res = unlearn("a_finetune", model, retain, split.forget_tensors(), split.unseen_tensors(), config=conf, device=dev, seed=0, stop="auto")
    m, _, _ = pipeline.evaluate_model(res.model, split, dev, cfg, heldout, rows, 0)
    inside = all(band[k][0] <= m[k] <= band[k][1] for k in band)
    out[name] = {"seconds": request + res.seconds, "forget_acc": m["forget_acc"], "test_acc": m["test_acc"], "mia": m["mia"], "in_band": inside,
                 "stopped": res.info["auto_stop"]["stopped"], "step": res.steps, "frozen_prefix": res.info.get("frozen_prefix"), "setup_seconds": res.info.get("setup_seconds")}
    print(name, out[name], flush=True)
json.dump({"band (demo_full_uniform_default/, same split and original)": band, "runs": out, "threads": torch.get_num_threads()}, open("/work/scratch/full_prefix.json", "w"), indent=1, default=str)
