"""Tests for posectl.core.metrics."""

import numpy as np
import pytest
import torch

from posectl.core import metrics as M


def _rand_pose(rng, n=4, j=17):
    return rng.normal(size=(n, j, 3))


def _rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q


def test_mpjpe_hand_computed():
    gt = np.zeros((2, 3, 3))
    gt[:, 1] = [1.0, 0.0, 0.0]
    gt[:, 2] = [0.0, 1.0, 0.0]
    pred = gt.copy()
    pred[0, 1] += [3.0, 4.0, 0.0]  # error 5
    pred[0, 2] += [0.0, 0.0, 2.0]  # error 2
    pred[1] += [1.0, 1.0, 1.0]  # whole-frame shift: removed by root centring
    pred[1, 1] += [0.0, 6.0, 8.0]  # error 10
    assert M.mpjpe(pred, gt) == pytest.approx(17.0 / 6.0)
    np.testing.assert_allclose(M.joint_errors(pred, gt), [[0, 5, 2], [0, 10, 0]], atol=1e-12)
    # without root centring the frame-1 shift counts
    assert M.mpjpe(pred, gt, root=None) > M.mpjpe(pred, gt)


def test_mpjpe_translation_invariance():
    rng = np.random.default_rng(0)
    gt, pred = _rand_pose(rng), _rand_pose(rng)
    shifted = pred + rng.normal(size=(pred.shape[0], 1, 3)) * 10
    assert M.mpjpe(shifted, gt) == pytest.approx(M.mpjpe(pred, gt), abs=1e-12)
    np.testing.assert_allclose(M.root_relative(gt)[:, 0], 0.0)


def test_procrustes_recovers_similarity_transform():
    rng = np.random.default_rng(1)
    gt = _rand_pose(rng, n=5)
    pred = np.empty_like(gt)
    for i in range(len(gt)):  # different transform per frame
        r, t = _rotation(rng), rng.normal(size=3) * 5
        pred[i] = 1.7 * gt[i] @ r.T + t
    assert M.mpjpe(pred, gt) > 0.1
    assert M.p_mpjpe(pred, gt) < 1e-9
    np.testing.assert_allclose(M.procrustes_align(pred, gt), gt, atol=1e-9)


def test_procrustes_rejects_reflection():
    rng = np.random.default_rng(2)
    gt = _rand_pose(rng)
    mirrored = gt * np.array([-1.0, 1.0, 1.0])
    assert M.p_mpjpe(mirrored, gt) > 0.1
    # the fitted map (aligned = s * pred @ R + t) must be a proper rotation times s > 0
    aligned = M.procrustes_align(mirrored, gt)
    for x, y in zip(mirrored, aligned):
        a, *_ = np.linalg.lstsq(x - x.mean(0), y - y.mean(0), rcond=None)
        sc = np.cbrt(np.linalg.det(a))
        assert sc > 0
        np.testing.assert_allclose(a.T @ a / sc**2, np.eye(3), atol=1e-9)


def test_n_mpjpe_scale_only():
    rng = np.random.default_rng(3)
    gt = _rand_pose(rng)
    pred = 0.8 * gt
    assert M.n_mpjpe(pred, gt) < 1e-12
    assert M.mpjpe(pred, gt) > 0.1
    # scale about a different origin is still fixed thanks to root centring
    assert M.n_mpjpe(pred + 3.0, gt) < 1e-12


def test_mpjve():
    rng = np.random.default_rng(4)
    gt = _rand_pose(rng, n=6)
    assert M.mpjve(gt + 0.5, gt) == pytest.approx(0.0, abs=1e-12)
    pred = gt.copy()
    pred[3, 1] += [0.0, 3.0, 4.0]  # frame-3 error 5 -> velocity errors 5 at diffs 2 and 3
    expected = 2 * 5.0 / (5 * gt.shape[1])
    assert M.mpjve(pred, gt) == pytest.approx(expected)
    with pytest.raises(ValueError):
        M.mpjve(gt[:1], gt[:1])


def test_pck_auc_constructed():
    thresholds = np.arange(0, 151, 5)
    e100 = np.full((3, 4), 100.0)
    assert M.pck(e100) == pytest.approx(100.0)
    # error < t strictly: t in {105, ..., 150} -> 10 of 31 thresholds
    assert sum(100.0 < t for t in thresholds) == 10
    assert M.auc(e100) == pytest.approx(100.0 * 10 / 31)
    e200 = np.full((3, 4), 200.0)
    assert M.pck(e200) == 0.0 and M.auc(e200) == 0.0
    assert M.pck(np.array([150.0])) == 0.0  # strict inequality
    assert M.pck(np.array([10.0, 20.0, 160.0, 170.0])) == pytest.approx(50.0)
    assert M.auc(np.zeros(5)) == pytest.approx(100.0 * 30 / 31)  # 0 < 0 is False


def test_per_action_and_average():
    errors = np.array([1.0, 3.0, 10.0])
    actions = ["Walking", "Walking 1", "Eating 2"]
    assert M.canonical_action("Walking 1") == "Walking"
    pa = M.per_action(errors, actions)
    assert list(pa) == ["Eating", "Walking"]
    assert pa == {"Eating": pytest.approx(10.0), "Walking": pytest.approx(2.0)}
    assert M.action_wise_average(errors, actions) == pytest.approx(6.0)
    assert errors.mean() == pytest.approx(14.0 / 3.0)  # per-sample convention differs
    pa2 = M.per_action(np.array([[0.0, 2.0], [2.0, 4.0], [10.0, 10.0]]), actions)
    assert pa2 == {"Eating": pytest.approx(10.0), "Walking": pytest.approx(2.0)}
    with pytest.raises(ValueError):
        M.per_action(errors, actions[:2])
    np.testing.assert_allclose(M.per_joint(np.array([[1.0, 2.0], [3.0, 6.0]])), [2.0, 4.0])


def test_evaluate_poses_keys_units_and_subset():
    rng = np.random.default_rng(5)
    gt = _rand_pose(rng, n=4, j=3) * 0.3
    pred = gt + 2.0  # global shift, removed by root centring
    pred[:, 2] += [0.0, 0.03, 0.04]  # 0.05 m = 50 mm at joint 2
    acts = ["Walking", "Walking 1", "Eating 2", "Eating"]
    res = M.evaluate_poses(pred, gt, actions=acts)
    for k in ["mpjpe", "p_mpjpe", "n_mpjpe", "pck150", "auc", "mpjpe_action_avg",
              "p_mpjpe_action_avg", "per_action", "per_joint_mpjpe"]:
        assert k in res
    assert res["mpjpe"] == pytest.approx(50.0 / 3)
    assert res["per_joint_mpjpe"] == pytest.approx([0.0, 0.0, 50.0])
    assert res["pck150"] == pytest.approx(100.0)
    assert res["per_action"]["Walking"]["n"] == 2
    assert res["per_action"]["Eating"]["mpjpe"] == pytest.approx(50.0 / 3)
    assert res["mpjpe_action_avg"] == pytest.approx(50.0 / 3)
    assert res["p_mpjpe"] <= res["mpjpe"] + 1e-9

    sub = M.evaluate_poses(pred, gt, joints=[2])
    assert sub["mpjpe"] == pytest.approx(50.0)
    assert sub["per_joint_mpjpe"] == pytest.approx([50.0])
    assert "per_action" not in sub and "mpjpe_action_avg" not in sub
    # root centring still uses joint 0 even when it is excluded from the subset
    assert M.evaluate_poses(pred, gt, joints=[1])["mpjpe"] == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError):
        M.evaluate_poses(pred, gt, joints=[7])


def test_evaluate_poses_can_fit_the_alignments_on_the_subset_alone():
    """align_on="subset" (Pose2Mesh: select the 14 joints, then rigid-align): P-/N-MPJPE are those of the
    root-centred subset slices; MPJPE is unchanged; the default still aligns on all joints."""
    rng = np.random.default_rng(7)
    gt = _rand_pose(rng, n=6, j=17) * 0.3
    pred = gt + 0.05 * rng.standard_normal(gt.shape)
    idx = [1, 2, 3, 4, 5, 6, 8, 10, 11, 12, 13, 14, 15, 16]
    sub = M.evaluate_poses(pred, gt, actions=["A"] * 6, joints=idx, align_on="subset")
    full = M.evaluate_poses(pred, gt, actions=["A"] * 6, joints=idx)
    p, g = M.root_relative(pred)[:, idx], M.root_relative(gt)[:, idx]
    assert sub["p_mpjpe"] == pytest.approx(M.p_mpjpe(p, g) * 1000)
    assert sub["p_mpjpe_action_avg"] == pytest.approx(sub["p_mpjpe"])
    assert sub["n_mpjpe"] == pytest.approx(M.n_mpjpe_errors(p, g, root=None).mean() * 1000)
    assert sub["mpjpe"] == full["mpjpe"] and sub["per_joint_mpjpe"] == full["per_joint_mpjpe"]
    assert abs(sub["p_mpjpe"] - full["p_mpjpe"]) > 0.1           # the two protocols differ
    assert full["p_mpjpe"] == pytest.approx(M.p_mpjpe_errors(pred, gt)[:, idx].mean() * 1000)
    with pytest.raises(ValueError, match="align_on"):
        M.evaluate_poses(pred, gt, align_on="joints")


def test_mpjpe_loss_matches_and_backprops():
    rng = np.random.default_rng(6)
    gt = M.root_relative(_rand_pose(rng))
    pred_np = M.root_relative(_rand_pose(rng))
    pred = torch.tensor(pred_np, requires_grad=True)
    loss = M.mpjpe_loss(pred, torch.tensor(gt))
    loss.backward()
    assert loss.item() == pytest.approx(M.mpjpe(pred_np, gt))
    assert pred.grad is not None and torch.isfinite(pred.grad).all()
    # root joints have zero error: gradient there must be finite (not NaN)
    assert torch.isfinite(pred.grad[:, 0]).all()
    with pytest.raises(ValueError):
        M.mpjpe_loss(pred, torch.zeros(2, 3))


def test_invalid_inputs():
    gt = np.zeros((2, 3, 3))
    bad = gt.copy()
    bad[0, 1, 2] = np.nan
    with pytest.raises(ValueError):
        M.mpjpe(bad, gt)
    with pytest.raises(ValueError):
        M.p_mpjpe(gt, np.full_like(gt, np.inf))
    with pytest.raises(ValueError):
        M.mpjpe(gt, np.zeros((2, 4, 3)))
    with pytest.raises(ValueError):
        M.mpjpe(gt[0], gt[0])  # ndim 2
    with pytest.raises(ValueError):
        M.evaluate_poses(np.zeros((0, 3, 3)), np.zeros((0, 3, 3)))
    with pytest.raises(ValueError):
        M.pck(np.array([np.nan]))
