"""The `posynda` plugin: both stages, frozen source weights, no target 3D in adaptation, Ray Train + resume."""
import numpy as np
import pytest
import torch

from posectl.config import build, to_dict
from posectl.datasets.lifting import LiftingData
from posectl.datasets.store import PoseDataset
from posectl.datasets.synthetic import SynthConfig, write_synthetic
from posectl.errors import ConfigError
from posectl.methods.base import Context, get_method
from posectl.orchestrator.experiment import save_checkpoint
from posectl.orchestrator.spaces import reported_metric

TINY = {"denoiser.width": 32, "denoiser.depth": 1, "denoiser.heads": 4, "hypotheses": 2, "sampling_steps": 1,
        "refiner.width": 16, "refiner.depth": 1, "batch_size": 64}


@pytest.fixture(scope="module")
def target_dataset(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("pt") / "target", SynthConfig(domain="target", subjects=3,
                                                                                  frames=40))


def _save_source(pre, path):
    """Save a pretrain-stage model as the `source_checkpoint` an adapt run loads."""
    save_checkpoint(path, {"method": "posynda", "config": to_dict(pre.cfg), "epoch": 0,
                           "method_state": pre.state_dict()})
    return path


def test_config_guards():
    cls = get_method("posynda")
    with pytest.raises(ConfigError, match="needs a `posynda stage=pretrain` checkpoint"):
        cls.inputs(build(cls.Config, {"stage": "adapt"}))
    with pytest.raises(ConfigError, match="does not exist"):
        cls.inputs(build(cls.Config, {"stage": "adapt", "source_checkpoint": "/nonexistent/run"}))
    with pytest.raises(ConfigError, match="different splits"):
        build(cls.Config, {"target.split": "test"})
    with pytest.raises(ConfigError, match="also labelled source subjects"):
        build(cls.Config, {"data.path": "/d", "target.path": "/d", "data.train_subjects": ["S1"],
                           "target.subjects": ["S1", "S5"]})
    spec = cls.inputs(build(cls.Config, {"stage": "adapt", "source_checkpoint": "/", "target.subjects": ["S5"]}))
    assert spec["target"].with_3d is False and spec["target"].subjects == ("S5",)
    assert spec["test"].split == "test" and spec["target"].split == "train"


def test_adaptation_freezes_the_source_and_never_reads_target_3d(small_dataset, target_dataset, tmp_path):
    cls = get_method("posynda")
    src = PoseDataset(small_dataset)
    train = LiftingData(src.load("train"), src.layout)
    cfg = build(cls.Config, {**TINY, "data.path": str(small_dataset)})
    pre = cls(cfg, train, Context())
    assert np.isfinite(pre.train_epoch(0)["train_loss_mm"])
    _save_source(pre, tmp_path / "src.pt")
    src_weights = {k[4:]: v.clone() for k, v in pre.state_dict()["model"].items()}
    cfg2 = build(cls.Config, {**TINY, "stage": "adapt", "source_checkpoint": str(tmp_path / "src.pt"),
                              "data.path": str(small_dataset), "target.path": str(target_dataset), "lr": 1e-3})
    target = PoseDataset(target_dataset).load("train", with_3d=False)
    assert np.isnan(target.joints_3d).all()            # NaN would poison any loss it reached
    m = cls(cfg2, train, Context(inputs={"target": target}))
    out = m.train_epoch(0)
    assert all(np.isfinite(v) for v in out.values()), out
    net = m.model.state_dict()
    for k, v in src_weights.items():                   # the source model under the adapters: bit-identical
        mod, _, leaf = k.rpartition(".")
        key = k if k in net else f"{mod}.base.{leaf}"
        assert torch.equal(net[key], v), k
    lora = {k: v for k, v in net.items() if ".lora_B" in k}
    assert lora and any(v.abs().sum() > 0 for v in lora.values())        # the adapters moved
    # the teacher is an EMA of the student, not the student itself
    student = m._student_state()
    assert any(not torch.equal(m.teacher[k], student[k]) for k in student)
    ev = m.evaluate(LiftingData(src.load("val"), src.layout))
    assert all(reported_metric("posynda", f"val_{k}") for k, v in ev.items() if isinstance(v, (int, float)))  # declared
    assert np.isfinite(ev["mpjpe"]) and np.isfinite(ev["p_best"]) and np.isfinite(ev["p_agg"])


def test_clip_adaptation_feeds_moving_clips_to_both_terms(small_dataset, target_dataset, tmp_path):
    """With clips (frames > 1) the target and the GPA-moved source terms both see real motion, not one
    pose repeated across the clip."""
    cls = get_method("posynda")
    src = PoseDataset(small_dataset)
    train = LiftingData(src.load("train"), src.layout)
    clip = {**TINY, "denoiser.frames": 3, "data.path": str(small_dataset)}
    pre = cls(build(cls.Config, clip), train, Context())
    _save_source(pre, tmp_path / "src.pt")
    cfg = build(cls.Config, {**clip, "stage": "adapt", "source_checkpoint": str(tmp_path / "src.pt"),
                             "target.path": str(target_dataset)})
    m = cls(cfg, train, Context(inputs={"target": PoseDataset(target_dataset).load("train", with_3d=False)}))
    seen, hypotheses = [], m._hypotheses

    def spy(cond, grad, flip, **kw):
        if grad:                                       # the student's calls: target term, then source term
            seen.append(cond)
        return hypotheses(cond, grad, flip, **kw)

    reprojected, reproject = [], m._reproject

    def spy_reproject(hyp, kp, intr, root):             # both terms supervise every frame of every clip
        reprojected.append((hyp.shape[1], len(kp), len(intr)))
        return reproject(hyp, kp, intr, root)

    m._hypotheses, m._reproject = spy, spy_reproject
    assert np.isfinite(m.train_epoch(0)["source_loss"])
    assert len(seen) >= 2 and len(seen) % 2 == 0
    for cond in seen:
        assert cond.shape[1] == 3 and not torch.equal(cond[:, 0], cond[:, 1]), "a clip repeats one frame"
    assert len(reprojected) == 3 * len(seen) // 2       # per step: teacher, student target, student source
    for step in range(len(seen) // 2):
        frames = 3 * len(seen[2 * step])                # clips in this step x 3 frames
        assert reprojected[3 * step: 3 * step + 3] == [(frames,) * 3] * 3, "the losses see only the centre frame"
    m._reproject = reproject
    # evaluation batches hold about 1024 frames, not 1024 clips (x H hypotheses x 2 flips at once)
    seen.clear()
    m._hypotheses = lambda cond, grad, flip: seen.append(cond.shape[0]) or hypotheses(cond, grad, flip)
    _, _, rows = m.predict_hypotheses(train)
    assert len(train) > 1024 and len(rows) == len(train) and max(seen) * 3 <= 1024


@pytest.mark.ray
def test_both_stages_through_ray_train_with_two_workers_and_resume(ray_session, small_dataset, target_dataset,
                                                                    tmp_path, ledger):
    from posectl.orchestrator.train import train
    base = {**TINY, "data.path": str(small_dataset), "target.path": str(target_dataset), "data.train_stride": 4,
            "data.eval_stride": 2}
    # the pretrain stage in-process (its Ray path is the adapt path's; one Ray run fewer for the suite)
    cls = get_method("posynda")
    src = PoseDataset(small_dataset)
    pre_cfg = build(cls.Config, {**TINY, "data.path": str(small_dataset), "data.train_stride": 4})
    pre = cls(pre_cfg, LiftingData(src.load("train"), src.layout), Context())
    pre.train_epoch(0)
    ev = pre.evaluate(LiftingData(src.load("val"), src.layout), stride=4, detailed=True)
    assert np.isfinite(ev["mpjpe"]) and "JPMA" in ev["protocol"]
    save_checkpoint(tmp_path / "pre" / "checkpoints" / "best.pt",
                    {"method": "posynda", "config": to_dict(pre_cfg), "epoch": 1, "method_state": pre.state_dict()})
    cfg = [{**base, "stage": "adapt", "source_checkpoint": str(tmp_path / "pre"), "epochs": 2}]
    marker = tmp_path / "failed"

    def fail_once(epoch, rank):
        if epoch == 1 and rank == 0 and not marker.exists():
            marker.touch()
            raise RuntimeError("injected failure")
    ledger.fault()
    with pytest.raises(Exception, match="injected failure"):
        train("posynda", cfg, workers=2, runs_dir=tmp_path, name="adapt", fault_hook=fail_once)
    out = train("posynda", [], workers=2, runs_dir=tmp_path, name="adapt", resume=True)
    epochs = [r["epoch"] for r in out.experiment.history()]
    assert ledger.lost(len({1, 2} ^ set(epochs)) + len(epochs) - len(set(epochs))) == 0
    assert epochs == [1, 2] and np.isfinite(out.results["test"]["mpjpe"])
    ledger.recovered()
    n_test = PoseDataset(target_dataset).manifest["splits"]["test"]["rows"]
    assert sum(a["n"] for a in out.results["test"]["per_action"].values()) == -(-n_test // 2)   # every 2nd frame
