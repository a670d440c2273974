"""Why GPA does not gain on HumanEva-I: placement shift versus pose shift (issue #33, item 3).

GPA changes one thing about the source: where poses stand in front of the camera (root position, hence
2D position and scale). This script measures how much of a Human3.6M-trained lifter's HumanEva error that
placement causes. It trains `gpa` in modes source_only and gpa exactly as benchmarks/cross_dataset.py
does (same source, target, budget and seeds), then evaluates each model on four sets of 2D inputs made
from two pose sets and two placements:

- poses: Human3.6M's validation split (source poses), HumanEva-I S3 (target poses: held out, as in
  cross_dataset.py), root-relative 3D;
- placement: each pose moved rigidly to the root position of a random frame of Human3.6M's validation
  split, or of HumanEva-I's S1/S2 takes, and projected with that frame's camera (intrinsics, image size).

Reading the 2x2 table: along a row the pose is fixed and only the placement changes (what GPA can
correct); down a column the placement is fixed and only the poses change (subjects, motions and the two
datasets' joint definitions: what GPA cannot). Target 3D is used here for the diagnosis only.
17 joints, root-relative, GT-projected 2D, no flip, MPJPE (mm, per sample), mean +- std over the seeds.

    python benchmarks/humaneva_why.py [--rows 66000] [--epochs 8] [--seeds 0 1 2] [--n 20000]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from _common import mean_std, train_local
from cross_dataset import LIFTING, data_arguments, setup


def place(y: np.ndarray, pool, rows: np.ndarray, root: int):
    """2D inputs (normalised screen units) of root-relative poses `y` standing at the root positions of
    `pool`'s frames `rows`, seen by those frames' cameras."""
    import torch

    from posectl.core.camera import normalize_screen, project
    P = torch.from_numpy(y + pool.joints_3d[rows, root][:, None]).double()
    uv = project(P, torch.from_numpy(pool.intrinsics[rows]).double()).numpy()
    wh = pool.image_size[rows].astype(np.float64)
    return normalize_screen(uv, wh[:, 0], wh[:, 1]).astype(np.float32)


def mpjpe_mm(method, x: np.ndarray, y: np.ndarray, root: int) -> float:
    import torch
    model = method.model
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(torch.from_numpy(x[i:i + 4096])[:, None])[:, 0] for i in range(0, len(x), 4096)])
    pred = pred.numpy() - pred.numpy()[:, root:root + 1]
    return float(np.linalg.norm(pred - y, axis=-1).mean() * 1000)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data_arguments(ap)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--n", type=int, default=20000, help="poses per set")
    args = ap.parse_args()
    from posectl.datasets.store import PoseDataset
    t0 = time.perf_counter()
    source, target, stride, common = setup(args)
    sds, tds = PoseDataset(source), PoseDataset(target)
    root = sds.layout.root
    s_val, t_pool, t_test = sds.load("val"), tds.load("train"), tds.load("test")
    rng = np.random.default_rng(0)
    poses, own = {}, {}
    for name, arrays in (("Human3.6M", s_val), ("HumanEva-I", t_test)):
        rows = rng.choice(len(arrays), min(args.n, len(arrays)), replace=False)
        j = arrays.joints_3d[rows].astype(np.float64)
        poses[name] = j - j[:, root:root + 1]
        own[name] = (arrays, rows)
    pools = {"Human3.6M": s_val, "HumanEva-I": t_pool}
    inputs = {}
    for pname, y in poses.items():
        for lname, pool in pools.items():
            inputs[pname, lname] = place(y, pool, rng.integers(len(pool), size=len(y)), root)
        a, rows = own[pname]          # the recorded 2D, to check the re-rendering
        wh = a.image_size[rows].astype(np.float64)
        from posectl.core.camera import normalize_screen
        inputs[pname, "recorded"] = normalize_screen(a.keypoints_2d[rows].astype(np.float64), wh[:, 0],
                                                     wh[:, 1]).astype(np.float32)
    results: dict[tuple, list[float]] = {}
    for mode in ("source_only", "gpa"):
        for seed in args.seeds:
            t1 = time.perf_counter()
            _, m, _ = train_local("gpa", [{**common, **LIFTING, "mode": mode, "seed": seed}])
            cells = {k: mpjpe_mm(m, x, poses[k[0]].astype(np.float32), root) for k, x in inputs.items()}
            for k, v in cells.items():
                results.setdefault((mode, *k), []).append(v)
            print(f"{mode:11s} seed {seed}: " + ", ".join(f"{p} poses / {l} placement {v:.1f}" for (p, l), v in cells.items())
                  + f" ({time.perf_counter() - t1:.0f} s)", flush=True)
    print(f"\nMPJPE (mm, 17 joints, root-relative, GT-projected 2D, no flip), {len(args.seeds)} seeds; models: gpa "
          f"trained on Human3.6M S1, S5-S8 (every {stride}th frame, {args.epochs} epochs, best source-validation epoch)")
    print("| model | poses | recorded 2D | Human3.6M placement | HumanEva-I placement |\n|---|---|---|---|---|")
    for mode in ("source_only", "gpa"):
        for pname in poses:
            print(f"| {mode} | {pname} | " + " | ".join(mean_std(results[(mode, pname, l)], 1)
                                                     for l in ("recorded", "Human3.6M", "HumanEva-I")) + " |")
    print(f"\nwall time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
