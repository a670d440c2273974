"""The canonical pose table: Arrow schema, sharded Parquet writer, manifest, validated reader.

A dataset is a directory:
  manifest.json        schema version, joint layout, 2D sources, splits -> shards, rows, sha256
  .verified.json       written by PoseDataset.verify: shards whose checksum matched, by size and mtime
  <split>-00000.parquet ...

One row per (subject, action, camera, frame). Pose columns are pyarrow's canonical
`fixed_shape_tensor` (zero-copy to numpy, batched as (B, J, C) tensors by Ray Data):
  keypoints_2d        [J, 2] float32  pixels, ground truth (projection of joints_3d)
  keypoints_2d_<src>  [J, 2] float32  optional detections (e.g. keypoints_2d_sh_pt_mpii)
  joints_3d           [J, 3] float32  camera frame, metres, absolute (root trajectory kept)
  intrinsics          [9]    float32  fx, fy, cx, cy, k1, k2, k3, p1, p2 (pixels)
  image_size          [2]    int32    width, height
  extrinsics          [12]   float32  R (row-major, world->camera) and t (metres); nullable
  image               optional: the frame as encoded bytes (PNG/JPEG; `binary`) or as a path to the file
                      (`string`; relative to the dataset directory, or absolute). Read only by methods that
                      ask for images (L2D); `posectl data attach-images` adds it to an existing dataset.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from posectl.core.skeleton import get_layout
from posectl.errors import DataError

SCHEMA_VERSION = 1
FORMAT = "posectl-poses"
MANIFEST = "manifest.json"
VERIFIED = ".verified.json"   # size and mtime of every shard when its checksum last matched (PoseDataset.verify)
META_COLUMNS = ("dataset", "domain", "subject", "action", "camera", "frame")
IMAGE_COLUMN = "image"
BODY_COLUMN = "body_params"      # optional: per-row body-model parameters (list<float32>), manifest "body_params"
BODY_TYPE = pa.list_(pa.float32())
IMAGE_TYPES = {pa.binary(): "embedded", pa.large_binary(): "embedded", pa.string(): "paths",
               pa.large_string(): "paths"}


def is_builtin(path: str) -> bool:
    """`data.path` names a built-in synthetic dataset ('synthetic' or 'synthetic:DOMAIN'), not a folder."""
    return path == "synthetic" or path.startswith("synthetic:")


def dataset_id(path: str) -> str:
    """One name per dataset a `data.path` can name: the built-in synthetic ones ('synthetic' is
    'synthetic:source') or a resolved directory; for checks that two paths are the same data."""
    if is_builtin(path):
        return path if ":" in path else "synthetic:source"
    return str(Path(path).expanduser().resolve())


def pose_schema(num_joints: int, detections: tuple[str, ...] = ()) -> pa.Schema:
    kp = pa.fixed_shape_tensor(pa.float32(), [num_joints, 2])
    fields = [
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("domain", pa.string(), nullable=False),
        pa.field("subject", pa.string(), nullable=False),
        pa.field("action", pa.string(), nullable=False),
        pa.field("camera", pa.string(), nullable=False),
        pa.field("frame", pa.int32(), nullable=False),
        pa.field("keypoints_2d", kp, nullable=False),
        *[pa.field(f"keypoints_2d_{d}", kp) for d in detections],
        pa.field("joints_3d", pa.fixed_shape_tensor(pa.float32(), [num_joints, 3]), nullable=False),
        pa.field("intrinsics", pa.list_(pa.float32(), 9), nullable=False),
        pa.field("image_size", pa.list_(pa.int32(), 2), nullable=False),
        pa.field("extrinsics", pa.list_(pa.float32(), 12)),
    ]
    return pa.schema(fields)


@dataclass
class PoseArrays:
    """One split in memory as numpy arrays (what a training worker materialises once)."""
    keypoints_2d: np.ndarray   # (N, J, 2) px
    joints_3d: np.ndarray      # (N, J, 3) m, camera frame
    intrinsics: np.ndarray     # (N, 9)
    image_size: np.ndarray     # (N, 2)
    subject: np.ndarray        # (N,) str
    action: np.ndarray         # (N,) str
    camera: np.ndarray         # (N,) str
    frame: np.ndarray          # (N,) int
    extrinsics: np.ndarray | None = None   # (N, 12) world->camera R (row-major) and t, when known
    image: np.ndarray | None = None        # (N,) object: encoded bytes or absolute paths, when asked for
    body_params: np.ndarray | None = None  # (N, P) float32 body-model parameters (camera frame), when present

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def sequence_ids(self) -> np.ndarray:
        """Integer id per (subject, action, camera) sequence."""
        return sequence_ids(self.subject, self.action, self.camera)

    def sequence_order(self) -> np.ndarray:
        """Row order grouping each sequence's rows, in time (sequences in sequence-id order)."""
        return np.lexsort((self.frame, self.sequence_ids))

    def take(self, idx) -> "PoseArrays":
        return PoseArrays(*(None if getattr(self, f) is None else getattr(self, f)[idx]
                            for f in self.__dataclass_fields__))

    @staticmethod
    def concat(parts: list["PoseArrays"]) -> "PoseArrays":
        def cat(f):
            vals = [getattr(p, f) for p in parts]
            return None if any(v is None for v in vals) else np.concatenate(vals)
        return PoseArrays(*(cat(f) for f in PoseArrays.__dataclass_fields__))


def sequence_ids(subject, action, camera) -> np.ndarray:
    """Integer id per (subject, action, camera) sequence, ordered by those names."""
    keys = np.char.add(np.char.add(np.asarray(subject).astype(str), "|"),
                       np.char.add(np.char.add(np.asarray(action).astype(str), "|"), np.asarray(camera).astype(str)))
    return np.unique(keys, return_inverse=True)[1]


def arrays_from_batch(batch: dict, keypoints: str = "gt", num_joints: int | None = None,
                      where: str = "dataset", with_3d: bool = True, image_root: str | Path | None = None
                      ) -> PoseArrays:
    """Build PoseArrays from a dict of column arrays (a pyarrow table or a Ray Data numpy batch).
    `with_3d=False`: the 3D column is not read (it may be absent); joints_3d is all NaN.
    An `image` column in the batch is kept (relative paths resolved against `image_root`)."""
    col = "keypoints_2d" if keypoints == "gt" else f"keypoints_2d_{keypoints}"
    if col not in batch:
        raise DataError(f"{where}: no 2D keypoints '{keypoints}' (column {col} missing)")

    def tensor(name, shape_tail):
        v = batch[name]
        if isinstance(v, (pa.ChunkedArray, pa.Array)):
            v = _column_to_numpy(v)
        v = np.asarray(v)
        if v.dtype == object:
            v = np.stack(list(v))
        if shape_tail and v.size != len(v) * int(np.prod(shape_tail)):
            raise DataError(f"{where}: column {name} has rows of shape {list(v.shape[1:])}, "
                            f"expected {list(shape_tail)}")
        return v.reshape((-1, *shape_tail)) if shape_tail else v

    def strings(name):
        v = batch[name]
        if isinstance(v, (pa.ChunkedArray, pa.Array)):
            v = np.asarray(v.to_pylist(), dtype=object)
        return np.asarray(v).astype(str)

    kp = tensor(col, ())
    J = num_joints or kp.shape[1]
    if kp.size != len(kp) * J * 2:
        raise DataError(f"{where}: column {col} has rows of shape {list(kp.shape[1:])}, expected [{J}, 2]")
    out = PoseArrays(
        keypoints_2d=kp.reshape(-1, J, 2).astype(np.float32, copy=False),
        joints_3d=(tensor("joints_3d", (J, 3)).astype(np.float32, copy=False) if with_3d
                   else np.full((len(kp), J, 3), np.nan, np.float32)),
        intrinsics=tensor("intrinsics", (9,)).astype(np.float32, copy=False),
        image_size=tensor("image_size", (2,)).astype(np.int32, copy=False),
        subject=strings("subject"), action=strings("action"), camera=strings("camera"),
        frame=np.asarray(tensor("frame", ())).astype(np.int64),
        extrinsics=_extrinsics(batch.get("extrinsics")),
        image=_images(batch.get(IMAGE_COLUMN), image_root, where),
        body_params=_body_params(batch.get(BODY_COLUMN), where),
    )
    for name in ("keypoints_2d", "joints_3d", "intrinsics"):
        if name == "joints_3d" and not with_3d:
            continue
        if not np.isfinite(getattr(out, name)).all():
            raise DataError(f"{where}: column {col if name == 'keypoints_2d' else name} has NaN/Inf values")
    return out


def _extrinsics(v) -> np.ndarray | None:
    """(N, 12) float32, or None when the column is absent or has a null (e.g. MPI-INF-3DHP)."""
    if v is None:
        return None
    if isinstance(v, (pa.ChunkedArray, pa.Array)):
        if v.null_count:
            return None
        v = _column_to_numpy(v)
    v = np.asarray(v)
    if v.dtype == object:
        if any(e is None for e in v):
            return None
        v = np.stack(list(v))
    v = v.reshape(-1, 12).astype(np.float32, copy=False)
    return v if np.isfinite(v).all() else None


def _body_params(v, where: str) -> np.ndarray | None:
    if v is None:
        return None
    if isinstance(v, (pa.ChunkedArray, pa.Array)):          # Arrow list column: read values and offsets
        arr = v.combine_chunks() if isinstance(v, pa.ChunkedArray) else v
        if arr.null_count:
            raise DataError(f"{where}: column {BODY_COLUMN} has null entries")
        sizes = np.diff(np.asarray(arr.offsets))
        if len(sizes) and (sizes != sizes[0]).any():
            raise DataError(f"{where}: column {BODY_COLUMN} has rows of different lengths")
        out = np.asarray(arr.flatten(), dtype=np.float32).reshape(len(arr), sizes[0] if len(sizes) else 0)
        if not np.isfinite(out).all():
            raise DataError(f"{where}: column {BODY_COLUMN} must hold equal-length finite vectors")
        return out
    rows = list(v)
    if any(r is None for r in rows):
        raise DataError(f"{where}: column {BODY_COLUMN} has null entries")
    try:
        out = np.asarray([np.asarray(r, dtype=np.float32) for r in rows], dtype=np.float32)
    except ValueError:
        raise DataError(f"{where}: column {BODY_COLUMN} has rows of different lengths") from None
    if len(rows) == 0:
        out = out.reshape(0, 0)
    if out.ndim != 2 or not np.isfinite(out).all():
        raise DataError(f"{where}: column {BODY_COLUMN} must hold equal-length finite vectors")
    return out


def _images(v, root, where: str) -> np.ndarray | None:
    """(N,) object array of bytes (embedded) or absolute path strings; None when there is no column."""
    if v is None:
        return None
    vals = v.to_pylist() if isinstance(v, (pa.ChunkedArray, pa.Array)) else list(v)
    if any(x is None or len(x) == 0 for x in vals):
        raise DataError(f"{where}: column image has empty or null entries")
    out = np.empty(len(vals), dtype=object)
    for i, x in enumerate(vals):
        if isinstance(x, (bytes, bytearray, memoryview)):
            out[i] = bytes(x)
        elif isinstance(x, str):
            out[i] = x if root is None or os.path.isabs(x) else os.path.join(str(root), x)
        else:
            raise DataError(f"{where}: column image holds {type(x).__name__}, not bytes or a path")
    return out


def _column_to_numpy(col) -> np.ndarray:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if isinstance(col.type, pa.FixedShapeTensorType):
        return col.to_numpy_ndarray()
    if pa.types.is_fixed_size_list(col.type):
        return col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size)
    return col.to_numpy(zero_copy_only=False)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def table_from_arrays(a: PoseArrays, dataset: str, domain: str, extrinsics: np.ndarray | None = None,
                      detections: dict[str, np.ndarray] | None = None) -> pa.Table:
    detections = detections or {}
    J = a.keypoints_2d.shape[1]
    schema = pose_schema(J, tuple(detections))
    n = len(a)

    def tensor(x, shape):
        st = pa.fixed_shape_tensor(pa.float32(), shape)
        flat = pa.array(np.ascontiguousarray(x, dtype=np.float32).reshape(-1))
        return pa.ExtensionArray.from_storage(st, pa.FixedSizeListArray.from_arrays(flat, int(np.prod(shape))))

    cols = {
        "dataset": pa.array([dataset] * n), "domain": pa.array([domain] * n),
        "subject": pa.array(a.subject.astype(str)), "action": pa.array(a.action.astype(str)),
        "camera": pa.array(a.camera.astype(str)), "frame": pa.array(a.frame.astype(np.int32)),
        "keypoints_2d": tensor(a.keypoints_2d, [J, 2]),
        **{f"keypoints_2d_{k}": tensor(v, [J, 2]) for k, v in detections.items()},
        "joints_3d": tensor(a.joints_3d, [J, 3]),
        "intrinsics": pa.FixedSizeListArray.from_arrays(pa.array(a.intrinsics.astype(np.float32).reshape(-1)), 9),
        "image_size": pa.FixedSizeListArray.from_arrays(pa.array(a.image_size.astype(np.int32).reshape(-1)), 2),
        "extrinsics": (pa.FixedSizeListArray.from_arrays(pa.array(extrinsics.astype(np.float32).reshape(-1)), 12)
                       if extrinsics is not None else pa.nulls(n, pa.list_(pa.float32(), 12))),
    }
    if a.image is not None:
        kind = pa.binary() if isinstance(a.image[0], bytes) else pa.string()
        cols[IMAGE_COLUMN] = pa.array(list(a.image), type=kind)
        schema = schema.append(pa.field(IMAGE_COLUMN, kind, nullable=False))
    if a.body_params is not None:
        cols[BODY_COLUMN] = pa.array(list(np.asarray(a.body_params, dtype=np.float32)), type=BODY_TYPE)
        schema = schema.append(pa.field(BODY_COLUMN, BODY_TYPE, nullable=False))
    return pa.table(cols, schema=schema)


def check_new_output(out: str | Path, overwrite: bool = False) -> None:
    """An importer's output directory must not exist (unless overwriting): checked before any reading."""
    if Path(out).exists() and not overwrite:
        raise DataError(f"output directory already exists: {out}")


class DatasetWriter:
    """Write splits as Parquet shards into a temporary directory; `commit()` renames it into place.

    Nothing is left at `out` unless commit succeeds, so an interrupted write loses nothing.
    """

    def __init__(self, out: str | Path, name: str, joint_layout: str, rows_per_shard: int = 200_000,
                 info: dict | None = None, overwrite: bool = False, body_params: dict | None = None):
        self.out = Path(out)
        check_new_output(self.out, overwrite)
        # folders made for `out` (innermost first): abort() removes them again
        self.made = [d for d in (self.out.parent, *self.out.parent.parents) if not d.exists()]
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.tmp-", dir=self.out.parent))
        self.overwrite = overwrite
        self.rows_per_shard = rows_per_shard
        self.manifest = {"format": FORMAT, "schema_version": SCHEMA_VERSION, "name": name,
                         "joint_layout": joint_layout, "num_joints": get_layout(joint_layout).num_joints,
                         "keypoints_2d": ["gt"], "splits": {}, "shards": {}, "info": info or {}}
        if body_params:                       # {"model": ..., "dim": P}: what the body_params column holds
            self.manifest["body_params"] = body_params

    def add_split(self, split: str, table: pa.Table, subjects: list[str] | None = None) -> None:
        if table.num_rows == 0:
            raise DataError(f"split '{split}' has no rows")
        sort_keys = [("subject", "ascending"), ("action", "ascending"), ("camera", "ascending"),
                     ("frame", "ascending")]
        table = table.sort_by(sort_keys)
        dets = sorted(c[len("keypoints_2d_"):] for c in table.column_names if c.startswith("keypoints_2d_"))
        if IMAGE_COLUMN in table.column_names:
            kind = IMAGE_TYPES.get(table.schema.field(IMAGE_COLUMN).type)
            if kind is None or self.manifest.get("images", kind) != kind:
                raise DataError(f"split '{split}': column image must be binary or string, the same in every split")
            self.manifest["images"] = kind
        if BODY_COLUMN in table.column_names and "body_params" not in self.manifest:
            raise DataError(f"split '{split}': a {BODY_COLUMN} column needs the writer's body_params spec")
        self.manifest["keypoints_2d"] = ["gt", *sorted(set(self.manifest["keypoints_2d"][1:]) | set(dets))]
        entry = self.manifest["splits"].setdefault(split, {"subjects": [], "rows": 0, "shards": []})
        subjects_col = table.column("subject").to_numpy(zero_copy_only=False)
        bounds = np.r_[0, np.flatnonzero(subjects_col[1:] != subjects_col[:-1]) + 1, len(subjects_col)]
        for lo, hi in zip(bounds[:-1], bounds[1:]):   # shards never mix subjects
            for start in range(lo, hi, self.rows_per_shard):
                rows = min(self.rows_per_shard, hi - start)
                name = f"{split}-{len(entry['shards']):05d}.parquet"
                path = self.tmp / name
                pq.write_table(table.slice(start, rows), path, compression="zstd")
                self.manifest["shards"][name] = {"rows": int(rows), "subject": str(subjects_col[lo]),
                                                 "sha256": sha256(path)}
                entry["shards"].append(name)
        entry["rows"] += table.num_rows
        subs = subjects or sorted(set(subjects_col.tolist()))
        entry["subjects"] = sorted(set(entry["subjects"]) | set(subs))

    def commit(self) -> Path:
        (self.tmp / MANIFEST).write_text(json.dumps(self.manifest, indent=2))
        for p in self.tmp.iterdir():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        if self.out.exists() and self.overwrite:
            shutil.rmtree(self.out)
        os.replace(self.tmp, self.out)
        return self.out

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
        for d in self.made:                # a folder something else now uses stays
            try:
                d.rmdir()
            except OSError:
                break

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is not None:
            self.abort()


def write_splits(out: str | Path, name: str, joint_layout: str, per_split: dict[str, list[pa.Table]], info: dict,
                 overwrite: bool = False) -> Path:
    """An importer's last step: every split that has tables, concatenated, written as one dataset."""
    with DatasetWriter(out, name, joint_layout, info=info, overwrite=overwrite) as w:
        for split, tables in per_split.items():
            if tables:
                w.add_split(split, pa.concat_tables(tables))
        return w.commit()


def every_nth_frame(table: pa.Table, stride: int) -> pa.Table:
    """The rows whose frame number is a multiple of `stride` (a streamed read's train_stride)."""
    return table.filter(pa.array(table.column("frame").to_numpy() % stride == 0))


def read_shard(path: str, columns: list[str] | None = None) -> pa.Table:
    """One Parquet shard (optionally only `columns`), with a one-line error for an unreadable file."""
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowInvalid, OSError, KeyError) as e:
        raise DataError(f"{path}: unreadable Parquet shard ({str(e).splitlines()[0]})") from None


def read_shard_schema(path: str) -> pa.Schema:
    """One Parquet shard's schema (read from its footer), with a one-line error for an unreadable file."""
    try:
        return pq.read_schema(path)
    except (pa.ArrowInvalid, OSError, KeyError) as e:
        raise DataError(f"{path}: unreadable Parquet shard ({str(e).splitlines()[0]})") from None


def _check_manifest(m: dict, mpath: Path) -> None:
    """The manifest's structure (types of its entries, split shards listed with their checksums), so that a
    hand-edited or damaged manifest.json is a one-line error and not a KeyError later."""
    def bad(problem: str):
        raise DataError(f"{mpath}: {problem}")

    def is_int(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def str_list(v) -> bool:
        return isinstance(v, list) and all(isinstance(x, str) for x in v)

    if not isinstance(m["joint_layout"], str):
        bad("'joint_layout' must be a layout name (a string)")
    if not is_int(m["num_joints"]):
        bad("'num_joints' must be an integer")
    shards = m["shards"]
    if not isinstance(shards, dict):
        bad("'shards' must be an object: file name -> {rows, sha256}")
    for name, meta in shards.items():
        if not name or name in (".", "..") or "/" in name or "\\" in name or name == MANIFEST:
            bad(f"shard name '{name}' is not a file name in the dataset directory")
        if not isinstance(meta, dict):
            bad(f"shard {name}: entry must be an object with 'rows' and 'sha256'")
        if not isinstance(meta.get("sha256"), str):
            bad(f"shard {name} lacks its 'sha256' checksum")
        if not is_int(meta.get("rows")) or meta["rows"] < 0:
            bad(f"shard {name} lacks a row count ('rows')")
        if "subject" in meta and not isinstance(meta["subject"], str):
            bad(f"shard {name}: 'subject' must be a string")
    splits = m["splits"]
    if not isinstance(splits, dict):
        bad("'splits' must be an object: split -> {subjects, rows, shards}")
    if not splits:
        bad("no splits (the dataset has no rows)")
    for split, entry in splits.items():
        if not isinstance(entry, dict):
            bad(f"split '{split}' must be an object with 'subjects', 'rows' and 'shards'")
        for key in ("subjects", "rows", "shards"):
            if key not in entry:
                bad(f"split '{split}' lacks '{key}'")
        if not str_list(entry["shards"]) or not entry["shards"]:
            bad(f"split '{split}': 'shards' must be a non-empty list of file names")
        if not str_list(entry["subjects"]):
            bad(f"split '{split}': 'subjects' must be a list of strings")
        if not is_int(entry["rows"]) or entry["rows"] < 0:
            bad(f"split '{split}': 'rows' must be a non-negative integer")
        unlisted = [s for s in entry["shards"] if s not in shards]
        if unlisted:
            bad(f"shard {unlisted[0]} of split '{split}' is not listed in 'shards' (no checksum)")
    kp = m.get("keypoints_2d", ["gt"])
    if not str_list(kp) or not kp or kp[0] != "gt":
        bad("'keypoints_2d' must be a list of 2D sources starting with \"gt\"")
    if m.get("images") not in (None, *set(IMAGE_TYPES.values())):
        bad(f"'images' must be {' or '.join(sorted(set(IMAGE_TYPES.values())))}")
    for key in ("info", "body_params"):
        if m.get(key) is not None and not isinstance(m[key], dict):
            bad(f"'{key}' must be an object")


class PoseDataset:
    """A validated on-disk dataset. Opening it checks the manifest; `verify()` checks checksums."""

    def __init__(self, path: str | Path, verify: bool = False):
        self.path = Path(path)
        mpath = self.path / MANIFEST
        if not self.path.exists():
            raise DataError(f"dataset not found: {self.path}")
        if not mpath.is_file():
            raise DataError(f"{self.path}: not a posectl dataset (no {MANIFEST})")
        try:
            m = json.loads(mpath.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{mpath}: manifest is not valid JSON ({e.__class__.__name__})") from None
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            raise DataError(f"{mpath}: not a posectl manifest")
        if m.get("schema_version") != SCHEMA_VERSION:
            raise DataError(f"{mpath}: schema version {m.get('schema_version')} is not supported "
                            f"(this posectl reads version {SCHEMA_VERSION})")
        for key in ("joint_layout", "num_joints", "splits", "shards"):
            if key not in m:
                raise DataError(f"{mpath}: manifest lacks '{key}'")
        _check_manifest(m, mpath)
        try:
            self.layout = get_layout(m["joint_layout"])
        except ValueError as e:
            raise DataError(f"{mpath}: {e}") from None
        if self.layout.num_joints != m["num_joints"]:
            raise DataError(f"{mpath}: layout {self.layout.name} has {self.layout.num_joints} joints, "
                            f"manifest says {m['num_joints']}")
        self.manifest = m
        for split, entry in m["splits"].items():
            for shard in entry["shards"]:
                if not (self.path / shard).is_file():
                    raise DataError(f"{self.path}: shard {shard} of split '{split}' is missing")
        for shard in m["shards"]:
            if not (self.path / shard).is_file():
                raise DataError(f"{self.path}: shard {shard} is missing")
        if verify:
            self.verify()
        # every shard's columns (its Parquet footer only) against the manifest's layout, so that a shard of
        # another joint count is named here, on the driver, and not in a training worker's reshape
        for shard in m["shards"]:
            self.check_schema(read_shard_schema(str(self.path / shard)), str(self.path / shard))

    @property
    def name(self) -> str:
        return self.manifest.get("name", self.path.name)

    @property
    def splits(self) -> list[str]:
        return list(self.manifest["splits"])

    @property
    def num_joints(self) -> int:
        return self.layout.num_joints

    def verify(self) -> int:
        """Every shard against its manifest checksum. A shard whose size and modification time are those
        recorded in VERIFIED (beside the manifest) when it last matched is not hashed again; a changed
        shard (new size or mtime) is hashed and caught. Returns the number of shards hashed."""
        cache_path = self.path / VERIFIED
        try:
            cache = json.loads(cache_path.read_text())
            cache = cache if isinstance(cache, dict) else {}
        except (OSError, ValueError):
            cache = {}
        fresh, hashed = {}, 0
        for shard, meta in self.manifest["shards"].items():
            st = (self.path / shard).stat()
            seen = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": meta["sha256"]}
            if cache.get(shard) != seen:
                hashed += 1
                if sha256(self.path / shard) != meta["sha256"]:
                    raise DataError(f"{self.path / shard}: checksum mismatch (file changed or corrupt)")
            fresh[shard] = seen
        if fresh != cache:
            try:                          # a read-only dataset is hashed on every run instead
                tmp = cache_path.with_name(f"{VERIFIED}.{os.getpid()}.tmp")
                tmp.write_text(json.dumps(fresh, indent=1))
                os.replace(tmp, cache_path)
            except OSError:
                pass
        return hashed

    def shard_paths(self, split: str, subjects: list[str] | None = None) -> list[str]:
        if split not in self.manifest["splits"]:
            raise DataError(f"{self.path}: no split '{split}' (has: {', '.join(self.splits)})")
        shards = self.manifest["splits"][split]["shards"]
        if subjects:
            have = self.manifest["splits"][split]["subjects"]
            unknown = [s for s in subjects if s not in have]
            if unknown:
                raise DataError(f"{self.path}: split '{split}' has no subject(s) {', '.join(unknown)} "
                                f"(has: {', '.join(have)})")
            shards = [s for s in shards if self.manifest["shards"][s].get("subject") in subjects]
        return [str(self.path / s) for s in shards]

    @property
    def images(self) -> str | None:
        """'embedded' or 'paths' when the shards carry an image column, else None."""
        return self.manifest.get("images")

    @property
    def body_params(self) -> dict | None:
        """{"model": name, "dim": P} when the shards carry per-row body-model parameters, else None."""
        return self.manifest.get("body_params")

    def read_table(self, split: str, subjects: list[str] | None = None, images: bool = False) -> pa.Table:
        tables = []
        columns = None
        if not images and self.images:          # never read (possibly large) images nobody asked for
            columns = pose_schema(self.num_joints, tuple(self.manifest.get("keypoints_2d", ["gt"])[1:])).names
            columns += [BODY_COLUMN] if self.body_params else []
        for p in self.shard_paths(split, subjects):
            t = read_shard(p, columns)
            self.check_schema(t.schema, p)
            tables.append(t)
        return pa.concat_tables(tables)

    def check_schema(self, schema: pa.Schema, where: str) -> None:
        expected = pose_schema(self.num_joints)
        for f in expected:
            if f.name not in schema.names:
                raise DataError(f"{where}: missing column '{f.name}'")
            got = schema.field(f.name).type
            if got != f.type:
                raise DataError(f"{where}: column '{f.name}' has type {got}, expected {f.type}")
        kp = expected.field("keypoints_2d").type
        for name in schema.names:          # detections (keypoints_2d_<src>): the same joint count as the GT
            if name.startswith("keypoints_2d_") and schema.field(name).type != kp:
                raise DataError(f"{where}: column '{name}' has type {schema.field(name).type}, expected {kp}")
        if IMAGE_COLUMN in schema.names and schema.field(IMAGE_COLUMN).type not in IMAGE_TYPES:
            raise DataError(f"{where}: column 'image' has type {schema.field(IMAGE_COLUMN).type}, expected "
                            f"binary (encoded image) or string (path)")
        if BODY_COLUMN in schema.names and schema.field(BODY_COLUMN).type != BODY_TYPE:
            raise DataError(f"{where}: column '{BODY_COLUMN}' has type {schema.field(BODY_COLUMN).type}, "
                            f"expected {BODY_TYPE}")

    def load(self, split: str, keypoints: str = "gt", subjects: list[str] | None = None,
             with_3d: bool = True, images: bool = False) -> PoseArrays:
        """One split as arrays; the image column only with `images` (for methods that read images)."""
        table = self.read_table(split, subjects, images=images)
        return arrays_from_batch({n: table.column(n) for n in table.column_names if with_3d or n != "joints_3d"},
                                 keypoints, self.num_joints, where=f"{self.path}:{split}", with_3d=with_3d,
                                 image_root=self.path)

    def summary(self) -> dict:
        m = self.manifest
        return {"name": self.name, "path": str(self.path), "joint_layout": m["joint_layout"],
                "keypoints_2d": m.get("keypoints_2d", ["gt"]), "images": m.get("images"),
                "body_params": m.get("body_params"),
                "splits": {s: {"rows": e["rows"], "subjects": e["subjects"], "shards": len(e["shards"])}
                           for s, e in m["splits"].items()},
                "info": m.get("info", {})}
