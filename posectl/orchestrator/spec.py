"""`RunSpec`: what a run is made of (method, typed config, data, extra inputs, resources), built once on
the driver and used by `posectl train`, every trial of `posectl tune`, `posectl eval` and the benchmarks.

Data take one path everywhere: `tables()` reads each role's rows once on the driver (the training
subset of `data.max_train_samples` picked here, with the run's seed), `ray_datasets()` hands them to
Ray Data for train and tune, and `build_worker()` turns this worker's share into the method's inputs,
in a Ray Train worker, a Tune trial, or in-process (`run_local`, used by benchmarks and tests).
A training split larger than the memory budget is streamed instead (`streaming()`): each worker reads
its own shards through Ray Data, piece by piece (datasets/lifting.py: StreamedSplit).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from posectl.config import build, flatten, to_dict
from posectl.core.skeleton import get_layout
from posectl.datasets.lifting import LiftingData, StreamedSplit
from posectl.datasets.store import (BODY_COLUMN, IMAGE_COLUMN, PoseArrays, PoseDataset, arrays_from_batch,
                                    every_nth_frame, read_shard, sequence_ids)
from posectl.errors import ConfigError, DataError
from posectl.methods.base import Context, DataInput, Method, get_method
from posectl.orchestrator.cluster import Resources
from posectl.orchestrator.data import COLUMNS, input_columns, keypoint_column, open_dataset, open_inputs

# A tiny but real run: a few hundred samples, one epoch, evaluation on a strided split (plus the
# method's own `smoke_overrides`).
SMOKE = {"epochs": 1, "data.max_train_samples": 512, "data.eval_stride": 20, "batch_size": 128}

# Below this many bytes of Parquet per run, the driver reads the shards itself and hands the tables to
# Ray Data (`from_arrow`): each `read_parquet(...).materialize()` pass costs 4-6 s of Ray Data start-up
# on a 2-core machine (measured: 14-16 s for train/val/test of a small dataset, against < 1 s this way).
# Larger datasets are read by Ray Data's read tasks.
DRIVER_READ_BYTES = 256 * 2**20


@dataclass
class StreamPlan:
    """How a streamed training split is read (RunSpec.streaming)."""
    files: list[list[str]]      # each rank's shards, in order (whole shards, cut where a sequence ends if it can)
    rows: int                   # training rows per rank and epoch, the same on every rank (equal steps)
    chunk: int                  # rows a worker holds at once
    context: int                # neighbouring frames a training row needs each side
    read_stride: int            # train_stride applied in the read (single-frame methods), else 1
    line: str                   # the choice, as printed


@dataclass
class RunSpec:
    method: type[Method]
    cfg: Any                                    # the method's typed Config, resolved
    dataset: PoseDataset | None = None          # cfg.data.path, validated (None: not opened)
    inputs: dict[str, tuple[PoseDataset, DataInput]] = dataclasses.field(default_factory=dict)
    resources: Resources | None = None
    _streams: dict = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

    # -- building --------------------------------------------------------------------------------
    @classmethod
    def build(cls, method: str | type[Method], layers: list[dict], *, smoke_test: bool = False,
              smoke: dict[str, Any] = SMOKE, resources: Resources | None = None, training: bool = True,
              open_data: bool = True) -> "RunSpec":
        """Resolve the config from `layers` (YAML files, key=value overrides; the user's values are
        checked before `--smoke-test` adds `smoke` and the method's own), run the method's pre-training
        checks (`training`) and open the dataset and extra inputs (`open_data`)."""
        m = get_method(method) if isinstance(method, str) else method
        context = f"method {m.name}"
        cfg = build(m.Config, *layers, context=context)
        if smoke_test:
            small = {**smoke, **m.smoke_overrides, **_kept_defaults(m, cfg, m.smoke_defaults, context)}
            cfg = build(m.Config, *layers, small, context=context)
            extra = _smoke_prerequisites(m, cfg)
            if extra:
                cfg = build(m.Config, *layers, small, extra, context=context)
        spec = cls(m, cfg, resources=resources)
        if training and cfg.precision == "fp16" and not (resources and resources.gpus):
            raise ConfigError("precision=fp16 needs GPUs (--gpus N): CPU autocast trains in bf16 (precision=bf16)")
        if training and cfg.sync_bn == "always" and not (resources and resources.gpus):
            raise ConfigError("sync_bn=always needs GPUs (--gpus N): SyncBatchNorm runs on GPUs only")
        if training:
            m.check_training(cfg)
        if open_data:
            spec.dataset = open_dataset(cfg.data)
            spec.inputs = open_inputs(m.inputs(cfg), spec.dataset.layout.name)
        return spec

    def with_params(self, params: dict[str, Any]) -> "RunSpec":
        """The same run with some config values replaced (a search trial's), type-checked."""
        cfg = build(self.method.Config, to_dict(self.cfg), params, context=f"trial of {self.method.name}")
        return dataclasses.replace(self, cfg=cfg)

    @property
    def config(self) -> dict[str, Any]:
        return to_dict(self.cfg)

    @property
    def layout(self) -> str:
        return self.dataset.layout.name

    @property
    def images(self) -> bool:
        return self.method.reads_images(self.cfg) and bool(self.dataset.images)

    # -- data ------------------------------------------------------------------------------------
    def roles(self, test: bool = True) -> dict[str, tuple[list[str], list[str]]]:
        """{role: (shard paths, columns)}: train, val and test (unless a method's input replaces it),
        then the method's extra inputs. Searches pass `test=False`: they never read a test split."""
        d = self.cfg.data
        cols = [*COLUMNS, keypoint_column(d.keypoints), *([IMAGE_COLUMN] if self.images else []),
                *([BODY_COLUMN] if self.dataset.body_params else [])]
        out = {}
        subjects = {"train": d.train_subjects, "val": d.val_subjects, "test": None}
        for role, split in (("train", d.train_split), ("val", d.val_split), ("test", d.test_split)):
            if role not in self.inputs and (test or role != "test"):
                out[role] = (self.dataset.shard_paths(split, subjects[role] or None), cols)
        for role, (ds, inp) in self.inputs.items():
            if test or role != "test":
                out[role] = (ds.shard_paths(inp.split, list(inp.subjects) or None),
                             input_columns(inp.keypoints, inp.with_3d))
        return out

    def streaming(self, world: int = 1) -> StreamPlan | None:
        """Whether the training split is streamed (data.stream: always, or auto and its size, estimated from
        the Parquet footers, is over data.memory_fraction of this node's memory), and how."""
        if world not in self._streams:
            self._streams[world] = self._plan_stream(world)
        return self._streams[world]

    def _plan_stream(self, world: int) -> StreamPlan | None:
        d = self.cfg.data
        if d.stream == "never" or "train" in self.inputs:
            return None
        paths, columns = self.roles(test=False)["train"]
        size, budget = parquet_bytes(paths, columns), d.memory_fraction * node_memory()
        if d.stream == "auto" and size <= budget:
            return None
        context = self.method.stream_context(self.cfg)
        if context is None:
            if d.stream == "always":
                raise ConfigError(f"data.stream=always: method {self.method.name} keeps its training split in memory "
                                  f"(methods that stream: {', '.join(streaming_methods())})")
            return None
        read_stride = d.train_stride if context == 0 else 1
        counts = [_rows_read(p, read_stride) for p in paths]
        blocks = _file_blocks(paths, counts, world)
        files = [paths[lo:hi] for lo, hi in blocks]
        per_rank = [sum(counts[lo:hi]) for lo, hi in blocks]
        rows = min(per_rank) if not d.max_train_samples else min(min(per_rank), max(1, d.max_train_samples // world))
        why = "data.stream=always" if d.stream == "always" else \
            f"over data.memory_fraction={d.memory_fraction:g} of this node's {node_memory() / 2**30:.1f} GiB"
        line = (f"streaming the training split through Ray Data ({size / 2**30:.2f} GiB in memory, {why}): "
                f"{world} worker(s) x {rows:,} rows per epoch, {d.stream_chunk:,} rows held at once"
                + (f", frames that are multiples of {read_stride} read" if read_stride > 1 else ""))
        return StreamPlan(files, rows, d.stream_chunk, context, read_stride, line)

    def needs_data_cpu(self, world: int, say=None) -> bool:
        """Whether Ray Data works while this run trains (it streams the training split, printing the choice,
        or decodes the frames of a method that reads images): then a CPU must stay free for its tasks."""
        stream = self.streaming(world)
        if stream is not None:
            (say or print)(stream.line)
        return stream is not None or self.images

    def small(self, roles: dict) -> bool:
        return sum(Path(p).stat().st_size for paths, _ in roles.values() for p in paths) <= DRIVER_READ_BYTES

    def table(self, role: str, paths: list[str], columns: list[str]) -> pa.Table:
        """One role's rows as one Arrow table; for "train", the `data.max_train_samples` subset (rows
        picked with the run's seed) in sequence order (each sequence's rows together, in time), so that
        workers can take whole sequences (shard_blocks)."""
        t = pa.concat_tables([read_shard(p, columns) for p in paths])
        n = self.cfg.data.max_train_samples
        if role == "train" and n and n < len(t):
            pick = np.sort(np.random.default_rng(self.cfg.seed).permutation(len(t))[:n])
            t = t.take(pa.array(pick))
        if role == "train":
            t = t.take(pa.array(np.lexsort((t.column("frame").to_numpy(), _sequence_ids(t)))))
        return t

    def ray_datasets(self, test: bool = True, world: int = 1) -> tuple[dict, list[tuple[int, int]]]:
        """Materialised Ray datasets per role (read before training starts, so reads never compete with
        training workers for CPUs: a trainer holding every CPU would otherwise deadlock them), and each
        of `world` workers' block of the training rows (train_blocks). A streamed training split (see
        `streaming`) is instead one lazy dataset per rank ("train@<rank>"), returned with its StreamPlan in
        place of the blocks; the run must leave a CPU free for its read tasks."""
        import logging
        from concurrent.futures import ThreadPoolExecutor

        import ray.data
        ray.data.DataContext.get_current().enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        ray.data.DataContext.get_current().execution_options.preserve_order = True   # the same rows on every run
        roles = self.roles(test)
        stream = self.streaming(world)
        streamed = {}
        if stream is not None:      # each rank's own shards, read lazily by the worker (no copy here)
            columns = roles.pop("train")[1]
            for rank, files in enumerate(stream.files):
                d = ray.data.read_parquet(files).select_columns(columns)
                if stream.read_stride > 1:
                    d = d.map_batches(every_nth_frame, fn_kwargs={"stride": stream.read_stride},
                                      batch_format="pyarrow", batch_size=None)
                streamed[f"train@{rank}"] = d
        small = self.small(roles)

        blocks: list[tuple[int, int]] = []

        def one(role):
            paths, columns = roles[role]
            if small:
                t = self.table(role, paths, columns)
                if role == "train":
                    blocks.extend(self.train_blocks(t, world))
                return ray.data.from_arrow(t).materialize()
            d = ray.data.read_parquet(paths).select_columns(columns)
            if role == "train" and self.cfg.data.max_train_samples:
                d = d.random_shuffle(seed=self.cfg.seed).limit(self.cfg.data.max_train_samples)
            d = d.materialize()
            if role == "train":
                blocks.extend(self.train_blocks(d, world))
            return d

        with ThreadPoolExecutor(max_workers=len(roles)) as pool:
            datasets = dict(zip(roles, pool.map(one, roles)))
        return {**streamed, **datasets}, (stream if stream is not None else blocks)

    @staticmethod
    def train_blocks(train, world: int) -> list[tuple[int, int]]:
        """Each worker's rows of the training data: for a table from `table()` (in sequence order), whole
        sequences balanced by frames (shard_blocks); a training split read by Ray Data's read tasks
        (over DRIVER_READ_BYTES) is not in sequence order and is cut into equal blocks of rows."""
        if isinstance(train, pa.Table):
            return shard_blocks(_sequence_ids(train), world)
        size = train.count() // world
        return [(r * size, (r + 1) * size) for r in range(world)]

    def local_sources(self, test: bool = True) -> dict[str, pa.Table]:
        """Every role's rows read in this process (no Ray), the training split in memory."""
        return {role: self.table(role, paths, cols) for role, (paths, cols) in self.roles(test).items()}

    def local_inputs(self, test: bool = True, world: int = 1) -> tuple[dict[str, Any], list | StreamPlan]:
        """The same rows as `ray_datasets`, read in this process (no Ray), and the training rows' blocks
        (or the StreamPlan: then "train@<rank>" read the rank's shards with pyarrow, piece by piece)."""
        roles, stream = self.roles(test), self.streaming(world)
        columns = roles.pop("train")[1] if stream is not None else None
        sources = {role: self.table(role, paths, cols) for role, (paths, cols) in roles.items()}
        if stream is None:
            return sources, self.train_blocks(sources["train"], world)
        return {**sources, **{f"train@{r}": ShardStream(files, columns, stream.read_stride)
                              for r, files in enumerate(stream.files)}}, stream

    def describe(self, blocks: list[tuple[int, int]] | StreamPlan | None = None) -> dict[str, Any]:
        """What a worker needs besides its data sources (picklable): `blocks`, each rank's [start, end)
        of the training rows (train_blocks; default: one worker, every row), or a streamed split's plan."""
        stream = blocks if isinstance(blocks, StreamPlan) else None
        return {"method": self.method, "cfg": self.cfg, "layout": self.layout,
                "blocks": None if stream else blocks, "stream": stream,
                "inputs": {role: inp for role, (_, inp) in self.inputs.items()},
                "image_root": str(self.dataset.path) if self.images else None}


def build_worker(spec: dict[str, Any], sources: dict[str, Any], ctx: Context) -> tuple[Method, dict[str, LiftingData]]:
    """In a worker: the method and its data from `sources` (role -> Ray Dataset, Ray Data iterator or
    Arrow table, each holding the role's rows in the same order on every worker). Every rank takes its
    block of the training rows (spec["blocks"]: whole sequences, the same on every run and after a
    resume) and draws batches from as many rows as the smallest block has, so every rank takes the same
    number of steps; the other roles are whole on every rank, and with several workers each rank also
    holds its share of the validation split ("val_share": whole sequences, see val_shares)."""
    layout = get_layout(spec["layout"])
    kp, extra = spec["cfg"].data.keypoints, spec["inputs"]
    blocks = spec["blocks"]
    stream = spec.get("stream")
    cut = len(blocks) if blocks is not None else len(stream.files) if stream is not None else ctx.world_size
    if cut != ctx.world_size:
        raise DataError(f"training data cut for {cut} workers, not {ctx.world_size}")
    data, inputs = {}, {}
    if stream is not None:
        data["train"] = StreamedSplit(sources[f"train@{ctx.rank}"], layout, kp, stream.rows, stream.chunk,
                                      stream.context, stream.read_stride)
    for role, src in sources.items():
        if role.startswith("train@"):
            continue
        inp = extra.get(role)
        keypoints, with_3d = (inp.keypoints, inp.with_3d) if inp else (kp, True)
        where = f"input '{role}' ({inp.path}:{inp.split})" if inp else f"{role} split"
        rows = blocks[ctx.rank] if role == "train" and blocks is not None else None
        arrays = read_arrays(src, keypoints, layout.num_joints, where, with_3d=with_3d,
                             image_root=None if inp else spec["image_root"], rows=rows)
        if inp is None or role == "test":
            sample = min(hi - lo for lo, hi in blocks) if role == "train" and blocks else None
            data[role] = LiftingData(arrays, layout, keypoints=keypoints, sample_rows=sample)
            if role == "val" and ctx.world_size > 1:
                shares = val_shares(data[role], ctx.world_size)
                if shares is not None:
                    data["val_share"] = shares[ctx.rank]
        else:
            inputs[role] = arrays
    ctx.inputs = inputs
    return spec["method"](spec["cfg"], data["train"], ctx), data


class ShardStream:
    """A streamed split read in this process (run_local): its shards' record batches, in order, as Ray
    Data's `iter_batches` would hand them (`batch_size` is the read's, not exact)."""

    def __init__(self, files: list[str], columns: list[str], stride: int = 1):
        self.files, self.columns, self.stride = files, columns, stride

    def iter_batches(self, batch_size: int, batch_format: str = "pyarrow"):
        for f in self.files:
            for b in pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=self.columns):
                t = pa.Table.from_batches([b])
                yield every_nth_frame(t, self.stride) if self.stride > 1 else t


def ray_map_batches(columns: dict[str, np.ndarray], fn, sizes: list[int], fn_kwargs: dict | None = None,
                    blocks_of: int = 4):
    """Context.map_batches in a Ray job: Ray Data map_batches over the rows (blocks of `blocks_of` batches,
    so that several tasks run at once where there are CPUs), in order, cut back into batches of `sizes`
    rows as the consumer takes them (prefetched ahead)."""
    import ray.data
    table = pa.table({k: pa.array(list(v)) if v.dtype == object else v for k, v in columns.items()})
    step = max(1, max(sizes, default=1) * blocks_of)
    ds = ray.data.from_arrow([table.slice(i, step) for i in range(0, len(table), step)] or [table])
    ds.context.execution_options.preserve_order = True
    out = ds.map_batches(fn, fn_kwargs=fn_kwargs or {}, batch_format="numpy", batch_size=max(sizes, default=1))
    held: dict[str, list[np.ndarray]] = {}
    have = 0
    stream = iter(out.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=4))
    for n in sizes:
        while have < n:
            b = next(stream)
            for k, v in b.items():
                held.setdefault(k, []).append(v)
            have += len(next(iter(b.values())))
        whole = {k: np.concatenate(v) for k, v in held.items()}
        yield {k: v[:n] for k, v in whole.items()}
        held, have = {k: [v[n:]] for k, v in whole.items()}, have - n


def streaming_methods() -> list[str]:
    from posectl.methods.base import available
    return [name for name, m in available().items() if m.stream_context(m.Config()) is not None]


def node_memory() -> int:
    """Bytes of memory of this machine."""
    import os
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def parquet_bytes(paths: list[str], columns: list[str]) -> int:
    """Uncompressed bytes of `columns` in Parquet shards, from their footers (nothing else is read)."""
    total = 0
    for p in paths:
        md = pq.ParquetFile(p).metadata
        for g in range(md.num_row_groups):
            rg = md.row_group(g)
            total += sum(rg.column(c).total_uncompressed_size for c in range(rg.num_columns)
                         if rg.column(c).path_in_schema.split(".")[0] in columns)
    return total


def _rows_read(path: str, stride: int) -> int:
    """Rows of a shard a streamed read delivers: all, or those whose frame is a multiple of `stride`."""
    if stride == 1:
        return pq.ParquetFile(path).metadata.num_rows
    return int((pq.read_table(path, columns=["frame"]).column("frame").to_numpy() % stride == 0).sum())


def _file_blocks(paths: list[str], counts: list[int], world: int) -> list[tuple[int, int]]:
    """[start, end) of the shards of each of `world` ranks: consecutive shards, balanced by rows, cut between
    two shards where a sequence ends (shard_blocks) when enough such places exist, else between any two."""
    if len(paths) < world:
        raise DataError(f"the streamed training split has {len(paths)} shard(s), fewer than the {world} workers")
    if world == 1:
        return [(0, len(paths))]
    keys = ["subject", "action", "camera"]
    first, last = [], []
    for p in paths:                 # each shard's first and last row's sequence (one shard in memory at a time)
        t = pq.read_table(p, columns=keys)
        first.append(tuple(t.column(k)[0].as_py() for k in keys))
        last.append(tuple(t.column(k)[-1].as_py() for k in keys))
    # one "sequence" per run of shards that continue each other's sequence; cut between them if possible
    seq = np.cumsum([0] + [int(last[i] != first[i + 1]) for i in range(len(paths) - 1)])
    if seq[-1] + 1 < world:
        seq = np.arange(len(paths))
    rows = np.repeat(seq, counts)
    cuts = [lo for lo, _ in shard_blocks(rows, world)] + [len(rows)]
    starts = np.r_[0, np.cumsum(counts)]
    return [(int(np.searchsorted(starts, a)), int(np.searchsorted(starts, b))) for a, b in zip(cuts[:-1], cuts[1:])]


def ddp_prepare(cfg, world_size: int, device):
    """The `prepare_model` of a Ray Train worker: SyncBatchNorm when `cfg.sync_bn` asks for it (auto:
    several workers on GPUs), then Ray Train's DDP wrapping and device placement."""
    import ray.train.torch

    def prepare(model):
        if cfg.sync_bn == "always" or (cfg.sync_bn == "auto" and world_size > 1 and device.type == "cuda"):
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return ray.train.torch.prepare_model(model)
    return prepare


def read_arrays(src, keypoints: str, num_joints: int, where: str, with_3d: bool = True,
                image_root: str | None = None, rows: tuple[int, int] | None = None) -> PoseArrays:
    """Rows of `src` as arrays; with `rows` (start, end), only those."""
    batches = [src] if isinstance(src, pa.Table) else src.iter_batches(batch_size=16384, batch_format="pyarrow")
    lo, hi = rows if rows is not None else (0, None)
    parts, start = [], 0
    for b in batches:
        end = start + len(b)
        a, z = max(lo, start), end if hi is None else min(hi, end)
        if z > a:
            t = b.slice(a - start, z - a)
            parts.append(arrays_from_batch({c: t.column(c) for c in t.column_names}, keypoints, num_joints,
                                           where=where, with_3d=with_3d, image_root=image_root))
        start = end
        if hi is not None and start >= hi:
            break
    if not parts:
        raise DataError(f"{where}: this worker's share is empty")
    return PoseArrays.concat(parts)


def _sequence_ids(t: pa.Table) -> np.ndarray:
    return sequence_ids(*(t.column(c).to_numpy(zero_copy_only=False) for c in ("subject", "action", "camera")))


def val_shares(val: LiftingData, world: int) -> list[LiftingData] | None:
    """The validation split cut into `world` blocks of whole sequences (shard_blocks), one per rank, for
    a validation evaluated in shares (orchestrator/loop.py: validate); None when it has fewer sequences."""
    seq = val.arrays.sequence_ids                   # LiftingData keeps its rows in sequence order
    if len(np.unique(seq)) < world:
        return None
    return [LiftingData(val.arrays.take(slice(lo, hi)), val.layout, keypoints=val.keypoints)
            for lo, hi in shard_blocks(seq, world)]


def shard_blocks(seq: np.ndarray, world: int) -> list[tuple[int, int]]:
    """[start, end) rows of each of `world` workers, for rows in sequence order (`seq`: their sequence
    ids): cuts only where a sequence ends, each at the sequence boundary nearest to an equal share."""
    n = len(seq)
    edges = np.r_[0, np.flatnonzero(seq[1:] != seq[:-1]) + 1, n]
    if len(edges) - 1 < world:
        raise DataError(f"the training data holds {len(edges) - 1} sequence(s), fewer than the {world} workers")
    cuts = [0]
    for r in range(1, world):
        free = edges[(edges > cuts[-1]) & (edges <= n - (world - r))]   # leave a sequence for each later rank
        cuts.append(int(free[np.argmin(np.abs(free - r * n / world))]))
    cuts.append(n)
    return list(zip(cuts[:-1], cuts[1:]))


def run_local(spec: RunSpec, reporter, ctx: Context | None = None, state: dict | None = None,
              metric: str = "val_mpjpe", mode: str = "min", test: bool = True):
    """Train `spec` in this process (no Ray): the same data, method and epoch loop as a Ray Train job."""
    from posectl.orchestrator.loop import run_epochs
    ctx = ctx or Context()
    sources, blocks = spec.local_inputs(test, ctx.world_size)
    method, data = build_worker(spec.describe(blocks), sources, ctx)
    return run_epochs(method, spec.cfg, data, ctx, state, reporter, metric=metric, mode=mode), method, data


def smoke_overrides(m: type[Method]) -> dict[str, Any]:
    """The config values `--smoke-test` adds: the common SMOKE ones, then the method's own."""
    return {**SMOKE, **m.smoke_overrides}


def _kept_defaults(m: type[Method], cfg, values: dict[str, Any], context: str) -> dict[str, Any]:
    """Those of `values` whose keys `cfg` leaves at the method's defaults."""
    if not values:
        return {}
    mine, default = flatten(to_dict(cfg)), flatten(to_dict(build(m.Config, context=context)))
    return {k: v for k, v in values.items() if mine[k] == default[k]}


def _smoke_prerequisites(m: type[Method], cfg) -> dict[str, Any]:
    """Train (once, cached) the runs a method's smoke test needs, and return the config values naming them."""
    out = {}
    for key, (method, values) in m.smoke_prerequisites(cfg).items():
        out[key] = [str(smoke_checkpoint(method, values))]
    return out


def smoke_checkpoint(method: str, values: dict[str, Any]) -> Path:
    """A smoke-sized `method` run on `values`, trained in-process and cached by its config (a few seconds)."""
    from posectl.datasets.synthetic import cache_dir
    from posectl.orchestrator.experiment import save_checkpoint
    spec = RunSpec.build(method, [values], smoke_test=True)
    key = hashlib.sha256(json.dumps([method, spec.config], sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = cache_dir() / "smoke-runs" / f"{method}-{key}.pt"
    if not path.is_file():
        from posectl.orchestrator.reporters import MemoryReporter
        rep = MemoryReporter()
        run_local(spec, rep, test=False)
        st = rep.best or rep.last
        save_checkpoint(path, {**st, "method_state": {"model": st["method_state"]["model"]}})
    return path
