"""`posectl tune`, `posectl trials ...` and `posectl spaces ...`: hyper-parameter searches."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from posectl.cli.common import ADDRESS_HELP

trials_app = typer.Typer(help="Inspect the trials of a search.", no_args_is_help=True)
spaces_app = typer.Typer(help="List, show and validate search spaces.", no_args_is_help=True)


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
    address: Optional[str] = typer.Option(None, "--address", envvar="RAY_ADDRESS", help=ADDRESS_HELP),
    resume: bool = typer.Option(False, "--resume", help="Continue the search --name: finished trials are kept."),
    smoke_test: bool = typer.Option(False, "--smoke-test", help="A tiny real search (2 trials, 2 epochs, 1k samples)."),
    submit: bool = typer.Option(False, "--submit", help="Send the search to the cluster as a Ray Job (visible in the dashboard's Jobs view)."),
    dashboard: bool = typer.Option(True, "--dashboard/--no-dashboard", help="Start the Ray dashboard (127.0.0.1, token login) with a private Ray."),
):
    """Search hyper-parameters: Ray Tune drives Optuna (TPE), ASHA stops weak trials early.
    Selection uses the validation split only."""
    from posectl.cli.render import console
    from posectl.config import parse_overrides
    from posectl.orchestrator.tune import tune_search

    def show_plan(plan):
        console.print("\n".join(plan.lines()))

    if submit:                          # checked here: a job bound to fail is never sent
        from posectl.cli.common import submit_job
        from posectl.orchestrator.experiment import check_run_name
        from posectl.orchestrator.paths import default_storage
        from posectl.orchestrator.tune import plan_search
        check_run_name(name)
        if not resume:
            plan_search(method, space, samples, concurrent, gpus_per_trial, workers_per_trial, name, storage_path,
                        smoke_test, parse_overrides(overrides or []))
        submit_job(method, name, address,
                   ["--storage-path", str(Path(storage_path).absolute() if storage_path else default_storage())], "search")
        return

    plan, grid = tune_search(method, space=space, samples=samples, concurrent=concurrent,
                             gpus_per_trial=gpus_per_trial, workers_per_trial=workers_per_trial, name=name,
                             storage_path=storage_path, address=address, resume=resume, smoke_test=smoke_test,
                             overrides=parse_overrides(overrides or []), on_plan=show_plan, dashboard=dashboard,
                             say=lambda line: console.print(line, soft_wrap=True))
    _trials_table(plan.path)
    console.print(f"inspect: posectl trials show {plan.path} TRIAL   export: posectl trials best {plan.path} --export DIR")
    console.print(f"TensorBoard: tensorboard --logdir {plan.path}")
    if plan.space.storage:
        console.print(f"Optuna dashboard: optuna-dashboard {plan.space.storage}")


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


@trials_app.command("plot")
def trials_plot(name: str = typer.Argument(..., help="Search name or directory."),
                out: Optional[Path] = typer.Option(None, "--out", help="PNG to write (default: SEARCH/search_curves.png)."),
                storage_path: Optional[Path] = typer.Option(None, "--storage-path", envvar="POSECTL_STORAGE_PATH")):
    """The validation metric per epoch of every trial: trials stopped early dashed, the best starred."""
    from posectl.cli.render import console
    from posectl.orchestrator.plots import search_curves
    from posectl.orchestrator.trials import load_search
    s = load_search(name, storage_path)
    png = search_curves(s.trials, s.metric, s.mode, out or s.path / "search_curves.png", f"search {s.path.name}")
    console.print(f"wrote {png}")


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
