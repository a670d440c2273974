"""A user's own 2D keypoints, read for `posectl predict` (orchestrator/predict.py).

Formats (docs/commands.md, "posectl predict"):
  .npz   VideoPose3D's custom-video file (`data_2d_custom_*.npz`): positions_2d[video]["custom"][0] is
         (T, J, 2|3) pixels, metadata["video_metadata"][video] has "w" and "h", metadata["layout_name"]
         names the joint order ("coco" from its detectron pipeline). Read through the restricted
         unpickler (datasets/safe_npz.py).
  .json  COCO-style keypoint results (MMPose / detectron2): a list of {"image_id", "keypoints": [x, y, s] * J,
         "score"}, a COCO file with "annotations" (and "images" with width/height), or MMPose inferencer
         frames [{"frame_id", "instances": [{"keypoints": [[x, y]...], "keypoint_scores": [...]}]}].
         One person per frame: the highest-scoring one; frames without anybody are missing.
  .npy   (T, J, 2|3) pixels (third channel: score), with --layout and --image-size.

Keypoints that are NaN or score below `min_score` are missing; `to_layout` maps a track onto a run's
joint layout (core/skeleton.py: keypoint_mapping) and fills missing ones by linear interpolation
along time (edge values before the first and after the last seen frame), counting what it filled.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from posectl.core.skeleton import KEYPOINT_JOINTS, describe_mapping, keypoint_mapping
from posectl.datasets.safe_npz import load_npz
from posectl.errors import DataError

VP3D_LAYOUTS = {"coco": "coco17", "h36m": "h36m17", "mpii": "mpii16", "body25": "body25", "openpose": "body25"}


@dataclass
class Track:
    """One person's keypoints over a video's frames."""
    name: str
    xy: np.ndarray                  # (T, J, 2) float32 pixels, NaN where missing
    score: np.ndarray               # (T, J) float32 (1 where the file has no scores)
    image_size: tuple[int, int]     # width, height


@dataclass
class KeypointFile:
    path: Path
    format: str                     # "videopose3d-npz" | "coco-json" | "mmpose-json" | "npy"
    layout: str                     # joint order of the file (KEYPOINT_JOINTS)
    tracks: list[Track]


@dataclass
class Mapped:
    """Tracks on the run's joint layout, missing keypoints filled."""
    tracks: list[Track]
    mapping: list[dict]             # per target joint: {"joint", "from": [source names], "derived"}
    filled_keypoints: int = 0
    filled_frames: int = 0          # frames with at least one filled keypoint
    per_track: dict[str, int] = field(default_factory=dict)   # filled frames per track


def layout_for(num_joints: int, declared: str | None, where: str) -> str:
    """The keypoint layout of a file: `declared` (checked against the joint count), or the only layout
    with that many joints."""
    if declared is not None:
        if declared not in KEYPOINT_JOINTS:
            raise DataError(f"--layout: unknown layout '{declared}' (known: {', '.join(KEYPOINT_JOINTS)})")
        n = len(KEYPOINT_JOINTS[declared])
        if n != num_joints:
            raise DataError(f"{where}: {num_joints} joints, but layout {declared} has {n}")
        return declared
    fits = [name for name, joints in KEYPOINT_JOINTS.items() if len(joints) == num_joints]
    if not fits:
        known = ", ".join(f"{k} {len(v)}" for k, v in KEYPOINT_JOINTS.items())
        raise DataError(f"{where}: {num_joints} joints fit no known layout ({known})")
    if len(fits) > 1:
        raise DataError(f"{where}: {num_joints} joints fit {', '.join(fits)}: say which with --layout")
    return fits[0]


def _size(image_size: tuple[int, int] | None, where: str) -> tuple[int, int]:
    if image_size is None:
        raise DataError(f"{where}: the image size is not in the file: give it with --image-size WxH")
    w, h = image_size
    if w <= 0 or h <= 0:
        raise DataError(f"--image-size must be positive, got {w}x{h}")
    return int(w), int(h)


def _split_channels(a: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    if a.dtype.kind not in "fiu":
        raise DataError(f"{where}: not an array of numbers (dtype {a.dtype})")
    if a.ndim != 3 or a.shape[-1] not in (2, 3):
        raise DataError(f"{where}: expected (frames, joints, 2 or 3), got shape {a.shape}")
    if len(a) == 0:
        raise DataError(f"{where}: zero frames")
    a = a.astype(np.float32)
    score = a[..., 2] if a.shape[-1] == 3 else np.ones(a.shape[:2], np.float32)
    return a[..., :2], score


def read_keypoints(path: str | Path, layout: str | None = None, image_size: tuple[int, int] | None = None) -> KeypointFile:
    """Read a keypoint file in any supported format; one-line DataErrors for what does not fit."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: keypoint file not found")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            a = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise DataError(f"{path}: not a readable .npy array ({str(e).splitlines()[0]})") from None
        xy, score = _split_channels(np.asarray(a), str(path))
        if layout is None:
            raise DataError(f"{path}: a .npy file does not name its joint order: give it with --layout "
                            f"({', '.join(KEYPOINT_JOINTS)})")
        lay = layout_for(xy.shape[1], layout, str(path))
        return KeypointFile(path, "npy", lay, [Track(path.stem, xy, score, _size(image_size, str(path)))])
    if suffix == ".npz":
        return _read_videopose3d(path, layout, image_size)
    if suffix == ".json":
        return _read_json(path, layout, image_size)
    raise DataError(f"{path}: unknown keypoint format '{suffix}' (use .npz from VideoPose3D, COCO/MMPose .json, or .npy)")


def _read_videopose3d(path: Path, layout: str | None, image_size) -> KeypointFile:
    z = load_npz(path)
    if "positions_2d" not in z:
        raise DataError(f"{path}: no 'positions_2d' (not a VideoPose3D 2D keypoint file)")
    pos, meta = z["positions_2d"], z.get("metadata") or {}
    if not isinstance(pos, dict) or not pos:
        raise DataError(f"{path}: 'positions_2d' must be a non-empty dict video -> {{'custom': [array]}}")
    if not isinstance(meta, dict):
        raise DataError(f"{path}: 'metadata' must be a dict")
    declared = layout or VP3D_LAYOUTS.get(str(meta.get("layout_name", "")).lower())
    videos = meta.get("video_metadata") or {}
    tracks, lay = [], None
    for video, cams in pos.items():
        where = f"{path}: positions_2d['{video}']"
        arrays = list(cams.values()) if isinstance(cams, dict) else [cams]
        if not arrays:
            raise DataError(f"{where}: empty")
        for k, arr in enumerate(arrays):
            arr = arr[0] if isinstance(arr, (list, tuple)) and len(arr) == 1 else arr
            try:
                xy, score = _split_channels(np.asarray(arr), where)
            except (ValueError, TypeError):
                raise DataError(f"{where}: not an array of numbers") from None
            lay_k = layout_for(xy.shape[1], declared, where)
            if lay is not None and lay_k != lay:
                raise DataError(f"{where}: joint layout {lay_k}, but other videos are {lay}")
            lay = lay_k
            vm = videos.get(video) if isinstance(videos, dict) else None
            size = (int(vm["w"]), int(vm["h"])) if isinstance(vm, dict) and "w" in vm and "h" in vm else image_size
            name = str(video) if len(arrays) == 1 else f"{video}/{k}"
            tracks.append(Track(name, xy, score, _size(size, where)))
    return KeypointFile(path, "videopose3d-npz", lay, tracks)


def _frame_key(image_id, where: str):
    if isinstance(image_id, bool) or image_id is None:
        raise DataError(f"{where}: image_id must be a number or a name, got {image_id!r}")
    return image_id


def _read_json(path: Path, layout: str | None, image_size) -> KeypointFile:
    try:
        doc = json.loads(path.read_text())
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a text JSON file") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    people: dict = {}            # frame key -> list of (score, (J, 3) array)
    fmt = "coco-json"
    if isinstance(doc, dict) and "annotations" in doc:
        sizes = {(im.get("width"), im.get("height")) for im in doc.get("images", []) if isinstance(im, dict)}
        if image_size is None and len(sizes) == 1 and None not in next(iter(sizes)):
            image_size = next(iter(sizes))
        doc = doc["annotations"]
    if not isinstance(doc, list):
        raise DataError(f"{path}: expected a list of detections or frames (COCO results / MMPose), got {type(doc).__name__}")
    if not doc:
        raise DataError(f"{path}: zero frames")
    if all(isinstance(d, dict) and "instances" in d for d in doc):
        fmt = "mmpose-json"
        for i, frame in enumerate(doc):
            key = frame.get("frame_id", i)
            for inst in frame["instances"] or []:
                kp = np.asarray(inst.get("keypoints"), dtype=np.float64)
                sc = np.asarray(inst.get("keypoint_scores", np.ones(len(kp))), dtype=np.float64)
                if kp.ndim != 2 or kp.shape[-1] != 2 or sc.shape != (len(kp),):
                    raise DataError(f"{path}: frame {key}: keypoints must be [[x, y], ...] with one score each")
                people.setdefault(key, []).append((float(inst.get("bbox_score", 1.0)) * float(sc.mean()),
                                                   np.concatenate([kp, sc[:, None]], 1)))
            people.setdefault(key, [])
    else:
        for n, d in enumerate(doc):
            if not isinstance(d, dict) or "keypoints" not in d or "image_id" not in d:
                raise DataError(f"{path}: entry {n}: expected {{'image_id', 'keypoints': [x, y, score] * J}}")
            flat = d["keypoints"]
            if not isinstance(flat, list) or len(flat) % 3 or not flat:
                raise DataError(f"{path}: entry {n}: 'keypoints' must be a flat list [x, y, score] * J")
            try:
                kp = np.asarray(flat, dtype=np.float64).reshape(-1, 3)
            except (ValueError, TypeError):
                raise DataError(f"{path}: entry {n}: 'keypoints' holds values that are not numbers") from None
            key = _frame_key(d["image_id"], f"{path}: entry {n}")
            score = float(d.get("score", kp[:, 2].mean()))
            people.setdefault(key, []).append((score, kp))
    counts = {len(kp) for ps in people.values() for _, kp in ps}
    if not counts:
        raise DataError(f"{path}: no person detected in any frame")
    if len(counts) > 1:
        raise DataError(f"{path}: detections with different joint counts ({sorted(counts)})")
    J = counts.pop()
    lay = layout_for(J, layout or ("coco17" if J == 17 else None), str(path))     # COCO files: COCO's order
    keys = list(people)
    if all(isinstance(k, int) for k in keys):
        frames = list(range(min(keys), max(keys) + 1))       # frames nobody was detected in are missing
    else:
        frames = sorted(keys, key=lambda k: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(k))])
    a = np.full((len(frames), J, 3), np.nan, np.float32)
    for i, k in enumerate(frames):
        if people.get(k):
            a[i] = max(people[k], key=lambda p: p[0])[1]
    xy, score = a[..., :2], np.nan_to_num(a[..., 2], nan=0.0)
    return KeypointFile(path, fmt, lay, [Track(path.stem, xy, score, _size(image_size, str(path)))])


def check_image_size(track: Track, where: str) -> None:
    """Refuse an image size the coordinates contradict: normalised coordinates in [0, 1], or many
    keypoints far outside the image."""
    w, h = track.image_size
    pts = track.xy[np.isfinite(track.xy).all(-1)]
    if not len(pts):
        return
    if max(w, h) > 4 and pts.min() >= 0 and pts.max() <= 1.0:
        raise DataError(f"{where}: every coordinate lies within [0, 1]: normalised coordinates, not pixels "
                        f"of a {w}x{h} image")
    outside = ((pts[:, 0] < -0.1 * w) | (pts[:, 0] > 1.1 * w) | (pts[:, 1] < -0.1 * h) | (pts[:, 1] > 1.1 * h))
    if outside.mean() > 0.05:
        raise DataError(f"{where}: {outside.mean():.0%} of the keypoints lie outside a {w}x{h} image (x up to "
                        f"{pts[:, 0].max():.0f}, y up to {pts[:, 1].max():.0f} px): is the image size right?")


def to_layout(kf: KeypointFile, dst: str, min_score: float = 0.3) -> Mapped:
    """Map every track of `kf` onto layout `dst`, filling missing keypoints along time."""
    try:
        mapping = keypoint_mapping(kf.layout, dst)
    except ValueError:
        raise DataError(f"{kf.path}: keypoints in layout {kf.layout} cannot be mapped onto the run's skeleton "
                        f"{dst} (it was trained on another skeleton)") from None
    out = Mapped([], describe_mapping(kf.layout, dst))
    for t in kf.tracks:
        where = f"{kf.path}: {t.name}"
        check_image_size(t, where)
        xy = t.xy.copy()
        xy[(t.score < min_score) | ~np.isfinite(t.score)] = np.nan
        xy = np.stack([xy[:, list(ix)].mean(1) for ix in mapping], 1)       # NaN if any source is missing
        missing = ~np.isfinite(xy).all(-1)
        if missing.all():
            raise DataError(f"{where}: every keypoint is missing (NaN, or score below --min-score {min_score:g})")
        T = len(xy)
        frames = np.arange(T)
        for j in np.flatnonzero(missing.any(0)):
            seen = ~missing[:, j]
            if not seen.any():
                raise DataError(f"{where}: joint {out.mapping[j]['joint']} (from {', '.join(out.mapping[j]['from'])}) "
                                f"is missing in every frame")
            for c in range(2):
                xy[missing[:, j], j, c] = np.interp(frames[missing[:, j]], frames[seen], xy[seen, j, c])
        filled_frames = int(missing.any(1).sum())
        out.filled_keypoints += int(missing.sum())
        out.filled_frames += filled_frames
        out.per_track[t.name] = filled_frames
        out.tracks.append(Track(t.name, xy.astype(np.float32), (~missing).astype(np.float32), t.image_size))
    return out
