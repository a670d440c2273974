"""`posectl predict`: lift a user's own 2D keypoints to 3D with a trained run, in this process.

The keypoints are read and mapped onto the run's skeleton by datasets/keypoints.py, normalised exactly
as the run's training data (datasets/lifting.py: screen-normalised by the image width; temporal models
see edge-padded windows of each track), and lifted by the method's `lift` hook (methods/base.py).
Nothing is written until every input check has passed; outputs are written whole or not at all.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from posectl.core.skeleton import get_layout
from posectl.datasets.keypoints import Mapped, read_keypoints, to_layout
from posectl.datasets.lifting import LiftingData
from posectl.datasets.store import PoseArrays
from posectl.errors import ConfigError, PosectlError
from posectl.methods.base import Context
from posectl.orchestrator.evaluate import capable_checkpoint

OUT_FORMATS = (".npz", ".json")
RENDER_FORMATS = (".gif", ".mp4")
FOCAL_PER_WIDTH = 1.145      # Human3.6M's cameras: fx ~ 1145 px for 1000 px wide images


@dataclass
class Prediction:
    out: Path
    meta: dict[str, Any]
    joints_3d: np.ndarray                      # (N, J, 3) metres, root-relative camera frame
    keypoints_2d: np.ndarray                   # (N, J, 2) pixels on the run's layout, missing ones filled
    track: np.ndarray                          # (N,) track name per row
    observed: np.ndarray                       # (N, J) bool: False where the keypoint was filled
    frames_per_s: float = 0.0                  # lifting alone: network input to 3D
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    render: Path | None = None


def parse_image_size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--image-size: WIDTHxHEIGHT in pixels (e.g. 1920x1080), got '{text}'") from None
    if w <= 0 or h <= 0:
        raise ConfigError(f"--image-size must be positive, got {w}x{h}")
    return w, h


def check_render_target(render: str | Path | None) -> None:
    """Refuse a render target that cannot be written, before any work."""
    if render is None:
        return
    suffix = Path(render).suffix.lower()
    if suffix not in RENDER_FORMATS:
        raise ConfigError(f"--render: a .gif or .mp4 file, got '{render}'")
    if suffix == ".mp4" and shutil.which("ffmpeg") is None:
        raise ConfigError("--render .mp4 needs ffmpeg on PATH, and it is not there: install ffmpeg, or render a .gif")


def user_arrays(mapped: Mapped, focal: float | None) -> PoseArrays:
    """The tracks as a split: one sequence per track, frames in order; no 3D (zeros). Intrinsics: a
    pinhole at the image centre with focal length `focal` px (only methods that reproject use them)."""
    n = sum(len(t.xy) for t in mapped.tracks)
    intr = np.zeros((n, 9), np.float32)
    size = np.zeros((n, 2), np.int32)
    seq, frame, lo = np.zeros(n, "<U12"), np.zeros(n, np.int32), 0
    for k, t in enumerate(mapped.tracks):
        hi = lo + len(t.xy)
        w, h = t.image_size
        f = focal or FOCAL_PER_WIDTH * w
        intr[lo:hi, :4] = (f, f, w / 2, h / 2)
        size[lo:hi] = (w, h)
        seq[lo:hi] = f"{k:012d}"           # sequence order is track order
        frame[lo:hi] = np.arange(hi - lo)
        lo = hi
    kp = np.concatenate([t.xy for t in mapped.tracks])
    return PoseArrays(keypoints_2d=kp, joints_3d=np.zeros((*kp.shape[:2], 3), np.float32), intrinsics=intr,
                      image_size=size, subject=seq, action=np.full(n, "", "<U1"), camera=np.full(n, "", "<U1"),
                      frame=frame)


def predict(run: str | Path, keypoints: str | Path, out: str | Path, layout: str | None = None,
            image_size: tuple[int, int] | None = None, flip: bool | None = None, min_score: float = 0.3,
            focal: float | None = None, device: str = "cpu", render: str | Path | None = None,
            render_track: str | None = None, fps: int = 25,
            progress: Callable[[str, int, int], None] | None = None) -> Prediction:
    """Lift the keypoints in `keypoints` with the run (a run directory or a checkpoint) and write `out`
    (.npz or .json), and an animation to `render` (.gif / .mp4) when given."""
    out = Path(out)
    if out.suffix.lower() not in OUT_FORMATS:
        raise ConfigError(f"--out: a .npz or .json file, got '{out}'")
    check_render_target(render)
    if not 0 <= min_score <= 1:
        raise ConfigError(f"--min-score: between 0 and 1, got {min_score}")
    if focal is not None and focal <= 0:
        raise ConfigError(f"--focal: a focal length in pixels > 0, got {focal}")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ConfigError(f"--device: cpu, cuda or cuda:N, got '{device}'")
    if device != "cpu" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA device on this machine")
    path, state, cls, cfg = capable_checkpoint(run, "best.pt", lambda m: m.lifts_keypoints(), "lift 2D keypoints")
    run_layout = get_layout(state["layout"])
    kf = read_keypoints(keypoints, layout, image_size)
    mapped = to_layout(kf, run_layout.name, min_score)
    if render_track is not None and render_track not in {t.name for t in mapped.tracks}:
        raise ConfigError(f"--render-track: no track '{render_track}' in {kf.path} "
                          f"(has: {', '.join(t.name for t in mapped.tracks[:10])})")
    if flip is not None:
        if not hasattr(cfg, "test_flip"):
            raise ConfigError(f"--flip: method '{state['method']}' has no flip test-time augmentation")
        cfg.test_flip = flip
    if cfg.precision == "fp16" and device == "cpu":
        cfg.precision = "fp32"           # fp16 autocast is for GPUs

    arrays = user_arrays(mapped, focal)
    data = LiftingData(arrays, run_layout, keypoints=f"{kf.format} ({kf.layout})")
    dev = torch.device(device)
    method = cls(cfg, data, Context(device=dev, prepare_model=lambda net: net.to(dev)))
    method.load_state_dict({"model": state["method_state"]["model"]})
    t0 = time.perf_counter()
    with method.autocast():
        res = method.lift(data, progress=None if progress is None else (lambda d, n: progress("lifting", d, n)))
    lift_s = time.perf_counter() - t0
    joints = np.asarray(res.pop("joints_3d"), np.float32)
    n = len(joints)
    track = np.concatenate([np.full(len(t.xy), t.name) for t in mapped.tracks])
    rf = getattr(getattr(cfg, "backbone", None), "receptive_field", None) or getattr(
        getattr(cfg, "denoiser", None), "frames", 1)
    meta = {
        "run": str(path.parent.parent if path.parent.name == "checkpoints" else path.parent), "checkpoint": str(path),
        "method": state["method"], "epoch": state["epoch"] + 1,
        "output": (f"joints_3d: {run_layout.name} ({run_layout.num_joints} joints, {', '.join(run_layout.joints)}), "
                   f"metres, camera frame (x right, y down, z forward), relative to {run_layout.joints[run_layout.root]}"),
        "protocol": (f"2D {kf.format} in layout {kf.layout} mapped to {run_layout.name}; screen-normalised by the "
                     f"image width as in training; {rf} frame(s) per prediction, edge-padded per track; "
                     f"flip TTA {'on' if getattr(cfg, 'test_flip', False) else 'off'}; {cfg.precision}"),
        "input": {"file": str(kf.path), "format": kf.format, "layout": kf.layout, "min_score": min_score,
                  "tracks": {t.name: {"frames": len(t.xy), "image_size": list(t.image_size),
                                      "filled_frames": mapped.per_track[t.name]} for t in mapped.tracks}},
        "mapping": mapped.mapping,
        "filled": {"keypoints": mapped.filled_keypoints, "frames": mapped.filled_frames, "of_frames": n,
                   "how": "linear interpolation along time (edge values at the ends)"},
        "focal_px": focal or f"{FOCAL_PER_WIDTH} x image width",
        "frames": n, "lift_s": round(lift_s, 3), "frames_per_s": round(n / max(lift_s, 1e-9), 1),
    }
    observed = np.concatenate([t.score > 0 for t in mapped.tracks])
    pred = Prediction(out, meta, joints, arrays.keypoints_2d, track, observed, n / max(lift_s, 1e-9),
                      {k: np.asarray(v) for k, v in res.items()})
    # every check has passed: write the outputs whole, or not at all
    if render is not None:
        from posectl.orchestrator.plots import animate_prediction
        name = render_track or mapped.tracks[0].name
        sel = track == name
        w, h = mapped.tracks[[t.name for t in mapped.tracks].index(name)].image_size
        pred.render = _atomic(Path(render), lambda tmp: animate_prediction(
            arrays.keypoints_2d[sel], joints[sel], (w, h), run_layout, tmp, fps=fps,
            title=f"{state['method']} on {kf.path.name} ({name})",
            progress=None if progress is None else (lambda d, m: progress("rendering", d, m))))
    _atomic(out, lambda tmp: write_prediction(pred, tmp, suffix=out.suffix.lower()))
    return pred


def _atomic(path: Path, write: Callable[[Path], Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_prediction(pred: Prediction, path: Path, suffix: str) -> None:
    """.npz: arrays, no pickles (np.load(..., allow_pickle=False) reads it); meta as a JSON string.
    .json: meta and, per track, the 3D per frame in millimetres (0.1 mm)."""
    if suffix == ".npz":
        with open(path, "wb") as f:
            np.savez_compressed(f, joints_3d=pred.joints_3d, keypoints_2d=pred.keypoints_2d,
                                observed=pred.observed,
                                track=pred.track.astype(str),
                                frame=np.concatenate([np.arange((pred.track == t).sum()) for t in _order(pred.track)]),
                                meta=np.array(json.dumps(pred.meta)), **pred.extras)
        return
    tracks = {}
    for t in _order(pred.track):
        sel = pred.track == t
        tracks[t] = {"frames": int(sel.sum()),
                     "joints_3d_mm": np.round(pred.joints_3d[sel] * 1000, 1).tolist()}
    doc = {"meta": pred.meta, "tracks": tracks}
    if pred.extras:
        doc["meta"]["not_in_json"] = sorted(pred.extras) + ["(write .npz for these)"]
    path.write_text(json.dumps(doc))


def _order(track: np.ndarray) -> list[str]:
    _, first = np.unique(track, return_index=True)
    return [str(track[i]) for i in sorted(first)]
