"""The `l2d` plugin: soft-argmax, the renderer, OHKLM, DWA, frozen lifters, training and resume (also via Ray)."""
import copy

import numpy as np
import pytest
import torch

from posectl.config import build, to_dict
from posectl.core.camera import normalize_screen, project
from posectl.core.heatmap import gaussian_heatmaps, joints_mse, soft_argmax
from posectl.core.render import _bone_colours, crop_around, render
from posectl.core.skeleton import H36M16, H36M17
from posectl.datasets.lifting import LiftingData
from posectl.datasets.store import PoseDataset
from posectl.errors import ConfigError
from posectl.methods.base import Context, get_method
from posectl.methods.l2d import FrozenLifter, dwa_weights, hard_joints
from posectl.models.hrnet import HRNet
from posectl.orchestrator.experiment import save_checkpoint

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
        cls.inputs(build(cls.Config, {}))
    with pytest.raises(ConfigError, match="at least two lifters"):
        cls.inputs(build(cls.Config, {"mode": "multi", "lifters": lifters[:1]}))
    with pytest.raises(ConfigError, match="does not exist"):
        cls.inputs(build(cls.Config, {"lifters": [str(tmp_path / "missing")]}))
    assert cls.inputs(build(cls.Config, {"lifters": lifters})) == {}
    with pytest.raises(ConfigError, match="does not fit the 16-joint"):
        FrozenLifter(lifters[0], H36M16)
    with pytest.raises(ConfigError, match="checkpoint not found"):
        FrozenLifter(str(tmp_path / "none.pt"), H36M16)


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
    state, rng = copy.deepcopy(m.state_dict()), torch.get_rng_state()
    r1 = m.train_epoch(1)
    m2 = cls(cfg, train, Context())
    m2.load_state_dict(state)
    torch.set_rng_state(rng)
    assert m2.train_epoch(1)["loss"] == pytest.approx(r1["loss"], rel=1e-6)


@pytest.mark.ray
def test_l2d_trains_through_ray_train_with_two_workers_and_resumes(ray_session, small_dataset, lifters, tmp_path,
                                                                    ledger):
    from posectl.orchestrator.train import train
    cfg = [{**TINY, "mode": "multi", "lifters": lifters, "epochs": 2, "data.train_stride": 8,
            "data.eval_stride": 8}]
    marker = tmp_path / "failed"

    def fail_once(epoch, rank):
        if epoch == 1 and rank == 0 and not marker.exists():
            marker.touch()
            raise RuntimeError("injected failure")
    ledger.fault()
    with pytest.raises(Exception, match="injected failure"):
        train("l2d", cfg, workers=2, runs_dir=tmp_path, name="l2d", fault_hook=fail_once)
    out = train("l2d", [], workers=2, runs_dir=tmp_path, name="l2d", resume=True)
    epochs = [r["epoch"] for r in out.experiment.history()]
    assert ledger.lost(len({1, 2} ^ set(epochs)) + len(epochs) - len(set(epochs))) == 0
    assert epochs == [1, 2] and np.isfinite(out.results["test"]["mpjpe"])
    ledger.recovered()
