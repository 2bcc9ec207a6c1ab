"""Run a function on P CPU processes joined by a gloo process group, and collect what each returns.

``run_ranks(fn, 2, *args)`` spawns two fresh interpreters (the ``spawn`` start method, as ``torchrun``
gives each rank its own), initialises ``torch.distributed`` with the gloo backend through a file in a
temporary folder (no port to collide with a parallel test run), calls ``fn(*args)`` on each rank and
returns the list of results in rank order (each ``torch.save``-able). ``fn`` must be importable by
name (a module-level function in a test module or here). A rank that raises fails the test with its
traceback; a rank that hangs is killed after ``timeout`` seconds.
"""

from __future__ import annotations

import os
import tempfile
import traceback
from pathlib import Path

import torch
import torch.multiprocessing as mp


def _worker(rank: int, world: int, init_file: str, out_dir: str, fn, args, kwargs) -> None:
    torch.set_num_threads(1)
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        result = fn(*args, **kwargs)
        torch.save({"ok": True, "result": result}, Path(out_dir) / f"rank{rank}.pt")
    except BaseException:
        torch.save({"ok": False, "error": traceback.format_exc()}, Path(out_dir) / f"rank{rank}.pt")
        dist.destroy_process_group()
        raise
    # every rank done before any tears the group down: a rank leaving while its peer still has a
    # collective in flight aborts the peer's process (gloo); garbage first, so no DDP reducer is left.
    # A peer that failed has written its own traceback; this rank's result stands.
    import gc

    gc.collect()
    try:
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_ranks(fn, world: int = 2, *args, timeout: float = 240.0, **kwargs) -> list:
    """``[fn(*args, **kwargs) on rank r for r in range(world)]``, each run in its own gloo-joined process."""
    with tempfile.TemporaryDirectory(prefix="fastblend-dist-") as tmp:
        init_file = os.path.join(tmp, "init")
        ctx = mp.spawn(_worker, args=(world, init_file, tmp, fn, args, kwargs), nprocs=world, join=False)
        import time

        deadline = time.monotonic() + timeout
        try:
            while not ctx.join(timeout=max(deadline - time.monotonic(), 0.1)):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"run_ranks: {fn.__name__} did not finish on {world} ranks in {timeout:.0f}s")
        except mp.ProcessRaisedException:
            pass  # the rank's own traceback is in its result file
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
        results = []
        for r in range(world):
            path = Path(tmp) / f"rank{r}.pt"
            if not path.exists():
                raise RuntimeError(f"run_ranks: rank {r} of {fn.__name__} left no result (killed?)")
            box = torch.load(path, weights_only=False)
            if not box["ok"]:
                raise AssertionError(f"rank {r} of {fn.__name__} raised:\n{box['error']}")
            results.append(box["result"])
        return results
