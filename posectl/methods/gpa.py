"""`gpa`: unsupervised domain adaptation for lifting by global position alignment (+ local augmentation).

"Global Adaptation meets Local Generalization" (PoseDA; Chai, Jiang, Hwang, Wang, ICCV 2023; docs
docs/methods/gpa.md). Labelled source data (2D, 3D, cameras) and *unlabelled* target 2D poses with their
cameras' intrinsics. Per training batch:
  1. local augmentation (modes `local`, `gpa_local`): a share `local_prob` of the source poses get
     PoseAug-style bone-angle, bone-length and rotation perturbations (core.alignment.local_apply;
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
from posectl.core.alignment import global_position_alignment, local_apply, local_draws
from posectl.core.camera import normalize_screen, project
from posectl.core.metrics import mpjpe_loss
from posectl.core.skeleton import flip_poses
from posectl.datasets.lifting import DeviceRows, LiftingData
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
        self._on: DeviceRows | None = None

    def _target(self) -> dict[str, torch.Tensor]:
        """The target's 2D, intrinsics and image sizes, on the device."""
        if self.target is None:
            t = self.ctx.inputs.get("target")
            if t is None:
                raise ConfigError("gpa: no target input (the orchestrator loads it from target.path)")
            self.target = {k: torch.from_numpy(v.astype(np.float32)).to(self.ctx.device) for k, v in
                           (("kp", t.keypoints_2d), ("intr", t.intrinsics), ("wh", t.image_size))}
        return self.target

    def _rows(self) -> DeviceRows:
        """The source rows (2D, 3D, root, camera) on the device, where batches are gathered and moved."""
        if self._on is None:
            d = self.data
            self._on = d.on_device(self.ctx.device, inputs=d.inputs, targets=d.targets, root=self.root, intr=self.intr,
                                   wh=self.wh)
        return self._on

    # -- an epoch's draws, then one batch of (2D, root-relative 3D) pairs per step -----------------------
    def _limits(self) -> dict[str, float]:
        lc = self.cfg.local
        return {"angle_deg": lc.angle_deg, "length": lc.length, "rotation_deg": lc.rotation_deg,
                "tilt_deg": lc.tilt_deg}

    def _plan(self, batches: list[torch.Tensor]) -> list[dict[str, Any]]:
        """The random draws of every step over `batches`, made up front on the host from the seeded stream
        `gen`, in the order the steps apply them (a run draws the same numbers on every device), with the
        batch rows each one touches; copied to the device in one transfer per kind (no copy, no sync in
        the steps). How many rows a draw moves is random: here it is known without a device sync."""
        cfg, layout, limits = self.cfg, self.data.layout, self._limits()
        steps = []
        for idx in batches:
            B = len(idx)
            s: dict[str, Any] = {"idx": idx}
            local = aligned = torch.zeros(B, dtype=torch.bool)
            if cfg.mode in ("local", "gpa_local"):
                local = torch.rand(B, generator=self.gen) < cfg.local_prob
                if local.any():
                    s.update({f"local.{k}": v for k, v in
                              local_draws(int(local.sum()), layout, self.gen, **limits).items()})
            if cfg.mode in ("gpa", "gpa_local"):
                aligned = torch.rand(B, generator=self.gen) < cfg.gpa_prob
                if aligned.any():
                    n = int(aligned.sum())
                    s["pick"] = torch.randint(len(self._target()["kp"]), (n,), generator=self.gen)
                    if cfg.depth_jitter > 0:
                        s["jitter"] = torch.randn(n, 1, 1, generator=self.gen)
            s["local_rows"], s["aligned_rows"] = local.nonzero()[:, 0], aligned.nonzero()[:, 0]
            s["src_rows"] = (~aligned & local).nonzero()[:, 0]   # locally changed, seen through their own camera
            if cfg.train_flip:
                s["flip"] = torch.rand(B, generator=self.gen) < 0.5
            steps.append(s)
        dev = self.ctx.device
        for key in sorted({k for s in steps for k in s}):     # one transfer per kind, then split per step
            have = [s for s in steps if key in s]
            parts = torch.cat([s[key] for s in have]).to(dev).split([len(s[key]) for s in have])
            for s, part in zip(have, parts):
                s[key] = part
        return steps

    def _batch(self, s: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """One step's (2D, root-relative 3D) pairs on the device, from its planned draws `s` (_plan)."""
        cfg, layout, on = self.cfg, self.data.layout, self._rows()
        idx = s["idx"]
        x, y = on["inputs"][idx], on["targets"][idx]
        if len(s["local_rows"]):
            r = s["local_rows"]
            draws = {k[6:]: v for k, v in s.items() if k.startswith("local.")}
            y = y.index_put((r,), local_apply(y[r], draws, layout, **self._limits()))
        if len(s["src_rows"]):
            r = s["src_rows"]
            i = idx[r]
            P = y[r] + on["root"][i][:, None]
            x = x.index_put((r,), normalize_screen(project(P, on["intr"][i]), on["wh"][i, 0], on["wh"][i, 1]))
        if len(s["aligned_rows"]):
            t, r, pick = self._target(), s["aligned_rows"], s["pick"]
            P = y[r] + on["root"][idx[r]][:, None]
            intr = t["intr"][pick]
            P = global_position_alignment(P, t["kp"][pick], intr[:, :2], intr[:, 2:4], layout.root)
            if "jitter" in s:       # slide the root along its viewing ray; the pose keeps its size
                root = P[:, layout.root:layout.root + 1]
                P = P - root + root * torch.exp(s["jitter"] * cfg.depth_jitter)
            x = x.index_put((r,), normalize_screen(project(P, intr), t["wh"][pick, 0], t["wh"][pick, 1]))
        if "flip" in s:
            flip = s["flip"][:, None, None]
            x = torch.where(flip, flip_poses(x, layout), x)
            y = torch.where(flip, flip_poses(y, layout), y)
        return x, y

    def train_epoch(self, epoch: int) -> dict[str, float]:
        cfg, data, device = self.cfg, self.data, self.ctx.device
        self.model.train()
        batches = list(data.batches(self.per_worker(), shuffle=True, generator=self.gen,
                                    stride=cfg.data.train_stride))
        plan = self._plan(batches)
        total, n, aligned, local = torch.zeros((), device=device), 0, 0, 0     # summed on the device
        for step, s in enumerate(plan):
            with self.fp32():
                x, y = self._batch(s)
            aligned, local = aligned + len(s["aligned_rows"]), local + len(s["local_rows"])
            loss = mpjpe_loss(self.model(x[:, None])[:, 0], y)     # every backbone takes 1-frame windows
            self.optimize(loss, self.opt, max_norm=1.0)
            total += loss.detach() * len(y)
            n += len(y)
            self.ctx.progress(step + 1, len(plan))
        def bn_inputs(i: torch.Tensor) -> torch.Tensor:
            with self.fp32():
                return self._batch(self._plan([i])[0])[0][:, None]
        nbn = self.refresh_batch_norm(bn_inputs, self.gen)
        lr = self.opt.param_groups[0]["lr"]
        self.sched.step()
        return {"train_loss_mm": 1000 * total.item() / max(n, 1), "lr": lr, "train_samples": n,
                "aligned_share": aligned / max(n, 1), "local_share": local / max(n, 1), "precise_bn_batches": nbn}

    def resumables(self) -> dict[str, Any]:
        return {"optimizer": self.opt, "scheduler": self.sched}
