"""`posectl train` and `posectl eval`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from posectl.cli.common import ADDRESS_HELP, config_layers
from posectl.errors import PosectlError


def train(
    method: str = typer.Argument(..., help="Method to train (see `posectl methods`)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="Config overrides key=value, e.g. epochs=20 backbone.width=512."),
    gpus: Optional[int] = typer.Option(None, "--gpus", help="Train on N GPUs: one Ray Train worker per GPU."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Train with N CPU workers (DDP over gloo)."),
    cpus_per_worker: Optional[float] = typer.Option(None, "--cpus-per-worker", help="CPUs reserved per worker."),
    gpus_per_worker: Optional[float] = typer.Option(None, "--gpus-per-worker", help="With --workers N: the share of a GPU each worker gets (0.5: two workers per GPU, DDP over gloo)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML file with config values."),
    name: Optional[str] = typer.Option(None, "--name", help="Run name (default: METHOD-DATE-TIME)."),
    runs_dir: Optional[Path] = typer.Option(None, "--runs-dir", envvar="POSECTL_RUNS", help="Where runs are stored (default: ./runs)."),
    storage_path: Optional[str] = typer.Option(None, "--storage-path",
                                               help="Runs' directory on storage every node of a multi-node cluster reaches (an NFS mount); "
                                                     "checked on every node before the run starts."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run --name from its last checkpoint."),
    smoke_test: bool = typer.Option(False, "--smoke-test", help="Tiny real run: a few hundred samples, one epoch."),
    address: Optional[str] = typer.Option(None, "--address", envvar="RAY_ADDRESS", help=ADDRESS_HELP),
    max_failures: int = typer.Option(2, "--max-failures", help="Worker failures to recover from (restarts from the last checkpoint)."),
    dashboard: bool = typer.Option(True, "--dashboard/--no-dashboard", help="Start the Ray dashboard (127.0.0.1, token login) with a private Ray."),
    submit: bool = typer.Option(False, "--submit", help="Send the run to the cluster as a Ray Job (the dashboard's Jobs view); returns at once."),
):
    """Train METHOD as a Ray Train job; prints progress, per-epoch validation, and test results."""
    from posectl.cli.render import TrainProgress, console, metrics_table, per_action_table
    from posectl.orchestrator.train import train as run_train

    layers = config_layers(config, overrides, method)
    epochs = _peek_epochs(method, layers, smoke_test)
    if submit:                          # checked here: a job bound to fail is never sent
        from posectl.cli.common import submit_job
        from posectl.orchestrator.cluster import plan_resources
        from posectl.orchestrator.experiment import check_run_name, default_runs_dir
        plan_resources(gpus, workers, cpus_per_worker, gpus_per_worker)
        check_run_name(name)
        extra = ["--runs-dir", str((runs_dir or default_runs_dir()).absolute())] if storage_path is None else []
        submit_job(method, name, address, extra, "run")
        return
    header = f"[bold]posectl train {method}[/] — starting Ray (first epoch after ~15 s of Ray start-up)"
    with TrainProgress(epochs, header) as progress:
        out = run_train(method, layers, gpus=gpus, workers=workers, cpus_per_worker=cpus_per_worker,
                        gpus_per_worker=gpus_per_worker,
                        name=name, runs_dir=runs_dir, resume=resume, smoke_test=smoke_test,
                        address=address, max_failures=max_failures, on_event=progress, dashboard=dashboard,
                        say=lambda line: console.print(line, soft_wrap=True), storage_path=storage_path)
    res = out.results
    if not res:
        raise PosectlError(f"training finished without results in {out.experiment.root}")
    console.print(metrics_table(
        f"{method}: best validation epoch {res['best_epoch']}/{res['epochs']} — {res['test'].get('protocol', '')}",
        {f"val ({res['split_names']['val']})": res["val"], f"test ({res['split_names']['test']})": res["test"]}))
    if res["test"].get("per_action"):
        console.print(per_action_table(res["test"]["per_action"], "test split, per action"))
    console.print(f"run directory: {out.experiment.root}  ({out.wall_s:.0f} s); learning curves: curves.png")
    console.print(f"evaluate again: posectl eval {out.experiment.root / 'checkpoints' / 'best.pt'}")


def _peek_epochs(method: str, layers: list[dict], smoke: bool) -> int:
    """The number of epochs the run will have (for the progress bar), validating the config before Ray starts."""
    from posectl.config import build
    from posectl.methods.base import get_method
    from posectl.orchestrator.spec import smoke_overrides
    cls = get_method(method)
    return build(cls.Config, *layers, *([smoke_overrides(cls)] if smoke else []), context=f"method {method}").epochs


def eval_cmd(
    checkpoint: Path = typer.Argument(..., help="A checkpoint file (best.pt / last.pt) or a run directory."),
    data: Optional[str] = typer.Option(None, "--data", help="Dataset to evaluate on (default: the run's test data - its dataset's test split, or a method's own test input such as gpa's target domain)."),
    split: Optional[str] = typer.Option(None, "--split", help="Split to evaluate (default: the run's test split)."),
    keypoints: Optional[str] = typer.Option(None, "--keypoints", help="2D source (default: the run's)."),
    flip: Optional[bool] = typer.Option(None, "--flip/--no-flip", help="Flip test-time augmentation."),
    stride: int = typer.Option(1, "--stride", help="Evaluate every n-th frame."),
    joints: Optional[str] = typer.Option(None, "--joints", help="Joint set: all (17), 16 (no Neck/Nose, PoseAug), 14 (Pose2Mesh / 3DHP)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the metrics as JSON."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N (evaluation runs in this process)."),
):
    """Evaluate a trained checkpoint: MPJPE/P-MPJPE (per sample and action-wise), N-MPJPE, PCK, AUC."""
    import json
    from posectl.cli.render import console, metrics_table, per_action_table
    from posectl.orchestrator.evaluate import evaluate_checkpoint

    if json_out and not json_out.parent.is_dir():
        raise PosectlError(f"--json {json_out}: its folder {json_out.parent} does not exist")
    out = evaluate_checkpoint(checkpoint, data=data, split=split, keypoints=keypoints, flip=flip, stride=stride,
                              joints=joints, device=device)
    console.print(metrics_table(f"{out['method']} on {out['dataset']}:{out['split']} — {out['metrics']['protocol']}",
                                {out["split"]: out["metrics"]}))
    if out["metrics"].get("per_action"):
        console.print(per_action_table(out["metrics"]["per_action"], f"{out['split']}, per action"))
    if json_out:
        json_out.write_text(json.dumps(out, indent=2))
