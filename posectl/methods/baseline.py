"""`baseline`: supervised 2D->3D lifting (SimpleBaseline of Martinez et al. or VideoPose3D's TCN).

Loss: MPJPE on root-relative camera-frame joints; Adam with per-epoch exponential decay
(VideoPose3D schedule); optional horizontal-flip training augmentation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from posectl.config import field
from posectl.core.metrics import mpjpe_loss
from posectl.core.skeleton import flip_poses
from posectl.datasets.lifting import LiftingData
from posectl.methods.base import Context, register
from posectl.methods.lifting import LiftingConfig, LiftingMethod


@dataclass
class BaselineConfig(LiftingConfig):
    train_flip: bool = field(True, "random horizontal-flip augmentation during training")
    weight_decay: float = field(0.0, "Adam weight decay")


@register
class Baseline(LiftingMethod):
    name = "baseline"
    description = "supervised 2D->3D lifting (SimpleBaseline or VideoPose3D)"
    Config = BaselineConfig

    def __init__(self, cfg: BaselineConfig, data: LiftingData, ctx: Context):
        super().__init__(cfg, data, ctx)
        torch.manual_seed(cfg.seed)  # identical initial weights on every worker
        J = data.num_joints
        self.model = ctx.prepare_model(cfg.backbone.build(J, J, data.layout))
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                    amsgrad=True)
        self.sched = torch.optim.lr_scheduler.ExponentialLR(self.opt, gamma=cfg.lr_decay)

    def _frame_input(self) -> bool:      # (B, J, 2) input for single-frame nets: no window copy
        return self.cfg.backbone.receptive_field == 1 and self.cfg.backbone.name in ("simple", "semgcn")

    @classmethod
    def stream_context(cls, cfg: BaselineConfig) -> int:
        return cfg.backbone.receptive_field // 2

    def _pair(self, idx: torch.Tensor, data: LiftingData | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One training batch (2D input, root-relative 3D) of `data` (default: the split; a piece of a
        streamed split) on the worker's device, with the random horizontal flip drawn there
        (datasets/lifting.py: LiftingData.fetch keeps the split on the GPU when it fits)."""
        data, cfg = data or self.data, self.cfg
        x, y = data.fetch(idx, self.ctx.device, None if self._frame_input() else cfg.backbone.receptive_field,
                          cfg.data.device_fraction)
        if cfg.train_flip:
            flip = self.rand(len(idx)) < 0.5
            mask = flip.view(-1, *([1] * (x.dim() - 1)))
            x = torch.where(mask, flip_poses(x, data.layout), x)
            y = torch.where(flip[:, None, None], flip_poses(y, data.layout), y)
        return x, y

    def train_epoch(self, epoch: int) -> dict[str, float]:
        cfg, data, device = self.cfg, self.data, self.ctx.device
        self.model.train()
        bs, stride = self.per_worker(), cfg.data.train_stride
        total, n, step = torch.zeros((), device=device), 0, 0      # summed on the device: one sync per epoch
        steps = -(-len(range(0, len(data), stride)) // bs)
        frame_input = self._frame_input()
        for part in data.parts(self.gen, multiple_of=bs):     # the split, or pieces of a streamed one
            for idx in list(part.batches(bs, shuffle=True, generator=self.gen, stride=stride)):
                x, y = self._pair(idx, part)
                pred = self.model(x)
                loss = mpjpe_loss(pred if frame_input else pred[:, 0], y)
                self.optimize(loss, self.opt)
                total += loss.detach() * len(idx)  # no per-step sync
                n += len(idx)
                step += 1
                self.ctx.progress(step, max(step, steps))
        nbn = self.refresh_batch_norm(lambda i: self._pair(i, part)[0], self.gen, part)
        lr = self.opt.param_groups[0]["lr"]
        self.sched.step()
        return {"train_loss_mm": 1000 * total.item() / max(n, 1), "lr": lr, "train_samples": n,
                "precise_bn_batches": nbn}

    def resumables(self) -> dict[str, Any]:
        return {"optimizer": self.opt, "scheduler": self.sched}
