"""Pose2Mesh's MeshNet (Choi, Moon, Lee, ECCV 2020): a coarse-to-fine Chebyshev spectral graph network.

Input: per joint (2D pose, PoseNet 3D) = 5 channels on the joint graph. A block of Chebyshev
convolutions on the joint graph, a fully-connected layer to the coarsest mesh level, then residual
graph blocks level by level, each level upsampled x2 to the next finer one (node k -> nodes 2k, 2k+1 of
the coarsening layout, see posectl.core.mesh.coarsen), and a last Chebyshev layer to 3D coordinates.
Output: (B, V, 3) vertices in the body model's order. Widths are scaled by `width` (paper: 64).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from posectl.core.mesh import Graph, Hierarchy, scaled_laplacian


class ChebConv(nn.Module):
    """Chebyshev filter of order K on a fixed graph: concat[T_0 x, ..., T_{K-1} x] -> Linear, on node-major
    features (N, B, F) so that the sparse products need no copies.

    T_0 x = x, T_1 x = L~ x, T_k x = 2 L~ T_{k-1} x - T_{k-2} x, with L~ the rescaled Laplacian."""

    def __init__(self, f_in: int, f_out: int, graph: Graph, K: int = 3):
        super().__init__()
        if K < 1:
            raise ValueError("ChebConv: K >= 1")
        idx, val, n = scaled_laplacian(graph)
        lap = torch.sparse_coo_tensor(torch.from_numpy(idx), torch.from_numpy(val), (n, n),
                                      check_invariants=False).coalesce()
        self.n, self.K = n, K
        self.register_buffer("lap_idx", lap.indices().clone(), persistent=False)
        self.register_buffer("lap_val", lap.values().clone(), persistent=False)
        self.linear = nn.Linear(K * f_in, f_out)

    def laplacian(self) -> torch.Tensor:
        return torch.sparse_coo_tensor(self.lap_idx, self.lap_val, (self.n, self.n), is_coalesced=True,
                                       check_invariants=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:      # node-major (N, B, F_in) -> (N, B, F_out)
        N, B, F = x.shape
        x0 = x.reshape(N, B * F)
        terms = [x]
        if self.K > 1:
            L = self.laplacian()
            x1 = torch.sparse.mm(L, x0)
            terms.append(x1.view(N, B, F))
            for _ in range(2, self.K):
                x0, x1 = x1, 2 * torch.sparse.mm(L, x1) - x0
                terms.append(x1.view(N, B, F))
        return self.linear(torch.cat(terms, dim=-1))


class _GraphBN(nn.BatchNorm1d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:      # (N, B, F): statistics over nodes and batch
        N, B, F = x.shape
        return super().forward(x.reshape(N * B, F)).reshape(N, B, F)


class GraphResBlock(nn.Module):
    """[ChebConv -> BN -> ReLU] x 2 with a residual connection (linear projection when widths differ)."""

    def __init__(self, f_in: int, f_out: int, graph: Graph, K: int):
        super().__init__()
        self.conv1, self.bn1 = ChebConv(f_in, f_out, graph, K), _GraphBN(f_out)
        self.conv2, self.bn2 = ChebConv(f_out, f_out, graph, K), _GraphBN(f_out)
        self.skip = nn.Identity() if f_in == f_out else nn.Linear(f_in, f_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        h = torch.relu(self.bn2(self.conv2(h)))
        return h + self.skip(x)


class MeshNet(nn.Module):
    def __init__(self, joints: Graph, mesh: Hierarchy, width: int = 64, K: int = 3, in_features: int = 5):
        super().__init__()
        J, levels = joints.n, len(mesh.graphs) - 1
        w = width
        self.joint_block = nn.ModuleList([ChebConv(in_features, w // 2, joints, K), ChebConv(w // 2, w, joints, K),
                                          ChebConv(w, w, joints, K)])
        self.joint_bn = nn.ModuleList([_GraphBN(w // 2), _GraphBN(w), _GraphBN(w)])
        ch = [min(4 * w, w * 2 ** max(0, lvl - 1)) for lvl in range(levels + 1)]     # channels per level
        self.n_coarse, self.c_coarse = mesh.graphs[-1].n, ch[-1]
        self.fc = nn.Linear(J * w, self.n_coarse * self.c_coarse)
        blocks, f = [], ch[-1]
        for lvl in range(levels, -1, -1):
            blocks.append(GraphResBlock(f, ch[lvl], mesh.graphs[lvl], K))
            f = ch[lvl]
        self.blocks = nn.ModuleList(blocks)
        self.head = ChebConv(f, 3, mesh.graphs[0], K)
        self.register_buffer("order", torch.from_numpy(np.asarray(mesh.order, dtype=np.int64)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:       # (B, J, 5) -> (B, V, 3)
        B = len(x)
        x = x.transpose(0, 1).contiguous()                     # node-major inside the network
        for conv, bn in zip(self.joint_block, self.joint_bn):
            x = torch.relu(bn(conv(x)))
        x = torch.relu(self.fc(x.transpose(0, 1).reshape(B, -1)))
        x = x.reshape(B, self.n_coarse, self.c_coarse).transpose(0, 1).contiguous()
        for i, block in enumerate(self.blocks):
            if i:
                x = x.repeat_interleave(2, dim=0)              # coarse node k -> fine nodes 2k, 2k+1
            x = block(x)
        return self.head(x)[self.order].transpose(0, 1)
