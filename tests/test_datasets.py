"""Arrow schema round trip, manifest validation, synthetic generator determinism and anatomy."""
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from posectl.core.camera import project
from posectl.core.skeleton import H36M17, bone_lengths
from posectl.datasets import synthetic as syn
from posectl.datasets.store import DatasetWriter, PoseArrays, PoseDataset, table_from_arrays
from posectl.errors import DataError


def _arrays(n=30, J=17, seed=0):
    rng = np.random.default_rng(seed)
    return PoseArrays(
        keypoints_2d=rng.uniform(0, 1000, (n, J, 2)).astype(np.float32),
        joints_3d=rng.normal(0, 1, (n, J, 3)).astype(np.float32),
        intrinsics=rng.normal(0, 1, (n, 9)).astype(np.float32),
        image_size=np.tile([1000, 1002], (n, 1)).astype(np.int32),
        subject=np.array(["S1"] * (n // 2) + ["S5"] * (n - n // 2)),
        action=np.array(["Walking 1"] * n), camera=np.array(["54138969"] * n), frame=np.arange(n))


def test_arrow_round_trip_of_every_column(tmp_path):
    a = _arrays()
    ext = np.random.default_rng(1).normal(size=(len(a), 12)).astype(np.float32)
    det = a.keypoints_2d + 3
    w = DatasetWriter(tmp_path / "ds", "t", "h36m17", rows_per_shard=7)
    w.add_split("train", table_from_arrays(a, "t", "source", ext, {"sh": det}))
    w.commit()
    ds = PoseDataset(tmp_path / "ds", verify=True)
    assert ds.manifest["splits"]["train"]["rows"] == len(a)
    assert len(ds.shard_paths("train")) == 6 and ds.manifest["keypoints_2d"] == ["gt", "sh"]  # 2 subjects x 3
    assert len(ds.shard_paths("train", ["S5"])) == 3
    assert set(ds.load("train", subjects=["S5"]).subject) == {"S5"}
    with pytest.raises(DataError, match="no subject"):
        ds.shard_paths("train", ["S11"])
    back = ds.load("train")
    for f in PoseArrays.__dataclass_fields__:
        want = ext if f == "extrinsics" else getattr(a, f)
        np.testing.assert_array_equal(getattr(back, f), want, err_msg=f)
    np.testing.assert_array_equal(ds.load("train", keypoints="sh").keypoints_2d, det)
    table = ds.read_table("train")
    assert table.column("dataset")[0].as_py() == "t" and table.column("domain")[0].as_py() == "source"
    np.testing.assert_array_equal(np.stack(table.column("extrinsics").to_pylist()), ext)
    assert isinstance(table.schema.field("joints_3d").type, pa.FixedShapeTensorType)


def test_writer_leaves_nothing_behind_on_failure(tmp_path):
    with pytest.raises(RuntimeError):
        with DatasetWriter(tmp_path / "ds", "t", "h36m17") as w:
            w.add_split("train", table_from_arrays(_arrays(), "t", "source"))
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    DatasetWriter(tmp_path / "ds2", "t", "h36m17").abort()
    with pytest.raises(DataError, match="exists"):
        (tmp_path / "x").mkdir()
        DatasetWriter(tmp_path / "x", "t", "h36m17")


@pytest.fixture
def tiny(tmp_path):
    w = DatasetWriter(tmp_path / "ds", "t", "h36m17")
    w.add_split("train", table_from_arrays(_arrays(), "t", "source"))
    return w.commit()


def test_shards_are_hashed_once_and_a_changed_shard_is_still_caught(tiny):
    """verify() hashes a shard again only when its size or mtime differ from when it last matched."""
    import os
    ds = PoseDataset(tiny)
    n = len(ds.manifest["shards"])
    assert n > 1 and ds.verify() == n and ds.verify() == 0 and PoseDataset(tiny).verify() == 0
    shard = tiny / "train-00000.parquet"
    st = shard.stat()
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))   # touched, same bytes: hashed, passes
    assert ds.verify() == 1 and ds.verify() == 0
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF                                     # same size, new bytes and mtime
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match="checksum mismatch"):
        PoseDataset(tiny, verify=True)
    with pytest.raises(DataError, match="checksum mismatch"):       # and on every later run
        PoseDataset(tiny, verify=True)


def test_checksum_mismatch_is_detected(tiny):
    shard = tiny / "train-00000.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    PoseDataset(tiny)  # opening without verification works
    with pytest.raises(DataError, match="checksum mismatch"):
        PoseDataset(tiny, verify=True)


def test_missing_column_and_wrong_type_are_named(tiny):
    shard = tiny / "train-00000.parquet"
    t = pq.read_table(shard)
    pq.write_table(t.drop_columns(["intrinsics"]), shard)
    with pytest.raises(DataError, match="missing column 'intrinsics'"):
        PoseDataset(tiny).read_table("train")
    pq.write_table(t.set_column(t.schema.get_field_index("frame"), "frame", pa.array(t.column("frame").to_pylist(), pa.float64())), shard)
    with pytest.raises(DataError, match="column 'frame' has type double"):
        PoseDataset(tiny).read_table("train")


def test_manifest_errors(tmp_path, tiny):
    with pytest.raises(DataError, match="not found"):
        PoseDataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no manifest.json"):
        PoseDataset(tmp_path / "empty")
    m = json.loads((tiny / "manifest.json").read_text())
    m["schema_version"] = 99
    (tiny / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match="schema version 99"):
        PoseDataset(tiny)
    (tiny / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        PoseDataset(tiny)


def test_nan_values_are_rejected(tmp_path):
    a = _arrays()
    a.joints_3d[3, 2, 1] = np.nan
    w = DatasetWriter(tmp_path / "ds", "t", "h36m17")
    w.add_split("train", table_from_arrays(a, "t", "source"))
    with pytest.raises(DataError, match="NaN"):
        PoseDataset(w.commit()).load("train")


def test_synthetic_is_deterministic_and_seed_dependent():
    a = syn.generate(syn.SynthConfig(subjects=3, frames=30))
    b = syn.generate(syn.SynthConfig(subjects=3, frames=30))
    c = syn.generate(syn.SynthConfig(subjects=3, frames=30, seed=1))
    for s in a:
        for k in ("joints_3d", "keypoints_2d", "intrinsics"):
            np.testing.assert_array_equal(a[s][k], b[s][k])
    assert not np.allclose(a["s01"]["joints_3d"], c["s01"]["joints_3d"])


@pytest.mark.parametrize("domain", ["source", "target"])
def test_synthetic_anatomy(domain):
    data = syn.generate(syn.SynthConfig(domain=domain, subjects=3, frames=120))
    for s, d in data.items():
        X = d["joints_3d"]
        bl = bone_lengths(X, H36M17)
        # bone lengths are constant for a subject, across sequences and cameras
        assert bl.std(0).max() < 1e-5
        np.testing.assert_allclose(bl[0], d["bones"][1:], rtol=1e-5)
        # knees and elbows bend only within the anatomical range
        for a, b, c in ((1, 2, 3), (4, 5, 6), (11, 12, 13), (14, 15, 16)):
            u, v = X[:, a] - X[:, b], X[:, c] - X[:, b]
            cos = (u * v).sum(-1) / np.linalg.norm(u, axis=-1) / np.linalg.norm(v, axis=-1)
            inner = np.degrees(np.arccos(np.clip(cos, -1, 1)))
            assert inner.min() >= 180 - 150 - 1e-3
        # 2D is the projection of 3D, every point in front of the camera
        assert (X[..., 2] > 1.0).all()
        uv = project(X.astype(np.float64), d["intrinsics"].astype(np.float64))
        np.testing.assert_allclose(uv, d["keypoints_2d"], atol=1e-2)
        assert np.isfinite(X).all()


def test_angle_trajectories_respect_limits():
    rng = np.random.default_rng(0)
    for motion in syn.MOTIONS_TARGET:
        angles, _, _ = syn._motion_angles(motion, rng, 100, 1.45)
        for name, traj in angles.items():
            lo, hi = syn.LIMITS[name.split("_", 1)[1] if name[:2] in ("r_", "l_") else name]
            assert traj.min() >= lo and traj.max() <= hi, name


def test_target_domain_is_shifted():
    src = syn.generate(syn.SynthConfig(domain="source", subjects=3, frames=60))
    tgt = syn.generate(syn.SynthConfig(domain="target", subjects=3, frames=60))
    f_src = np.concatenate([d["intrinsics"][:, 0] for d in src.values()])
    f_tgt = np.concatenate([d["intrinsics"][:, 0] for d in tgt.values()])
    assert f_tgt.mean() > f_src.mean() + 200
    cam_h_src = np.concatenate([(-d["extrinsics"][:, :9].reshape(-1, 3, 3).transpose(0, 2, 1) @ d["extrinsics"][:, 9:, None])[:, 2, 0] for d in src.values()])
    cam_h_tgt = np.concatenate([(-d["extrinsics"][:, :9].reshape(-1, 3, 3).transpose(0, 2, 1) @ d["extrinsics"][:, 9:, None])[:, 2, 0] for d in tgt.values()])
    assert cam_h_tgt.std() > 3 * cam_h_src.std()
    # wider pose distribution: larger spread of root-relative joint positions
    def spread(data):
        X = np.concatenate([d["joints_3d"] for d in data.values()])
        return (X - X[:, :1]).std(0).mean()
    assert spread(tgt) > spread(src)


def test_write_synthetic_splits_by_subject(small_dataset):
    ds = PoseDataset(small_dataset, verify=True)
    splits = ds.manifest["splits"]
    assert set(splits) == {"train", "val", "test"}
    subjects = [set(splits[s]["subjects"]) for s in splits]
    assert all(not (a & b) for i, a in enumerate(subjects) for b in subjects[i + 1:])
    assert ds.layout.name == "h36m17" and ds.manifest["info"]["generator"] == "posectl.synthetic"


def _relabel(ds, **fields):
    """Edit a committed dataset's manifest.json (its shards and their checksums stay as they are)."""
    m = json.loads((ds / "manifest.json").read_text())
    m.update(fields)
    (ds / "manifest.json").write_text(json.dumps(m))
    return ds


def test_shards_of_another_joint_count_are_refused_on_open(tmp_path):
    """16-joint shards under a manifest that says h36m17 (checksums valid): a one-line DataError naming the shard
    and the column when the dataset is opened (as training and `data info` do), not a reshape in a Ray worker."""
    w = DatasetWriter(tmp_path / "ds", "t", "h36m16")
    w.add_split("train", table_from_arrays(_arrays(J=16), "t", "source", detections={"sh": _arrays(J=16).keypoints_2d}))
    ds = _relabel(w.commit(), joint_layout="h36m17", num_joints=17)
    msg = r"train-00000\.parquet: column 'keypoints_2d' has type .*shape=\[16,2\].*expected .*shape=\[17,2\]"
    for verify in (False, True):
        with pytest.raises(DataError, match=msg):
            PoseDataset(ds, verify=verify)
    # training opens the dataset on the driver: the same error, before Ray is started or a run is created
    from posectl.orchestrator.train import train
    with pytest.raises(DataError, match=msg):
        train("baseline", [{"data.path": str(ds)}], runs_dir=tmp_path / "runs", name="r")
    assert not (tmp_path / "runs" / "r").exists()
    # `posectl data info`: error line, exit code 2
    from posectl.cli import main
    with pytest.raises(SystemExit) as e:
        main(["data", "info", str(ds)])
    assert e.value.code == 2
    # a detection column of another joint count than the ground truth is named too
    w = DatasetWriter(tmp_path / "det", "t", "h36m17")
    t = table_from_arrays(_arrays(), "t", "source", detections={"sh": _arrays().keypoints_2d})
    bad = table_from_arrays(_arrays(J=16), "t", "source", detections={"sh": _arrays(J=16).keypoints_2d})
    t = t.set_column(t.schema.get_field_index("keypoints_2d_sh"), "keypoints_2d_sh", bad.column("keypoints_2d_sh"))
    w.add_split("train", t)
    with pytest.raises(DataError, match=r"column 'keypoints_2d_sh' has type .*shape=\[16,2\]"):
        PoseDataset(w.commit())


def test_batches_of_another_joint_count_are_data_errors():
    """A worker's numpy batch whose rows do not hold J joints: a DataError naming the column, not a reshape error."""
    from posectl.datasets.store import arrays_from_batch
    a = _arrays(n=4, J=16)
    batch = {"keypoints_2d": a.keypoints_2d, "joints_3d": a.joints_3d, "intrinsics": a.intrinsics,
             "image_size": a.image_size, "subject": a.subject, "action": a.action, "camera": a.camera,
             "frame": a.frame}
    with pytest.raises(DataError, match=r"w: column keypoints_2d has rows of shape \[16, 2\], expected \[17, 2\]"):
        arrays_from_batch(batch, num_joints=17, where="w")
    batch["keypoints_2d"] = _arrays(n=4).keypoints_2d
    with pytest.raises(DataError, match=r"w: column joints_3d has rows of shape \[16, 3\], expected \[17, 3\]"):
        arrays_from_batch(batch, num_joints=17, where="w")


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["splits"]["train"].pop("shards"), "split 'train' lacks 'shards'"),
    (lambda m: m["splits"]["train"].pop("rows"), "split 'train' lacks 'rows'"),
    (lambda m: m.__setitem__("splits", ["train"]), "'splits' must be an object"),
    (lambda m: m.__setitem__("splits", {}), "no splits"),
    (lambda m: m["splits"].__setitem__("train", "train-00000.parquet"), "split 'train' must be an object"),
    (lambda m: m["splits"]["train"].__setitem__("shards", "train-00000.parquet"), "'shards' must be a non-empty list"),
    (lambda m: m["splits"]["train"].__setitem__("subjects", "S1"), "'subjects' must be a list"),
    (lambda m: m["shards"]["train-00000.parquet"].pop("sha256"), "shard train-00000.parquet lacks its 'sha256'"),
    (lambda m: m["shards"].__setitem__("train-00000.parquet", "abc"), "shard train-00000.parquet: entry must be"),
    (lambda m: m["shards"].pop("train-00000.parquet"), "train-00000.parquet of split 'train' is not listed in 'shards'"),
    (lambda m: m.__setitem__("shards", []), "'shards' must be an object"),
    (lambda m: m["shards"].__setitem__("../x.parquet", m["shards"]["train-00000.parquet"]), "not a file name"),
    (lambda m: m.__setitem__("joint_layout", ["h36m17"]), "'joint_layout' must be a layout name"),
    (lambda m: m.__setitem__("num_joints", "17"), "'num_joints' must be an integer"),
    (lambda m: m.__setitem__("keypoints_2d", "gt"), "'keypoints_2d' must be a list"),
    (lambda m: m.__setitem__("info", [1]), "'info' must be an object"),
])
def test_malformed_manifest_is_a_data_error(tiny, edit, message):
    """A hand-edited manifest.json: a one-line DataError naming the file, never a KeyError/AttributeError."""
    m = json.loads((tiny / "manifest.json").read_text())
    edit(m)
    (tiny / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match=r"manifest\.json: .*" + re.escape(message)) as e:
        PoseDataset(tiny, verify=True).summary()
    assert "\n" not in str(e.value)


def test_attach_images_pattern_errors_are_data_errors(tiny, tmp_path):
    """A format spec or conversion that does not fit a field (subject is a string, frame an integer): a DataError
    naming the pattern, and nothing written at --out."""
    from posectl.datasets.images import attach_images
    for pattern, message in (("{subject:06d}.jpg", "Unknown format code 'd'"),
                             ("{frame!x}.jpg", "Unknown conversion specifier x"),
                             ("{frame[0]}.jpg", "not subscriptable"),
                             ("{subject/{frame}.jpg", "")):
        with pytest.raises(DataError, match=re.escape(f"--pattern '{pattern}': ") + ".*" + re.escape(message)):
            attach_images(tiny, tmp_path / "out", pattern)
    assert not (tmp_path / "out").exists()


def test_a_folder_named_like_the_builtin_data_is_a_folder():
    """Only 'synthetic' and 'synthetic:DOMAIN' name the built-in data: a user's ./synthetic_h36m is a folder
    (it was read as the synthetic source before)."""
    from posectl.datasets.store import dataset_id
    from posectl.orchestrator.data import resolve_path
    assert resolve_path("synthetic_h36m") == Path("synthetic_h36m")
    assert dataset_id("synthetic_h36m") == str(Path("synthetic_h36m").resolve())
    assert dataset_id("synthetic") == "synthetic:source" and dataset_id("synthetic:target") == "synthetic:target"
