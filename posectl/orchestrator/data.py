"""Resolving a method's data config to validated datasets (the reading is orchestrator/spec.py's)."""
from __future__ import annotations

from pathlib import Path

from posectl.datasets.store import PoseDataset, is_builtin
from posectl.errors import DataError

COLUMNS = ("subject", "action", "camera", "frame", "joints_3d", "intrinsics", "image_size", "extrinsics")


def resolve_path(path: str) -> Path:
    """'synthetic' / 'synthetic:source' / 'synthetic:target' / 'synthetic:anny' (the source domain posed with
    the anny body, with its parameters per row) -> cached generated dataset; else a directory."""
    if is_builtin(path):
        from posectl.datasets.synthetic import cached_synthetic
        _, _, domain = path.partition(":")
        if domain == "anny":
            return cached_synthetic("source", body="anny")
        if domain not in ("", "source", "target"):
            raise DataError(f"unknown dataset '{path}' (built in: synthetic, synthetic:target, synthetic:anny)")
        return cached_synthetic(domain or "source")
    return Path(path).expanduser()


def open_dataset(data_cfg, verify: bool = True) -> PoseDataset:
    ds = PoseDataset(resolve_path(data_cfg.path), verify=verify)
    sources = ds.manifest.get("keypoints_2d", ["gt"])
    if data_cfg.keypoints not in sources:
        raise DataError(f"{ds.path}: no 2D keypoints '{data_cfg.keypoints}' (has: {', '.join(sources)})")
    for split in (data_cfg.train_split, data_cfg.val_split, data_cfg.test_split):
        ds.shard_paths(split)  # raises a clear error for a missing split
    ds.shard_paths(data_cfg.train_split, data_cfg.train_subjects)  # ... or unknown subjects
    ds.shard_paths(data_cfg.val_split, data_cfg.val_subjects)
    return ds


def open_inputs(inputs: dict, layout_name: str) -> dict:
    """Validate a method's extra inputs (methods.base.DataInput): {role: (PoseDataset, DataInput)}."""
    out = {}
    for role, inp in inputs.items():
        ds = PoseDataset(resolve_path(inp.path), verify=True)
        if ds.layout.name != layout_name:
            raise DataError(f"{ds.path}: joint layout {ds.layout.name} does not match the training data's "
                            f"{layout_name} (input '{role}')")
        if inp.keypoints not in ds.manifest.get("keypoints_2d", ["gt"]):
            raise DataError(f"{ds.path}: no 2D keypoints '{inp.keypoints}' (input '{role}')")
        ds.shard_paths(inp.split, list(inp.subjects) or None)
        out[role] = (ds, inp)
    return out


def input_columns(keypoints: str, with_3d: bool) -> list[str]:
    return [c for c in (*COLUMNS, keypoint_column(keypoints)) if with_3d or c != "joints_3d"]


def keypoint_column(keypoints: str) -> str:
    return "keypoints_2d" if keypoints == "gt" else f"keypoints_2d_{keypoints}"
