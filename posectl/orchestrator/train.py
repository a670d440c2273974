"""`train()`: run a method as a Ray Train job (one worker per GPU, or N CPU workers, DDP via Ray)."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from queue import Empty
from typing import Any, Callable

import torch

from posectl.errors import PosectlError
from posectl.methods.base import Context, get_method
from posectl.orchestrator import cluster
from posectl.orchestrator.experiment import Experiment, latest_valid_checkpoint, load_checkpoint
from posectl.orchestrator.loop import run_epochs
from posectl.orchestrator.reporters import Events, TrainReporter
from posectl.orchestrator.spec import RunSpec, build_worker, ddp_prepare, ray_map_batches


@dataclass
class TrainResult:
    experiment: Experiment
    results: dict[str, Any]
    wall_s: float
    cluster: dict = field(default_factory=dict)


def default_run_name(method: str) -> str:
    return f"{method}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _train_worker(loop_cfg: dict) -> None:
    """Runs inside every Ray Train worker."""
    import ray.train
    import ray.train.torch

    tctx = ray.train.get_context()
    rank, world = tctx.get_world_rank(), tctx.get_world_size()
    torch.set_num_threads(loop_cfg["threads"])
    spec = loop_cfg["spec"]
    events = Events(loop_cfg["queue"], rank)
    device = ray.train.torch.get_device()
    ctx = Context(rank=rank, world_size=world, device=device, progress=events.step,
                  prepare_model=ddp_prepare(spec["cfg"], world, device), map_batches=ray_map_batches)
    method, data = build_worker(spec, {role: ray.train.get_dataset_shard(role) for role in loop_cfg["roles"]}, ctx)
    exp = Experiment(loop_cfg["exp_dir"])
    state = None
    ckpt = ray.train.get_checkpoint()  # set when Ray restarts workers after a failure
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = load_checkpoint(Path(d) / "state.pt", method.name)
    elif loop_cfg["resume"]:
        state = latest_valid_checkpoint(exp, method.name)
    run_epochs(method, spec["cfg"], data, ctx, state, TrainReporter(exp, events, rank))


def train(method: str, cfg_layers: list[dict], *, gpus: int | None = None, workers: int | None = None,
          cpus_per_worker: float | None = None, gpus_per_worker: float | None = None, name: str | None = None,
          runs_dir: str | Path | None = None,
          resume: bool = False, smoke_test: bool = False, address: str | None = None,
          max_failures: int = 0, on_event: Callable[[dict], None] | None = None, dashboard: bool = True,
          say: Callable[[str], None] | None = None, storage_path: str | Path | None = None) -> TrainResult:
    """Resolve the run (RunSpec), prepare the experiment directory and data, and run a Ray Train job."""
    from posectl.orchestrator.experiment import check_run_name, default_runs_dir

    method_cls = get_method(method)
    check_run_name(name)
    if max_failures < 0:
        raise PosectlError(f"--max-failures must be >= 0, got {max_failures} (Ray reads -1 as retrying forever)")
    if storage_path is not None and "://" in str(storage_path):
        raise PosectlError(f"--storage-path {storage_path}: posectl keeps run directories on a file system; mount the "
                           f"bucket on every node (s3fs, gcsfuse) and pass the mount point")
    if storage_path is not None and runs_dir is not None and Path(storage_path) != Path(runs_dir):
        raise PosectlError(f"--storage-path {storage_path} and --runs-dir (or POSECTL_RUNS) {runs_dir} both set the "
                           "runs' directory: give one")
    shared = storage_path is not None
    runs_dir = Path(storage_path or runs_dir) if (storage_path or runs_dir) else default_runs_dir()
    res = cluster.plan_resources(gpus, workers, cpus_per_worker, gpus_per_worker)
    if resume:
        if not name:
            raise PosectlError("--resume needs --name of the run to continue")
        exp = Experiment(runs_dir / name)
        if not exp.exists():
            raise PosectlError(f"no run to resume at {exp.root}")
        doc = exp.read_config()
        if doc["method"] != method:
            raise PosectlError(f"run '{name}' is a '{doc['method']}' run, not '{method}'")
        spec = RunSpec.build(method_cls, [doc["config"], *(layer for layer in cfg_layers if layer)], resources=res)
        if spec.config != doc["config"]:
            raise PosectlError(f"--resume cannot change the config of run '{name}' (see {exp.config_path})")
        cluster.reap_orphans(exp.root)
    else:
        spec = RunSpec.build(method_cls, cfg_layers, smoke_test=smoke_test, resources=res)
        exp = Experiment(runs_dir / (name or default_run_name(method)))
        if exp.exists():
            raise PosectlError(f"run '{exp.name}' already exists in {runs_dir}; use --resume or another --name")
    if on_event:                    # every check that needs no Ray has passed
        on_event({"type": "connect"})
    started = cluster.connect(address, dashboard=dashboard, say=say)
    try:
        if cpus_per_worker is None and workers is None and gpus is None and gpus_per_worker is None:
            # the default worker takes this machine's cores, or a whole node of a cluster with smaller ones
            spec.resources = res = cluster.fit_default_worker(res)
        data_cpu = spec.needs_data_cpu(res.workers, say)
        if data_cpu and cpus_per_worker is None:
            spec.resources = res = cluster.leave_cpu_for_data(res)
        have = cluster.check_resources(res, reserve_cpus=1.0 if data_cpu else 0.0)
        cluster.check_shared_storage(runs_dir, shared, "--storage-path")
        exp.create(method, spec.config)
        if started:
            cluster.record_session(exp.root)
        return _fit(spec, exp, resume, max_failures, on_event, have)
    finally:
        if started:
            import ray
            ray.shutdown()


def _fit(spec: RunSpec, exp: Experiment, resume: bool, max_failures: int, on_event, have) -> TrainResult:
    import uuid

    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Queue

    t0 = time.perf_counter()
    res = spec.resources
    datasets, blocks = spec.ray_datasets(world=res.workers)
    queue = Queue(maxsize=10_000, actor_options={"num_cpus": 0,
                                                 "name": f"posectl-progress-{exp.name}-{uuid.uuid4().hex[:6]}"})
    loop_cfg = {"spec": spec.describe(blocks), "roles": list(datasets),
                "exp_dir": str(exp.root), "resume": resume, "queue": queue, "threads": max(1, int(res.cpus))}
    trainer = TorchTrainer(
        _train_worker, train_loop_config=loop_cfg, torch_config=TorchConfig(backend=res.backend),
        scaling_config=ScalingConfig(num_workers=res.workers, use_gpu=res.use_gpu,
                                     resources_per_worker={"CPU": res.cpus, **({"GPU": res.gpus} if res.gpus else {})}),
        # every worker reads the whole of each role, and takes its own block of the training rows
        datasets=datasets, dataset_config=DataConfig(datasets_to_split=[]),
        run_config=RunConfig(name=f"train-{exp.name}", storage_path=str(exp.root / "ray"),
                             checkpoint_config=CheckpointConfig(num_to_keep=1),
                             failure_config=FailureConfig(max_failures=max_failures)),
    )
    box: dict[str, Any] = {}

    def target():
        try:
            box["result"] = trainer.fit()
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
            box["error"] = e

    th = threading.Thread(target=target, name="posectl-fit", daemon=True)
    th.start()
    while th.is_alive() or not queue.empty():
        try:
            ev = queue.get(timeout=0.3)
        except Empty:
            continue
        except Exception:  # noqa: BLE001 - queue actor gone at shutdown
            break
        if on_event:
            on_event(ev)
    th.join()
    try:
        queue.shutdown()
    except Exception:  # noqa: BLE001 - already gone with its owner
        pass
    if "error" in box:
        raise _unwrap(box["error"])
    results = exp.results() or {}
    history = exp.history()
    if results and history:                 # curves.png beside metrics.jsonl, the selected epoch marked
        from posectl.orchestrator.plots import learning_curves
        learning_curves(history, "val_mpjpe", results["best_epoch"], exp.root / "curves.png",
                        f"{exp.name}: {spec.method.name}")
    return TrainResult(exp, results, time.perf_counter() - t0, have)


def _unwrap(e: BaseException) -> BaseException:
    """Turn a Ray Train failure caused by a posectl input error back into that one-line error."""
    text = str(e)
    for marker in ("No space left on device", "Read-only file system", "Permission denied"):
        if marker in text:
            line = next(ln for ln in text.splitlines() if marker in ln).strip()
            return PosectlError(f"a worker could not write its checkpoint ({line[-160:]}); "
                                "the last good checkpoint is intact, continue with --resume")
    for cls_name in ("DataError", "ConfigError", "ResourceError", "PosectlError"):
        marker = f"{cls_name}: "
        if marker in text:
            line = text.split(marker, 1)[1].splitlines()[0]
            return PosectlError(line)
    return e
