"""The epoch loop shared by Ray Train jobs and Tune trials: train, validate, checkpoint, finish.

Model selection uses the validation split only: the best epoch is the one with the lowest (mode
"min") or highest ("max") value of one validation metric, val_mpjpe unless a search names another.
The test split is evaluated once, at the end, with the best-validation weights.
"""
from __future__ import annotations

import math
import resource
import time
from typing import TYPE_CHECKING

import torch

from posectl.config import to_dict

if TYPE_CHECKING:
    from posectl.orchestrator.reporters import Reporter


def _better(value, best: float, mode: str) -> bool:
    if not isinstance(value, (int, float)) or math.isnan(value):
        return False
    return value < best if mode == "min" else value > best


def _restored_best(state: dict, metric: str, mode: str) -> tuple[float, int]:
    """(best value, best epoch) of `metric` from a saved state. States written before the selection
    metric was configurable hold only "best_val_mpjpe"; for another metric, the best is found again
    in the saved history."""
    saved = state.get("best_metric")
    if saved is not None and saved.get("name") == metric and saved.get("mode") == mode:
        return saved["value"], state["best_epoch"]
    if metric == "val_mpjpe" and mode == "min" and "best_val_mpjpe" in state:
        return state["best_val_mpjpe"], state["best_epoch"]
    best, best_epoch = (math.inf if mode == "min" else -math.inf), -1
    for row in state["history"]:
        if _better(row.get(metric), best, mode):
            best, best_epoch = row[metric], row["epoch"]
    return best, best_epoch


def _rank_random_state(method, ctx) -> dict:
    """This rank's random streams: torch's global CPU state, the CUDA state of its device, and the
    method's own generators (`gen`, and `dgen` where the device has its own; seeded per rank)."""
    st = {"torch": torch.get_rng_state(), "generator": method.gen.get_state()}
    if ctx.device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state(ctx.device)
    if getattr(method, "dgen", None) is not None and method.dgen is not method.gen:
        st["device_generator"] = method.dgen.get_state()
    return st


def _restore_random_state(method, ctx, state: dict) -> None:
    """Each rank continues its own random streams. States written by another number of workers (or
    before they were kept per rank) hold rank 0's only: then every rank continues from it."""
    ranks = state.get("rank_rng")
    if not ranks:
        torch.set_rng_state(state["torch_rng"])
        return
    same = len(ranks) == ctx.world_size
    mine = ranks[ctx.rank if same else 0]
    torch.set_rng_state(mine["torch"])
    method.gen.set_state(mine["generator"])
    if same and ctx.device.type == "cuda" and "cuda" in mine:
        torch.cuda.set_rng_state(mine["cuda"], ctx.device)
    if same and "device_generator" in mine and getattr(method, "dgen", None) is not None:
        method.dgen.set_state(mine["device_generator"])


def _gather(obj, ctx) -> list:
    """`obj` of every rank, in rank order (a collective: every rank calls it)."""
    dist = torch.distributed
    if ctx.world_size > 1 and dist.is_available() and dist.is_initialized():
        out = [None] * ctx.world_size
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def merge_results(parts: list[dict]) -> dict | None:
    """One `evaluate` result (detailed) from those of disjoint shares of a split: per-sample means
    weighted by each share's samples, per-action tables merged, action-wise means recomputed from them.
    None when a share has no per-action table (its sample count is unknown)."""
    if not parts or any(not isinstance(p.get("per_action"), dict) or not p["per_action"] for p in parts):
        return None
    ns = [sum(a["n"] for a in p["per_action"].values()) for p in parts]
    total = sum(ns)
    actions: dict[str, dict] = {}
    for p in parts:
        for a, row in p["per_action"].items():
            acc = actions.setdefault(a, {"n": 0})
            for k, v in row.items():
                if k != "n":
                    acc[k] = acc.get(k, 0.0) + v * row["n"]
            acc["n"] += row["n"]
    for acc in actions.values():
        for k in acc:
            if k != "n":
                acc[k] /= acc["n"]
    out: dict = {}
    for k, v in parts[0].items():
        if k == "per_action":
            out[k] = dict(sorted(actions.items()))
        elif k.endswith("_action_avg") and all(k[:-len("_action_avg")] in a for a in actions.values()):
            base = k[:-len("_action_avg")]
            out[k] = sum(a[base] for a in actions.values()) / len(actions)
        elif isinstance(v, float) or (isinstance(v, int) and not isinstance(v, bool)):
            out[k] = sum(p[k] * n for p, n in zip(parts, ns)) / total
        elif isinstance(v, list) and all(isinstance(x, (int, float)) for x in v):
            out[k] = [sum(p[k][i] * n for p, n in zip(parts, ns)) / total for i in range(len(v))]
        else:
            out[k] = v
    return out


def validate(method, data: dict, ctx, stride: int) -> dict:
    """This epoch's validation metrics, the same on every rank. With several workers each rank evaluates
    its block of whole sequences (data["val_share"], orchestrator/spec.py: build_worker) and the results
    are gathered and merged; a method whose result cannot be merged evaluates the whole split on every rank."""
    from posectl.methods.base import summary
    if ctx.world_size > 1 and "val_share" in data and method.shared_validation:
        merged = merge_results(_gather(method.evaluate(data["val_share"], stride=stride, detailed=True), ctx))
        if merged is not None:
            return summary(merged, False)
    return method.evaluate(data["val"], stride=stride)


def run_epochs(method, cfg, data: dict, ctx, state: dict | None, reporter: "Reporter",
               metric: str = "val_mpjpe", mode: str = "min") -> dict | None:
    """Train `cfg.epochs` epochs (continuing `state`); an epoch is `improved` when its `metric`
    beats every earlier one (lower for mode "min", higher for "max")."""
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    start, best, best_epoch, history = 0, (math.inf if mode == "min" else -math.inf), -1, []
    best_mpjpe = math.inf       # val_mpjpe of the best epoch ("best_val_mpjpe" in states, as before)
    if state is not None:
        method.load_state_dict(state["method_state"])
        start = state["epoch"] + 1
        best, best_epoch = _restored_best(state, metric, mode)
        best_mpjpe = state.get("best_val_mpjpe", math.inf)
        history = list(state["history"])
        _restore_random_state(method, ctx, state)
    eval_stride = cfg.data.eval_stride
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        with method.autocast():                        # the run's precision (fp32: nothing)
            train_m = method.train_epoch(epoch)
        train_time = time.perf_counter() - t0
        with method.autocast():
            val_m = validate(method, data, ctx, eval_stride)
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in train_m.items()},
               **{f"val_{k}": float(v) for k, v in val_m.items() if isinstance(v, (int, float))},
               "train_time_s": train_time, "epoch_time_s": time.perf_counter() - t0,
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}   # this worker's, so far
        if "train_samples" in train_m:
            row["train_samples_per_s"] = train_m["train_samples"] * ctx.world_size / max(train_time, 1e-9)
        improved = _better(row.get(metric), best, mode)
        if improved:
            best, best_epoch = row[metric], epoch + 1
            best_mpjpe = row.get("val_mpjpe", math.nan)
        history.append(row)
        rank_rng = _gather(_rank_random_state(method, ctx), ctx)

        def state_fn(epoch=epoch, best=best, best_epoch=best_epoch, best_mpjpe=best_mpjpe, rank_rng=rank_rng):
            return {"method": method.name, "config": to_dict(cfg), "layout": data["train"].layout.name,
                    "epoch": epoch, "best_val_mpjpe": best_mpjpe, "best_epoch": best_epoch,
                    "best_metric": {"name": metric, "mode": mode, "value": best},
                    "history": list(history), "method_state": method.state_dict(),
                    "torch_rng": rank_rng[0]["torch"], "rank_rng": rank_rng}

        reporter.epoch(row, state_fn, improved)
    if not ctx.is_main or not reporter.final_eval:
        return None
    best_state = reporter.best_state()
    if best_state is not None:
        method.load_state_dict({"model": best_state["method_state"]["model"]})
    with method.autocast():
        val = method.evaluate(data["val"], stride=eval_stride, detailed=True)
        test = method.evaluate(data["test"], stride=eval_stride, detailed=True) if "test" in data else None
    results = {"method": method.name, "best_epoch": best_epoch, "epochs": cfg.epochs, "val": val, "test": test,
               "split_names": {"val": cfg.data.val_split, "test": cfg.data.test_split},
               "eval_stride": eval_stride, "history": history}
    reporter.finish(results)
    return results
