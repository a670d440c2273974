"""`posectl samples`, `posectl meshes` and `posectl methods`: look at what a run or a method produces."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


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

