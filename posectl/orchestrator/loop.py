"""The epoch loop shared by Ray Train jobs and Tune trials: train, validate, checkpoint, finish.

Model selection uses the validation split only; the test split is evaluated once, at the end,
with the best-validation weights.
"""
from __future__ import annotations

import math
import time
from typing import Any, Protocol

import torch

from posectl.config import to_dict


class Reporter(Protocol):
    def epoch(self, row: dict[str, Any], state_fn, improved: bool) -> None: ...
    def best_state(self) -> dict | None: ...
    def finish(self, results: dict[str, Any]) -> None: ...


def run_epochs(method, cfg, data: dict, ctx, state: dict | None, reporter: Reporter) -> dict | None:
    start, best, best_epoch, history = 0, math.inf, -1, []
    if state is not None:
        method.load_state_dict(state["method_state"])
        start, best, best_epoch = state["epoch"] + 1, state["best_val_mpjpe"], state["best_epoch"]
        history = list(state["history"])
        torch.set_rng_state(state["torch_rng"])
    eval_stride = cfg.data.eval_stride
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        train_m = method.train_epoch(epoch)
        train_time = time.perf_counter() - t0
        val_m = method.evaluate(data["val"], stride=eval_stride)
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in train_m.items()},
               **{f"val_{k}": float(v) for k, v in val_m.items() if isinstance(v, (int, float))},
               "train_time_s": train_time, "epoch_time_s": time.perf_counter() - t0}
        if "train_samples" in train_m:
            row["train_samples_per_s"] = train_m["train_samples"] * ctx.world_size / max(train_time, 1e-9)
        improved = row["val_mpjpe"] < best
        if improved:
            best, best_epoch = row["val_mpjpe"], epoch + 1
        history.append(row)

        def state_fn(epoch=epoch, best=best, best_epoch=best_epoch):
            return {"method": method.name, "config": to_dict(cfg), "layout": data["train"].layout.name,
                    "epoch": epoch, "best_val_mpjpe": best, "best_epoch": best_epoch,
                    "history": list(history), "method_state": method.state_dict(),
                    "torch_rng": torch.get_rng_state()}

        reporter.epoch(row, state_fn, improved)
    if not ctx.is_main or not getattr(reporter, "final_eval", True):
        return None
    best_state = reporter.best_state()
    if best_state is not None:
        method.load_state_dict({"model": best_state["method_state"]["model"]})
    results = {"method": method.name, "best_epoch": best_epoch, "epochs": cfg.epochs,
               "val": method.evaluate(data["val"], stride=eval_stride, detailed=True),
               "test": method.evaluate(data["test"], stride=eval_stride, detailed=True) if "test" in data else None,
               "split_names": {"val": cfg.data.val_split, "test": cfg.data.test_split},
               "eval_stride": eval_stride, "history": history}
    reporter.finish(results)
    return results
