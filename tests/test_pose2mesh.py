"""Pose2Mesh: tube body, mesh-graph coarsening, Chebyshev convolution, mesh losses, the plugin in-process
and through Ray Train with 2 workers."""
import numpy as np
import pytest
import torch

from posectl.config import build
from posectl.core.mesh import (Graph, TubeBody, coarsen, edge_length_loss, joint_graph, mesh_edges, normal_loss,
                               scaled_laplacian, write_obj)
from posectl.core import metrics
from posectl.core.skeleton import EVAL_JOINT_SETS, get_layout
from posectl.datasets.lifting import LiftingData
from posectl.datasets.store import PoseDataset
from posectl.errors import ConfigError
from posectl.methods.base import Context, get_method
from posectl.models.meshnet import ChebConv, MeshNet
from posectl.orchestrator.spaces import reported_metric

H36M = get_layout("h36m17")
TINY = {"posenet.width": 128, "meshnet.width": 8, "meshnet.levels": 3, "body.model": "tube", "body.ring": 8,
        "body.rings": 3}


def _poses(n=8, seed=0):
    """Plausible-scale random poses: a template skeleton with random bone directions."""
    g = torch.Generator().manual_seed(seed)
    P = torch.zeros(n, 17, 3)
    for p, c in H36M.bones:
        d = torch.randn(n, 3, generator=g)
        P[:, c] = P[:, p] + 0.25 * d / d.norm(dim=-1, keepdim=True)
    return P


def test_tube_body_regressor_reproduces_the_joints_and_passes_gradients():
    body = TubeBody(H36M)
    P = _poses().requires_grad_(True)
    V = body.pose(P)
    assert V.shape == (8, body.num_vertices, 3) and torch.isfinite(V).all()
    J = torch.einsum("jv,bvc->bjc", torch.from_numpy(body.joint_regressor), V)
    assert torch.allclose(J, P, atol=1e-5)                       # exact for any pose
    V.square().sum().backward()
    assert torch.isfinite(P.grad).all() and P.grad.abs().sum() > 0
    assert body.faces.min() == 0 and body.faces.max() == body.num_vertices - 1


def test_every_tube_is_a_closed_surface():
    body = TubeBody(H36M, ring=8, rings=4)
    e = np.sort(np.concatenate([body.faces[:, [0, 1]], body.faces[:, [1, 2]], body.faces[:, [2, 0]]]), axis=1)
    _, counts = np.unique(e, axis=0, return_counts=True)
    assert (counts == 2).all()                                  # every edge borders exactly two faces


def test_coarsening_halves_each_level_and_its_layout_round_trips():
    body = TubeBody(H36M)
    g = Graph.from_edges(body.num_vertices, mesh_edges(body.faces))
    h = coarsen(g, 4)
    sizes = h.sizes
    assert all(a == 2 * b for a, b in zip(sizes, sizes[1:])) and sizes[0] >= body.num_vertices
    # every real vertex has one position, positions are distinct, and the inverse maps back
    assert (h.order >= 0).all() and len(set(h.order.tolist())) == body.num_vertices
    inv = -np.ones(sizes[0], dtype=np.int64)
    inv[h.order] = np.arange(body.num_vertices)
    assert (inv[h.order] == np.arange(body.num_vertices)).all()
    # the level-0 graph is the mesh graph, relabelled
    A = g.dense()
    A0 = h.graphs[0].dense()[np.ix_(h.order, h.order)]
    assert np.array_equal(A, A0)
    # an edge at level l joins parents that are equal or adjacent at level l+1 (node k -> parent k // 2)
    for fine, coarse in zip(h.graphs, h.graphs[1:]):
        Ac = coarse.dense()
        pr, pc = fine.rows // 2, fine.cols // 2
        assert all(a == b or Ac[a, b] > 0 for a, b in zip(pr, pc))


def _dense(idx, val, n):
    L = np.zeros((n, n))
    np.add.at(L, (idx[0], idx[1]), val)
    return L


def _reference_laplacian(A):
    """2 L / lambda_max - I, L = I - D^-1/2 A D^-1/2 by hand from a dense A (isolated nodes: L_ii = 1)."""
    d = A.sum(1)
    dinv = np.where(d > 0, 1 / np.sqrt(np.where(d > 0, d, 1)), 0)
    L = np.eye(len(A)) - dinv[:, None] * A * dinv[None]
    return 2 * L / np.linalg.eigvalsh(L)[-1] - np.eye(len(A))


def test_joint_graph_is_pose2mesh_build_adj_with_self_loops():
    A = np.eye(17)                                # build_adj: skeleton + left/right pairs + I
    for a, b in list(H36M.bones) + list(zip(H36M.left, H36M.right)):
        A[a, b] = A[b, a] = 1
    g = joint_graph(H36M)
    assert np.array_equal(g.dense(), A) and np.array_equal(g.degree(), A.sum(1))
    idx, val, n = scaled_laplacian(g)
    assert len(set(zip(*idx.tolist()))) == idx.shape[1]           # one entry per position
    L = _dense(idx, val, n)
    assert np.allclose(L, _reference_laplacian(A), atol=1e-5)
    # the loops are no T0 term: without them the degrees, hence every entry, differ
    assert np.abs(_reference_laplacian(A - np.eye(17)) - L).max() > 0.3


def test_coarsening_keeps_the_edges_inside_merged_pairs_as_self_loops():
    """As Pose2Mesh's HEM: a coarse edge weight sums the fine weights between the children (P^T A P), so the
    edge inside a merged pair becomes a self-loop of its parent, counted in its degree and Laplacian; the
    mesh graph itself has none (Pose2Mesh's build_graph adds no I)."""
    body = TubeBody(H36M, ring=8, rings=3)
    h = coarsen(Graph.from_edges(body.num_vertices, mesh_edges(body.faces)), 3)
    assert not (h.graphs[0].rows == h.graphs[0].cols).any()
    for fine, coarse in zip(h.graphs, h.graphs[1:]):
        P = np.zeros((fine.n, coarse.n))
        P[np.arange(fine.n), np.arange(fine.n) // 2] = 1           # node k -> parent k // 2
        assert np.allclose(coarse.dense(), P.T @ fine.dense() @ P)
    A = h.graphs[-1].dense()
    assert np.diag(A).max() > 0
    assert np.allclose(_dense(*scaled_laplacian(h.graphs[-1])), _reference_laplacian(A), atol=1e-5)


def test_scaled_laplacian_spectrum_lies_in_minus_one_one():
    g = joint_graph(H36M)
    idx, val, n = scaled_laplacian(g)
    L = np.zeros((n, n))
    L[idx[0], idx[1]] = val
    ev = np.linalg.eigvalsh(L)
    assert ev.min() >= -1 - 1e-5 and abs(ev.max() - 1) < 1e-4


def test_chebyshev_layer_matches_a_dense_reference():
    torch.manual_seed(0)
    g = joint_graph(H36M)
    conv = ChebConv(4, 6, g, K=3)
    idx, val, n = scaled_laplacian(g)
    L = torch.zeros(n, n)
    L[idx[0], idx[1]] = torch.from_numpy(val)
    x = torch.randn(5, n, 4)                                      # (B, N, F)
    t0, t1 = x, L @ x
    t2 = 2 * (L @ t1) - t0
    ref = conv.linear(torch.cat([t0, t1, t2], dim=-1))
    out = conv(x.transpose(0, 1).contiguous()).transpose(0, 1)    # the layer is node-major
    assert torch.allclose(out, ref, atol=1e-5)


def test_normal_and_edge_losses_are_zero_on_ground_truth_and_positive_otherwise():
    body = TubeBody(H36M)
    V = body.pose(_poses())
    faces = torch.from_numpy(body.faces)
    assert normal_loss(V, V, faces).item() < 1e-5
    assert edge_length_loss(V, V, faces).item() == 0
    W = V + 0.01 * torch.randn_like(V)
    assert normal_loss(W, V, faces).item() > 1e-3 and edge_length_loss(W, V, faces).item() > 1e-4


def test_meshnet_maps_joints_to_every_vertex(tmp_path):
    body = TubeBody(H36M, ring=8, rings=3)
    h = coarsen(Graph.from_edges(body.num_vertices, mesh_edges(body.faces)), 3)
    net = MeshNet(joint_graph(H36M), h, width=8)
    out = net(torch.randn(4, 17, 5))
    assert out.shape == (4, body.num_vertices, 3) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    write_obj(tmp_path / "m.obj", out[0].detach().numpy(), body.faces)
    lines = (tmp_path / "m.obj").read_text().splitlines()
    assert sum(ln.startswith("v ") for ln in lines) == body.num_vertices
    assert sum(ln.startswith("f ") for ln in lines) == len(body.faces)


def test_config_guards():
    cls = get_method("pose2mesh")
    with pytest.raises(ConfigError, match="posenet_epochs"):
        build(cls.Config, {"epochs": 2, "posenet_epochs": 2})
    with pytest.raises(ConfigError, match="PoseNet"):
        build(cls.Config, {"posenet.name": "semgcn"})
    with pytest.raises(ConfigError):
        build(cls.Config, {"meshnet.levels": 0})


def test_the_smoke_test_takes_the_synthetic_source_unless_a_dataset_is_named(tmp_path):
    """--smoke-test trains the tube body, which needs no anny-posed data: it reads `synthetic` (cached for
    every method) rather than generating synthetic:anny; a dataset the user names is kept."""
    from posectl.orchestrator.spec import RunSpec
    path = lambda layers, smoke: RunSpec.build("pose2mesh", layers, smoke_test=smoke, open_data=False).cfg.data.path  # noqa: E731
    assert path([], False) == "synthetic:anny" and path([], True) == "synthetic"
    assert path([{"data.path": str(tmp_path)}], True) == str(tmp_path)
    assert path([{"data.path": "synthetic:target"}], True) == "synthetic:target"


def test_edge_loss_start_counts_epochs_of_the_mesh_stage(small_dataset):
    """Like lr_step, edge_loss_start counts from the first mesh-stage epoch (the paper's mesh run starts from a
    pre-trained PoseNet); a start the run never reaches is refused."""
    cls = get_method("pose2mesh")
    with pytest.raises(ConfigError, match="edge_loss_start"):
        build(cls.Config, {"epochs": 4, "posenet_epochs": 2, "edge_loss_start": 2})
    build(cls.Config, {"epochs": 4, "posenet_epochs": 2, "edge_loss_start": 2, "edge_loss_weight": 0})
    ds = PoseDataset(small_dataset)
    tr = LiftingData(ds.load("train"), ds.layout)
    cfg = build(cls.Config, {**TINY, "epochs": 4, "posenet_epochs": 2, "edge_loss_start": 1, "data.train_stride": 16})
    m = cls(cfg, tr, Context())
    assert [m.train_epoch(e)["edge_loss_on"] for e in range(4)] == [0, 0, 0, 1]


def test_pa_mpjpe_is_aligned_on_the_14_evaluation_joints(small_dataset):
    """Pose2Mesh selects its 14 joints first, then rigid-aligns on them: PA-MPJPE (and N-MPJPE) are those of the
    14-joint slices, not of an alignment on all 17 restricted afterwards."""
    ds = PoseDataset(small_dataset)
    tr, va = LiftingData(ds.load("train"), ds.layout), LiftingData(ds.load("val"), ds.layout)
    cls = get_method("pose2mesh")
    m = cls(build(cls.Config, {**TINY, "epochs": 3, "posenet_epochs": 1, "edge_loss_start": 1}), tr, Context())
    res = m.evaluate(va, stride=4, detailed=True)
    _, verts, rows = m.predict(va, stride=4)
    idx = list(EVAL_JOINT_SETS["14"])
    J = np.einsum("jv,nvc->njc", m.body.joint_regressor, verts)
    pred, gt = metrics.root_relative(J)[:, idx], metrics.root_relative(va.targets[rows].numpy())[:, idx]
    assert res["p_mpjpe"] == pytest.approx(metrics.p_mpjpe(pred, gt) * 1000, rel=1e-6)
    assert res["n_mpjpe"] == pytest.approx(metrics.n_mpjpe_errors(pred, gt, root=None).mean() * 1000, rel=1e-6)
    assert res["mpjpe"] == pytest.approx(np.linalg.norm(pred - gt, axis=-1).mean() * 1000, rel=1e-6)
    assert "aligned on those 14 joints" in res["protocol"]


def test_training_in_process_learns_meshes_and_resumes_exactly(small_dataset):
    ds = PoseDataset(small_dataset)
    tr, va = LiftingData(ds.load("train"), ds.layout), LiftingData(ds.load("val"), ds.layout)
    cls = get_method("pose2mesh")
    cfg = build(cls.Config, {**TINY, "epochs": 3, "posenet_epochs": 1, "edge_loss_start": 1, "data.train_stride": 2})
    m = cls(cfg, tr, Context())
    before = m.evaluate(va, stride=4)
    assert all(reported_metric("pose2mesh", f"val_{k}") for k, v in before.items() if isinstance(v, (int, float)))  # declared
    r0 = m.train_epoch(0)
    assert r0["stage_mesh"] == 0 and "vertex_l1_mm" not in r0
    r1 = m.train_epoch(1)
    assert r1["stage_mesh"] == 1 and r1["edge_loss_on"] == 0 and np.isfinite(r1["vertex_l1_mm"])
    import copy
    state, rng, gen = copy.deepcopy(m.state_dict()), torch.get_rng_state(), m.gen.get_state()   # a checkpoint
    r2 = m.train_epoch(2)
    assert r2["edge_loss_on"] == 1
    after = m.evaluate(va, stride=4, detailed=True)
    assert after["mpjpe"] < before["mpjpe"] and after["mpvpe"] < before["mpvpe"]
    assert "14 joints evaluated" in after["protocol"] and np.isfinite(after["p_mpjpe"])
    # resume from the epoch-2 state: the same third epoch
    m2 = cls(cfg, tr, Context())
    m2.load_state_dict(state)
    torch.set_rng_state(rng)
    m2.gen.set_state(gen)
    r2b = m2.train_epoch(2)
    assert r2b["loss"] == pytest.approx(r2["loss"], rel=1e-5)


@pytest.mark.ray
def test_pose2mesh_trains_through_ray_train_with_two_workers(ray_session, anny_dataset, tmp_path):
    """On the anny-posed synthetic set with the anny body: the body_params column goes through the Ray Data
    ingest to both workers, whose ground-truth meshes are then exact (no fitting)."""
    from posectl.orchestrator.evaluate import evaluate_checkpoint
    from posectl.orchestrator.train import train
    tiny = {k: v for k, v in TINY.items() if not k.startswith("body.")}
    out = train("pose2mesh", [{**tiny, "body.model": "anny", "data.path": str(anny_dataset), "epochs": 2,
                               "posenet_epochs": 1, "edge_loss_start": 0, "data.eval_stride": 4}], workers=2,
                runs_dir=tmp_path, name="pm")
    hist = out.experiment.history()
    assert [r["epoch"] for r in hist] == [1, 2] and np.isfinite(hist[1]["vertex_l1_mm"])
    assert hist[1]["body_fits_new"] == 0 and hist[1]["body_fit_valid"] == 1
    test = out.results["test"]
    assert np.isfinite(test["mpjpe"]) and np.isfinite(test["mpvpe"]) and "body parameters" in test["protocol"]
    ev = evaluate_checkpoint(out.experiment.checkpoints / "best.pt", split="val", stride=4, joints="all")
    assert "17 joints evaluated" in ev["metrics"]["protocol"]
    # predicted and ground-truth meshes to look at
    from posectl.cli import main
    with pytest.raises(SystemExit) as e:
        main(["meshes", str(out.experiment.root), "--n", "2", "--split", "val"])
        raise SystemExit(0)
    folder = out.experiment.root / "meshes"
    assert e.value.code == 0 and (folder / "meshes.png").stat().st_size > 5000
    assert len(list(folder.glob("val_*_pred.obj"))) == 2 and len(list(folder.glob("val_*_gt.obj"))) == 2
    with pytest.raises(SystemExit) as e:             # a method without meshes: one clear line
        main(["meshes", str(tmp_path / "nope")])
    assert e.value.code == 2
