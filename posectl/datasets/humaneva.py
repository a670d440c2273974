"""HumanEva-I importer: VideoPose3D-layout npz files -> posectl Arrow shards in the h36m17 layout.

Input (VideoPose3D's `data_3d_humaneva15.npz` / `data_2d_humaneva15_gt.npz`, and detections in that layout):
  positions_3d: '<Train|Validate>/<S1|S2|S3>' -> '<Action> <take> chunk<k>' -> (T, 15, 3) metres, world frame
  positions_2d: the same keys -> a list of one (T, 15, 2+) pixel array per colour camera (C1, C2, C3)
Joints (HumanEva-15, core/skeleton.py): mapped to h36m17 with Spine (pelvis-thorax midpoint) and
Neck/Nose (thorax-head midpoint) derived, in 3D and in 2D; the mapping is in the manifest.

The files carry no calibration: each camera of a subject's session is recovered by a DLT over all its
2D-3D pairs (core/calibration.py); the 3D is moved into that camera's frame, and the reprojection error
is reported (manifest `cameras`, `posectl data info`). The 2D of the 15 joints is the file's.

Splits: `Train/*` takes -> train, the last `val_fraction` of every sequence -> val; `Validate/*` takes ->
test when the file has them; `test_subjects` (e.g. Train/S3) moves whole training subjects to test.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa

from posectl.core.calibration import calibrate
from posectl.core.skeleton import describe_mapping, map_keypoints
from posectl.datasets.h36m import _as_float_array
from posectl.datasets.safe_npz import load_npz
from posectl.datasets.store import PoseArrays, check_new_output, table_from_arrays, write_splits
from posectl.errors import DataError

CAMERAS = ("C1", "C2", "C3")
IMAGE_SIZE = (640, 480)          # HumanEva-I colour cameras
FPS = 60
MAX_REPROJECTION_PX = 5.0        # a recovered camera worse than this (median) means the 2D and 3D do not match


def _subjects(obj, path: Path, key: str) -> dict:
    if not isinstance(obj, dict) or not obj:
        raise DataError(f"{path}: '{key}' must be a non-empty dict subject -> take -> array")
    for subject, takes in obj.items():
        if not isinstance(subject, str) or not re.fullmatch(r"(Train|Validate)/S\d+", subject):
            raise DataError(f"{path}: unknown subject '{subject}' (HumanEva keys look like Train/S1 or Validate/S2)")
        if not isinstance(takes, dict) or not takes:
            raise DataError(f"{path}: {key}['{subject}'] must be a non-empty dict take -> array")
    return obj


def prepare_humaneva(out: str | Path, path_3d: str | Path, paths_2d: list[str | Path], val_fraction: float = 0.1,
                     test_subjects: list[str] | None = None, overwrite: bool = False,
                     progress: Callable[[str], None] | None = None) -> Path:
    path_3d = Path(path_3d)
    say = progress or (lambda msg: None)
    if not 0 <= val_fraction < 0.5:
        raise DataError("--val-fraction must be in [0, 0.5)")
    if not paths_2d:
        raise DataError("HumanEva needs the 2D file too (--2d data_2d_humaneva15_gt.npz): the cameras are "
                        "recovered from it")
    check_new_output(out, overwrite)
    say(f"reading {path_3d}")
    pos3d = _subjects(load_npz(path_3d, ("positions_3d",))["positions_3d"], path_3d, "positions_3d")
    sources = {}
    for p in map(Path, paths_2d):
        say(f"reading {p}")
        d = load_npz(p, ("positions_2d",))
        m = re.match(r"data_2d_humaneva15_(.+?)(_train)?\.npz$", p.name)
        sources[m.group(1) if m else p.stem] = (_subjects(d["positions_2d"], p, "positions_2d"), p)
    if "gt" not in sources:
        raise DataError("one --2d file must be the ground-truth 2D (data_2d_humaneva15_gt*.npz): the cameras are "
                        "recovered from it")
    test_subjects = list(test_subjects or [])
    unknown = [s for s in test_subjects if s not in pos3d]
    if unknown:
        raise DataError(f"--test-subject: no subject(s) {', '.join(unknown)} in {path_3d} (has: {', '.join(pos3d)})")
    to17 = lambda a: map_keypoints(a, "humaneva15", "h36m17")           # noqa: E731
    gt2d = sources["gt"][0]
    per_split: dict[str, list[pa.Table]] = {"train": [], "val": [], "test": []}
    cam_info = {}
    for subject in sorted(pos3d):
        takes = {}
        for take, X in sorted(pos3d[subject].items()):
            where = f"{path_3d}: {subject} '{take}'"
            X = _as_float_array(X, where)
            if X.ndim != 3 or X.shape[1:] != (15, 3):
                raise DataError(f"{where}: expected shape (T, 15, 3) (HumanEva-15), got {X.shape}")
            if len(X) == 0 or not np.isfinite(X).all():
                raise DataError(f"{where}: {'0 frames' if len(X) == 0 else 'NaN/Inf values'}")
            views = {}
            for src, (pos2d, p) in sources.items():
                vs = pos2d.get(subject, {}).get(take)
                if vs is None:
                    raise DataError(f"{p}: no 2D for {subject} '{take}' (present in the 3D file)")
                if not isinstance(vs, (list, tuple)) or len(vs) != len(CAMERAS):
                    raise DataError(f"{p}: {subject} '{take}': expected {len(CAMERAS)} camera arrays (C1, C2, C3)")
                arrs = []
                for ci, v in enumerate(vs):
                    w2 = f"{p}: {subject} '{take}' camera {CAMERAS[ci]}"
                    v = _as_float_array(v, w2)
                    if v.ndim != 3 or v.shape[1] != 15 or v.shape[2] < 2:
                        raise DataError(f"{w2}: expected (T, 15, 2), got {v.shape}")
                    if len(v) != len(X):
                        raise DataError(f"{w2}: {len(v)} 2D frames but {len(X)} 3D frames")
                    if not np.isfinite(v[..., :2]).all():
                        raise DataError(f"{w2}: NaN/Inf values")
                    arrs.append(v[..., :2].astype(np.float64))
                views[src] = arrs
            takes[take] = (X.astype(np.float64), views)
        # one camera per subject session and view, from every 2D-3D pair of its takes
        cams = []
        for ci, cid in enumerate(CAMERAS):
            Xall = np.concatenate([X.reshape(-1, 3) for X, _ in takes.values()])
            uall = np.concatenate([v["gt"][ci].reshape(-1, 2) for _, v in takes.values()])
            try:
                K, R, t, err = calibrate(Xall, uall)
            except (ValueError, np.linalg.LinAlgError) as e:
                raise DataError(f"{path_3d}: {subject} camera {cid}: no camera fits its 2D-3D pairs ({e}): the 2D and "
                                f"3D files do not belong together") from None
            med = float(np.median(err))
            if med > MAX_REPROJECTION_PX:
                raise DataError(f"{path_3d}: {subject} camera {cid}: the recovered camera reprojects with a median "
                                f"error of {med:.1f} px: the 2D and 3D files do not belong together")
            cams.append((cid, K, R, t))
            cam_info[f"{subject}/{cid}"] = {"fx": K[0, 0], "fy": K[1, 1], "cx": K[0, 2], "cy": K[1, 2],
                                            "skew": K[0, 1], "reprojection_px_median": med,
                                            "reprojection_px_p95": float(np.percentile(err, 95)),
                                            "pairs": int(len(err))}
        split = "test" if subject.startswith("Validate/") or subject in test_subjects else "train"
        say(f"converting {subject} ({split})")
        for take, (X, views) in takes.items():
            T = len(X)
            X17 = to17(X)
            n_val = int(round(T * val_fraction)) if split == "train" else 0
            for ci, (cid, K, R, t) in enumerate(cams):
                Xc = X17 @ R.T + t
                intr = np.array([K[0, 0], K[1, 1], K[0, 2], K[1, 2], 0, 0, 0, 0, 0], np.float32)
                arr = PoseArrays(to17(views["gt"][ci]).astype(np.float32), Xc.astype(np.float32),
                                 np.broadcast_to(intr, (T, 9)), np.broadcast_to(IMAGE_SIZE, (T, 2)),
                                 np.full(T, subject), np.full(T, take), np.full(T, cid), np.arange(T))
                ext = np.broadcast_to(np.concatenate([R.ravel(), t]).astype(np.float32), (T, 12))
                det = {src: to17(v[ci]).astype(np.float32) for src, v in views.items() if src != "gt"}
                cut = T - n_val
                pieces = [("train", slice(0, cut)), ("val", slice(cut, T))] if split == "train" else [("test", slice(0, T))]
                for name, sl in pieces:
                    if sl.stop > sl.start:
                        per_split[name].append(table_from_arrays(arr.take(sl), "humaneva", "humaneva", ext[sl],
                                                                 {k: v[sl] for k, v in det.items()}))
    if not per_split["test"]:
        warnings.warn(f"{path_3d.name} has no Validate/* takes: no test split (hold a subject out with "
                      f"--test-subject Train/S3)", stacklevel=2)
    info = {"source": "humaneva-i", "file_3d": path_3d.name, "files_2d": [Path(p).name for p in paths_2d],
            "val_fraction": val_fraction, "val_protocol": "last fraction of every training sequence",
            "test_subjects": sorted({s for s in pos3d if s.startswith("Validate/")} | set(test_subjects)),
            "fps": FPS, "image_size": list(IMAGE_SIZE), "joint_layout_in": "humaneva15",
            "mapping_to_h36m17": describe_mapping("humaneva15", "h36m17"),
            "cameras": cam_info, "cameras_from": "DLT over each subject session's 2D-3D pairs (no calibration in the files)",
            "detections": {k: {"layout": "humaneva15"} for k in sources if k != "gt"}}
    say("writing shards")
    return write_splits(out, "humaneva", "h36m17", per_split, info, overwrite)
