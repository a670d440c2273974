"""The plugin contract and registry: every registered method keeps the contract (one epoch, evaluation
with its declared metrics, checkpoint, resume equals uninterrupted), a class missing a hook is refused,
a third-party plugin through the entry-point group, and one training step of the baseline (no Ray)."""
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from posectl.config import build
from posectl.datasets.lifting import LiftingData
from posectl.datasets.store import PoseDataset
from posectl.errors import ConfigError
from posectl.methods import base
from posectl.methods.base import Context, Method, TrainConfig, available, check_method, get_method
from posectl.orchestrator.experiment import load_checkpoint, save_checkpoint
from posectl.orchestrator.reporters import MemoryReporter
from posectl.orchestrator.spaces import reported_metric
from posectl.orchestrator.spec import RunSpec, build_worker, run_local

TIMES = ("train_time_s", "epoch_time_s", "train_samples_per_s", "peak_rss_mb")


@pytest.mark.parametrize("name", sorted(available()))
def test_every_registered_method_keeps_the_contract(name, tmp_path):
    """`posectl train NAME --smoke-test` with no other argument, in-process and for two epochs: both epochs
    train and report the declared validation metrics; the epoch-1 checkpoint survives a round trip through
    disk, and resuming from it gives epoch 2 exactly as the uninterrupted run; the best weights alone
    (what best.pt and exports keep) evaluate to the final validation figures."""
    spec = RunSpec.build(name, [], smoke_test=True).with_params({"epochs": 2})
    ref = MemoryReporter(keep_states=True)
    results, _, data = run_local(spec, ref)
    assert [r["epoch"] for r in ref.rows] == [1, 2]
    numeric = {k: v for k, v in results["val"].items() if isinstance(v, (int, float))}
    assert numeric and all(reported_metric(name, f"val_{k}") for k in numeric), numeric      # declared
    assert math.isfinite(ref.rows[-1]["val_mpjpe"]) and results["val"]["protocol"]
    save_checkpoint(tmp_path / "state.pt", ref.states[0])
    state = load_checkpoint(tmp_path / "state.pt", name)
    resumed = MemoryReporter()
    run_local(spec, resumed, state=state)
    assert [r["epoch"] for r in resumed.rows] == [2]
    drop = lambda row: {k: v for k, v in row.items() if k not in TIMES}     # noqa: E731
    assert drop(resumed.rows[0]) == drop(ref.rows[1])
    weights = {"model": ref.best["method_state"]["model"]}
    method, data = build_worker(spec.describe(), spec.local_sources(test=False), Context())
    method.load_state_dict(weights)
    again = method.evaluate(data["val"], stride=spec.cfg.data.eval_stride)
    assert again["mpjpe"] == results["val"]["mpjpe"]


def test_a_class_that_breaks_the_contract_is_refused():
    @dataclass
    class MyConfig(TrainConfig):
        pass

    class NoTraining(Method):
        name, description, Config = "broken", "no train_epoch", MyConfig

        def evaluate(self, data, stride=1, detailed=False):
            return {}
    with pytest.raises(ConfigError, match="does not implement train_epoch"):
        check_method(NoTraining)
    with pytest.raises(ConfigError, match="must derive from posectl.methods.base.Method"):
        check_method(type("Plain", (), {"name": "plain", "description": "x", "Config": MyConfig}))

    class Nameless(NoTraining):
        name = ""

        def train_epoch(self, epoch):
            return {}
    with pytest.raises(ConfigError, match="needs a name"):
        base.register(Nameless)


def test_registry_and_protocol():
    cls = get_method("baseline")
    assert isinstance(cls, type) and cls.name == "baseline"
    with pytest.raises(ConfigError, match="unknown method 'baselin'.*did you mean 'baseline'"):
        get_method("baselin")


def test_third_party_plugin_via_entry_point(monkeypatch):
    @dataclass
    class MyConfig(TrainConfig):
        strength: float = 1.0

    class MyMethod(Method):
        name, description, Config = "mine", "a third-party method", MyConfig

        def train_epoch(self, epoch):
            return {}

        def evaluate(self, data, stride=1, detailed=False):
            return {}

    class EP:
        name = "mine"

        def load(self):
            return MyMethod

    monkeypatch.setattr(base, "entry_points", lambda group: [EP()] if group == "posectl.methods" else [])
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    assert get_method("mine") is MyMethod
    assert build(MyMethod.Config, {"strength": 2}).strength == 2.0


def test_baseline_epoch_learns_and_round_trips_state(small_dataset):
    ds = PoseDataset(small_dataset)
    data = LiftingData(ds.load("train"), ds.layout)
    cls = get_method("baseline")
    cfg = build(cls.Config, {"backbone.width": 64, "batch_size": 64, "lr": 3e-3})
    m = cls(cfg, data, Context())
    assert isinstance(m, Method)
    before = m.evaluate(data)["mpjpe"]
    for e in range(3):
        m.train_epoch(e)
    after = m.evaluate(data)
    assert all(reported_metric("baseline", f"val_{k}") for k, v in after.items() if isinstance(v, (int, float)))  # declared
    assert after["mpjpe"] < 0.7 * before
    m2 = cls(cfg, data, Context())
    m2.load_state_dict(m.state_dict())
    x = data.windows(torch.arange(8), 1)
    m.model.eval(), m2.model.eval()
    assert torch.equal(m.model(x), m2.model(x))
    # evaluation joint sets and flip TTA change what is measured, and say so
    cfg14 = build(cls.Config, {"backbone.width": 64, "eval_joints": "14", "test_flip": True})
    m3 = cls(cfg14, data, Context())
    m3.load_state_dict({"model": m.state_dict()["model"]})
    r = m3.evaluate(data)
    assert "14 joints" in r["protocol"] and "flip TTA on" in r["protocol"]
    assert "2D gt," in r["protocol"]
    # the test input of gpa (target.keypoints) or `posectl eval --keypoints`: the 2D loaded is named, not data.keypoints
    named = LiftingData(data.arrays, data.layout, keypoints="cpn_ft_h36m_dbb")
    assert "2D cpn_ft_h36m_dbb," in m3.evaluate(named, stride=8)["protocol"]
    assert np.isfinite(r["mpjpe"]) and r["mpjpe"] != pytest.approx(after["mpjpe"])


@pytest.mark.ray
def test_the_documented_minimal_method_trains_through_ray_train(ray_session, small_dataset, tmp_path, monkeypatch):
    """docs/writing-a-method.md's own code block, registered as written and trained with two Ray Train workers."""
    import re
    import sys
    import types
    from pathlib import Path

    import ray.cloudpickle

    from posectl.orchestrator.train import train
    doc = (Path(__file__).resolve().parents[1] / "docs" / "writing-a-method.md").read_text()
    code = re.search(r"```python\n(.*?)```", doc, re.S).group(1)
    mod = types.ModuleType("posectl_doc_example")
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    exec(compile(code, "docs/writing-a-method.md", "exec"), mod.__dict__)
    assert get_method("mlp") is mod.MLPLifter
    ray.cloudpickle.register_pickle_by_value(mod)        # the workers cannot import a module made here
    try:
        out = train("mlp", [{"data.path": str(small_dataset), "epochs": 2, "hidden": 128, "batch_size": 64,
                             "lr": 3e-3}], workers=2, runs_dir=tmp_path, name="mlp")
    finally:
        ray.cloudpickle.unregister_pickle_by_value(mod)
    hist = out.experiment.history()
    assert [r["epoch"] for r in hist] == [1, 2] and hist[1]["train_loss_mm"] < hist[0]["train_loss_mm"]
    assert math.isfinite(out.results["test"]["mpjpe"]) and "per-sample mean" in out.results["test"]["protocol"]
    assert set(load_checkpoint(out.experiment.checkpoints / "last.pt", "mlp")["method_state"]) == {"model", "optimizer"}


def test_batch_size_is_global_unless_given_per_worker(small_dataset):
    ds = PoseDataset(small_dataset)
    data = LiftingData(ds.load("train"), ds.layout)
    cls = get_method("baseline")
    for values, world, expected in (({}, 1, 256), ({}, 4, 64), ({"batch_size_per_worker": 100}, 4, 100)):
        m = cls(build(cls.Config, {"backbone.width": 16, **values}), data, Context(world_size=world))
        assert m.per_worker() == expected and m.per_worker(1000) == 1000 // world


def test_workers_take_whole_sequences_balanced_by_frames(small_dataset):
    """Sharding: every worker gets whole sequences (no temporal window crosses a shard edge: each
    window equals the unsharded one), the blocks are the same every time they are computed (runs and
    resumes), balanced within one sequence's length, and every worker draws as many batches."""
    spec = RunSpec.build("baseline", [{"data.path": str(small_dataset), "backbone.name": "videopose",
                                       "backbone.receptive_field": 9, "backbone.width": 16}])
    sources = spec.local_sources(test=False)
    full = build_worker(spec.describe(), sources, Context())[1]["train"]
    world = 3
    blocks = spec.train_blocks(sources["train"], world)
    assert blocks == spec.train_blocks(spec.local_sources(test=False)["train"], world)
    assert blocks[0][0] == 0 and blocks[-1][1] == len(full) and all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
    seq = full.arrays.sequence_ids
    longest = np.bincount(seq).max()
    sizes = [hi - lo for lo, hi in blocks]
    assert max(sizes) - min(sizes) <= 2 * longest
    seen, steps = set(), []
    for rank, (lo, hi) in enumerate(blocks):
        ctx = Context(rank=rank, world_size=world)
        part = build_worker(spec.describe(blocks), sources, ctx)[1]["train"]
        assert torch.equal(part.inputs, full.inputs[lo:hi])
        mine = set(seq[lo:hi].tolist())
        assert not mine & seen and (lo == 0 or seq[lo] != seq[lo - 1])       # whole sequences, each once
        seen |= mine
        idx = torch.arange(len(part))
        assert torch.equal(part.windows(idx, 9), full.windows(idx + lo, 9))
        steps.append(len(list(part.batches(64, shuffle=True, generator=torch.Generator().manual_seed(0)))))
    assert seen == set(seq.tolist()) and len(set(steps)) == 1
