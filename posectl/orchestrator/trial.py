"""One trial of a search: the run's epoch loop with a trial's config values (`RunSpec.with_params`).

Single-worker trials run the loop in the Tune trial's own process (`single_worker_trial`). Trials
with several workers or GPUs run a Ray Train TorchTrainer inside the trial (`train_job_trial`):
Ray 2.60's Train V2 pattern is a Tune function that builds a TorchTrainer and forwards its reports
with `TuneReportCallback`. Tune does not see the Train workers' resources, so posectl accounts for
them itself: the trial function asks for a sliver of CPU (DRIVER_CPU; 0 is refused by Ray), and a
search is refused unless every running trial's worker group fits on the cluster at once next to
those slivers (tune.check_search_resources).

Both read the search's data as materialised Ray datasets (object-store blocks: no read tasks that
could wait for a CPU that the worker groups hold), through the same `build_worker` as `posectl train`,
so a trial and a `posectl train` run of its exported config see the same rows.

A group that still cannot be placed (the cluster shrank, or other jobs hold the CPUs) fails the
trial after a few worker-group start timeouts instead of waiting forever: Train V2 counts each timeout
as a controller failure and by default retries those without limit. Tune never sees these trials'
checkpoints: TuneReportCallback forwards the metrics with the Train checkpoint's path
("checkpoint_path"); they stay in <search>/_train/train-<trial id>/, the latest one kept (it holds the
full state, for resume, and the best weights, for export).
"""
from __future__ import annotations

from pathlib import Path

import torch

from posectl.methods.base import Context
from posectl.orchestrator.experiment import load_checkpoint
from posectl.orchestrator.loop import run_epochs
from posectl.orchestrator.reporters import SearchReporter
from posectl.orchestrator.spec import RunSpec, build_worker, ddp_prepare, ray_map_batches

DRIVER_CPU = 0.01              # what each multi-worker trial function holds, beside its worker group
CONTROLLER_FAILURE_LIMIT = 2   # worker-group start timeouts (60 s each) before a trial fails
CHECKPOINTS_KEPT = 1           # per trial; each holds state.pt (resume) and best.pt (export)


def restore_trial_state(ckpt, method: str) -> tuple[dict | None, dict | None]:
    """(full state, best weights) from a trial checkpoint, or (None, None)."""
    if ckpt is None:
        return None, None
    with ckpt.as_directory() as d:
        return load_checkpoint(Path(d) / "state.pt", method), load_checkpoint(Path(d) / "best.pt", method)


def _trial(params: dict, spec: RunSpec, sources: dict, blocks: list, ctx: Context, report, ckpt,
           metric: str, mode: str) -> None:
    trial = spec.with_params(params)
    method, data = build_worker(trial.describe(blocks), sources, ctx)
    state, best = restore_trial_state(ckpt, method.name)
    run_epochs(method, trial.cfg, data, ctx, state, SearchReporter(report, ctx.rank, best), metric=metric, mode=mode)


def single_worker_trial(params: dict, spec: RunSpec, datasets: dict, blocks: list, metric: str, mode: str) -> None:
    """A single-worker trial: the method's epoch loop, in this Tune trial's process."""
    from ray import tune
    torch.set_num_threads(max(1, int(spec.resources.cpus)))
    _trial(params, spec, datasets, blocks, Context(map_batches=ray_map_batches), tune.report, tune.get_checkpoint(),
           metric, mode)


def _train_job_worker(cfg: dict) -> None:
    import ray.train
    import ray.train.torch
    tctx = ray.train.get_context()
    torch.set_num_threads(max(1, int(cfg["spec"].resources.cpus)))
    world, device = tctx.get_world_size(), ray.train.torch.get_device()
    trial = cfg["spec"].with_params(cfg["params"])
    ctx = Context(rank=tctx.get_world_rank(), world_size=world, device=device,
                  prepare_model=ddp_prepare(trial.cfg, world, device), map_batches=ray_map_batches)
    _trial(cfg["params"], cfg["spec"], cfg["datasets"], cfg["blocks"], ctx, ray.train.report,
           ray.train.get_checkpoint() or cfg["resume_checkpoint"], cfg["metric"], cfg["mode"])


def train_job_trial(params: dict, spec: RunSpec, datasets: dict, blocks: list, storage: str, metric: str,
                    mode: str) -> None:
    """A trial with several workers or GPUs: a Ray Train job inside the Tune trial."""
    from ray import tune
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    res = spec.resources
    loop_cfg = {"params": params, "spec": spec, "datasets": datasets, "blocks": blocks, "metric": metric, "mode": mode,
                "resume_checkpoint": tune.get_checkpoint()}
    trainer = TorchTrainer(
        _train_job_worker, train_loop_config=loop_cfg, torch_config=TorchConfig(backend=res.backend),
        scaling_config=ScalingConfig(num_workers=res.workers, use_gpu=res.use_gpu,
                                     resources_per_worker={"CPU": res.cpus, **({"GPU": res.gpus} if res.gpus else {})}),
        run_config=RunConfig(name=f"train-{tune.get_context().get_trial_id()}", storage_path=storage,
                             callbacks=[TuneReportCallback()],
                             checkpoint_config=CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT),
                             failure_config=FailureConfig(controller_failure_limit=CONTROLLER_FAILURE_LIMIT)),
    )
    trainer.fit()
