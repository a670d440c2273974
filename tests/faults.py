"""Fault injection for tests, through monkeypatch (no test hooks in production signatures).

`after_each_epoch(monkeypatch, hook)` runs `hook(epoch, rank)` in every Ray Train worker of the next
`train()` calls, right after the worker has reported (and rank 0 checkpointed) each epoch. The worker
function is replaced by a closure, which Ray pickles by value, so the hook travels with the job.
"""
from __future__ import annotations

from typing import Callable


def after_each_epoch(monkeypatch, hook: Callable[[int, int], None]) -> None:
    from posectl.orchestrator import train as train_mod
    inner = train_mod._train_worker

    def faulty_worker(loop_cfg):
        from posectl.orchestrator.reporters import TrainReporter
        report = TrainReporter.epoch

        def epoch(self, row, state_fn, improved):
            report(self, row, state_fn, improved)
            hook(row["epoch"], self.rank)
        TrainReporter.epoch = epoch
        try:
            inner(loop_cfg)
        finally:
            TrainReporter.epoch = report
    monkeypatch.setattr(train_mod, "_train_worker", faulty_worker)
