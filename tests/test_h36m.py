"""Human3.6M importer and the restricted npz loader: on constructed bad files and on the real data."""
import json
import re

import numpy as np
import pytest

from posectl.core.camera import cameras_from_json, h36m_cameras
from posectl.datasets.h36m import prepare_h36m
from posectl.datasets.safe_npz import UnsafePickleError, load_npz
from posectl.datasets.store import PoseDataset
from posectl.errors import DataError


def _obj(x):
    a = np.empty((), dtype=object)
    a[()] = x
    return a


def _write_3d(path, data):
    np.savez(path, positions_3d=_obj(data))
    return path


def _fake_3d(T=50, subjects=("S1", "S9")):
    rng = np.random.default_rng(0)
    base = rng.normal(0, 0.3, (32, 3)).astype(np.float32) + [0, 0, 1]
    return {s: {"Walking": base + rng.normal(0, 0.01, (T, 32, 3)).astype(np.float32),
                "Eating 2": base + rng.normal(0, 0.01, (T, 32, 3)).astype(np.float32)} for s in subjects}


def test_restricted_unpickler_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    p = tmp_path / "evil.npz"
    np.savez(p, positions_3d=_obj({"S1": Evil()}))
    with pytest.raises(UnsafePickleError, match="builtins.print"):
        load_npz(p)
    # plain containers and arrays load fine
    q = _write_3d(tmp_path / "ok.npz", {"S1": {"A": np.ones((2, 32, 3), np.float32)}, "meta": [1, "x", (2.5,)]})
    d = load_npz(q)["positions_3d"]
    assert d["meta"] == [1, "x", (2.5,)] and d["S1"]["A"].shape == (2, 32, 3)


class _ForgedDtype:
    """Pickles as numpy.dtype(descr) followed by a hand-written __setstate__ state."""
    def __init__(self, descr, state):
        self.descr, self.state = descr, state

    def __reduce__(self):
        return (np.dtype, (self.descr, False, True), self.state)


class _RawArray:
    """Pickles as numpy's own array reconstruction: (1,) elements of `dtype` from the raw bytes `raw`."""
    def __init__(self, dtype, raw):
        self.dtype, self.raw = dtype, raw

    def __reduce__(self):
        from numpy._core.multiarray import _reconstruct
        return (_reconstruct, (np.ndarray, (0,), b"b"), (1, (1,), self.dtype, False, self.raw))


@pytest.mark.parametrize("state", [
    (3, "|", None, ("a",), {"a": (np.dtype("O"), 0)}, 8, 1, 0),    # an object field, flags claiming none
    (3, "|", None, ("a",), {"a": (np.dtype("O"), 0)}, 8, 1, 63),   # an object field, honest flags
    (3, "|", None, None, None, 8, 1, 63),                           # object flags on plain bytes
    (3, "|", None, None, None, 64, 1, 0),                           # a size the constructor did not give
])
def test_restricted_unpickler_refuses_forged_dtype_state(tmp_path, state):
    """Only allowed names, yet the file's bytes would become object pointers: refused, not loaded."""
    p = tmp_path / "forged.npz"
    np.savez(p, positions_3d=_obj({"S1": {"Walking": _RawArray(_ForgedDtype("V8", state), b"\x41" * 8)}}))
    with pytest.raises(UnsafePickleError, match=r"\|V8 dtype with state other than its plain one"):
        load_npz(p)
    # the same array with the dtype's own state loads, and so do byte-swapped numbers
    ok = tmp_path / "plain.npz"
    np.savez(ok, positions_3d=_obj({"S1": {"W": _RawArray(_ForgedDtype("V8", (3, "|", None, None, None, 8, 1, 0)),
                                                          b"\x41" * 8)},
                                    "be": np.arange(3, dtype=">f4")}))
    d = load_npz(ok)["positions_3d"]
    assert d["S1"]["W"].tobytes() == b"\x41" * 8 and d["be"].tolist() == [0.0, 1.0, 2.0]


def test_truncated_pickles_are_corrupt_files(tmp_path):
    """Every prefix of a pickled member is a one-line DataError, never another exception."""
    import pickle
    import zipfile
    full = tmp_path / "full.npz"
    _write_3d(full, {"S1": {"A": np.ones((2, 32, 3), np.float32)}, "meta": [1, "x"]})
    raw = zipfile.ZipFile(full).read("positions_3d.npy")
    start = raw.index(pickle.PROTO)                # the pickle after the .npy header
    for cut in range(start, len(raw) - 1):
        p = tmp_path / "cut.npz"
        with zipfile.ZipFile(p, "w") as z:
            z.writestr("positions_3d.npy", raw[:cut])
        with pytest.raises(DataError):
            load_npz(p)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["S1"].__setitem__("Walking", np.ones((50, 17, 3), np.float32)), r"S1 'Walking': expected shape \(T, 32, 3\)"),
    (lambda d: d["S1"].__setitem__("Walking", np.full((50, 32, 3), np.nan, np.float32)), "S1 'Walking': NaN/Inf"),
    (lambda d: d["S1"].__setitem__("Walking", np.ones((0, 32, 3), np.float32)), "S1 'Walking': 0 frames"),
    (lambda d: d.__setitem__("S42", d["S1"]), "unknown subject 'S42'"),
])
def test_bad_3d_files_name_subject_and_action(tmp_path, mutate, message):
    d = _fake_3d()
    mutate(d)
    with pytest.raises(DataError, match=message):
        prepare_h36m(tmp_path / "out", _write_3d(tmp_path / "d3.npz", d))
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["d3.npz"]  # nothing half-written


def test_bad_files(tmp_path):
    good = _write_3d(tmp_path / "d3.npz", _fake_3d())
    trunc = tmp_path / "trunc.npz"
    trunc.write_bytes(good.read_bytes()[:300])
    with pytest.raises(DataError, match="not a valid .npz"):
        prepare_h36m(tmp_path / "o", trunc)
    np.savez(tmp_path / "wrongkey.npz", poses=np.ones(3))
    with pytest.raises(DataError, match=r"missing key\(s\) positions_3d .*has: poses"):
        prepare_h36m(tmp_path / "o", tmp_path / "wrongkey.npz")
    # 2D shorter than 3D, and a missing action in the 2D file
    d2 = {s: {a: [np.zeros((40, 16, 2), np.float32)] * 4 for a in ("Walking", "Eating 2")} for s in ("S1", "S9")}
    np.savez(tmp_path / "data_2d_h36m_sh_pt_mpii.npz", positions_2d=_obj(d2), metadata=_obj({"num_joints": 16}))
    with pytest.raises(DataError, match=r"S1 'Eating 2' camera 0: 40 2D frames but 50 3D frames"):
        prepare_h36m(tmp_path / "o", good, [tmp_path / "data_2d_h36m_sh_pt_mpii.npz"])
    d2 = {s: {a: [np.zeros((50, 16, 2), np.float32)] * 4 for a in ("Walking", "Eating 2")} for s in ("S1", "S9")}
    del d2["S9"]["Walking"]
    np.savez(tmp_path / "data_2d_h36m_x.npz", positions_2d=_obj(d2))
    with pytest.raises(DataError, match="no 2D for S9 'Walking'"):
        prepare_h36m(tmp_path / "o", good, [tmp_path / "data_2d_h36m_x.npz"])
    assert not (tmp_path / "o").exists()


def test_constructed_import_round_trip(tmp_path):
    d3 = _fake_3d(T=50)
    rng = np.random.default_rng(1)        # another array for every subject, action and camera
    d2 = {s: {a: [rng.uniform(0, 1000, (60, 16, 3)).astype(np.float32) for _ in range(4)]
              for a in d3[s]} for s in d3}
    np.savez(tmp_path / "data_2d_h36m_sh_ft_h36m.npz", positions_2d=_obj(d2), metadata=_obj({"num_joints": 16}))
    with pytest.warns(UserWarning, match="S11"):
        out = prepare_h36m(tmp_path / "ds", _write_3d(tmp_path / "d3.npz", d3), [tmp_path / "data_2d_h36m_sh_ft_h36m.npz"])
    ds = PoseDataset(out, verify=True)
    m = ds.manifest
    assert m["splits"]["train"]["rows"] == 2 * 45 * 4 and m["splits"]["val"]["rows"] == 2 * 5 * 4
    assert m["splits"]["test"]["subjects"] == ["S9"] and m["info"]["test_subjects_missing"] == ["S11"]
    assert m["keypoints_2d"] == ["gt", "sh_ft_h36m"] and m["info"]["detections"]["sh_ft_h36m"]["layout"] == "mpii16"
    val = ds.load("val")
    assert val.frame.min() == 45  # the tail of each sequence
    for split, subject, action in (("train", "S1", "Walking"), ("test", "S9", "Eating 2")):
        det = ds.load(split, "sh_ft_h36m")         # each camera's detections on that camera's rows
        for ci, cam in enumerate(h36m_cameras(subject)):
            src = d2[subject][action][ci]
            row = np.flatnonzero((det.subject == subject) & (det.action == action) & (det.camera == cam.id)
                                 & (det.frame == 3))
            assert len(row) == 1, (split, subject, cam.id)
            assert np.allclose(det.keypoints_2d[row[0], 0], src[3, 6, :2])   # Hip <- MPII pelvis (6)
            assert np.allclose(det.keypoints_2d[row[0], 3], src[3, 0, :2])   # RFoot <- MPII 0


@pytest.fixture(scope="session")
def real_h36m(shared_data, tmp_path_factory):
    """S1 and S9 of the real data, converted once per session (with the SH detections)."""
    h = shared_data / "h36m"
    return prepare_h36m(tmp_path_factory.mktemp("h36m") / "ds", h / "data_3d_h36m.npz",
                        [h / "data_2d_h36m_sh_pt_mpii.npz"], cameras_json=h / "cameras.json",
                        subjects=["S1", "S9"])


@pytest.mark.real_data
def test_real_h36m_import(real_h36m, shared_data):
    ds = PoseDataset(real_h36m, verify=True)
    raw = load_npz(shared_data / "h36m" / "data_3d_h36m.npz")["positions_3d"]
    train = ds.load("train")
    val = ds.load("val")
    test = ds.load("test")
    # frame counts per subject and action (4 cameras each), train + val = the whole sequence
    for split_arrays, subject in ((None, "S1"), (test, "S9")):
        for action, X in raw[subject].items():
            if subject == "S1":
                n = ((train.subject == subject) & (train.action == action)).sum() + \
                    ((val.subject == subject) & (val.action == action)).sum()
            else:
                n = ((test.action == action)).sum()
            assert n == 4 * len(X), (subject, action)
    assert (train.joints_3d.shape[1:], len(test)) == ((17, 3), 4 * 73544)
    # cameras as in cameras.json
    ref = cameras_from_json(json.loads((shared_data / "h36m" / "cameras.json").read_text()))["S9"]
    for cam in ref:
        rows = test.camera == cam.id
        assert np.allclose(test.intrinsics[rows][0], cam.intrinsics, atol=1e-3)
    # GT 2D from projection vs the stacked-hourglass detections: a detector's error (~9 px median)
    det = ds.load("train", "sh_pt_mpii", subjects=["S1"])
    gt = ds.load("train", subjects=["S1"])
    keep = [j for j in range(17) if j != 9]  # Neck/Nose is interpolated for 16-joint detections
    med = np.median(np.linalg.norm(gt.keypoints_2d[:, keep] - det.keypoints_2d[:, keep], axis=-1))
    assert 5 < med < 15, med


@pytest.mark.real_data
def test_real_h36m_matches_mmpose_fixture(real_h36m, shared_data):
    """mmpose's camera-frame joints for a real S1 frame equal our converted joints."""
    fx = np.load(shared_data / "mmpose-h36m-3dhp-fixtures" / "h36m" / "test_h36m_body3d.npz")
    name = str(fx["imgname"][0])
    assert name.split("/")[-1].startswith("S1_Directions_1.54138969")
    frame = int(name.split("_")[-1].split(".")[0]) - 1
    a = PoseDataset(real_h36m).load("train", subjects=["S1"])
    row = np.flatnonzero((a.action == "Directions 1") & (a.camera == "54138969") & (a.frame == frame))[0]
    assert np.abs(a.joints_3d[row] - fx["S"][0, :, :3]).max() < 1e-3


@pytest.mark.real_data
@pytest.mark.ray
def test_training_on_real_detections(ray_session, real_h36m, tmp_path):
    from posectl.orchestrator.train import train
    out = train("baseline", [{"data.path": str(real_h36m), "data.keypoints": "sh_pt_mpii", "epochs": 1,
                              "backbone.width": 128, "data.train_stride": 50, "data.eval_stride": 50}],
                runs_dir=tmp_path, name="det")
    assert 20 < out.results["test"]["mpjpe"] < 400


def _write_2d(path, J, T=50, subjects=("S1", "S9")):
    d2 = {s: {a: [np.random.default_rng(1).uniform(0, 1000, (T, J, 2)).astype(np.float32)] * 4
              for a in ("Walking", "Eating 2")} for s in subjects}
    np.savez(path, positions_2d=_obj(d2), metadata=_obj({"num_joints": J}))
    return path


def _ragged(d):
    d["S1"]["Walking"] = [np.ones((3, 32, 3), np.float32), np.ones((2, 32, 3), np.float32)]


def _objects(d):
    a = np.empty(2, dtype=object)
    a[0], a[1] = np.ones((3, 32, 3)), np.ones((2, 32, 3))
    d["S1"]["Walking"] = a


@pytest.mark.parametrize("mutate, message", [
    (_ragged, "S1 'Walking': not an array of numbers"),
    (_objects, "S1 'Walking': not an array of numbers"),
    (lambda d: d.__setitem__("S1", {}), "subject S1 has no actions"),
    (lambda d: d.__setitem__("S1", {1: np.ones((5, 32, 3), np.float32)}), "action names that are not strings"),
])
def test_bad_3d_structure_is_refused(tmp_path, mutate, message):
    """Ragged/object action arrays and a subject without actions: one-line DataErrors, nothing written."""
    d = _fake_3d()
    mutate(d)
    with pytest.raises(DataError, match=message):
        prepare_h36m(tmp_path / "out", _write_3d(tmp_path / "d3.npz", d))
    assert [p.name for p in tmp_path.iterdir()] == ["d3.npz"]  # nothing half-written


def test_nothing_to_write_is_refused(tmp_path):
    """Only subjects without benchmark 3D (S2-S4): no rows, so no dataset (not an empty one with rc 0)."""
    d3 = _write_3d(tmp_path / "d3.npz", _fake_3d(subjects=("S2",)))
    cams = tmp_path / "cameras.json"
    cams.write_text(json.dumps({"subjects": {"S2": {"54138969": _cam()}}}))
    with pytest.raises(DataError, match="d3.npz: nothing to write"):
        prepare_h36m(tmp_path / "out", d3, cameras_json=cams)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cameras.json", "d3.npz"]


@pytest.mark.parametrize("J, layout, message", [
    (17, "mpii16", "camera 0: 17 joints, but --2d-layout mpii16 has 16"),
    (17, "h36m16", "camera 0: 17 joints, but --2d-layout h36m16 has 16"),
    (16, "h36m17", "camera 0: 16 joints, but --2d-layout h36m17 has 17"),
    (16, "foo", "--2d-layout: unknown layout 'foo' (use mpii16, h36m16, h36m17)"),
    (16, "h36m32", "--2d-layout: unknown layout 'h36m32'"),
])
def test_2d_layout_must_fit_the_2d_files(tmp_path, J, layout, message):
    d3 = _write_3d(tmp_path / "d3.npz", _fake_3d())
    d2 = _write_2d(tmp_path / "data_2d_h36m_x.npz", J)
    with pytest.raises(DataError, match=re.escape(message)):
        prepare_h36m(tmp_path / "out", d3, [d2], detection_layout=layout)
    assert not (tmp_path / "out").exists() and len(list(tmp_path.iterdir())) == 2


def test_2d_layout_that_fits_is_used(tmp_path):
    d3 = _write_3d(tmp_path / "d3.npz", _fake_3d())
    with pytest.warns(UserWarning, match="S11"):
        out = prepare_h36m(tmp_path / "out", d3, [_write_2d(tmp_path / "data_2d_h36m_x.npz", 16)],
                           detection_layout="h36m16")
    assert PoseDataset(out).manifest["info"]["detections"]["x"]["layout"] == "h36m16"


def _cam(**edit):
    c = {"R": np.eye(3).tolist(), "t": [0, 0, 5], "f": [1000, 1000], "c": [500, 500], "k": [0, 0, 0], "p": [0, 0],
         "width": 1000, "height": 1000}
    c.update(edit)
    return {k: v for k, v in c.items() if v is not None}


def _cameras(**edit):
    return {"subjects": {s: {"54138969": _cam(**edit)} for s in ("S1", "S9")}}


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"),
    ("{}", "expected an object with 'subjects'"),
    ("[1, 2]", "expected an object with 'subjects'"),
    (json.dumps({"subjects": {"S1": [1, 2]}}), "subjects['S1'] must be an object"),
    (json.dumps({"subjects": {"S1": {"54138969": 3}}}), "S1 camera 54138969: calibration must be an object"),
    (json.dumps(_cameras(R=None)), "S1 camera 54138969: lacks 'R'"),
    (json.dumps(_cameras(t=[0, 0])), "S1 camera 54138969: 't' must be 3 finite numbers"),
    (json.dumps(_cameras(f="x")), "'f' must be 2 finite numbers"),
    (json.dumps(_cameras(width="1000")), "'width' must be a positive integer"),
    (json.dumps({**_cameras(), "camera_order": "54138969"}), "'camera_order' must be a list"),
    (json.dumps({**_cameras(), "camera_order": ["1"]}), "no camera of S1 is in the camera order"),
])
def test_bad_cameras_json_is_refused(tmp_path, text, message):
    """--cameras: bad JSON or a wrong structure is a DataError naming the file, before anything is written."""
    d3 = _write_3d(tmp_path / "d3.npz", _fake_3d())
    cams = tmp_path / "cameras.json"
    cams.write_text(text)
    with pytest.raises(DataError, match=re.escape(f"{cams}: ") + ".*" + re.escape(message)):
        prepare_h36m(tmp_path / "out", d3, cameras_json=cams)
    assert not (tmp_path / "out").exists() and len(list(tmp_path.iterdir())) == 2


def test_cameras_json_round_trip(tmp_path):
    d3 = _write_3d(tmp_path / "d3.npz", _fake_3d())
    cams = tmp_path / "cameras.json"
    cams.write_text(json.dumps(_cameras(width=1000.0)))
    out = prepare_h36m(tmp_path / "out", d3, cameras_json=cams, subjects=["S1", "S9"])
    assert PoseDataset(out, verify=True).manifest["splits"]["test"]["rows"] == 2 * 50
