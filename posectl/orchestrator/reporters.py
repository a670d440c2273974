"""The reporters of the epoch loop (orchestrator/loop.py), in one place: what happens after every
epoch of a Ray Train job (`TrainReporter`), of a search trial (`SearchReporter`) and of an in-process
run (`MemoryReporter`: benchmarks, tests, smoke-test prerequisites)."""
from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Protocol

from posectl.orchestrator.experiment import Experiment, atomic_write_bytes, load_checkpoint, save_checkpoint


class Reporter(Protocol):
    final_eval: bool                 # evaluate val and test with the best weights at the end (not in searches)

    def epoch(self, row: dict[str, Any], state_fn, improved: bool) -> None: ...
    def best_state(self) -> dict | None: ...
    def finish(self, results: dict[str, Any]) -> None: ...


class Events:
    """Rank 0 pushes progress to the driver through a Ray queue (dropped if the driver is gone)."""

    def __init__(self, queue, rank: int):
        self.q = queue if rank == 0 else None
        self._last = 0.0
        self.epoch_no = 0

    def put(self, ev: dict) -> None:
        if self.q is None:
            return
        try:
            self.q.put_nowait(ev)
        except Exception:  # noqa: BLE001 - full queue or gone driver must not stop training
            pass

    def step(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - self._last > 0.5:
            self._last = now
            self.put({"type": "step", "epoch": self.epoch_no, "done": done, "total": total})


class TrainReporter:
    final_eval = True

    def __init__(self, exp: Experiment, events: Events, rank: int):
        self.exp, self.events, self.rank = exp, events, rank

    def epoch(self, row, state_fn, improved):
        import ray.train
        metrics = {k: v for k, v in row.items() if isinstance(v, (int, float))}
        if self.rank != 0:
            ray.train.report(metrics)
            return
        state = state_fn()
        with tempfile.TemporaryDirectory(dir=self.exp.checkpoints) as d:
            path = Path(d) / "state.pt"
            save_checkpoint(path, state)                    # written and fsynced once
            if improved:    # first, and a file of its own: a crash before last.pt, or damage to last.pt
                link_atomic(path, self.exp.checkpoints / "best.pt", copy=True)    # later, leaves it whole
            link_atomic(path, self.exp.checkpoints / "last.pt")
            self.exp.write_history(state["history"])
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        self.events.put({"type": "epoch", "row": row, "improved": improved})
        self.events.epoch_no = row["epoch"]

    def best_state(self):
        p = self.exp.checkpoints / "best.pt"
        return load_checkpoint(p) if p.exists() else None

    def finish(self, results):
        atomic_write_bytes(self.exp.root / "results.json", json.dumps(results, indent=2).encode())
        self.events.put({"type": "final"})


def link_atomic(src: Path, dst: Path, copy: bool = False) -> None:
    """Publish `src` as `dst` atomically: a hard link (with `copy`, or where links are unsupported, an
    fsynced copy), then a rename."""
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.unlink(missing_ok=True)
    if not copy:
        try:
            os.link(src, tmp)
            tmp.replace(dst)
            return
        except OSError:
            pass
    shutil.copyfile(src, tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    tmp.replace(dst)


class SearchReporter:
    """Reports every epoch of a trial with a checkpoint holding the full state and the best weights
    (best by the search's metric: run_epochs decides `improved`).

    `report` is `ray.tune.report` (single-worker trials) or `ray.train.report` (inside the Train
    workers of a multi-worker trial, forwarded to Tune); only rank 0 attaches a checkpoint.
    """
    final_eval = False  # a search never evaluates on the test split

    def __init__(self, report: Callable, rank: int = 0, best: dict | None = None):
        self.report, self.rank, self.best = report, rank, best

    def epoch(self, row, state_fn, improved):
        import ray
        from ray.train import Checkpoint
        metrics = {k: v for k, v in row.items() if isinstance(v, (int, float))}
        if self.rank != 0:
            self.report(metrics)
            return
        state = state_fn()
        if improved or self.best is None:
            self.best = {**state, "method_state": {"model": state["method_state"]["model"]}}
        metrics["best_val_mpjpe"] = state["best_val_mpjpe"]
        best = state["best_metric"]
        metrics[f"best_{best['name']}"] = best["value"]
        metrics["node_id"] = ray.get_runtime_context().get_node_id()
        with tempfile.TemporaryDirectory() as d:
            save_checkpoint(Path(d) / "state.pt", state)
            save_checkpoint(Path(d) / "best.pt", self.best)
            self.report(metrics, checkpoint=Checkpoint.from_directory(d))

    def best_state(self):
        return self.best

    def finish(self, results):
        pass


def restore_trial_state(ckpt, method: str) -> tuple[dict | None, dict | None]:
    """(full state, best weights) from a trial checkpoint, or (None, None)."""
    if ckpt is None:
        return None, None
    with ckpt.as_directory() as d:
        return load_checkpoint(Path(d) / "state.pt", method), load_checkpoint(Path(d) / "best.pt", method)


class MemoryReporter:
    """In-process runs: keeps the history and a copy of the best state (run_epochs loads its weights
    before the final evaluation); with `keep_states`, a copy of every epoch's full state too.
    `on_epoch(row)` may print progress."""
    final_eval = True

    def __init__(self, on_epoch: Callable[[dict], None] | None = None, keep_states: bool = False):
        self.on_epoch, self.keep_states = on_epoch, keep_states
        self.rows, self.states, self.best, self.results = [], [], None, None

    def epoch(self, row, state_fn, improved):
        self.rows.append(row)
        if improved or self.best is None or self.keep_states:
            state = copy.deepcopy(state_fn())
            if improved or self.best is None:
                self.best = state
            if self.keep_states:
                self.states.append(state)
        if self.on_epoch:
            self.on_epoch(row)

    def best_state(self):
        return self.best

    def finish(self, results):
        self.results = results
