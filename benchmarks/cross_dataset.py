"""Human3.6M -> HumanEva-I with every cross-dataset method (issue #33, item 2).

Source: Human3.6M S1, S5-S8 (GT 2D, ../shared/data/h36m), strided to `--rows` training rows per epoch;
model selection on its validation split. Target: the HumanEva-I training takes in ../shared/data/humaneva
(`posectl data prepare humaneva --test-subject Train/S3`: cameras by DLT). Adaptation sees the 2D of
subjects S1 and S2 (split `train`, without 3D); everything is evaluated on subject S3 (split `test`, the
only place target 3D is read), all frames of cameras C1-C3, GT 2D, no flip, root-relative; MPJPE and
P-MPJPE (mm, per sample) and PCK@150 (%) on 17 joints (DH-AUG predicts 16: its 16) and on 14 joints.

Rows: baseline (source only); dhaug mode none / gan; gpa source_only / gpa / gpa_local / gpa at gpa_prob 0.5; posynda stage
pretrain (source only) / adapt (from that pretrain, HumanEva 2D; PoSynDA also with its flip averaging). Mean +- std
over `--seeds`. Each run is the plugin's own epoch loop in this process (benchmarks/_common.py: train_local). The
first seed's source validation curve of every row is printed, to show the budget is where it has levelled off.

    python benchmarks/cross_dataset.py [--rows 66000] [--epochs 8] [--seeds 0 1 2] [--out DIR]
    python benchmarks/cross_dataset.py --rows 2000 --epochs 2 --seeds 0 --methods baseline gpa   # a smoke run

At the issue's budget (8 epochs of ~66k rows), per seed on 2 CPU cores: a SimpleBaseline or `gpa` run
takes minutes, `dhaug none` 7.4 min, `dhaug gan` 20 min, PoSynDA's pretraining 13-15 min and its adaptation
12 min. `--device cuda` trains and evaluates on a GPU (`--precision bf16`: the protocol strings name
it); `--out DIR` keeps finished rows, so an interrupted grid continues where it stopped.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from _common import mean_std, train_local

# PoSynDA validates with 3 hypotheses x 2 DDIM steps x flip, 12 network passes per pose: its per-epoch model
# selection reads every 20th frame of the source validation split, the other rows every frame. Its stages
# follow benchmarks/posynda_effect.py: pretraining at batch 64 (the rows' epochs and source rows), then
# 4 adaptation epochs over every target training row (9,057) at batch 256, lr 1e-3 x0.993.
PRETRAIN = {"stage": "pretrain", "batch_size": 64, "data.eval_stride": 20}
ADAPT = {"stage": "adapt", "batch_size": 256, "epochs": 4, "data.train_stride": 1, "lr": 1e-3, "lr_decay": 0.993,
         "data.eval_stride": 20}
ROWS = {  # row name -> (method, config values)
    "baseline": ("baseline", {}),
    "dhaug none": ("dhaug", {"mode": "none"}),
    "dhaug gan": ("dhaug", {"mode": "gan"}),
    "gpa source_only": ("gpa", {"mode": "source_only"}),
    "gpa gpa": ("gpa", {"mode": "gpa"}),
    "gpa gpa_local": ("gpa", {"mode": "gpa_local"}),
    "gpa gpa, gpa_prob 0.5": ("gpa", {"mode": "gpa", "gpa_prob": 0.5}),
    "posynda source only": ("posynda", PRETRAIN),
    "posynda adapted": ("posynda", ADAPT),
}
# figures' keys beyond "all" / "14": PoSynDA with flip averaging, and its adaptation's last epoch
VARIANTS = {"": "", " flip": " (flip)", " last": " (last epoch)", " last flip": " (last epoch, flip)"}
LIFTING = {"backbone.name": "simple", "backbone.width": 1024, "lr": 1e-3, "lr_decay": 0.9}


def data_arguments(ap: argparse.ArgumentParser) -> None:
    """The source, target and budget flags (shared with benchmarks/humaneva_why.py)."""
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    ap.add_argument("--h36m-3d", default=str(shared / "h36m" / "data_3d_h36m.npz"))
    ap.add_argument("--humaneva", default=str(shared / "humaneva"))
    ap.add_argument("--rows", type=int, default=66000, help="source training rows per epoch (frames strided to it)")
    ap.add_argument("--epochs", type=int, default=8)


def setup(args: argparse.Namespace) -> tuple[str, Path, int, dict]:
    """Source and target datasets (the target imported once, S3 as its test split), the source frame
    stride giving `--rows` rows per epoch, and the config values every row shares."""
    import warnings

    from posectl.datasets.h36m import cached_h36m
    from posectl.datasets.humaneva import prepare_humaneva
    from posectl.datasets.store import PoseDataset
    from posectl.datasets.synthetic import cache_dir
    source = str(cached_h36m(args.h36m_3d))
    target = cache_dir() / "humaneva-train-test-s3"
    if not (target / "manifest.json").exists():
        he = Path(args.humaneva)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prepare_humaneva(target, he / "data_3d_humaneva15_train.npz", [he / "data_2d_humaneva15_gt_train.npz"],
                             test_subjects=["Train/S3"], overwrite=True)
    stride = max(1, round(PoseDataset(source).manifest["splits"]["train"]["rows"] / args.rows))
    common = {"data.path": source, "data.train_stride": stride, "epochs": args.epochs, "target.path": str(target),
              "target.split": "train", "target.test_split": "test"}
    return source, target, stride, common


def evaluate_rows(m, method: str, test) -> dict[str, dict]:
    """MPJPE, P-MPJPE and PCK@150 on 17 (DH-AUG: 16) and 14 joints, no flip; PoSynDA also with its own flip
    averaging (keys "all flip", "14 flip"): the teacher's setting, the table's other rows have none."""
    figures = {}
    for joints in ("all", "14"):
        m.cfg.eval_joints = "16" if (joints == "all" and method == "dhaug") else joints
        for flip in ((False, True) if method == "posynda" else (False,)):
            if method == "posynda":
                m.cfg.test_flip = flip
            e = m.evaluate(test)
            figures[joints + (" flip" if flip else "")] = {
                "mpjpe": e["mpjpe"], "p_mpjpe": e["p_mpjpe"], "pck150": e.get("pck150"), "protocol": e["protocol"]}
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data_arguments(ap)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=["baseline", "dhaug", "gpa", "posynda"])
    ap.add_argument("--out", default=None)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where every run trains and evaluates")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    args = ap.parse_args()
    import torch

    from posectl.methods.base import Context
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    from posectl.datasets.lifting import LiftingData
    from posectl.datasets.store import PoseDataset

    t0 = time.perf_counter()
    out = Path(args.out or tempfile.mkdtemp(prefix="posectl-cross-"))
    out.mkdir(parents=True, exist_ok=True)
    source, target, stride, common = setup(args)
    tds = PoseDataset(target)
    test = LiftingData(tds.load("test"), tds.layout, keypoints="gt")
    done = out / "results.json"
    results: list[dict] = json.loads(done.read_text()) if done.exists() else []
    pretrained: dict[int, str] = {r["seed"]: r["checkpoint"] for r in results if r["row"] == "posynda source only"}
    for row, (method, values) in ROWS.items():
        if method not in args.methods:
            continue
        for seed in args.seeds:
            if any((r["row"], r["seed"]) == (row, seed) for r in results):
                continue
            layer = {**common, **values, "seed": seed, "precision": args.precision}
            if method in ("baseline", "dhaug", "gpa"):
                layer.update(LIFTING)
            if method in ("baseline", "dhaug"):
                layer = {k: v for k, v in layer.items() if not k.startswith("target.")}
            if row == "posynda adapted":
                if seed not in pretrained:
                    raise SystemExit("posynda adapted needs the 'posynda source only' run of the same seed first")
                layer["source_checkpoint"] = pretrained[seed]
            t1 = time.perf_counter()
            res, m, rep = train_local(method, [layer], ctx=Context(device=device, prepare_model=lambda n: n.to(device)),
                                      keep_states=row == "posynda adapted")
            figures = evaluate_rows(m, method, test)
            if row == "posynda adapted":   # source validation favours the least-adapted epoch: the last one too
                m.load_state_dict({"model": rep.states[-1]["method_state"]["model"]})
                figures.update({k.replace("all", "all last").replace("14", "14 last"): v
                                for k, v in evaluate_rows(m, method, test).items()})
            rec = {"row": row, "seed": seed, "train_stride": layer["data.train_stride"], "epochs": layer["epochs"],
                   "batch_size": layer.get("batch_size"),
                   "best_epoch": res["best_epoch"], "val_curve": [r["val_mpjpe"] for r in rep.rows],
                   "figures": figures, "wall_s": time.perf_counter() - t1}
            if row == "posynda source only":
                ck = out / f"posynda-pretrain-seed{seed}.pt"
                from posectl.orchestrator.experiment import save_checkpoint
                save_checkpoint(ck, {**rep.best, "method_state": {"model": rep.best["method_state"]["model"]}})
                rec["checkpoint"] = pretrained[seed] = str(ck)
            results.append(rec)
            f = figures["all"]
            print(f"{row:20s} seed {seed}: HumanEva S3 MPJPE {f['mpjpe']:.1f} mm, P-MPJPE {f['p_mpjpe']:.1f}, "
                  f"14 joints {figures['14']['mpjpe']:.1f} (source val by epoch: "
                  f"{', '.join(f'{v:.1f}' for v in rec['val_curve'])}; {rec['wall_s']:.0f} s)", flush=True)
            done.write_text(json.dumps(results, indent=1))

    print(f"\nHuman3.6M (S1, S5-S8, GT 2D, every {stride}th frame, {args.epochs} epochs, best source-validation epoch) "
          f"-> HumanEva-I S3 (C1-C3, all {len(test)} frames), seeds {args.seeds}")
    print(f"protocol (17): {results[0]['figures']['all']['protocol']}")
    print(f"| row | MPJPE 17 | P-MPJPE 17 | PCK@150 17 | MPJPE 14 | P-MPJPE 14 | PCK@150 14 |\n|---|---|---|---|---|---|---|")
    for row in ROWS:
        rs = [r for r in results if r["row"] == row]
        for variant, note in VARIANTS.items():
            if not rs or any("all" + variant not in r["figures"] for r in rs):
                continue
            cells = [mean_std([r["figures"][j + variant][k] for r in rs], 1)
                     if all(r["figures"][j + variant][k] is not None for r in rs) else "-"
                     for j in ("all", "14") for k in ("mpjpe", "p_mpjpe", "pck150")]
            note = " (16 joints)" if row.startswith("dhaug") else note
            print(f"| {row}{note} | " + " | ".join(cells) + " |")
    print(f"\nwall time {time.perf_counter() - t0:.0f} s; results {done}")


if __name__ == "__main__":
    main()
