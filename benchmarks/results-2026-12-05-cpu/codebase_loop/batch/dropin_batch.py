"""The drop-in (``prepare_unlearning``) in a codebase's loader loop on the matrix's ``hard`` cell: a batch of 64 (the
recipe's), 128 and 256 with what ``prep`` hands over (the recipe's optimiser, ``prep.lr``, ``prep.epochs``: scaled by
``sqrt(batch / 64)`` above 64 since 2026-12-07), and 256 with the batch-64 recipe's lr 1e-3 and 3 epochs unscaled.
Final model against Retrain's seed band of the split (the matrix's own Retrain units in ``matrix-default/``).

    FASTBLEND_CACHE=... OMP_NUM_THREADS=1 PYTHONPATH=<checkout> python dropin_batch.py SEED >> dropin_batch.log
"""

import copy
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

import fastblend
from benchmarks import bench_matrix as bm
from fastblend.experiments import pipeline

# (retain batch, lr, epochs); None: what prepare_unlearning hands over
PLAN = [(64, None, None), (128, None, None), (256, None, None), (256, 1e-3, 3)]


def main(seed: int) -> None:
    torch.set_num_threads(1)
    dev = torch.device("cpu")
    cfg = bm.family_config("hard", 2000, {})
    folder = Path(__file__).resolve().parents[2] / "matrix-default" / "hard" / f"seed{seed}"
    ctx = bm.prepare(cfg, "hard", seed, folder, dev, lambda m: None)
    ipc = cfg.ipc if cfg.ipc is not None else pipeline.default_ipc(cfg, ctx.train)
    index, _, _ = pipeline.blend_index(cfg, ctx.train, ipc, seed, dev, False)
    band = ctx.retrain["band"]
    split = ctx.split
    parts = {"retain": split.retain_tensors(), "forget": split.forget_tensors(), "unseen": split.unseen_tensors()}
    for batch, lr, epochs in PLAN:
        model = copy.deepcopy(ctx.model)
        loaders = {k: DataLoader(TensorDataset(*v), batch_size=batch, shuffle=True,
                                 generator=torch.Generator().manual_seed(0)) for k, v in parts.items()}
        t0 = time.perf_counter()
        prep = fastblend.prepare_unlearning(model, loaders["retain"], loaders["forget"], loaders["unseen"],
                                            index=index, batch_size=batch, seed=seed, stop=None)
        opt = torch.optim.Adam(model.parameters(), lr=lr or prep.lr)
        epochs = epochs or prep.epochs
        model.train()
        steps = 0
        for _ in range(epochs):
            for x, y in prep.retain_loader:
                loss = prep.criterion(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                steps += 1
        seconds = time.perf_counter() - t0
        m, _, _ = pipeline.evaluate_model(model, split, dev, cfg, ctx.heldout, ctx.retain_rows, seed)
        row = {k: round(m[k], 1) for k in ("forget_acc", "test_acc", "mia")}
        print(json.dumps({"seed": seed, "batch": batch, "lr": lr or prep.lr, "epochs": epochs, "steps": steps,
                          "scaled": lr is None, "seconds": round(seconds, 1), "request": prep.request, **row,
                          "in_band": all(band[k]["low"] <= m[k] <= band[k]["high"] for k in row),
                          "band": {k: [round(band[k]["low"], 1), round(band[k]["high"], 1)] for k in row}}),
              flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]))
