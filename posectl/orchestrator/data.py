"""Resolving a method's data config to a validated dataset and to Ray Data datasets."""
from __future__ import annotations

from pathlib import Path

from posectl.datasets.store import BODY_COLUMN, IMAGE_COLUMN, PoseArrays, PoseDataset, arrays_from_batch, read_shard
from posectl.errors import DataError

COLUMNS = ("subject", "action", "camera", "frame", "joints_3d", "intrinsics", "image_size", "extrinsics")


def resolve_path(path: str, seed: int = 0) -> Path:
    """'synthetic' / 'synthetic:source' / 'synthetic:target' / 'synthetic:anny' (the source domain posed with
    the anny body, with its parameters per row) -> cached generated dataset; else a directory."""
    if path.startswith("synthetic"):
        from posectl.datasets.synthetic import cached_synthetic
        _, _, domain = path.partition(":")
        if domain == "anny":
            return cached_synthetic("source", body="anny")
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


# Below this many bytes of Parquet per run, the driver reads the shards itself and hands the tables to
# Ray Data (`from_arrow`): each `read_parquet(...).materialize()` pass costs 4-6 s of Ray Data start-up
# on a 2-core machine (measured: 14-16 s for train/val/test of a small dataset, against < 1 s this way).
# Larger datasets are read by Ray Data's read tasks, the three splits concurrently.
DRIVER_READ_BYTES = 256 * 2**20


def ray_datasets(ds: PoseDataset, data_cfg, seed: int = 0, inputs: dict | None = None,
                 images: bool = False) -> dict:
    """Materialised Ray datasets per split (read before training starts, so reads never compete
    with training workers for CPUs: a trainer holding every CPU would otherwise deadlock them).
    `inputs` (from open_inputs) adds a method's extra roles; "test" among them replaces the test split.
    `images`: the train/val/test splits also carry the dataset's image column (when it has one)."""
    import logging
    from concurrent.futures import ThreadPoolExecutor

    import ray.data
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    cols = [*COLUMNS, keypoint_column(data_cfg.keypoints), *([IMAGE_COLUMN] if images and ds.images else []),
            *([BODY_COLUMN] if ds.body_params else [])]
    inputs = inputs or {}
    plan = {}                                        # role -> (shard paths, columns)
    for role, split in (("train", data_cfg.train_split), ("val", data_cfg.val_split),
                        ("test", data_cfg.test_split)):
        if role not in inputs:
            plan[role] = (ds.shard_paths(split, data_cfg.train_subjects if role == "train" else None), cols)
    for role, (ids, inp) in inputs.items():
        plan[role] = (ids.shard_paths(inp.split, list(inp.subjects) or None),
                      input_columns(inp.keypoints, inp.with_3d))
    total = sum(Path(p).stat().st_size for paths, _ in plan.values() for p in paths)

    def one(role):
        paths, columns = plan[role]
        if total <= DRIVER_READ_BYTES:
            d = ray.data.from_arrow([read_shard(p, columns) for p in paths])
        else:
            d = ray.data.read_parquet(paths).select_columns(columns)
        if role == "train" and data_cfg.max_train_samples:
            d = d.random_shuffle(seed=seed).limit(data_cfg.max_train_samples)
        return d.materialize()

    with ThreadPoolExecutor(max_workers=len(plan)) as pool:
        return dict(zip(plan, pool.map(one, plan)))


def arrays_from_shard(shard, keypoints: str, num_joints: int, where: str, with_3d: bool = True,
                      image_root: str | None = None) -> PoseArrays:
    """Materialise one worker's Ray Data shard once as numpy arrays (image paths resolved against image_root)."""
    parts = [arrays_from_batch(b, keypoints, num_joints, where=where, with_3d=with_3d, image_root=image_root)
             for b in shard.iter_batches(batch_size=16384, batch_format="numpy")]
    if not parts:
        raise DataError(f"{where}: this worker's shard is empty")
    return PoseArrays.concat(parts)
