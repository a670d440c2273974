"""DH-AUG's generator and WGAN-GP critics (Huang et al., ECCV 2022; docs/methods/dhaug.md).

Generator: noise (128) -> MLP with residual blocks -> 31 free DH angles (the 3 global-rotation
angles included; mapped into their ranges by `DHSkeleton.ranged`) and a root translation. Critics: a 3D critic on the root-centred pose plus bone-cosine/length features, a 2D
critic on projections. Video variants take a clip and add frame-difference (motion) branches.
"""
from __future__ import annotations

import torch
from torch import nn

from posectl.core.kinematics import FREE_ANGLES, kcs_features


class ResBlock(nn.Module):
    """Linear-ReLU-Linear with identity skip, then ReLU (DH-AUG's `myResNet`)."""

    def __init__(self, width: int):
        super().__init__()
        self.l1, self.l2 = nn.Linear(width, width), nn.Linear(width, width)

    def forward(self, x):
        return torch.relu(x + self.l2(torch.relu(self.l1(x))))


def _trunk(inp: int, width: int, blocks: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inp, width), nn.ReLU(), *[ResBlock(width) for _ in range(blocks)])


class DHGenerator(nn.Module):
    """z (B, noise) -> (B, frames, 35): 31 free DH angles (raw), 1 unused, 3 root translation (raw)."""

    OUT = len(FREE_ANGLES) + 1 + 3

    def __init__(self, width: int = 256, noise_dim: int = 128, frames: int = 1):
        super().__init__()
        self.noise_dim, self.frames = noise_dim, frames
        self.net = nn.Sequential(_trunk(noise_dim, width), nn.Linear(width, self.OUT * frames))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(z).view(z.shape[0], self.frames, self.OUT)
        raw_angles = out[..., : len(FREE_ANGLES)]
        translation = torch.tanh(out[..., -3:]) * 10.0       # metres, world frame (+-10 m as released)
        return raw_angles, translation


class Critic3D(nn.Module):
    """Root-centred 16x3 pose branch + 30 KCS features (15 adjacent-bone cosines, 15 lengths) branch."""

    def __init__(self, width: int = 256, joints: int = 16):
        super().__init__()
        self.pose = _trunk(joints * 3, width)
        self.kcs = _trunk(30, width)
        self.head = nn.Sequential(nn.Linear(2 * width, 100), nn.ReLU(), ResBlock(100), nn.Linear(100, 1))

    def forward(self, poses: torch.Tensor) -> torch.Tensor:
        a = self.pose(poses.flatten(1))
        b = self.kcs(kcs_features(poses))
        return self.head(torch.cat([a, b], 1))


class Critic2D(nn.Module):
    """32 -> W -> W -> W (+ skip from the first) -> W -> W -> 1, LeakyReLU."""

    def __init__(self, width: int = 256, joints: int = 16):
        super().__init__()
        self.l1 = nn.Linear(joints * 2, width)
        self.l2, self.l3 = nn.Linear(width, width), nn.Linear(width, width)
        self.l4, self.l5 = nn.Linear(width, width), nn.Linear(width, width)
        self.out = nn.Linear(width, 1)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, kp: torch.Tensor) -> torch.Tensor:
        h1 = self.act(self.l1(kp.flatten(1)))
        h = self.act(self.l3(self.act(self.l2(h1)))) + h1
        h = self.act(self.l5(self.act(self.l4(h))))
        return self.out(h)


class MotionCritic3D(nn.Module):
    """Clip critic (B, T, 16, 3): per-frame KCS cosines, their frame-to-frame differences, raw 3D
    positions and 3D differences, one trunk per branch (video DH-AUG)."""

    def __init__(self, frames: int, width: int = 256, joints: int = 16):
        super().__init__()
        T = frames
        self.cos = _trunk(T * 15, width)
        self.dcos = _trunk((T - 1) * 15, width)
        self.pos = _trunk(T * joints * 3, width)
        self.dpos = _trunk((T - 1) * joints * 3, width)
        self.head = nn.Sequential(nn.Linear(4 * width, 100), nn.ReLU(), ResBlock(100), nn.Linear(100, 1))

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        cos = kcs_features(clips)[..., :15]
        feats = [self.cos(cos.flatten(1)), self.dcos(cos.diff(dim=1).flatten(1)),
                 self.pos(clips.flatten(1)), self.dpos(clips.diff(dim=1).flatten(1))]
        return self.head(torch.cat(feats, 1))


class MotionCritic2D(nn.Module):
    """Clip critic (B, T, 16, 2): 2D positions and root-relative frame-to-frame differences."""

    def __init__(self, frames: int, width: int = 256, joints: int = 16):
        super().__init__()
        T = frames
        self.pos = _trunk(T * joints * 2, width)
        self.diff = _trunk((T - 1) * joints * 2, width)
        self.head = nn.Sequential(nn.Linear(2 * width, 100), nn.ReLU(), ResBlock(100), nn.Linear(100, 1))

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        rel = clips - clips[..., :1, :]
        return self.head(torch.cat([self.pos(clips.flatten(1)), self.diff(rel.diff(dim=1).flatten(1))], 1))

