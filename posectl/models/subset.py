"""Run a lifting backbone on a subset of the dataset's joints and give the full layout back."""
from __future__ import annotations

import torch
from torch import nn


class SubsetLifter(nn.Module):
    """Wraps a backbone trained on `keep` joints (e.g. the 16-joint PoseAug/DH-AUG skeleton).

    Input with all `full` joints is reduced to `keep`; input already reduced is used as is. The output
    has the same number of joints as the input: joints the backbone does not predict are copied from
    `fill` (a predicted joint), so they must be left out of evaluation (e.g. `eval_joints=16`).
    """

    def __init__(self, backbone: nn.Module, keep: tuple[int, ...], full: int, fill: dict[int, int]):
        super().__init__()
        self.backbone = backbone
        self.keep, self.full = tuple(keep), full
        rev = {j: i for i, j in enumerate(keep)}
        index = [rev[j] if j in rev else rev[fill[j]] for j in range(full)]
        self.register_buffer("index", torch.tensor(index), persistent=False)
        self.receptive_field = getattr(backbone, "receptive_field", 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] == len(self.keep):
            return self.backbone(x)
        if x.shape[-2] != self.full:
            raise ValueError(f"expected {self.full} or {len(self.keep)} joints, got {x.shape[-2]}")
        y = self.backbone(x[..., list(self.keep), :])
        return y.index_select(-2, self.index)
