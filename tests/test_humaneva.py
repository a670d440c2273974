"""`posectl data prepare humaneva` (issue #33, item 1): fixtures built in VideoPose3D's HumanEva layout
(cameras we choose, so the recovered ones can be checked), the splits, the joint mapping, bad inputs, and
the real training takes in ../shared."""
import json

import numpy as np
import pytest

from posectl.cli import main
from posectl.core.calibration import calibrate
from posectl.core.camera import look_at
from posectl.core.skeleton import KEYPOINT_JOINTS, map_keypoints
from posectl.datasets.humaneva import prepare_humaneva
from posectl.datasets.store import PoseDataset
from posectl.errors import DataError

HE = KEYPOINT_JOINTS["humaneva15"]


def _cameras():
    K = np.array([[760.0, 0, 322], [0, 762.0, 243], [0, 0, 1]])
    out = []
    for centre in ([3.5, -3.0, 1.4], [-3.2, -3.4, 1.6], [0.3, 4.2, 1.5]):
        R, t = look_at(np.array(centre), np.array([0.0, 0.0, 1.0]))
        out.append((K, R, t))
    return out


def _motion(T, rng):
    """A walking-like HumanEva-15 sequence in world coordinates (metres, z up)."""
    base = {"pelvis": [0, 0, 1.0], "thorax": [0, 0, 1.45], "head": [0, 0, 1.75],
            "lshoulder": [0.18, 0, 1.42], "lelbow": [0.22, 0.02, 1.15], "lwrist": [0.24, 0.05, 0.9],
            "rshoulder": [-0.18, 0, 1.42], "relbow": [-0.22, 0.02, 1.15], "rwrist": [-0.24, 0.05, 0.9],
            "lhip": [0.1, 0, 0.95], "lknee": [0.1, 0.02, 0.5], "lankle": [0.1, 0, 0.08],
            "rhip": [-0.1, 0, 0.95], "rknee": [-0.1, 0.02, 0.5], "rankle": [-0.1, 0, 0.08]}
    order = ["pelvis", "thorax", "lshoulder", "lelbow", "lwrist", "rshoulder", "relbow", "rwrist",
             "lhip", "lknee", "lankle", "rhip", "rknee", "rankle", "head"]
    P = np.array([base[n] for n in order])
    ph = np.linspace(0, 4 * np.pi, T)[:, None]
    swing = np.zeros((T, 15, 3))
    for j, s in ((3, 1), (4, 1), (6, -1), (7, -1), (9, -1), (10, -1), (12, 1), (13, 1)):
        swing[:, j, 1] = 0.15 * s * np.sin(ph[:, 0])
    walk = np.c_[0.3 * np.sin(ph / 4), np.linspace(-0.5, 0.5, T)[:, None], np.zeros((T, 1))][:, None]
    return P[None] + swing + walk + rng.normal(0, 0.003, (T, 15, 3))


def _project(X, K, R, t):
    p = (X @ R.T + t) @ K.T
    return p[..., :2] / p[..., 2:3]


def _write(tmp, subjects=("Train/S1", "Train/S2", "Validate/S1"), takes=("Walking 1 chunk0", "Jog 1 chunk0"), T=50,
           noise_px=0.0, seed=0):
    rng = np.random.default_rng(seed)
    cams = _cameras()
    p3, p2 = {}, {}
    for s in subjects:
        p3[s], p2[s] = {}, {}
        for take in takes:
            X = _motion(T, rng).astype(np.float32)
            p3[s][take] = X
            p2[s][take] = [(_project(X.astype(np.float64), *c) + rng.normal(0, noise_px, (T, 15, 2))).astype(np.float32)
                           if noise_px else _project(X.astype(np.float64), *c).astype(np.float32) for c in cams]
    f3, f2 = tmp / "data_3d_humaneva15.npz", tmp / "data_2d_humaneva15_gt.npz"
    np.savez(f3, positions_3d=np.array(p3, dtype=object))
    np.savez(f2, positions_2d=np.array(p2, dtype=object),
             metadata=np.array({"layout_name": "humaneva15", "num_joints": 15}, dtype=object))
    return f3, f2, p3, cams


def test_calibration_recovers_a_known_camera():
    rng = np.random.default_rng(0)
    K, R, t = _cameras()[0]
    X = _motion(200, rng).reshape(-1, 3)
    K2, R2, t2, err = calibrate(X, _project(X, K, R, t) + rng.normal(0, 0.3, (len(X), 2)))
    assert np.median(err) < 1.0 and np.abs(K2[:2, :2] - K[:2, :2]).max() < 0.01 * K[0, 0]
    assert np.abs(R2 - R).max() < 0.01 and np.abs(t2 - t).max() < 0.02


def test_import_maps_joints_recovers_cameras_and_splits(tmp_path):
    f3, f2, p3, cams = _write(tmp_path, noise_px=0.3)
    out = prepare_humaneva(tmp_path / "he", f3, [f2], val_fraction=0.2)
    ds = PoseDataset(out, verify=True)
    info = ds.manifest["info"]
    assert ds.layout.name == "h36m17" and set(ds.splits) == {"train", "val", "test"}
    # cameras within 1 px (the 2D carries 0.3 px of noise)
    assert len(info["cameras"]) == 9
    assert all(c["reprojection_px_median"] < 1.0 for c in info["cameras"].values())
    assert abs(info["cameras"]["Train/S1/C1"]["fx"] - 760) < 8
    # joints HumanEva lacks are derived and named as derived
    derived = {m["joint"]: m["from"] for m in info["mapping_to_h36m17"] if m["derived"]}
    assert derived == {"Spine": ["pelvis", "thorax"], "Neck/Nose": ["thorax", "head"]}
    # splits: the last 20 % of every training sequence is val, Validate/* is test; 3 cameras per take
    train, val, test = (ds.load(s) for s in ("train", "val", "test"))
    assert len(train) == 2 * 2 * 3 * 40 and len(val) == 2 * 2 * 3 * 10 and len(test) == 2 * 3 * 50
    assert set(test.subject) == {"Validate/S1"} and set(np.unique(train.camera)) == {"C1", "C2", "C3"}
    # the 3D is the file's, mapped, in the recovered camera's frame: 2D and 3D agree through the intrinsics
    sel = (val.subject == "Train/S2") & (val.action == "Jog 1 chunk0") & (val.camera == "C2")
    X = map_keypoints(p3["Train/S2"]["Jog 1 chunk0"][40:].astype(np.float64), "humaneva15", "h36m17")
    bones = lambda a: np.linalg.norm(a[:, 1:] - a[:, :1], axis=-1)        # noqa: E731  (rigid: same lengths)
    assert np.allclose(bones(val.joints_3d[sel][np.argsort(val.frame[sel])]), bones(X), atol=1e-4)
    fx, fy, cx, cy = val.intrinsics[sel][0, :4]
    J = val.joints_3d[sel]
    uv = np.stack([fx * J[..., 0] / J[..., 2] + cx, fy * J[..., 1] / J[..., 2] + cy], -1)
    assert np.median(np.linalg.norm(uv - val.keypoints_2d[sel], axis=-1)) < 1.5


def test_a_training_subject_held_out_as_test_and_data_info(tmp_path, capsys):
    f3, f2, _, _ = _write(tmp_path, subjects=("Train/S1", "Train/S2", "Train/S3"))
    try:
        main(["data", "prepare", "humaneva", "--3d", str(f3), "--2d", str(f2), "--out", str(tmp_path / "he"),
              "--test-subject", "Train/S3"])
    except SystemExit as e:
        assert e.code in (0, None)
    out = capsys.readouterr().out
    assert "Train/S1/C1: median" in out and "derived joints: Spine = mean(pelvis, thorax)" in out
    ds = PoseDataset(tmp_path / "he")
    assert set(ds.load("test").subject) == {"Train/S3"} and "Train/S3" not in set(ds.load("train").subject)


def _bad(tmp_path, capsys, ledger, args, needle):
    ledger.bad_input()
    try:
        main(["data", "prepare", "humaneva", *map(str, args), "--out", str(tmp_path / "never")])
        code = 0
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "never").exists()


def test_bad_inputs_are_one_line_and_write_nothing(tmp_path, capsys, ledger):
    f3, f2, p3, cams = _write(tmp_path)
    _bad(tmp_path, capsys, ledger, ["--3d", f3, "--2d", tmp_path / "missing.npz"], "missing.npz")
    other = tmp_path / "data_2d_humaneva15_cpn.npz"
    other.write_bytes(f2.read_bytes())
    _bad(tmp_path, capsys, ledger, ["--3d", f3, "--2d", other], "ground-truth 2D")
    # 2D that does not belong to the 3D: no camera fits
    rng = np.random.default_rng(1)
    wrong = {s: {t: [rng.uniform(0, 640, (50, 15, 2)).astype(np.float32) for _ in range(3)] for t in v} for s, v in p3.items()}
    wf = tmp_path / "wrong"
    wf.mkdir()
    np.savez(wf / "data_2d_humaneva15_gt.npz", positions_2d=np.array(wrong, dtype=object))
    _bad(tmp_path, capsys, ledger, ["--3d", f3, "--2d", wf / "data_2d_humaneva15_gt.npz"], "do not belong together")
    # a take of the 3D file without 2D; joints of another layout; an unknown subject key
    p2 = {s: {t: [_project(x.astype(np.float64), *c).astype(np.float32) for c in cams] for t, x in v.items()} for s, v in p3.items()}
    del p2["Train/S2"]["Jog 1 chunk0"]
    (tmp_path / "m").mkdir()
    np.savez(tmp_path / "m" / "data_2d_humaneva15_gt.npz", positions_2d=np.array(p2, dtype=object))
    _bad(tmp_path, capsys, ledger, ["--3d", f3, "--2d", tmp_path / "m" / "data_2d_humaneva15_gt.npz"], "no 2D for Train/S2")
    p17 = {s: {t: x[:, :14] for t, x in v.items()} for s, v in p3.items()}
    np.savez(tmp_path / "j14.npz", positions_3d=np.array(p17, dtype=object))
    _bad(tmp_path, capsys, ledger, ["--3d", tmp_path / "j14.npz", "--2d", f2], "expected shape (T, 15, 3)")
    np.savez(tmp_path / "subj.npz", positions_3d=np.array({"S1": p3["Train/S1"]}, dtype=object))
    _bad(tmp_path, capsys, ledger, ["--3d", tmp_path / "subj.npz", "--2d", f2], "unknown subject 'S1'")
    _bad(tmp_path, capsys, ledger, ["--3d", f3, "--2d", f2, "--test-subject", "Train/S9"], "no subject(s) Train/S9")


def test_the_real_training_takes_import(shared_data, tmp_path):
    d = shared_data / "humaneva"
    out = prepare_humaneva(tmp_path / "he", d / "data_3d_humaneva15_train.npz", [d / "data_2d_humaneva15_gt_train.npz"],
                           test_subjects=["Train/S3"])
    ds = PoseDataset(out, verify=True)
    rows = sum(len(ds.load(s)) for s in ds.splits)
    assert rows == 4729 * 3
    cams = ds.manifest["info"]["cameras"]
    assert len(cams) == 9 and max(c["reprojection_px_median"] for c in cams.values()) < 1.0, json.dumps(cams)[:500]
    test = ds.load("test")
    assert set(test.subject) == {"Train/S3"} and (test.joints_3d[..., 2] > 0).all()     # in front of the cameras
