"""The GPU check: one prepared script for a lent GPU machine (plan: under 8 minutes on one H100/H200).

Steps, in this order (the training runs in this process, on one Ray started once; the throughput
benchmark as a subprocess with a time limit):
1. every registered method's `posectl train METHOD --smoke-test --gpus 1`, in fp32 and in bf16;
2. `posectl train baseline --smoke-test --workers 2 --gpus-per-worker 0.5`: two DDP workers (gloo)
   sharing the one GPU;
   `posectl train baseline --smoke-test --gpus 1 data.device_fraction=0`: batches gathered into pinned
   host memory and copied without blocking, instead of the split held on the GPU (its MPJPE should match
   the fp32 smoke run's up to GPU nondeterminism);
3. `benchmarks/train_throughput.py --device cuda` in fp32 and bf16: posectl / bare PyTorch, the same
   model, data and precision, steady state.
It writes gpu_check.json (every step: command, exit code, wall time, test MPJPE and protocol of the
runs, the throughput figures) and prints a table.

    python benchmarks/gpu_check.py --out results/          # on the GPU machine
    python benchmarks/gpu_check.py --dry-run               # anywhere: checks its own plan, trains nothing

--dry-run checks that every command of the plan parses against posectl's CLI, that every run's config
resolves (method, smoke-test values, precision) and that the throughput benchmark's arguments parse,
then writes the plan with status "planned".
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUDGET_S = 8 * 60


def plan(runs_dir: Path, out: Path) -> list[dict]:
    """Every step: its name, argv, estimated seconds, a time limit for subprocesses and, for training runs,
    the run directory it writes."""
    from posectl.methods.base import available
    steps = []
    for method in sorted(available()):
        for precision in ("fp32", "bf16"):
            name = f"{method}-{precision}"
            steps.append({"name": f"smoke {method} {precision}", "estimate_s": 25, "run": str(runs_dir / name),
                          "argv": ["posectl", "train", method, "--smoke-test", "--gpus", "1", f"precision={precision}",
                                   "--runs-dir", str(runs_dir), "--name", name]})
    steps.append({"name": "smoke baseline, 2 workers sharing the GPU (gloo)", "estimate_s": 40,
                  "run": str(runs_dir / "shared-gpu"),
                  "argv": ["posectl", "train", "baseline", "--smoke-test", "--workers", "2", "--gpus-per-worker", "0.5",
                           "--runs-dir", str(runs_dir), "--name", "shared-gpu"]})
    steps.append({"name": "smoke baseline, batches from pinned host memory", "estimate_s": 20,
                  "run": str(runs_dir / "pinned"),
                  "argv": ["posectl", "train", "baseline", "--smoke-test", "--gpus", "1", "data.device_fraction=0",
                           "--runs-dir", str(runs_dir), "--name", "pinned"]})
    for precision in ("fp32", "bf16"):
        steps.append({"name": f"throughput {precision}", "estimate_s": 60, "limit_s": 150,
                      "json": str(out / f"throughput-{precision}.json"),
                      "argv": [sys.executable, str(HERE / "train_throughput.py"), "--device", "cuda", "--precision",
                               precision, "--epochs", "2", "--rounds", "1", "--json",
                               str(out / f"throughput-{precision}.json")]})
    return steps


def check_plan(steps: list[dict]) -> None:
    """--dry-run: every posectl command parses and its run's config resolves; the benchmark's arguments parse."""
    import typer

    from posectl.cli import app
    from posectl.orchestrator.spec import RunSpec
    cli = typer.main.get_command(app)
    for s in steps:
        argv = s["argv"]
        if argv[0] == "posectl":
            cmd, args = cli, argv[1:]
            while hasattr(cmd, "resolve_command") and args:          # walk into the command groups
                _, cmd, args = cmd.resolve_command(cmd.make_context("posectl", list(args), resilient_parsing=True),
                                                   list(args))
            cmd.make_context(argv[1], list(args))                     # unknown options fail here
            method = argv[2]
            overrides = dict(a.split("=", 1) for a in argv[3:] if "=" in a and not a.startswith("-"))
            RunSpec.build(method, [overrides], smoke_test=True, training=False, open_data=False)
        else:
            r = subprocess.run([*argv[:2], "--help"], capture_output=True, text=True)
            if r.returncode != 0:
                raise SystemExit(f"{s['name']}: {argv[1]} --help failed: {r.stderr.strip()[-200:]}")
            for flag in (a for a in argv[2:] if a.startswith("--")):
                if flag not in r.stdout:
                    raise SystemExit(f"{s['name']}: {argv[1]} has no option {flag}")
        s["status"] = "planned"


def run(steps: list[dict]) -> None:
    """The posectl runs in this process on one Ray; then (that Ray stopped) the subprocess steps."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from posectl.cli import main as posectl
    from posectl.orchestrator import cluster
    started = cluster.connect(None)
    try:
        for s in (s for s in steps if s["argv"][0] == "posectl"):
            _step(s, lambda s: posectl(s["argv"][1:]))
    finally:
        if started:
            import ray
            ray.shutdown()
    for s in (s for s in steps if s["argv"][0] != "posectl"):
        _step(s, lambda s: subprocess.run(s["argv"], check=True, timeout=s["limit_s"]))


def _step(s: dict, call) -> None:
    t0 = time.perf_counter()
    print(f"-- {s['name']}: {shlex.join(s['argv'])}", flush=True)
    try:
        call(s)
        s["rc"] = 0
    except SystemExit as e:
        s["rc"] = e.code
    except subprocess.CalledProcessError as e:
        s["rc"] = e.returncode
    except Exception as e:  # noqa: BLE001 - a failed step is recorded, the check goes on
        s["rc"], s["tail"] = 1, f"{type(e).__name__}: {e}"[-1500:]
    s["wall_s"] = round(time.perf_counter() - t0, 1)
    s["status"] = "ok" if s["rc"] == 0 else "failed"
    _results(s)
    print(f"   {s['status']} in {s['wall_s']} s", flush=True)


def _results(s: dict) -> None:
    if s.get("run") and Path(s["run"], "results.json").is_file():
        res = json.loads(Path(s["run"], "results.json").read_text())
        s["test_mpjpe"], s["protocol"] = res["test"]["mpjpe"], res["test"]["protocol"]
    if s.get("json") and Path(s["json"]).is_file():
        s["throughput"] = {k: v for k, v in json.loads(Path(s["json"]).read_text()).items() if k != "rounds"}


def table(steps: list[dict]) -> str:
    rows = ["| step | status | wall s | result |", "|---|---|---|---|"]
    for s in steps:
        if "throughput" in s:
            t = s["throughput"]
            res = (f"posectl {t['posectl_samples_per_s']:.0f} / bare {t['bare_samples_per_s']:.0f} samples/s = "
                   f"{t['ratio_steady']:.2f}")
        elif "test_mpjpe" in s:
            res = f"test MPJPE {s['test_mpjpe']:.1f} mm ({s['protocol'].rsplit(', ', 1)[-1]})"
        else:
            res = ""
        rows.append(f"| {s['name']} | {s.get('status', '')} | {s.get('wall_s', '')} | {res} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="check the plan on any machine; train nothing")
    ap.add_argument("--out", default="gpu-check", help="folder for gpu_check.json, the table and the runs")
    args = ap.parse_args()
    out = Path(args.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    steps = plan(out / "runs", out)
    total = sum(s["estimate_s"] for s in steps)
    print(f"{len(steps)} steps, about {total} s by their estimates (budget {BUDGET_S} s)")
    if total > BUDGET_S:
        raise SystemExit(f"the plan's estimates add up to {total} s, over the {BUDGET_S} s budget")
    if args.dry_run:
        check_plan(steps)
    else:
        import torch
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device here: run with --dry-run, or on the GPU machine")
        run(steps)
    (out / "gpu_check.json").write_text(json.dumps({"dry_run": args.dry_run, "steps": steps}, indent=1))
    (out / "gpu_check.md").write_text(table(steps) + "\n")
    print(table(steps))
    failed = [s["name"] for s in steps if s.get("status") == "failed"]
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
