"""SemGCN (Zhao et al., CVPR 2019): semantic graph convolutions on the skeleton graph.

A semantic graph convolution transforms every joint's features with two weight matrices, one for the
joint itself and one for its neighbours, and mixes them over the skeleton graph with *learned* edge
weights: for each joint the weights of its incident edges (self-loop included) are free parameters,
normalised by a softmax over that joint's neighbourhood. The network (docs/methods/baseline.md): an input
graph convolution 2 -> hidden, `blocks` residual blocks of two graph convolutions (batch norm, ReLU,
optional dropout), and an output semantic graph convolution hidden -> 3. hidden 128 with 4 blocks is
the published configuration (0.27 M parameters); the non-local variant is not implemented.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def skeleton_adjacency(parents: tuple[int, ...]) -> torch.Tensor:
    """Symmetric 0/1 adjacency of a kinematic tree (with self-loops) from its parent list."""
    J = len(parents)
    A = torch.eye(J)
    for j, p in enumerate(parents):
        if p >= 0:
            A[j, p] = A[p, j] = 1.0
    return A


class SemGraphConv(nn.Module):
    """out_i = sum_j softmax_j(e_ij) * (W_self x_i if i == j else W_nb x_j) + b, over the graph's edges."""

    def __init__(self, in_features: int, out_features: int, adj: torch.Tensor, bias: bool = True):
        super().__init__()
        self.register_buffer("mask", adj > 0, persistent=False)
        self.register_buffer("eye", torch.eye(adj.shape[0]), persistent=False)
        self.W = nn.Parameter(torch.empty(2, in_features, out_features))
        nn.init.xavier_uniform_(self.W.data, gain=1.414)
        self.e = nn.Parameter(torch.ones(int(self.mask.sum())))     # one weight per edge, incl. self-loops
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        if bias:
            bound = 1.0 / math.sqrt(out_features)
            nn.init.uniform_(self.bias, -bound, bound)

    def adjacency(self) -> torch.Tensor:
        logits = torch.full(self.mask.shape, -9e15, dtype=self.e.dtype, device=self.e.device)
        logits = logits.masked_scatter(self.mask, self.e)
        return torch.softmax(logits, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:          # (B, J, C_in) -> (B, J, C_out)
        h_self = x @ self.W[0]
        h_nb = x @ self.W[1]
        adj = self.adjacency()
        out = (adj * self.eye) @ h_self + (adj * (1 - self.eye)) @ h_nb
        return out + self.bias if self.bias is not None else out


class _GraphConvBlock(nn.Module):
    def __init__(self, adj: torch.Tensor, c_in: int, c_out: int, dropout: float):
        super().__init__()
        self.conv = SemGraphConv(c_in, c_out, adj)
        self.bn = nn.BatchNorm1d(c_out)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        y = self.bn(y.transpose(1, 2)).transpose(1, 2)
        return self.drop(torch.relu(y))


class _ResBlock(nn.Module):
    def __init__(self, adj: torch.Tensor, width: int, dropout: float):
        super().__init__()
        self.a = _GraphConvBlock(adj, width, width, dropout)
        self.b = _GraphConvBlock(adj, width, width, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.b(self.a(x))


class SemGCN(nn.Module):
    """Single-frame lifting on a skeleton graph: (B, J, 2) -> (B, J, 3); (B, 1, J, 2) -> (B, 1, J, 3)."""

    receptive_field: int = 1

    def __init__(self, parents: tuple[int, ...], hidden: int = 128, blocks: int = 4, dropout: float = 0.0,
                 in_features: int = 2):
        super().__init__()
        adj = skeleton_adjacency(parents)
        self.num_joints, self.in_features = len(parents), in_features
        self.inp = _GraphConvBlock(adj, in_features, hidden, dropout)
        self.blocks = nn.Sequential(*[_ResBlock(adj, hidden, dropout) for _ in range(blocks)])
        self.out = SemGraphConv(hidden, 3, adj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        windowed = x.dim() == 4
        if windowed:
            if x.shape[1] != 1:
                raise ValueError(f"SemGCN takes 1-frame windows, got T={x.shape[1]}")
            x = x[:, 0]
        if x.dim() != 3 or x.shape[1:] != (self.num_joints, self.in_features):
            raise ValueError(f"expected (B, {self.num_joints}, {self.in_features}) input, got {tuple(x.shape)}")
        y = self.out(self.blocks(self.inp(x)))
        return y.unsqueeze(1) if windowed else y
