"""MPI-INF-3DHP importer: constructed files of the three forms, bad inputs, and the real mmpose fixtures."""
import pickle

import numpy as np
import pytest

from posectl.core.camera import normalize_screen, project
from posectl.core.skeleton import convert
from posectl.datasets.mpi3dhp import JOINT_SETS, TEST_CAMERAS, place_root, prepare_3dhp
from posectl.datasets.safe_npz import UnsafePickleError, load_npz
from posectl.datasets.store import PoseDataset
from posectl.errors import DataError

K_STUDIO = TEST_CAMERAS["TS1"][1]
K_OUTDOOR = TEST_CAMERAS["TS5"][1]


def _obj(x):
    a = np.empty((), dtype=object)
    a[()] = x
    return a


def _poses(T, J, root, seed=0):
    """Root-relative (T, J, 3) metres (root joint exactly 0) and camera-frame root positions (T, 3)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 0.35, (J, 3))
    rel = base + rng.normal(0, 0.03, (T, J, 3))
    rel -= rel[:, root:root + 1]
    t = np.stack([rng.uniform(-0.6, 0.6, T), rng.uniform(-0.4, 0.4, T), rng.uniform(3.5, 6.5, T)], axis=1)
    return rel, t


def _pstmo_seq(T, K, seed, root_relative=True, mm=True, valid=None):
    rel, t = _poses(T, 17, 14, seed)
    X = rel + t[:, None]
    uv = project(X, np.broadcast_to(K, (T, 9)))
    X3 = rel if root_relative else X
    v = np.ones(T, bool) if valid is None else valid
    return {"data_3d": X3 * (1000 if mm else 1), "data_2d": uv, "valid": v}, X, uv


def _load(out):
    ds = PoseDataset(out, verify=True)
    return ds, ds.load("test")


def _untouched(tmp_path, names):
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)  # no temp dir left behind


def test_joint_sets():
    assert JOINT_SETS["all"] == list(range(17))
    assert JOINT_SETS["16"] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 15, 16]
    assert JOINT_SETS["14"] == [1, 2, 3, 4, 5, 6, 8, 10, 11, 12, 13, 14, 15, 16]


def test_builtin_intrinsics_follow_the_sensor_model():
    assert K_STUDIO[:4] == pytest.approx([1500.17, 1500.17, 1017.39, 1043.03], abs=0.01)
    assert K_OUTDOOR[:4] == pytest.approx([1683.98, 1683.98, 939.86, 560.14], abs=0.01)


def test_place_root_recovers_translation():
    rel, t = _poses(20, 17, 14, seed=3)
    uv = project(rel + t[:, None], np.broadcast_to(K_STUDIO, (20, 9)))
    np.testing.assert_allclose(place_root(rel, uv, K_STUDIO), t, atol=1e-6)


def test_pstmo_form_mapping_valid_filter_units_and_projection(tmp_path):
    valid = np.ones(30, bool)
    valid[[0, 5, 6, 29]] = False
    ts1, X1, uv1 = _pstmo_seq(30, K_STUDIO, 1, root_relative=True, mm=True, valid=valid)
    ts5, X5, uv5 = _pstmo_seq(12, K_OUTDOOR, 2, root_relative=False, mm=False)
    ts5["data_2d"] = np.concatenate([ts5["data_2d"], np.ones((12, 17, 1))], axis=-1)  # x, y, conf
    ts1["data_3d"][0] = np.nan   # invalid frames may hold garbage
    path = tmp_path / "data_test_3dhp.npz"
    np.savez(path, data=_obj({"TS1": ts1, "TS5": ts5}))
    ds, a = _load(prepare_3dhp(tmp_path / "out", path))
    info = ds.manifest["info"]
    assert ds.manifest["joint_layout"] == "h36m17" and ds.name == "mpi_inf_3dhp" and ds.splits == ["test"]
    assert info["form"] == "pstmo" and info["scale_source"] == "univ_annot3" and info["filled"] == []
    assert info["sequences"]["TS1"] == {**info["sequences"]["TS1"], "frames": 30, "valid": 26,
                                        "units_in": "mm", "3d_in": "root-relative"}
    assert info["sequences"]["TS5"]["units_in"] == "m" and info["sequences"]["TS5"]["3d_in"] == "camera-frame"
    assert len(a) == 26 + 12
    s1, s5 = a.subject == "TS1", a.subject == "TS5"
    np.testing.assert_array_equal(a.frame[s1], np.flatnonzero(valid))
    np.testing.assert_array_equal(a.image_size[s5], [[1920, 1080]] * 12)
    # joint mapping: 3DHP pelvis (14) -> h36m17 Hip (0), head_top (0) -> Head (10), neck (1) -> Thorax (8)
    Xv = X1[valid]
    for src, dst in ((14, 0), (0, 10), (1, 8), (16, 9), (15, 7)):
        np.testing.assert_allclose(a.joints_3d[s1][:, dst], Xv[:, src], atol=1e-4)
    np.testing.assert_allclose(a.joints_3d[s5], convert(X5, "3dhp17", "h36m17"), atol=1e-5)
    # 2D stored is the original 2D, and projecting the stored 3D reproduces it (< 1 px; exact data here)
    np.testing.assert_allclose(a.keypoints_2d[s1], convert(uv1[valid], "3dhp17", "h36m17"), atol=1e-3)
    err = np.linalg.norm(project(a.joints_3d.astype(np.float64), a.intrinsics.astype(np.float64)) - a.keypoints_2d,
                         axis=-1)
    assert err.max() < 1.0
    # the same file in metres gives the same dataset
    ts1m = dict(ts1, data_3d=ts1["data_3d"] / 1000)
    np.savez(tmp_path / "m.npz", data=_obj({"TS1": ts1m, "TS5": ts5}))
    _, b = _load(prepare_3dhp(tmp_path / "out_m", tmp_path / "m.npz", form="pstmo"))
    np.testing.assert_allclose(b.joints_3d, a.joints_3d, atol=1e-5)


def test_pstmo_root_depth_with_noisy_2d(tmp_path):
    """With 2 px of 2D noise the estimated root depth stays within a few cm and reprojects within a few px."""
    seq, X, uv = _pstmo_seq(40, K_STUDIO, 4)
    noisy = uv + np.random.default_rng(5).normal(0, 2.0, uv.shape)
    seq["data_2d"] = noisy
    np.savez(tmp_path / "d.npz", data=_obj({"TS2": seq}))
    ds, a = _load(prepare_3dhp(tmp_path / "out", tmp_path / "d.npz"))
    np.testing.assert_allclose(a.keypoints_2d, convert(noisy, "3dhp17", "h36m17"), atol=1e-3)  # original 2D
    assert np.abs(a.joints_3d[:, 0, 2] - X[:, 14, 2]).max() < 0.1
    err = np.linalg.norm(project(a.joints_3d.astype(np.float64), a.intrinsics.astype(np.float64)) - a.keypoints_2d,
                         axis=-1)
    assert np.median(err) < 3.0
    assert ds.manifest["info"]["reprojection_px"]["TS2"]["median_px"] < 3.0


@pytest.mark.parametrize("size, K", [(None, K_STUDIO), ((1920, 1080), K_OUTDOOR)])
def test_poseaug_form_fills_neck_nose_and_places_root(tmp_path, size, K):
    T = 25
    rel, t = _poses(T, 16, 0, seed=7)
    uv = project(rel + t[:, None], np.broadcast_to(K, (T, 9)))
    w, h = size or (2048, 2048)
    path = tmp_path / "test_3dhp.npz"
    np.savez(path, pose3d=rel.astype(np.float32), pose2d=normalize_screen(uv, w, h).astype(np.float32))
    ds, a = _load(prepare_3dhp(tmp_path / "out", path, image_size=size))
    info = ds.manifest["info"]
    assert info["form"] == "poseaug" and info["filled"] == ["Neck/Nose"] and info["scale_source"] == "univ_annot3"
    assert info["image_size_assumed"] == [w, h] and info["mapping_to_h36m17"][9] is None
    assert len(a) == T and (a.image_size == [w, h]).all()
    keep = JOINT_SETS["16"]
    np.testing.assert_allclose(a.keypoints_2d[:, keep], uv, atol=2e-3)
    np.testing.assert_allclose(a.joints_3d[:, keep], rel + t[:, None], atol=1e-3)
    np.testing.assert_allclose(a.keypoints_2d[:, 9], 0.5 * (uv[:, 8] + uv[:, 9]), atol=2e-3)
    np.testing.assert_allclose(a.joints_3d[:, 9], 0.5 * (a.joints_3d[:, 8] + a.joints_3d[:, 10]), atol=1e-5)
    proj = project(a.joints_3d.astype(np.float64), a.intrinsics.astype(np.float64))
    assert np.linalg.norm(proj - a.keypoints_2d, axis=-1)[:, keep].max() < 1.0
    assert info["reprojection_px"]["max_px"] < 1.0


def test_mmpose_form_auto_and_frames(tmp_path):
    rel, t = _poses(3, 17, 14, seed=9)
    X = rel + t[:, None]
    uv = project(X, np.broadcast_to(K_OUTDOOR, (3, 9)))
    path = tmp_path / "mm.npz"
    np.savez(path, imgname=np.array(["TS6_000011.jpg", "TS6_000003.jpg", "TS6_000007.jpg"]),
             S=np.concatenate([X, np.ones((3, 17, 1))], -1), part=np.concatenate([uv, np.ones((3, 17, 1))], -1))
    ds, a = _load(prepare_3dhp(tmp_path / "out", path))
    assert ds.manifest["info"]["form"] == "mmpose" and ds.manifest["info"]["scale_source"] == "annot3"
    np.testing.assert_array_equal(a.frame, [2, 6, 10])                   # sorted, 0-based
    np.testing.assert_allclose(a.joints_3d, convert(X[[1, 2, 0]], "3dhp17", "h36m17"), atol=1e-5)
    assert set(a.subject) == {"TS6"} and set(a.camera) == {"TS6"}


# ------------------------------------------------------------------------------------------- bad inputs

def _good_pstmo(T=10):
    return {"TS1": _pstmo_seq(T, K_STUDIO, 1)[0]}


def _bad_pstmo(mutate):
    def make(path):
        d = _good_pstmo()
        mutate(d["TS1"])
        np.savez(path, data=_obj(d))
    return make


def _poseaug(n3=10, n2=10, J=16, nan=False):
    def make(path):
        rel, t = _poses(max(n3, 1), J, 0)
        p3 = rel[:n3]
        if nan:
            p3 = p3.copy()
            p3[3, 2, 1] = np.inf
        np.savez(path, pose3d=p3, pose2d=np.zeros((n2, J, 2)))
    return make


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize("make, message", [
    (_bad_pstmo(lambda s: s.pop("valid")), r"sequence TS1: missing key\(s\) valid"),
    (_bad_pstmo(lambda s: s.__setitem__("data_3d", np.zeros((10, 16, 3)))),
     r"sequence TS1: data_3d: expected shape \(T, 17, 3\), got \(10, 16, 3\)"),
    (_bad_pstmo(lambda s: s["data_2d"].__setitem__((4, 3, 0), np.nan)), "sequence TS1: data_2d: NaN/Inf"),
    (_bad_pstmo(lambda s: s.__setitem__("data_2d", s["data_2d"][:7])), "sequence TS1: 7 2D frames but 10 3D"),
    (_bad_pstmo(lambda s: s.__setitem__("valid", np.zeros(10, bool))), "0 valid frames"),
    (_bad_pstmo(lambda s: s.__setitem__("data_3d", np.zeros((0, 17, 3)))), "sequence TS1: data_3d: 0 frames"),
    (_bad_pstmo(lambda s: s.__setitem__("data_3d", s["data_3d"] * 0.01)), "sequence TS1: cannot tell .* mm or m"),
    (_bad_pstmo(lambda s: s.__setitem__("extra", Evil())), r"refusing to unpickle builtins\.print"),
    (_poseaug(n2=9), "9 2D frames but 10 3D frames"),
    (_poseaug(J=17), r"pose3d: expected shape \(T, 16, 3\)"),
    (_poseaug(nan=True), "pose3d: NaN/Inf"),
    (_poseaug(n3=0, n2=0), "pose3d: 0 frames"),
    (lambda p: np.savez(p, poses=np.ones(3)), "cannot tell the 3DHP form from keys poses"),
    (lambda p: np.savez(p, imgname=np.array(["TS1_000001.jpg"]), S=np.ones((2, 17, 4)), part=np.ones((2, 17, 3))),
     "lengths differ: imgname 1, S 2, part 2"),
    (lambda p: np.savez(p, imgname=np.array(["frame1.jpg"]), S=np.ones((1, 17, 4)), part=np.ones((1, 17, 3))),
     "imgname 'frame1.jpg' is neither"),
    (lambda p: np.savez(p, data=_obj({"S1 Seq1": [{"0": {}}]})), "sequence S1 Seq1: looks like the training-file"),
])
def test_bad_files_name_the_culprit(tmp_path, capsys, make, message):
    path = tmp_path / "bad.npz"
    make(path)
    with pytest.raises(DataError, match=message) as e:
        prepare_3dhp(tmp_path / "out", path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    assert "pwned" not in capsys.readouterr().out
    _untouched(tmp_path, ["bad.npz"])


def test_bad_cameras(tmp_path, capsys):
    np.savez(tmp_path / "d.npz", data=_obj({**_good_pstmo(), "TS7": _pstmo_seq(5, K_STUDIO, 2)[0]}))
    with pytest.raises(DataError, match="sequence TS7: no built-in intrinsics for 'TS7'"):
        prepare_3dhp(tmp_path / "out", tmp_path / "d.npz")
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"TS1": {"c": Evil()}}))
    with pytest.raises(UnsafePickleError, match=r"evil\.pkl: refusing to unpickle builtins\.print"):
        prepare_3dhp(tmp_path / "out", tmp_path / "d.npz", cameras=tmp_path / "evil.pkl")
    assert "pwned" not in capsys.readouterr().out
    cam = {"c": np.array([[1017.], [1043.]]), "f": np.array([[1500.], [1500.]]), "w": 2048, "h": 2048}
    (tmp_path / "cams.pkl").write_bytes(pickle.dumps({"TS1": cam}))
    with pytest.raises(DataError, match=r"sequence TS7: no camera 'TS7' in .*cams\.pkl"):
        prepare_3dhp(tmp_path / "out", tmp_path / "d.npz", cameras=tmp_path / "cams.pkl")
    (tmp_path / "nof.pkl").write_bytes(pickle.dumps({"TS1": {"c": [1, 2], "w": 2048, "h": 2048}}))
    with pytest.raises(DataError, match=r"nof\.pkl: camera 'TS1': missing f"):
        prepare_3dhp(tmp_path / "out", tmp_path / "d.npz", cameras=tmp_path / "nof.pkl")
    (tmp_path / "trunc.pkl").write_bytes(pickle.dumps({"TS1": {}})[:5])
    with pytest.raises(DataError, match=r"trunc\.pkl: not a readable cameras pickle"):
        prepare_3dhp(tmp_path / "out", tmp_path / "d.npz", cameras=tmp_path / "trunc.pkl")
    with pytest.raises(DataError, match="image-size applies to the poseaug form only"):
        prepare_3dhp(tmp_path / "out", tmp_path / "d.npz", image_size=(1920, 1080))
    _untouched(tmp_path, ["d.npz", "evil.pkl", "cams.pkl", "nof.pkl", "trunc.pkl"])


def test_existing_output_is_kept(tmp_path):
    np.savez(tmp_path / "d.npz", data=_obj(_good_pstmo()))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("x")
    with pytest.raises(DataError, match="already exists"):
        prepare_3dhp(tmp_path / "out", tmp_path / "d.npz")
    assert (tmp_path / "out" / "keep").read_text() == "x"
    prepare_3dhp(tmp_path / "out", tmp_path / "d.npz", overwrite=True)
    assert PoseDataset(tmp_path / "out").summary()["splits"]["test"]["rows"] == 10


# ------------------------------------------------------------------------------------------- real data

@pytest.fixture()
def fixtures_3dhp(shared_data):
    d = shared_data / "mmpose-h36m-3dhp-fixtures" / "mpi_inf_3dhp"
    if not d.is_dir():
        pytest.skip(f"{d} not found")
    return d


@pytest.mark.real_data
def test_real_mmpose_test_fixture(tmp_path, fixtures_3dhp):
    src = load_npz(fixtures_3dhp / "test_3dhp_test.npz")
    ds, a = _load(prepare_3dhp(tmp_path / "out", fixtures_3dhp / "test_3dhp_test.npz",
                               cameras=fixtures_3dhp / "cameras_test.pkl"))
    assert len(a) == 2 and list(a.subject) == ["TS1", "TS2"] and list(a.frame) == [2000, 1849]
    np.testing.assert_allclose(a.joints_3d, convert(src["S"][..., :3], "3dhp17", "h36m17"), atol=1e-5)
    np.testing.assert_allclose(a.keypoints_2d, convert(src["part"][..., :2], "3dhp17", "h36m17"), atol=1e-3)
    err = np.linalg.norm(project(a.joints_3d.astype(np.float64), a.intrinsics.astype(np.float64)) - a.keypoints_2d,
                         axis=-1)
    assert np.median(err) < 1.0
    assert ds.manifest["info"]["scale_source"] == "annot3"


@pytest.mark.real_data
def test_real_mmpose_train_fixture_cameras(tmp_path, fixtures_3dhp):
    with pytest.raises(DataError, match=r"sequence S4_Seq2 Cam0: no built-in intrinsics .*--cameras"):
        prepare_3dhp(tmp_path / "out", fixtures_3dhp / "test_3dhp_train.npz")
    ds, a = _load(prepare_3dhp(tmp_path / "out", fixtures_3dhp / "test_3dhp_train.npz",
                               cameras=fixtures_3dhp / "cameras_train.pkl"))
    assert list(a.subject) == ["S4_Seq2", "S8_Seq1"] and list(a.camera) == ["Cam0", "Cam8"]
    assert (a.image_size == [2048, 2048]).all() and "h = 204" in ds.manifest["info"]["camera_notes"][0]
    err = np.linalg.norm(project(a.joints_3d.astype(np.float64), a.intrinsics.astype(np.float64)) - a.keypoints_2d,
                         axis=-1)
    assert np.median(err) < 1.0


@pytest.mark.real_data
def test_real_fixture_builtin_intrinsics_are_approximate(tmp_path, fixtures_3dhp):
    """Without --cameras the sensor-model intrinsics fit TS1 but are ~6 px off for TS2: a warning says so."""
    with pytest.warns(UserWarning, match="TS2: camera-frame 3D reprojects"):
        ds, _ = _load(prepare_3dhp(tmp_path / "out", fixtures_3dhp / "test_3dhp_test.npz"))
    res = ds.manifest["info"]["reprojection_px"]
    assert res["TS1"]["median_px"] < 1.0 and res["TS2"]["median_px"] > 3.0


# ------------------------------------------------------------------------------- the training set (--train)

def _train_cameras(tmp_path):
    """An mmpose-style cameras_train.pkl: S<i>_Seq<j>_Cam<c> -> c, f, w, h (one focal length per camera)."""
    cams = {}
    for s in ("S1", "S2"):
        for q in ("Seq1", "Seq2"):
            for c, f in (("0", 1480.0), ("2", 1530.0)):
                cams[f"{s}_{q}_Cam{c}"] = {"c": np.array([[1020.0], [1030.0]]), "f": np.array([[f], [f + 2]]),
                                           "w": 2048, "h": 2048}
    (tmp_path / "cameras_train.pkl").write_bytes(pickle.dumps(cams))
    return tmp_path / "cameras_train.pkl", {k: np.array([*v["f"].ravel(), *v["c"].ravel(), 0, 0, 0, 0, 0]) for k, v in cams.items()}


def _train_sequences(K, T=12):
    """(subject, sequence, camera, camera-frame 3D (T, 17, 3) m, 2D (T, 17, 2) px) in the 3DHP order."""
    out, seed = [], 20
    for s in ("S1", "S2"):
        for q in ("Seq1", "Seq2"):
            for c in ("0", "2"):
                rel, t = _poses(T, 17, 14, seed)
                X = rel + t[:, None]
                out.append((s, q, c, X, project(X, np.broadcast_to(K[f"{s}_{q}_Cam{c}"], (T, 9)))))
                seed += 1
    return out


@pytest.mark.parametrize("form", ["pstmo", "mmpose"])
def test_training_set_imports_as_split_train_with_subjects(tmp_path, form):
    cams, K = _train_cameras(tmp_path)
    seqs = _train_sequences(K)
    if form == "pstmo":                       # P-STMO / MixSTE data_train_3dhp.npz, 3D in mm
        data = {}
        for s, q, c, X, uv in seqs:
            data.setdefault(f"{s} {q}", [{}])[0][c] = {"data_3d": X * 1000, "data_2d": uv}
        np.savez(tmp_path / "data_train_3dhp.npz", data=_obj(data))
        train = tmp_path / "data_train_3dhp.npz"
    else:                                     # mmpose: one row per image, S in metres with a flag column
        names = [f"S{s[1:]}_{q}_Cam{c}_{i + 1:06d}.jpg" for s, q, c, X, _ in seqs for i in range(len(X))]
        S = np.concatenate([np.concatenate([X, np.ones((*X.shape[:2], 1))], -1) for *_, X, _ in seqs])
        part = np.concatenate([np.concatenate([uv, np.ones((*uv.shape[:2], 1))], -1) for *_, uv in seqs])
        np.savez(tmp_path / "mpi_inf_3dhp_train.npz", imgname=np.array(names), S=S, part=part)
        train = tmp_path / "mpi_inf_3dhp_train.npz"
    np.savez(tmp_path / "test.npz", data=_obj(_good_pstmo()))
    ds = PoseDataset(prepare_3dhp(tmp_path / "out", tmp_path / "test.npz", train=train, cameras=[cams]), verify=True)
    assert ds.manifest["splits"]["train"]["subjects"] == ["S1", "S2"] and ds.manifest["info"]["train"]["form"] == form
    a = ds.load("train")
    assert len(a) == 8 * 12 and set(a.action) == {"Seq1", "Seq2"} and set(a.camera) == {"Cam0", "Cam2"}
    assert len(set(a.sequence_ids.tolist())) == 8
    for s, q, c, X, uv in seqs:
        rows = np.flatnonzero((a.subject == s) & (a.action == q) & (a.camera == f"Cam{c}"))
        rows = rows[np.argsort(a.frame[rows])]
        np.testing.assert_allclose(a.joints_3d[rows], convert(X, "3dhp17", "h36m17"), atol=1e-5)
        np.testing.assert_allclose(a.intrinsics[rows[0]], K[f"{s}_{q}_Cam{c}"], atol=1e-4)
    err = np.linalg.norm(project(a.joints_3d.astype(np.float64), a.intrinsics.astype(np.float64)) - a.keypoints_2d, axis=-1)
    assert err.max() < 0.01                                   # pixels: the cameras file's intrinsics
    assert ds.manifest["splits"]["test"]["rows"] == 10


def test_training_set_bad_inputs_write_nothing(tmp_path):
    cams, K = _train_cameras(tmp_path)
    data = {}
    for s, q, c, X, uv in _train_sequences(K, T=5):
        data.setdefault(f"{s} {q}", [{}])[0][c] = {"data_3d": X, "data_2d": uv}
    np.savez(tmp_path / "train.npz", data=_obj(data))
    np.savez(tmp_path / "test.npz", data=_obj(_good_pstmo()))
    with pytest.raises(DataError, match=r"sequence S1 Seq1 camera 0: no built-in intrinsics for 'S1_Seq1_Cam0'.*--cameras"):
        prepare_3dhp(tmp_path / "out", tmp_path / "test.npz", train=tmp_path / "train.npz")
    with pytest.raises(DataError, match="a test-set file .* --train takes the training set"):
        prepare_3dhp(tmp_path / "out", tmp_path / "test.npz", train=tmp_path / "test.npz", cameras=cams)
    np.savez(tmp_path / "pa.npz", pose3d=np.zeros((3, 16, 3)), pose2d=np.zeros((3, 16, 2)))
    with pytest.raises(DataError, match="PoseAug/DH-AUG form holds the test set only"):
        prepare_3dhp(tmp_path / "out", tmp_path / "test.npz", train=tmp_path / "pa.npz", cameras=cams)
    with pytest.raises(DataError, match="training-file layout .* --train"):
        prepare_3dhp(tmp_path / "out", tmp_path / "train.npz", cameras=cams)
    bad = {k: [{c: {**v, "data_3d": np.full_like(v["data_3d"], np.nan)} for c, v in e[0].items()}] for k, e in data.items()}
    np.savez(tmp_path / "nan.npz", data=_obj(bad))
    with pytest.raises(DataError, match="NaN"):
        prepare_3dhp(tmp_path / "out", tmp_path / "test.npz", train=tmp_path / "nan.npz", cameras=cams)
    _untouched(tmp_path, ["cameras_train.pkl", "train.npz", "test.npz", "pa.npz", "nan.npz"])


def test_gpa_adapts_to_the_3dhp_training_split(tmp_path, small_dataset):
    """The GPA / PoSynDA papers' setting: the 3DHP training split's 2D as the unlabelled target, its test split
    evaluated (`posectl train gpa target.path=DIR target.split=train target.test_split=test`), here on
    constructed files through the same run builder as `posectl train`."""
    from posectl.orchestrator.reporters import MemoryReporter
    from posectl.orchestrator.spec import RunSpec, run_local
    cams, K = _train_cameras(tmp_path)
    data = {}
    for s, q, c, X, uv in _train_sequences(K, T=30):
        data.setdefault(f"{s} {q}", [{}])[0][c] = {"data_3d": X * 1000, "data_2d": uv}
    np.savez(tmp_path / "train.npz", data=_obj(data))
    np.savez(tmp_path / "test.npz", data=_obj(_good_pstmo(T=40)))
    target = prepare_3dhp(tmp_path / "3dhp", tmp_path / "test.npz", train=tmp_path / "train.npz", cameras=[cams])
    spec = RunSpec.build("gpa", [{"data.path": str(small_dataset), "target.path": str(target), "target.split": "train",
                                  "target.test_split": "test", "epochs": 1, "backbone.width": 64, "batch_size": 64}])
    rep = MemoryReporter()
    results, method, _ = run_local(spec, rep, test=True)
    assert rep.rows[0]["aligned_share"] == 1.0
    assert len(method.ctx.inputs["target"]) == 8 * 30                      # the training split's 2D drove it
    assert results["test"]["per_action"].keys() == {"TS1"} and np.isfinite(results["test"]["mpjpe"])


@pytest.mark.real_data
def test_real_mmpose_fixtures_as_test_and_train_splits(tmp_path, fixtures_3dhp):
    out = prepare_3dhp(tmp_path / "out", fixtures_3dhp / "test_3dhp_test.npz", train=fixtures_3dhp / "test_3dhp_train.npz",
                       cameras=[fixtures_3dhp / "cameras_test.pkl", fixtures_3dhp / "cameras_train.pkl"])
    ds = PoseDataset(out, verify=True)
    a = ds.load("train")
    assert list(a.subject) == ["S4", "S8"] and list(a.action) == ["Seq2", "Seq1"] and list(a.camera) == ["Cam0", "Cam8"]
    err = np.linalg.norm(project(a.joints_3d.astype(np.float64), a.intrinsics.astype(np.float64)) - a.keypoints_2d,
                         axis=-1)
    assert np.median(err) < 1.0 and ds.manifest["splits"]["test"]["rows"] == 2
