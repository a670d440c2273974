"""What separates Human3.6M from HumanEva-I, and what GPA's alignment changes of it (issue #33, item 3).

No training: the distributions GPA acts on, measured on real data. Source: Human3.6M S1, S5-S8 (GT 2D,
../shared/data/h36m); target: the HumanEva-I training takes (../shared/data/humaneva, imported by
`posectl data prepare humaneva`: cameras recovered by DLT). For the source as it is, the source after GPA's
global position alignment (each pose paired with a random target pose and camera, as `gpa` trains), and
the target, it prints the 2D box size and root position (normalised screen units, VideoPose3D's
convention) with two-sample KS statistics against the target, the normalised focal length (2f/w), the
root depth, and the bone lengths of the two skeletons (the joint-definition part of the gap, which no
2D alignment can remove).

    python benchmarks/humaneva_shift.py [--n 20000] [--seed 0]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np


def ks(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    return float(np.abs(np.searchsorted(a, grid, side="right") / len(a)
                        - np.searchsorted(b, grid, side="right") / len(b)).max())


def box_root(kp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ext = kp.max(1) - kp.min(1)
    return ext.mean(1), kp[:, 0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    ap.add_argument("--h36m-3d", default=str(shared / "h36m" / "data_3d_h36m.npz"))
    ap.add_argument("--humaneva", default=str(shared / "humaneva"))
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import torch

    from posectl.core.alignment import global_position_alignment
    from posectl.core.camera import normalize_screen, project
    from posectl.core.skeleton import H36M17, bone_lengths
    from posectl.datasets.h36m import cached_h36m
    from posectl.datasets.humaneva import prepare_humaneva
    from posectl.datasets.store import PoseDataset

    src = PoseDataset(cached_h36m(args.h36m_3d)).load("train")
    with tempfile.TemporaryDirectory() as tmp:
        he = Path(args.humaneva)
        out = prepare_humaneva(Path(tmp) / "he", he / "data_3d_humaneva15_train.npz",
                               [he / "data_2d_humaneva15_gt_train.npz"])
        tgt = PoseDataset(out).load("train")
    rng = np.random.default_rng(args.seed)
    n = min(args.n, len(src), len(tgt))
    si, ti, pi = rng.choice(len(src), n, replace=False), rng.choice(len(tgt), n), rng.choice(len(tgt), n)

    def norm(kp, wh):
        return normalize_screen(kp, wh[:, 0].astype(np.float64), wh[:, 1].astype(np.float64))

    s_kp = norm(src.keypoints_2d[si].astype(np.float64), src.image_size[si])
    t_kp = norm(tgt.keypoints_2d[ti].astype(np.float64), tgt.image_size[ti])
    P = torch.from_numpy(src.joints_3d[si].astype(np.float64))
    intr = torch.from_numpy(tgt.intrinsics[pi].astype(np.float64))
    moved = global_position_alignment(P, torch.from_numpy(tgt.keypoints_2d[pi].astype(np.float64)), intr[:, :2], intr[:, 2:4])
    a_kp = norm(project(moved, intr).numpy(), tgt.image_size[pi])
    rows = []
    for name, kp in (("source (Human3.6M)", s_kp), ("source after GPA", a_kp), ("target (HumanEva-I)", t_kp)):
        size, root = box_root(kp)
        rows.append((name, size, root))
    ts, tr = rows[-1][1], rows[-1][2]
    print(f"{n:,} poses each; 2D in normalised screen units (x / w * 2 - 1, y / w * 2 - h / w)\n")
    print(f"{'':22s} {'box size':>17s} {'root x':>17s} {'root y':>17s}   KS vs target: size / x / y")
    for name, size, root in rows:
        print(f"{name:22s} {size.mean():8.3f} ± {size.std():5.3f} {root[:, 0].mean():8.3f} ± {root[:, 0].std():5.3f} "
              f"{root[:, 1].mean():8.3f} ± {root[:, 1].std():5.3f}   {ks(size, ts):.3f} / {ks(root[:, 0], tr[:, 0]):.3f} / "
              f"{ks(root[:, 1], tr[:, 1]):.3f}")
    f_s = 2 * src.intrinsics[si, 0] / src.image_size[si, 0]
    f_t = 2 * tgt.intrinsics[ti, 0] / tgt.image_size[ti, 0]
    print(f"\nnormalised focal 2f/w: source {f_s.mean():.3f} (±{f_s.std():.3f}), target {f_t.mean():.3f} (±{f_t.std():.3f})")
    d_s, d_a, d_t = src.joints_3d[si, 0, 2], moved[:, 0, 2].numpy(), tgt.joints_3d[ti, 0, 2]
    print(f"root depth (m): source {d_s.mean():.2f} ± {d_s.std():.2f}, after GPA {d_a.mean():.2f} ± {d_a.std():.2f}, "
          f"target {d_t.mean():.2f} ± {d_t.std():.2f}")
    bs = bone_lengths(src.joints_3d[si].astype(np.float64), H36M17).mean(0) * 1000
    bt = bone_lengths(tgt.joints_3d[ti].astype(np.float64), H36M17).mean(0) * 1000
    print("\nmean bone length (mm), h36m17 bones: source / target (HumanEva mapped; Spine, Neck/Nose derived)")
    for (p, c), a, b in zip(H36M17.bones, bs, bt):
        print(f"  {H36M17.joints[p]:>9s}-{H36M17.joints[c]:<10s} {a:6.0f} / {b:6.0f}  ({b - a:+5.0f})")
    # the joint-definition part: the two datasets' mean root-relative poses, joint by joint
    mean_s = (src.joints_3d[si] - src.joints_3d[si][:, :1]).mean(0)
    mean_t = (tgt.joints_3d[ti] - tgt.joints_3d[ti][:, :1]).mean(0)
    d = np.linalg.norm(mean_s - mean_t, axis=-1) * 1000
    print(f"\nmean root-relative pose, source vs target (camera frame): {d.mean():.0f} mm over 17 joints; "
          + ", ".join(f"{H36M17.joints[j]} {d[j]:.0f}" for j in np.argsort(-d)[:5]))


if __name__ == "__main__":
    main()
