"""Multi-worker (or GPU) trials: each Tune trial runs a Ray Train TorchTrainer.

Ray 2.60's Train V2 pattern is a Tune function that builds a TorchTrainer and forwards its reports
with `TuneReportCallback`. Tune does not see the Train workers' resources, so posectl accounts for
them itself: the trial function asks for a sliver of CPU (0 is refused by Ray), a search is refused
unless every running trial's worker group fits on the cluster at once next to those slivers
(tune.check_search_resources), and the data reach the workers as object-store references (no Ray
Data read tasks that could wait for a CPU that the worker groups hold).

A group that still cannot be placed (the cluster shrank, or other jobs hold the CPUs) fails the
trial after a few worker-group start timeouts instead of waiting forever: Train V2 counts each timeout
as a controller failure and by default retries those without limit.

Tune never sees these trials' checkpoints: TuneReportCallback forwards the metrics with the Train
checkpoint's path ("checkpoint_path"). The checkpoints stay in <search>/_train/train-<trial id>/,
the latest one kept (it holds the full state, for resume, and the best weights, for export).
"""
from __future__ import annotations


import torch

from posectl.config import build
from posectl.core.skeleton import get_layout
from posectl.datasets.lifting import LiftingData
from posectl.methods.base import Context, get_method
from posectl.orchestrator.loop import run_epochs
from posectl.orchestrator.tune import SearchReporter, restore_trial_state

DRIVER_CPU = 0.01              # what each trial function holds, beside its worker group
CONTROLLER_FAILURE_LIMIT = 2   # worker-group start timeouts (60 s each) before a trial fails
CHECKPOINTS_KEPT = 1           # per trial; each holds state.pt (resume) and best.pt (export)


def _worker(cfg: dict) -> None:
    import ray
    import ray.train
    import ray.train.torch
    tctx = ray.train.get_context()
    rank, world = tctx.get_world_rank(), tctx.get_world_size()
    torch.set_num_threads(max(1, cfg["threads"]))
    cls = get_method(cfg["method"])
    mcfg = build(cls.Config, *cfg["layers"], cfg["params"])
    layout = get_layout(cfg["layout"])
    train = ray.get(cfg["train"])
    # this worker's share of the training rows (contiguous blocks keep sequences together)
    idx = torch.arange(len(train)).tensor_split(world)[rank].numpy()
    data = {"train": LiftingData(train.take(idx), layout), "val": LiftingData(ray.get(cfg["val"]), layout)}
    ctx = Context(rank=rank, world_size=world, device=ray.train.torch.get_device(),
                  prepare_model=ray.train.torch.prepare_model, inputs=ray.get(cfg["inputs"]))
    method = cls(mcfg, data["train"], ctx)
    state, best = restore_trial_state(ray.train.get_checkpoint() or cfg.get("resume_checkpoint"), cls.name)
    run_epochs(method, mcfg, data, ctx, state, SearchReporter(ray.train.report, rank, best),
               metric=cfg["metric"], mode=cfg["mode"])


def posectl_train_trial(config: dict, method: str, layers: list, layout: str, resources, train_ref, val_ref,
                        storage: str, inputs_ref=None, metric: str = "val_mpjpe", mode: str = "min") -> None:
    from ray import tune
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = tune.get_context().get_trial_id()
    loop_cfg = {"method": method, "layers": layers, "params": config, "layout": layout,
                "threads": max(1, int(resources.cpus)), "train": train_ref[0], "val": val_ref[0],
                "inputs": inputs_ref[0], "metric": metric, "mode": mode,
                "resume_checkpoint": tune.get_checkpoint()}
    per_worker = {"CPU": resources.cpus, **({"GPU": resources.gpus} if resources.gpus else {})}
    trainer = TorchTrainer(
        _worker, train_loop_config=loop_cfg,
        scaling_config=ScalingConfig(num_workers=resources.workers, use_gpu=resources.gpus > 0,
                                     resources_per_worker=per_worker),
        run_config=RunConfig(name=f"train-{trial_id}", storage_path=storage, callbacks=[TuneReportCallback()],
                             checkpoint_config=CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT),
                             failure_config=FailureConfig(controller_failure_limit=CONTROLLER_FAILURE_LIMIT)),
    )
    trainer.fit()


def multiworker_trainable(plan, cls, layers, layout: str, train, val, inputs=None):
    import ray
    from ray import tune
    fn = tune.with_parameters(posectl_train_trial, method=cls.name, layers=layers, layout=layout,
                              resources=plan.resources, train_ref=[ray.put(train)], val_ref=[ray.put(val)],
                              storage=str(plan.path / "_train"), inputs_ref=[ray.put(inputs or {})],
                              metric=plan.space.metric, mode=plan.space.mode)
    return tune.with_resources(fn, {"cpu": DRIVER_CPU})
