"""DH-AUG: the DH forward-kinematics model, generator/critics, one GAN and lifting step, exact
checkpoint resume, and a 2-worker Ray Train run."""
import copy
import json

import numpy as np
import pytest
import torch

from posectl.config import build
from posectl.core.kinematics import (
    BONE_NAMES, FREE_ANGLES, NUM_ANGLES, ZERO_ANGLES, DHSkeleton, angle_bounds, bone_lengths16,
    kcs_features, swap_bone_lengths, upright_alignment,
)
from posectl.core.skeleton import H36M17
from posectl.datasets.lifting import LiftingData, batch_bounds
from posectl.datasets.store import PoseDataset
from posectl.errors import ConfigError
from posectl.methods.base import Context, get_method
from posectl.orchestrator.spaces import reported_metric

LENGTHS = torch.tensor([0.13, 0.44, 0.45, 0.13, 0.44, 0.45, 0.23, 0.26, 0.33, 0.15, 0.28, 0.25, 0.15, 0.28, 0.25])


def _random_angles(n, gen, scale=400.0):
    return (torch.rand(n, NUM_ANGLES, generator=gen) * 2 - 1) * scale


def test_fk_reproduces_bone_lengths_for_any_angles():
    fk, gen = DHSkeleton(), torch.Generator().manual_seed(0)
    lengths = LENGTHS * (0.8 + 0.4 * torch.rand(256, 15, generator=gen))
    poses = fk(_random_angles(256, gen), lengths, root=torch.randn(256, 3, generator=gen))
    assert poses.shape == (256, 16, 3)
    torch.testing.assert_close(bone_lengths16(poses), lengths, atol=1e-5, rtol=1e-5)


def test_fk_zero_pose_is_an_upright_person_and_joints_bend_the_right_way():
    fk = DHSkeleton()
    p = fk(torch.zeros(1, NUM_ANGLES), LENGTHS[None], rotate=False)[0]
    assert p[9, 2] > p[8, 2] > p[7, 2] > 0 > p[2, 2] > p[3, 2]          # head above thorax above spine; feet down
    # the person faces +y (right hip at +x): the knee flexes backwards, the elbow forwards
    for knee, foot in ((3, 3), (8, 6)):
        a = torch.zeros(1, NUM_ANGLES)
        a[0, knee] = -90.0                                               # inside the knee range (-180, 0)
        assert fk(a, LENGTHS[None], rotate=False)[0, foot, 1] < -0.3
    for elbow, wrist in ((26, 15), (31, 12)):
        a = torch.zeros(1, NUM_ANGLES)
        a[0, elbow] = 90.0                                               # inside the elbow range (0, 180)
        assert fk(a, LENGTHS[None], rotate=False)[0, wrist, 1] > 0.2


def test_ranged_angles_respect_every_range_and_forced_zeros():
    fk = DHSkeleton()
    lo, hi = angle_bounds()
    raw = torch.cat([torch.randn(512, len(FREE_ANGLES)) * 50, torch.full((1, len(FREE_ANGLES)), 1e6),
                     torch.full((1, len(FREE_ANGLES)), -1e6)])
    ang = fk.ranged(raw)
    assert ((ang >= lo - 1e-4) & (ang <= hi + 1e-4)).all()
    assert (ang[:, list(ZERO_ANGLES)] == 0).all()
    assert len(FREE_ANGLES) == 31
    # every free angle reaches (close to) both ends of its range
    assert torch.allclose(ang[-2, list(FREE_ANGLES)], hi[list(FREE_ANGLES)], atol=1e-3)
    assert torch.allclose(ang[-1, list(FREE_ANGLES)], lo[list(FREE_ANGLES)], atol=1e-3)


def test_fk_propagates_gradients_to_angles_lengths_and_root():
    fk = DHSkeleton()
    raw = torch.randn(8, len(FREE_ANGLES), requires_grad=True)
    lengths = LENGTHS.repeat(8, 1).requires_grad_(True)
    root = torch.zeros(8, 3, requires_grad=True)
    poses = fk(fk.ranged(raw), lengths, root=root)
    (poses ** 2).sum().backward()
    for t in (raw, lengths, root):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
    # every free angle except the wrist frames (no positional effect) moves some joint
    moving = raw.grad.abs().sum(0) > 0
    idle = [FREE_ANGLES.index(i) for i in (27, 32)]
    assert moving.sum() == len(FREE_ANGLES) - len(idle)


def test_bone_swap_and_kcs_features():
    gen = torch.Generator().manual_seed(1)
    fk = DHSkeleton()
    poses = fk(_random_angles(32, gen, 90), LENGTHS.repeat(32, 1))
    new = LENGTHS * 1.1
    swapped = swap_bone_lengths(poses, new.expand(32, 15))
    torch.testing.assert_close(bone_lengths16(swapped), new.expand(32, 15), atol=1e-5, rtol=1e-5)
    f = kcs_features(poses)
    assert f.shape == (32, 30) and (f[:, :15].abs() <= 1 + 1e-5).all()
    torch.testing.assert_close(f[:, 15:], LENGTHS.expand(32, 15), atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def small_lifting(small_dataset):
    ds = PoseDataset(small_dataset)
    return LiftingData(ds.load("train"), H36M17), LiftingData(ds.load("val"), H36M17)


def _method(data, ctx=None, **over):
    cls = get_method("dhaug")
    cfg = build(cls.Config, {"batch_size": 64, "backbone.width": 64, "gan.gen_width": 32,
                             "gan.critic3d_width": 32, "gan.critic2d_width": 32, "epochs": 3, "warmup": 1,
                             "gan.critic_steps": 2, **over})
    return cls(cfg, data, ctx or Context())


def test_generated_batch_is_finite_and_anatomically_valid(small_lifting):
    train, _ = small_lifting
    m = _method(train)
    poses = m.sample_poses(512)
    assert poses.shape == (512, 16, 3) and torch.isfinite(poses).all()
    torch.testing.assert_close(poses[:, 0], torch.zeros(512, 3), atol=1e-5, rtol=0)
    ratio = bone_lengths16(poses) / m.templates.mean(0)
    # lengths come from real subjects (+-20 % per group; templates differ by a few %)
    assert ratio.min() > 0.7 and ratio.max() < 1.3
    # left and right share the group factor: in every sample, symmetric bones keep the template's
    # left/right ratio (a factor per bone, drawn in 1 +- 0.2, would spread it by ~0.16)
    i, j = BONE_NAMES.index("r_thigh"), BONE_NAMES.index("l_thigh")
    torch.testing.assert_close(ratio[:, i] / ratio[:, j], torch.ones(512), atol=0.01, rtol=0)
    # `normal` mode samples inside the ranges and places people upright
    m2 = _method(train, mode="normal")
    p2 = m2.sample_poses(256)
    assert torch.isfinite(p2).all() and (p2[:, 8, 2] > p2[:, 0, 2]).float().mean() > 0.9   # thorax above hip


def test_one_gan_step_and_one_lifting_step_change_the_networks(small_lifting):
    train, _ = small_lifting
    m = _method(train)
    m._setup_augmentation()
    before = {k: copy.deepcopy(v.state_dict()) for k, v in m.nets.items()}
    world, real2d, lengths = m._swap_and_project()
    idx = torch.arange(64)
    cams = torch.randint(len(m.R), (64,))
    with torch.no_grad():
        fake_world, fake_rc = m._generate(lengths[idx], grad=False)
        _, kp, valid = m._view(fake_world, cams)
    w3 = m._critic_step("D3", world[idx], fake_rc[:, 0])
    w2 = m._critic_step("D2", real2d[idx], kp[:, 0])
    g = m._generator_step(lengths[idx], cams, motion=False)
    assert all(torch.isfinite(torch.as_tensor(v)) for v in (w3, w2, g))
    for k in ("G", "D3", "D2"):
        changed = any(not torch.equal(before[k][n], p) for n, p in m.nets[k].state_dict().items())
        assert changed, k
    assert valid.any()
    p0 = copy.deepcopy(m.model.state_dict())
    err = m._pose_step(kp[valid][:, :1].flip(0), torch.zeros(int(valid.sum()), 16, 3))
    assert torch.isfinite(err)
    assert any(not torch.equal(p0[n], p) for n, p in m.model.state_dict().items())


def test_lifting_pass_over_a_buffer_one_past_a_full_batch(small_lifting):
    """The generated buffer's size varies with the validity filter; 64k+1 pairs once left a batch of
    one, which batch norm cannot train on (an epoch-10 crash in the benchmark)."""
    train, _ = small_lifting
    m = _method(train)
    n = 2 * 64 + 1
    kp = torch.randn(n, 1, 16, 2) * 0.3
    err, count = m._pose_pass(lambda idx: kp[idx], torch.randn(n, 16, 3) * 0.2, n)
    assert count == n and err > 0
    assert m._pose_pass(lambda idx: kp[idx], torch.zeros(1, 16, 3), 1)[1] == 0    # one pair: no step
    assert batch_bounds(129, 64) == [(0, 64), (64, 129)]
    assert batch_bounds(130, 64) == [(0, 64), (64, 128), (128, 130)]
    assert batch_bounds(1, 64) == [(0, 1)] and batch_bounds(0, 64) == []
    assert [len(b) for b in train.batches(len(train) - 1, shuffle=True)] == [len(train)]


@pytest.mark.parametrize("mode", ["gan", "none"])
def test_checkpoint_then_resume_gives_identical_next_epoch(small_lifting, mode):
    train, val = small_lifting
    m = _method(train, mode=mode)
    m.train_epoch(0)
    state = copy.deepcopy(m.state_dict())
    rng, gen = torch.get_rng_state(), m.gen.get_state()    # the random streams: kept per worker by the loop
    ref = m.train_epoch(1)
    m2 = _method(train, mode=mode, seed=7)        # different init: everything must come from the state
    m2.load_state_dict(state)
    torch.set_rng_state(rng)
    m2.gen.set_state(gen)
    got = m2.train_epoch(1)
    assert got == ref
    assert m.evaluate(val)["mpjpe"] == m2.evaluate(val)["mpjpe"]
    if mode == "gan":
        assert ref["generated"] > 0 and "train_fake_mpjpe_mm" in ref


def test_config_errors_are_one_line():
    cls = get_method("dhaug")
    with pytest.raises(ConfigError, match="eval_joints"):
        build(cls.Config, {"eval_joints": "all"})
    with pytest.raises(ConfigError, match="never trains"):
        build(cls.Config, {"epochs": 2, "warmup": 2})
    with pytest.raises(ConfigError, match="gan.bone_scaling"):
        build(cls.Config, {"gan.bone_scaling": "bigger"})


def test_video_mode_generates_clips_and_trains(small_lifting):
    train, val = small_lifting
    m = _method(train, **{"backbone.name": "videopose", "backbone.receptive_field": 3, "gan.motion_warmup": 1,
                          "epochs": 3, "warmup": 1})
    m._setup_augmentation()
    assert {"M3", "M2"} <= set(m.nets)
    r0 = m.train_epoch(0)
    assert r0["w_dist_motion"] == 0.0 and "train_loss_mm" not in r0       # motion critics wait, lifting waits
    r1 = m.train_epoch(1)
    assert r1["w_dist_motion"] != 0.0 and "train_loss_mm" not in r1
    r2 = m.train_epoch(2)
    ev = m.evaluate(val)
    assert np.isfinite(r2["train_loss_mm"]) and np.isfinite(ev["mpjpe"])
    assert all(reported_metric("dhaug", f"val_{k}") for k, v in ev.items() if isinstance(v, (int, float)))  # declared


@pytest.mark.ray
def test_dhaug_trains_through_ray_train_with_two_workers(ray_session, small_dataset, tmp_path):
    from posectl.orchestrator.train import train
    out = train("dhaug", [{"data.path": str(small_dataset), "batch_size": 64, "backbone.width": 64,
                           "gan.gen_width": 32, "gan.critic3d_width": 32, "gan.critic2d_width": 32,
                           "epochs": 2, "warmup": 1}], workers=2, runs_dir=tmp_path, name="dh")
    hist = out.experiment.history()
    assert [r["epoch"] for r in hist] == [1, 2]
    assert hist[0]["generated"] > 0 and np.isfinite(hist[0]["w_dist_3d"])
    assert np.isfinite(hist[1]["train_loss_mm"])
    res = json.loads((out.experiment.root / "results.json").read_text())
    assert "16 joints" in res["test"]["protocol"] and np.isfinite(res["test"]["mpjpe"])
    state = torch.load(out.experiment.checkpoints / "last.pt", weights_only=True)
    assert set(state["method_state"]["nets"]) == {"G", "D3", "D2"}
    # `posectl samples RUN` draws from the trained generator and writes a PNG grid
    from posectl.cli import main
    with pytest.raises(SystemExit) as e:
        main(["samples", str(out.experiment.root), "--n", "6"])
        raise SystemExit(0)
    assert e.value.code == 0 and (out.experiment.root / "generated_poses.png").stat().st_size > 1000
    with pytest.raises(SystemExit) as e:        # a checkpoint file works too
        main(["samples", str(out.experiment.checkpoints / "best.pt"), "--n", "3", "--out", str(tmp_path / "b.png")])
        raise SystemExit(0)
    assert e.value.code == 0 and (tmp_path / "b.png").is_file()


# -- review fixes ----------------------------------------------------------------------------------
def test_left_and_right_limbs_mirror_each_other_within_their_ranges():
    """Mirrored angles (right arm a24, a25, a26 -> left -a24, +a25, +a26; right leg a0..a3 -> left -a0, -a1,
    +a2, +a3) give mirrored joints across the sagittal plane x = 0, so every range must map onto its
    mirror's. The released table gave the right shoulder's a25 (-155, 65) like a24: 155 deg backwards,
    only 65 forwards, unlike the left arm (a25 = 90 lifts the arm straight forward)."""
    fk, gen = DHSkeleton(), torch.Generator().manual_seed(3)
    lo, hi = angle_bounds()
    mirror = {24: (29, -1), 25: (30, 1), 26: (31, 1), 0: (5, -1), 1: (6, -1), 2: (7, 1), 3: (8, 1)}
    n = 512
    right = torch.zeros(n, NUM_ANGLES)
    for i in mirror:
        right[:, i] = lo[i] + torch.rand(n, generator=gen) * (hi[i] - lo[i])     # inside the right limb's ranges
    left = torch.zeros(n, NUM_ANGLES)
    for i, (j, s) in mirror.items():
        left[:, j] = s * right[:, i]
    assert ((left >= lo) & (left <= hi)).all(), "a mirrored right-limb pose leaves the left limb's ranges"
    for i, (j, s) in mirror.items():                                                # and the converse
        assert sorted((s * lo[i].item(), s * hi[i].item())) == [lo[j].item(), hi[j].item()], (i, j)
    p = fk(right, LENGTHS.expand(n, 15), rotate=False)
    q = fk(left, LENGTHS.expand(n, 15), rotate=False) * torch.tensor([-1.0, 1.0, 1.0])
    # symmetric LENGTHS: RShoulder/RElbow/RWrist, RHip/RKnee/RFoot are the mirrored left joints
    torch.testing.assert_close(q[:, [10, 11, 12, 4, 5, 6]], p[:, [13, 14, 15, 1, 2, 3]], atol=1e-5, rtol=0)
    for i, (s, e) in ((25, (13, 14)), (30, (10, 11))):
        a = torch.zeros(1, NUM_ANGLES)
        a[0, i] = 90.0
        u = fk(a, LENGTHS[None], rotate=False)[0]
        assert (u[e] - u[s])[1] > 0.27 and lo[i] <= 90 <= hi[i]       # upper arm straight forward, reachable


@pytest.fixture
def plain_meta():
    """core/skeleton.py's per-device index tensors made afresh around a test on torch's data-less `meta`
    device (tests/devicecheck.py's stand-in accelerator also calls itself `meta`)."""
    from posectl.core import skeleton
    skeleton._INDEX.clear()
    yield torch.device("meta")
    skeleton._INDEX.clear()


def test_generation_runs_on_the_models_device(small_lifting, plain_meta):
    """On a GPU the DH model, its alignment and the `normal`/`gan` generation once mixed CPU and device
    tensors. No GPU here: torch's `meta` device has the same device checks. A whole `_augment_pass`
    cannot run on meta (boolean-mask indexing `kp[valid]` needs data), so this covers everything
    before it: alignment, generation in both modes (video too), projection, critic and generator steps."""
    train, _ = small_lifting
    meta = torch.device("meta")
    assert upright_alignment(DHSkeleton().to(meta)).device == meta
    ctx = Context(device=meta, prepare_model=lambda net: net.to(meta))
    video = {"backbone.name": "videopose", "backbone.receptive_field": 3, "gan.motion_warmup": 1}
    for over in ({"mode": "normal"}, {"mode": "gan"}, {"mode": "gan", **video}):
        m = _method(train, ctx=ctx, **over)
        m._setup_augmentation()
        world_rc, real2d, lengths = m._swap_and_project()
        idx, cams = torch.arange(16), torch.randint(len(m.R), (16,))
        L = m._jitter(lengths[idx])
        world, rc = m._generate(L, grad=False)
        cam, kp, valid = m._view(world, cams)
        assert world.device == rc.device == cam.device == kp.device == valid.device == meta
        assert world.shape == (16, m.frames, 16, 3)
        if over["mode"] == "gan":
            c = m.frames // 2
            m._critic_step("D3", world_rc[idx].to(meta), rc[:, c])
            m._critic_step("D2", real2d[idx].to(meta), kp[:, c])
            if m.frames > 1:
                m._critic_step("M3", m.data.windows(idx, m.frames, inputs=world_rc).to(meta), rc)
            assert m._generator_step(L, cams, motion=m.frames > 1).device == meta


def _factors(m, n):
    return [m.sched.lr_lambdas[0](e) for e in range(n)]


def test_lifting_lr_extra_phase_continues_the_linear_decay(small_lifting):
    """Release: the lambda rule 1 - e/(E+1) for E epochs, then its next value 1/(E+1) x 0.95 per extra
    epoch (once posectl started the extra phase at 2/(E+1) x 0.95, above the linear rule's next value).
    Single-frame the rule counts from epoch 0, warm-up included, as released."""
    train, _ = small_lifting
    m = _method(train, epochs=10, extra_epochs=4, warmup=2, lr_decay=0.9)
    expect = [1 - e / 7 for e in range(6)] + [0.9 ** k / 7 for k in range(4)]
    assert _factors(m, 10) == pytest.approx(expect)


def test_video_lr_schedule_starts_at_the_first_lifting_epoch(small_lifting):
    """Video: lifting waits warmup + motion_warmup epochs (defaults 2 + 4 of 8); the release steps its
    schedule only once lifting runs, so lifting starts at the full rate (posectl once trained at 0.33
    and 0.22 of it). The extra phase stays the last `extra_epochs` epochs."""
    train, _ = small_lifting
    video = {"backbone.name": "videopose", "backbone.receptive_field": 3}
    m = _method(train, epochs=8, warmup=2, **{"gan.motion_warmup": 4, **video})
    assert _factors(m, 8)[6:] == pytest.approx([1, 2 / 3])
    m = _method(train, epochs=10, extra_epochs=2, warmup=2, lr_decay=0.9, **{"gan.motion_warmup": 4, **video})
    assert _factors(m, 10)[6:] == pytest.approx([1, 2 / 3, 1 / 3, 0.9 / 3])


def test_normal_mode_trains_the_lifter_from_the_first_epoch(small_lifting):
    """Random DH sampling needs no warm-up; the release trains the pose net from epoch 0 there. `warmup`
    counts GAN-only epochs in mode gan."""
    train, _ = small_lifting
    cls = get_method("dhaug")
    assert build(cls.Config, {"warmup": 2})._lifting_start() == 2
    assert build(cls.Config, {"mode": "normal", "epochs": 2, "warmup": 2})._lifting_start() == 0
    r0 = _method(train, mode="normal", warmup=1).train_epoch(0)
    assert np.isfinite(r0["train_loss_mm"]) and r0["generated"] > 0 and "train_fake_mpjpe_mm" in r0


def test_same_bone_scaling_shares_one_factor_and_leaves_the_thorax(small_lifting):
    train, _ = small_lifting
    m = _method(train, **{"gan.bone_scaling": "same"})
    ratio = m._jitter(LENGTHS.expand(256, 15)) / LENGTHS
    thorax = BONE_NAMES.index("thorax")
    assert (ratio[:, thorax] == 1).all()
    others = ratio[:, [i for i in range(15) if i != thorax]]
    torch.testing.assert_close(others, others[:, :1].expand_as(others))
    assert others[:, 0].std() > 0.05 and ((others - 1).abs() <= 0.2 + 1e-6).all()
