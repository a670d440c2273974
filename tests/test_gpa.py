"""The `gpa` plugin: refuses target labels, never reads target 3D for training, trains through Ray Train."""
import numpy as np
import pytest
import torch

from posectl.config import build
from posectl.datasets.lifting import LiftingData
from posectl.datasets.store import PoseDataset
from posectl.datasets.synthetic import SynthConfig, write_synthetic
from posectl.errors import ConfigError
from posectl.methods.base import Context, get_method
from posectl.orchestrator.data import input_columns

SMALL = {"backbone.width": 64, "batch_size": 64}


@pytest.fixture(scope="module")
def target_dataset(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("t") / "target", SynthConfig(domain="target", subjects=3, frames=40,
                                                                                 amplitude=1.45))


def test_config_refuses_training_on_the_target_domain(small_dataset):
    cls = get_method("gpa")
    with pytest.raises(ConfigError, match="never trains on target 3D"):
        build(cls.Config, {"data.path": str(small_dataset), "target.path": str(small_dataset)})
    with pytest.raises(ConfigError, match="never trains on target 3D"):
        build(cls.Config, {"data.path": "synthetic:target"})         # the default target is synthetic:target
    with pytest.raises(ConfigError, match="single-frame"):
        build(cls.Config, {"backbone.name": "videopose", "backbone.receptive_field": 9})
    with pytest.raises(ConfigError, match="different splits"):     # the test frames' 2D never drives training
        build(cls.Config, {"target.split": "test"})


def test_target_3d_never_reaches_the_loss(small_dataset, target_dataset):
    """The target training input is read without its 3D column: NaN stands in for it, so any use of
    target 3D in a loss would make the loss NaN. Training stays finite and moves the source 2D."""
    cls = get_method("gpa")
    cfg = build(cls.Config, {**SMALL, "data.path": str(small_dataset), "target.path": str(target_dataset),
                             "mode": "gpa_local"})
    spec = cls.inputs(cfg)
    assert spec["target"].with_3d is False and spec["test"].with_3d is True
    assert "joints_3d" not in input_columns(spec["target"].keypoints, spec["target"].with_3d)
    src, tgt = PoseDataset(small_dataset), PoseDataset(target_dataset)
    target = tgt.load(spec["target"].split, with_3d=False)
    assert np.isnan(target.joints_3d).all()
    m = cls(cfg, LiftingData(src.load("train"), src.layout), Context(inputs={"target": target}))
    out = m.train_epoch(0)
    assert np.isfinite(out["train_loss_mm"]) and out["aligned_share"] == 1.0 and 0.3 < out["local_share"] < 0.7
    assert all(torch.isfinite(p).all() for p in m.model.parameters())
    # the aligned batch takes the target's 2D scale: median box size close to the target's
    x, y = m._batch(m._plan([torch.arange(min(len(m.data), 2000))])[0])
    tgt_x = LiftingData(target, tgt.layout).inputs
    box = lambda k: (k.amax(1) - k.amin(1)).mean(1).median().item()    # noqa: E731
    src_box = box(m.data.inputs[:2000])
    assert abs(box(x) - box(tgt_x)) < 0.2 * abs(src_box - box(tgt_x)), (src_box, box(x), box(tgt_x))
    assert torch.allclose(y[:, 0], torch.zeros_like(y[:, 0]))          # targets stay root-relative
    # a source-only model needs no target at all
    cfg0 = build(cls.Config, {**SMALL, "data.path": str(small_dataset), "target.path": str(target_dataset),
                              "mode": "source_only"})
    m0 = cls(cfg0, LiftingData(src.load("train"), src.layout), Context())
    assert np.isfinite(m0.train_epoch(0)["train_loss_mm"])


@pytest.mark.ray
def test_gpa_trains_with_two_workers_and_evaluates_on_the_target(ray_session, small_dataset, target_dataset,
                                                                   tmp_path):
    """(Resume is checked for every method by tests/test_methods.py's contract test.)"""
    from posectl.orchestrator.evaluate import evaluate_checkpoint
    from posectl.orchestrator.train import train
    cfg = [{**SMALL, "data.path": str(small_dataset), "target.path": str(target_dataset), "epochs": 2,
            "mode": "gpa_local"}]
    out = train("gpa", cfg, workers=2, runs_dir=tmp_path, name="g")
    epochs = [r["epoch"] for r in out.experiment.history()]
    assert epochs == [1, 2] and all(r["aligned_share"] == 1.0 for r in out.experiment.history())
    n_test = PoseDataset(target_dataset).manifest["splits"]["test"]["rows"]
    test = out.results["test"]
    assert sum(a["n"] for a in test["per_action"].values()) == n_test          # the target domain's test split
    assert {"Exercise", "Crouching"} & set(test["per_action"])                   # target-only motions
    ev = evaluate_checkpoint(out.experiment.checkpoints / "best.pt")             # the same data by default
    assert ev["metrics"]["mpjpe"] == pytest.approx(test["mpjpe"], abs=1e-3)
    assert ev["dataset"] == PoseDataset(target_dataset).name != PoseDataset(small_dataset).name
    # `--split val` is the split selection used (the source's), not the target domain's
    ev = evaluate_checkpoint(out.experiment.checkpoints / "best.pt", split="val")
    assert ev["metrics"]["mpjpe"] == pytest.approx(out.results["val"]["mpjpe"], abs=1e-3)


@pytest.mark.ray
def test_gpa_search_passes_the_target_input_to_trials(ray_session, small_dataset, target_dataset, tmp_path):
    import yaml

    from posectl.orchestrator.tune import tune_search
    space = tmp_path / "s.yaml"
    space.write_text(yaml.safe_dump({
        "method": "gpa", "samples": 2, "concurrent": 2, "scheduler": {"name": "none"},
        "resources": {"cpus": 1, "workers": 1}, "fixed": {"epochs": 1, **SMALL, "mode": "gpa_local"},
        "parameters": {"gpa_prob": {"type": "choice", "values": [0.5, 1.0]}}}))
    plan, grid = tune_search("gpa", space=space, storage_path=tmp_path / "tune", name="g", verbose=0,
                             overrides={"data.path": str(small_dataset), "target.path": str(target_dataset)})
    assert len(grid) == 2 and grid.num_errors == 0
    assert all(r.metrics["aligned_share"] > 0.3 and np.isfinite(r.metrics["val_mpjpe"]) for r in grid)
