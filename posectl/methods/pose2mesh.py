"""`pose2mesh`: 2D pose -> 3D pose -> body mesh (Pose2Mesh; Choi, Moon, Lee, ECCV 2020; docs methods.md §5).

Two networks, trained in one run:
  1. PoseNet lifts the (per-sample standardised) 2D joints to root-relative 3D joints. The first
     `posenet_epochs` epochs train it alone with an L1 loss (the paper pre-trains it in a separate run);
  2. MeshNet (posectl.models.meshnet) takes, per joint, the 2D input and PoseNet's 3D (detached) and
     regresses every mesh vertex with Chebyshev graph convolutions, coarse to fine.
Losses of the full model (paper weights): vertex L1 + 0.1 x surface-normal loss + 20 x edge-length loss
(from epoch `edge_loss_start` on) + 1e-3 x [L1 of the mesh-regressed joints + L1 of PoseNet's joints]
(joint terms in mm, vertex/normal/edge terms in metres, as in the paper). RMSprop, step decay x0.1.

Ground-truth meshes come from the body model (posectl.core.mesh): the default `tube` body is a
skeleton-driven mesh, an exact function of the 3D joints, so any pose dataset has exact mesh ground
truth (absolute numbers are therefore not comparable with the SMPL-based paper figures).
Evaluation: MPJPE / PA-MPJPE of the joints regressed from the predicted mesh (root-aligned; the paper's
14 joints by default, `eval_joints=all` for 17), MPVPE over the vertices after subtracting the regressed
root, and PoseNet's own MPJPE. Model selection on the validation split.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from posectl.config import field
from posectl.core import metrics
from posectl.core.mesh import (Graph, TubeBody, coarsen, edge_length_loss, joint_graph, mesh_edges,
                               normal_loss)
from posectl.core.skeleton import EVAL_JOINT_SETS
from posectl.datasets.lifting import LiftingData
from posectl.errors import ConfigError
from posectl.methods.base import Context, TrainConfig, register, seed_everything
from posectl.methods.lifting import BackboneConfig
from posectl.models.meshnet import MeshNet


@dataclass
class BodyConfig:
    model: Literal["tube"] = field("tube", "body model giving the mesh topology and ground truth "
                                           "(tube: free skeleton-driven body, exact for any 3D pose)")
    ring: int = field(12, "tube: vertices around each bone")
    rings: int = field(5, "tube: rings along each bone (both ends included)")


@dataclass
class MeshNetConfig:
    width: int = field(64, "base channel width (paper: 64; coarse levels use up to 4x)")
    levels: int = field(4, "coarsening levels between the mesh and its coarsest graph (each halves the nodes)")
    cheb_order: int = field(3, "Chebyshev polynomial order K (paper: 3)")


@dataclass
class Pose2MeshConfig(TrainConfig):
    batch_size: int = field(64, "global batch size (paper: 64)")
    lr_decay: float = field(1.0, "extra multiplicative decay per epoch (the paper uses only the step below)")
    posenet: BackboneConfig = field(BackboneConfig, "PoseNet: the lifting MLP (paper: width 4096, 2 blocks)")
    meshnet: MeshNetConfig = field(MeshNetConfig, "MeshNet: the coarse-to-fine graph network")
    body: BodyConfig = field(BodyConfig, "body model")
    posenet_epochs: int = field(2, "first epochs that train PoseNet alone (paper: a separate pre-training run)")
    optimizer: Literal["rmsprop", "adam"] = field("rmsprop", "optimiser (paper: RMSprop)")
    lr_step: float = field(0.8, "share of the mesh-stage epochs after which the lr drops x0.1 (paper: 12 of 15)")
    normal_loss_weight: float = field(0.1, "weight of the surface-normal loss")
    edge_loss_weight: float = field(20.0, "weight of the edge-length loss")
    edge_loss_start: int = field(5, "epoch (0-based) from which the edge-length loss is on (paper: 7 of 15)")
    joint_loss_weight: float = field(1e-3, "weight of the two joint L1 terms (in mm)")
    standardize_input: bool = field(True, "per-sample standardisation of the 2D input (paper)")
    eval_joints: Literal["14", "16", "all"] = field("14", "evaluation joints: 14 (paper), 16, all 17")

    def validate(self) -> None:
        super().validate()
        if self.posenet.name != "simple" or self.posenet.receptive_field != 1:
            raise ConfigError("posenet.name: Pose2Mesh's PoseNet is the single-frame MLP (simple, receptive_field 1)")
        if not 0 <= self.posenet_epochs < self.epochs:
            raise ConfigError(f"posenet_epochs: must be in [0, epochs) = [0, {self.epochs}) so that MeshNet trains")
        if not 0 < self.lr_step <= 1:
            raise ConfigError("lr_step: must be in (0, 1]")
        if self.meshnet.levels < 1 or self.meshnet.cheb_order < 1 or self.meshnet.width < 2:
            raise ConfigError("meshnet: levels >= 1, cheb_order >= 1, width >= 2")
        for name in ("normal_loss_weight", "edge_loss_weight", "joint_loss_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be >= 0")


def standardize(x: torch.Tensor) -> torch.Tensor:
    """Per sample and axis: subtract the mean over joints, divide by the std over joints."""
    return (x - x.mean(-2, keepdim=True)) / x.std(-2, keepdim=True).clamp_min(1e-6)


def build_body(cfg: BodyConfig, layout):
    if layout.name != "h36m17":
        raise ConfigError(f"pose2mesh: needs the h36m17 joint layout (the dataset has {layout.name})")
    return TubeBody(layout, ring=cfg.ring, rings=cfg.rings)


@register
class Pose2Mesh:
    name = "pose2mesh"
    description = "Pose2Mesh: 2D pose -> 3D pose -> mesh with a coarse-to-fine graph network (ECCV'20)"
    Config = Pose2MeshConfig
    smoke_overrides = {"epochs": 2, "posenet_epochs": 1, "posenet.width": 256, "meshnet.width": 16,
                       "batch_size": 64}

    def __init__(self, cfg: Pose2MeshConfig, data: LiftingData, ctx: Context):
        self.cfg, self.data, self.ctx = cfg, data, ctx
        self.gen = seed_everything(cfg.seed + ctx.rank)
        torch.manual_seed(cfg.seed)                 # identical initial weights on every worker
        layout = data.layout
        self.body = build_body(cfg.body, layout)
        mesh = coarsen(Graph.from_edges(self.body.num_vertices, mesh_edges(self.body.faces)), cfg.meshnet.levels,
                       seed=0)
        self.faces = torch.from_numpy(self.body.faces)
        self.regressor = torch.from_numpy(self.body.joint_regressor)
        J = layout.num_joints
        self.posenet_raw = cfg.posenet.build(J, J, layout)
        self.meshnet_raw = MeshNet(joint_graph(layout), mesh, width=cfg.meshnet.width, K=cfg.meshnet.cheb_order,
                                   in_features=5)
        self.posenet = ctx.prepare_model(self.posenet_raw)
        self.meshnet = ctx.prepare_model(self.meshnet_raw)
        params = list(self.posenet.parameters()) + list(self.meshnet.parameters())
        opt = torch.optim.RMSprop if cfg.optimizer == "rmsprop" else torch.optim.Adam
        self.opt = opt(params, lr=cfg.lr)
        self.mesh_levels = mesh.sizes

    def _lr(self, epoch: int) -> float:
        cfg = self.cfg
        step = cfg.posenet_epochs + round(cfg.lr_step * (cfg.epochs - cfg.posenet_epochs))
        return cfg.lr * cfg.lr_decay ** epoch * (0.1 if epoch >= step else 1.0)

    def _forward(self, x2d: torch.Tensor, mesh: bool = True):
        x = standardize(x2d) if self.cfg.standardize_input else x2d
        p3d = self.posenet(x)
        if not mesh:
            return p3d, None
        verts = self.meshnet(torch.cat([x, p3d.detach()], dim=-1))
        return p3d, verts

    def train_epoch(self, epoch: int) -> dict[str, float]:
        cfg, data, device = self.cfg, self.data, self.ctx.device
        mesh_stage = epoch >= cfg.posenet_epochs
        edge_on = mesh_stage and epoch >= cfg.edge_loss_start
        lr = self._lr(epoch)
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.posenet.train()
        self.meshnet.train(mesh_stage)
        faces, reg = self.faces.to(device), self.regressor.to(device)
        per_worker = max(1, cfg.batch_size // self.ctx.world_size)
        batches = list(data.batches(per_worker, shuffle=True, generator=self.gen, stride=cfg.data.train_stride))
        sums = {k: torch.zeros(()) for k in ("loss", "pose_l1_mm", "vertex_l1_mm", "normal", "edge_mm", "mesh_joint_l1_mm")}
        n = 0
        for step, idx in enumerate(batches):
            x, y = data.inputs[idx].to(device), data.targets[idx].to(device)
            p3d, verts = self._forward(x, mesh_stage)
            pose_l1 = (p3d - y).abs().mean() * 1000                        # mm
            if not mesh_stage:
                loss = pose_l1
                parts = {"pose_l1_mm": pose_l1}
            else:
                gt = self.body.pose(y)
                v_l1 = (verts - gt).abs().mean()
                n_l = normal_loss(verts, gt, faces)
                e_l = edge_length_loss(verts, gt, faces)
                mj_l1 = (torch.einsum("jv,bvc->bjc", reg, verts) - y).abs().mean() * 1000
                loss = (v_l1 + cfg.normal_loss_weight * n_l + (cfg.edge_loss_weight * e_l if edge_on else 0)
                        + cfg.joint_loss_weight * (mj_l1 + pose_l1))
                parts = {"pose_l1_mm": pose_l1, "vertex_l1_mm": v_l1 * 1000, "normal": n_l, "edge_mm": e_l * 1000,
                         "mesh_joint_l1_mm": mj_l1}
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            b = len(idx)
            sums["loss"] += loss.detach().cpu() * b
            for k, v in parts.items():
                sums[k] += v.detach().cpu() * b
            n += b
            self.ctx.progress(step + 1, len(batches))
        out = {k: v.item() / max(n, 1) for k, v in sums.items() if mesh_stage or k in ("loss", "pose_l1_mm")}
        out.update({"lr": lr, "train_samples": n, "stage_mesh": float(mesh_stage), "edge_loss_on": float(edge_on)})
        return out

    @torch.no_grad()
    def predict(self, data: LiftingData, stride: int = 1, batch_size: int = 512, rows: np.ndarray | None = None):
        """(PoseNet 3D (N, J, 3), vertices (N, V, 3), row indices), metres, root-relative camera frame."""
        nets = (self.posenet, self.meshnet)
        modes = [m.training for m in nets]
        for m in nets:
            m.eval()
        device = next(self.meshnet.parameters()).device
        P, V, R = [], [], []
        batches = (data.batches(batch_size, shuffle=False, stride=stride) if rows is None
                   else torch.from_numpy(np.asarray(rows)).split(batch_size))
        for idx in batches:
            p3d, verts = self._forward(data.inputs[idx].to(device))
            P.append(p3d.cpu())
            V.append(verts.cpu())
            R.append(idx)
        for m, mode in zip(nets, modes):
            m.train(mode)
        return torch.cat(P).numpy(), torch.cat(V).numpy(), torch.cat(R).numpy()

    def predict_meshes(self, data: LiftingData, rows: np.ndarray):
        """(predicted vertices, ground-truth vertices, faces) of the given rows, root-aligned, metres."""
        _, verts, rows = self.predict(data, rows=rows)
        root = np.einsum("v,nvc->nc", self.body.joint_regressor[data.layout.root], verts)[:, None]
        gt = self.body.pose(data.targets[torch.from_numpy(rows)]).numpy()
        return verts - root, gt, self.body.faces

    def evaluate(self, data: LiftingData, stride: int = 1, detailed: bool = False) -> dict[str, Any]:
        layout = data.layout
        p3d, verts, rows = self.predict(data, stride=stride)
        gt = data.targets[rows].numpy()
        mesh_joints = np.einsum("jv,nvc->njc", self.body.joint_regressor, verts)
        root = mesh_joints[:, layout.root:layout.root + 1]
        joints = list(EVAL_JOINT_SETS[self.cfg.eval_joints])
        res = metrics.evaluate_poses(mesh_joints - root, gt, actions=data.actions[rows], root=layout.root, joints=joints)
        gt_verts = self.body.pose(torch.from_numpy(gt)).numpy()                # root at the origin already
        res["mpvpe"] = float(np.linalg.norm(verts - root - gt_verts, axis=-1).mean() * 1000)
        res["mpjpe_all17"] = float(metrics.mpjpe(mesh_joints, gt, root=layout.root) * 1000)
        res["posenet_mpjpe"] = float(metrics.joint_errors(p3d, gt, layout.root)[:, joints].mean() * 1000)
        res["protocol"] = (f"{layout.name} joints regressed from the predicted mesh ({len(joints)} joints evaluated), "
                           f"root-aligned, 2D {self.cfg.data.keypoints}, per-sample mean and action-wise mean; MPVPE "
                           f"over {self.body.num_vertices} vertices of the {self.cfg.body.model} body, root-aligned"
                           f"{f', every {stride}th frame' if stride > 1 else ''}")
        if not detailed:
            res = {k: v for k, v in res.items() if not isinstance(v, (dict, list))}
        return res

    def state_dict(self) -> dict[str, Any]:
        return {"model": {"posenet": self.posenet_raw.state_dict(), "meshnet": self.meshnet_raw.state_dict()},
                "optimizer": self.opt.state_dict(), "generator": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.posenet_raw.load_state_dict(state["model"]["posenet"])
        self.meshnet_raw.load_state_dict(state["model"]["meshnet"])
        if "optimizer" in state:
            self.opt.load_state_dict(state["optimizer"])
            self.gen.set_state(state["generator"])
