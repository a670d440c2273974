"""Streamed training splits (issue #32): a split over the memory budget is read piece by piece through Ray
Data (orchestrator/spec.py: RunSpec.streaming; datasets/lifting.py: StreamedSplit), in train and tune."""
import numpy as np
import pytest
import torch

from posectl.core.skeleton import get_layout
from posectl.datasets.lifting import LiftingData, StreamedSplit
from posectl.datasets.store import PoseArrays, PoseDataset, arrays_from_batch, read_shard
from posectl.errors import ConfigError, ResourceError
from posectl.orchestrator.spec import RunSpec, ShardStream, run_local

TINY = {"backbone.width": 64, "batch_size": 64}


def _stream_cfg(path, **kw):
    return {**TINY, "data.path": str(path), "data.stream": "always", "data.stream_chunk": 100, **kw}


def test_pieces_train_every_row_once_and_windows_see_their_neighbours(small_dataset):
    ds = PoseDataset(small_dataset)
    layout = get_layout(ds.layout.name)
    files = ds.shard_paths("train")
    whole = PoseArrays.concat([arrays_from_batch({c: t.column(c) for c in t.column_names}, "gt", layout.num_joints)
                               for t in (read_shard(f) for f in files)])
    ref = LiftingData(whole, layout, ordered=True)
    stream = StreamedSplit(ShardStream(files, None), layout, "gt", rows=len(whole), chunk=96, context=4,
                           read_batch=37)          # pieces assembled across read batches of another size
    seen, pieces = [], 0
    for part in stream.parts(multiple_of=32):
        pieces += 1
        rows = torch.arange(part.first_row, part.first_row + part.sample_rows)
        assert part.sample_rows % 32 == 0 or pieces * 96 >= len(whole)   # whole batches but in the last piece
        offset = sum(len(s) for s in seen) - part.first_row             # piece row -> row of the split
        assert torch.equal(part.windows(rows, 9), ref.windows(rows + offset, 9))
        assert torch.equal(part.targets[rows], ref.targets[rows + offset])
        seen.append(rows + offset)
    assert pieces == -(-len(whole) // 96) and torch.equal(torch.cat(seen), torch.arange(len(whole)))


def test_streamed_runs_are_deterministic_and_learn(small_dataset):
    from posectl.orchestrator.reporters import MemoryReporter
    histories = []
    for _ in range(2):
        spec = RunSpec.build("baseline", [_stream_cfg(small_dataset, epochs=3)])
        rep = MemoryReporter()
        _, _, data = run_local(spec, rep, test=False)
        assert isinstance(data["train"], StreamedSplit)
        histories.append([(r["train_loss_mm"], r["val_mpjpe"]) for r in rep.rows])
    assert histories[0] == histories[1]
    losses = [h[0] for h in histories[0]]
    assert losses[-1] < 0.8 * losses[0] and np.isfinite(histories[0][-1][1])


def test_ranks_take_whole_shards_cut_where_sequences_end(small_dataset):
    spec = RunSpec.build("baseline", [_stream_cfg(small_dataset)])
    plan = spec.streaming(2)
    files = spec.dataset.shard_paths("train")
    assert [f for fs in plan.files for f in fs] == files and all(plan.files)
    assert RunSpec.build("baseline", [_stream_cfg(small_dataset)]).streaming(2).files == plan.files  # every run
    ranks = [[read_shard(f, ["subject", "action", "camera"]) for f in fs] for fs in plan.files]
    keys = [{tuple(r.values()) for t in tables for r in t.to_pylist()} for tables in ranks]
    assert not keys[0] & keys[1]                     # no sequence on both ranks
    per_rank = [sum(t.num_rows for t in tables) for tables in ranks]
    assert plan.rows == min(per_rank)                # equal steps on every rank


def test_stride_is_read_for_single_frames_and_indexed_for_windows(small_dataset):
    single = RunSpec.build("baseline", [_stream_cfg(small_dataset, **{"data.train_stride": 4})]).streaming(1)
    tcn = RunSpec.build("baseline", [_stream_cfg(small_dataset, **{"data.train_stride": 4, "backbone.name": "videopose",
                                                                   "backbone.receptive_field": 9})]).streaming(1)
    total = sum(read_shard(f, ["frame"]).num_rows for f in single.files[0])
    frames = np.concatenate([read_shard(f, ["frame"]).column("frame").to_numpy() for f in single.files[0]])
    assert (single.read_stride, single.context) == (4, 0) and single.rows == int((frames % 4 == 0).sum()) < total
    assert (tcn.read_stride, tcn.context, tcn.rows) == (1, 4, total)
    rows = [b.num_rows for b in ShardStream(single.files[0], ["frame"], 4).iter_batches(1000)]
    assert sum(rows) == single.rows


def test_auto_streams_over_the_budget_and_methods_that_cannot_refuse_always(small_dataset):
    assert RunSpec.build("baseline", [{"data.path": str(small_dataset)}]).streaming(1) is None
    over = RunSpec.build("baseline", [{"data.path": str(small_dataset), "data.memory_fraction": 1e-9}]).streaming(1)
    assert over is not None and "over data.memory_fraction=1e-09" in over.line
    # a method that keeps its split in memory loads it (auto) or refuses (always), in one line
    assert RunSpec.build("dhaug", [{"data.path": str(small_dataset), "data.memory_fraction": 1e-9}]).streaming(1) is None
    with pytest.raises(ConfigError, match=r"data.stream=always: method dhaug keeps its training split in memory "
                                          r"\(methods that stream: baseline\)"):
        RunSpec.build("dhaug", [{"data.path": str(small_dataset), "data.stream": "always"}]).streaming(1)


@pytest.mark.ray
def test_streamed_training_through_ray_train_and_a_search(ray_session, small_dataset, tmp_path, capsys):
    """Two workers stream their shards through Ray Data (a CPU left to the reads); a search over a split
    above the (lowered) threshold completes; a worker that asks for every CPU is refused with the numbers."""
    from posectl.orchestrator.train import train
    from posectl.orchestrator.tune import tune_search
    out = train("baseline", [_stream_cfg(small_dataset, epochs=2)], workers=2, runs_dir=tmp_path, name="s")
    hist = out.results["history"]
    assert [h["train_samples"] for h in hist] == [RunSpec.build(         # rank 0's rows, every epoch
        "baseline", [_stream_cfg(small_dataset)]).streaming(2).rows] * 2
    assert hist[-1]["train_loss_mm"] < hist[0]["train_loss_mm"]
    assert "streaming the training split through Ray Data" in capsys.readouterr().out
    with pytest.raises(ResourceError, match=r"asked for 3 CPUs \(1 worker x \(2 CPU\) \+ 1 for Ray Data tasks\)"):
        train("baseline", [_stream_cfg(small_dataset)], cpus_per_worker=2, runs_dir=tmp_path, name="all")
    import yaml
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({
        "method": "baseline", "samples": 2, "concurrent": 2, "resources": {"cpus": 1, "workers": 1},
        "scheduler": {"name": "none"}, "fixed": {"epochs": 2, **TINY},
        "parameters": {"lr": {"type": "loguniform", "low": 3e-4, "high": 3e-3}}}))
    plan, grid = tune_search("baseline", space=space, storage_path=tmp_path / "tune", name="big", verbose=0,
                             overrides={"data.path": str(small_dataset), "data.memory_fraction": 1e-9})
    assert len(grid) == 2 and grid.num_errors == 0 and plan.concurrent == 1     # one CPU stays for the reads
    assert all(r.metrics["train_samples"] == plan_rows(small_dataset) for r in grid)


def plan_rows(path) -> int:
    return RunSpec.build("baseline", [{**TINY, "data.path": str(path), "data.memory_fraction": 1e-9}]).streaming(1).rows


def test_a_resumed_streamed_run_repeats_the_uninterrupted_one(small_dataset):
    """Each epoch reads the same shards in the same order; the checkpoint carries the shuffle's generator."""
    from posectl.orchestrator.reporters import MemoryReporter
    spec = RunSpec.build("baseline", [_stream_cfg(small_dataset, epochs=3)])
    full = MemoryReporter(keep_states=True)
    run_local(spec, full, test=False)
    resumed = MemoryReporter()
    run_local(RunSpec.build("baseline", [_stream_cfg(small_dataset, epochs=3)]), resumed, state=full.states[0],
              test=False)
    key = lambda rows: [(r["epoch"], r["train_loss_mm"], r["val_mpjpe"]) for r in rows]   # noqa: E731
    assert key(resumed.rows) == key(full.rows[1:])
