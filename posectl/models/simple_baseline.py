"""Fully-connected 2D->3D lifting baseline (Martinez et al., ICCV 2017)."""

from __future__ import annotations

import torch
from torch import nn


def _linear_bn_relu_drop(n_in: int, n_out: int, dropout: float) -> list[nn.Module]:
    return [nn.Linear(n_in, n_out), nn.BatchNorm1d(n_out), nn.ReLU(inplace=True), nn.Dropout(dropout)]


class _ResidualBlock(nn.Module):
    """Two [Linear-BN-ReLU-Dropout] stages with an identity skip connection."""

    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            *_linear_bn_relu_drop(width, width, dropout), *_linear_bn_relu_drop(width, width, dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x)


class SimpleBaseline(nn.Module):
    """Single-frame MLP lifting (B, J_in, C) -> (B, J_out, 3).

    A single-frame window (B, 1, J_in, C) is also accepted and gives (B, 1, J_out, 3),
    which makes the model interchangeable with temporal models of receptive field 1.
    """

    receptive_field: int = 1

    def __init__(
        self,
        num_joints_in: int,
        num_joints_out: int,
        hidden: int = 1024,
        blocks: int = 2,
        dropout: float = 0.5,
        in_features: int = 2,
    ) -> None:
        super().__init__()
        self.num_joints_in = num_joints_in
        self.num_joints_out = num_joints_out
        self.in_features = in_features
        self.stem = nn.Sequential(*_linear_bn_relu_drop(num_joints_in * in_features, hidden, dropout))
        self.blocks = nn.Sequential(*[_ResidualBlock(hidden, dropout) for _ in range(blocks)])
        self.head = nn.Linear(hidden, num_joints_out * 3)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal weights and zero biases; a small output layer so the first predictions are
        near the mean pose (metres) instead of metres off, which wastes the first epochs."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.head.weight, std=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        windowed = x.dim() == 4
        if windowed:
            if x.shape[1] != 1:
                raise ValueError(f"SimpleBaseline takes 1-frame windows, got T={x.shape[1]}")
            x = x[:, 0]
        if x.dim() != 3 or x.shape[1:] != (self.num_joints_in, self.in_features):
            raise ValueError(
                f"expected (B, {self.num_joints_in}, {self.in_features}) input, got {tuple(x.shape)}"
            )
        y = self.head(self.blocks(self.stem(x.flatten(1))))
        y = y.view(x.shape[0], self.num_joints_out, 3)
        return y.unsqueeze(1) if windowed else y
