"""Pieces the effect benchmarks share: mean ± std formatting and an in-memory best-weights reporter."""
from __future__ import annotations

import copy
import statistics
from typing import Callable


def mean_std(xs: list[float], digits: int = 2) -> str:
    return f"{statistics.mean(xs):.{digits}f} ± {statistics.stdev(xs):.{digits}f}" if len(xs) > 1 \
        else f"{xs[0]:.{digits}f}"


class KeepBest:
    """Reporter for orchestrator.loop.run_epochs without Ray: keeps the best-validation model weights in
    memory (run_epochs loads them before its final evaluation); `on_epoch(row)` may print progress."""
    final_eval = True

    def __init__(self, on_epoch: Callable[[dict], None] | None = None):
        self.best, self.on_epoch, self.results = None, on_epoch, None

    def epoch(self, row, state_fn, improved):
        if improved or self.best is None:
            self.best = {"method_state": {"model": copy.deepcopy(state_fn()["method_state"]["model"])}}
        if self.on_epoch:
            self.on_epoch(row)

    def best_state(self):
        return self.best

    def finish(self, results):
        self.results = results
