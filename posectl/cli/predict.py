"""`posectl predict`: a trained run on your own 2D keypoints (orchestrator/predict.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def predict_cmd(
    run: Path = typer.Argument(..., help="A run directory (its checkpoints/best.pt) or a checkpoint file of a lifting "
                                         "method: baseline, dhaug, gpa, posynda, pose2mesh."),
    keypoints: Path = typer.Option(..., "--keypoints", "-k", help="2D keypoints: VideoPose3D's data_2d_custom_*.npz, "
                                   "a COCO / MMPose keypoint .json, or a .npy (frames, joints, 2|3) in pixels."),
    out: Path = typer.Option(..., "--out", "-o", help="Output .npz (arrays; np.load without pickles) or .json "
                             "(3D per frame in mm)."),
    layout: Optional[str] = typer.Option(None, "--layout", help="Joint order of the keypoints: coco17, body25 "
                                         "(OpenPose), h36m17, h36m16, mpii16, 3dhp17 (needed for .npy; files "
                                         "that name theirs need not)."),
    image_size: Optional[str] = typer.Option(None, "--image-size", help="WIDTHxHEIGHT of the frames in pixels, "
                                             "where the file does not say (e.g. 1920x1080)."),
    flip: Optional[bool] = typer.Option(None, "--flip/--no-flip", help="Flip test-time augmentation (default: as the run)."),
    min_score: float = typer.Option(0.3, "--min-score", help="Keypoints scored below this are missing and filled by "
                                    "interpolation along time."),
    focal: Optional[float] = typer.Option(None, "--focal", help="Focal length in pixels (only posynda reprojects; "
                                          "default 1.145 x image width, Human3.6M-like)."),
    render: Optional[Path] = typer.Option(None, "--render", help="Also write an animation, 2D input beside the 3D "
                                          "skeleton: .gif (Pillow) or .mp4 (needs ffmpeg)."),
    render_track: Optional[str] = typer.Option(None, "--render-track", help="The track (video) to render; default: the first."),
    fps: int = typer.Option(25, "--fps", min=1, help="Frames per second of the animation."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N."),
):
    """Lift your own 2D keypoints to 3D with a trained run, mapped to its skeleton and normalised as it was
    trained; missing or low-score keypoints are interpolated along time and counted."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from posectl.cli.render import console
    from posectl.orchestrator.predict import parse_image_size, predict

    size = parse_image_size(image_size)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        tasks: dict[str, int] = {}

        def progress(what: str, done: int, total: int) -> None:
            if what not in tasks:
                tasks[what] = bar.add_task(what, total=total)
            bar.update(tasks[what], completed=done)

        res = predict(run, keypoints, out, layout=layout, image_size=size, flip=flip, min_score=min_score,
                      focal=focal, device=device, render=render, render_track=render_track, fps=fps,
                      progress=progress)
    m = res.meta
    derived = [f"{r['joint']} = mean({', '.join(r['from'])})" for r in m["mapping"] if r["derived"]]
    console.print(f"{m['method']} (epoch {m['epoch']}) lifted {m['frames']} frames in "
                  f"{len(m['input']['tracks'])} track(s) of {m['input']['format']} keypoints ({m['input']['layout']}).")
    if derived:
        console.print("derived joints: " + "; ".join(derived))
    f = m["filled"]
    console.print(f"filled by interpolation: {f['keypoints']} keypoints in {f['frames']} of {f['of_frames']} frames "
                  f"(score < {m['input']['min_score']:g} or missing)")
    console.print(f"protocol: {m['protocol']}")
    console.print(f"throughput: {m['frames_per_s']:.0f} frames/s (lifting, {m['lift_s']:.2f} s)")
    console.print(f"wrote {res.out}" + (f" and {res.render}" if res.render else ""))
