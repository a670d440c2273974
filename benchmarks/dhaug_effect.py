"""Does DH-AUG's generated data help? `dhaug mode=none` vs `mode=gan`, same backbone, data and budget.

Two settings from the paper's claims (docs/methods/dhaug.md), each with several seeds (mean +- std):
  limited  train on Human3.6M S1 only, select on the validation split, test on S9;
  cross    train on Human3.6M S1, S5-S8, select on the validation split, test on the synthetic
           shifted target domain (other cameras, larger motions, other body proportions).
Protocol: 16 joints (no Neck/Nose, the PoseAug/DH-AUG set), root-relative, GT 2D, no flip, per-sample
mean and action-wise mean; the test split is evaluated once per run, with the best-validation weights.
Also saves a PNG grid of generated skeletons from the first `gan` run.

    python benchmarks/dhaug_effect.py [--data-3d ../shared/data/h36m/data_3d_h36m.npz]
        [--seeds 0 1 2] [--epochs 20] [--settings limited cross] [--set KEY=VALUE ...] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path


def _ms(xs: list[float]) -> str:
    if len(xs) < 2:
        return f"{xs[0]:.2f}" if xs else "-"
    return f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs):.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = Path(__file__).resolve().parents[1]
    ap.add_argument("--data-3d", default=str(here.parent / "shared" / "data" / "h36m" / "data_3d_h36m.npz"))
    ap.add_argument("--prepared", default=None, help="an already prepared Human3.6M dataset directory")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=20,
                    help="epochs per run (20: the README figures; about 3 h for both settings on 2 CPU cores)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--settings", nargs="+", default=["limited", "cross"], choices=["limited", "cross"])
    ap.add_argument("--rows", type=int, default=14000, help="training rows per epoch (frames are strided to this)")
    ap.add_argument("--eval-stride", type=int, default=5)
    ap.add_argument("--out", default=None, help="directory for runs, results.json and the PNG")
    ap.add_argument("--set", nargs="*", default=["batch_size=64", "precise_bn=50"], metavar="KEY=VALUE",
                    help="dhaug settings for every run (default: batch 64, i.e. 4x the updates of the default 256 "
                         "for the same CPU time, and batch-norm statistics re-estimated over 50 batches)")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    from posectl.datasets.h36m import cached_h36m
    from posectl.datasets.store import PoseDataset
    from posectl.orchestrator.evaluate import evaluate_checkpoint, sample_checkpoint
    from posectl.orchestrator.experiment import Experiment
    from posectl.orchestrator.train import train

    t0 = time.perf_counter()
    h36m = Path(args.prepared) if args.prepared else cached_h36m(args.data_3d)
    ds = PoseDataset(h36m)
    out = Path(args.out or tempfile.mkdtemp(prefix="posectl-dhaug-"))
    out.mkdir(parents=True, exist_ok=True)
    rows_per_subject = {}
    for shard, meta in ds.manifest["shards"].items():
        if shard.startswith("train"):
            rows_per_subject[meta["subject"]] = rows_per_subject.get(meta["subject"], 0) + meta["rows"]
    done = out / "results.json"     # an interrupted benchmark resumes: finished runs are kept, not re-run
    results: list[dict] = json.loads(done.read_text()) if done.exists() else []
    grid_done = (out / "dhaug_generated.png").exists()
    for setting in args.settings:
        subjects = ["S1"] if setting == "limited" else []
        n_rows = rows_per_subject["S1"] if subjects else sum(rows_per_subject.values())
        stride = max(1, round(n_rows / args.rows))
        for mode in ("none", "gan"):
            for seed in args.seeds:
                cfg = {"mode": mode, "seed": seed, "epochs": args.epochs, "warmup": args.warmup,
                       "data.path": str(h36m), "data.train_subjects": subjects, "data.train_stride": stride,
                       "data.eval_stride": args.eval_stride, **dict(kv.split("=", 1) for kv in args.set)}
                name = f"{setting}-{mode}-s{seed}"
                prev = [r for r in results if (r["setting"], r["mode"], r["seed"]) == (setting, mode, seed)]
                if prev and prev[0].get("set", []) == args.set and prev[0].get("epochs", args.epochs) == args.epochs:
                    print(f"{name}: kept from {done}", flush=True)
                    continue
                if prev:
                    raise SystemExit(f"error: {done} holds {name} from other settings; use another --out")
                t1 = time.perf_counter()
                # a run cut off mid-way (Ctrl-C, lost machine) continues from its last checkpoint
                resume = Experiment(out / "runs" / name).exists()
                if resume:
                    print(f"{name}: resuming from its last checkpoint (wall_s counts this part only)", flush=True)
                run = train("dhaug", [cfg], runs_dir=out / "runs", name=name, resume=resume)
                if setting == "limited":
                    test = run.results["test"]
                    test_name = "Human3.6M S9"
                else:
                    ev = evaluate_checkpoint(run.experiment.checkpoints / "best.pt", data="synthetic:target",
                                             split="test")
                    test, test_name = ev["metrics"], "synthetic target domain (test subjects)"
                row = {"setting": setting, "mode": mode, "seed": seed, "train_stride": stride,
                       "best_epoch": run.results["best_epoch"], "val_mpjpe": run.results["val"]["mpjpe"],
                       "test": test_name, "mpjpe": test["mpjpe"], "mpjpe_action_avg": test.get("mpjpe_action_avg"),
                       "p_mpjpe": test["p_mpjpe"], "protocol": test["protocol"],
                       "epochs": args.epochs, "set": args.set, "wall_s": time.perf_counter() - t1}
                results.append(row)
                print(f"{name}: test {test_name} MPJPE {row['mpjpe']:.2f} mm, P-MPJPE {row['p_mpjpe']:.2f} mm "
                      f"(val {row['val_mpjpe']:.2f}, best epoch {row['best_epoch']}, {row['wall_s']:.0f} s)", flush=True)
                (out / "results.json").write_text(json.dumps(results, indent=1))
                if mode == "gan" and not grid_done:
                    png = sample_checkpoint(run.experiment.root, 18, out / "dhaug_generated.png")
                    print(f"generated skeletons: {png}")
                    grid_done = True

    print()
    print(f"DH-AUG effect: SimpleBaseline (width 1024) on the 16-joint skeleton, GT 2D, {args.epochs} epochs "
          f"(GAN warm-up {args.warmup}), ~{args.rows} training rows per epoch, seeds {args.seeds}"
          f"{'; ' + ' '.join(args.set) if args.set else ''}")
    print("protocol: 16 joints, root-relative, per-sample MPJPE / P-MPJPE (mm), no flip, test frames every "
          f"{args.eval_stride}th; best-validation weights (validation = held-out end of training sequences)")
    print(f"{'setting':8s} {'test set':42s} {'metric':8s} {'none':>16s} {'gan':>16s} {'gan - none':>11s}")
    for setting in args.settings:
        r = [x for x in results if x["setting"] == setting and x["seed"] in args.seeds]
        for metric in ("mpjpe", "p_mpjpe"):
            a = [x[metric] for x in r if x["mode"] == "none"]
            b = [x[metric] for x in r if x["mode"] == "gan"]
            d = statistics.mean(b) - statistics.mean(a)
            print(f"{setting:8s} {r[0]['test']:42s} {metric:8s} {_ms(a):>16s} {_ms(b):>16s} {d:+10.2f}")
    print(f"wall time {time.perf_counter() - t0:.0f} s; results {out / 'results.json'}")


if __name__ == "__main__":
    main()
