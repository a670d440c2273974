"""Early stopping pays: the same search with ASHA and without, on the synthetic default.

Both searches sample the same trials (Optuna's seeded random start-up covers every sample), so
the only difference is ASHA stopping weak trials. Prints total epochs trained and the best
validation MPJPE of each, and their ratios.

    python benchmarks/asha_efficiency.py [--samples 16] [--epochs 10] [--concurrent 2] [--reduction-factor 4]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import yaml


def run(storage, name, scheduler, args):
    from posectl.orchestrator.trials import load_search
    from posectl.orchestrator.tune import tune_search
    space = {
        "method": "baseline", "samples": args.samples, "concurrent": args.concurrent,
        "searcher": {"name": "optuna", "seed": args.seed, "startup_trials": args.samples},
        "scheduler": scheduler, "resources": {"cpus": 1, "workers": 1},
        "fixed": {"epochs": args.epochs, "data.train_stride": args.train_stride},
        "parameters": {
            "lr": {"type": "loguniform", "low": 1e-4, "high": 3e-3},
            "backbone.width": {"type": "choice", "values": [128, 256, 512]},
            "backbone.dropout": {"type": "uniform", "low": 0.0, "high": 0.5},
            "lr_decay": {"type": "uniform", "low": 0.85, "high": 1.0}}}
    path = os.path.join(storage, f"{name}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(space, f)
    t0 = time.perf_counter()
    tune_search("baseline", space=path, storage_path=storage, name=name, verbose=0)
    wall = time.perf_counter() - t0
    s = load_search(name, storage)
    return sum(t.epochs for t in s.trials), s.best().best, wall, s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--concurrent", type=int, default=2)
    ap.add_argument("--train-stride", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reduction-factor", type=float, default=4)
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    from posectl.orchestrator import cluster
    cluster.connect()
    try:
        with tempfile.TemporaryDirectory() as storage:
            full_ep, full_best, full_wall, _ = run(storage, "fifo", {"name": "none"}, args)
            asha_ep, asha_best, asha_wall, s = run(storage, "asha", {"name": "asha", "grace_period": 1,
                                                                     "reduction_factor": args.reduction_factor}, args)
    finally:
        ray.shutdown()
    print(f"search: baseline on the synthetic default (every {args.train_stride}th training frame), "
          f"{args.samples} trials x up to {args.epochs} epochs, {args.concurrent} concurrent, Optuna seed {args.seed}; "
          f"metric: best validation MPJPE (h36m17, GT 2D, per sample)")
    print(f"without early stopping: {full_ep:3d} epochs, best val MPJPE {full_best:7.2f} mm, wall {full_wall:5.0f} s")
    print(f"ASHA (grace 1, reduction {args.reduction_factor:g}): {asha_ep:3d} epochs, best val MPJPE {asha_best:7.2f} mm, "
          f"wall {asha_wall:5.0f} s")
    print(f"ratio of epochs trained (ASHA / full): {asha_ep / full_ep:.2f}")
    print(f"ratio of best validation MPJPE (ASHA / full): {asha_best / full_best:.3f} "
          f"(difference {asha_best - full_best:+.2f} mm)")


if __name__ == "__main__":
    main()
