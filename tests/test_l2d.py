"""The `l2d` plugin: soft-argmax, the renderer, OHKLM, DWA, frozen lifters, training and resume (also via Ray),
and the image column: frames attached to a dataset (as files or embedded) feed the same detector path."""
import copy
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from posectl.config import build, to_dict
from posectl.core.camera import normalize_screen, project
from posectl.core.heatmap import gaussian_heatmaps, joints_mse, soft_argmax
from posectl.core.camera import image_coordinates
from posectl.core.render import CropTransform, _bone_colours, crop_around, crop_frames, render
from posectl.core.skeleton import H36M16, H36M17
from posectl.datasets.images import attach_images, crop_columns, crop_photos, decode
from posectl.datasets.lifting import LiftingData
from posectl.datasets.store import DatasetWriter, PoseDataset, table_from_arrays
from posectl.errors import ConfigError, DataError
from posectl.methods.base import Context, get_method
from posectl.methods.l2d import L2D, FrozenLifter, dwa_weights, hard_joints
from posectl.models.hrnet import HRNet
from posectl.orchestrator.experiment import save_checkpoint
from posectl.orchestrator.spaces import reported_metric

TINY = {"detector.width": 8, "detector.stages": 2, "detector.blocks": 1, "detector.image_size": 32,
        "batch_size": 32}


@pytest.fixture(scope="module")
def lifters(small_dataset, tmp_path_factory):
    """Two briefly trained single-frame lifters (SimpleBaseline, VideoPose 1f) saved as posectl checkpoints."""
    ds = PoseDataset(small_dataset)
    train = LiftingData(ds.load("train"), ds.layout)
    cls = get_method("baseline")
    out = tmp_path_factory.mktemp("lifters")
    paths = []
    for i, over in enumerate(({"backbone.width": 64}, {"backbone.name": "videopose", "backbone.width": 64})):
        cfg = build(cls.Config, {**over, "seed": i, "data.train_stride": 2})
        m = cls(cfg, train, Context())
        m.train_epoch(0)
        save_checkpoint(out / f"lifter{i}.pt", {"method": "baseline", "config": to_dict(cfg), "epoch": 0,
                                                "method_state": m.state_dict()})
        paths.append(str(out / f"lifter{i}.pt"))
    return paths


PHOTO = 100           # side of the photographs in the photo dataset (the small dataset's frames, scaled 1:10)
PATTERN = "{subject}/{action}.{camera}/{frame:06d}.png"


@pytest.fixture(scope="module")
def photo_dataset(small_dataset, tmp_path_factory):
    """Every 3rd frame of the small dataset at 1/10 scale (100 x 100 px frames) with a photograph per row: the figure drawn
    full-frame on black, saved as PNG files and attached with `attach_images` (paths). Returns
    (dataset with images, the same dataset without, the frames' root)."""
    from PIL import Image
    src = PoseDataset(small_dataset)
    root = tmp_path_factory.mktemp("photos")
    frames, plain = root / "frames", root / "plain"
    with DatasetWriter(plain, "small-photo", src.manifest["joint_layout"]) as w:
        for split in src.splits:
            a = src.load(split)
            a = a.take(np.arange(0, len(a), 3))                                  # every 3rd frame: fewer files
            s = PHOTO / a.image_size[:, :1].astype(np.float32)                   # per-row scale to 100 px wide
            a.keypoints_2d = a.keypoints_2d * s[:, :, None]
            a.intrinsics = a.intrinsics.copy()
            a.intrinsics[:, :4] *= s
            a.image_size = np.full_like(a.image_size, PHOTO)
            w.add_split(split, table_from_arrays(a, "small-photo", "source"))
            uv = torch.from_numpy(normalize_screen(a.keypoints_2d, PHOTO, PHOTO).astype(np.float32))
            depth = torch.from_numpy(a.joints_3d[..., 2].copy())
            for lo in range(0, len(a), 512):
                n = len(uv[lo: lo + 512])
                full = CropTransform(torch.zeros(n, 2), torch.full((n,), 2.0), torch.eye(2).expand(n, 2, 2), PHOTO)
                img, _, _ = render(uv[lo: lo + 512], depth[lo: lo + 512], src.layout, full, background=False)
                for k, im in enumerate((img.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()):
                    i = lo + k
                    f = frames / PATTERN.format(subject=a.subject[i], action=a.action[i], camera=a.camera[i],
                                                frame=a.frame[i])
                    f.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(im).save(f)
        w.commit()
    return attach_images(plain, root / "with-images", PATTERN, root=frames), plain, frames


def test_soft_argmax_recovers_a_subpixel_peak_and_passes_gradients():
    xy = torch.tensor([[[7.3, 11.6], [0.8, 2.25], [14.5, 3.9]]])
    hm = gaussian_heatmaps(xy, 16, 18, sigma=2.0).requires_grad_(True)
    got = soft_argmax(hm, beta=15.0)                   # the defaults: sub-pixel
    assert torch.allclose(got, xy, atol=0.05)
    snapped = soft_argmax(hm.detach(), beta=100.0)     # the paper's beta on a map this small: the argmax pixel
    assert (snapped - xy).abs().max() > 0.2
    got[..., 0].sum().backward()
    assert hm.grad is not None and hm.grad.abs().sum() > 0
    # a flat map gives the centre (beta too small biases towards it)
    assert torch.allclose(soft_argmax(torch.zeros(1, 1, 9, 9), 100.0), torch.tensor([[[4.0, 4.0]]]))
    # JointsMSE is 0 at the target and 0.5 x MSE otherwise
    assert joints_mse(hm.detach(), hm.detach()).abs().max() == 0
    assert torch.allclose(joints_mse(torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)), torch.tensor([[0.5]]))


def test_the_renderer_draws_the_joints_where_the_camera_projects_them(small_dataset):
    ds = PoseDataset(small_dataset)
    a = ds.load("val")
    data = LiftingData(a, ds.layout)
    idx = torch.arange(0, 40)
    # the camera model's projection of the 3D joints is the 2D the renderer is given
    arr = data.arrays
    uv_cam = normalize_screen(project(arr.joints_3d[:40], arr.intrinsics[:40]), arr.image_size[:40, 0].astype(float),
                              arr.image_size[:40, 1].astype(float))
    assert np.allclose(uv_cam, data.inputs[idx].numpy(), atol=1e-4)
    g = torch.Generator().manual_seed(0)
    crop = crop_around(data.inputs[idx], 48, generator=g, scale_jitter=0.2, max_rotation_deg=30)
    img, px, mask = render(data.inputs[idx], data.targets[idx][..., 2], ds.layout, crop, generator=g)
    assert img.shape == (40, 3, 48, 48) and 0 <= img.min() and img.max() <= 1
    assert torch.allclose(crop.to_uv(px), data.inputs[idx], atol=1e-5)           # crop <-> screen round trip
    ij = px.floor().long()
    inside = ((ij >= 0) & (ij < 48)).all(-1)
    assert inside.float().mean() > 0.95
    b, j = inside.nonzero(as_tuple=True)
    assert mask[b, ij[b, j, 1], ij[b, j, 0]].all()                               # every joint lies on the figure


def test_the_nearer_limb_hides_the_farther_one():
    layout = H36M17
    uv = torch.zeros(1, 17, 2)
    # a horizontal right forearm (15 -> 16) crossing a vertical left forearm (12 -> 13) at the origin
    uv[0, 15], uv[0, 16] = torch.tensor([-0.3, 0.0]), torch.tensor([0.3, 0.0])
    uv[0, 12], uv[0, 13] = torch.tensor([0.0, -0.3]), torch.tensor([0.0, 0.3])
    far = torch.full((1, 17), 10.0)
    colours = _bone_colours(layout)
    right = layout.bones.index((15, 16))
    left = layout.bones.index((12, 13))
    for near_joints, bone in (((15, 16), right), ((12, 13), left)):
        depth = far.clone()
        depth[0, list(near_joints)] = 1.0
        crop = crop_around(torch.tensor([[[-0.5, -0.5], [0.5, 0.5]]]), 33, padding=1.0)
        img, _, _ = render(uv, depth, layout, crop, background=False)
        pixel = img[0, :, 16, 16]                                  # the crossing, on both axes: full shade
        assert torch.allclose(pixel / pixel.max(), colours[bone] / colours[bone].max(), atol=0.05)


def test_crop_frames_resamples_each_crop_pixel_from_where_the_camera_model_puts_it():
    B, W, H = 3, 40, 30
    xs, ys = torch.meshgrid(torch.arange(W) + 0.5, torch.arange(H) + 0.5, indexing="xy")
    frame = torch.stack([xs / W, ys / H, torch.ones(H, W)])                      # a frame that encodes (x, y)
    uv = normalize_screen(torch.tensor([[[12.0, 9.0], [25.0, 21.0]]]).expand(B, 2, 2), W, H)
    crop = crop_around(uv, 16, generator=torch.Generator().manual_seed(0), scale_jitter=0.3, max_rotation_deg=40)
    out = crop_frames([frame] * B, torch.tensor([[W, H]] * B), crop)
    c = torch.arange(16, dtype=torch.float32) + 0.5
    centres = torch.stack(torch.meshgrid(c, c, indexing="xy"), -1).view(1, -1, 2).expand(B, -1, -1)
    xy = image_coordinates(crop.to_uv(centres), W, H).view(B, 16, 16, 2)       # independent: the camera module
    inner = (xy[..., 0] > 0.5) & (xy[..., 0] < W - 0.5) & (xy[..., 1] > 0.5) & (xy[..., 1] < H - 0.5)
    assert inner.float().mean() > 0.5
    assert torch.allclose(out[:, 0][inner], (xy[..., 0] / W)[inner], atol=1e-5)
    assert torch.allclose(out[:, 1][inner], (xy[..., 1] / H)[inner], atol=1e-5)
    outside = (xy[..., 0] < -1) | (xy[..., 0] > W + 1) | (xy[..., 1] < -1) | (xy[..., 1] > H + 1)
    assert (out[:, 2][outside] == 0).all()                                       # nothing beyond the frame
    with pytest.raises(ValueError, match="40x30 px, its row says 41x30"):
        crop_frames([frame] * B, torch.tensor([[41, H]] * B), crop)


def test_attach_images_links_or_embeds_frames_and_rejects_bad_ones(photo_dataset, tmp_path, ledger):
    with_images, plain, frames = photo_dataset
    ds = PoseDataset(with_images)
    assert ds.images == "paths" and ds.summary()["images"] == "paths" and PoseDataset(plain).images is None
    assert ds.load("val").image is None                                          # read only when asked for
    a = ds.load("val", images=True)
    assert len(a) == len(PoseDataset(plain).load("val")) and all(Path(p).is_file() for p in a.image[:5])
    assert decode(a.image[0]).shape == (PHOTO, PHOTO, 3)
    emb = PoseDataset(attach_images(plain, tmp_path / "emb", PATTERN, root=frames, embed=True))
    e = emb.load("val", images=True)
    assert emb.images == "embedded" and e.image[3] == Path(a.image[3]).read_bytes()
    # relative paths in the column resolve against the dataset directory
    rel = a.take(np.arange(4))
    rel.image = np.array([str(Path(p).relative_to(frames)) for p in rel.image], dtype=object)
    with DatasetWriter(tmp_path / "rel", "rel", ds.manifest["joint_layout"]) as w:
        w.add_split("val", table_from_arrays(rel, "rel", "source"))
        out = w.commit()
    shutil.copytree(frames, out, dirs_exist_ok=True)
    assert (decode(PoseDataset(out).load("val", images=True).image[0]) == decode(a.image[0])).all()
    # bad input: a pattern with an unknown field, missing files, frames of the wrong size, undecodable bytes
    ledger.bad_input(4)
    with pytest.raises(DataError, match="unknown: sequence"):
        attach_images(plain, tmp_path / "x", "{sequence}.png", root=frames)
    with pytest.raises(DataError, match=r"images not found, e\.g\."):
        attach_images(plain, tmp_path / "x", "{subject}/{frame}.png", root=frames)
    small = tmp_path / "small"
    shutil.copytree(frames, small)
    from PIL import Image
    first = sorted(small.rglob("*.png"))[0]
    Image.new("RGB", (64, 64)).save(first)
    with pytest.raises(DataError, match="64x64 px, but its row's image_size is 100x100"):
        attach_images(plain, tmp_path / "x", PATTERN, root=small)
    with pytest.raises(DataError, match="embedded image: cannot be decoded"):
        decode(b"not a png")
    assert not (tmp_path / "x").exists()                                          # nothing half-written


def test_l2d_crops_the_dataset_photos_and_trains_on_them(photo_dataset, lifters):
    with_images, plain, _ = photo_dataset
    ds = PoseDataset(with_images)
    train = LiftingData(ds.load("train", images=True), ds.layout)
    cls = get_method("l2d")
    assert cls.reads_images(build(cls.Config, {})) and not cls.reads_images(build(cls.Config, {"images": "render"}))
    cfg = build(cls.Config, {**TINY, "mode": "single", "images": "dataset", "lifters": lifters,
                             "data.train_stride": 3})
    m = cls(cfg, train, Context())
    idx = torch.arange(0, 64)
    img, px, crop, uv, _ = m._images(idx, train, torch.Generator().manual_seed(1), augment=True)
    assert img.shape == (64, 3, 32, 32) and torch.allclose(crop.to_uv(px), uv, atol=1e-5)
    ij = px.floor().long()
    inside = ((ij >= 0) & (ij < 32)).all(-1)
    b, j = inside.nonzero(as_tuple=True)
    on_figure = img[b, :, ij[b, j, 1], ij[b, j, 0]].amax(-1) > 0.1              # the photo's figure, not black
    assert inside.float().mean() > 0.9 and on_figure.float().mean() > 0.9
    r = m.train_epoch(0)
    assert np.isfinite(r["loss"]) and r["xy"] > 0
    ev = m.evaluate(LiftingData(ds.load("val", images=True), ds.layout), stride=3)
    assert np.isfinite(ev["mpjpe"]) and "crops of the dataset's images" in ev["protocol"]
    assert all(reported_metric("l2d", f"val_{k}") for k, v in ev.items() if isinstance(v, (int, float)))  # declared
    with pytest.raises(ConfigError, match="images=dataset: the data has no image column"):
        cls(cfg, LiftingData(PoseDataset(plain).load("train"), ds.layout), Context())


def test_ohklm_picks_the_worst_joints_and_dwa_weights_sum_to_one():
    err = torch.tensor([[0.1, 0.9, 0.3, 0.7, 0.2], [0.5, 0.4, 0.3, 0.2, 0.1]])
    assert [sorted(r) for r in hard_joints(err, 2).tolist()] == [[1, 3], [0, 1]]
    assert hard_joints(err, 9).shape == (2, 5)
    assert torch.allclose(dwa_weights([], 2.0, 3), torch.full((3,), 1 / 3))
    w = dwa_weights([[1.0, 1.0, 1.0], [0.5, 1.0, 2.0]], 2.0, 3)
    assert w.sum().item() == pytest.approx(1.0) and w[2] > w[1] > w[0]     # a loss that rose gets more weight


def test_hrnet_heatmaps_have_half_the_input_resolution():
    net = HRNet(17, width=8, stages=3, blocks=1)
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 17, 16, 16)


def test_config_guards(lifters, tmp_path):
    cls = get_method("l2d")
    with pytest.raises(ConfigError, match="at least one frozen lifting checkpoint"):
        cls.check_training(build(cls.Config, {}))
    with pytest.raises(ConfigError, match="at least two lifters"):
        cls.check_training(build(cls.Config, {"mode": "multi", "lifters": lifters[:1]}))
    with pytest.raises(ConfigError, match="does not exist"):
        cls.check_training(build(cls.Config, {"lifters": [str(tmp_path / "missing")]}))
    cls.check_training(build(cls.Config, {"lifters": lifters}))
    with pytest.raises(ConfigError, match="does not fit the 16-joint"):
        FrozenLifter(lifters[0], H36M16)
    with pytest.raises(ConfigError, match="checkpoint not found"):
        FrozenLifter(str(tmp_path / "none.pt"), H36M16)


def test_only_ground_truth_2d_is_accepted():
    """data.inputs are the heatmap targets and the 2D ground truth of every 2D metric: detections are refused."""
    cls = get_method("l2d")
    with pytest.raises(ConfigError, match="data.keypoints"):
        build(cls.Config, {"data.keypoints": "cpn"})
    assert build(cls.Config, {}).data.keypoints == "gt"


def test_lr_schedule_is_the_papers_multisteplr_with_the_restart():
    """L2D: MultiStepLR x0.67 at epochs 5, 10, ..., 70 (scheduler stepped after each epoch, epochs from 0) and the
    lr x5 after epoch 30; replayed here with torch's scheduler, epoch by epoch."""
    m = SimpleNamespace(cfg=build(get_method("l2d").Config, {"lr": 1e-3}))
    opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=1e-3)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(range(5, 71, 5)), 0.67)
    for epoch in range(90):
        assert L2D._lr(m, epoch) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9)
        opt.step()
        sched.step()
        if epoch == 30:
            opt.param_groups[0]["lr"] *= 5
    lr = [L2D._lr(m, e) / 1e-3 for e in (29, 30, 31, 69, 70, 71, 100)]
    assert lr == pytest.approx([0.67 ** 5, 0.67 ** 6, 5 * 0.67 ** 6, 5 * 0.67 ** 13, 5 * 0.67 ** 14, 5 * 0.67 ** 14,
                                5 * 0.67 ** 14])


def test_pdj_torso_diameter_is_left_shoulder_to_right_hip(small_dataset, lifters, monkeypatch):
    """PDJ@0.2: a joint counts when its error < 0.2 |l-shoulder - r-hip| (L2D's left_shoulder_idx, right_hip_idx).
    On frames where that diagonal is the longer one, errors between 0.2 x either diagonal are all detected."""
    ds = PoseDataset(small_dataset)
    val = LiftingData(ds.load("val"), ds.layout)
    cls = get_method("l2d")
    m = cls(build(cls.Config, {**TINY, "lifters": lifters[:1]}), val, Context())
    J, uv = ds.layout.joints, val.inputs
    ls_rh = (uv[:, J.index("LShoulder")] - uv[:, J.index("RHip")]).norm(dim=-1)
    rs_lh = (uv[:, J.index("RShoulder")] - uv[:, J.index("LHip")]).norm(dim=-1)
    rows = torch.nonzero(ls_rh > 1.2 * rs_lh).flatten()[:64]
    assert len(rows) > 8
    det = uv[rows].clone()
    det[..., 0] += 0.2 * (ls_rh[rows] * rs_lh[rows]).sqrt()[:, None]      # between the two diagonals' thresholds
    monkeypatch.setattr(m, "detect", lambda data, stride=1: (det, rows))
    assert m.evaluate(val)["pdj"] == 100.0


@pytest.mark.parametrize("mode", ["single", "multi"])
def test_training_guides_the_detector_and_leaves_the_lifters_bit_identical(small_dataset, lifters, mode):
    ds = PoseDataset(small_dataset)
    train, val = LiftingData(ds.load("train"), ds.layout), LiftingData(ds.load("val"), ds.layout)
    cls = get_method("l2d")
    cfg = build(cls.Config, {**TINY, "mode": mode, "lifters": lifters, "data.train_stride": 4})
    m = cls(cfg, train, Context())
    frozen = [copy.deepcopy(lf.state_dict()) for lf in m.lifters]
    det0 = copy.deepcopy(m.detector_raw.state_dict())
    r = m.train_epoch(0)
    assert np.isfinite(r["loss"]) and r["xy"] > 0 and r["ohklm"] > 0
    if mode == "multi":
        assert r["cons"] > 0 and r["dwa_w0"] + r["dwa_w1"] == pytest.approx(1.0)
    for lf, before in zip(m.lifters, frozen):
        assert all(torch.equal(v, before[k]) for k, v in lf.state_dict().items())
        assert not lf.training and not any(p.requires_grad for p in lf.parameters())
    assert any(not torch.equal(v, det0[k]) for k, v in m.detector_raw.state_dict().items())
    ev = m.evaluate(val, stride=8, detailed=True)
    assert np.isfinite(ev["mpjpe"]) and np.isfinite(ev["mpjpe_l1"]) and ev["mpjpe_gt2d"] < ev["mpjpe"]
    assert ev["lifters"] == ["baseline:simple", "baseline:videopose"] and "detector" in ev["protocol"]
    assert 0 <= ev["pdj"] <= 100 and ev["err_2d_px"] > 0


def test_2d_mode_trains_without_lifters_in_the_loss_and_resumes_exactly(small_dataset, lifters):
    ds = PoseDataset(small_dataset)
    train = LiftingData(ds.load("train"), ds.layout)
    cls = get_method("l2d")
    cfg = build(cls.Config, {**TINY, "mode": "2d", "lifters": lifters[:1], "data.train_stride": 8, "epochs": 2})
    m = cls(cfg, train, Context())
    r0 = m.train_epoch(0)
    assert set(r0) == {"loss", "heatmap", "lr", "train_samples"}
    state, rng, gen = copy.deepcopy(m.state_dict()), torch.get_rng_state(), m.gen.get_state()
    r1 = m.train_epoch(1)
    m2 = cls(cfg, train, Context())
    m2.load_state_dict(state)
    torch.set_rng_state(rng)
    m2.gen.set_state(gen)       # the random streams are kept by the orchestrator, per worker
    assert m2.train_epoch(1)["loss"] == pytest.approx(r1["loss"], rel=1e-6)


@pytest.mark.ray
def test_l2d_trains_through_ray_train_with_two_workers(ray_session, photo_dataset, lifters, tmp_path):
    """On the photo dataset: the image column travels through the Ray Data ingest to both workers. (Resume
    is checked for every method by tests/test_methods.py's contract test.)"""
    from posectl.orchestrator.train import train
    cfg = [{**TINY, "mode": "multi", "lifters": lifters, "epochs": 2, "data.train_stride": 3,
            "data.eval_stride": 3, "data.path": str(photo_dataset[0]), "images": "dataset"}]
    out = train("l2d", cfg, workers=2, runs_dir=tmp_path, name="l2d")
    epochs = [r["epoch"] for r in out.experiment.history()]
    assert epochs == [1, 2] and np.isfinite(out.results["test"]["mpjpe"])
    assert "crops of the dataset's images" in out.results["test"]["protocol"]


def test_photo_crops_decoded_by_ray_data_equal_those_decoded_here(ray_session, photo_dataset, lifters, tmp_path):
    """Context.map_batches in Ray jobs (Ray Data tasks decode and crop the frames ahead of the steps) gives
    the training step the very pixels the in-process path gives, from paths or embedded frames: an epoch's
    losses are identical."""
    from posectl.methods.base import local_map_batches
    from posectl.orchestrator.spec import ray_map_batches
    ds = PoseDataset(photo_dataset[0])
    train = LiftingData(ds.load("train", images=True).take(np.arange(0, 240)), ds.layout)
    idx = torch.arange(0, 70)
    crop = crop_around(train.inputs[idx], 32, generator=torch.Generator().manual_seed(0), scale_jitter=0.25,
                       shift_jitter=0.05, max_rotation_deg=30)
    cols = crop_columns(train.arrays.image[idx.numpy()], train.arrays.image_size[idx.numpy()], crop)
    here = list(local_map_batches(cols, crop_photos, [32, 32, 6], {"res": 32}))
    there = list(ray_map_batches(cols, crop_photos, [32, 32, 6], {"res": 32}, blocks_of=1))
    assert [len(b["pixels"]) for b in here] == [len(b["pixels"]) for b in there] == [32, 32, 6]
    assert all(np.array_equal(a["pixels"], b["pixels"]) for a, b in zip(here, there, strict=True))
    emb = PoseDataset(attach_images(photo_dataset[1], tmp_path / "emb", PATTERN, root=photo_dataset[2], embed=True))
    emb_rows = LiftingData(emb.load("train", images=True).take(np.arange(0, 240)), emb.layout).arrays
    assert isinstance(emb_rows.image[0], bytes)                  # embedded frames decode the same there
    cols = crop_columns(emb_rows.image[idx.numpy()], emb_rows.image_size[idx.numpy()], crop)
    there = list(ray_map_batches(cols, crop_photos, [32, 32, 6], {"res": 32}))
    assert all(np.array_equal(a["pixels"], b["pixels"]) for a, b in zip(here, there, strict=True))
    cls = get_method("l2d")
    cfg = build(cls.Config, {**TINY, "mode": "single", "images": "dataset", "lifters": lifters})
    losses = []
    for ctx in (Context(), Context(map_batches=ray_map_batches)):
        losses.append(cls(cfg, train, ctx).train_epoch(0)["loss"])
    assert losses[0] == losses[1] and np.isfinite(losses[0])
