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
    # an adapted checkpoint holds every weight: a moved source run is only an error where it is loaded
    assert "target" in cls.inputs(build(cls.Config, {"stage": "adapt", "source_checkpoint": "/nonexistent/run"}))
    with pytest.raises(ConfigError, match="different splits"):
        build(cls.Config, {"target.split": "test"})
    with pytest.raises(ConfigError, match="also labelled source subjects"):
        build(cls.Config, {"stage": "adapt", "data.path": "/d", "target.path": "/d", "data.train_subjects": ["S1"],
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
    t0 = {k: v.clone() for k, v in m.teacher.items()}
    out = m.train_epoch(0)
    assert all(np.isfinite(v) for v in out.values()), out
    net = m.model.state_dict()
    for k, v in src_weights.items():                   # the source model under the adapters: bit-identical
        mod, _, leaf = k.rpartition(".")
        key = k if k in net else f"{mod}.base.{leaf}"
        assert torch.equal(net[key], v), k
    lora = {k: v for k, v in net.items() if ".lora_B" in k}
    assert lora and any(v.abs().sum() > 0 for v in lora.values())        # the adapters moved
    # the teacher is an EMA of the student: it followed the student's moves, lagging behind them
    student = m._student_state()
    moved = [k for k in student if student[k].is_floating_point() and not torch.equal(student[k], t0[k])]
    assert moved and any(not torch.equal(m.teacher[k], t0[k]) for k in moved)
    lag = sum(float((m.teacher[k] - t0[k]).norm()) for k in moved)
    assert 0 < lag < sum(float((student[k] - t0[k]).norm()) for k in moved)
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
    m._hypotheses = lambda cond, grad, flip, **kw: seen.append(cond.shape[0]) or hypotheses(cond, grad, flip, **kw)
    _, _, rows = m.predict_hypotheses(train)
    assert len(train) > 1024 and len(rows) == len(train) and max(seen) * 3 <= 1024


@pytest.mark.ray
def test_both_stages_through_ray_train_with_two_workers(ray_session, small_dataset, target_dataset, tmp_path):
    """(Resume is checked for every method by tests/test_methods.py's contract test.)"""
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
    out = train("posynda", cfg, workers=2, runs_dir=tmp_path, name="adapt")
    epochs = [r["epoch"] for r in out.experiment.history()]
    assert epochs == [1, 2] and np.isfinite(out.results["test"]["mpjpe"])
    n_test = PoseDataset(target_dataset).manifest["splits"]["test"]["rows"]
    assert sum(a["n"] for a in out.results["test"]["per_action"].values()) == -(-n_test // 2)   # every 2nd frame


def test_leak_guard_reads_empty_subject_lists_as_all_subjects():
    """Same dataset, same split: [] means every subject, so the labelled source would be adapted on (or the
    source's training split tested) unless both subject lists are given and disjoint."""
    cls = get_method("posynda")
    same = {"stage": "adapt", "data.path": "/d", "target.path": "/d/"}
    for subjects in ({"target.subjects": ["S5", "S6", "S7", "S8"]}, {"data.train_subjects": ["S1"]}):
        with pytest.raises(ConfigError, match="both given and disjoint"):
            build(cls.Config, {**same, **subjects})
    with pytest.raises(ConfigError, match="test would include labelled source poses"):
        build(cls.Config, {**same, "data.train_subjects": ["S1"], "target.subjects": ["S5"],
                           "target.split": "val", "target.test_split": "train"})
    ok = build(cls.Config, {**same, "data.train_subjects": ["S1"], "target.subjects": ["S5", "S6", "S7", "S8"]})
    assert ok.target.subjects == ["S5", "S6", "S7", "S8"]
    # stage=pretrain never reads the adaptation 2D (a target-supervised reference on S5-S8 labels)
    build(cls.Config, {**same, "stage": "pretrain", "data.train_subjects": ["S5"], "target.subjects": []})


def _pair(small_dataset, target_dataset, tmp_path, source=None, **adapt):
    """A saved pretrain model and an adapt-stage config (TINY) that loads it."""
    cls = get_method("posynda")
    src = PoseDataset(small_dataset)
    train = LiftingData(src.load("train"), src.layout)
    pre = cls(build(cls.Config, {**TINY, "data.path": str(small_dataset), **(source or {})}), train, Context())
    _save_source(pre, tmp_path / "src.pt")
    cfg = build(cls.Config, {**TINY, "stage": "adapt", "source_checkpoint": str(tmp_path / "src.pt"),
                             "data.path": str(small_dataset), "target.path": str(target_dataset), **adapt})
    return cls, cfg, train


def test_adaptation_losses_weigh_px_against_mm_as_the_paper(small_dataset, target_dataset, tmp_path, monkeypatch):
    """target 0.5 px + 1.0 mm, source 1.0 mm + 0.1 px (the released code's units), / 1000 for metres."""
    import posectl.methods.posynda as mod
    cls, cfg, train = _pair(small_dataset, target_dataset, tmp_path, **{"data.train_stride": 15})
    m = cls(cfg, train, Context(inputs={"target": PoseDataset(target_dataset).load("train", with_3d=False)}))
    errs, mpjpes, reproject, mpjpe_all = [], [], m._reproject, mod._mpjpe_all
    m._reproject = lambda *a: (lambda out: errs.append(out[1].mean().item()) or out)(reproject(*a))
    monkeypatch.setattr(mod, "_mpjpe_all", lambda h, y: (lambda v: mpjpes.append(v.item()) or v)(mpjpe_all(h, y)))
    out = m.train_epoch(0)
    steps = len(mpjpes) // 2
    assert steps >= 2 and len(errs) == 3 * steps     # per step: teacher, student target, student source
    t2d, s2d = errs[1::3], errs[2::3]                # px
    t3d, s3d = (1000 * np.array(mpjpes[0::2]), 1000 * np.array(mpjpes[1::2]))      # mm
    assert out["target_loss"] == pytest.approx(np.mean(0.5 * np.array(t2d) + 1.0 * t3d) / 1000, rel=1e-5)
    assert out["source_loss"] == pytest.approx(np.mean(1.0 * s3d + 0.1 * np.array(s2d)) / 1000, rel=1e-5)


def test_grad_clip_is_off_by_default_and_bounds_the_gradient_when_set(small_dataset):
    cls = get_method("posynda")
    src = PoseDataset(small_dataset)
    train = LiftingData(src.load("train"), src.layout)
    assert build(cls.Config, {}).grad_clip == 0
    for clip in (0.0, 1.0):
        m = cls(build(cls.Config, {**TINY, "grad_clip": clip}), train, Context())
        params = [p for g in m.opt.param_groups for p in g["params"]]
        norms = []
        m.opt.step = lambda: norms.append(torch.stack([p.grad.norm() for p in params]).norm().item())
        m._backward(sum(p.sum() for p in params))    # every gradient entry 1: norm sqrt(#weights)
        assert norms[0] == pytest.approx(1.0 if clip else sum(p.numel() for p in params) ** 0.5, rel=1e-4)


def test_the_root_is_estimated_on_undistorted_2d(small_dataset):
    """jpma reprojects with the lens distortion, so the root estimate must undo it: an exact pose seen by
    a distorted Human3.6M camera, off the image centre, reprojects onto its 2D."""
    from posectl.core.camera import h36m_cameras, project
    cls = get_method("posynda")
    src = PoseDataset(small_dataset)
    m = cls(build(cls.Config, TINY), LiftingData(src.load("val"), src.layout), Context())
    g = torch.Generator().manual_seed(0)
    pose = torch.randn(2, 17, 3, generator=g) * 0.3
    pose = pose - pose[:, :1]
    root = torch.tensor([[0.0, 0.0, 5.0], [1.5, -1.2, 4.5]])
    intr = torch.from_numpy(h36m_cameras("S9")[0].intrinsics).repeat(2, 1)
    kp = project(pose + root[:, None], intr)
    _, err = m._reproject(pose[None].repeat(2, 1, 1, 1), kp, intr, None)
    assert err.max() < 0.1, err.max()                # px; 18 px on the root solved for a pinhole camera


def test_protocol_names_the_2d_source_evaluated(small_dataset):
    cls = get_method("posynda")
    src = PoseDataset(small_dataset)
    val = LiftingData(src.load("val"), src.layout)
    m = cls(build(cls.Config, {**TINY, "target.keypoints": "det"}), val, Context())
    assert "2D det," in m.evaluate(val, stride=50, detailed=True)["protocol"]     # the test: target input
    assert "2D gt," in m.evaluate(val, stride=50)["protocol"]                     # validation: the source
    # data that says what 2D it holds (posectl eval --keypoints, the target input of a run) is named as such
    named = LiftingData(src.load("val"), src.layout, keypoints="cpn")
    assert "2D cpn," in m.evaluate(named, stride=50, detailed=True)["protocol"]


def test_source_checkpoint_must_share_the_diffusion_schedule_and_exist(small_dataset, target_dataset, tmp_path):
    for source, adapt, msg in (({"timesteps": 100}, {}, r"timesteps: must match the source model's \(100\)"),
                               ({}, {"scale": 2.0}, r"scale: must match the source model's \(1.0\)")):
        cls, cfg, train = _pair(small_dataset, target_dataset, tmp_path, source, **adapt)
        with pytest.raises(ConfigError, match=msg):
            cls(cfg, train, Context())._load_source()
    cfg = build(cls.Config, {**to_dict(cfg), "scale": 1.0, "source_checkpoint": str(tmp_path / "moved")})
    with pytest.raises(ConfigError, match="moved does not exist"):
        cls(cfg, train, Context()).train_epoch(0)


def test_workers_take_disjoint_equal_shares_of_the_target(small_dataset, target_dataset, tmp_path):
    """Every rank holds the whole target input: an epoch deals it out once, not once per rank, and every
    rank takes the same number of steps (DDP)."""
    cls, cfg, train = _pair(small_dataset, target_dataset, tmp_path, **{"data.train_stride": 15})
    target = PoseDataset(target_dataset).load("train", with_3d=False)
    rows, steps, ms = [], [], []
    for rank in (0, 1):
        m = cls(cfg, train, Context(rank=rank, world_size=2, inputs={"target": target}))
        ms.append(m)
        on = m._target_arrays()["on"]          # the target rows on the device: spy on the 2D windows taken
        mine, windows = [], on.windows
        on.windows = lambda name, idx, T: (name == "inputs" and mine.append(idx)) or windows(name, idx, T)
        m.train_epoch(0)
        rows.append(torch.cat(mine).tolist())
        steps.append(len(mine))
    every = list(range(0, len(target), 15))
    assert steps[0] == steps[1] and len(rows[0]) == len(rows[1]) and not set(rows[0]) & set(rows[1])
    assert sorted(rows[0] + rows[1]) == every
    odd = [torch.cat(m._target_batches(97 * 15, 1)).tolist() for m in ms]     # 97 rows: one is dealt twice
    assert len(odd[0]) == len(odd[1]) == 49 and set(odd[0]) | set(odd[1]) == set(range(0, 97 * 15, 15))
