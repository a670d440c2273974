"""The plugin contract and registry, a third-party plugin through the entry-point group, and one
training step of the baseline (no Ray)."""
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from posectl.config import build
from posectl.datasets.lifting import LiftingData
from posectl.datasets.store import PoseDataset
from posectl.errors import ConfigError
from posectl.methods import base
from posectl.methods.base import Context, Method, TrainConfig, get_method
from posectl.orchestrator.spaces import reported_metric


def test_registry_and_protocol():
    cls = get_method("baseline")
    assert isinstance(cls, type) and cls.name == "baseline"
    with pytest.raises(ConfigError, match="unknown method 'baselin'.*did you mean 'baseline'"):
        get_method("baselin")


def test_third_party_plugin_via_entry_point(monkeypatch):
    @dataclass
    class MyConfig(TrainConfig):
        strength: float = 1.0

    class MyMethod:
        name, description, Config = "mine", "a third-party method", MyConfig

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
