"""`gpa`: unsupervised domain adaptation for lifting by global position alignment (+ local augmentation).

"Global Adaptation meets Local Generalization" (PoseDA; Chai, Jiang, Hwang, Wang, ICCV 2023; docs
docs/methods/gpa.md). Labelled source data (2D, 3D, cameras) and *unlabelled* target 2D poses with their
cameras' intrinsics. Per training batch:
  1. local augmentation (modes `local`, `gpa_local`): a share `local_prob` of the source poses get
     PoseAug-style bone-angle, bone-length and rotation perturbations (core.alignment.local_augment;
     the paper's learned local augmentation was not released, this is its non-adversarial form);
  2. global position alignment (modes `gpa`, `gpa_local`): a share `gpa_prob` of the batch is paired
     with randomly drawn target 2D poses; each source pose moves rigidly to the depth and image position
     where it has its partner's 2D size and root location, and is projected through the partner's
     camera (core.alignment.global_position_alignment). The source 2D inputs thereby follow the target
     domain's scale/position distribution; the root-relative 3D targets are unchanged;
  3. a lifting step (MPJPE) on (new 2D, root-relative source 3D), with random horizontal flips.
Mode `source_only` is the baseline. Model selection uses the *source* validation split (no target
labels exist in this setting); the test split is the target domain's, and target 3D is read only there:
the target training input is loaded without its 3D column.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from posectl.config import field
from posectl.core.alignment import global_position_alignment, local_augment
from posectl.core.camera import normalize_screen, project
from posectl.core.metrics import mpjpe_loss
from posectl.core.skeleton import flip_poses
from posectl.datasets.lifting import LiftingData
from posectl.datasets.store import dataset_id
from posectl.errors import ConfigError
from posectl.methods.base import Context, DataInput, register
from posectl.methods.lifting import LiftingConfig, LiftingMethod


@dataclass
class TargetConfig:
    path: str = field("synthetic:target", "target-domain dataset; its 2D is used for training, its 3D only at test")
    split: str = field("train", "target split whose unlabelled 2D poses (and camera intrinsics) drive the alignment")
    test_split: str = field("test", "target split evaluated at the end (the only place target 3D is read)")
    keypoints: str = field("gt", "target 2D source")


@dataclass
class LocalAugConfig:
    angle_deg: float = field(15.0, "largest change of a limb bone's direction (degrees)")
    length: float = field(0.1, "bone-length jitter per symmetric group (+- fraction)", lt=1)
    rotation_deg: float = field(30.0, "rotation about the vertical axis through the root (+- degrees)")
    tilt_deg: float = field(10.0, "rotation about the two other axes (+- degrees)")


@dataclass
class GPAConfig(LiftingConfig):
    mode: Literal["source_only", "gpa", "local", "gpa_local"] = field(
        "gpa", "source_only (baseline), gpa (global position alignment), local (local augmentation), gpa_local (both)")
    gpa_prob: float = field(1.0, "share of each batch moved to a target pose's position (the rest keeps its source 2D)",
                            le=1)
    local_prob: float = field(0.5, "share of each batch given a local augmentation (local modes)", le=1)
    depth_jitter: float = field(0.0, "lognormal sigma of an extra depth factor after alignment (0: off)")
    train_flip: bool = field(True, "random horizontal-flip augmentation")
    target: TargetConfig = field(TargetConfig, "the unlabelled target domain")
    local: LocalAugConfig = field(LocalAugConfig, "local pose augmentation strengths")

    def validate(self) -> None:
        super().validate()
        if self.backbone.receptive_field != 1:
            raise ConfigError("backbone.receptive_field: gpa aligns single poses; use a single-frame backbone (1)")
        for name in ("gpa_prob", "local_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name}: must be in [0, 1]")
        if self.depth_jitter < 0:
            raise ConfigError("depth_jitter: must be >= 0")
        if dataset_id(self.data.path) == dataset_id(self.target.path):
            raise ConfigError(f"target.path: the target domain ({self.target.path}) is also the labelled training "
                              "data (data.path); gpa never trains on target 3D - give a separate source dataset")
        if self.target.split == self.target.test_split:
            raise ConfigError("target.split: the unlabelled target 2D used for alignment and the target test data "
                              "must be different splits")


@register
class GPA(LiftingMethod):
    name = "gpa"
    description = "GPA / PoseDA: unsupervised domain adaptation by global position alignment (+ local aug.) (ICCV'23)"
    Config = GPAConfig

    @classmethod
    def inputs(cls, cfg: GPAConfig) -> dict[str, DataInput]:
        t = cfg.target
        return {"target": DataInput(t.path, t.split, t.keypoints, with_3d=False),
                "test": DataInput(t.path, t.test_split, t.keypoints, with_3d=True)}

    def __init__(self, cfg: GPAConfig, data: LiftingData, ctx: Context):
        super().__init__(cfg, data, ctx)
        torch.manual_seed(cfg.seed)            # identical initial weights on every worker
        J = data.num_joints
        self.model = ctx.prepare_model(cfg.backbone.build(J, J, data.layout))
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, amsgrad=True)
        self.sched = torch.optim.lr_scheduler.ExponentialLR(self.opt, gamma=cfg.lr_decay)
        a = data.arrays
        self.root = torch.from_numpy(a.joints_3d[:, data.layout.root].astype(np.float32))   # (N, 3) metres
        self.intr = torch.from_numpy(a.intrinsics.astype(np.float32))
        self.wh = torch.from_numpy(a.image_size.astype(np.float32))
        self.target: dict[str, torch.Tensor] | None = None    # taken from ctx.inputs on first use (so that
                                                              # evaluating a checkpoint needs no target input)

    def _target(self) -> dict[str, torch.Tensor]:
        if self.target is None:
            t = self.ctx.inputs.get("target")
            if t is None:
                raise ConfigError("gpa: no target input (the orchestrator loads it from target.path)")
            self.target = {"kp": torch.from_numpy(t.keypoints_2d.astype(np.float32)),
                           "intr": torch.from_numpy(t.intrinsics.astype(np.float32)),
                           "wh": torch.from_numpy(t.image_size.astype(np.float32))}
        return self.target

    # -- one batch of (2D, root-relative 3D) pairs -------------------------------------------------
    def _batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, int]]:
        cfg, data, layout = self.cfg, self.data, self.data.layout
        x, y = data.inputs[idx].clone(), data.targets[idx].clone()
        B = len(idx)
        counts = {"aligned": 0, "local": 0}
        if cfg.mode == "source_only":
            return x, y, counts
        local = torch.zeros(B, dtype=torch.bool)
        if cfg.mode in ("local", "gpa_local"):
            local = torch.rand(B, generator=self.gen) < cfg.local_prob
            if local.any():
                lc = cfg.local
                y[local] = local_augment(y[local], layout, self.gen, angle_deg=lc.angle_deg, length=lc.length,
                                         rotation_deg=lc.rotation_deg, tilt_deg=lc.tilt_deg)
        aligned = torch.zeros(B, dtype=torch.bool)
        if cfg.mode in ("gpa", "gpa_local"):
            aligned = torch.rand(B, generator=self.gen) < cfg.gpa_prob
        src = ~aligned & local                      # locally changed, seen through their own camera
        if src.any():
            P = y[src] + self.root[idx[src]][:, None]
            i = idx[src]
            x[src] = normalize_screen(project(P, self.intr[i]), self.wh[i, 0], self.wh[i, 1])
        if aligned.any():
            t, n = self._target(), int(aligned.sum())
            pick = torch.randint(len(t["kp"]), (n,), generator=self.gen)
            P = y[aligned] + self.root[idx[aligned]][:, None]
            intr = t["intr"][pick]
            P = global_position_alignment(P, t["kp"][pick], intr[:, :2], intr[:, 2:4], layout.root)
            if cfg.depth_jitter > 0:       # slide the root along its viewing ray; the pose keeps its size
                r = P[:, layout.root:layout.root + 1]
                P = P - r + r * torch.exp(torch.randn(n, 1, 1, generator=self.gen) * cfg.depth_jitter)
            x[aligned] = normalize_screen(project(P, intr), t["wh"][pick, 0], t["wh"][pick, 1])
        counts["aligned"], counts["local"] = int(aligned.sum()), int(local.sum())
        return x, y, counts

    def _flipped_batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, int]]:
        x, y, counts = self._batch(idx)
        if self.cfg.train_flip:
            layout = self.data.layout
            flip = torch.rand(len(idx), generator=self.gen) < 0.5
            x = torch.where(flip[:, None, None], flip_poses(x, layout), x)
            y = torch.where(flip[:, None, None], flip_poses(y, layout), y)
        return x, y, counts

    def train_epoch(self, epoch: int) -> dict[str, float]:
        cfg, data, device = self.cfg, self.data, self.ctx.device
        self.model.train()
        batches = list(data.batches(self.per_worker(), shuffle=True, generator=self.gen,
                                    stride=cfg.data.train_stride))
        total, n, aligned, local = torch.zeros((), device=device), 0, 0, 0     # summed on the device
        for step, idx in enumerate(batches):
            x, y, c = self._flipped_batch(idx)
            aligned, local = aligned + c["aligned"], local + c["local"]
            x, y = x.to(device), y.to(device)
            loss = mpjpe_loss(self.model(x[:, None])[:, 0], y)     # every backbone takes 1-frame windows
            self.optimize(loss, self.opt, max_norm=1.0)
            total += loss.detach() * len(idx)
            n += len(idx)
            self.ctx.progress(step + 1, len(batches))
        nbn = self.refresh_batch_norm(lambda i: self._flipped_batch(i)[0][:, None], self.gen)
        lr = self.opt.param_groups[0]["lr"]
        self.sched.step()
        return {"train_loss_mm": 1000 * total.item() / max(n, 1), "lr": lr, "train_samples": n,
                "aligned_share": aligned / max(n, 1), "local_share": local / max(n, 1), "precise_bn_batches": nbn}

    def resumables(self) -> dict[str, Any]:
        return {"optimizer": self.opt, "scheduler": self.sched}
