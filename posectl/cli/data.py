"""`posectl data ...`: create, import and inspect pose datasets."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from posectl.errors import PosectlError

app = typer.Typer(help="Create and inspect pose datasets (Arrow/Parquet shards).", no_args_is_help=True)
prepare_app = typer.Typer(help="Convert published dataset files into posectl datasets.", no_args_is_help=True)
app.add_typer(prepare_app, name="prepare")


@app.command("synth")
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
    for flag, value, least in (("--subjects", subjects, 3), ("--frames", frames, 1), ("--sequences", sequences, 1)):
        if value < least:
            raise PosectlError(f"{flag} must be >= {least}, got {value}")
    path = write_synthetic(out, SynthConfig(domain=domain, seed=seed, subjects=subjects, frames=frames,
                                            sequences_per_motion=sequences))
    console.print(f"wrote {path}")
    _print_info(path)


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
    from posectl.datasets.h36m import prepare_h36m
    _print_info(_warning_lines(lambda: prepare_h36m(
        out, file_3d, files_2d or [], cameras_json=cameras, val_fraction=val_fraction, detection_layout=layout_2d,
        subjects=subjects, progress=_progress)))


@prepare_app.command("humaneva")
def prepare_humaneva_cmd(
    file_3d: Path = typer.Option(..., "--3d", help="VideoPose3D data_3d_humaneva15.npz (world-frame HumanEva-15, metres)."),
    files_2d: list[Path] = typer.Option(..., "--2d", help="data_2d_humaneva15_gt.npz (required: the cameras are recovered "
                                                          "from it), and detections in that layout (repeatable)."),
    out: Path = typer.Option(..., "--out", help="Output directory (must not exist)."),
    val_fraction: float = typer.Option(0.1, "--val-fraction", help="Tail of each training sequence held out for validation."),
    test_subjects: Optional[list[str]] = typer.Option(None, "--test-subject", help="Training subjects held out as the test "
                                                      "split (e.g. Train/S3; repeatable). Validate/* takes are test anyway."),
):
    """Import HumanEva-I in the VideoPose3D npz layout: mapped to 17 joints (Spine and Neck/Nose derived),
    cameras recovered per subject session by DLT (reprojection error in `data info`), splits train (tail =
    val) / test (Validate/* takes, --test-subject)."""
    from posectl.datasets.humaneva import prepare_humaneva
    _print_info(_warning_lines(lambda: prepare_humaneva(out, file_3d, files_2d, val_fraction=val_fraction,
                                                        test_subjects=test_subjects, progress=_progress)))


@prepare_app.command("3dhp")
def prepare_3dhp_cmd(
    path: Path = typer.Argument(..., help="test_3dhp.npz (PoseAug/DH-AUG), data_test_3dhp.npz (P-STMO/MixSTE/PoSynDA) or an mmpose-style npz."),
    out: Path = typer.Option(..., "--out", help="Output directory (must not exist)."),
    form: str = typer.Option("auto", "--form", help="auto | poseaug | pstmo | mmpose (of PATH)."),
    cameras: Optional[list[Path]] = typer.Option(None, "--cameras", help="mmpose-style cameras pkl (intrinsics per sequence); repeat for cameras_test.pkl and cameras_train.pkl."),
    image_size: Optional[tuple[int, int]] = typer.Option(None, "--image-size", help="W H of the PoseAug file's frames (2048 2048 or 1920 1080)."),
    train: Optional[Path] = typer.Option(None, "--train", help="The training set too, as split 'train' (subjects S1-S8): data_train_3dhp.npz (P-STMO/MixSTE) or mmpose's training npz; needs --cameras cameras_train.pkl."),
):
    """Import the MPI-INF-3DHP test set (split 'test') and optionally its training set (split 'train') into
    the h36m17 layout (joint mapping and intrinsics recorded)."""
    from posectl.datasets.mpi3dhp import prepare_3dhp
    _print_info(_warning_lines(lambda: prepare_3dhp(out, path, form=form, cameras=cameras or None, image_size=image_size,
                                                    train=train, progress=_progress)))


@app.command("attach-images")
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
    from posectl.datasets.images import attach_images
    from posectl.orchestrator.data import resolve_path
    p = attach_images(resolve_path(path), out, pattern, root=root, embed=embed, progress=_progress)
    _print_info(p)


@app.command("info")
def data_info(path: str = typer.Argument(..., help="Dataset directory, or 'synthetic', 'synthetic:target' or 'synthetic:anny'."),
              verify: bool = typer.Option(True, "--verify/--no-verify", help="Check shard checksums.")):
    """Summarise a dataset: joint layout, 2D sources, splits, subjects, rows."""
    from posectl.orchestrator.data import resolve_path
    _print_info(resolve_path(path), verify)



def _progress(message: str) -> None:
    from posectl.cli.render import console
    console.print(f"[dim]{message}[/]")


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
    cams = s["info"].get("cameras")
    if isinstance(cams, dict) and cams and all(isinstance(c, dict) and "reprojection_px_median" in c for c in cams.values()):
        console.print(f"cameras ({s['info'].get('cameras_from', 'recovered')}), reprojection error of the 2D-3D pairs:")
        for cid, c in cams.items():
            console.print(f"  {cid}: median {c['reprojection_px_median']:.2f} px, 95th percentile "
                          f"{c['reprojection_px_p95']:.2f} px over {c['pairs']:,} pairs; fx {c['fx']:.0f}, fy {c['fy']:.0f}",
                          soft_wrap=True)
    mapping = s["info"].get("mapping_to_h36m17")
    if isinstance(mapping, list) and mapping and isinstance(mapping[0], dict):
        derived = [f"{m['joint']} = mean({', '.join(m['from'])})" for m in mapping if m.get("derived")]
        if derived:
            console.print("derived joints: " + "; ".join(derived), soft_wrap=True)


def _warning_lines(importer):
    """Run an importer, printing each warning it raises as one yellow line; returns what it returns."""
    import warnings

    from posectl.cli.render import err_console
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = importer()
    for w in caught:
        err_console.print(f"[yellow]warning:[/] {w.message}")
    return out
