"""Pieces the effect benchmarks share: mean ± std formatting, and training a run in this process."""
from __future__ import annotations

import statistics
from typing import Any, Callable


def mean_std(xs: list[float], digits: int = 2) -> str:
    return f"{statistics.mean(xs):.{digits}f} ± {statistics.stdev(xs):.{digits}f}" if len(xs) > 1 \
        else f"{xs[0]:.{digits}f}"


def train_local(method: str, layers: list[dict[str, Any]], on_epoch: Callable[[dict], None] | None = None,
                ctx=None, test: bool = False, keep_states: bool = False):
    """A run built as `posectl train` builds it (orchestrator/spec.py's RunSpec: the same config, data,
    subsets and method), trained in this process without Ray. Returns (results, method with the
    best-validation weights loaded, reporter); `test` also evaluates the test split at the end;
    `keep_states` keeps every epoch's state in the reporter (`.states`)."""
    from posectl.orchestrator.reporters import MemoryReporter
    from posectl.orchestrator.spec import RunSpec, run_local
    rep = MemoryReporter(on_epoch, keep_states=keep_states)
    results, method, _ = run_local(RunSpec.build(method, layers), rep, ctx=ctx, test=test)
    return results, method, rep
