"""Data at scale (issue #32): peak memory and ingest rate of posectl's training path on pose datasets of 1x,
4x and 16x the size of Human3.6M's training split (1,559,752 rows: S1, S5-S8, four cameras).

The datasets are synthetic: the built-in generator's training split (28,000 rows) replicated under new
subject and sequence names, 196,000 rows per Parquet shard, written once under
$POSECTL_CACHE/ingest-scale (the 16x set; 1x and 4x are its first shards, hard-linked). For each size a
fresh process (the driver) starts a local Ray and runs, with one worker:
  1. `posectl train baseline` (SimpleBaseline, width 1024) streamed through Ray Data for a fixed number of
     training rows (data.max_train_samples), and
  2. the same worker path with a no-op model: the rows/s that reach the training loop (pieces, shuffled
     batches, `fetch`) over --ingest-rows rows.
It prints the driver's and the worker's peak RSS (getrusage, measured in each process), the ingest rate,
SimpleBaseline's training rate (samples/s of its epoch) and the ratio of the ingest rate to the fastest
training rate measured (the in-memory path, data.stream=never at 1x, runs too unless --no-memory).

    python benchmarks/ingest_scale.py [--sizes 1 4 16] [--train-rows 50000] [--ingest-rows 1000000] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

H36M_TRAIN_ROWS = 1_559_752
BLOCK_COPIES = 7            # copies of the 28,000-row synthetic split per shard (one subject per shard)


def dataset_root() -> Path:
    from posectl.datasets.synthetic import cache_dir
    return cache_dir() / "ingest-scale"


def build_datasets(sizes: list[int]) -> dict[int, Path]:
    """The 16x (or largest asked) dataset, generated once; smaller sizes as its first shards, hard-linked."""
    import pyarrow as pa

    from posectl.datasets.store import MANIFEST, DatasetWriter, read_shard
    from posectl.datasets.synthetic import cached_synthetic

    src = cached_synthetic("source")
    base_m = json.loads((src / MANIFEST).read_text())
    per_block = base_m["splits"]["train"]["rows"] * BLOCK_COPIES
    blocks = {s: -(-s * H36M_TRAIN_ROWS // per_block) for s in sizes}
    top = max(sizes)
    full = dataset_root() / f"{top}x"
    if not (full / MANIFEST).is_file():
        t0 = time.perf_counter()
        base = pa.concat_tables([read_shard(str(src / f)) for f in base_m["splits"]["train"]["shards"]])
        subj, act = base.column("subject").to_numpy(zero_copy_only=False), base.column("action").to_numpy(zero_copy_only=False)
        with DatasetWriter(full, f"ingest-scale-{top}x", base_m["joint_layout"], rows_per_shard=per_block,
                           info={"generator": "benchmarks/ingest_scale.py", "copies_of": str(src)}) as w:
            for b in range(blocks[top]):
                name = f"P{b:04d}"
                parts = []
                for c in range(BLOCK_COPIES):     # new sequences: (copy, original subject, action)
                    t = base.set_column(base.schema.get_field_index("subject"), "subject",
                                        pa.array(np.full(len(base), name)))
                    parts.append(t.set_column(t.schema.get_field_index("action"), "action",
                                              pa.array(np.char.add(np.char.add(subj.astype(str), f"-{c}-"),
                                                                   act.astype(str)))))
                w.add_split("train", pa.concat_tables(parts), subjects=[name])
                print(f"\r  writing {full}: shard {b + 1}/{blocks[top]}", end="", flush=True)
            for split in ("val", "test"):
                w.add_split(split, pa.concat_tables([read_shard(str(src / f)) for f in base_m["splits"][split]["shards"]]))
            w.commit()
        print(f"\n  {blocks[top] * per_block:,} training rows written in {time.perf_counter() - t0:.0f} s")
    out = {top: full}
    m = json.loads((full / MANIFEST).read_text())
    for s in sizes:
        if s == top:
            continue
        d = dataset_root() / f"{s}x"
        if not (d / MANIFEST).is_file():
            d.mkdir(parents=True, exist_ok=True)
            train = m["splits"]["train"]["shards"][:blocks[s]]
            keep = train + m["splits"]["val"]["shards"] + m["splits"]["test"]["shards"]
            for f in keep:
                if not (d / f).exists():
                    os.link(full / f, d / f)
            sub = {**m, "name": f"ingest-scale-{s}x", "shards": {f: m["shards"][f] for f in keep}}
            sub["splits"] = {**m["splits"], "train": {"subjects": [m["shards"][f]["subject"] for f in train],
                                                      "rows": sum(m["shards"][f]["rows"] for f in train),
                                                      "shards": train}}
            (d / MANIFEST).write_text(json.dumps(sub, indent=2))
        out[s] = d
    return out


def _ingest_worker(cfg: dict) -> None:
    """A Ray Train worker: the method's data exactly as `posectl train` builds it, iterated as baseline's
    training loop does (pieces, shuffled batches, fetch), with no model."""
    import ray.train
    import torch

    from posectl.methods.base import Context
    from posectl.orchestrator.spec import build_worker
    torch.set_num_threads(1)
    _, data = build_worker(cfg["spec"], {r: ray.train.get_dataset_shard(r) for r in cfg["roles"]}, Context())
    train, gen, bs, n = data["train"], torch.Generator().manual_seed(0), cfg["batch"], 0
    t0 = first = time.perf_counter()
    for part in train.parts(gen, multiple_of=bs):
        for idx in part.batches(bs, shuffle=True, generator=gen):
            x, y = part.fetch(idx, torch.device("cpu"))
            if n == 0:
                first = time.perf_counter()
            n += len(idx)
    wall = time.perf_counter() - t0
    Path(cfg["out"]).write_text(json.dumps({"rows": n, "rows_per_s": n / wall, "first_batch_s": first - t0,
                                            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def one_size(path: Path, stream: str, train_rows: int, ingest_rows: int, batch: int) -> dict:
    """In this process (the driver): a local Ray, a streamed baseline run, then the no-op ingest job."""
    import ray
    from ray.train import DataConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from posectl.orchestrator.cluster import Resources
    from posectl.orchestrator.spec import RunSpec
    from posectl.orchestrator.train import train
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=1024 * 2**20)
    common = {"data.path": str(path), "data.stream": stream, "batch_size": batch, "data.eval_stride": 10}
    out: dict = {"dataset": str(path), "stream": stream}
    with tempfile.TemporaryDirectory() as tmp:
        res = train("baseline", [{**common, "epochs": 1, "data.max_train_samples": train_rows}], runs_dir=tmp,
                    name="run", say=lambda line: out.setdefault("plan", line), dashboard=False)
        h = res.results["history"][-1]
        out.update(train_rows=int(h["train_samples"]), train_samples_per_s=h["train_samples_per_s"],
                   train_worker_peak_rss_mb=h["peak_rss_mb"], val_mpjpe=h["val_mpjpe"])
        spec = RunSpec.build("baseline", [{**common, "data.max_train_samples": ingest_rows}],
                             resources=Resources(workers=1, cpus=1.0))
        datasets, blocks = spec.ray_datasets(test=False)
        cfg = {"spec": spec.describe(blocks), "roles": list(datasets), "batch": batch, "out": f"{tmp}/ingest.json"}
        TorchTrainer(_ingest_worker, train_loop_config=cfg, datasets=datasets,
                     dataset_config=DataConfig(datasets_to_split=[]),
                     scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1})).fit()
        ing = json.loads(Path(cfg["out"]).read_text())
    out.update(ingest_rows=ing["rows"], ingest_rows_per_s=ing["rows_per_s"], ingest_first_batch_s=ing["first_batch_s"],
               ingest_worker_peak_rss_mb=ing["peak_rss_mb"],
               driver_peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    ray.shutdown()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 16], help="multiples of Human3.6M's training split")
    ap.add_argument("--train-rows", type=int, default=50_000, help="training rows of the baseline run per size")
    ap.add_argument("--ingest-rows", type=int, default=1_000_000, help="rows of the no-op ingest pass per size")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--no-memory", action="store_true", help="skip the in-memory path (data.stream=never) at 1x")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--one", help=argparse.SUPPRESS)       # a child: one dataset, one stream mode
    ap.add_argument("--stream", default="always", help=argparse.SUPPRESS)
    a = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")     # a private local Ray, loopback only
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    if a.one:
        print("RESULT " + json.dumps(one_size(Path(a.one), a.stream, a.train_rows, a.ingest_rows, a.batch_size)))
        return
    paths = build_datasets(sorted(a.sizes))
    runs = [(s, "always") for s in sorted(a.sizes)] + ([] if a.no_memory else [(min(a.sizes), "never")])
    results = []
    for size, stream in runs:
        cmd = [sys.executable, __file__, "--one", str(paths[size]), "--stream", stream, "--train-rows",
               str(a.train_rows), "--ingest-rows", str(a.ingest_rows), "--batch-size", str(a.batch_size)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
            sys.exit(f"{size}x ({stream}) failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        r = {"size": size, "rows": json.loads((paths[size] / "manifest.json").read_text())["splits"]["train"]["rows"],
             **json.loads(line[0][7:]), "wall_s": time.perf_counter() - t0}
        results.append(r)
        print(f"{size:>3}x {r['rows']:>11,} rows  data.stream={stream:<6}  driver peak RSS {r['driver_peak_rss_mb']:6.0f} MB"
              f"  worker peak RSS {max(r['train_worker_peak_rss_mb'], r['ingest_worker_peak_rss_mb']):6.0f} MB"
              f"  ingest {r['ingest_rows_per_s']:9,.0f} rows/s (first batch {r['ingest_first_batch_s']:.1f} s)"
              f"  SimpleBaseline {r['train_samples_per_s']:6,.0f} samples/s", flush=True)
    fastest = max(r["train_samples_per_s"] for r in results)
    for r in results:
        r["ingest_over_training"] = r["ingest_rows_per_s"] / fastest
    streamed = [r for r in results if r["stream"] == "always"]
    lo, hi = streamed[0], streamed[-1]
    for who in ("driver", "worker"):
        key = (lambda r: r["driver_peak_rss_mb"]) if who == "driver" else \
            (lambda r: max(r["train_worker_peak_rss_mb"], r["ingest_worker_peak_rss_mb"]))
        print(f"{who} peak RSS {hi['size']}x / {lo['size']}x: {key(hi) / key(lo):.2f} (acceptance: <= 1.5)")
    print(f"streamed ingest / fastest SimpleBaseline training ({fastest:,.0f} samples/s): "
          + ", ".join(f"{r['size']}x {r['ingest_over_training']:.1f}" for r in streamed) + " (acceptance: >= 10)")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
