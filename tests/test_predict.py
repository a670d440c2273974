"""`posectl predict` on a user's own 2D keypoints (issue #31, item 1): real inputs in each format built from
the synthetic dataset's projected 2D, lifted by trained runs and checked against the dataset's 3D."""
import json

import numpy as np
import pytest
from PIL import Image

from posectl.cli import main
from posectl.core.skeleton import COCO17_JOINTS, H36M17, map_keypoints
from posectl.datasets.store import PoseDataset
from posectl.methods.base import available, get_method
from posectl.orchestrator.evaluate import evaluate_checkpoint
from posectl.orchestrator.experiment import Experiment, load_checkpoint, save_checkpoint
from posectl.orchestrator.predict import predict
from posectl.orchestrator.reporters import MemoryReporter
from posectl.orchestrator.spec import RunSpec, run_local


def _train(root, name, values):
    spec = RunSpec.build("baseline", [values])
    rep = MemoryReporter()
    run_local(spec, rep)
    exp = Experiment(root / name)
    exp.create("baseline", spec.config)
    save_checkpoint(exp.checkpoints / "best.pt", {**rep.best, "method_state": {"model": rep.best["method_state"]["model"]}})
    return exp.root


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_dataset):
    root = tmp_path_factory.mktemp("predict-runs")
    data = {"data.path": str(small_dataset), "epochs": 30, "lr": 3e-3, "batch_size": 128, "backbone.width": 128}
    return {"simple": _train(root, "simple", data),
            "temporal": _train(root, "temporal", {**data, "backbone.name": "videopose", "backbone.receptive_field": 9})}


@pytest.fixture(scope="module")
def test_split(small_dataset):
    """The test split's sequences in time order: [(name, 2D px (T, 17, 2), 3D root-relative (T, 17, 3), (w, h))]."""
    a = PoseDataset(small_dataset).load("test")
    a = a.take(a.sequence_order())
    seq = a.sequence_ids
    out = []
    for s in np.unique(seq):
        r = seq == s
        name = f"{a.subject[r][0]}_{a.action[r][0]}_{a.camera[r][0]}"
        j3 = a.joints_3d[r] - a.joints_3d[r][:, :1]
        out.append((name, a.keypoints_2d[r], j3, tuple(int(v) for v in a.image_size[r][0])))
    return out


def _vp3d_npz(path, seqs, layout_name="h36m"):
    pos = {name: {"custom": [kp.astype(np.float32)]} for name, kp, _, _ in seqs}
    meta = {"layout_name": layout_name, "num_joints": seqs[0][1].shape[1],
            "video_metadata": {name: {"w": wh[0], "h": wh[1]} for name, _, _, wh in seqs}}
    np.savez(path, positions_2d=np.array(pos, dtype=object), metadata=np.array(meta, dtype=object))
    return path


def _mpjpe(pred, gt):
    return float(np.linalg.norm(pred - gt, axis=-1).mean() * 1000)


def _cli(capsys, *args):
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("kind", ["simple", "temporal"])
def test_videopose3d_npz_in_the_runs_layout_equals_posectl_eval(kind, runs, test_split, tmp_path, capsys):
    """Lifting the test split's own 2D through a VideoPose3D custom npz gives eval's MPJPE within 0.01 mm
    (a temporal model sees the same edge-padded windows)."""
    src = _vp3d_npz(tmp_path / "data_2d_custom_test.npz", test_split)
    code, out, err = _cli(capsys, "predict", runs[kind], "--keypoints", src, "--out", tmp_path / "pred.npz")
    assert code == 0, err
    assert "throughput:" in out and "frames/s" in out and "filled by interpolation: 0 keypoints" in out
    z = np.load(tmp_path / "pred.npz", allow_pickle=False)          # no pickles in the output
    meta = json.loads(str(z["meta"]))
    assert meta["method"] == "baseline" and meta["filled"]["keypoints"] == 0 and "flip TTA off" in meta["protocol"]
    assert list(dict.fromkeys(z["track"])) == [name for name, *_ in test_split]
    gt = np.concatenate([j3 for _, _, j3, _ in test_split])
    ours = _mpjpe(z["joints_3d"], gt)
    ref = evaluate_checkpoint(runs[kind] / "checkpoints" / "best.pt")["metrics"]["mpjpe"]
    assert abs(ours - ref) < 0.01, (ours, ref)
    assert np.allclose(z["keypoints_2d"], np.concatenate([kp for _, kp, _, _ in test_split]))


def _coco_from_h36m(kp, rng):
    """COCO-17 keypoints of an h36m17 2D pose: the face points around Head (their mean is Head), the nose at
    Neck/Nose, limbs as they are."""
    h = {n: kp[:, i] for i, n in enumerate(H36M17.joints)}
    side = np.array([6.0, 0.0])
    coco = {"nose": h["Neck/Nose"], "left_eye": h["Head"] + side, "right_eye": h["Head"] - side,
            "left_ear": h["Head"] + 2 * side, "right_ear": h["Head"] - 2 * side}
    for s, S in (("left", "L"), ("right", "R")):
        coco.update({f"{s}_shoulder": h[f"{S}Shoulder"], f"{s}_elbow": h[f"{S}Elbow"], f"{s}_wrist": h[f"{S}Wrist"],
                     f"{s}_hip": h[f"{S}Hip"], f"{s}_knee": h[f"{S}Knee"], f"{s}_ankle": h[f"{S}Foot"]})
    xy = np.stack([coco[n] for n in COCO17_JOINTS], 1)
    return xy + rng.normal(0, 0.5, xy.shape)            # a detector's jitter, half a pixel


def test_coco_json_with_missing_people_and_joints(runs, test_split, tmp_path, capsys):
    """COCO results with scores, frames nobody was detected in, low-score joints and a second, weaker person:
    the mapped, interpolated 3D stays below 2x the error of the run's own layout, and what was filled is counted."""
    rng = np.random.default_rng(0)
    seqs = test_split[:6]
    ours, own, filled = [], [], 0
    for name, kp, j3, wh in seqs:
        coco = _coco_from_h36m(kp, rng)
        dets = []
        for t in range(len(kp)):
            if t in (5, 6):
                continue                                          # nobody detected in two frames
            s = np.full(17, 0.9)
            if 10 <= t < 13:
                s[COCO17_JOINTS.index("left_wrist")] = 0.1        # an uncertain wrist
            dets.append({"image_id": t, "category_id": 1, "score": 0.95,
                         "keypoints": np.c_[coco[t], s].ravel().tolist()})
            if t % 4 == 0:                                        # somebody else, less sure
                dets.append({"image_id": t, "category_id": 1, "score": 0.3,
                             "keypoints": np.c_[rng.uniform(0, wh[0], (17, 2)), np.full(17, 0.3)].ravel().tolist()})
        (tmp_path / f"{name}.json").write_text(json.dumps(dets))
        code, out, err = _cli(capsys, "predict", runs["simple"], "-k", tmp_path / f"{name}.json", "-o",
                              tmp_path / f"{name}.npz", "--image-size", f"{wh[0]}x{wh[1]}")
        assert code == 0, err
        assert "Hip = mean(left_hip, right_hip)" in out
        z = np.load(tmp_path / f"{name}.npz")
        meta = json.loads(str(z["meta"]))
        assert meta["filled"]["frames"] == 2 + 3 and meta["filled"]["keypoints"] == 2 * 17 + 3
        assert (~z["observed"]).sum() == 2 * 17 + 3 and len(z["joints_3d"]) == len(kp)
        filled += meta["filled"]["frames"]
        ours.append(z["joints_3d"])
        own_npz = _vp3d_npz(tmp_path / f"{name}-own.npz", [(name, kp, j3, wh)])
        assert _cli(capsys, "predict", runs["simple"], "-k", own_npz, "-o", tmp_path / f"{name}-own.npz")[0] == 0
        own.append(np.load(tmp_path / f"{name}-own.npz")["joints_3d"])
    gt = np.concatenate([j3 for _, _, j3, _ in seqs])
    err_coco, err_own = _mpjpe(np.concatenate(ours), gt), _mpjpe(np.concatenate(own), gt)
    print(f"MPJPE coco path {err_coco:.2f} mm, own layout {err_own:.2f} mm")
    assert err_coco < 2 * err_own, (err_coco, err_own)
    assert filled == 5 * len(seqs)


def test_npy_with_layout_renders_a_gif_with_one_frame_per_input_frame(runs, test_split, tmp_path, capsys):
    name, kp, j3, (w, h) = test_split[0]
    np.save(tmp_path / "kp.npy", np.concatenate([kp, np.ones((*kp.shape[:2], 1))], -1).astype(np.float32))
    code, out, err = _cli(capsys, "predict", runs["temporal"], "-k", tmp_path / "kp.npy", "-o", tmp_path / "p.json",
                          "--layout", "h36m17", "--image-size", f"{w}x{h}", "--render", tmp_path / "p.gif", "--flip")
    assert code == 0, err
    doc = json.loads((tmp_path / "p.json").read_text())
    assert "flip TTA on" in doc["meta"]["protocol"] and doc["tracks"]["kp"]["frames"] == len(kp)
    pred = np.asarray(doc["tracks"]["kp"]["joints_3d_mm"]) / 1000
    # the same sequence through the VideoPose3D npz route, without flip TTA: the flipped lifting averages
    # two predictions (so differs), and is as good (a zero pose scores ~400 mm here)
    own = _vp3d_npz(tmp_path / "own.npz", [test_split[0]])
    assert _cli(capsys, "predict", runs["temporal"], "-k", own, "-o", tmp_path / "own-pred.npz")[0] == 0
    plain = np.load(tmp_path / "own-pred.npz")["joints_3d"]
    assert pred.shape == j3.shape and not np.allclose(pred, plain, atol=1e-4)
    assert _mpjpe(pred, j3) < 1.25 * _mpjpe(plain, j3), (_mpjpe(pred, j3), _mpjpe(plain, j3))
    with Image.open(tmp_path / "p.gif") as im:
        assert im.n_frames == len(kp)


def test_mapping_derives_the_joints_detectors_lack():
    coco = np.arange(17 * 2, dtype=np.float64).reshape(17, 2)
    h = map_keypoints(coco, "coco17", "h36m17")
    hips = [COCO17_JOINTS.index("left_hip"), COCO17_JOINTS.index("right_hip")]
    assert np.allclose(h[0], coco[hips].mean(0)) and np.allclose(h[9], coco[0])
    assert np.allclose(h[1], coco[COCO17_JOINTS.index("right_hip")])
    body25 = np.random.default_rng(0).normal(size=(25, 2))
    assert np.allclose(map_keypoints(body25, "body25", "h36m17")[0], body25[8])        # MidHip
    mpii = np.random.default_rng(1).normal(size=(16, 2))
    m = map_keypoints(mpii, "mpii16", "h36m17")
    assert np.allclose(m[9], (m[8] + m[10]) / 2) and np.allclose(m[0], mpii[6])


def test_the_lifting_methods_lift():
    lifting = {n for n, c in available().items() if c.lifts_keypoints()}
    assert lifting == {"baseline", "dhaug", "gpa", "posynda", "pose2mesh"}
    assert not get_method("l2d").lifts_keypoints()


def _bad(capsys, tmp_path, run, *args):
    code, out, err = _cli(capsys, "predict", run, "-o", tmp_path / "never.npz", *args)
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "never.npz").exists() and not list(tmp_path.glob(".never*"))
    return err


def test_bad_inputs_are_one_line_and_write_nothing(runs, test_split, tmp_path, capsys, ledger, monkeypatch):
    name, kp, _, (w, h) = test_split[0]
    run = runs["simple"]
    np.save(tmp_path / "kp.npy", kp)
    cases = {
        "unknown layout": (["-k", tmp_path / "kp.npy", "--layout", "coco18", "--image-size", "1000x1000"], "unknown layout"),
        "no layout for npy": (["-k", tmp_path / "kp.npy", "--image-size", "1000x1000"], "--layout"),
        "joint count of another layout": (["-k", tmp_path / "kp.npy", "--layout", "body25", "--image-size", "1000x1000"],
                                          "17 joints, but layout body25 has 25"),
        "no image size": (["-k", tmp_path / "kp.npy", "--layout", "h36m17"], "--image-size"),
        "bad image size": (["-k", tmp_path / "kp.npy", "--layout", "h36m17", "--image-size", "1000"], "WIDTHxHEIGHT"),
        "image too small for the coordinates": (["-k", tmp_path / "kp.npy", "--layout", "h36m17", "--image-size", "100x80"],
                                                "outside a 100x80 image"),
        "bad output": (["-k", tmp_path / "kp.npy", "--layout", "h36m17", "--image-size", f"{w}x{h}", "-o", tmp_path / "x.csv"],
                       "--out"),
        "bad render": (["-k", tmp_path / "kp.npy", "--layout", "h36m17", "--image-size", f"{w}x{h}", "--render", tmp_path / "x.avi"],
                       "--render"),
    }
    np.save(tmp_path / "j20.npy", np.ones((5, 20, 2)))
    cases["joint count that fits no layout"] = (["-k", _vp3d_npz(tmp_path / "j20.npz", [("v", np.ones((5, 20, 2)), None, (100, 100))], "x")],
                                                "20 joints fit no known layout")
    np.save(tmp_path / "zero.npy", np.zeros((0, 17, 2), np.float32))
    cases["zero frames"] = (["-k", tmp_path / "zero.npy", "--layout", "h36m17", "--image-size", "1000x1000"], "zero frames")
    np.save(tmp_path / "nan.npy", np.full((6, 17, 2), np.nan, np.float32))
    cases["all NaN"] = (["-k", tmp_path / "nan.npy", "--layout", "h36m17", "--image-size", "1000x1000"], "every keypoint is missing")
    np.save(tmp_path / "unit.npy", (kp / max(w, h)).astype(np.float32))
    cases["normalised coordinates"] = (["-k", tmp_path / "unit.npy", "--layout", "h36m17", "--image-size", f"{w}x{h}"],
                                       "normalised coordinates")
    (tmp_path / "bad.json").write_text("[{\"image_id\": 0, \"keypoints\": [1, 2]}]")
    cases["malformed json"] = (["-k", tmp_path / "bad.json", "--image-size", "100x100"], "[x, y, score] * J")
    (tmp_path / "empty.json").write_text("[]")
    cases["empty json"] = (["-k", tmp_path / "empty.json", "--image-size", "100x100"], "zero frames")
    coco = np.c_[_coco_from_h36m(kp, np.random.default_rng(0))[0], np.ones(17)]
    (tmp_path / "coco.json").write_text(json.dumps([{"image_id": 0, "keypoints": coco.ravel().tolist()}]))
    other = tmp_path / "other-skeleton.pt"
    save_checkpoint(other, {**load_checkpoint(run / "checkpoints" / "best.pt"), "layout": "h36m16"})
    cases["a run of another skeleton"] = (["-k", tmp_path / "coco.json", "--image-size", f"{w}x{h}"], "another skeleton")
    monkeypatch.setattr("posectl.orchestrator.predict.shutil.which", lambda name: None)
    cases["mp4 without ffmpeg"] = (["-k", tmp_path / "kp.npy", "--layout", "h36m17", "--image-size", f"{w}x{h}",
                                    "--render", tmp_path / "x.mp4"], "needs ffmpeg")
    (tmp_path / "p.pkl.npz").write_bytes(b"not a zip")
    cases["corrupt npz"] = (["-k", tmp_path / "p.pkl.npz"], "not a valid .npz")
    for what, (args, needle) in cases.items():
        ledger.bad_input()
        target = other if what == "a run of another skeleton" else run
        err = _bad(capsys, tmp_path, target, *[str(a) for a in args])
        assert needle in err, (what, err)


@pytest.mark.parametrize("method", ["dhaug", "gpa", "posynda", "pose2mesh"])
def test_every_lifting_method_predicts(method, test_split, tmp_path):
    """Each lifting method's smoke run lifts a user's file (pose2mesh adds the mesh)."""
    spec = RunSpec.build(method, [], smoke_test=True)
    rep = MemoryReporter()
    run_local(spec, rep)
    exp = Experiment(tmp_path / method)
    exp.create(method, spec.config)
    save_checkpoint(exp.checkpoints / "best.pt", {**rep.best, "method_state": {"model": rep.best["method_state"]["model"]}})
    name, kp, j3, wh = test_split[0]
    src = _vp3d_npz(tmp_path / "in.npz", [(name, kp, j3, wh)])
    res = predict(exp.root, src, tmp_path / "out.npz")
    assert res.joints_3d.shape == j3.shape and np.isfinite(res.joints_3d).all()
    assert np.allclose(res.joints_3d[:, 0], 0)
    z = np.load(tmp_path / "out.npz")
    if method == "pose2mesh":
        assert z["vertices"].shape[0] == len(kp) and z["faces"].shape[-1] == 3


def test_mmpose_inferencer_json_reads_as_the_coco_results(runs, test_split, tmp_path):
    """MMPose's per-frame instances give the same 3D as the same detections in COCO results form."""
    name, kp, j3, (w, h) = test_split[1]
    coco = _coco_from_h36m(kp, np.random.default_rng(1))
    frames = [{"frame_id": t, "instances": [{"keypoints": coco[t].tolist(), "keypoint_scores": [0.9] * 17,
                                              "bbox_score": 0.9}] if t != 3 else []} for t in range(len(kp))]
    (tmp_path / "mm.json").write_text(json.dumps(frames))
    dets = [{"image_id": t, "keypoints": np.c_[coco[t], np.full(17, 0.9)].ravel().tolist(), "score": 0.9}
            for t in range(len(kp)) if t != 3]
    (tmp_path / "coco.json").write_text(json.dumps(dets))
    a = predict(runs["simple"], tmp_path / "mm.json", tmp_path / "mm.npz", image_size=(w, h))
    b = predict(runs["simple"], tmp_path / "coco.json", tmp_path / "coco.npz", image_size=(w, h))
    assert a.meta["input"]["format"] == "mmpose-json" and a.meta["filled"]["frames"] == 1
    assert np.allclose(a.joints_3d, b.joints_3d, atol=1e-6)
