"""Training throughput: posectl's path (Ray Train, 1 worker, Ray Data ingest) vs a bare PyTorch loop.

Same model (SimpleBaseline, width 1024), same data (the synthetic default's training split), same
batch size, optimiser and loss, measured in one run on this machine. Prints samples/s of both and
their ratio, for steady-state training (per-epoch training time) and end to end (wall time of the
whole job including Ray start-up, ingest, validation and checkpoints).

    python benchmarks/train_throughput.py [--epochs 3] [--batch-size 256]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch


def bare_loop(data, epochs: int, batch_size: int, threads: int) -> tuple[list[float], float]:
    from posectl.core.metrics import mpjpe_loss
    from posectl.models import SimpleBaseline

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    x, y = data.inputs, data.targets
    model = SimpleBaseline(x.shape[1], y.shape[1], hidden=1024, blocks=2, dropout=0.5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, amsgrad=True)
    model.train()
    t0 = time.perf_counter()
    rates = []
    for _ in range(epochs):
        te = time.perf_counter()
        n = 0
        perm = torch.randperm(len(x))
        for i in range(0, len(x), batch_size):
            idx = perm[i:i + batch_size]
            loss = mpjpe_loss(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n += len(idx)
        rates.append(n / (time.perf_counter() - te))
    return rates, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=256)
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from posectl.datasets.lifting import LiftingData
    from posectl.datasets.store import PoseDataset
    from posectl.datasets.synthetic import cached_synthetic
    from posectl.orchestrator.train import train

    threads = os.cpu_count() or 1
    ds = PoseDataset(cached_synthetic("source"))
    data = LiftingData(ds.load("train"), ds.layout)
    bare_rates, bare_wall = bare_loop(data, args.epochs, args.batch_size, threads)

    with tempfile.TemporaryDirectory() as runs:
        t0 = time.perf_counter()
        out = train("baseline", [{"epochs": args.epochs, "batch_size": args.batch_size, "train_flip": False,
                                  "backbone.width": 1024}], runs_dir=runs, name="bench")
        wall = time.perf_counter() - t0
        hist = out.experiment.history()
    import statistics
    ray_rates = [r["train_samples_per_s"] for r in hist]
    ray_sps, bare_sps = statistics.median(ray_rates), statistics.median(bare_rates)
    print(f"data: {len(data):,} training samples x {args.epochs} epochs, batch {args.batch_size}, "
          f"SimpleBaseline width 1024, {threads} CPU threads")
    print("per-epoch samples/s, bare: " + ", ".join(f"{r:.0f}" for r in bare_rates)
          + "   posectl: " + ", ".join(f"{r:.0f}" for r in ray_rates))
    print(f"bare PyTorch loop (in-memory tensors): {bare_sps:8.0f} samples/s (median epoch)   wall {bare_wall:6.1f} s")
    print(f"posectl train (Ray Train, 1 worker):    {ray_sps:8.0f} samples/s (median epoch)   wall {wall:6.1f} s "
          f"(incl. Ray start-up, Ray Data ingest, validation, checkpoints)")
    print(f"ratio posectl / bare, steady-state training: {ray_sps / bare_sps:.2f}")
    print(f"ratio posectl / bare, end to end:            {bare_wall / wall:.2f}")


if __name__ == "__main__":
    main()
