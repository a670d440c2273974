"""Parametric body models (issue #8): the free anny body (no network), the user-provided SMPL body on a
constructed SMPL-format file (and the real files when POSECTL_SMPL_DIR points at them), fitting to joints,
and pose2mesh training on fitted pseudo-ground-truth meshes with cached fits."""
import os
import pickle
import socket

import numpy as np
import pytest
import torch

from posectl.config import build
from posectl.core.bodies import AnnyBody, SMPLBody, kabsch, matrix_to_rotvec, rotvec_to_matrix
from posectl.core.mesh import Graph, coarsen, edge_length_loss, mesh_edges, normal_loss
from posectl.datasets.lifting import LiftingData
from posectl.datasets.store import PoseDataset
from posectl.errors import ConfigError, DataError
from posectl.methods.base import Context, get_method


@pytest.fixture(scope="module")
def anny_body():
    """Built with every socket connection refused: anny must serve from its bundled assets (the first
    build on a machine fills anny's cache, about 90 s)."""
    def refuse(*a, **k):
        raise OSError("network disabled by the test")
    orig = socket.socket.connect
    socket.socket.connect = refuse
    try:
        return AnnyBody()
    finally:
        socket.socket.connect = orig


def test_rotations_round_trip_and_kabsch_recovers_a_rotation():
    g = torch.Generator().manual_seed(0)
    r = torch.randn(32, 3, generator=g)
    r = r / r.norm(dim=-1, keepdim=True) * torch.rand(32, 1, generator=g) * 3.0
    R = rotvec_to_matrix(r)
    assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3).expand(32, 3, 3), atol=1e-5)
    assert torch.allclose(matrix_to_rotvec(R), r, atol=1e-3)
    assert torch.allclose(rotvec_to_matrix(torch.zeros(1, 3)), torch.eye(3)[None])
    pts = torch.randn(32, 7, 3, generator=g)
    assert torch.allclose(kabsch(pts, pts @ R.transpose(1, 2)), R, atol=1e-4)
    # key-frame interpolation takes the short way across the +-pi wrap (a linear blend of the rotation
    # vectors would swing through the identity)
    from posectl.core.bodies import ParametricBody

    class Body(ParametricBody):
        num_bones, num_shape = 1, 1
    keys = torch.tensor([[0, 0, 3.1, 0.1, 0, 0, 0.0], [0, 0, -3.1, 0.3, 0, 0, 1.0]])
    p = Body().interpolate(keys, torch.tensor([0, 4]), 5)
    angle = matrix_to_rotvec(rotvec_to_matrix(p[:-1, :3]).transpose(1, 2) @ rotvec_to_matrix(p[1:, :3])).norm(dim=-1)
    assert torch.allclose(angle, torch.full((4,), (2 * np.pi - 6.2) / 4), atol=1e-4)
    assert torch.allclose(p[:, 3], torch.linspace(0.1, 0.3, 5), atol=1e-5) and torch.allclose(p[:, 6], torch.linspace(0, 1, 5))


def test_anny_body_mesh_regressor_reproduces_its_joints_and_passes_gradients(anny_body):
    b = anny_body
    assert b.num_vertices == 1229 and b.faces.min() == 0 and b.faces.max() == b.num_vertices - 1
    assert np.allclose(b.joint_regressor.sum(1), 1, atol=1e-4)
    # held-out random bodies (pose and shape): regressed joints vs the skeleton's definition
    p = b.random_params(64, torch.Generator().manual_seed(7))
    with torch.no_grad():
        g, bo, s = b.split(p)
        v, h = b._raw(rotvec_to_matrix(g), rotvec_to_matrix(bo), s)
        err = (b.regress(v) - b.skeleton_joints(v, h)).norm(dim=-1) * 1000     # mm
    assert err.mean() < 12 and err.mean(0).max() < 25, err.mean(0)
    # the root-aligned mesh: regressed pelvis at the origin, finite, differentiable in every parameter
    p.requires_grad_(True)
    V = b.vertices(p)
    assert torch.isfinite(V).all() and b.regress(V)[:, 0].abs().max() < 1e-5
    V.square().sum().backward()
    assert (p.grad[:, :3 + 3 * b.num_bones].abs().sum(0) > 0).all() and (p.grad[:, -b.num_shape:].abs() > 0).any()
    # its graph coarsens like any mesh; the mesh losses vanish on the ground truth
    h = coarsen(Graph.from_edges(b.num_vertices, mesh_edges(b.faces)), 3)
    assert all(a == 2 * c for a, c in zip(h.sizes, h.sizes[1:]))
    f = torch.from_numpy(b.faces)
    assert normal_loss(V.detach(), V.detach(), f) < 1e-6 and edge_length_loss(V.detach(), V.detach(), f) < 1e-8


def test_fitting_anny_recovers_the_joints_of_its_own_meshes(anny_body):
    b = anny_body
    p = b.random_params(16, torch.Generator().manual_seed(3), pose_std=0.25)
    with torch.no_grad():
        joints = b.regress(b.vertices(p))
    fit = b.fit(joints)
    assert fit.error_mm.median() < 10, fit.error_mm
    assert torch.allclose(fit.error_mm / 1000, (fit.joints - joints).norm(dim=-1)[:, 1:].mean(1), atol=1e-4)
    zero = b.fit(joints, iters=0)                              # Kabsch initialisation only
    assert fit.error_mm.mean() < 0.5 * zero.error_mm.mean()
    # a fixed shape (as when posing one subject along its motions) is kept; one row stands for every sample
    shape = p[:1, -b.num_shape:]
    one, rows = b.fit(joints, iters=20, shape=shape), b.fit(joints, iters=20, shape=shape.expand(16, -1))
    assert (one.params[:, -b.num_shape:] == shape).all() and torch.allclose(one.params, rows.params, atol=1e-4)
    assert one.error_mm.mean() < 0.5 * zero.error_mm.mean()


# -- SMPL-format files: a constructed model ----------------------------------------------------------------

def _fake_smpl(tmp_path, J=24, V=300, seed=0):
    rng = np.random.default_rng(seed)
    parents = np.r_[0, [rng.integers(0, j) for j in range(1, J)]]
    joints = rng.normal(size=(J, 3)) * 0.3
    nearest = rng.integers(0, J, V)
    v = joints[nearest] + rng.normal(size=(V, 3)) * 0.02
    weights = np.eye(J)[nearest]
    jreg = np.zeros((J, V))
    for j in range(J):
        idx = np.flatnonzero(nearest == j)
        idx = idx if len(idx) else np.array([j])
        jreg[j, idx] = 1 / len(idx)
    d = dict(v_template=v, shapedirs=rng.normal(size=(V, 3, 10)) * 0.01, posedirs=np.zeros((V, 3, 9 * (J - 1))),
             J_regressor=jreg, weights=weights, kintree_table=np.stack([parents, np.arange(J)]),
             f=rng.integers(0, V, size=(400, 3)))
    np.savez(tmp_path / "SMPL_NEUTRAL.npz", **d)
    h36m = np.zeros((17, V))
    h36m[np.arange(17), np.arange(17)] = 1
    np.save(tmp_path / "J_regressor_h36m.npy", h36m)
    return d, parents


def test_smpl_body_skins_rigidly_and_refuses_bad_files(tmp_path):
    d, parents = _fake_smpl(tmp_path)
    from posectl.methods.pose2mesh import load_regressor, load_smpl
    b = SMPLBody(load_smpl(tmp_path / "SMPL_NEUTRAL.npz"), load_regressor(tmp_path / "J_regressor_h36m.npy"))
    assert b.num_bones == 23 and b.num_shape == 10 and b.param_dim == 3 + 69 + 10
    zero = b.zero_params(1)
    v0 = b._vertices(torch.eye(3)[None], torch.eye(3).expand(1, 23, 3, 3), zero[:, -10:])[0]
    assert torch.allclose(v0, torch.as_tensor(d["v_template"], dtype=torch.float32), atol=1e-6)
    # a rotation of joint k moves exactly the vertices of k and its descendants, rigidly about joint k
    k = int(np.bincount(parents[1:], minlength=24)[1:].argmax()) + 1
    desc = {k}
    for j in range(1, 24):
        if parents[j] in desc and j > k:
            desc.add(j)
    R = torch.eye(3).repeat(1, 23, 1, 1)
    R[0, k - 1] = rotvec_to_matrix(torch.tensor([0.3, -0.5, 0.8]))
    v1 = b._vertices(torch.eye(3)[None], R, zero[:, -10:])[0]
    moved = (v1 - v0).norm(dim=-1) > 1e-6
    nearest = d["weights"].argmax(1)
    assert set(np.flatnonzero(moved.numpy())) <= set(np.flatnonzero(np.isin(nearest, list(desc))))
    Jk = torch.as_tensor(d["J_regressor"][k] @ d["v_template"], dtype=torch.float32)
    sel = torch.from_numpy(nearest == k)
    assert torch.allclose(v1[sel] - Jk, (v0[sel] - Jk) @ R[0, k - 1].T, atol=1e-5)
    # the global rotation rotates the whole root-aligned body
    g = rotvec_to_matrix(torch.tensor([[0.1, 1.2, -0.4]]))
    p = zero.clone()
    p[:, :3] = matrix_to_rotvec(g)
    assert torch.allclose(b.vertices(p)[0], b.vertices(zero)[0] @ g[0].T, atol=1e-5)
    # bad files: one clear error each
    with pytest.raises(DataError, match="17 x 300"):
        SMPLBody(load_smpl(tmp_path / "SMPL_NEUTRAL.npz"), np.zeros((17, 5)))
    np.savez(tmp_path / "short.npz", **{k: v for k, v in d.items() if k != "weights"})
    with pytest.raises(DataError, match="lacks weights"):
        SMPLBody(load_smpl(tmp_path / "short.npz"), np.zeros((17, 300)))
    np.savez(tmp_path / "odd.npz", **{**d, "weights": d["weights"][:, :5]})
    with pytest.raises(DataError, match="inconsistent shapes"):
        SMPLBody(load_smpl(tmp_path / "odd.npz"), np.zeros((17, 300)))

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"v_template": Evil()}, f)
    with pytest.raises(DataError, match="refusing to unpickle.*converted"):
        load_smpl(tmp_path / "evil.pkl")
    # the same files through the plugin's body.path
    from posectl.core.skeleton import H36M17
    from posectl.methods.pose2mesh import BodyConfig, build_body
    assert build_body(BodyConfig(model="smpl", path=str(tmp_path)), H36M17).num_vertices == 300


@pytest.mark.skipif(not os.environ.get("POSECTL_SMPL_DIR"), reason="set POSECTL_SMPL_DIR to the user's SMPL files")
def test_real_smpl_files_fit_human36m_like_joints():
    from posectl.methods.pose2mesh import BodyConfig, build_body
    from posectl.core.skeleton import H36M17
    b = build_body(BodyConfig(model="smpl", path=os.environ["POSECTL_SMPL_DIR"]), H36M17)
    assert b.num_vertices == 6890
    with torch.no_grad():
        joints = b.regress(b.vertices(b.zero_params(4)))
    assert b.fit(joints).error_mm.max() < 5


def test_pose2mesh_body_config_errors(tmp_path):
    cls = get_method("pose2mesh")
    with pytest.raises(ConfigError, match="body.path"):
        build(cls.Config, {"body.model": "smpl"})
    with pytest.raises(ConfigError):
        build(cls.Config, {"body.model": "nope"})
    from posectl.core.skeleton import H36M17
    from posectl.methods.pose2mesh import BodyConfig, build_body
    with pytest.raises(ConfigError, match="SMPL_NEUTRAL"):
        build_body(BodyConfig(model="smpl", path=str(tmp_path)), H36M17)
    with pytest.raises(ConfigError, match="topology"):
        build_body(BodyConfig(model="anny", topology="nope"), H36M17)


def test_pose2mesh_trains_on_fitted_anny_meshes_and_caches_the_fits(anny_body, small_dataset, tmp_path,
                                                                    monkeypatch):
    monkeypatch.setenv("POSECTL_CACHE", str(tmp_path))
    from posectl.methods import pose2mesh
    monkeypatch.setattr(pose2mesh, "AnnyBody", lambda topology: anny_body)    # reuse the built body
    monkeypatch.setattr(anny_body, "fit_iters", anny_body.fit_iters)          # restored afterwards
    ds = PoseDataset(small_dataset)
    tr, va = LiftingData(ds.load("train"), ds.layout), LiftingData(ds.load("val"), ds.layout)
    cls = get_method("pose2mesh")
    cfg = build(cls.Config, {"posenet.width": 128, "meshnet.width": 8, "meshnet.levels": 3, "body.model": "anny",
                             "body.fit_iters": 40, "body.fit_threshold_mm": 40, "epochs": 3, "posenet_epochs": 1,
                             "edge_loss_start": 1, "data.train_stride": 24})
    m = cls(cfg, tr, Context())
    m.train_epoch(0)
    r1 = m.train_epoch(1)
    n_rows = len(range(0, len(tr), 24))
    assert r1["body_fits_new"] == n_rows and 0 < r1["body_fit_valid"] <= 1 and np.isfinite(r1["vertex_l1_mm"])
    r2 = m.train_epoch(2)
    assert r2["body_fits_new"] == 0 and r2["vertex_l1_mm"] < r1["vertex_l1_mm"]
    files = list((tmp_path / "bodyfits").glob("*.npz"))
    assert len(files) == 1
    # a new run on the same data reads the fits from the cache: nothing to fit, identical meshes
    m2 = cls(cfg, tr, Context())
    t1, t2 = m.mesh_targets(tr), m2.mesh_targets(tr)
    rows = torch.arange(0, len(tr), 24)[:8]
    assert t2.ensure(rows) == 0
    assert torch.allclose(t1.get(rows)[0], t2.get(rows)[0])
    # ... and so does a run on other rows of the same poses (a worker's shard, a subset, another order)
    sub = LiftingData(tr.arrays.take(np.arange(len(tr))[::-1][: len(tr) // 2]), ds.layout)
    t3 = pose2mesh.MeshTargets(anny_body, cfg.body, sub)
    shared = np.flatnonzero(t1.slot[: len(tr)] >= 0)
    mine = np.flatnonzero(np.isin(t3.digest, t1.digest[shared]))
    assert len(mine) > 0 and t3.ensure(torch.from_numpy(mine)) == 0
    # a corrupt cache file is refitted, not fatal
    files[0].write_bytes(b"garbage")
    assert pose2mesh.MeshTargets(anny_body, cfg.body, tr).ensure(rows) == len(rows)
    ev = m.evaluate(va, stride=40)
    # 40 fit steps leave the fits at a median ~28 mm (150, the default: 13-17 mm, all within 25 mm): the
    # test's threshold of 40 mm keeps most, and the vertex error is measured on them
    assert np.isfinite(ev["mpjpe"]) and "pseudo-GT: body fitted" in ev["protocol"] and ev["mesh_gt_valid"] > 0.5
    assert np.isfinite(ev["mpvpe"])


def test_synthetic_anny_dataset_has_exact_meshes_in_every_camera(anny_body, anny_dataset):
    ds = PoseDataset(anny_dataset, verify=True)
    assert ds.body_params == {"model": "anny", "dim": anny_body.param_dim}
    a = ds.load("train")
    assert a.body_params.shape == (len(a), anny_body.param_dim)
    data = LiftingData(a, ds.layout)
    rows = torch.arange(0, len(data), 5)
    p = torch.from_numpy(data.arrays.body_params[rows.numpy()])
    with torch.no_grad():
        V = anny_body.vertices(p)
        J = anny_body.regress(V)
    assert (J - data.targets[rows]).norm(dim=-1).max() < 1e-5           # the joints are the mesh's joints
    # motions are continuous: no rotation (global or of a bone) jumps between neighbouring frames
    arr = data.arrays
    nxt = np.flatnonzero((arr.frame[1:] == arr.frame[:-1] + 1) & (arr.camera[1:] == arr.camera[:-1])
                         & (arr.action[1:] == arr.action[:-1]))
    rot = torch.from_numpy(arr.body_params[:, :3 + 3 * anny_body.num_bones]).reshape(len(arr), -1, 3)
    R0, R1 = rotvec_to_matrix(rot[nxt]), rotvec_to_matrix(rot[nxt + 1])
    step = matrix_to_rotvec(R0.transpose(-1, -2) @ R1).norm(dim=-1)
    assert step.max() < 0.35, step.max()
    # the same frame seen by two cameras: one mesh, rotated by the relative camera rotation
    first = np.flatnonzero((arr.frame == 3) & (arr.action == arr.action[0]))
    i, k = first[0], first[1]
    assert arr.camera[i] != arr.camera[k]
    Ri, Rk = (torch.from_numpy(arr.extrinsics[x, :9].reshape(3, 3)) for x in (i, k))
    with torch.no_grad():
        Vi, Vk = anny_body.vertices(torch.from_numpy(arr.body_params[[i, k]]))
    assert torch.allclose(Vk, Vi @ (Rk @ Ri.T).T, atol=1e-4)
    # plausible bodies: bone lengths of a human
    bones = np.array(ds.layout.bones)
    lengths = (data.targets[:, bones[:, 1]] - data.targets[:, bones[:, 0]]).norm(dim=-1)
    assert lengths.min() > 0.05 and lengths.max() < 0.6


def test_pose2mesh_on_an_anny_dataset_needs_no_fitting(anny_body, anny_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("POSECTL_CACHE", str(tmp_path))
    from posectl.methods import pose2mesh
    monkeypatch.setattr(pose2mesh, "AnnyBody", lambda topology: anny_body)
    monkeypatch.setattr(anny_body, "fit_iters", anny_body.fit_iters)
    ds = PoseDataset(anny_dataset)
    tr, va = LiftingData(ds.load("train"), ds.layout), LiftingData(ds.load("val"), ds.layout)
    cls = get_method("pose2mesh")
    cfg = build(cls.Config, {"posenet.width": 128, "meshnet.width": 8, "meshnet.levels": 3, "body.model": "anny",
                             "epochs": 3, "posenet_epochs": 1, "edge_loss_start": 1})
    m = cls(cfg, tr, Context())
    m.train_epoch(0)
    r1, r2 = m.train_epoch(1), m.train_epoch(2)
    assert r1["body_fits_new"] == 0 and r1["body_fit_valid"] == 1 and r2["vertex_l1_mm"] < r1["vertex_l1_mm"]
    ev = m.evaluate(va, stride=7)
    assert "exact ground truth: the dataset's body parameters" in ev["protocol"] and ev["mesh_gt_valid"] == 1
    assert not (tmp_path / "bodyfits").exists()
    # a body with another parameter count does not read them: it fits
    assert pose2mesh.MeshTargets(_Other(), cfg.body, tr).exact is None


class _Other(AnnyBody):
    def __init__(self):
        self.num_bones, self.num_shape, self.name = 23, 10, "smpl"


def test_body_params_column_refuses_bad_rows():
    from posectl.datasets.store import arrays_from_batch
    batch = {"keypoints_2d": np.zeros((2, 17, 2)), "joints_3d": np.zeros((2, 17, 3)), "intrinsics": np.zeros((2, 9)),
             "image_size": np.ones((2, 2)), "subject": ["a", "a"], "action": ["x", "x"], "camera": ["c", "c"],
             "frame": [0, 1]}
    ok = arrays_from_batch({**batch, "body_params": [np.zeros(4), np.ones(4)]})
    assert ok.body_params.shape == (2, 4)
    with pytest.raises(DataError, match="different lengths|equal-length"):
        arrays_from_batch({**batch, "body_params": [np.zeros(4), np.ones(3)]})
    with pytest.raises(DataError, match="finite"):
        arrays_from_batch({**batch, "body_params": [np.zeros(4), np.full(4, np.nan)]})
