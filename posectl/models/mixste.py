"""A MixSTE-style spatial-temporal transformer used as a diffusion denoiser (D3DP / PoSynDA, docs/methods/posynda.md).

Input: the noisy root-relative 3D clip x_t (B, T, J, 3), the 2D clip it is conditioned on (B, T, J, 2)
and the diffusion step t (B,). Every joint of every frame is a token (its noisy 3D and its 2D, embedded,
plus learned joint and frame position embeddings and a sinusoidal step embedding). Blocks alternate
spatial attention (the J joints of a frame) and temporal attention (the T frames of a joint), as in
MixSTE; the head predicts x0 (B, T, J, 3). Sizes are free: a small one trains on a CPU in tests, the
published one is width 512, depth 8, 8 heads, 243 frames. Attention layers are `Attention` modules
(LoRA targets). With `checkpointing` on, training recomputes each block's activations in the backward pass
instead of keeping them: memory for time, for PoSynDA's adaptation, which backpropagates through
H hypotheses x K DDIM steps (at 243 frames, width 512, H 3, K 2, batch 2 a CPU run went from killed at
24 GB to a 9.9 GB peak).
"""
from __future__ import annotations

import math

import torch
import torch.utils.checkpoint
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], -1)
    return torch.nn.functional.pad(emb, (0, dim % 2))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:          # (N, L, D)
        N, L, D = x.shape
        q, k, v = self.qkv(x).view(N, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        y = nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(N, L, D))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.n1, self.attn = nn.LayerNorm(dim), Attention(dim, heads, dropout)
        self.n2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, int(dim * mlp_ratio)), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(int(dim * mlp_ratio), dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.n1(x))
        return x + self.mlp(self.n2(x))


class MixSTEDenoiser(nn.Module):
    def __init__(self, num_joints: int = 17, frames: int = 1, width: int = 128, depth: int = 4, heads: int = 4,
                 mlp_ratio: float = 2.0, dropout: float = 0.0, checkpointing: bool = False):
        super().__init__()
        self.num_joints, self.frames, self.width = num_joints, frames, width
        self.checkpointing = checkpointing
        self.embed = nn.Linear(5, width)
        self.joint_pos = nn.Parameter(torch.zeros(1, 1, num_joints, width))
        self.frame_pos = nn.Parameter(torch.zeros(1, frames, 1, width))
        nn.init.trunc_normal_(self.joint_pos, std=0.02)
        nn.init.trunc_normal_(self.frame_pos, std=0.02)
        self.t_mlp = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, width))
        self.spatial = nn.ModuleList(Block(width, heads, mlp_ratio, dropout) for _ in range(depth))
        # single-frame models have no temporal blocks (unused parameters would break DDP)
        self.temporal = nn.ModuleList(Block(width, heads, mlp_ratio, dropout) for _ in range(depth if frames > 1 else 0))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 3)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        B, T, J, _ = x_t.shape
        if (T, J) != (self.frames, self.num_joints) or cond.shape != (B, T, J, 2):
            raise ValueError(f"expected ({B}, {self.frames}, {self.num_joints}, 3|2) clips, got "
                             f"{tuple(x_t.shape)} and {tuple(cond.shape)}")
        h = self.embed(torch.cat([x_t, cond], -1)) + self.joint_pos + self.frame_pos
        h = h + self.t_mlp(timestep_embedding(t, self.width))[:, None, None, :]
        run = self._checkpointed if self.checkpointing and torch.is_grad_enabled() else (lambda blk, x: blk(x))
        for i, sp in enumerate(self.spatial):
            h = run(sp, h.reshape(B * T, J, -1)).view(B, T, J, -1)
            if T > 1:
                h = run(self.temporal[i], h.transpose(1, 2).reshape(B * J, T, -1)).view(B, J, T, -1).transpose(1, 2)
        return self.head(self.norm(h))

    @staticmethod
    def _checkpointed(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        # non-reentrant: works with DDP and frozen (LoRA) weights; dropout replays the same random mask
        return torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
