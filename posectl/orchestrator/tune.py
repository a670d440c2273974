"""`tune()`: hyper-parameter search with Ray Tune driving Optuna (TPE), ASHA early stopping.

A search is one RunSpec (orchestrator/spec.py) and its trials are `spec.with_params(...)`, run by
orchestrator/trial.py: single-worker trials in the Tune trial's process, trials with several workers
or GPUs as a Ray Train job inside the trial. Every trial reports validation metrics per epoch with a
checkpoint; searches never look at the test split.

Layout: <storage>/<name>/ holds Tune's experiment state, one directory per trial, and
`posectl-search.yaml` (method, space, overrides: what `--resume` and `trials` read).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable

import yaml

from posectl.errors import ConfigError, PosectlError, ResourceError
from posectl.methods.base import get_method
from posectl.orchestrator import cluster
from posectl.orchestrator.experiment import atomic_write_bytes, check_run_name
from posectl.orchestrator.paths import SEARCH_FILE, default_storage
from posectl.orchestrator.spaces import Space, load_space, space_path
from posectl.orchestrator.spec import RunSpec
from posectl.orchestrator.trial import DRIVER_CPU, single_worker_trial, train_job_trial

# A smoke-sized search: two trials of two epochs on a subset (plus the method's own smoke_overrides).
SEARCH_SMOKE = {"epochs": 2, "data.max_train_samples": 1024, "data.eval_stride": 10}


def runs_train_jobs(res: cluster.Resources) -> bool:
    """Whether a search's trials each run a Ray Train job (several workers, or GPUs; see trial.py)."""
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


def _resolve_space(method: str, space: str | Path | None) -> Space:
    return load_space(space if space else space_path(method), method)


def plan_search(method: str, space: str | Path | None = None, samples: int | None = None,
                concurrent: int | None = None, gpus_per_trial: int | None = None,
                workers_per_trial: int | None = None, name: str | None = None,
                storage_path: str | Path | None = None, smoke_test: bool = False,
                overrides: dict | None = None, have: dict | None = None) -> tuple[Plan, RunSpec]:
    """The search's plan and its RunSpec (data not opened yet)."""
    cls = get_method(method)                   # an unknown method is named as such, with a suggestion
    sp = _resolve_space(method, space)
    if smoke_test and samples is None:
        samples = 2
    for flag, value in (("--samples", samples), ("--concurrent", concurrent), ("--gpus-per-trial", gpus_per_trial),
                        ("--workers-per-trial", workers_per_trial)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")
    if gpus_per_trial is not None and workers_per_trial is not None:
        raise ConfigError("use either --gpus-per-trial or --workers-per-trial")
    res = sp.resources
    if gpus_per_trial is not None:
        resources = cluster.Resources(workers=gpus_per_trial, cpus=float(res["cpus"]), gpus=1.0)
    else:
        workers = workers_per_trial if workers_per_trial is not None else int(res["workers"])
        resources = cluster.Resources(workers=workers, cpus=float(res["cpus"]), gpus=float(res["gpus"]))
    spec = RunSpec.build(cls, [sp.fixed, overrides or {}], smoke_test=smoke_test, smoke=SEARCH_SMOKE,
                         resources=resources, training=False, open_data=False)
    storage = Path(storage_path).absolute() if storage_path else default_storage()
    name = name or f"{method}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    plan = Plan(method, name, storage / name, sp, sp.samples if samples is None else samples,
                sp.concurrent if concurrent is None else concurrent,
                resources, have or {}, spec.cfg.epochs)
    return plan, spec


def tune_search(method: str, *, space: str | Path | None = None, samples: int | None = None,
                concurrent: int | None = None, gpus_per_trial: int | None = None,
                workers_per_trial: int | None = None, name: str | None = None,
                storage_path: str | Path | None = None, address: str | None = None, resume: bool = False,
                smoke_test: bool = False, overrides: dict | None = None,
                on_plan: Callable[[Plan], None] | None = None, verbose: int = 1, dashboard: bool = True,
                say: Callable[[str], None] | None = None):
    """Run (or `resume`) a search; returns (plan, ResultGrid)."""
    check_run_name(name)
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
    plan, spec = plan_search(method, space, samples, concurrent, gpus_per_trial, workers_per_trial, name,
                             storage_path, smoke_test, overrides)
    spec = RunSpec.build(spec.method, [spec.config], resources=spec.resources)   # checks, and opens the data
    if resume:
        cluster.reap_orphans(plan.path)      # what a driver killed with SIGKILL left running
    elif (plan.path / SEARCH_FILE).exists():
        raise PosectlError(f"search '{plan.name}' already exists at {plan.path}; use --resume or another --name")
    started = cluster.connect(address, dashboard=dashboard, say=say)
    try:
        data_cpu = spec.needs_data_cpu(plan.resources.workers, say)
        if data_cpu and concurrent is None:             # trials leave one CPU to Ray Data's tasks
            fit = int((cluster.cluster_summary()["cpus"] - 1) // (plan.resources.workers * plan.resources.cpus))
            plan.concurrent = max(1, min(plan.concurrent, fit))
        plan.cluster = check_search_resources(plan, reserve_cpus=1.0 if data_cpu else 0.0)
        cluster.check_shared_storage(plan.path.parent, storage_path is not None, "--storage-path")
        if on_plan:
            on_plan(plan)
        if not resume:
            plan.path.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(plan.path / "space.yaml", yaml.safe_dump(plan.space.to_dict(), sort_keys=False).encode())
            atomic_write_bytes(plan.path / SEARCH_FILE, yaml.safe_dump({
                "method": method, "samples": plan.samples, "concurrent": plan.concurrent, "overrides": overrides or {},
                "smoke_test": smoke_test, "gpus_per_trial": gpus_per_trial, "workers_per_trial": workers_per_trial,
                "base_config": spec.config, "created": datetime.now().isoformat(timespec="seconds"),
            }, sort_keys=False).encode())
        if started:
            cluster.record_session(plan.path)
        return plan, _run(plan, spec, resume, verbose)
    finally:
        if started:
            import ray
            ray.shutdown()


def check_search_resources(plan: Plan, reserve_cpus: float = 0.0) -> dict:
    """cluster.check_resources for a search. A multi-worker (or GPU) trial holds a sliver of CPU for its
    Tune trial function besides its Train worker group, and Ray Train checks a group only against the
    cluster's total: a plan whose groups exactly fill the CPUs would wait for a placement forever."""
    have = cluster.check_resources(plan.resources, concurrent=plan.concurrent, reserve_cpus=reserve_cpus)
    if not runs_train_jobs(plan.resources):
        return have
    r, n = plan.resources, plan.concurrent
    groups, drivers = r.workers * r.cpus * n, DRIVER_CPU * n
    if groups + drivers + reserve_cpus > have["cpus"] + 1e-9:
        raise ResourceError(
            f"asked for {groups + drivers + reserve_cpus:g} CPUs ({r.describe()} x {n} trial{'s' if n != 1 else ''} = {groups:g}, "
            f"plus {DRIVER_CPU:g} per trial for its Tune trial function"
            f"{f', plus {reserve_cpus:g} for Ray Data tasks' if reserve_cpus else ''}) but the cluster has {have['cpus']:g} CPUs; "
            f"lower the CPUs per worker or --concurrent")
    return have


def _run(plan: Plan, spec: RunSpec, resume: bool, verbose: int):
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sp = plan.space
    datasets, blocks = spec.ray_datasets(test=False, world=plan.resources.workers)   # never a test split
    shared = {"spec": spec, "datasets": datasets, "blocks": blocks, "metric": sp.metric, "mode": sp.mode}
    if runs_train_jobs(plan.resources):
        trainable = tune.with_resources(tune.with_parameters(train_job_trial, storage=str(plan.path / "_train"),
                                                             **shared), {"cpu": DRIVER_CPU})
    else:
        trainable = tune.with_resources(tune.with_parameters(single_worker_trial, **shared),
                                        {"cpu": plan.resources.cpus})
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
