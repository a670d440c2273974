"""Training throughput: posectl's path (Ray Train, 1 worker, Ray Data ingest) vs a bare PyTorch loop.

Same model (SimpleBaseline, width 1024), same data (the synthetic default's training split), same
batch size, optimiser, loss, threads and precision, measured in one process tree: one Ray is started,
then `--rounds` rounds each run the bare loop and `posectl train` (alternating, so that a slow spell of
the machine hits both). Prints samples/s of both per round, the median of the per-round steady-state
rates (median training epoch) and their ratio, and the end-to-end ratio (whole job: ingest,
validation, checkpoints; Ray start-up excluded, it is paid once).

    python benchmarks/train_throughput.py [--epochs 3] [--rounds 3] [--batch-size 256]
    python benchmarks/train_throughput.py --device cuda --precision bf16 --json out.json   # on a GPU
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import time

import torch


def bare_loop(data, epochs: int, batch_size: int, device: torch.device, precision: str) -> tuple[list[float], float]:
    """The textbook loop: tensors on the device, a random permutation per epoch, Adam, MPJPE loss."""
    from posectl.core.metrics import mpjpe_loss
    from posectl.models import SimpleBaseline

    torch.manual_seed(0)
    x, y = data.inputs.to(device), data.targets.to(device)
    model = SimpleBaseline(x.shape[1], y.shape[1], hidden=1024, blocks=2, dropout=0.5).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, amsgrad=True)
    cast = (torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False) if precision == "bf16"
            else contextlib.nullcontext())
    model.train()
    t0 = time.perf_counter()
    rates = []
    for _ in range(epochs):
        te = time.perf_counter()
        n = 0
        perm = torch.randperm(len(x), device=device)
        with cast:
            for i in range(0, len(x), batch_size):
                idx = perm[i:i + batch_size]
                loss = mpjpe_loss(model(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                n += len(idx)
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(n / (time.perf_counter() - te))
    return rates, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3, help="bare + posectl runs, alternating (median reported)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from posectl.datasets.lifting import LiftingData
    from posectl.datasets.store import PoseDataset
    from posectl.datasets.synthetic import cached_synthetic
    from posectl.orchestrator import cluster
    from posectl.orchestrator.train import train

    device = torch.device(args.device)
    threads = os.cpu_count() or 1
    cpus = float(threads) if args.device == "cpu" else 1.0
    torch.set_num_threads(threads)
    ds = PoseDataset(cached_synthetic("source"))
    data = LiftingData(ds.load("train"), ds.layout)
    started = cluster.connect(None)                         # one Ray for every round
    rounds = []
    try:
        for r in range(args.rounds):
            bare_rates, bare_wall = bare_loop(data, args.epochs, args.batch_size, device, args.precision)
            with tempfile.TemporaryDirectory() as runs:
                t0 = time.perf_counter()
                out = train("baseline", [{"epochs": args.epochs, "batch_size": args.batch_size, "train_flip": False,
                                          "backbone.width": 1024, "precision": args.precision}],
                            runs_dir=runs, name=f"bench{r}", cpus_per_worker=cpus,
                            gpus=1 if args.device == "cuda" else None)
                wall = time.perf_counter() - t0
                hist = out.experiment.history()
            rounds.append({"bare": bare_rates, "bare_wall_s": bare_wall,
                           "posectl": [h["train_samples_per_s"] for h in hist], "posectl_wall_s": wall})
            print(f"round {r + 1}: bare " + ", ".join(f"{x:.0f}" for x in bare_rates) + " samples/s per epoch;"
                  f" posectl " + ", ".join(f"{x:.0f}" for x in rounds[-1]["posectl"]), flush=True)
    finally:
        if started:
            import ray
            ray.shutdown()
    bare = statistics.median(statistics.median(x["bare"]) for x in rounds)
    ours = statistics.median(statistics.median(x["posectl"]) for x in rounds)
    e2e = statistics.median(x["bare_wall_s"] / x["posectl_wall_s"] for x in rounds)
    print(f"data: {len(data):,} training samples x {args.epochs} epochs, batch {args.batch_size}, SimpleBaseline "
          f"width 1024, {args.device} ({threads} CPU threads), {args.precision}; {args.rounds} rounds")
    print(f"bare PyTorch loop: {bare:8.0f} samples/s   posectl train (Ray Train, 1 worker): {ours:8.0f} samples/s "
          f"(medians over rounds of the median epoch)")
    print(f"ratio posectl / bare, steady-state training: {ours / bare:.2f}")
    print(f"ratio posectl / bare, end to end (ingest, validation, checkpoints): {e2e:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": args.device, "precision": args.precision, "epochs": args.epochs,
                       "batch_size": args.batch_size, "rounds": rounds, "bare_samples_per_s": bare,
                       "posectl_samples_per_s": ours, "ratio_steady": ours / bare, "ratio_end_to_end": e2e}, f,
                      indent=1)


if __name__ == "__main__":
    main()
