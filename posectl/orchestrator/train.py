"""`train()`: run a method as a Ray Train job (one worker per GPU, or N CPU workers, DDP via Ray)."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from queue import Empty
from typing import Any, Callable

import torch

from posectl.config import build, to_dict
from posectl.core.skeleton import get_layout
from posectl.datasets.lifting import LiftingData
from posectl.errors import PosectlError
from posectl.methods.base import Context, DataInput, check_training, get_method, method_inputs, reads_images
from posectl.orchestrator import cluster
from posectl.orchestrator.data import arrays_from_shard, open_dataset, open_inputs, ray_datasets
from posectl.orchestrator.experiment import (Experiment, atomic_write_bytes, latest_valid_checkpoint,
                                             load_checkpoint, save_checkpoint)
from posectl.orchestrator.loop import run_epochs


@dataclass
class TrainResult:
    experiment: Experiment
    results: dict[str, Any]
    wall_s: float
    cluster: dict = field(default_factory=dict)


def smoke_overrides(method_cls) -> dict[str, Any]:
    """A tiny but real run: a few hundred samples, one epoch, evaluation on a strided split."""
    base = {"epochs": 1, "data.max_train_samples": 512, "data.eval_stride": 20, "batch_size": 128}
    base.update(getattr(method_cls, "smoke_overrides", {}))
    return base


def default_run_name(method: str) -> str:
    return f"{method}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


class _Events:
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


class _TrainReporter:
    def __init__(self, exp: Experiment, events: _Events, rank: int):
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
                _link_atomic(path, self.exp.checkpoints / "best.pt", copy=True)    # later, leaves it whole
            _link_atomic(path, self.exp.checkpoints / "last.pt")
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


def _link_atomic(src: Path, dst: Path, copy: bool = False) -> None:
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


def _train_worker(loop_cfg: dict) -> None:
    """Runs inside every Ray Train worker."""
    import ray.train
    import ray.train.torch

    tctx = ray.train.get_context()
    rank, world = tctx.get_world_rank(), tctx.get_world_size()
    if loop_cfg.get("threads"):
        torch.set_num_threads(loop_cfg["threads"])
    method_cls = get_method(loop_cfg["method"])
    cfg = build(method_cls.Config, loop_cfg["config"], context=f"method {loop_cfg['method']}")
    layout = get_layout(loop_cfg["layout"])
    kp = cfg.data.keypoints
    extra = {role: DataInput(**d) for role, d in loop_cfg.get("inputs", {}).items()}
    data = {role: LiftingData(arrays_from_shard(ray.train.get_dataset_shard(role), kp, layout.num_joints,
                                                where=f"{role} split", image_root=loop_cfg.get("image_root")),
                              layout, keypoints=kp)
            for role in ("train", "val", "test") if role not in extra}
    inputs = {role: arrays_from_shard(ray.train.get_dataset_shard(role), inp.keypoints, layout.num_joints,
                                      where=f"input '{role}' ({inp.path}:{inp.split})", with_3d=inp.with_3d)
              for role, inp in extra.items()}
    if "test" in inputs:
        data["test"] = LiftingData(inputs.pop("test"), layout, keypoints=extra["test"].keypoints)
    events = _Events(loop_cfg.get("queue"), rank)
    device = ray.train.torch.get_device()
    ctx = Context(rank=rank, world_size=world, device=device,
                  prepare_model=ray.train.torch.prepare_model, progress=events.step, inputs=inputs)
    method = method_cls(cfg, data["train"], ctx)
    exp = Experiment(loop_cfg["exp_dir"])
    state = None
    ckpt = ray.train.get_checkpoint()  # set when Ray restarts workers after a failure
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = load_checkpoint(Path(d) / "state.pt", method_cls.name)
    elif loop_cfg.get("resume"):
        state = latest_valid_checkpoint(exp, method_cls.name)
    hook = loop_cfg.get("fault_hook")
    if hook:  # test-only fault injection: a callable(epoch, rank) run after each epoch
        reporter = _HookedReporter(_TrainReporter(exp, events, rank), hook, rank)
    else:
        reporter = _TrainReporter(exp, events, rank)
    run_epochs(method, cfg, data, ctx, state, reporter)


class _HookedReporter:
    def __init__(self, inner, hook, rank):
        self.inner, self.hook, self.rank = inner, hook, rank

    def epoch(self, row, state_fn, improved):
        self.inner.epoch(row, state_fn, improved)
        self.hook(row["epoch"], self.rank)

    def best_state(self):
        return self.inner.best_state()

    def finish(self, results):
        self.inner.finish(results)


def train(method: str, cfg_layers: list[dict], *, gpus: int | None = None, workers: int | None = None,
          cpus_per_worker: float | None = None, name: str | None = None, runs_dir: str | Path | None = None,
          resume: bool = False, smoke_test: bool = False, address: str | None = None,
          max_failures: int = 0, on_event: Callable[[dict], None] | None = None,
          fault_hook: Callable | None = None) -> TrainResult:
    """Resolve the config, prepare the experiment directory and data, and run a Ray Train job."""
    from posectl.orchestrator.experiment import default_runs_dir

    method_cls = get_method(method)
    if max_failures < 0:
        raise PosectlError(f"--max-failures must be >= 0, got {max_failures} (Ray reads -1 as retrying forever)")
    runs_dir = Path(runs_dir) if runs_dir else default_runs_dir()
    if resume:
        if not name:
            raise PosectlError("--resume needs --name of the run to continue")
        exp = Experiment(runs_dir / name)
        if not exp.exists():
            raise PosectlError(f"no run to resume at {exp.root}")
        doc = exp.read_config()
        if doc["method"] != method:
            raise PosectlError(f"run '{name}' is a '{doc['method']}' run, not '{method}'")
        extra = [layer for layer in cfg_layers if layer]
        cfg = build(method_cls.Config, doc["config"], *extra, context=f"method {method}")
        if to_dict(cfg) != doc["config"]:
            raise PosectlError(f"--resume cannot change the config of run '{name}' (see {exp.config_path})")
    else:
        build(method_cls.Config, *cfg_layers, context=f"method {method}")    # the user's values, before --smoke-test's
        layers = list(cfg_layers) + ([smoke_overrides(method_cls)] if smoke_test else [])
        cfg = build(method_cls.Config, *layers, context=f"method {method}")
        exp = Experiment(runs_dir / (name or default_run_name(method)))
        if exp.exists():
            raise PosectlError(f"run '{exp.name}' already exists in {runs_dir}; use --resume or another --name")
    check_training(method_cls, cfg)
    res = cluster.plan_resources(gpus, workers, cpus_per_worker)
    dataset = open_dataset(cfg.data)             # validates manifest, splits, checksums
    inputs = open_inputs(method_inputs(method_cls, cfg), dataset.layout.name)
    if resume:
        cluster.reap_orphans(exp.root)
    started = cluster.connect(address)
    try:
        have = cluster.check_resources(res)
        exp.create(method, to_dict(cfg))
        if started:
            cluster.record_session(exp.root)
        return _fit(method_cls, cfg, dataset, exp, res, resume, max_failures, on_event, fault_hook, have, inputs)
    finally:
        if started:
            import ray
            ray.shutdown()


def _fit(method_cls, cfg, dataset, exp, res, resume, max_failures, on_event, fault_hook, have,
         inputs=None) -> TrainResult:
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    t0 = time.perf_counter()
    images = reads_images(method_cls, cfg)
    datasets = ray_datasets(dataset, cfg.data, seed=cfg.seed, inputs=inputs, images=images)
    import uuid
    queue = Queue(maxsize=10_000, actor_options={"num_cpus": 0,
                                                 "name": f"posectl-progress-{exp.name}-{uuid.uuid4().hex[:6]}"})
    loop_cfg = {"method": method_cls.name, "config": to_dict(cfg), "layout": dataset.layout.name,
                "exp_dir": str(exp.root), "resume": resume, "queue": queue,
                "image_root": str(dataset.path) if images else None,
                "threads": max(1, int(res.cpus)), "fault_hook": fault_hook,
                "inputs": {role: dataclasses.asdict(inp) for role, (_, inp) in (inputs or {}).items()}}
    trainer = TorchTrainer(
        _train_worker, train_loop_config=loop_cfg,
        scaling_config=ScalingConfig(num_workers=res.workers, use_gpu=res.use_gpu,
                                     resources_per_worker={"CPU": res.cpus, **({"GPU": res.gpus} if res.gpus else {})}),
        datasets=datasets, dataset_config=DataConfig(datasets_to_split=["train"]),
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
