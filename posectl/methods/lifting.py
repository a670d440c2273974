"""Pieces shared by every 2D->3D lifting method: backbone choice, prediction and evaluation."""
from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from posectl.config import field
from posectl.core import metrics
from posectl.core.skeleton import EVAL_JOINT_SETS, Layout, flip_poses
from posectl.datasets.lifting import LiftingData
from posectl.errors import ConfigError
from posectl.methods.base import Method, TrainConfig, protocol_tail, summary, unwrap
from posectl.models import build_backbone
from posectl.models.norm import precise_bn


@dataclass
class BackboneConfig:
    name: Literal["simple", "videopose", "semgcn"] = field(
        "simple", "SimpleBaseline MLP, VideoPose3D temporal convolutions or SemGCN graph convolutions")
    receptive_field: int = field(1, "frames seen per prediction (videopose: 1, 27, 81, 243)")
    width: int = field(1024, "hidden width (MLP units / conv channels / graph features; SemGCN's paper: 128)", ge=1)
    blocks: int = field(2, "residual blocks: simple, semgcn (paper: 4), videopose with receptive_field 1 (PoseAug: 4); "
                           "videopose derives them from receptive_field otherwise")
    dropout: float = field(0.5, "dropout probability", lt=1)

    def build(self, joints_in: int, joints_out: int, layout: Layout | None = None) -> torch.nn.Module:
        if self.name == "semgcn":
            if self.receptive_field != 1:
                raise ConfigError("backbone.receptive_field: semgcn is single-frame (use 1)")
            if layout is None or layout.num_joints != joints_in or joints_in != joints_out:
                raise ConfigError(f"backbone.name=semgcn: needs a skeleton graph with {joints_in} joints")
            return build_backbone("semgcn", joints_in, joints_out, parents=layout.parents, hidden=self.width,
                                  blocks=self.blocks, dropout=self.dropout)
        if self.name == "simple":
            if self.receptive_field != 1:
                raise ConfigError("backbone.receptive_field: the simple backbone is single-frame (use 1)")
            return build_backbone("simple", joints_in, joints_out, hidden=self.width, blocks=self.blocks,
                                  dropout=self.dropout)
        if self.receptive_field not in (1, 3, 9, 27, 81, 243):
            raise ConfigError("backbone.receptive_field: must be one of 1, 3, 9, 27, 81, 243")
        if self.receptive_field == 1:     # single frame: `blocks` pointwise residual blocks (PoseAug's VPose 1f)
            return build_backbone("videopose_1f", joints_in, joints_out, filter_widths=(1,) * (self.blocks + 1),
                                  channels=self.width, dropout=self.dropout)
        return build_backbone("videopose_1f", joints_in, joints_out, receptive_field=self.receptive_field,
                              channels=self.width, dropout=self.dropout)


@dataclass
class LiftingConfig(TrainConfig):
    backbone: BackboneConfig = field(BackboneConfig, "lifting network")
    test_flip: bool = field(False, "flip test-time augmentation (average with the mirrored input)")
    eval_joints: Literal["all", "16", "14"] = field(
        "all", "evaluation joint set: all 17, 16 without Neck/Nose (PoseAug), 14 (Pose2Mesh / 3DHP PCK)")
    precise_bn: int = field(-1, "after each training epoch, re-estimate batch-norm statistics over this many "
                                "training batches (PreciseBN; 0: off, keep the moving averages; -1: 50 for "
                                "semgcn, whose moving averages lag its weights, off for the others)", ge=-1)

    def validate(self) -> None:
        super().validate()
        if self.precise_bn < -1:
            raise ConfigError("precise_bn: a number of batches >= 0, or -1 (automatic)")

    def precise_bn_batches(self) -> int:
        if self.precise_bn == -1:
            return 50 if self.backbone.name == "semgcn" else 0
        return self.precise_bn


class LiftingMethod(Method):
    """Base for methods whose product is a 2D->3D lifting network `self.model`."""

    model: torch.nn.Module
    cfg: LiftingConfig

    def refresh_batch_norm(self, inputs: Callable[[torch.Tensor], torch.Tensor], generator: torch.Generator,
                           data: LiftingData | None = None) -> int:
        """PreciseBN at the end of a training epoch: `inputs(idx)` makes the network input of a training
        batch exactly as the training step does (augmentations included); the statistics are averaged
        over `precise_bn` such batches of this worker's shard (or of `data`: a streamed split's last
        piece), then over the workers."""
        n = self.cfg.precise_bn_batches()
        if n == 0:
            return 0
        device = self.ctx.device
        idxs = itertools.islice((data or self.data).batches(self.per_worker(), shuffle=True, generator=generator,
                                                  stride=self.cfg.data.train_stride), n)
        return precise_bn(unwrap(self.model), (inputs(i).to(device) for i in idxs))

    def predict(self, data: LiftingData, batch_size: int = 4096, stride: int = 1,
                progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Root-relative 3D predictions (metres) for every `stride`-th row, with the row indices."""
        model = self.model
        was_training = model.training
        model.eval()
        rf = self.cfg.backbone.receptive_field
        out, rows = [], []
        device = next(model.parameters()).device
        batches = list(data.batches(batch_size, shuffle=False, stride=stride))
        with torch.no_grad():
            for step, idx in enumerate(batches):
                x, _ = data.fetch(idx, device, rf, self.cfg.data.device_fraction)
                y = model(x)[:, 0]
                if self.cfg.test_flip:
                    yf = model(flip_poses(x, data.layout))[:, 0]
                    y = (y + flip_poses(yf, data.layout)) / 2
                y[:, data.layout.root] = 0
                out.append(y.float().cpu())      # fp32 metrics, whatever the autocast dtype
                rows.append(idx)
                if progress is not None:
                    progress(step + 1, len(batches))
        model.train(was_training)
        return torch.cat(out).numpy(), torch.cat(rows).numpy()

    def lift(self, data: LiftingData, progress: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
        return {"joints_3d": self.predict(data, progress=progress)[0]}

    def evaluate(self, data: LiftingData, stride: int = 1, detailed: bool = False) -> dict[str, Any]:
        pred, rows = self.predict(data, stride=stride)
        gt = data.targets[rows].numpy()
        joints = None
        if self.cfg.eval_joints != "all":
            if data.layout.name != "h36m17":
                raise ConfigError(f"eval_joints={self.cfg.eval_joints} needs the h36m17 layout")
            joints = list(EVAL_JOINT_SETS[self.cfg.eval_joints])
        res = metrics.evaluate_poses(pred, gt, actions=data.actions[rows], root=data.layout.root, joints=joints)
        n_j = len(joints) if joints else data.layout.num_joints
        res["protocol"] = (f"{data.layout.name} ({n_j} joints evaluated), root-relative, 2D {data.keypoints or self.cfg.data.keypoints}, "
                           f"per-sample mean and action-wise mean, flip TTA {'on' if self.cfg.test_flip else 'off'}"
                           f"{protocol_tail(stride, self.cfg.precision)}")
        return summary(res, detailed)
