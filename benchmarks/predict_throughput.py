"""Prediction throughput: `posectl predict` end to end vs a bare `model(x)` loop over the same tensors.

One SimpleBaseline run (width 1024, trained one epoch on a small synthetic dataset: the weights do not
change the speed) lifts `--frames` frames of 2D keypoints (the synthetic test split's, tiled), given as a
.npy file in pixels. posectl's side is the whole `posectl predict` path in this process: read the file,
map the layout, check and fill keypoints, normalise, lift in batches, write the .npz. The bare side is
`model(x)` in eval mode under no_grad over the already normalised tensor, in batches of the same size.
`--rounds` rounds alternate the two; prints both rates per round, the medians and their ratio.

    python benchmarks/predict_throughput.py [--frames 100000] [--rounds 3] [--device cpu]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def make_run(root: Path) -> Path:
    from posectl.datasets.synthetic import SynthConfig, write_synthetic
    from posectl.orchestrator.experiment import Experiment, save_checkpoint
    from posectl.orchestrator.reporters import MemoryReporter
    from posectl.orchestrator.spec import RunSpec, run_local
    data = write_synthetic(root / "data", SynthConfig(subjects=4, frames=40))
    spec = RunSpec.build("baseline", [{"data.path": str(data), "epochs": 1, "backbone.width": 1024}])
    rep = MemoryReporter()
    run_local(spec, rep)
    exp = Experiment(root / "run")
    exp.create("baseline", spec.config)
    save_checkpoint(exp.checkpoints / "best.pt", {**rep.best, "method_state": {"model": rep.best["method_state"]["model"]}})
    return exp.root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    from posectl.core.camera import normalize_screen
    from posectl.datasets.store import PoseDataset
    from posectl.orchestrator.experiment import load_checkpoint
    from posectl.orchestrator.predict import predict
    from posectl.orchestrator.spec import RunSpec

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run = make_run(root)
        a = PoseDataset(root / "data").load("test")
        a = a.take(a.sequence_order())
        reps = -(-args.frames // len(a))
        kp = np.tile(a.keypoints_2d, (reps, 1, 1))[:args.frames].astype(np.float32)
        w, h = (int(v) for v in a.image_size[0])
        np.save(root / "kp.npy", kp)
        # the bare side: the same network and weights, the same normalised inputs, already in memory
        state = load_checkpoint(run / "checkpoints" / "best.pt")
        spec = RunSpec.build("baseline", [state["config"]], training=False, open_data=False)
        dev = torch.device(args.device)
        model = spec.cfg.backbone.build(17, 17).to(dev).eval()
        model.load_state_dict(state["method_state"]["model"])
        x = torch.from_numpy(normalize_screen(kp, np.float32(w), np.float32(h)).astype(np.float32)).to(dev)
        batch = 4096                                        # LiftingMethod.predict's batch

        def bare() -> float:
            t0 = time.perf_counter()
            with torch.no_grad():
                for i in range(0, len(x), batch):
                    model(x[i:i + batch])
            if dev.type == "cuda":
                torch.cuda.synchronize()
            return len(x) / (time.perf_counter() - t0)

        def posectl() -> float:
            t0 = time.perf_counter()
            res = predict(run, root / "kp.npy", root / "out.npz", layout="h36m17", image_size=(w, h), device=args.device)
            assert len(res.joints_3d) == len(kp)
            return len(kp) / (time.perf_counter() - t0)

        bare()                                              # warm-up: allocator, threads
        rows = []
        for r in range(args.rounds):
            b, p = bare(), posectl()
            rows.append((b, p))
            print(f"round {r + 1}: bare model(x) {b:,.0f} frames/s, posectl predict {p:,.0f} frames/s, ratio {p / b:.2f}",
                  flush=True)
        b = statistics.median(r[0] for r in rows)
        p = statistics.median(r[1] for r in rows)
        print(f"\n{args.frames:,} frames, SimpleBaseline width 1024, batch {batch}, {args.device}, "
              f"{torch.get_num_threads()} threads")
        print(f"median: bare {b:,.0f} frames/s, posectl predict (file in, .npz out) {p:,.0f} frames/s")
        print(f"ratio posectl/bare: {p / b:.2f}")


if __name__ == "__main__":
    main()
