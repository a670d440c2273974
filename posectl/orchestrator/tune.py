"""`tune()`: hyper-parameter search with Ray Tune driving Optuna (TPE), ASHA early stopping.

Single-worker trials run the method's epoch loop inside the Tune trial (the same plugin code as
`posectl train`). Trials with several workers or GPUs run a Ray Train TorchTrainer inside the trial
(see `_multiworker_trial`). Every trial reports validation metrics per epoch with a checkpoint;
searches never look at the test split.

Layout: <storage>/<name>/ holds Tune's experiment state, one directory per trial, and
`posectl-search.yaml` (method, space, overrides: what `--resume` and `trials` read).
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable

import torch
import yaml

from posectl.config import build, to_dict
from posectl.core.skeleton import get_layout
from posectl.datasets.lifting import LiftingData
from posectl.errors import ConfigError, PosectlError, ResourceError
from posectl.methods.base import Context, check_training, get_method, method_inputs, reads_images
from posectl.orchestrator import cluster
from posectl.orchestrator.data import open_dataset, open_inputs
from posectl.orchestrator.experiment import atomic_write_bytes, load_checkpoint, save_checkpoint
from posectl.orchestrator.loop import run_epochs
from posectl.orchestrator.spaces import Space, load_space, space_path

SEARCH_FILE = "posectl-search.yaml"


def default_storage() -> Path:
    return Path(os.environ.get("POSECTL_STORAGE_PATH", Path(os.environ.get("POSECTL_RUNS", "runs")) / "tune")).absolute()


def runs_train_jobs(res: cluster.Resources) -> bool:
    """Whether a search's trials each run a Ray Train job (several workers, or GPUs; see tune_train)."""
    return res.workers > 1 or bool(res.gpus)


@dataclass
class Plan:
    method: str
    name: str
    path: Path
    space: Space
    samples: int
    concurrent: int
    resources: cluster.Resources
    cluster: dict
    epochs: int

    def lines(self) -> list[str]:
        r = self.resources
        sched = self.space.scheduler
        return [
            f"search   {self.method} '{self.name}' -> {self.path}",
            f"space    {self.space.source}: {len(self.space.parameters)} parameters, metric {self.space.metric} "
            f"({self.space.mode}), Optuna TPE seed {self.space.searcher.get('seed', 0)}",
            f"trials   {self.samples} x up to {self.epochs} epochs, {self.concurrent} at a time, scheduler "
            + (f"ASHA (grace {sched['grace_period']}, reduction {sched['reduction_factor']})"
               if sched.get("name") == "asha" else "none"),
            f"per trial {r.describe()}" + (" (a Ray Train job per trial)" if runs_train_jobs(r) else ""),
            f"cluster  {self.cluster['nodes']} node(s), {self.cluster['cpus']:g} CPUs, {self.cluster['gpus']:g} GPUs",
        ]


class SearchReporter:
    """Reports every epoch of a trial with a checkpoint holding the full state and the best weights
    (best by the search's metric: run_epochs decides `improved`).

    `report` is `ray.tune.report` (single-worker trials) or `ray.train.report` (inside the Train
    workers of a multi-worker trial, forwarded to Tune); only rank 0 attaches a checkpoint.
    """
    final_eval = False  # a search never evaluates on the test split

    def __init__(self, report: Callable, rank: int = 0, best: dict | None = None, fault_hook: Callable | None = None):
        self.report, self.rank, self.best, self.fault_hook = report, rank, best, fault_hook

    def epoch(self, row, state_fn, improved):
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
        metrics["node_id"] = _node_id()
        with tempfile.TemporaryDirectory() as d:
            save_checkpoint(Path(d) / "state.pt", state)
            save_checkpoint(Path(d) / "best.pt", self.best)
            self.report(metrics, checkpoint=Checkpoint.from_directory(d))
        if self.fault_hook:
            self.fault_hook(row["epoch"])

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


def load_search_data(dataset, base, inputs: dict | None = None, images: bool = False):
    """Training and validation arrays of a search, and a method's extra inputs (roles from
    open_inputs). The test split, or a "test" input, is never loaded."""
    import numpy as np
    train = dataset.load(base.data.train_split, base.data.keypoints, base.data.train_subjects or None,
                         images=images)
    if base.data.max_train_samples:
        pick = np.random.default_rng(base.seed).permutation(len(train))[: base.data.max_train_samples]
        train = train.take(np.sort(pick))
    extra = {role: ds.load(inp.split, inp.keypoints, list(inp.subjects) or None, with_3d=inp.with_3d)
             for role, (ds, inp) in (inputs or {}).items() if role != "test"}
    return train, dataset.load(base.data.val_split, base.data.keypoints, images=images), extra


def _node_id() -> str:
    import ray
    return ray.get_runtime_context().get_node_id()


def posectl_trial(config: dict, method: str, layers: list[dict], layout: str, threads: int,
           train=None, val=None, fault_hook=None, inputs=None, metric: str = "val_mpjpe",
           mode: str = "min") -> None:
    """A single-worker trial: the method's epoch loop, in this Tune trial's process."""
    from ray import tune
    torch.set_num_threads(max(1, threads))
    cls = get_method(method)
    cfg = build(cls.Config, *layers, config, context=f"trial of {method}")
    lay = get_layout(layout)
    data = {"train": LiftingData(train, lay), "val": LiftingData(val, lay)}
    ctx = Context(inputs=inputs or {})
    m = cls(cfg, data["train"], ctx)
    state, best = restore_trial_state(tune.get_checkpoint(), method)
    run_epochs(m, cfg, data, ctx, state, SearchReporter(tune.report, 0, best, fault_hook), metric=metric, mode=mode)


def _resolve_space(method: str, space: str | Path | None) -> Space:
    return load_space(space if space else space_path(method), method)


def plan_search(method: str, space: str | Path | None = None, samples: int | None = None,
                concurrent: int | None = None, gpus_per_trial: int | None = None,
                workers_per_trial: int | None = None, name: str | None = None,
                storage_path: str | Path | None = None, smoke_test: bool = False,
                overrides: dict | None = None, have: dict | None = None) -> tuple[Plan, list[dict]]:
    cls = get_method(method)                   # an unknown method is named as such, with a suggestion
    sp = _resolve_space(method, space)
    layers = [sp.fixed, overrides or {}]
    build(cls.Config, *layers, context=f"method {method}")      # the user's values, before --smoke-test's
    if smoke_test:
        layers.append({"epochs": 2, "data.max_train_samples": 1024, "data.eval_stride": 10})
        samples = 2 if samples is None else samples
    for flag, value in (("--samples", samples), ("--concurrent", concurrent), ("--gpus-per-trial", gpus_per_trial),
                        ("--workers-per-trial", workers_per_trial)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")
    base = build(cls.Config, *layers, context=f"method {method}")
    if gpus_per_trial is not None and workers_per_trial is not None:
        raise ConfigError("use either --gpus-per-trial or --workers-per-trial")
    res = sp.resources
    if gpus_per_trial is not None:
        resources = cluster.Resources(workers=gpus_per_trial, cpus=float(res["cpus"]), gpus=1.0)
    else:
        resources = cluster.Resources(workers=workers_per_trial if workers_per_trial is not None else int(res["workers"]), cpus=float(res["cpus"]),
                                      gpus=float(res["gpus"]))
    storage = Path(storage_path).absolute() if storage_path else default_storage()
    name = name or f"{method}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    plan = Plan(method, name, storage / name, sp, sp.samples if samples is None else samples,
                sp.concurrent if concurrent is None else concurrent,
                resources, have or {}, base.epochs)
    return plan, layers


def tune_search(method: str, *, space: str | Path | None = None, samples: int | None = None,
                concurrent: int | None = None, gpus_per_trial: int | None = None,
                workers_per_trial: int | None = None, name: str | None = None,
                storage_path: str | Path | None = None, address: str | None = None, resume: bool = False,
                smoke_test: bool = False, overrides: dict | None = None,
                on_plan: Callable[[Plan], None] | None = None, verbose: int = 1,
                fault_hook: Callable | None = None):
    """Run (or `resume`) a search; returns (plan, ResultGrid)."""
    if resume:
        if not name:
            raise PosectlError("--resume needs --name of the search to continue")
        path = (Path(storage_path).absolute() if storage_path else default_storage()) / name
        if not (path / SEARCH_FILE).is_file():
            raise PosectlError(f"no search to resume at {path}")
        saved = yaml.safe_load((path / SEARCH_FILE).read_text())
        method = saved["method"]
        space, samples, concurrent = path / "space.yaml", saved["samples"], saved["concurrent"]
        overrides, smoke_test = saved["overrides"], saved["smoke_test"]
        gpus_per_trial, workers_per_trial = saved.get("gpus_per_trial"), saved.get("workers_per_trial")
    plan, layers = plan_search(method, space, samples, concurrent, gpus_per_trial, workers_per_trial, name,
                               storage_path, smoke_test, overrides)
    cls = get_method(method)
    base = build(cls.Config, *layers)
    check_training(cls, base)
    dataset = open_dataset(base.data)
    if resume:
        cluster.reap_orphans(plan.path)      # what a driver killed with SIGKILL left running
    started = cluster.connect(address)
    try:
        plan.cluster = check_search_resources(plan)
        if on_plan:
            on_plan(plan)
        if not resume:
            if (plan.path / SEARCH_FILE).exists():
                raise PosectlError(f"search '{plan.name}' already exists at {plan.path}; use --resume or another --name")
            plan.path.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(plan.path / "space.yaml", yaml.safe_dump(plan.space.to_dict(), sort_keys=False).encode())
            atomic_write_bytes(plan.path / SEARCH_FILE, yaml.safe_dump({
                "method": method, "samples": plan.samples, "concurrent": plan.concurrent, "overrides": overrides or {},
                "smoke_test": smoke_test, "gpus_per_trial": gpus_per_trial, "workers_per_trial": workers_per_trial,
                "base_config": to_dict(base), "created": datetime.now().isoformat(timespec="seconds"),
            }, sort_keys=False).encode())
        if started:
            cluster.record_session(plan.path)
        return plan, _run(plan, cls, layers, base, dataset, resume, verbose, fault_hook)
    finally:
        if started:
            import ray
            ray.shutdown()


def check_search_resources(plan: Plan) -> dict:
    """cluster.check_resources for a search. A multi-worker (or GPU) trial holds a sliver of CPU for its
    Tune trial function besides its Train worker group, and Ray Train checks a group only against the
    cluster's total: a plan whose groups exactly fill the CPUs would wait for a placement forever."""
    from posectl.orchestrator.tune_train import DRIVER_CPU
    have = cluster.check_resources(plan.resources, concurrent=plan.concurrent)
    if not runs_train_jobs(plan.resources):
        return have
    r, n = plan.resources, plan.concurrent
    groups, drivers = r.workers * r.cpus * n, DRIVER_CPU * n
    if groups + drivers > have["cpus"] + 1e-9:
        raise ResourceError(
            f"asked for {groups + drivers:g} CPUs ({r.describe()} x {n} trial{'s' if n != 1 else ''} = {groups:g}, "
            f"plus {DRIVER_CPU:g} per trial for its Tune trial function) but the cluster has {have['cpus']:g} CPUs; "
            f"lower the CPUs per worker or --concurrent")
    return have


def _run(plan: Plan, cls, layers, base, dataset, resume: bool, verbose: int, fault_hook):
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sp = plan.space
    train, val, extra = load_search_data(dataset, base, open_inputs(method_inputs(cls, base), dataset.layout.name),
                                         images=reads_images(cls, base))
    threads = max(1, int(plan.resources.cpus))
    if runs_train_jobs(plan.resources):
        from posectl.orchestrator.tune_train import multiworker_trainable
        trainable = multiworker_trainable(plan, cls, layers, dataset.layout.name, train, val, extra)
    else:
        trainable = tune.with_parameters(posectl_trial, method=cls.name, layers=layers, layout=dataset.layout.name,
                                         threads=threads, train=train, val=val, fault_hook=fault_hook,
                                         inputs=extra, metric=sp.metric, mode=sp.mode)
        trainable = tune.with_resources(trainable, {"cpu": plan.resources.cpus})
    run_config = tune.RunConfig(
        name=plan.name, storage_path=str(plan.path.parent), verbose=verbose,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        failure_config=tune.FailureConfig(max_failures=2))
    if resume and tune.Tuner.can_restore(str(plan.path)):
        tuner = tune.Tuner.restore(str(plan.path), trainable=trainable, resume_unfinished=True,
                                   resume_errored=True)
        return _completed(tuner.fit(), plan.samples)
    sampler = optuna.samplers.TPESampler(seed=int(sp.searcher.get("seed", 0)),
                                         n_startup_trials=int(sp.searcher.get("startup_trials", max(4, plan.concurrent))))
    storage_kw = {}
    if sp.storage:
        storage_kw = {"storage": optuna.storages.RDBStorage(sp.storage), "study_name": plan.name}
    searcher = ConcurrencyLimiter(OptunaSearch(space=sp.define_by_run(), metric=sp.metric, mode=sp.mode,
                                               sampler=sampler, **storage_kw), max_concurrent=plan.concurrent)
    if sp.scheduler.get("name") == "asha":
        scheduler = ASHAScheduler(time_attr="training_iteration", metric=sp.metric, mode=sp.mode,
                                  max_t=plan.epochs, grace_period=min(int(sp.scheduler["grace_period"]), plan.epochs),
                                  reduction_factor=float(sp.scheduler["reduction_factor"]))
    else:
        scheduler = FIFOScheduler()
    tuner = tune.Tuner(trainable, tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                                              num_samples=plan.samples,
                                                              max_concurrent_trials=plan.concurrent,
                                                              trial_name_creator=_trial_name,
                                                              trial_dirname_creator=_trial_name),
                       run_config=run_config)
    t0 = time.perf_counter()
    grid = _completed(tuner.fit(), plan.samples)
    grid.wall_s = time.perf_counter() - t0
    return grid


def _completed(grid, samples: int):
    """On Ctrl-C, Tune's own SIGINT handler saves the search and fit() *returns*; a search with trials
    missing or unfinished is then an interruption (exit 130 and a hint to --resume), not a result."""
    if len(grid) < samples or len(grid) > grid.num_terminated + grid.num_errors:
        raise KeyboardInterrupt
    return grid


def _trial_name(trial) -> str:
    return f"trial_{trial.trial_id}"
