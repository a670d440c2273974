"""Human3.6M importer: VideoPose3D-layout npz files -> posectl Arrow shards.

Input (as VideoPose3D / PoseAug / DH-AUG / PoSynDA use it):
  data_3d_h36m.npz          positions_3d: subject -> action -> (T, 32, 3) metres, world frame
  data_2d_h36m_<src>.npz    positions_2d: subject -> action -> 4 camera arrays (T, J, 2+) pixels,
                            metadata (num_joints, keypoints_symmetry, maybe layout_name)
Ground-truth 2D is the projection of the 17 joints through the calibrated cameras (with the
Human3.6M distortion model). Detections are mapped to the 17-joint layout; 16-joint detections
(stacked hourglass in MPII order, or the 16-joint H36M order of PoseAug/DH-AUG HRNet files) lack
Neck/Nose, which is filled with the midpoint of Thorax and Head (recorded in the manifest).

Splits: train = S1, S5, S6, S7, S8 minus the last `val_fraction` of every sequence, which forms the
validation split (model selection never looks at the test subjects); test = S9, S11 (those present).
"""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa

from posectl.core.camera import Camera, cameras_from_json, h36m_cameras, project, world_to_camera
from posectl.core.skeleton import conversion_indices, get_layout, map_keypoints
from posectl.datasets.safe_npz import load_npz
from posectl.datasets.store import PoseArrays, check_new_output, table_from_arrays, write_splits
from posectl.errors import DataError

TRAIN_SUBJECTS = ("S1", "S5", "S6", "S7", "S8")
TEST_SUBJECTS = ("S9", "S11")
KNOWN_SUBJECTS = TRAIN_SUBJECTS + TEST_SUBJECTS + ("S2", "S3", "S4")
# sequences whose ground truth is known to be misaligned with the video (flag in benchmarks)
MISALIGNED = {("S9", "Greeting"), ("S9", "SittingDown 1"), ("S9", "Waiting 1")}


def source_name(path: Path) -> str:
    m = re.match(r"data_2d_h36m_(.+)\.npz$", path.name)
    return m.group(1) if m else path.stem


DETECTION_LAYOUTS = ("mpii16", "h36m16", "h36m17")   # joint orders of 2D files that map to h36m17


def _detection_layout(meta: dict, num_joints: int, name: str, override: str | None) -> str:
    if override:
        expected = get_layout(override).num_joints
        if num_joints != expected:
            raise ValueError(f"{num_joints} joints, but --2d-layout {override} has {expected}")
        return override
    layout = (meta or {}).get("layout_name")
    if num_joints == 17:
        return "h36m17"
    if num_joints == 16:
        if layout == "mpii" or (layout is None and name.startswith("sh")):
            return "mpii16"
        return "h36m16"
    raise ValueError(f"unsupported joint count {num_joints}")


def _as_float_array(x, where: str) -> np.ndarray:
    """An action's poses as a numeric array; a ragged list or an object array is a one-line DataError."""
    try:
        a = np.asarray(x)
    except (ValueError, TypeError):
        raise DataError(f"{where}: not an array of numbers (ragged or nested values)") from None
    if a.dtype.kind not in "fiu":
        raise DataError(f"{where}: not an array of numbers (dtype {a.dtype}, shape {a.shape})")
    return a


def _to_h36m17(kp: np.ndarray, layout: str) -> np.ndarray:
    """(T, J, 2) detections in `layout` -> (T, 17, 2), Neck/Nose the midpoint of Thorax and Head for
    16-joint layouts (core/skeleton.py: keypoint_mapping)."""
    if layout == "h36m17":
        return kp
    return map_keypoints(kp, layout, "h36m17").astype(np.float32)


def _check_subject_dict(obj, path: Path, key: str) -> dict:
    if not isinstance(obj, dict) or not obj:
        raise DataError(f"{path}: '{key}' must be a non-empty dict subject -> action -> array")
    for subject, actions in obj.items():
        if subject not in KNOWN_SUBJECTS:
            raise DataError(f"{path}: unknown subject '{subject}' (Human3.6M has {', '.join(KNOWN_SUBJECTS)})")
        if not isinstance(actions, dict):
            raise DataError(f"{path}: {key}['{subject}'] must be a dict action -> array")
        if not all(isinstance(a, str) for a in actions):
            raise DataError(f"{path}: {key}['{subject}'] has action names that are not strings")
    return obj


def _load_cameras(path: Path) -> dict[str, list[Camera]]:
    """cameras.json read and parsed; a missing, unreadable or malformed file is a DataError naming it."""
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: cameras file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read cameras file ({e.__class__.__name__})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    try:
        return cameras_from_json(obj)
    except DataError as e:
        raise DataError(f"{path}: {e}") from None


def prepare_h36m(out: str | Path, path_3d: str | Path, paths_2d: list[str | Path] = (),
                 cameras_json: str | Path | None = None, val_fraction: float = 0.1,
                 detection_layout: str | None = None, subjects: list[str] | None = None, overwrite: bool = False,
                 progress: Callable[[str], None] | None = None) -> Path:
    path_3d = Path(path_3d)
    say = progress or (lambda msg: None)
    if not 0 <= val_fraction < 0.5:
        raise DataError("--val-fraction must be in [0, 0.5)")
    if detection_layout is not None and detection_layout not in DETECTION_LAYOUTS:
        raise DataError(f"--2d-layout: unknown layout '{detection_layout}' (use {', '.join(DETECTION_LAYOUTS)})")
    check_new_output(out, overwrite)
    say(f"reading {path_3d}")
    pos3d = _check_subject_dict(load_npz(path_3d, ("positions_3d",))["positions_3d"], path_3d, "positions_3d")
    cams: dict[str, list[Camera]]
    if cameras_json:
        cams = _load_cameras(Path(cameras_json))
    else:
        cams = {s: h36m_cameras(s) for s in pos3d if s not in ("S2", "S3", "S4")}
    dets: dict[str, tuple[dict, str]] = {}
    for p in map(Path, paths_2d):
        say(f"reading {p}")
        d = load_npz(p, ("positions_2d",))
        meta = d.get("metadata") if isinstance(d.get("metadata"), dict) else {}
        dets[source_name(p)] = (_check_subject_dict(d["positions_2d"], p, "positions_2d"), meta, p)

    idx17 = list(conversion_indices("h36m32", "h36m17"))
    per_split: dict[str, list[pa.Table]] = {"train": [], "val": [], "test": []}
    det_info = {}
    if subjects:
        unknown = [s for s in subjects if s not in pos3d]
        if unknown:
            raise DataError(f"{path_3d}: no subject(s) {', '.join(unknown)} (has: {', '.join(pos3d)})")
    for subject in sorted(pos3d, key=lambda s: int(s[1:])):
        if subjects and subject not in subjects:
            continue
        if subject not in cams:
            raise DataError(f"{path_3d}: no camera calibration for subject {subject}")
        split_of_subject = "train" if subject in TRAIN_SUBJECTS else "test" if subject in TEST_SUBJECTS else None
        if split_of_subject is None:
            continue  # S2-S4 have no 3D in the benchmark protocol
        if not pos3d[subject]:
            raise DataError(f"{path_3d}: subject {subject} has no actions")
        say(f"converting {subject}")
        for action, X in sorted(pos3d[subject].items()):
            where = f"{path_3d}: {subject} '{action}'"
            X = _as_float_array(X, where)
            if X.ndim != 3 or X.shape[1:] != (32, 3):
                raise DataError(f"{where}: expected shape (T, 32, 3), got {X.shape}")
            if len(X) == 0:
                raise DataError(f"{where}: 0 frames")
            if not np.isfinite(X).all():
                raise DataError(f"{where}: NaN/Inf values")
            X17 = X[:, idx17].astype(np.float64)
            T = len(X17)
            det_arrays = {}
            for src, (pos2d, meta, p) in dets.items():
                if subject not in pos2d or action not in pos2d[subject]:
                    raise DataError(f"{p}: no 2D for {subject} '{action}' (present in the 3D file)")
                views = pos2d[subject][action]
                if not isinstance(views, (list, tuple)) or len(views) != len(cams[subject]):
                    raise DataError(f"{p}: {subject} '{action}': expected {len(cams[subject])} camera arrays")
                det_arrays[src] = []
                for ci, v in enumerate(views):
                    w2 = f"{p}: {subject} '{action}' camera {ci}"
                    v = _as_float_array(v, w2)
                    if v.ndim != 3 or v.shape[-1] < 2 or v.shape[1] not in (16, 17):
                        raise DataError(f"{w2}: expected (T, 16|17, 2), got {v.shape}")
                    if len(v) < T:
                        raise DataError(f"{w2}: {len(v)} 2D frames but {T} 3D frames")
                    v = v[:T, :, :2].astype(np.float32)  # VideoPose3D: cut 2D to the mocap length
                    if not np.isfinite(v).all():
                        raise DataError(f"{w2}: NaN/Inf values")
                    try:
                        layout = _detection_layout(meta, v.shape[1], src, detection_layout)
                    except ValueError as e:
                        raise DataError(f"{w2}: {e}") from None
                    det_info[src] = {"layout": layout, "filled": ["Neck/Nose"] if layout != "h36m17" else []}
                    det_arrays[src].append(_to_h36m17(v, layout))
            n_val = int(round(T * val_fraction)) if split_of_subject == "train" else 0
            for ci, cam in enumerate(cams[subject]):
                Xc = world_to_camera(X17, cam.R, cam.t)
                uv = project(Xc, cam.intrinsics.astype(np.float64))
                arr = PoseArrays(uv.astype(np.float32), Xc.astype(np.float32),
                                 np.broadcast_to(cam.intrinsics, (T, 9)), np.broadcast_to([cam.width, cam.height], (T, 2)),
                                 np.full(T, subject), np.full(T, action), np.full(T, cam.id), np.arange(T))
                ext = np.broadcast_to(np.concatenate([cam.R.ravel(), cam.t]).astype(np.float32), (T, 12))
                det = {src: a[ci] for src, a in det_arrays.items()}
                cut = T - n_val
                pieces = [("train", slice(0, cut)), ("val", slice(cut, T))] if split_of_subject == "train" \
                    else [("test", slice(0, T))]
                for split, sl in pieces:
                    if sl.stop > sl.start:
                        per_split[split].append(table_from_arrays(
                            arr.take(sl), "h36m", "h36m", ext[sl], {k: v[sl] for k, v in det.items()}))
    if not any(per_split.values()):
        raise DataError(f"{path_3d}: nothing to write (no frames of S1, S5-S9 or S11"
                        f"{' among ' + ', '.join(subjects) if subjects else ''})")
    missing = [s for s in TEST_SUBJECTS if s not in pos3d and (not subjects or s in subjects)]
    if missing:
        warnings.warn(f"test subject(s) {', '.join(missing)} not in {path_3d.name}: the test split has "
                      f"{', '.join(s for s in TEST_SUBJECTS if s in pos3d) or 'no subject'} only", stacklevel=2)
    info = {"source": "human3.6m", "file_3d": path_3d.name, "files_2d": [Path(p).name for p in paths_2d],
            "val_fraction": val_fraction, "val_protocol": "last fraction of every training sequence",
            "test_subjects_missing": missing, "detections": det_info, "fps": 50,
            "misaligned_sequences": sorted(f"{s} {a}" for s, a in MISALIGNED)}
    say("writing shards")
    return write_splits(out, "h36m", "h36m17", per_split, info, overwrite)


def cached_h36m(path_3d: str | Path) -> Path:
    """Prepare `data_3d_h36m.npz` (GT 2D only) once into the posectl cache and return the directory;
    keyed by the file's resolved path and size (benchmarks share it) and the version of the built-in
    cameras that project its 2D (v2: constants corrected in 1820ba4)."""
    import hashlib
    import os

    from posectl.datasets.synthetic import cache_dir
    key = hashlib.sha256(f"{Path(path_3d).resolve()}:{os.path.getsize(path_3d)}".encode()).hexdigest()[:10]
    out = cache_dir() / f"h36m-gt-cams2-{key}"
    if not (out / "manifest.json").exists():
        print(f"preparing {path_3d} -> {out}")
        prepare_h36m(out, path_3d)
    return out
