"""A compact HRNet-style 2D keypoint detector (Sun et al. 2019): parallel multi-resolution branches with
repeated fusion, per-joint heatmaps from the high-resolution branch.

Stem: two 3x3 convolutions (the first with stride 2) -> the high-resolution branch at 1/2 of the input
(HRNet-W32 uses 1/4 at 256-384 px inputs; small CPU-sized crops keep more resolution). Each of `stages`
stages holds one more branch than the last (each at half the resolution and twice the width of the
branch above), `blocks` residual blocks per branch, then a fusion unit where every branch receives the
sum of all branches resized to its resolution (strided 3x3 convolutions down, 1x1 + nearest upsampling
up); the last fusion feeds only the high-resolution branch (so every weight receives a gradient, as DDP
requires). A 1x1 convolution on the high-resolution branch gives the heatmaps.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class BasicBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.a = _conv_bn(ch, ch)
        self.b = _conv_bn(ch, ch, relu=False)

    def forward(self, x):
        return F.relu(x + self.b(self.a(x)))


class Fuse(nn.Module):
    """Exchange information across branches: out_i = relu(sum_j resize_j->i(x_j))."""

    def __init__(self, widths: list[int], outputs: int | None = None):
        super().__init__()
        self.widths = widths
        self.paths = nn.ModuleList()
        for i, wi in enumerate(widths[:outputs]):
            row = nn.ModuleList()
            for j, wj in enumerate(widths):
                if j == i:
                    row.append(nn.Identity())
                elif j > i:                                   # lower resolution -> up
                    row.append(_conv_bn(wj, wi, k=1, relu=False))
                else:                                         # higher resolution -> down by 2^(i-j)
                    steps = [_conv_bn(wj, wj, stride=2) for _ in range(i - j - 1)]
                    row.append(nn.Sequential(*steps, _conv_bn(wj, wi, stride=2, relu=False)))
            self.paths.append(row)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for i, row in enumerate(self.paths):
            acc = 0
            for j, path in enumerate(row):
                y = path(xs[j])
                if j > i:
                    y = F.interpolate(y, size=xs[i].shape[-2:], mode="nearest")
                acc = acc + y
            out.append(F.relu(acc))
        return out


class HRNet(nn.Module):
    def __init__(self, joints: int, width: int = 16, stages: int = 3, blocks: int = 2):
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(3, width, stride=2), _conv_bn(width, width), BasicBlock(width))
        self.stages = nn.ModuleList()
        self.transitions = nn.ModuleList()
        widths = [width]
        for s in range(1, stages):
            new = width * 2 ** s
            self.transitions.append(_conv_bn(widths[-1], new, stride=2))   # a new, lower branch
            widths = widths + [new]
            branches = nn.ModuleList(nn.Sequential(*[BasicBlock(w) for _ in range(blocks)]) for w in widths)
            last = s == stages - 1           # the last fusion feeds only the high-resolution branch (the head's)
            self.stages.append(nn.ModuleDict({"branches": branches, "fuse": Fuse(widths, 1 if last else None)}))
        self.head = nn.Conv2d(width, joints, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images -> (B, J, H/2, W/2) heatmaps."""
        xs = [self.stem(x)]
        for trans, stage in zip(self.transitions, self.stages):
            xs = xs + [trans(xs[-1])]
            xs = [b(v) for b, v in zip(stage["branches"], xs)]
            xs = stage["fuse"](xs)
        return self.head(xs[0])
