"""`posectl samples`, `posectl meshes`, `posectl methods` and `posectl compare`: look at what runs and
methods produce."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from posectl.errors import PosectlError


def samples(
    run: Path = typer.Argument(..., help="A run directory (or its last.pt) of a generative method such as dhaug."),
    n: int = typer.Option(18, "--n", min=1, max=96, help="Number of poses to draw."),
    out: Optional[Path] = typer.Option(None, "--out", help="PNG to write (default: RUN/generated_poses.png)."),
):
    """Draw poses from a trained generator (DH-AUG) and save a grid of skeletons to look at."""
    from posectl.cli.render import console
    from posectl.orchestrator.evaluate import sample_checkpoint
    console.print(f"wrote {sample_checkpoint(run, n, out)}")


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


def compare(
    runs: Optional[list[Path]] = typer.Argument(None, help="Run directories (posectl train runs or exported trials)."),
    runs_dir: Optional[Path] = typer.Option(None, "--runs-dir", help="Compare every run directory in this folder."),
    fmt: str = typer.Option("table", "--format", help="table | markdown | csv | json."),
    sort: str = typer.Option("mpjpe", "--sort", help="Metric to rank by (pck150 and auc: higher first)."),
    strict: bool = typer.Option(False, "--strict", help="Refuse to rank runs measured under different protocols."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also draw MPJPE and P-MPJPE per run into this PNG."),
    per_action: bool = typer.Option(False, "--per-action", help="Add each run's per-action MPJPE."),
):
    """One leaderboard of runs of any methods on their test data, each row with its protocol (joint set,
    averaging, 2D source, flip, precision, split, stride); rows under another protocol than the first
    are flagged. Exported search trials are evaluated on their run's test data first."""
    from rich.table import Table

    from posectl.cli.render import console
    from posectl.orchestrator.compare import compare as run_compare, plot as draw, render
    if plot is not None and plot.suffix.lower() != ".png":
        raise PosectlError(f"--plot {plot}: a .png file")
    rows = run_compare(runs, runs_dir, strict=strict, sort=sort)
    if fmt != "table":
        typer.echo(render(rows, fmt), nl=False)
    else:
        t = Table(title=f"posectl compare: {len(rows)} runs, test split, ranked by {sort} (mm; PCK, AUC %)",
                  title_justify="left")
        labels = {"mpjpe": "MPJPE", "p_mpjpe": "P-MPJPE", "n_mpjpe": "N-MPJPE", "pck150": "PCK", "auc": "AUC"}
        cols = [m for m in labels if any(m in r.metrics for r in rows)]
        t.add_column("#", min_width=1)
        t.add_column("run", overflow="fold")                  # long run names fold; figures never shorten
        t.add_column("method", min_width=6, overflow="fold")
        for c in cols:
            t.add_column(labels[c], justify="right", no_wrap=True, min_width=len(labels[c]))
        t.add_column("protocol", no_wrap=True, min_width=5)
        for i, r in enumerate(rows, 1):
            t.add_row(str(i), r.name, r.method, *(f"{r.metrics[c]:.1f}" if c in r.metrics else "-" for c in cols),
                      "[yellow]other[/]" if r.differs else "same")
        console.print(t)
        first = next(r for r in rows if not r.differs)
        for r in [first, *(r for r in rows if r.differs)]:
            console.print(f"{'protocol' if r is first else r.name + ':'} {r.protocol['protocol']}; "
                          f"split {r.protocol['split']}", soft_wrap=True)
    if per_action:
        actions = sorted({a for r in rows for a in r.per_action})
        if fmt == "table":
            t = Table(title="test MPJPE per action (mm)", title_justify="left")
            for c in ("action", *(r.name for r in rows)):
                t.add_column(c)
            for a in actions:
                t.add_row(a, *(f"{r.per_action[a]['mpjpe']:.2f}" if a in r.per_action else "-" for r in rows))
            console.print(t)
        else:
            typer.echo(json.dumps({r.name: {a: v["mpjpe"] for a, v in r.per_action.items()} for r in rows}, indent=1)
                       if fmt == "json" else "")
    if plot:
        console.print(f"plot: {draw(rows, plot)}") if fmt == "table" else draw(rows, plot)
