"""Where L2D's training frames are decoded (issue #32): in the trainer's thread, or by Ray Data tasks.

A photo dataset of the synthetic training split (28,000 frames; every 10th frame of validation and
test), each figure drawn and saved as a --photo px PNG file, attached with `posectl data attach-images`
as paths (built once under $POSECTL_CACHE), trains L2D's detector for --steps steps of --batch-size crops, `mode=single` (a smoke-sized lifter, HRNet at
--res px), in this process: once with Context.map_batches in this process (every frame decoded and
cropped by the trainer, as before) and once with Ray Data map_batches on a local Ray of 2 CPUs (the
decoding runs in Ray's worker processes, ahead of the steps). Prints, per round and path, the trainer
process's CPU time per step (time.process_time) and the wall time per step; the crops, and so the
losses, are identical on both paths (tests/test_l2d.py).

    python benchmarks/l2d_decode.py [--steps 100] [--rounds 2] [--photo 400] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

PATTERN = "{subject}/{action}.{camera}/{frame:06d}.png"


def photo_dataset(side: int, drawn: int = 100) -> Path:
    """The synthetic source dataset with a PNG photograph of `side` px per row: the figure drawn full-frame
    at `drawn` px (the renderer is slow at large sizes) and scaled up bilinearly."""
    from PIL import Image

    from posectl.core.camera import normalize_screen
    from posectl.core.render import CropTransform, render
    from posectl.datasets.images import attach_images
    from posectl.datasets.store import DatasetWriter, PoseDataset, table_from_arrays
    from posectl.datasets.synthetic import cache_dir, cached_synthetic
    root = cache_dir() / f"l2d-photos-{side}"
    out = root / "with-images"
    if (out / "manifest.json").is_file():
        return out
    src = PoseDataset(cached_synthetic("source"))
    frames, plain = root / "frames", root / "plain"
    t0 = time.perf_counter()
    with DatasetWriter(plain, f"synthetic-photos-{side}", src.manifest["joint_layout"], overwrite=True) as w:
        for split in src.splits:
            a = src.load(split)
            if split != "train":            # only the training split is measured: every 10th frame elsewhere
                a = a.take(np.arange(0, len(a), 10))
            s = side / a.image_size[:, :1].astype(np.float32)
            a.keypoints_2d = a.keypoints_2d * s[:, :, None]
            a.intrinsics = a.intrinsics.copy()
            a.intrinsics[:, :4] *= s
            a.image_size = np.full_like(a.image_size, side)
            w.add_split(split, table_from_arrays(a, f"synthetic-photos-{side}", "source"))
            uv = torch.from_numpy(normalize_screen(a.keypoints_2d, side, side).astype(np.float32))   # same at any size
            depth = torch.from_numpy(a.joints_3d[..., 2].copy())
            for lo in range(0, len(a), 256):
                n = len(uv[lo: lo + 256])
                full = CropTransform(torch.zeros(n, 2), torch.full((n,), 2.0), torch.eye(2).expand(n, 2, 2), drawn)
                img, _, _ = render(uv[lo: lo + 256], depth[lo: lo + 256], src.layout, full, background=True,
                                   generator=torch.Generator().manual_seed(lo))
                for k, im in enumerate((img.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()):
                    i = lo + k
                    f = frames / PATTERN.format(subject=a.subject[i], action=a.action[i], camera=a.camera[i],
                                                frame=a.frame[i])
                    f.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(im).resize((side, side), Image.BILINEAR).save(f, compress_level=1)
                print(f"\r  {split}: {lo + n}/{len(a)} frames", end="", flush=True)
        w.commit()
    print(f"\n  photographs written in {time.perf_counter() - t0:.0f} s")
    return attach_images(plain, out, PATTERN, root=frames)


def one_epoch(path: Path, ctx, steps: int, batch: int, res: int) -> dict:
    """`steps` training steps of L2D on the photo dataset with `ctx`; the trainer's CPU and wall time."""
    from posectl.config import build
    from posectl.datasets.lifting import LiftingData
    from posectl.datasets.store import PoseDataset
    from posectl.methods.base import get_method
    from posectl.orchestrator.spec import RunSpec
    ds = PoseDataset(path)
    arrays = ds.load("train", images=True)
    pick = np.sort(np.random.default_rng(0).permutation(len(arrays))[:steps * batch])
    train = LiftingData(arrays.take(pick), ds.layout)
    lifters = RunSpec.build("l2d", [{"data.path": str(path)}], smoke_test=True).cfg.lifters
    cls = get_method("l2d")
    cfg = build(cls.Config, {"mode": "single", "images": "dataset", "lifters": lifters, "batch_size": batch,
                             "detector.image_size": res, "detector.width": 16, "data.path": str(path)})
    m = cls(cfg, train, ctx)
    c0, w0 = time.process_time(), time.perf_counter()
    r = m.train_epoch(0)
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    return {"cpu_ms_per_step": 1000 * cpu / steps, "wall_ms_per_step": 1000 * wall / steps, "loss": r["loss"],
            "frames": len(arrays)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--res", type=int, default=64, help="detector crop side in px")
    ap.add_argument("--photo", type=int, default=400, help="side of the photographs in px")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json")
    a = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    torch.set_num_threads(1)                 # the trainer's one CPU; Ray Data gets the other
    import ray

    from posectl.methods.base import Context
    from posectl.orchestrator.spec import ray_map_batches
    path = photo_dataset(a.photo)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=1024 * 2**20)
    rows = {"trainer": [], "ray data": []}
    for k in range(a.rounds):
        for name, ctx in (("trainer", Context()), ("ray data", Context(map_batches=ray_map_batches))):
            r = one_epoch(path, ctx, a.steps, a.batch_size, a.res)
            rows[name].append(r)
            print(f"round {k + 1} decoding in {name:<8}: trainer CPU {r['cpu_ms_per_step']:6.1f} ms/step, wall "
                  f"{r['wall_ms_per_step']:6.1f} ms/step, loss {r['loss']:.6f} ({r['frames']:,} frames in the dataset)",
                  flush=True)
    ray.shutdown()
    med = {n: {k: statistics.median(r[k] for r in rs) for k in ("cpu_ms_per_step", "wall_ms_per_step")}
           for n, rs in rows.items()}
    for n, m in med.items():
        print(f"median, decoding in {n:<8}: trainer CPU {m['cpu_ms_per_step']:6.1f} ms/step, wall {m['wall_ms_per_step']:6.1f} ms/step")
    print(f"trainer CPU per step, Ray Data / trainer: {med['ray data']['cpu_ms_per_step'] / med['trainer']['cpu_ms_per_step']:.2f}")
    if a.json:
        Path(a.json).write_text(json.dumps({"rounds": rows, "median": med}, indent=2))


if __name__ == "__main__":
    main()
