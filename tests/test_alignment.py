"""GPA's global position alignment and the local pose augmentation (core.alignment)."""
import math

import numpy as np
import pytest
import torch

from posectl.core.alignment import (
    bone_vectors, from_bones, global_position_alignment, gpa_root, local_augment, symmetric_groups,
)
from posectl.core.camera import normalize_screen, project
from posectl.core.skeleton import H36M16, H36M17, bone_lengths
from posectl.datasets.store import PoseDataset
from posectl.datasets.synthetic import SynthConfig, write_synthetic


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    root = tmp_path_factory.mktemp("domains")
    src = PoseDataset(write_synthetic(root / "s", SynthConfig(domain="source", subjects=3, frames=60))).load("train")
    tgt = PoseDataset(write_synthetic(root / "t", SynthConfig(domain="target", subjects=3, frames=60,
                                                               amplitude=1.45))).load("train")
    return src, tgt


def _box_and_root(kp):
    """Per-pose 2D box size ((w + h) / 2) and root position (normalised screen units)."""
    ext = kp.max(1) - kp.min(1)
    return ext.mean(1), kp[:, 0]


def _ks(a, b):
    """Two-sample Kolmogorov-Smirnov statistic."""
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    return np.abs(np.searchsorted(a, grid, side="right") / len(a) - np.searchsorted(b, grid, side="right") / len(b)).max()


def test_aligned_source_2d_follows_the_target_scale_and_position(domains):
    src, tgt = domains
    n = min(len(src), len(tgt), 4000)
    rng = np.random.default_rng(0)
    s_idx, t_idx = rng.choice(len(src), n, replace=False), rng.choice(len(tgt), n, replace=False)
    P = torch.from_numpy(src.joints_3d[s_idx])
    intr = torch.from_numpy(tgt.intrinsics[t_idx])
    wh = torch.from_numpy(tgt.image_size[t_idx]).float()
    q = torch.from_numpy(tgt.keypoints_2d[t_idx])
    tgt_kp = normalize_screen(q, wh[:, 0], wh[:, 1]).numpy()
    src_kp = normalize_screen(torch.from_numpy(src.keypoints_2d[s_idx]), *torch.from_numpy(
        src.image_size[s_idx]).float().T).numpy()
    # pair each source pose with a *different* random target pose than the one we compare against
    perm = torch.from_numpy(rng.permutation(n))
    moved = global_position_alignment(P, q[perm], intr[perm, :2], intr[perm, 2:4])
    kp = normalize_screen(project(moved, intr[perm], distort=False), wh[perm, 0], wh[perm, 1]).numpy()
    (s0, r0), (s1, r1), (st, rt) = _box_and_root(src_kp), _box_and_root(kp), _box_and_root(tgt_kp)
    before = max(_ks(s0, st), _ks(r0[:, 0], rt[:, 0]), _ks(r0[:, 1], rt[:, 1]))
    after = max(_ks(s1, st), _ks(r1[:, 0], rt[:, 0]), _ks(r1[:, 1], rt[:, 1]))
    assert before > 0.2, before          # the domains differ in 2D scale and position ...
    assert after < 0.06, after           # ... and alignment makes them indistinguishable (KS, n=4000)
    assert after < before / 4
    # root-relative 3D is unchanged: a rigid translation
    assert torch.allclose(moved - moved[:, :1], P - P[:, :1], atol=1e-5)
    # and the paired target root projects exactly where the target's root is (no distortion)
    assert np.allclose(kp[:, 0], normalize_screen(q[perm], wh[perm, 0], wh[perm, 1]).numpy()[:, 0], atol=1e-4)


def test_alignment_is_unit_agnostic(domains):
    """Pixels with pixel intrinsics and the paper's normalised coordinates give the same root."""
    src, tgt = domains
    P = torch.from_numpy(src.joints_3d[:64])
    q = torch.from_numpy(tgt.keypoints_2d[:64])
    intr = torch.from_numpy(tgt.intrinsics[:64])
    w, h = torch.from_numpy(tgt.image_size[:64]).float().T
    px = gpa_root(P, q, intr[:, :2], intr[:, 2:4])
    qn = normalize_screen(q, w, h)
    fn = intr[:, :2] * 2 / w[:, None]
    cn = torch.stack([intr[:, 2] * 2 / w - 1, intr[:, 3] * 2 / w - h / w], 1)
    assert torch.allclose(px, gpa_root(P, qn, fn, cn), rtol=1e-4, atol=1e-4)
    # a single camera (2,) broadcasts over the batch
    assert torch.allclose(gpa_root(P, q, intr[0, :2], intr[0, 2:4])[0], gpa_root(P[:1], q[:1], intr[:1, :2], intr[:1, 2:4])[0])


@pytest.mark.parametrize("layout", [H36M17, H36M16], ids=lambda l: l.name)
def test_bones_round_trip(layout):
    P = torch.randn(5, layout.num_joints, 3)
    assert torch.allclose(from_bones(P[:, layout.root], bone_vectors(P, layout), layout), P, atol=1e-6)


def test_local_augmentation_stays_within_its_limits():
    g = torch.Generator().manual_seed(0)
    P = torch.randn(256, 17, 3, generator=g) * 0.3       # seeded: the global RNG depends on earlier tests
    P = P - P[:, :1]
    L0 = torch.as_tensor(bone_lengths(P, H36M17))
    # lengths only: one factor per symmetric group, within +-10 %
    Q = local_augment(P, H36M17, g, angle_deg=0, length=0.1, rotation_deg=0, tilt_deg=0)
    ratio = torch.as_tensor(bone_lengths(Q, H36M17)) / L0
    assert ratio.min() >= 0.9 - 1e-5 and ratio.max() <= 1.1 + 1e-5 and ratio.std() > 0.02
    child = [c for _, c in H36M17.bones]
    for grp in symmetric_groups(H36M17):
        cols = [child.index(j) for j in grp]
        assert torch.allclose(ratio[:, cols].min(1).values, ratio[:, cols].max(1).values, rtol=2e-4, atol=0)
    # angles only: lengths kept, each bone turns by at most angle_deg, torso bones not at all
    Q = local_augment(P, H36M17, g, angle_deg=15, length=0, rotation_deg=0, tilt_deg=0)
    assert torch.allclose(torch.as_tensor(bone_lengths(Q, H36M17)), L0, atol=1e-5)
    b0, b1 = bone_vectors(P, H36M17), bone_vectors(Q, H36M17)
    cos = (b0 * b1).sum(-1) / (b0.norm(dim=-1) * b1.norm(dim=-1)).clamp_min(1e-9)
    ang = torch.rad2deg(torch.acos(cos.clamp(-1, 1)))[:, 1:]
    assert ang.max() <= 15 + 1e-2 and ang.mean() > 3
    assert ang[:, [6, 7]].max() < 0.1           # Spine (7) and Thorax (8) bones fixed (float32 acos noise)
    # rotation only: a rigid rotation about the root (all pairwise distances kept)
    Q = local_augment(P, H36M17, g, angle_deg=0, length=0, rotation_deg=30, tilt_deg=10)
    assert torch.allclose(torch.cdist(Q, Q), torch.cdist(P, P), atol=1e-5)
    assert torch.allclose(Q[:, 0], torch.zeros(256, 3))
    assert not torch.allclose(Q, P, atol=1e-3)
    assert math.isfinite(float(Q.sum()))
