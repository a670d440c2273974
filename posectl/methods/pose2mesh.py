"""`pose2mesh`: 2D pose -> 3D pose -> body mesh (Pose2Mesh; Choi, Moon, Lee, ECCV 2020; docs/methods/pose2mesh.md).

Two networks, trained in one run:
  1. PoseNet lifts the (per-sample standardised) 2D joints to root-relative 3D joints. The first
     `posenet_epochs` epochs train it alone with an L1 loss (the paper pre-trains it in a separate run);
  2. MeshNet (posectl.models.meshnet) takes, per joint, the 2D input and PoseNet's 3D (detached) and
     regresses every mesh vertex with Chebyshev graph convolutions, coarse to fine.
Losses of the full model (paper weights): vertex L1 + 0.1 x surface-normal loss + 20 x edge-length loss
(from mesh-stage epoch `edge_loss_start` on) + 1e-3 x [L1 of the mesh-regressed joints + L1 of PoseNet's joints]
(joint terms in mm, vertex/normal/edge terms in metres, as in the paper). RMSprop, step decay x0.1.

Ground-truth meshes come from the body model (`body.model`). `anny` (the default, free) and `smpl` (the user's
files) are parametric bodies (posectl.core.bodies): on a dataset posed with the body (`synthetic:anny`, the
default data, stores each row's parameters) the meshes are exact; on any other dataset the body is fitted to
each row's 3D joints once (cached on disk, `MeshTargets`), with badly fitted rows masked out of the mesh losses
and the vertex error, as the paper masks its SMPLify fits. `tube` (posectl.core.mesh) is a skeleton-driven
mesh, an exact function of the 3D joints, so any pose dataset has exact mesh ground truth without fitting. None is SMPL as the paper used it: absolute mesh errors
are not comparable with the paper's figures.
Evaluation: MPJPE / PA-MPJPE of the joints regressed from the predicted mesh (root-aligned; the paper's
14 joints by default, `eval_joints=all` for 17; as in the paper, PA-MPJPE is aligned on the evaluated joints
alone), MPVPE over the vertices after subtracting the regressed root, and PoseNet's own MPJPE. Model
selection on the validation split.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from posectl.config import field
from posectl.core import metrics
from posectl.core.bodies import SMPL_KEYS, AnnyBody, ParametricBody, SMPLBody
from posectl.core.mesh import (Graph, TubeBody, coarsen, edge_length_loss, joint_graph, mesh_edges,
                               normal_loss)
from posectl.core.skeleton import EVAL_JOINT_SETS
from posectl.datasets.lifting import LiftingData
from posectl.datasets.synthetic import cache_dir
from posectl.errors import ConfigError, DataError
from posectl.methods.base import (POSE_METRICS, Context, DataConfig, Method, TrainConfig, protocol_tail, register,
                                  summary)
from posectl.methods.lifting import BackboneConfig
from posectl.models.meshnet import MeshNet


@dataclass
class BodyConfig:
    model: Literal["tube", "anny", "smpl"] = field(
        "anny", "body model giving the mesh topology and ground truth (tube: free skeleton-driven body, exact for "
                "any 3D pose; anny: free parametric body, pseudo-GT fitted to the 3D joints; smpl: the user's SMPL "
                "files, pseudo-GT fitted likewise)")
    ring: int = field(12, "tube: vertices around each bone", ge=3)
    rings: int = field(5, "tube: rings along each bone (both ends included)", ge=2)
    topology: str = field("notoes_collapse10pc", "anny: mesh topology (notoes_collapse10pc: 1229 vertices, CPU; "
                                                 "notoes_collapse5pc / 3pc smaller; notoes, anny: full resolution)")
    path: str = field("", "smpl: directory with SMPL_NEUTRAL.npz (or .pkl of plain arrays) and J_regressor_h36m.npy")
    fit_iters: int = field(150, "anny/smpl: optimiser steps of the per-frame fit to the 3D joints")
    fit_threshold_mm: float = field(25.0, "anny/smpl: frames whose fit deviates more (mean per joint, mm) get no "
                                          "mesh losses and no vertex error (the paper's fitting_thr)")


@dataclass
class Pose2MeshData(DataConfig):
    path: str = field("synthetic:anny", "dataset: 'synthetic:anny' (synthetic motions posed with the anny body: "
                                        "exact meshes), 'synthetic', 'synthetic:target' or a prepared dataset directory")


@dataclass
class MeshNetConfig:
    width: int = field(64, "base channel width (paper: 64; coarse levels use up to 4x)", ge=1)
    levels: int = field(4, "coarsening levels between the mesh and its coarsest graph (each halves the nodes)")
    cheb_order: int = field(3, "Chebyshev polynomial order K (paper: 3)", ge=1)


@dataclass
class Pose2MeshConfig(TrainConfig):
    data: Pose2MeshData = field(Pose2MeshData, "dataset options")
    batch_size: int = field(64, "global batch size (paper: 64)")
    lr_decay: float = field(1.0, "extra multiplicative decay per epoch (the paper uses only the step below)")
    posenet: BackboneConfig = field(BackboneConfig, "PoseNet: the lifting MLP (paper: width 4096, 2 blocks)")
    meshnet: MeshNetConfig = field(MeshNetConfig, "MeshNet: the coarse-to-fine graph network")
    body: BodyConfig = field(BodyConfig, "body model")
    posenet_epochs: int = field(2, "first epochs that train PoseNet alone (paper: a separate pre-training run)")
    optimizer: Literal["rmsprop", "adam"] = field("rmsprop", "optimiser (paper: RMSprop)")
    lr_step: float = field(0.8, "share of the mesh-stage epochs after which the lr drops x0.1 (paper: 12 of 15)", le=1)
    normal_loss_weight: float = field(0.1, "weight of the surface-normal loss")
    edge_loss_weight: float = field(20.0, "weight of the edge-length loss")
    edge_loss_start: int = field(3, "epoch of the mesh stage (0-based, counted after the posenet_epochs, like "
                                    "lr_step) from which the edge-length loss is on (paper: 7 of 15)")
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
        mesh_epochs = self.epochs - self.posenet_epochs
        if self.edge_loss_weight > 0 and self.edge_loss_start >= mesh_epochs:
            raise ConfigError(f"edge_loss_start: counts mesh-stage epochs, so it must be < epochs - posenet_epochs "
                              f"= {mesh_epochs} (else the edge-length loss is never applied)")
        if self.body.model == "smpl" and not self.body.path:
            raise ConfigError("body.path: the smpl body needs the directory of the user's SMPL files")
        if self.body.fit_iters < 0 or self.body.fit_threshold_mm <= 0:
            raise ConfigError("body: fit_iters >= 0 and fit_threshold_mm > 0")
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
    if cfg.model == "tube":
        return TubeBody(layout, ring=cfg.ring, rings=cfg.rings)
    if cfg.model == "anny":
        try:
            body = AnnyBody(topology=cfg.topology)
        except (ImportError, ValueError) as e:
            raise ConfigError(f"body.model anny: {e}") from None
    else:
        d = Path(cfg.path).expanduser()
        model = next((d / n for n in ("SMPL_NEUTRAL.npz", "SMPL_NEUTRAL.pkl") if (d / n).is_file()), None)
        if model is None or not (d / "J_regressor_h36m.npy").is_file():
            raise ConfigError(f"body.path: {d} must hold SMPL_NEUTRAL.npz (or .pkl) and J_regressor_h36m.npy")
        body = SMPLBody(load_smpl(model), load_regressor(d / "J_regressor_h36m.npy"), where=str(model))
    body.fit_iters = cfg.fit_iters
    return body


def load_smpl(path: Path) -> dict:
    """The user's SMPL model file: an .npz, or a .pkl of plain arrays (restricted unpickler: files that
    pickle chumpy or scipy objects are refused with a hint to convert them)."""
    from posectl.datasets.safe_npz import UnsafePickleError, load_npz, load_pickle
    if path.suffix == ".npz":
        raw = load_npz(path)
    elif path.suffix == ".pkl":
        try:
            raw = load_pickle(path)
        except UnsafePickleError as e:
            raise DataError(f"{e}; SMPL files that pickle chumpy or scipy objects must first be converted to an .npz "
                            f"of plain arrays ({', '.join(SMPL_KEYS)})") from None
    else:
        raise DataError(f"{path}: the SMPL model must be an .npz or .pkl file")
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected a dict of arrays")
    return raw


def load_regressor(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read the Human3.6M joint regressor ({str(e)[:80]})") from None


FIT_VERSION = 2          # bump when fitting changes: cached fits of other versions are not reused


def row_digests(x: np.ndarray) -> np.ndarray:
    """A 64-bit digest of each row's float32 bytes (vectorised multiply-xorshift; collisions ~2^-64)."""
    u = np.ascontiguousarray(x, dtype=np.float32).reshape(len(x), -1).view(np.uint32).astype(np.uint64)
    with np.errstate(over="ignore"):
        mult = (np.arange(1, u.shape[1] + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) | np.uint64(1)
        h = ((u + np.uint64(0x632BE59BD9B4E019)) * mult).sum(1, dtype=np.uint64)
        h ^= h >> np.uint64(31)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(29)
    return h


class MeshTargets:
    """Ground-truth meshes of a dataset's rows.
      * tube body: exact, computed per batch from the joints;
      * parametric body on a dataset with a body_params column of its size: exact, from the parameters;
      * parametric body otherwise: per-row parameters fitted to the row's 3D joints once (in chunks, with a
        progress callback) and cached on disk under the posectl cache, one file per body setting, each fit
        keyed by a digest of the row's joints (so runs, seeds, workers' shards and Tune trials share them);
        rows whose fit error exceeds the threshold are masked out of the mesh losses and the vertex error."""

    chunk = 256

    def __init__(self, body, cfg: BodyConfig, data: LiftingData):
        self.body, self.cfg, self.data = body, cfg, data
        self.parametric = isinstance(body, ParametricBody)
        self.exact = None
        if not self.parametric:
            return
        bp = data.arrays.body_params
        if bp is not None and bp.shape[1] == body.param_dim:   # posed with this body: nothing to fit
            self.exact = torch.from_numpy(bp)
            return
        n = len(data)
        version = ""
        if body.name == "anny":
            import importlib.metadata
            version = importlib.metadata.version("anny")
        tag = (f"{body.name}:{version}:{cfg.topology if body.name == 'anny' else Path(cfg.path).expanduser().resolve()}:"
               f"{cfg.fit_iters}:{body.param_dim}:{FIT_VERSION}")
        self.file = cache_dir() / "bodyfits" / f"{hashlib.sha256(tag.encode()).hexdigest()[:20]}.npz"
        self.digest = row_digests(data.targets.numpy())
        self.slot = np.full(n, -1, dtype=np.int64)         # row -> index into params / error
        self.params = np.zeros((0, body.param_dim), dtype=np.float32)
        self.error = np.zeros(0, dtype=np.float32)
        self.digests = np.zeros(0, dtype=np.uint64)       # digest of each entry of params / error
        dig, par, err = self._read()
        if len(dig):
            pos = np.searchsorted(dig, self.digest).clip(0, len(dig) - 1)
            found = dig[pos] == self.digest
            self.params, self.error, self.digests = par, err, dig
            self.slot[found] = pos[found]

    def _read(self):
        """The cache file's (sorted digests, params, errors); empty when absent or unreadable."""
        import zipfile
        empty = (np.zeros(0, np.uint64), np.zeros((0, self.body.param_dim), np.float32), np.zeros(0, np.float32))
        if not self.file.is_file():
            return empty
        try:
            with np.load(self.file, allow_pickle=False) as z:
                dig, par, err = z["digest"].astype(np.uint64), z["params"].astype(np.float32), z["error"].astype(np.float32)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return empty                                    # unreadable cache: refit
        if par.shape[1:] != (self.body.param_dim,) or not len(dig) == len(par) == len(err):
            return empty
        order = np.argsort(dig, kind="stable")
        return dig[order], par[order], err[order]

    def _write(self) -> None:
        """Merge this process's fits into the cache file (others may have added theirs) and replace it
        atomically; best effort: a failed write only means refitting later."""
        dig, par, err = self._read()
        dig = np.concatenate([dig, self.digests])
        par, err = np.concatenate([par, self.params]), np.concatenate([err, self.error])
        dig, first = np.unique(dig, return_index=True)
        tmp = self.file.with_suffix(f".{os.getpid()}.tmp.npz")
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            np.savez(tmp, digest=dig, params=par[first], error=err[first])
            os.replace(tmp, self.file)
        except OSError:
            tmp.unlink(missing_ok=True)

    def ensure(self, rows: torch.Tensor, progress=None) -> int:
        """Fit the rows that have no parameters yet; returns how many were fitted."""
        if not self.parametric or self.exact is not None:
            return 0
        rows = np.unique(np.asarray(rows))
        todo = rows[self.slot[rows] < 0]
        # rows with identical joints are fitted once
        _, uniq = np.unique(self.digest[todo], return_index=True)
        todo_u = todo[np.sort(uniq)]
        for k in range(0, len(todo_u), self.chunk):
            part = todo_u[k:k + self.chunk]
            fit = self.body.fit(self.data.targets[torch.from_numpy(part)])
            start = len(self.params)
            self.params = np.concatenate([self.params, fit.params.numpy().astype(np.float32)])
            self.error = np.concatenate([self.error, fit.error_mm.numpy().astype(np.float32)])
            self.digests = np.concatenate([self.digests, self.digest[part]])
            self.slot[part] = start + np.arange(len(part))
            if progress is not None:
                progress(min(k + self.chunk, len(todo_u)), len(todo_u))
        if len(todo):
            lookup = {int(d): i for i, d in enumerate(self.digests)}   # duplicates of fitted rows
            for r in todo[self.slot[todo] < 0]:
                self.slot[r] = lookup[int(self.digest[r])]
            self._write()
        return len(todo_u)

    @property
    def exact_meshes(self) -> bool:
        """Every row's ground-truth mesh is exact (no fit that may fail)."""
        return not self.parametric or self.exact is not None

    def get(self, rows: torch.Tensor, joints: torch.Tensor | None = None):
        """(vertices (B, V, 3) root-aligned, valid mask (B,) bool) of the rows."""
        if not self.parametric:       # on the device of `joints`
            y = self.data.targets[rows] if joints is None else joints
            return self.body.pose(y), torch.ones(len(rows), dtype=torch.bool, device=y.device)
        if self.exact is not None:
            with torch.no_grad():
                return self.body.vertices(self.exact[torch.as_tensor(rows)]), torch.ones(len(rows), dtype=torch.bool)
        self.ensure(rows)
        k = self.slot[np.asarray(rows)]
        with torch.no_grad():
            v = self.body.vertices(torch.from_numpy(self.params[k]))
        return v, torch.from_numpy(self.error[k] <= self.cfg.fit_threshold_mm)

    def valid_share(self, rows) -> float:
        if not self.parametric or self.exact is not None:
            return 1.0
        k = self.slot[np.asarray(rows)]
        e = self.error[k[k >= 0]]
        return float(np.mean(e <= self.cfg.fit_threshold_mm)) if len(e) else float("nan")


@register
class Pose2Mesh(Method):
    name = "pose2mesh"
    metrics = POSE_METRICS + ("mpvpe", "mesh_gt_valid", "mpjpe_all17", "posenet_mpjpe")
    description = "Pose2Mesh: 2D pose -> 3D pose -> mesh with a coarse-to-fine graph network (ECCV'20)"
    Config = Pose2MeshConfig
    smoke_overrides = {"epochs": 2, "posenet_epochs": 1, "edge_loss_start": 0, "posenet.width": 256,
                       "meshnet.width": 16, "batch_size": 64, "body.model": "tube"}   # tube: exact meshes, no fit
    # the tube body needs no anny-posed data: the shared synthetic source spares generating synthetic:anny
    # (81 s on 2 cores, after anny's own first build of ~90 s) unless the user named a dataset
    smoke_defaults = {"data.path": "synthetic"}

    def __init__(self, cfg: Pose2MeshConfig, data: LiftingData, ctx: Context):
        super().__init__(cfg, data, ctx)
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
        self._targets: dict[int, MeshTargets] = {}

    def mesh_targets(self, data: LiftingData) -> MeshTargets:
        if id(data) not in self._targets:
            self._targets[id(data)] = MeshTargets(self.body, self.cfg.body, data)
        return self._targets[id(data)]

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
        # counted from the start of the mesh stage, like lr_step: the paper's mesh run starts from a pre-trained
        # PoseNet, so its epoch 7 of 15 excludes the PoseNet-only epochs
        edge_on = mesh_stage and epoch - cfg.posenet_epochs >= cfg.edge_loss_start
        lr = self._lr(epoch)
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.posenet.train()
        self.meshnet.train(mesh_stage)
        faces, reg = self.faces.to(device), self.regressor.to(device)
        batches = list(data.batches(self.per_worker(), shuffle=True, generator=self.gen,
                                    stride=cfg.data.train_stride))
        targets = self.mesh_targets(data)
        fitted = targets.ensure(torch.cat(batches), progress=self.ctx.progress) if mesh_stage and batches else 0
        sums = {k: torch.zeros((), device=device)                  # on the device: one sync per epoch
                for k in ("loss", "pose_l1_mm", "vertex_l1_mm", "normal", "edge_mm", "mesh_joint_l1_mm")}
        n = 0
        for step, idx in enumerate(batches):
            x, y = data.fetch(idx, device, None, cfg.data.device_fraction)   # indexed on the device if held there
            p3d, verts = self._forward(x, mesh_stage)
            pose_l1 = (p3d - y).abs().mean() * 1000                        # mm
            if not mesh_stage:
                loss = pose_l1
                parts = {"pose_l1_mm": pose_l1}
            else:
                gt, valid = targets.get(idx, y)
                gt, valid = gt.to(device), valid.to(device)
                if targets.exact_meshes or valid.all():     # exact meshes are all valid: no sync
                    pv, gv = verts, gt
                else:                                          # frames with a bad body fit: no mesh losses
                    pv, gv = verts[valid], gt[valid]
                if targets.exact_meshes or len(pv):
                    v_l1 = (pv - gv).abs().mean()
                    n_l = normal_loss(pv, gv, faces)
                    e_l = edge_length_loss(pv, gv, faces)
                else:
                    v_l1 = n_l = e_l = verts.sum() * 0
                mj_l1 = (torch.einsum("jv,bvc->bjc", reg, verts) - y).abs().mean() * 1000
                loss = (v_l1 + cfg.normal_loss_weight * n_l + (cfg.edge_loss_weight * e_l if edge_on else 0)
                        + cfg.joint_loss_weight * (mj_l1 + pose_l1))
                parts = {"pose_l1_mm": pose_l1, "vertex_l1_mm": v_l1 * 1000, "normal": n_l, "edge_mm": e_l * 1000,
                         "mesh_joint_l1_mm": mj_l1}
            self.optimize(loss, self.opt)
            b = len(idx)
            sums["loss"] += loss.detach() * b
            for k, v in parts.items():
                sums[k] += v.detach() * b
            n += b
            self.ctx.progress(step + 1, len(batches))
        sums = dict(zip(sums, torch.stack(list(sums.values())).tolist()))
        out = {k: v / max(n, 1) for k, v in sums.items() if mesh_stage or k in ("loss", "pose_l1_mm")}
        out.update({"lr": lr, "train_samples": n, "stage_mesh": float(mesh_stage), "edge_loss_on": float(edge_on)})
        if targets.parametric and batches:
            out.update({"body_fits_new": fitted, "body_fit_valid": targets.valid_share(torch.cat(batches))})
        return out

    @torch.no_grad()
    def predict(self, data: LiftingData, stride: int = 1, batch_size: int = 512, rows: np.ndarray | None = None,
                progress=None):
        """(PoseNet 3D (N, J, 3), vertices (N, V, 3), row indices), metres, root-relative camera frame."""
        nets = (self.posenet, self.meshnet)
        modes = [m.training for m in nets]
        for m in nets:
            m.eval()
        device = next(self.meshnet.parameters()).device
        P, V, R = [], [], []
        batches = list(data.batches(batch_size, shuffle=False, stride=stride) if rows is None
                       else torch.from_numpy(np.asarray(rows)).split(batch_size))
        for step, idx in enumerate(batches):
            p3d, verts = self._forward(data.inputs[idx].to(device))
            P.append(p3d.float().cpu())
            V.append(verts.float().cpu())
            R.append(idx)
            if progress is not None:
                progress(step + 1, len(batches))
        for m, mode in zip(nets, modes):
            m.train(mode)
        return torch.cat(P).numpy(), torch.cat(V).numpy(), torch.cat(R).numpy()

    def lift(self, data: LiftingData, progress=None) -> dict[str, np.ndarray]:
        """Joints regressed from the predicted mesh (what `evaluate` scores), the mesh and PoseNet's 3D,
        all root-relative (root: the mesh joints' root)."""
        p3d, verts, _ = self.predict(data, progress=progress)
        joints = np.einsum("jv,nvc->njc", self.body.joint_regressor, verts)
        root = joints[:, data.layout.root:data.layout.root + 1]
        p3d = p3d - p3d[:, data.layout.root:data.layout.root + 1]
        return {"joints_3d": joints - root, "vertices": verts - root, "posenet_joints_3d": p3d,
                "faces": np.asarray(self.body.faces)}

    def predict_meshes(self, data: LiftingData, rows: np.ndarray):
        """(predicted vertices, ground-truth vertices, faces) of the given rows, root-aligned, metres."""
        _, verts, rows = self.predict(data, rows=rows)
        root = np.einsum("v,nvc->nc", self.body.joint_regressor[data.layout.root], verts)[:, None]
        gt, _ = self.mesh_targets(data).get(torch.from_numpy(rows))
        return verts - root, gt.numpy(), self.body.faces

    def evaluate(self, data: LiftingData, stride: int = 1, detailed: bool = False) -> dict[str, Any]:
        layout = data.layout
        p3d, verts, rows = self.predict(data, stride=stride)
        gt = data.targets[rows].numpy()
        mesh_joints = np.einsum("jv,nvc->njc", self.body.joint_regressor, verts)
        root = mesh_joints[:, layout.root:layout.root + 1]
        joints = list(EVAL_JOINT_SETS[self.cfg.eval_joints])
        # as Pose2Mesh: select the evaluation joints first, then fit the PA (and N) alignment on them alone
        res = metrics.evaluate_poses(mesh_joints - root, gt, actions=data.actions[rows], root=layout.root,
                                     joints=joints, align_on="subset")
        self.mesh_targets(data).ensure(rows, progress=self.ctx.progress)           # fits, once, with progress
        gt_verts, valid = self.mesh_targets(data).get(torch.from_numpy(rows))      # root at the origin already
        valid = valid.numpy()
        res["mpvpe"] = (float(np.linalg.norm(verts - root - gt_verts.numpy(), axis=-1)[valid].mean() * 1000)
                        if valid.any() else float("nan"))
        res["mesh_gt_valid"] = float(valid.mean())
        res["mpjpe_all17"] = float(metrics.mpjpe(mesh_joints, gt, root=layout.root) * 1000)
        res["posenet_mpjpe"] = float(metrics.joint_errors(p3d, gt, layout.root)[:, joints].mean() * 1000)
        res["protocol"] = (f"{layout.name} joints regressed from the predicted mesh ({len(joints)} joints evaluated), "
                           f"root-aligned, PA-MPJPE / N-MPJPE aligned on those {len(joints)} joints, 2D "
                           f"{data.keypoints or self.cfg.data.keypoints}, per-sample mean and action-wise mean; MPVPE "
                           f"over {self.body.num_vertices} vertices of the {self.cfg.body.model} body, root-aligned"
                           f"{self._gt_note(data, valid)}"
                           f"{protocol_tail(stride, self.cfg.precision)}")
        return summary(res, detailed)

    def _gt_note(self, data: LiftingData, valid: np.ndarray) -> str:
        t = self.mesh_targets(data)
        if not t.parametric:
            return " (exact ground truth)"
        if t.exact is not None:
            return " (exact ground truth: the dataset's body parameters)"
        return (f" (pseudo-GT: body fitted to the 3D joints, {valid.mean():.0%} of frames within "
                f"{self.cfg.body.fit_threshold_mm:g} mm)")

    def weights(self) -> dict[str, Any]:
        return {"posenet": self.posenet_raw.state_dict(), "meshnet": self.meshnet_raw.state_dict()}

    def load_weights(self, weights: dict[str, Any]) -> None:
        self.posenet_raw.load_state_dict(weights["posenet"])
        self.meshnet_raw.load_state_dict(weights["meshnet"])

    def resumables(self) -> dict[str, Any]:
        return {"optimizer": self.opt}
