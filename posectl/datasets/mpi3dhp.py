"""MPI-INF-3DHP test-set importer: three derived npz forms -> a posectl dataset in the h36m17 layout.

Forms (see docs/data.md):
  poseaug  PoseAug / DH-AUG `test_3dhp.npz`: pose3d (N, 16, 3) metres root-relative (univ_annot3, H36M-16
           order) and pose2d (N, 16, 2) screen-normalised (by width). No sequence ids: one image size is
           assumed for every frame (default 2048x2048 = TS1-TS4; TS5/TS6 frames were normalised by 1920).
  pstmo    P-STMO / MixSTE `data_test_3dhp.npz`: data = {seq: {data_3d (T, 17, 3) mm or m, data_2d
           (T, 17, 2) px, valid (T,)}} in the official 17-joint order (root 14). Invalid frames are dropped.
  mmpose   mmpose `mpi_inf_3dhp_test_valid.npz`-style: imgname, S (N, 17, 4) camera-frame metres (annot3)
           + inside-image flag, part (N, 17, 3) px + flag; intrinsics from an optional cameras pkl
           (`cameras_test.pkl` / `cameras_train.pkl`: name -> {c, f, w, h, (R, T)}).

Output: joints mapped to h36m17 by joint names (head_top -> Head, neck -> Thorax, head -> Neck/Nose); the
16-joint PoseAug file lacks Neck/Nose, filled with the midpoint of Thorax and Head (2D and 3D). 3D that is
root-relative (no depth) is placed in the camera frame by estimating the root translation per frame that
best reprojects it onto the given 2D with the sequence intrinsics (least squares, reweighted to pixel
error); the stored 2D is always the original 2D, and the remaining reprojection error is recorded in the
manifest. All rows go to split `test`; subject = sequence (TS1..TS6), action = sequence (the forms carry
no activity labels), extrinsics are null.
"""
from __future__ import annotations

import dataclasses
import re
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa

from posectl.core.camera import image_coordinates, project
from posectl.core.skeleton import EVAL_JOINT_SETS, H36M16, MPI3DHP17, conversion_indices
from posectl.datasets.safe_npz import UnsafePickleError, _RestrictedUnpickler, load_npz, not_a_file
from posectl.datasets.store import DatasetWriter, PoseArrays, check_new_output, table_from_arrays
from posectl.errors import DataError

DATASET = "mpi_inf_3dhp"
FORMS = ("poseaug", "pstmo", "mmpose")
_FORM_KEYS = {"poseaug": ("pose3d", "pose2d"), "pstmo": ("data",), "mmpose": ("imgname", "S", "part")}
ROOT_3DHP = MPI3DHP17.root  # 14, pelvis
WARN_REPROJECTION_PX = 3.0  # warn when camera-frame 3D and 2D disagree by more (median)

# Evaluation joint sets, as h36m17 indices (0 Hip, 7 Spine, 9 Neck/Nose = 3DHP 'head', 10 Head = head_top).
# Evaluation joint sets in h36m17 indices (defined once in core.skeleton):
#   all = the official 17-joint evaluation; 16 = PoseAug/DH-AUG (no Neck/Nose, which their file lacks);
#   14 = PoseFormer / MixSTE / P-STMO copies (no pelvis, spine, 3DHP 'head' -> Neck/Nose)
JOINT_SETS = {k: list(v) for k, v in EVAL_JOINT_SETS.items()}


def _intrinsics_from_sensor(focal_mm: float, offset_mm: tuple[float, float], sensor_mm: tuple[float, float],
                            size: tuple[int, int]) -> np.ndarray:
    """Pinhole intrinsics (9-vector, no distortion) from the 3DHP test camera's sensor description."""
    sx, sy = size[0] / sensor_mm[0], size[1] / sensor_mm[1]
    return np.array([focal_mm * sx, focal_mm * sy, size[0] / 2 + offset_mm[0] * sx,
                     size[1] / 2 + offset_mm[1] * sy, 0, 0, 0, 0, 0], dtype=np.float64)


# Test-sequence cameras as PoSynDA uses them (docs/data.md): f ~ 1500 px (TS1-4), ~ 1684 px (TS5-6).
_STUDIO = ((2048, 2048), _intrinsics_from_sensor(7.32506, (-0.0322884, 0.0929296), (10, 10), (2048, 2048)))
_OUTDOOR = ((1920, 1080), _intrinsics_from_sensor(8.770747185, (-0.104908645, 0.104899704), (10, 5.625),
                                                   (1920, 1080)))
TEST_CAMERAS: dict[str, tuple[tuple[int, int], np.ndarray]] = {
    "TS1": _STUDIO, "TS2": _STUDIO, "TS3": _STUDIO, "TS4": _STUDIO, "TS5": _OUTDOOR, "TS6": _OUTDOOR}
_BY_SIZE = {(2048, 2048): _STUDIO, (1920, 1080): _OUTDOOR}

_TEST_NAME = re.compile(r"^(?:.*/)?(TS\d+)_(\d+)\.\w+$")                       # TS1_002001.jpg
_TRAIN_NAME = re.compile(r"^(?:.*/)?(S\d+)_(Seq\d+)_(Cam\d+)_(\d+)\.\w+$")     # S4_Seq2_Cam0_001033.jpg
_TRAIN_CAM = re.compile(r"^S\d+_Seq\d+_Cam\d+$")

PROTOCOLS = {
    "poseaug": [
        {"name": "poseaug-pck-auc", "joint_set": "16", "note": "PoseAug/DH-AUG: 16 joints incl. root, root-centred, "
         "flip TTA, PCK@150 mm, AUC = mean PCK over linspace(0, 150, 31); 3D is univ_annot3 scale"},
        {"name": "mpjpe", "joint_set": "16", "note": "root-relative MPJPE on the 16 original joints"},
    ],
    "pstmo": [
        {"name": "3dhp-pck-auc-17", "joint_set": "all", "note": "official: 17 joints, pelvis aligned, PCK@150 mm, "
         "AUC over 0..150 mm step 5, valid frames, univ_annot3 scale"},
        {"name": "3dhp-pck-auc-14", "joint_set": "14", "note": "PoseFormer/MixSTE/P-STMO: pelvis, spine, head dropped"},
        {"name": "mpjpe", "joint_set": "all", "note": "root-relative MPJPE"},
    ],
    "mmpose": [
        {"name": "3dhp-pck-auc-17", "joint_set": "all", "note": "official joint set; but this file is annot3 "
         "(true scale), published 3DHP numbers use univ_annot3: not directly comparable"},
        {"name": "3dhp-pck-auc-14", "joint_set": "14", "note": "PoseFormer/MixSTE/P-STMO joint set (same caveat)"},
        {"name": "mpjpe", "joint_set": "all", "note": "root-relative MPJPE"},
    ],
}


# ---------------------------------------------------------------------------------------------- helpers

def _array(x, where: str, name: str, tail: tuple[int, ...], finite: bool = True) -> np.ndarray:
    """Numeric array (T, *tail') where tail entries of -1 mean 'any of at least 2'."""
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{where}: {name} is not a numeric array") from None
    shape_ok = a.ndim == 1 + len(tail) and all(t == -1 or s == t for s, t in zip(a.shape[1:], tail))
    if not shape_ok:
        want = ", ".join(["T"] + [str(t) if t != -1 else "*" for t in tail])
        raise DataError(f"{where}: {name}: expected shape ({want}), got {a.shape}")
    if len(a) == 0:
        raise DataError(f"{where}: {name}: 0 frames")
    if finite and not np.isfinite(a).all():
        raise DataError(f"{where}: {name}: NaN/Inf values")
    return a


def _check_tail(a: np.ndarray, where: str, name: str, choices: tuple[int, ...]) -> None:
    if a.shape[-1] not in choices:
        raise DataError(f"{where}: {name}: last dimension must be {' or '.join(map(str, choices))}, got {a.shape}")


def _units_to_metres(rel: np.ndarray, where: str) -> tuple[float, str]:
    """Detect mm vs m from the skeleton's extent around its root (a person spans ~0.3-1.2 m)."""
    extent = float(np.median(np.linalg.norm(rel, axis=-1).max(axis=-1)))
    if 20.0 < extent < 3000.0:
        return 1e-3, "mm"
    if 0.02 < extent < 3.0:
        return 1.0, "m"
    raise DataError(f"{where}: cannot tell whether 3D is in mm or m (median joint distance from the root "
                    f"{extent:.3g})")


def place_root(rel: np.ndarray, uv: np.ndarray, intrinsics: np.ndarray, iterations: int = 4) -> np.ndarray:
    """Root translation t (N, 3) such that project(rel + t) best matches uv (N, J, 2) px.

    Each joint gives two equations linear in t (u - cx)(z + tz) = fx (x + tx), likewise for v; they are
    solved by least squares per frame and reweighted by 1/depth so the residual approximates pixels.
    """
    K = np.broadcast_to(np.asarray(intrinsics, dtype=np.float64), (len(rel), 9))
    fx, fy, cx, cy = (K[:, i:i + 1] for i in range(4))
    x, y, z = rel[..., 0], rel[..., 1], rel[..., 2]
    du, dv = uv[..., 0] - cx, uv[..., 1] - cy
    N, J = x.shape
    A = np.zeros((N, 2 * J, 3))
    A[:, :J, 0] = fx
    A[:, :J, 2] = -du
    A[:, J:, 1] = fy
    A[:, J:, 2] = -dv
    b = np.concatenate([du * z - fx * x, dv * z - fy * y], axis=1)
    w = np.ones((N, 2 * J))
    t = np.zeros((N, 3))
    for _ in range(iterations):
        Aw, bw = A * w[..., None], b * w
        t = np.linalg.solve(np.einsum("nki,nkj->nij", Aw, Aw), np.einsum("nki,nk->ni", Aw, bw)[..., None])[..., 0]
        depth = z + t[:, 2:3]
        if (depth <= 0).any():
            break
        inv = 1.0 / depth
        w = np.concatenate([inv, inv], axis=1) / inv.mean(axis=1, keepdims=True)
    return t


def _to_camera_frame(X: np.ndarray, uv: np.ndarray, K: np.ndarray, root: int, where: str) -> tuple[np.ndarray, dict]:
    """3D (T, J, 3) mm/m, root-relative or camera-frame -> camera-frame metres, with a note of what was done."""
    scale, units = _units_to_metres(X - X[:, root:root + 1], where)
    X = X * scale
    root_offset = float(np.abs(X[:, root]).max())
    if root_offset < 1e-4:
        try:
            t = place_root(X, uv, K)
        except np.linalg.LinAlgError:
            raise DataError(f"{where}: cannot estimate the root depth (degenerate 2D)") from None
        Xc = X + t[:, None, :]
        bad = np.flatnonzero((Xc[..., 2] <= 0.05).any(axis=1))
        if len(bad):
            raise DataError(f"{where}: frame {bad[0]}: estimated root depth puts joints behind the camera "
                            f"(2D and 3D disagree)")
        return Xc, {"units_in": units, "3d_in": "root-relative", "root_depth_m": [float(t[:, 2].min()),
                                                                                float(t[:, 2].max())]}
    if (X[..., 2] <= 0).any():
        raise DataError(f"{where}: 3D is neither root-relative (root at 0) nor in front of the camera (z <= 0)")
    return X, {"units_in": units, "3d_in": "camera-frame"}


def _residual_stats(X: np.ndarray, uv: np.ndarray, K: np.ndarray, joints: list[int] | None = None) -> dict:
    err = np.linalg.norm(project(X, np.broadcast_to(K, (len(X), 9))) - uv, axis=-1)
    if joints is not None:
        err = err[:, joints]
    return {"median_px": round(float(np.median(err)), 4), "p95_px": round(float(np.percentile(err, 95)), 4),
            "max_px": round(float(err.max()), 4)}


def _warn_if_inconsistent(stats: dict, note: dict, where: str) -> None:
    if note.get("3d_in") == "camera-frame" and stats["median_px"] > WARN_REPROJECTION_PX:
        warnings.warn(f"{where}: camera-frame 3D reprojects {stats['median_px']:.1f} px (median) from the 2D: "
                      f"intrinsics do not match (pass --cameras) or the 3D is rescaled (univ_annot3)", stacklevel=3)


def _fill_neck_nose(a16: np.ndarray) -> np.ndarray:
    """(T, 16, D) in h36m16 order -> (T, 17, D) h36m17 with Neck/Nose = midpoint of Thorax and Head."""
    out = np.empty((len(a16), 17, a16.shape[-1]), dtype=a16.dtype)
    out[:, JOINT_SETS["16"]] = a16
    out[:, 9] = 0.5 * (out[:, 8] + out[:, 10])
    return out


def load_cameras(path: str | Path) -> tuple[dict[str, tuple[tuple[int, int], np.ndarray]], list[str]]:
    """mmpose-style cameras pkl -> {name: ((w, h), intrinsics 9-vector)} and notes on corrections made.

    Unpickled with the restricted unpickler (numpy arrays and plain containers only).
    """
    p = Path(path)
    if not p.is_file():
        raise not_a_file(p)
    try:
        with open(p, "rb") as f:
            obj = _RestrictedUnpickler(f, encoding="latin1").load()
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{p}: {e} (only arrays and plain containers are allowed)") from None
    except Exception as e:      # any other failure of the restricted unpickler on these bytes
        raise DataError(f"{p}: not a readable cameras pickle ({type(e).__name__}: {str(e)[:80]})") from None
    if not isinstance(obj, dict) or not obj:
        raise DataError(f"{p}: expected a non-empty dict camera name -> {{c, f, w, h}}")
    cams, notes = {}, []
    for name, c in obj.items():
        where = f"{p}: camera '{name}'"
        if not isinstance(name, str) or not isinstance(c, dict):
            raise DataError(f"{where}: expected a dict with c, f, w, h")
        missing = [k for k in ("c", "f", "w", "h") if k not in c]
        if missing:
            raise DataError(f"{where}: missing {', '.join(missing)}")
        try:
            f = np.asarray(c["f"], dtype=np.float64).reshape(-1)
            cc = np.asarray(c["c"], dtype=np.float64).reshape(-1)
            w, h = float(c["w"]), float(c["h"])
        except (TypeError, ValueError):
            raise DataError(f"{where}: c, f, w, h must be numbers") from None
        if f.size != 2 or cc.size != 2 or not np.isfinite(np.r_[f, cc, w, h]).all() or (f <= 0).any() \
                or w <= 0 or h <= 0:
            raise DataError(f"{where}: f and c must be 2 finite values (f > 0), w and h positive")
        if not (0 < cc[0] < w and 0 < cc[1] < h):
            # mmpose's cameras_train.pkl stores h = 204 (a parsing slip); all 3DHP training videos are 2048x2048
            if _TRAIN_CAM.match(name) and w == 2048:
                notes.append(name)
                h = 2048.0
            else:
                raise DataError(f"{where}: principal point {cc.round(1).tolist()} outside the {w:g}x{h:g} image")
        cams[name] = ((int(round(w)), int(round(h))), np.array([*f, *cc, 0, 0, 0, 0, 0], dtype=np.float64))
    if notes:
        notes = [f"{p.name}: image height of {len(notes)} training camera(s) ({notes[0]}"
                 f"{', ...' if len(notes) > 1 else ''}) is below the principal point; set to 2048 "
                 f"(3DHP training videos are 2048x2048; mmpose's file stores h = 204)"]
    return cams, notes


def _camera_for(seq: str, cams: dict | None, where: str, cam_file: Path | None):
    if cams is not None and seq in cams:
        return cams[seq], f"{cam_file.name}"
    if seq in TEST_CAMERAS:
        return TEST_CAMERAS[seq], "built-in TS1-TS6 intrinsics (PoSynDA sensor model, docs/data.md)"
    if cams is not None:
        raise DataError(f"{where}: no camera '{seq}' in {cam_file} (has: {', '.join(sorted(cams)[:8])}"
                        f"{', ...' if len(cams) > 8 else ''})")
    raise DataError(f"{where}: no built-in intrinsics for '{seq}': pass the cameras file (--cameras)")


# ------------------------------------------------------------------------------------------------ forms

def _detect_form(d: dict, path: Path) -> str:
    for form, keys in _FORM_KEYS.items():
        if all(k in d for k in keys):
            return form
    raise DataError(f"{path}: cannot tell the 3DHP form from keys {', '.join(sorted(d)) or 'none'} "
                    f"(expected pose3d+pose2d, data, or imgname+S+part)")


def _seq_arrays(seq, action, camera, uv17, X17, K, size, frames) -> PoseArrays:
    T = len(frames)
    return PoseArrays(uv17.astype(np.float32), X17.astype(np.float32), np.broadcast_to(K, (T, 9)),
                      np.broadcast_to(np.asarray(size, dtype=np.int32), (T, 2)), np.full(T, seq),
                      np.full(T, action), np.full(T, camera), np.asarray(frames, dtype=np.int64))


def _read_poseaug(d: dict, path: Path, image_size) -> tuple[list[PoseArrays], dict]:
    where = f"{path}"
    X = _array(d["pose3d"], where, "pose3d", (16, 3))
    xy = _array(d["pose2d"], where, "pose2d", (16, 2))
    if len(X) != len(xy):
        raise DataError(f"{where}: {len(xy)} 2D frames but {len(X)} 3D frames")
    size = tuple(int(v) for v in (image_size or (2048, 2048)))
    if size not in _BY_SIZE:
        raise DataError(f"{where}: image size {size[0]}x{size[1]} is not a 3DHP test size (2048x2048 or 1920x1080)")
    K = _BY_SIZE[size][1]
    uv = image_coordinates(xy, size[0], size[1])
    rel = X - X[:, :1]   # root-centre (the file is pelvis-centred already)
    Xc, note = _to_camera_frame(rel, uv, K, 0, where)
    res = _residual_stats(Xc, uv, K)
    uv17, X17 = _fill_neck_nose(uv), _fill_neck_nose(Xc)
    seq = "TS1-TS6"
    arr = _seq_arrays(seq, seq, "nominal", uv17, X17, K, size, np.arange(len(X)))
    info = {
        "joint_order_in": "h36m16 (PoseAug/DH-AUG: Hip, RHip, RKnee, RFoot, LHip, LKnee, LFoot, Spine, Thorax, "
                          "Head, LShoulder, LElbow, LWrist, RShoulder, RElbow, RWrist; Thorax = 3DHP neck, "
                          "Head = 3DHP head_top; 3DHP 'head' is absent)",
        "joint_names_in": list(H36M16.joints),
        "mapping_to_h36m17": [None if j == 9 else JOINT_SETS["16"].index(j) for j in range(17)],
        "filled": ["Neck/Nose"], "filled_how": "midpoint of Thorax and Head (2D and 3D)",
        "scale_source": "univ_annot3",
        "scale_note": "SPIN test preprocessing (univ_annot3 / 1000, pelvis-centred); assumed from the file's "
                      "provenance, not checkable from the data",
        "image_size_assumed": list(size),
        "image_size_note": "the file has no sequence ids; every frame is taken as "
                           f"{size[0]}x{size[1]} (PoseAug normalised TS5/TS6 by 1920x1080, TS1-TS4 by 2048x2048), "
                           "so frames of the other sequences get wrong pixel coordinates",
        "intrinsics_source": "built-in 3DHP test intrinsics for that image size (docs/data.md)",
        "root_placement": "estimated: 3D is root-relative; per frame the root translation that best reprojects "
                          "it onto the 2D (least squares, pixel-reweighted) with the assumed intrinsics. Depth "
                          "is approximate (univ_annot3 is rescaled, so it absorbs the scale); 2D is the original",
        **note, "reprojection_px": res, "frames": len(X),
        "sequences": {seq: {"frames": len(X)}},
    }
    return [arr], info


def _read_pstmo(d: dict, path: Path, cams, cam_file, cam_notes) -> tuple[list[PoseArrays], dict]:
    data = d["data"]
    if not isinstance(data, dict) or not data:
        raise DataError(f"{path}: 'data' must be a non-empty dict sequence -> {{data_3d, data_2d, valid}}")
    idx = list(conversion_indices("3dhp17", "h36m17"))
    arrays, seqs, residuals, units = [], {}, {}, set()
    for seq in sorted(data, key=str):
        entry = data[seq]
        where = f"{path}: sequence {seq}"
        if isinstance(entry, (list, tuple)):
            raise DataError(f"{where}: looks like the training-file layout (sequence -> list of cameras): "
                            f"import it with --train, beside a test file")
        if not isinstance(entry, dict):
            raise DataError(f"{where}: expected a dict with data_3d, data_2d, valid")
        missing = [k for k in ("data_3d", "data_2d", "valid") if k not in entry]
        if missing:
            raise DataError(f"{where}: missing key(s) {', '.join(missing)} (has: {', '.join(map(str, entry))})")
        X = _array(entry["data_3d"], where, "data_3d", (17, 3), finite=False)
        uv = _array(entry["data_2d"], where, "data_2d", (17, -1), finite=False)
        _check_tail(uv, where, "data_2d", (2, 3))
        valid = np.asarray(entry["valid"])
        if valid.size != len(X) or valid.dtype.kind not in "biuf":
            raise DataError(f"{where}: valid must be a (T,) boolean mask with T = {len(X)}, got {valid.shape} "
                            f"{valid.dtype}")
        if len(uv) != len(X):
            raise DataError(f"{where}: {len(uv)} 2D frames but {len(X)} 3D frames")
        keep = np.flatnonzero(valid.reshape(-1).astype(bool))
        seqs[str(seq)] = {"frames": int(len(X)), "valid": int(len(keep))}
        if len(keep) == 0:
            continue
        X, uv = X[keep], uv[keep, :, :2]
        for name, a in (("data_3d", X), ("data_2d", uv)):
            if not np.isfinite(a).all():
                raise DataError(f"{where}: {name}: NaN/Inf values in valid frames")
        (size, K), src = _camera_for(str(seq), cams, where, cam_file)
        Xc, note = _to_camera_frame(X, uv, K, ROOT_3DHP, where)
        units.add(note["units_in"])
        seqs[str(seq)].update(note, intrinsics_source=src, image_size=list(size))
        residuals[str(seq)] = _residual_stats(Xc, uv, K)
        _warn_if_inconsistent(residuals[str(seq)], note, where)
        arrays.append(_seq_arrays(str(seq), str(seq), str(seq), uv[:, idx], Xc[:, idx], K, size, keep))
    if not arrays:
        raise DataError(f"{path}: 0 valid frames in {len(data)} sequence(s)")
    ori = "_ori" in path.stem
    info = {
        "joint_order_in": "3dhp17 (official test order, root = pelvis index 14)",
        "joint_names_in": list(MPI3DHP17.joints), "mapping_to_h36m17": idx, "filled": [],
        "scale_source": "annot3" if ori else "univ_annot3",
        "scale_note": ("PoSynDA *_ori file: annot3 (true scale)" if ori else
                       "P-STMO/MixSTE convention: univ_annot3") + "; assumed from the file name, not checkable",
        "units_in": sorted(units),
        "root_placement": "kept where 3D is camera-frame; where root-relative, estimated per frame as the root "
                          "translation best reprojecting the 3D onto the 2D with the sequence intrinsics",
        "valid_filter": "frames with valid == 0 dropped; frame = index in the original sequence",
        "frames": int(sum(len(a) for a in arrays)),
        "sequences": seqs, "reprojection_px": residuals,
    }
    if cam_notes:
        info["camera_notes"] = cam_notes
    return arrays, info


def _read_pstmo_train(d: dict, path: Path, cams, cam_file, cam_notes) -> tuple[list[PoseArrays], dict]:
    """P-STMO / MixSTE `data_train_3dhp.npz`: data = {"S<i> Seq<j>": [{camera: {data_3d (T, 17, 3),
    data_2d (T, 17, 2)}}]} (official 17-joint order); every frame is kept. Cameras `S<i>_Seq<j>_Cam<c>` of the
    cameras file (mmpose's cameras_train.pkl)."""
    data = d["data"]
    if not isinstance(data, dict) or not data:
        raise DataError(f"{path}: 'data' must be a non-empty dict 'S<i> Seq<j>' -> [{{camera: {{data_3d, data_2d}}}}]")
    idx = list(conversion_indices("3dhp17", "h36m17"))
    arrays, seqs, residuals, units = [], {}, {}, set()
    for key in sorted(data, key=str):
        m = re.fullmatch(r"(S\d+)[ _](Seq\d+)", str(key))
        entry = data[key]
        where = f"{path}: sequence {key}"
        if m is None:
            raise DataError(f"{where}: a training sequence is named 'S<i> Seq<j>'")
        if isinstance(entry, (list, tuple)) and len(entry) == 1:
            entry = entry[0]
        if not isinstance(entry, dict) or not entry:
            raise DataError(f"{where}: expected [{{camera: {{data_3d, data_2d}}}}]")
        subject, seq = m.groups()
        for cam in sorted(entry, key=str):
            c = entry[cam]
            w2 = f"{where} camera {cam}"
            if not isinstance(c, dict) or any(k not in c for k in ("data_3d", "data_2d")):
                raise DataError(f"{w2}: expected a dict with data_3d and data_2d")
            X = _array(c["data_3d"], w2, "data_3d", (17, 3))
            uv = _array(c["data_2d"], w2, "data_2d", (17, -1))
            _check_tail(uv, w2, "data_2d", (2, 3))
            if len(uv) != len(X) or len(X) == 0:
                raise DataError(f"{w2}: {len(uv)} 2D frames and {len(X)} 3D frames")
            uv = uv[:, :, :2]
            cam_name = str(cam) if str(cam).startswith("Cam") else f"Cam{cam}"
            name = f"{subject}_{seq}_{cam_name}"
            (size, K), src = _camera_for(name, cams, w2, cam_file)
            Xc, note = _to_camera_frame(X, uv, K, ROOT_3DHP, w2)
            units.add(note["units_in"])
            seqs[name] = {"frames": int(len(X)), **note, "intrinsics_source": src, "image_size": list(size)}
            residuals[name] = _residual_stats(Xc, uv, K)
            _warn_if_inconsistent(residuals[name], note, w2)
            arrays.append(_seq_arrays(subject, seq, cam_name, uv[:, idx], Xc[:, idx], K, size, np.arange(len(X))))
    info = {
        "joint_order_in": "3dhp17 (official order, root = pelvis index 14)",
        "joint_names_in": list(MPI3DHP17.joints), "mapping_to_h36m17": idx, "filled": [],
        "scale_source": "univ_annot3 (P-STMO/MixSTE convention; assumed, not checkable)",
        "units_in": sorted(units),
        "root_placement": "kept where 3D is camera-frame; where root-relative, estimated per frame as the root "
                          "translation best reprojecting the 3D onto the 2D with the camera's intrinsics",
        "frames": int(sum(len(a) for a in arrays)), "sequences": seqs, "reprojection_px": residuals,
    }
    if cam_notes:
        info["camera_notes"] = cam_notes
    return arrays, info


def _as_training(arrays: list[PoseArrays], path: Path) -> list[PoseArrays]:
    """Training rows of the mmpose form: subject S<i>, action Seq<j>, camera Cam<c> (test names refused)."""
    out = []
    for a in arrays:
        m = re.fullmatch(r"(S\d+)_(Seq\d+)", str(a.subject[0]))
        if m is None:
            raise DataError(f"{path}: '{a.subject[0]}' frames are test frames; --train takes the training set "
                            f"(S<i>_Seq<j>_Cam<c>_<frame>.jpg)")
        out.append(dataclasses.replace(a, subject=np.full(len(a), m.group(1)), action=np.full(len(a), m.group(2))))
    return out


def _read_mmpose(d: dict, path: Path, cams, cam_file, cam_notes) -> tuple[list[PoseArrays], dict]:
    where = f"{path}"
    S = _array(d["S"], where, "S", (17, -1))
    part = _array(d["part"], where, "part", (17, -1))
    _check_tail(S, where, "S", (3, 4))
    _check_tail(part, where, "part", (2, 3))
    names = np.asarray(d["imgname"])
    if names.ndim != 1 or names.dtype.kind not in "US":
        raise DataError(f"{where}: imgname must be a (N,) string array, got {names.shape} {names.dtype}")
    if not (len(names) == len(S) == len(part)):
        raise DataError(f"{where}: lengths differ: imgname {len(names)}, S {len(S)}, part {len(part)}")
    keys, seqs, cam_ids, frames = [], [], [], np.empty(len(names), dtype=np.int64)
    for i, n in enumerate(names.astype(str)):
        m = _TEST_NAME.match(n)
        if m:
            keys.append(m.group(1)); seqs.append(m.group(1)); cam_ids.append(m.group(1))
            frames[i] = int(m.group(2)) - 1
            continue
        m = _TRAIN_NAME.match(n)
        if not m:
            raise DataError(f"{where}: imgname '{n}' is neither TS<k>_<frame>.jpg nor S<i>_Seq<j>_Cam<c>_<frame>.jpg")
        keys.append(f"{m.group(1)}_{m.group(2)}_{m.group(3)}"); seqs.append(f"{m.group(1)}_{m.group(2)}")
        cam_ids.append(m.group(3)); frames[i] = int(m.group(4)) - 1
    keys, seqs, cam_ids = np.array(keys), np.array(seqs), np.array(cam_ids)
    idx = list(conversion_indices("3dhp17", "h36m17"))
    arrays, info_seqs, residuals, units = [], {}, {}, set()
    for key in sorted(set(keys.tolist())):
        rows = np.flatnonzero(keys == key)
        w2 = f"{path}: sequence {seqs[rows[0]]}" + (f" {cam_ids[rows[0]]}" if key != seqs[rows[0]] else "")
        (size, K), src = _camera_for(key, cams, w2, cam_file)
        X, uv = S[rows, :, :3], part[rows, :, :2]
        Xc, note = _to_camera_frame(X, uv, K, ROOT_3DHP, w2)
        units.add(note["units_in"])
        info_seqs[key] = {"frames": int(len(rows)), **note, "intrinsics_source": src, "image_size": list(size)}
        residuals[key] = _residual_stats(Xc, uv, K)
        _warn_if_inconsistent(residuals[key], note, w2)
        seq = str(seqs[rows[0]])
        arrays.append(_seq_arrays(seq, seq, str(cam_ids[rows[0]]), uv[:, idx], Xc[:, idx], K, size, frames[rows]))
    info = {
        "joint_order_in": "3dhp17 (official test order, root = pelvis index 14)",
        "joint_names_in": list(MPI3DHP17.joints), "mapping_to_h36m17": idx, "filled": [],
        "scale_source": "annot3",
        "scale_note": "mmpose preprocess_mpi_inf_3dhp.py stores annot3 / 1000 (true scale, consistent with the "
                      "images); the official evaluation uses univ_annot3",
        "units_in": sorted(units),
        "root_placement": "kept (camera-frame 3D with true depth)",
        "flags": "4th column of S / 3rd of part (mmpose: joint inside the image) ignored; all joints kept",
        "frame_note": "frame = image number - 1 (0-based index in the sequence)",
        "frames": int(len(S)), "sequences": info_seqs, "reprojection_px": residuals,
    }
    if cam_notes:
        info["camera_notes"] = cam_notes
    return arrays, info


# -------------------------------------------------------------------------------------------- entry point

def prepare_3dhp(out: str | Path, path: str | Path, form: str = "auto",
                 cameras: str | Path | list[str | Path] | None = None, overwrite: bool = False,
                 progress: Callable[[str], None] | None = None, image_size: tuple[int, int] | None = None,
                 train: str | Path | None = None) -> Path:
    """Import an MPI-INF-3DHP test file (form 'poseaug', 'pstmo', 'mmpose' or 'auto') into `out`, split `test`;
    with `train`, also a training-set file (P-STMO/MixSTE `data_train_3dhp.npz` or mmpose's training npz)
    into split `train` (subjects S1-S8, action = sequence, camera = Cam<c>), as the GPA and PoSynDA papers'
    unlabelled target.

    `cameras`: mmpose-style cameras pkl(s), merged (cameras_test.pkl: TS1-TS6, which otherwise use built-in
    intrinsics; cameras_train.pkl: S<i>_Seq<j>_Cam<c>, needed for `train`).
    `image_size`: (w, h) assumed for every frame of the poseaug form (default 2048x2048).
    """
    path = Path(path)
    out = Path(out)
    say = progress or (lambda msg: None)
    if form not in ("auto", *FORMS):
        raise DataError(f"unknown 3DHP form '{form}' (known: auto, {', '.join(FORMS)})")
    check_new_output(out, overwrite)
    say(f"reading {path}")
    if form == "auto":
        d = load_npz(path)
        form = _detect_form(d, path)
    else:
        d = load_npz(path, _FORM_KEYS[form])
    if image_size is not None and form != "poseaug":
        raise DataError(f"{path}: --image-size applies to the poseaug form only (form {form} has per-sequence sizes)")
    cams = cam_notes = None
    cam_files = [Path(c) for c in ([] if cameras is None else cameras if isinstance(cameras, list) else [cameras])]
    cam_file = cam_files[0] if len(cam_files) == 1 else (Path(" + ".join(c.name for c in cam_files)) if cam_files else None)
    if cam_files:
        if form == "poseaug" and train is None:
            raise DataError(f"{path}: the poseaug form has no sequence ids to match cameras with; use --image-size")
        cams, cam_notes = {}, []
        for c in cam_files:
            say(f"reading {c}")
            got, notes = load_cameras(c)
            cams.update(got)
            cam_notes += notes or []
        cam_notes = cam_notes or None
    say(f"converting ({form} form)")
    if form == "poseaug":
        arrays, info = _read_poseaug(d, path, image_size)
    elif form == "pstmo":
        arrays, info = _read_pstmo(d, path, cams, cam_file, cam_notes)
    else:
        arrays, info = _read_mmpose(d, path, cams, cam_file, cam_notes)
    info = {"source": "mpi-inf-3dhp", "form": form, "file": path.name,
            "cameras_file": cam_file.name if cam_file else None, "joint_layout_out": "h36m17", **info,
            "split": "test (all rows)", "action_note": "the input has no activity labels: action = sequence",
            "extrinsics": "null (3D is camera-frame; the world frame is not needed)",
            "joint_sets": JOINT_SETS, "protocols": PROTOCOLS[form]}
    splits = {"test": pa.concat_tables([table_from_arrays(a, DATASET, "3dhp") for a in arrays])}
    if train is not None:
        train = Path(train)
        say(f"reading {train}")
        dt = load_npz(train)
        tform = _detect_form(dt, train)
        if tform == "poseaug":
            raise DataError(f"{train}: the PoseAug/DH-AUG form holds the test set only; --train takes "
                            f"data_train_3dhp.npz (P-STMO/MixSTE) or mmpose's training npz")
        if tform == "pstmo":
            first = next(iter(dt["data"].values()), None) if isinstance(dt["data"], dict) else None
            if isinstance(first, dict):
                raise DataError(f"{train}: a test-set file (sequence -> data_3d, data_2d, valid); --train takes "
                                f"the training set (sequence -> [{{camera: {{data_3d, data_2d}}}}])")
            tarrays, tinfo = _read_pstmo_train(dt, train, cams, cam_file, cam_notes)
        else:
            tarrays, tinfo = _read_mmpose(dt, train, cams, cam_file, cam_notes)
            tarrays = _as_training(tarrays, train)
        info["split"] = "test (all rows of the test file), train (all rows of the training file)"
        info["train"] = {"form": tform, "file": train.name, "subjects": sorted({str(a.subject[0]) for a in tarrays}),
                         "action_note": "action = sequence (Seq1, Seq2), camera = Cam<c>", **tinfo}
        splits["train"] = pa.concat_tables([table_from_arrays(a, DATASET, "3dhp") for a in tarrays])
    say("writing shards")
    with DatasetWriter(out, DATASET, "h36m17", info=info, overwrite=overwrite) as w:
        for name, table in splits.items():
            w.add_split(name, table)
        return w.commit()
