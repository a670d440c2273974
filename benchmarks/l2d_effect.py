"""Does 3D guidance make a 2D detector better for lifting? `l2d` in modes 2d / single / multi, several seeds.

1. Two lifting networks are trained on Human3.6M GT 2D (S1, S5-S8; SimpleBaseline and VideoPose 1-frame),
   selected on the validation split, and frozen (cached in OUT/lifters).
2. Detectors with the same budget (epochs, rows per epoch, seed) are trained on rendered images of the
   training frames (posectl.core.render: the real poses through the real cameras, drawn as articulated
   figures) in mode `2d` (heatmap loss only), `single` (3D guidance from SimpleBaseline) and `multi`
   (both lifters, DWA, consistency terms). Model selection on the validation split.
3. Reported on rendered Human3.6M S9 frames (every --eval-stride-th): MPJPE of the detected-then-lifted
   poses, averaged over both lifters (17 joints, root-relative, per-sample mean, no flip), P-MPJPE,
   2D error in image pixels and PDJ@0.2; mean +- std over seeds. The paper reports -4.6 % MPJPE on
   Human3.6M on average (real images, HRNet-W32, 40 epochs on a GPU).

Each run is the plugin's own epoch loop in this process (no Ray).

    python benchmarks/l2d_effect.py [--modes 2d single multi] [--seeds 0 1 2] [--epochs 4] [--rows 6000]
        [--out DIR] [--data-3d ../shared/data/h36m/data_3d_h36m.npz | --prepared DIR]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from _common import mean_std, train_local

LIFTERS = {"simple": {"backbone.name": "simple", "backbone.width": 1024, "backbone.dropout": 0.5},
           "videopose": {"backbone.name": "videopose", "backbone.width": 1024, "backbone.blocks": 2,
                         "backbone.dropout": 0.25}}
SUBJECTS = ["S1", "S5", "S6", "S7", "S8"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = Path(__file__).resolve().parents[1]
    ap.add_argument("--data-3d", default=str(here.parent / "shared" / "data" / "h36m" / "data_3d_h36m.npz"))
    ap.add_argument("--prepared", default=None, help="an already prepared Human3.6M dataset directory")
    ap.add_argument("--modes", nargs="+", default=["2d", "single", "multi"], choices=["2d", "single", "multi"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--rows", type=int, default=6000, help="training rows per epoch (frames are strided to this)")
    ap.add_argument("--lifter-epochs", type=int, default=5)
    ap.add_argument("--width", type=int, default=16, help="detector width (HRNet-W32: 32)")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--eval-stride", type=int, default=40)
    ap.add_argument("--val-stride", type=int, default=80)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import torch

    from posectl.config import to_dict
    from posectl.datasets.h36m import cached_h36m
    from posectl.datasets.lifting import LiftingData
    from posectl.datasets.store import PoseDataset
    from posectl.orchestrator.experiment import save_checkpoint
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    out = Path(args.out or tempfile.mkdtemp(prefix="posectl-l2d-"))
    out.mkdir(parents=True, exist_ok=True)
    path = str(Path(args.prepared) if args.prepared else cached_h36m(args.data_3d))
    ds = PoseDataset(path)
    stride = max(1, round(ds.manifest["splits"]["train"]["rows"] / args.rows))
    n_train = ds.manifest["splits"]["train"]["rows"]
    test = LiftingData(ds.load("test"), ds.layout)

    # 1. the frozen lifters (GT 2D, best validation epoch)
    lifter_paths = []
    for name, over in LIFTERS.items():
        p = out / "lifters" / f"{name}.pt"
        if not p.exists():
            r, m, _ = train_local("baseline", [over, {
                "epochs": args.lifter_epochs, "lr_decay": 0.9, "data.path": path, "data.train_subjects": SUBJECTS,
                "data.train_stride": max(1, stride // 4), "data.eval_stride": 20}])
            save_checkpoint(p, {"method": "baseline", "config": to_dict(m.cfg), "epoch": args.lifter_epochs - 1,
                                "layout": ds.layout.name, "method_state": {"model": m.weights()}})
            print(f"lifter {name}: val MPJPE {r['val']['mpjpe']:.1f} mm (GT 2D)", flush=True)
        lifter_paths.append(str(p))

    # 2. detectors, same budget per mode and seed
    done = out / "results.json"
    results: list[dict] = json.loads(done.read_text()) if done.exists() else []
    for seed in args.seeds:
        for mode in args.modes:
            if any((r["mode"], r["seed"]) == (mode, seed) for r in results):
                continue
            t1 = time.perf_counter()
            print(f"{mode} seed {seed}: ~{n_train // stride} rows/epoch", flush=True)
            r, method, _ = train_local("l2d", [{
                "mode": mode, "seed": seed, "epochs": args.epochs, "lifters": lifter_paths,
                "detector.width": args.width, "detector.image_size": args.image_size,
                "data.path": path, "data.train_subjects": SUBJECTS, "data.train_stride": stride,
                "data.eval_stride": args.val_stride}], lambda row: print(
                f"    epoch {row['epoch']}: val MPJPE {row['val_mpjpe']:.1f} mm, 2D {row.get('val_err_2d_px', 0):.1f}"
                f" px ({row['epoch_time_s']:.0f} s)", flush=True))
            t = method.evaluate(test, stride=args.eval_stride)     # the best-validation weights are loaded
            row = {"mode": mode, "seed": seed, "train_stride": stride, "best_epoch": r["best_epoch"],
                   "val_mpjpe": r["val"]["mpjpe"], **{k: t[k] for k in (
                       "mpjpe", "p_mpjpe", "mpjpe_l0", "mpjpe_l1", "mpjpe_ensemble", "mpjpe_gt2d", "err_2d_px", "pdj")},
                   "protocol": t["protocol"], "wall_s": time.perf_counter() - t1}
            results.append(row)
            print(f"{mode} seed {seed}: S9 MPJPE {row['mpjpe']:.2f} mm (SB {row['mpjpe_l0']:.1f}, VP "
                  f"{row['mpjpe_l1']:.1f}), P-MPJPE {row['p_mpjpe']:.2f}, 2D {row['err_2d_px']:.2f} px, PDJ "
                  f"{row['pdj']:.1f} % (best epoch {row['best_epoch']}, {row['wall_s']:.0f} s)", flush=True)
            done.write_text(json.dumps(results, indent=1))

    print()
    print(f"L2D effect: detector HRNet-style width {args.width}, {args.image_size}px rendered crops, {args.epochs} epochs, "
          f"~{args.rows} rows/epoch, seeds {args.seeds}; test Human3.6M S9 every {args.eval_stride}th frame")
    print(f"protocol: {results[0]['protocol']}; best-validation epoch; lifters on GT 2D: "
          f"{results[0]['mpjpe_gt2d']:.2f} mm")
    print(f"{'mode':8s}{'MPJPE':>18s}{'P-MPJPE':>18s}{'2D px':>16s}{'PDJ@0.2 %':>16s}{'vs 2d':>10s}")
    ref = [x["mpjpe"] for x in results if x["mode"] == "2d"]
    for mode in args.modes:
        r = [x for x in results if x["mode"] == mode]
        rel = (f"{(statistics.mean(x['mpjpe'] for x in r) / statistics.mean(ref) - 1) * 100:+.1f} %"
               if ref and mode != "2d" else "")
        print(f"{mode:8s}{mean_std([x['mpjpe'] for x in r]):>18s}{mean_std([x['p_mpjpe'] for x in r]):>18s}"
              f"{mean_std([x['err_2d_px'] for x in r]):>16s}{mean_std([x['pdj'] for x in r]):>16s}{rel:>10s}")
    print(f"wall time {time.perf_counter() - t0:.0f} s; results {done}")


if __name__ == "__main__":
    main()
