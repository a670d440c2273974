"""posectl command line: thin wrappers that parse, call the orchestrator and print.

Heavy imports (torch, ray) happen inside commands so `posectl --help` stays fast.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from posectl.errors import PosectlError

app = typer.Typer(
    help="3D human pose estimation methods as searchable plugins on Ray.\n\n"
         "Quick start: `posectl train baseline` trains a lifting network on the built-in synthetic "
         "dataset on a local Ray cluster.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Create and inspect pose datasets (Arrow/Parquet shards).", no_args_is_help=True)
app.add_typer(data_app, name="data")

_STATE = {"debug": False}


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")):
    _STATE["debug"] = debug


def _config_layers(config: Optional[Path], overrides: Optional[list[str]]) -> list[dict]:
    from posectl.config import load_yaml, parse_overrides
    layers = []
    if config is not None:
        layers.append(load_yaml(config))
    layers.append(parse_overrides(overrides or []))
    return layers


@app.command(context_settings={"allow_extra_args": False})
def train(
    method: str = typer.Argument(..., help="Method to train (see `posectl methods`)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="Config overrides key=value, e.g. epochs=20 backbone.width=512."),
    gpus: Optional[int] = typer.Option(None, "--gpus", help="Train on N GPUs: one Ray Train worker per GPU."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Train with N CPU workers (DDP over gloo)."),
    cpus_per_worker: Optional[float] = typer.Option(None, "--cpus-per-worker", help="CPUs reserved per worker."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML file with config values."),
    name: Optional[str] = typer.Option(None, "--name", help="Run name (default: METHOD-DATE-TIME)."),
    runs_dir: Optional[Path] = typer.Option(None, "--runs-dir", envvar="POSECTL_RUNS", help="Where runs are stored (default: ./runs)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run --name from its last checkpoint."),
    smoke_test: bool = typer.Option(False, "--smoke-test", help="Tiny real run: a few hundred samples, one epoch."),
    address: Optional[str] = typer.Option(None, "--address", envvar="RAY_ADDRESS", help="Ray cluster to use (default: start a local one)."),
    max_failures: int = typer.Option(2, "--max-failures", help="Worker failures to recover from (restarts from the last checkpoint)."),
):
    """Train METHOD as a Ray Train job; prints progress, per-epoch validation, and test results."""
    from posectl.cli.render import TrainProgress, console, metrics_table, per_action_table
    from posectl.orchestrator.train import train as run_train

    layers = _config_layers(config, overrides)
    epochs = _peek_epochs(method, layers, smoke_test)
    console.print(f"[bold]posectl train {method}[/] — starting Ray (first epoch after ~15 s of Ray start-up)")
    with TrainProgress(epochs) as progress:
        out = run_train(method, layers, gpus=gpus, workers=workers, cpus_per_worker=cpus_per_worker,
                        name=name, runs_dir=runs_dir, resume=resume, smoke_test=smoke_test,
                        address=address, max_failures=max_failures, on_event=progress)
    res = out.results
    if not res:
        raise PosectlError(f"training finished without results in {out.experiment.root}")
    console.print(metrics_table(
        f"{method}: best validation epoch {res['best_epoch']}/{res['epochs']} — {res['test'].get('protocol', '')}",
        {f"val ({res['split_names']['val']})": res["val"], f"test ({res['split_names']['test']})": res["test"]}))
    if res["test"].get("per_action"):
        console.print(per_action_table(res["test"]["per_action"], "test split, per action"))
    console.print(f"run directory: {out.experiment.root}  ({out.wall_s:.0f} s)")
    console.print(f"evaluate again: posectl eval {out.experiment.root / 'checkpoints' / 'best.pt'}")


def _peek_epochs(method: str, layers: list[dict], smoke: bool) -> int:
    from posectl.config import build
    from posectl.methods.base import get_method
    from posectl.orchestrator.train import smoke_overrides
    cls = get_method(method)
    try:
        return build(cls.Config, *layers, *([smoke_overrides(cls)] if smoke else []), context=f"method {method}").epochs
    except PosectlError:
        raise


@app.command()
def tune(
    method: str = typer.Argument(..., help="Method to search (see `posectl methods`)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="Config values fixed for every trial, key=value."),
    space: Optional[Path] = typer.Option(None, "--space", help="Search-space YAML (default: the method's shipped space)."),
    samples: Optional[int] = typer.Option(None, "--samples", help="Number of trials."),
    concurrent: Optional[int] = typer.Option(None, "--concurrent", help="Trials running at once."),
    gpus_per_trial: Optional[int] = typer.Option(None, "--gpus-per-trial", help="Each trial: a Ray Train job, one worker per GPU."),
    workers_per_trial: Optional[int] = typer.Option(None, "--workers-per-trial", help="Each trial: a Ray Train job with W CPU workers."),
    name: Optional[str] = typer.Option(None, "--name", help="Search name (default: METHOD-DATE-TIME)."),
    storage_path: Optional[Path] = typer.Option(None, "--storage-path", envvar="POSECTL_STORAGE_PATH",
                                                help="Where searches are stored (shared storage on multi-node clusters; default: ./runs/tune)."),
    address: Optional[str] = typer.Option(None, "--address", envvar="RAY_ADDRESS", help="Ray cluster to use."),
    resume: bool = typer.Option(False, "--resume", help="Continue the search --name: finished trials are kept."),
    smoke_test: bool = typer.Option(False, "--smoke-test", help="A tiny real search (2 trials, 2 epochs, 1k samples)."),
    submit: bool = typer.Option(False, "--submit", help="Send the search to the cluster as a Ray Job (visible in the dashboard's Jobs view)."),
):
    """Search hyper-parameters: Ray Tune drives Optuna (TPE), ASHA stops weak trials early.
    Selection uses the validation split only."""
    from posectl.cli.render import console
    from posectl.config import parse_overrides
    from posectl.orchestrator.tune import tune_search

    def show_plan(plan):
        console.print("\n".join(plan.lines()))

    if submit:
        from posectl.orchestrator import head
        from posectl.orchestrator.tune import default_storage
        argv = _job_argv(sys.argv[1:])
        if "--storage-path" not in argv:
            argv += ["--storage-path", str(Path(storage_path).absolute() if storage_path else default_storage())]
        if "--name" not in argv:
            from datetime import datetime
            argv += ["--name", f"{method}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"]
        sid = head.submit(argv, name or method, dashboard=address if address and address.startswith("http") else None)
        console.print(f"submitted Ray Job {sid}; follow it in the dashboard (Jobs) or with "
                      f"`RAY_AUTH_MODE=token ray job logs -f {sid}`")
        return

    plan, grid = tune_search(method, space=space, samples=samples, concurrent=concurrent,
                             gpus_per_trial=gpus_per_trial, workers_per_trial=workers_per_trial, name=name,
                             storage_path=storage_path, address=address, resume=resume, smoke_test=smoke_test,
                             overrides=parse_overrides(overrides or []), on_plan=show_plan)
    _trials_table(plan.path)
    console.print(f"inspect: posectl trials show {plan.path} TRIAL   export: posectl trials best {plan.path} --export DIR")
    console.print(f"TensorBoard: tensorboard --logdir {plan.path}")
    if plan.space.storage:
        console.print(f"Optuna dashboard: optuna-dashboard {plan.space.storage}")


trials_app = typer.Typer(help="Inspect the trials of a search.", no_args_is_help=True)
app.add_typer(trials_app, name="trials")
spaces_app = typer.Typer(help="List, show and validate search spaces.", no_args_is_help=True)
app.add_typer(spaces_app, name="spaces")


def _trials_table(name, storage_path=None):
    from rich.table import Table
    from posectl.cli.render import console
    from posectl.orchestrator.trials import load_search
    s = load_search(name, storage_path)
    t = Table(title=f"{s.method} search {s.path.name}: {len(s.trials)} trials, sorted by best {s.metric} ({s.mode})",
              title_justify="left")
    params = sorted({k for tr in s.trials for k in tr.params})
    t.add_column("trial", no_wrap=True)
    for p in params:
        t.add_column(p.split(".")[-1], justify="right")
    for c in ("epochs", f"best {s.metric}", "status"):
        t.add_column(c, justify="right")
    for tr in s.sorted():
        def fmt(v):
            return f"{v:.3g}" if isinstance(v, float) else ("-" if v is None else str(v))
        t.add_row(tr.id, *(fmt(tr.params.get(p)) for p in params), str(tr.epochs),
                  f"{tr.best:.2f}", tr.state)
    console.print(t)
    return s


@trials_app.command("ls")
def trials_ls(name: str = typer.Argument(..., help="Search name or directory."),
              storage_path: Optional[Path] = typer.Option(None, "--storage-path", envvar="POSECTL_STORAGE_PATH")):
    """Table of trials sorted by the metric: parameters, epochs run, best metric, status."""
    _trials_table(name, storage_path)


@trials_app.command("show")
def trials_show(name: str = typer.Argument(..., help="Search name or directory."),
                trial: str = typer.Argument(..., help="Trial id (a unique prefix is enough)."),
                storage_path: Optional[Path] = typer.Option(None, "--storage-path", envvar="POSECTL_STORAGE_PATH"),
                plot: Optional[Path] = typer.Option(None, "--plot", help="Where to write the learning-curve PNG (default: in the trial directory).")):
    """One trial: its config, metric history and a PNG of the learning curve."""
    import yaml
    from rich.table import Table
    from posectl.cli.render import console
    from posectl.orchestrator.trials import load_search, plot_curve
    s = load_search(name, storage_path)
    tr = s.trial(trial)
    console.print(f"[bold]trial {tr.id}[/] ({tr.state}, {tr.epochs} epochs, best {s.metric} {tr.best:.2f})")
    console.print(yaml.safe_dump(tr.params, sort_keys=True).rstrip())
    t = Table(title="history")
    cols = [c for c in ("epoch", "train_loss_mm", s.metric, "val_p_mpjpe", "lr", "train_samples_per_s") if any(c in r for r in tr.history)]
    for c in cols:
        t.add_column(c, justify="right")
    for r in tr.history:
        t.add_row(*(f"{r[c]:.4g}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols))
    console.print(t)
    if tr.error:
        console.print(f"[red]error:[/] {tr.error}")
    if tr.history:
        png = plot_curve(tr, plot or tr.path / "learning_curve.png")
        console.print(f"learning curve: {png}")


@trials_app.command("best")
def trials_best(name: str = typer.Argument(..., help="Search name or directory."),
                export: Optional[Path] = typer.Option(None, "--export", help="Write the best trial's config and best checkpoint here."),
                storage_path: Optional[Path] = typer.Option(None, "--storage-path", envvar="POSECTL_STORAGE_PATH")):
    """The best trial by the validation metric; --export makes it ready for `posectl eval`."""
    from posectl.cli.render import console
    from posectl.orchestrator.trials import export_best, load_search
    s = load_search(name, storage_path)
    tr = s.best()
    console.print(f"best trial {tr.id}: {s.metric} {tr.best:.2f} after {tr.epochs} epochs; params {tr.params}")
    if export:
        _, ckpt = export_best(s, export)
        console.print(f"exported to {export}: posectl eval {ckpt} --split val")


@spaces_app.command("ls")
def spaces_ls():
    """Search spaces shipped with posectl."""
    from posectl.cli.render import console
    from posectl.orchestrator.spaces import load_space, packaged_spaces
    for method, path in sorted(packaged_spaces().items()):
        sp = load_space(path)
        console.print(f"{method:10s} {len(sp.parameters)} parameters, {sp.samples} samples, metric {sp.metric}  ({path})")


@spaces_app.command("show")
def spaces_show(method: str = typer.Argument(..., help="Method whose shipped space to print.")):
    """Print a method's search space (copy it, edit it, pass it with --space)."""
    from posectl.orchestrator.spaces import space_path
    typer.echo(space_path(method).read_text(), nl=False)


@spaces_app.command("validate")
def spaces_validate(file: Path = typer.Argument(..., help="A search-space YAML file.")):
    """Check a search-space file: keys, types, ranges, conditions, parameters the method has."""
    from posectl.cli.render import console
    from posectl.orchestrator.spaces import load_space
    sp = load_space(file)
    console.print(f"ok: {file} — method {sp.method}, {len(sp.parameters)} parameters, metric {sp.metric} ({sp.mode})")


cluster_app = typer.Typer(help="Start, inspect and stop a local Ray head with the dashboard.", no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")


@cluster_app.command("up")
def cluster_up(
    port: int = typer.Option(6379, "--port", help="Ray (GCS) port."),
    dashboard_port: int = typer.Option(8265, "--dashboard-port", help="Dashboard / job API port."),
    dashboard_host: str = typer.Option("127.0.0.1", "--dashboard-host",
                                       help="Bind address of the dashboard and job API. Anything but loopback lets "
                                            "whoever reaches the port run code here (a warning is printed)."),
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus"),
    num_gpus: Optional[int] = typer.Option(None, "--num-gpus"),
):
    """Start a local Ray head (dashboard on 127.0.0.1, token authentication on)."""
    from posectl.cli.render import console, err_console
    from posectl.orchestrator import head
    st = head.up(port, dashboard_port, dashboard_host, num_cpus, num_gpus,
                 warn=lambda m: err_console.print(f"[yellow]warning:[/] {m}"))
    console.print(f"Ray head running (pid {st['pid']}): address {st['address']}, dashboard {st['dashboard']}")
    console.print(f"token authentication is on; the token is in {head.token_path()}.\n"
                  f"  browser: open {st['dashboard']} and paste the token when asked\n"
                  f"  CLI/API: export RAY_AUTH_MODE=token   (Ray reads the token file)\n"
                  f"  curl:    curl -H \"Authorization: Bearer $(cat {head.token_path()})\" {st['dashboard']}/api/version\n"
                  f"use it:   posectl tune baseline --address {st['address']} [--submit]\n"
                  f"stop it:  posectl cluster down")


@cluster_app.command("status")
def cluster_status():
    """Nodes, CPUs, GPUs and jobs of the cluster posectl started."""
    from posectl.cli.render import console
    from posectl.orchestrator import head
    st = head.status()
    console.print(f"address {st['address']}  dashboard {st['dashboard']} (bound to {st['dashboard_host']})  pid {st['pid']}")
    console.print(f"dashboard answers {st['auth_without_token']} without the token, {st['auth_with_token']} with it")
    if "error" in st:
        console.print(f"[red]could not query the cluster:[/] {st['error']}")
    else:
        console.print(f"{st['nodes']} node(s), {st['cpus']:g} CPUs, {st['gpus']:g} GPUs")
        for sid, status in st.get("jobs", []):
            console.print(f"  job {sid}: {status}")


@cluster_app.command("down")
def cluster_down():
    """Stop the cluster posectl started (only its own processes; never `ray stop`)."""
    from posectl.cli.render import console
    from posectl.orchestrator import head
    console.print("stopped" if head.down() else "no posectl cluster was running")


def _job_argv(argv: list[str]) -> list[str]:
    """The command line a submitted job runs: without --submit, and without --address (the dashboard's
    http:// address is not one ray.init takes; the job supervisor sets RAY_ADDRESS for the job)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--address":
            skip = True
        elif a != "--submit" and not a.startswith("--address="):
            out.append(a)
    return out


@app.command("eval")
def eval_cmd(
    checkpoint: Path = typer.Argument(..., help="A checkpoint file (best.pt / last.pt) or a run directory."),
    data: Optional[str] = typer.Option(None, "--data", help="Dataset to evaluate on (default: the run's test data - its dataset's test split, or a method's own test input such as gpa's target domain)."),
    split: Optional[str] = typer.Option(None, "--split", help="Split to evaluate (default: the run's test split)."),
    keypoints: Optional[str] = typer.Option(None, "--keypoints", help="2D source (default: the run's)."),
    flip: Optional[bool] = typer.Option(None, "--flip/--no-flip", help="Flip test-time augmentation."),
    stride: int = typer.Option(1, "--stride", help="Evaluate every n-th frame."),
    joints: Optional[str] = typer.Option(None, "--joints", help="Joint set: all (17), 16 (no Neck/Nose, PoseAug), 14 (Pose2Mesh / 3DHP)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the metrics as JSON."),
):
    """Evaluate a trained checkpoint: MPJPE/P-MPJPE (per sample and action-wise), N-MPJPE, PCK, AUC."""
    import json
    from posectl.cli.render import console, metrics_table, per_action_table
    from posectl.orchestrator.evaluate import evaluate_checkpoint

    out = evaluate_checkpoint(checkpoint, data=data, split=split, keypoints=keypoints, flip=flip, stride=stride,
                              joints=joints)
    console.print(metrics_table(f"{out['method']} on {out['dataset']}:{out['split']} — {out['metrics']['protocol']}",
                                {out["split"]: out["metrics"]}))
    if out["metrics"].get("per_action"):
        console.print(per_action_table(out["metrics"]["per_action"], f"{out['split']}, per action"))
    if json_out:
        json_out.write_text(json.dumps(out, indent=2))


@app.command()
def samples(
    run: Path = typer.Argument(..., help="A run directory (or its last.pt) of a generative method such as dhaug."),
    n: int = typer.Option(18, "--n", min=1, max=96, help="Number of poses to draw."),
    out: Optional[Path] = typer.Option(None, "--out", help="PNG to write (default: RUN/generated_poses.png)."),
):
    """Draw poses from a trained generator (DH-AUG) and save a grid of skeletons to look at."""
    from posectl.cli.render import console
    from posectl.orchestrator.evaluate import sample_checkpoint
    console.print(f"wrote {sample_checkpoint(run, n, out)}")


@app.command()
def meshes(
    run: Path = typer.Argument(..., help="A run directory (or a checkpoint) of a mesh method such as pose2mesh."),
    n: int = typer.Option(4, "--n", min=1, max=24, help="Number of frames, evenly spaced over the split."),
    split: Optional[str] = typer.Option(None, "--split", help="Split to draw from (default: the run's test split)."),
    data: Optional[str] = typer.Option(None, "--data", help="Another dataset with the same joint layout."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for the OBJ files and meshes.png (default: RUN/meshes)."),
):
    """Write predicted and ground-truth meshes (OBJ) and a PNG of both, to look at a Pose2Mesh run."""
    from posectl.cli.render import console
    from posectl.orchestrator.evaluate import export_meshes
    console.print(f"wrote predicted and ground-truth OBJ files and meshes.png to {export_meshes(run, n, split, data, out)}")


@app.command()
def methods(method: Optional[str] = typer.Argument(None, help="Show this method's parameters.")):
    """List method plugins, or one method's parameters with types and defaults."""
    from rich.table import Table
    from posectl.cli.render import console
    from posectl.config import describe
    from posectl.methods.base import available, get_method

    if method is None:
        t = Table(title="posectl methods")
        for c in ("method", "description", "parameters"):
            t.add_column(c)
        for name, cls in available().items():
            t.add_row(name, cls.description, str(len(describe(cls.Config))))
        console.print(t)
        console.print("parameters of one method: posectl methods NAME")
        return
    cls = get_method(method)
    t = Table(title=f"{method}: {cls.description}")
    t.add_column("parameter", no_wrap=True)
    t.add_column("type")
    t.add_column("default")
    t.add_column("help", ratio=1)
    for key, tp, default, help_ in describe(cls.Config):
        t.add_row(key, tp, repr(default), help_)
    console.print(t)
    console.print(f"override with key=value, e.g. posectl train {method} epochs=5 lr=3e-4")


@data_app.command("synth")
def data_synth(
    out: Path = typer.Option(..., "--out", help="Output directory (must not exist)."),
    domain: str = typer.Option("source", "--domain", help="'source' (Human3.6M-like) or 'target' (shifted, 3DHP-like)."),
    seed: int = typer.Option(0, "--seed"),
    subjects: int = typer.Option(8, "--subjects", help="Number of subjects (split train/val/test by subject)."),
    frames: int = typer.Option(200, "--frames", help="Frames per sequence (50 Hz)."),
    sequences: int = typer.Option(1, "--sequences", help="Sequences per motion type and subject."),
):
    """Generate a synthetic dataset (deterministic from --seed)."""
    from posectl.cli.render import console
    from posectl.datasets.synthetic import SynthConfig, write_synthetic
    if domain not in ("source", "target"):
        raise PosectlError(f"--domain must be 'source' or 'target', got '{domain}'")
    if subjects < 3 or frames < 1 or sequences < 1:
        raise PosectlError("--subjects must be >= 3, --frames and --sequences >= 1")
    path = write_synthetic(out, SynthConfig(domain=domain, seed=seed, subjects=subjects, frames=frames,
                                            sequences_per_motion=sequences))
    console.print(f"wrote {path}")
    _print_info(path)


prepare_app = typer.Typer(help="Convert published dataset files into posectl datasets.", no_args_is_help=True)
data_app.add_typer(prepare_app, name="prepare")


@prepare_app.command("h36m")
def prepare_h36m_cmd(
    file_3d: Path = typer.Option(..., "--3d", help="VideoPose3D data_3d_h36m.npz (world-frame 32-joint mocap, metres)."),
    files_2d: Optional[list[Path]] = typer.Option(None, "--2d", help="data_2d_h36m_<source>.npz detections (repeatable)."),
    out: Path = typer.Option(..., "--out", help="Output directory (must not exist)."),
    cameras: Optional[Path] = typer.Option(None, "--cameras", help="cameras.json (default: the published calibration)."),
    val_fraction: float = typer.Option(0.1, "--val-fraction", help="Tail of each training sequence held out for validation."),
    layout_2d: Optional[str] = typer.Option(None, "--2d-layout", help="Joint order of the 2D files: mpii16, h36m16 or h36m17 (default: guessed)."),
    subjects: Optional[list[str]] = typer.Option(None, "--subject", help="Only these subjects (repeatable)."),
):
    """Import Human3.6M in the VideoPose3D npz layout: GT 2D by projection, detections mapped to 17 joints,
    splits train S1,S5-S8 (tail of each sequence = val) / test S9,S11."""
    import warnings
    from posectl.cli.render import console, err_console
    from posectl.datasets.h36m import prepare_h36m
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = prepare_h36m(out, file_3d, files_2d or [], cameras_json=cameras, val_fraction=val_fraction,
                            detection_layout=layout_2d, subjects=subjects,
                            progress=lambda m: console.print(f"[dim]{m}[/]"))
    for w in caught:
        err_console.print(f"[yellow]warning:[/] {w.message}")
    _print_info(path)


@prepare_app.command("3dhp")
def prepare_3dhp_cmd(
    path: Path = typer.Argument(..., help="test_3dhp.npz (PoseAug/DH-AUG), data_test_3dhp.npz (P-STMO/MixSTE/PoSynDA) or an mmpose-style npz."),
    out: Path = typer.Option(..., "--out", help="Output directory (must not exist)."),
    form: str = typer.Option("auto", "--form", help="auto | poseaug | pstmo | mmpose."),
    cameras: Optional[Path] = typer.Option(None, "--cameras", help="mmpose-style cameras pkl (intrinsics per sequence)."),
    image_size: Optional[tuple[int, int]] = typer.Option(None, "--image-size", help="W H of the PoseAug file's frames (2048 2048 or 1920 1080)."),
):
    """Import the MPI-INF-3DHP test set into the h36m17 layout (joint mapping and intrinsics recorded)."""
    import warnings
    from posectl.cli.render import console, err_console
    from posectl.datasets.mpi3dhp import prepare_3dhp
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p = prepare_3dhp(out, path, form=form, cameras=cameras, image_size=image_size,
                         progress=lambda m: console.print(f"[dim]{m}[/]"))
    for w in caught:
        err_console.print(f"[yellow]warning:[/] {w.message}")
    _print_info(p)


@data_app.command("attach-images")
def data_attach_images(
    path: str = typer.Argument(..., help="Dataset directory to copy (e.g. a prepared Human3.6M)."),
    out: Path = typer.Option(..., "--out", help="Output directory (must not exist)."),
    pattern: str = typer.Option(..., "--pattern", help="Image file per row, formatted with {split} {subject} {action} "
                                "{camera} {frame}, e.g. '{subject}/{action}.{camera}/{frame:06d}.jpg'."),
    root: Optional[Path] = typer.Option(None, "--root", help="Directory the pattern is relative to (default: here)."),
    embed: bool = typer.Option(False, "--embed/--link", help="Store the encoded bytes in the shards instead of paths."),
):
    """Add an image column to a dataset: every row gets its frame (a path, or the bytes with --embed).
    Methods that read images (l2d) then crop these frames instead of rendering figures."""
    from posectl.cli.render import console
    from posectl.datasets.images import attach_images
    from posectl.orchestrator.data import resolve_path
    p = attach_images(resolve_path(path), out, pattern, root=root, embed=embed,
                      progress=lambda m: console.print(f"[dim]{m}[/]"))
    _print_info(p)


@data_app.command("info")
def data_info(path: str = typer.Argument(..., help="Dataset directory, or 'synthetic' / 'synthetic:target'."),
              verify: bool = typer.Option(True, "--verify/--no-verify", help="Check shard checksums.")):
    """Summarise a dataset: joint layout, 2D sources, splits, subjects, rows."""
    from posectl.orchestrator.data import resolve_path
    _print_info(resolve_path(path), verify)


def _print_info(path, verify: bool = True) -> None:
    from rich.table import Table
    from posectl.cli.render import console
    from posectl.datasets.store import PoseDataset
    ds = PoseDataset(path, verify=verify)
    s = ds.summary()
    t = Table(title=f"{s['name']} — {s['path']}", title_justify="left")
    for c in ("split", "rows", "shards", "subjects"):
        t.add_column(c)
    for split, e in s["splits"].items():
        t.add_row(split, f"{e['rows']:,}", str(e["shards"]), ", ".join(e["subjects"]))
    console.print(t)
    console.print(f"joint layout: {s['joint_layout']}   2D sources: {', '.join(s['keypoints_2d'])}"
                  f"   images: {s['images'] or 'none'}"
                  f"   checksums: {'verified' if verify else 'not checked'}")
    info = {k: v for k, v in s["info"].items() if not isinstance(v, (dict, list))}
    if info:
        console.print("info: " + ", ".join(f"{k}={v}" for k, v in info.items()))


def _interrupted() -> None:
    print("interrupted: the local Ray that posectl started was shut down; continue a run with "
          "--resume --name NAME", file=sys.stderr, flush=True)
    sys.exit(130)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one-line errors with exit code 2; tracebacks only with --debug."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        code = app(args=argv, prog_name="posectl", standalone_mode=False)
        if code == 130:  # typer reports Ctrl-C as exit code 130
            _interrupted()
        if isinstance(code, int) and code:
            sys.exit(code)
    except PosectlError as e:
        if debug:
            raise
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        _interrupted()
    except OSError as e:  # read-only or full disk, missing directories: a user problem, said in one line
        if debug:
            raise
        where = f" {e.filename}" if getattr(e, "filename", None) else ""
        typer.echo(f"error: cannot access{where}: {e.strerror or e}", err=True)
        sys.exit(2)
    except Exception as e:  # noqa: BLE001 - the CLI's last line of defence
        if type(e).__name__ == "Abort":  # click turns Ctrl-C into Abort
            _interrupted()
        if hasattr(e, "show") and hasattr(e, "exit_code"):  # click/typer usage errors
            e.show()
            sys.exit(2)
        if debug:
            raise
        typer.echo(f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
                   "(run with --debug for the traceback)", err=True)
        sys.exit(1)
