"""Pose2Mesh on real Human3.6M and on the synthetic set: mesh-joint MPJPE / PA-MPJPE and vertex error.

Settings (each several seeds, mean +- std):
  h36m       train S1, S5-S8 (GT 2D, frames strided to about --rows per epoch), model selection on the
             validation split (held-out end of each training sequence), test S9 every --eval-stride-th frame.
  synthetic  the built-in synthetic source domain, train / val / test splits as shipped; with --body anny
             the same motions posed with the anny body (`synthetic:anny`: exact meshes from per-row parameters).
Reported on the test split: MPJPE and PA-MPJPE of the joints regressed from the predicted mesh on the
paper's 14 joints (and MPJPE on all 17), per-sample mean, root-aligned, GT 2D, no flip; MPVPE over the
vertices of the body (root-aligned); PoseNet's own MPJPE. Bodies (`--body`): `tube`, the skeleton-driven body,
exact for every frame; `anny`, the free parametric body, whose pseudo-GT meshes are fitted to each frame's
3D joints (fits cached under the posectl cache; frames fitted worse than 25 mm are masked). The paper's figures
(Human3.6M, GT 2D, SMPL meshes fitted by the authors, 15 epochs on a GPU): MPJPE 51.28 mm, PA-MPJPE
35.61 mm. The body model here differs (tube or anny, not SMPL), so the mesh error is not comparable;
the joint errors are.

Each run is the plugin's own epoch loop in this process (the loop a Tune trial runs), no Ray.

    python benchmarks/pose2mesh_h36m.py [--settings h36m synthetic] [--seeds 0 1 2] [--epochs 6]
        [--body anny|tube] [--fit-iters 150] [--rows 4000] [--meshnet-width 16] [--eval-stride 50] [--val-stride 100] [--out DIR] [--data-3d ../shared/data/h36m/data_3d_h36m.npz | --prepared DIR]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from _common import mean_std, train_local

PAPER = {"mpjpe": 51.28, "p_mpjpe": 35.61}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = Path(__file__).resolve().parents[1]
    ap.add_argument("--data-3d", default=str(here.parent / "shared" / "data" / "h36m" / "data_3d_h36m.npz"))
    ap.add_argument("--prepared", default=None, help="an already prepared Human3.6M dataset directory")
    ap.add_argument("--settings", nargs="+", default=["h36m", "synthetic"], choices=["h36m", "synthetic"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--posenet-epochs", type=int, default=2)
    ap.add_argument("--rows", type=int, default=4000, help="training rows per epoch (frames are strided to this)")
    ap.add_argument("--posenet-width", type=int, default=1024, help="paper: 4096")
    ap.add_argument("--meshnet-width", type=int, default=16, help="paper: 64 (CPU: 54 samples/s to train at 32, 1 thread)")
    ap.add_argument("--eval-stride", type=int, default=50, help="every n-th test frame")
    ap.add_argument("--val-stride", type=int, default=100, help="every n-th validation frame (each epoch)")
    ap.add_argument("--body", default="anny", choices=["tube", "anny"], help="the plugin's default: anny")
    ap.add_argument("--fit-iters", type=int, default=150, help="anny: optimiser steps per frame fit")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import torch

    from posectl.datasets.h36m import cached_h36m
    from posectl.datasets.lifting import LiftingData
    from posectl.datasets.store import PoseDataset
    from posectl.datasets.synthetic import cached_synthetic
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    out = Path(args.out or tempfile.mkdtemp(prefix="posectl-pose2mesh-"))
    out.mkdir(parents=True, exist_ok=True)
    paths = {"synthetic": (str(cached_synthetic("source", **({"body": "anny"} if args.body == "anny" else {})))
                           if "synthetic" in args.settings else ""),
             "h36m": str(Path(args.prepared) if "h36m" in args.settings and args.prepared
                         else cached_h36m(args.data_3d) if "h36m" in args.settings else "")}
    done = out / "results.json"           # an interrupted benchmark continues where it stopped
    results: list[dict] = json.loads(done.read_text()) if done.exists() else []
    for setting in args.settings:
        ds = PoseDataset(paths[setting])
        n_train = ds.manifest["splits"]["train"]["rows"]
        stride = max(1, round(n_train / args.rows))
        subjects = ["S1", "S5", "S6", "S7", "S8"] if setting == "h36m" else None
        test = LiftingData(ds.load("test"), ds.layout)
        for seed in args.seeds:
            if any((r["setting"], r["seed"], r.get("body", "tube")) == (setting, seed, args.body) for r in results):
                continue
            values = {
                "seed": seed, "epochs": args.epochs, "posenet_epochs": args.posenet_epochs, "lr": 1e-3,
                "posenet.width": args.posenet_width, "meshnet.width": args.meshnet_width,
                "edge_loss_start": (args.epochs - args.posenet_epochs) // 2,   # mesh-stage epochs
                "body.model": args.body, "body.fit_iters": args.fit_iters,
                "data.path": paths[setting], "data.train_stride": stride, "data.eval_stride": args.val_stride,
                **({"data.train_subjects": subjects} if subjects else {})}
            t1 = time.perf_counter()
            print(f"{setting} seed {seed}: ~{n_train // stride} rows/epoch, {args.epochs} epochs", flush=True)
            r, method, _ = train_local("pose2mesh", [values], lambda row: print(
                f"    epoch {row['epoch']}: val mesh-joint MPJPE {row['val_mpjpe']:.1f} mm, MPVPE "
                f"{row.get('val_mpvpe', float('nan')):.1f} mm, PoseNet {row.get('val_posenet_mpjpe', float('nan')):.1f}"
                f" mm ({row['epoch_time_s']:.0f} s)", flush=True))
            t = method.evaluate(test, stride=args.eval_stride)      # best-validation weights are loaded
            row = {"setting": setting, "seed": seed, "body": args.body, "mesh_gt_valid": t.get("mesh_gt_valid", 1.0),
                   "train_stride": stride, "best_epoch": r["best_epoch"],
                   "val_mpjpe": r["val"]["mpjpe"], "mpjpe": t["mpjpe"], "p_mpjpe": t["p_mpjpe"],
                   "mpjpe_all17": t["mpjpe_all17"], "mpvpe": t["mpvpe"], "posenet_mpjpe": t["posenet_mpjpe"],
                   "protocol": t["protocol"], "test": "Human3.6M S9" if setting == "h36m" else "synthetic test split",
                   "wall_s": time.perf_counter() - t1}
            results.append(row)
            print(f"{setting} seed {seed}: test MPJPE {row['mpjpe']:.2f} mm, PA-MPJPE {row['p_mpjpe']:.2f} mm "
                  f"(14 joints), MPJPE-17 {row['mpjpe_all17']:.2f}, MPVPE {row['mpvpe']:.2f} mm, PoseNet "
                  f"{row['posenet_mpjpe']:.2f} mm (best epoch {row['best_epoch']}, {row['wall_s']:.0f} s)", flush=True)
            done.write_text(json.dumps(results, indent=1))
        del test

    print()
    print(f"Pose2Mesh, {args.body} body: PoseNet width {args.posenet_width}, MeshNet width {args.meshnet_width}, {args.epochs} epochs "
          f"({args.posenet_epochs} PoseNet-only), ~{args.rows} rows/epoch, seeds {args.seeds}, "
          f"test every {args.eval_stride}th frame")
    print(f"protocol: {results[0]['protocol']}; best-validation epoch")
    print(f"{'setting':10s}{'MPJPE-14':>18s}{'PA-MPJPE-14':>18s}{'MPJPE-17':>18s}{'MPVPE':>18s}{'PoseNet':>18s}"
          f"{'mesh GT valid':>15s}")
    for setting in args.settings:
        r = [x for x in results if x["setting"] == setting and x.get("body", "tube") == args.body]
        print(f"{setting:10s}" + "".join(f"{mean_std([x[k] for x in r]):>18s}"
                                         for k in ("mpjpe", "p_mpjpe", "mpjpe_all17", "mpvpe", "posenet_mpjpe"))
              + f"{100 * sum(x['mesh_gt_valid'] for x in r) / len(r):>14.1f}%")
    print(f"paper (Human3.6M S9+S11, GT 2D, SMPL): MPJPE {PAPER['mpjpe']} mm, PA-MPJPE {PAPER['p_mpjpe']} mm")
    print(f"wall time {time.perf_counter() - t0:.0f} s; results {done}")


if __name__ == "__main__":
    main()
