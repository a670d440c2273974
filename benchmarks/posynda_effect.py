"""Does PoSynDA's adaptation help? Source-only (the pretrained diffusion model) vs adapted, per protocol.

Protocols (docs/methods/posynda.md; Human3.6M from ../shared/data/h36m, GT 2D):
  cross-subject  labelled S1; unlabelled 2D of S5-S8 (train split, read without 3D); test S9.
                 Also a target-supervised reference: the same model pretrained on S5-S8 *with* labels.
  cross-domain   labelled S1, S5-S8; unlabelled 2D of the synthetic shifted target (train split);
                 test on the synthetic target's test split.
Model selection uses the source validation split (no target labels). Metrics: MPJPE and P-MPJPE of the
JPMA pose (root estimated from 2D), P-Best and P-Agg over hypotheses; 17 joints, root-relative.
Each run is the plugin's epoch loop in this process (the loop a Tune trial runs). Mean +- std over seeds.

    python benchmarks/posynda_effect.py [--protocols subject domain] [--seeds 0 1 2]
        [--pretrain-epochs 12] [--pretrain-batch 64] [--adapt-epochs 2] [--rows 14000] [--adapt-rows 8000]
        [--adapt-batch 256] [--adapt-lr 1e-3] [--eval-stride 40] [--out DIR] [--cost [--tflops 67]]

--cost trains nothing: it prints the compute the same command would take. It counts the FLOPs
(torch.utils.flop_counter: matrix products, attention included, activation checkpointing's recomputation
included) of one real pretraining step, adaptation step and evaluated row on one row at the configured
size, and multiplies by the command's rows, epochs, evaluations (validation after every epoch and at
the end, test once per stage) and seeds. Element-wise work is not counted, so the hours printed at
--tflops sustained are a lower bound. At the published size the adaptation row alone takes minutes on a CPU.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from _common import mean_std, train_local


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = Path(__file__).resolve().parents[1]
    ap.add_argument("--data-3d", default=str(here.parent / "shared" / "data" / "h36m" / "data_3d_h36m.npz"))
    ap.add_argument("--prepared", default=None, help="an already prepared Human3.6M dataset directory")
    ap.add_argument("--protocols", nargs="+", default=["subject", "domain"], choices=["subject", "domain"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--pretrain-epochs", type=int, default=12)
    ap.add_argument("--adapt-epochs", type=int, default=2)
    ap.add_argument("--rows", type=int, default=14000, help="source rows per pretraining epoch")
    ap.add_argument("--pretrain-batch", type=int, default=64,
                    help="pretraining batch (64: 4x the updates of 256 for the same CPU time)")
    ap.add_argument("--adapt-batch", type=int, default=256, help="adaptation batch")
    ap.add_argument("--adapt-rows", type=int, default=8000, help="target rows per adaptation epoch")
    ap.add_argument("--adapt-lr", type=float, default=1e-3,
                    help="adaptation lr (the released code: 1e-4 for 40 epochs; the search space's top for a short budget)")
    ap.add_argument("--adapt-set", nargs="+", default=[], metavar="KEY=VALUE",
                    help="extra adaptation config overrides, e.g. w_t3d=0 (the ablation without the pseudo-label term)")
    ap.add_argument("--model-set", nargs="+", default=[], metavar="KEY=VALUE",
                    help="overrides for every stage (pretrain, adapt, target-supervised), e.g. denoiser.frames=9")
    ap.add_argument("--eval-stride", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="", help="torch device for every stage (default: cuda when available, "
                                                 "else cpu)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--cost", action="store_true", help="print the compute this command would take; train nothing")
    ap.add_argument("--tflops", type=float, default=67.0,
                    help="sustained TFLOP/s for --cost's hours (67: an H100/H200's dense FP32 peak, "
                         "the precision posectl trains in)")
    args = ap.parse_args()

    import torch

    from posectl.config import build, parse_overrides, to_dict
    from posectl.datasets.h36m import cached_h36m
    from posectl.datasets.lifting import LiftingData
    from posectl.datasets.store import PoseDataset
    from posectl.datasets.synthetic import cached_synthetic
    from posectl.errors import ConfigError
    from posectl.methods.base import Context, get_method
    from posectl.orchestrator.experiment import save_checkpoint
    torch.set_num_threads(args.threads)
    try:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as e:
        ap.error(f"--device {args.device}: {str(e).splitlines()[0]}")
    t0 = time.perf_counter()
    out = Path(args.out or tempfile.mkdtemp(prefix="posectl-posynda-"))
    out.mkdir(parents=True, exist_ok=True)
    cls = get_method("posynda")
    try:                                       # a malformed pair, unknown key or bad value fails now, not after pretraining
        model_set = parse_overrides(args.model_set)
        build(cls.Config, model_set)
    except ConfigError as e:
        ap.error(f"--model-set: {e}")
    try:
        adapt_set = parse_overrides(args.adapt_set)
        build(cls.Config, {"stage": "adapt", **model_set, **adapt_set})
    except ConfigError as e:
        ap.error(f"--adapt-set: {e}")
    h36m = str(Path(args.prepared) if args.prepared else cached_h36m(args.data_3d))
    hds = PoseDataset(h36m)
    synth = str(cached_synthetic("target"))
    sds = PoseDataset(synth)
    settings = {
        "subject": {"source": ["S1"], "target": (h36m, ["S5", "S6", "S7", "S8"]), "test": (hds, "test")},
        "domain": {"source": [], "target": (synth, []), "test": (sds, "test")},
    }
    results: list[dict] = []

    def run(*layers):
        """One run as `posectl train posynda` builds it (RunSpec), in this process on `device`."""
        ctx = Context(device=device, prepare_model=lambda net: net.to(device))
        results, method, _ = train_local("posynda", [common, *layers], lambda row: print(
            f"  epoch {row['epoch']}: val MPJPE {row['val_mpjpe']:.1f} mm", flush=True), ctx=ctx, test=True)
        return results, method

    for proto in args.protocols:
        s = settings[proto]
        train_arrays = hds.load("train", subjects=s["source"] or None)
        train = LiftingData(train_arrays, hds.layout)
        val = LiftingData(hds.load("val", subjects=s["source"] or None), hds.layout)   # source subjects only
        stride = max(1, round(len(train) / args.rows))
        tpath, tsubj = s["target"]
        tds = PoseDataset(tpath)
        target_2d = tds.load("train", subjects=tsubj or None, with_3d=False)
        tstride = max(1, round(len(target_2d) / args.adapt_rows))
        test = LiftingData(s["test"][0].load(s["test"][1]), hds.layout)
        common = {"data.path": h36m, "data.train_subjects": s["source"], "data.val_subjects": s["source"],
                  "data.eval_stride": args.eval_stride, "target.path": tpath, "target.subjects": tsubj, **model_set}
        if args.cost:
            sup = {"rows": len(target_2d),          # the same S5-S8 training rows, here with labels
                   "val": len(hds.load("val", subjects=tsubj, with_3d=False))} if proto == "subject" else None
            print(f"{proto}: compute of this command")
            print_cost(args, cls, common, adapt_set, train, val, target_2d, test, sup, out)
            continue
        for seed in args.seeds:
            t1 = time.perf_counter()
            pre_results, pre = run({"stage": "pretrain", "seed": seed, "epochs": args.pretrain_epochs,
                                    "batch_size": args.pretrain_batch, "data.train_stride": stride})
            ckpt = out / f"{proto}-pretrain-s{seed}.pt"
            save_checkpoint(ckpt, {"method": "posynda", "config": to_dict(pre.cfg), "epoch": 0,
                                   "method_state": {"model": pre.weights()}})    # the best-validation weights
            rows = [("source_only", pre_results)]
            rows.append(("posynda", run({"stage": "adapt", "seed": seed, "epochs": args.adapt_epochs,
                                         "source_checkpoint": str(ckpt), "lr": args.adapt_lr, "lr_decay": 0.993,
                                         "batch_size": args.adapt_batch, "data.train_stride": tstride},
                                        adapt_set)[0]))
            if proto == "subject":    # target-supervised reference: labelled S5-S8
                n_sup = len(hds.load("train", subjects=tsubj, with_3d=False))
                rows.append(("target_supervised", run({
                    "stage": "pretrain", "seed": seed, "epochs": args.pretrain_epochs, "batch_size": args.pretrain_batch,
                    "data.train_subjects": tsubj, "data.val_subjects": tsubj, "target.subjects": [],
                    "data.train_stride": max(1, round(n_sup / args.rows))})[0]))
            for mode, r in rows:
                t = r["test"]
                results.append({"protocol": proto, "mode": mode, "seed": seed, "mpjpe": t["mpjpe"],
                                "p_mpjpe": t["p_mpjpe"], "p_best": t["p_best"], "p_agg": t["p_agg"],
                                "best_epoch": r["best_epoch"], "test_protocol": t["protocol"],
                                "pretrain_batch": args.pretrain_batch, "adapt_batch": args.adapt_batch,
                                "pretrain_epochs": args.pretrain_epochs, "adapt_epochs": args.adapt_epochs,
                                "adapt_set": adapt_set, "model_set": model_set, "device": str(device)})
                print(f"{proto:8s} {mode:17s} seed {seed}: MPJPE {t['mpjpe']:.1f} mm, P-MPJPE {t['p_mpjpe']:.1f}, "
                      f"P-Best {t['p_best']:.1f}, P-Agg {t['p_agg']:.1f} ({time.perf_counter() - t1:.0f} s so far)",
                      flush=True)
            (out / "results.json").write_text(json.dumps(results, indent=1))
        del train, val, train_arrays, target_2d, test

    if args.cost:
        return
    print()
    print(f"PoSynDA effect: pretrain {args.pretrain_epochs} epochs (~{args.rows} rows), adapt {args.adapt_epochs} "
          f"epochs (~{args.adapt_rows} target rows, lr {args.adapt_lr:g}{''.join(', ' + kv for kv in args.adapt_set)}), "
          f"{''.join(kv + ', ' for kv in args.model_set)}seeds {args.seeds}; "
          f"test every {args.eval_stride}th frame")
    for proto in args.protocols:                     # paired: the same pretrained model before and after
        d = {s: {x["mode"]: x["mpjpe"] for x in results if x["protocol"] == proto and x["seed"] == s} for s in args.seeds}
        deltas = [d[s]["posynda"] - d[s]["source_only"] for s in args.seeds if "posynda" in d[s]]
        if deltas:
            print(f"{proto}: PoSynDA - source-only MPJPE per seed: " + ", ".join(f"{x:+.1f}" for x in deltas)
                  + f" mm (mean {mean_std(deltas, 1)})")
    print(f"protocol: {results[0]['test_protocol']}")
    print(f"{'protocol':10s}{'mode':19s}{'MPJPE':>14s}{'P-MPJPE':>14s}{'P-Best':>14s}{'P-Agg':>14s}")
    for proto in args.protocols:
        for mode in ("source_only", "posynda", "target_supervised"):
            r = [x for x in results if x["protocol"] == proto and x["mode"] == mode]
            if r:
                print(f"{proto:10s}{mode:19s}" + "".join(f"{mean_std([x[k] for x in r], 1):>14s}"
                                                          for k in ("mpjpe", "p_mpjpe", "p_best", "p_agg")))
    print(f"wall time {time.perf_counter() - t0:.0f} s on {device}; results {out / 'results.json'}")


def print_cost(args, cls, common, adapt_set, train, val, target_2d, test, sup, out) -> None:
    """--cost: FLOPs of one row of each stage, counted on a real step at the configured size, times the
    command's rows, epochs, evaluations and seeds."""
    import math

    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    from posectl.config import build, to_dict
    from posectl.methods.base import Context
    from posectl.orchestrator.experiment import save_checkpoint

    class Count(TorchDispatchMode):
        """torch's FLOP formulas per op, without FlopCounterMode's module tracker (which doubled the
        memory of a checkpointed backward: an adaptation step at the published size did not fit 24 GB)."""
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                Count.total += formula(*args, **(kwargs or {}), out_val=out)
            return out

    def flops(fn) -> int:
        Count.total = 0
        with sdpa_kernel(SDPBackend.MATH), Count():     # the math kernel: fused attention kernels have no formula
            fn()
        return Count.total

    one = {"data.train_stride": len(train) + 1, "batch_size": 1}      # an epoch of one row
    pre = cls(build(cls.Config, common, {"stage": "pretrain", **one}), train, Context())
    per_row = {"pretrain": flops(lambda: pre.train_epoch(0)),
               "evaluation": flops(lambda: pre.predict_hypotheses(val, stride=len(val) + 1))}
    ckpt = out / "cost-source.pt"
    save_checkpoint(ckpt, {"method": "posynda", "config": to_dict(pre.cfg), "epoch": 0,
                           "method_state": pre.state_dict()})
    ad = cls(build(cls.Config, common, {"stage": "adapt", "source_checkpoint": str(ckpt), **adapt_set, **one,
                                        "data.train_stride": len(target_2d) + 1}),
             train, Context(inputs={"target": target_2d}))
    per_row["adaptation"] = flops(lambda: ad.train_epoch(0))

    def rows(n, stride):
        return math.ceil(n / stride)

    stages = [("pretrain (source)", args.pretrain_epochs, rows(len(train), max(1, round(len(train) / args.rows))),
               per_row["pretrain"], rows(len(val), args.eval_stride)),
              ("adapt", args.adapt_epochs, rows(len(target_2d), max(1, round(len(target_2d) / args.adapt_rows))),
               per_row["adaptation"], rows(len(val), args.eval_stride))]
    if sup:
        stages.append(("target-supervised", args.pretrain_epochs,
                       rows(sup["rows"], max(1, round(sup["rows"] / args.rows))), per_row["pretrain"],
                       rows(sup["val"], args.eval_stride)))
    test_rows = rows(len(test), args.eval_stride)
    d = pre.cfg.denoiser
    print(f"denoiser {d.frames} frames, width {d.width}, depth {d.depth}, heads {d.heads}, checkpointing "
          f"{d.checkpointing}; H {ad.cfg.hypotheses}, K {ad.cfg.sampling_steps}; GFLOP per row: "
          + ", ".join(f"{k} {v / 1e9:.4g}" for k, v in per_row.items()))
    total = 0.0
    print(f"{'stage':20s}{'epochs':>7s}{'rows/epoch':>12s}{'train PFLOP':>13s}{'eval rows':>11s}{'eval PFLOP':>12s}")
    for name, epochs, n, c, nval in stages:
        train_f = epochs * n * c
        n_eval = (epochs + 1) * nval + test_rows               # validation every epoch and at the end, test once
        eval_f = n_eval * per_row["evaluation"]
        total += train_f + eval_f
        print(f"{name:20s}{epochs:7d}{n:12d}{train_f / 1e15:13.4g}{n_eval:11d}{eval_f / 1e15:12.4g}")
    seeds = len(args.seeds)
    print(f"per seed {total / 1e15:.4g} PFLOP; {seeds} seed(s) {seeds * total / 1e15:.4g} PFLOP: at least "
          f"{seeds * total / (args.tflops * 1e12) / 3600:.3g} h at {args.tflops:g} TFLOP/s sustained")

if __name__ == "__main__":
    main()
