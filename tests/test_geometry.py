"""Skeleton layouts, camera model and projection, against hand cases and the real calibration."""
import json
import pickle

import numpy as np
import pytest
import torch

from posectl.core import camera as C
from posectl.core.skeleton import (H36M16, H36M17, H36M32, MPI3DHP17, MPII16, bone_lengths, convert,
                                   flip_poses, get_layout)


def test_layouts_are_trees_with_consistent_sides():
    for layout in (H36M17, H36M16, H36M32, MPII16, MPI3DHP17):
        assert sum(p < 0 for p in layout.parents) == 1
        assert layout.parents[layout.root] == -1
        assert len(layout.left) == len(layout.right)
        assert not set(layout.left) & set(layout.right)
        perm = layout.flip_permutation
        assert (perm[perm] == np.arange(layout.num_joints)).all()


def test_conversions_follow_joint_names():
    x = np.arange(32 * 3, dtype=float).reshape(1, 32, 3)
    p17 = convert(x, "h36m32", "h36m17")
    p16 = convert(x, "h36m32", "h36m16")
    assert np.array_equal(convert(p17, "h36m17", "h36m16"), p16)
    names = {n: i for i, n in enumerate(H36M16.joints)}
    mp = np.arange(16 * 2).reshape(1, 16, 2)
    h16 = convert(mp, "mpii16", "h36m16")
    for name, j in names.items():
        src = name if name != "Head" else "Head"
        assert h16[0, j, 0] == mp[0, MPII16.index(src), 0]
    t = np.arange(17 * 3).reshape(1, 17, 3)
    h = convert(t, "3dhp17", "h36m17")
    assert h[0, 0, 0] == t[0, MPI3DHP17.index("pelvis"), 0]
    assert h[0, 10, 0] == t[0, MPI3DHP17.index("head_top"), 0]
    with pytest.raises(ValueError):
        get_layout("coco")


def test_flip_is_an_involution_and_mirrors_x():
    p = np.random.default_rng(0).normal(size=(5, 17, 3)).astype(np.float32)
    f = flip_poses(p, H36M17)
    assert np.allclose(flip_poses(f, H36M17), p)
    assert np.allclose(f[:, 1, 0], -p[:, 4, 0])
    t = torch.from_numpy(p)
    assert torch.allclose(flip_poses(t, H36M17), torch.from_numpy(f))


def test_bone_lengths_invariant_to_rigid_motion():
    rng = np.random.default_rng(1)
    p = rng.normal(size=(4, 17, 3))
    R = C.quaternion_to_matrix(rng.normal(size=4))
    q = p @ R.T + rng.normal(size=3)
    assert np.allclose(bone_lengths(p, H36M17), bone_lengths(q, H36M17))


def test_world_camera_round_trip_numpy_and_torch():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(6, 17, 3))
    cam = C.h36m_cameras("S9")[2]
    Xc = C.world_to_camera(X, cam.R, cam.t)
    assert np.allclose(C.camera_to_world(Xc, cam.R, cam.t), X)
    Xt = torch.from_numpy(X)
    assert torch.allclose(C.world_to_camera(Xt, torch.from_numpy(cam.R), torch.from_numpy(cam.t)),
                          torch.from_numpy(Xc))
    # camera centre maps to the origin
    assert np.allclose(C.world_to_camera(cam.center[None, None], cam.R, cam.t), 0, atol=1e-9)


def test_projection_pinhole_and_distortion_by_hand():
    intr = np.array([1000, 900, 500, 400, 0, 0, 0, 0, 0], dtype=float)
    X = np.array([[[0.5, -0.25, 2.0]]])
    assert np.allclose(C.project(X, intr), [[[750, 287.5]]])
    k1 = 0.1
    intr_d = intr.copy()
    intr_d[4] = k1
    x, y = 0.25, -0.125
    r2 = x * x + y * y
    assert np.allclose(C.project(X, intr_d), [[[1000 * x * (1 + k1 * r2) + 500, 900 * y * (1 + k1 * r2) + 400]]])
    # tangential term of the Human3.6M model (p in cameras.h5 order)
    intr_t = intr.copy()
    intr_t[7:9] = [0.01, 0.02]
    tan = 0.01 * y + 0.02 * x
    exp = [1000 * (x * (1 + tan) + 0.02 * r2) + 500, 900 * (y * (1 + tan) + 0.01 * r2) + 400]
    assert np.allclose(C.project(X, intr_t), [[exp]])


def test_projection_is_differentiable():
    X = torch.tensor([[[0.1, 0.2, 4.0], [-0.3, 0.1, 5.0]]], requires_grad=True)
    intr = torch.tensor(C.h36m_cameras("S1")[0].intrinsics, dtype=torch.float32)
    C.project(X, intr).sum().backward()
    assert torch.isfinite(X.grad).all() and X.grad.abs().sum() > 0


def test_screen_normalisation_round_trip():
    uv = np.random.default_rng(3).uniform(0, 1000, size=(3, 17, 2))
    xy = C.normalize_screen(uv, 1000, 1002)
    assert xy[..., 0].min() >= -1 and xy[..., 0].max() <= 1
    assert np.allclose(C.image_coordinates(xy, 1000, 1002), uv)
    w = np.array([1000, 2048, 1920.0])
    h = np.array([1002, 2048, 1080.0])
    assert np.allclose(C.image_coordinates(C.normalize_screen(uv, w, h), w, h), uv)


def test_look_at_points_the_optical_axis_at_the_target():
    R, t = C.look_at([4, 1, 2], [0, 0, 1])
    Xc = C.world_to_camera(np.array([[[0, 0, 1.0]]]), R, t)
    assert np.allclose(Xc[0, 0, :2], 0, atol=1e-12) and Xc[0, 0, 2] > 0
    # world up maps to image up (negative y)
    up = C.world_to_camera(np.array([[[0, 0, 2.0]]]), R, t)
    assert up[0, 0, 1] < 0


@pytest.mark.real_data
def test_embedded_h36m_calibration_matches_cameras_json(shared_data):
    ref = C.cameras_from_json(json.loads((shared_data / "h36m" / "cameras.json").read_text()))
    for subject in ("S1", "S5", "S6", "S7", "S8", "S9", "S11"):
        for ours, theirs in zip(C.h36m_cameras(subject), ref[subject]):
            assert ours.id == theirs.id
            assert np.allclose(ours.R, theirs.R, atol=1e-5)
            assert np.allclose(ours.t, theirs.t, atol=1e-4)
            assert np.allclose(ours.intrinsics, theirs.intrinsics, atol=1e-3)
            assert (ours.width, ours.height) == (theirs.width, theirs.height)


@pytest.mark.real_data
def test_projection_reproduces_real_h36m_keypoints(shared_data):
    """mmpose fixture: camera-frame 3D joints of 4 real frames and their 2D annotations."""
    d = np.load(shared_data / "mmpose-h36m-3dhp-fixtures" / "h36m" / "test_h36m_body3d.npz")
    with open(shared_data / "mmpose-h36m-3dhp-fixtures" / "h36m" / "cameras.pkl", "rb") as f:
        cams = pickle.load(f, encoding="latin1")
    for name, S, part in zip(d["imgname"], d["S"], d["part"]):
        subject = int(str(name).split("/")[-1].split("_")[0][1:]) if str(name).split("/")[-1].startswith("S") else None
        cam_id = [c for c in ("54138969", "55011271", "58860488", "60457274") if c in str(name)][0]
        subject = [s for s in range(1, 12) if f"S{s}_" in str(name) or f"S{s}/" in str(name)][-1]
        c = cams[(f"S{subject}", cam_id)]
        intr = np.concatenate([c["f"].ravel(), c["c"].ravel(), c["k"].ravel(), c["p"].ravel()])
        uv = C.project(S[None, :, :3].astype(float), intr)[0]
        err = np.linalg.norm(uv - part[:, :2], axis=-1)
        assert np.median(err) < 3.0, (name, np.median(err))
