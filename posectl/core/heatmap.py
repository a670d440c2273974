"""Heatmaps for 2D keypoint detection: Gaussian targets, the (weighted) joints MSE, soft-argmax, PDJ."""
from __future__ import annotations

import torch


def gaussian_heatmaps(xy: torch.Tensor, height: int, width: int, sigma: float) -> torch.Tensor:
    """(B, J, 2) heatmap-pixel coordinates (x, y; pixel i has centre i) -> (B, J, H, W) peaks of 1."""
    ys = torch.arange(height, dtype=xy.dtype, device=xy.device)
    xs = torch.arange(width, dtype=xy.dtype, device=xy.device)
    gx = torch.exp(-(xs - xy[..., 0, None]) ** 2 / (2 * sigma ** 2))           # (B, J, W)
    gy = torch.exp(-(ys - xy[..., 1, None]) ** 2 / (2 * sigma ** 2))           # (B, J, H)
    return gy[..., :, None] * gx[..., None, :]


def joints_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """HRNet's JointsMSE per sample and joint: 0.5 x mean over pixels of (pred - target)^2 -> (B, J)."""
    err = 0.5 * ((pred - target) ** 2).flatten(2).mean(-1)
    return err * weight if weight is not None else err


def soft_argmax(heatmaps: torch.Tensor, beta: float) -> torch.Tensor:
    """(B, J, H, W) -> (B, J, 2) expected (x, y) under softmax(beta * heatmap); differentiable."""
    B, J, H, W = heatmaps.shape
    p = torch.softmax(beta * heatmaps.flatten(2), dim=-1).view(B, J, H, W)
    xs = torch.arange(W, dtype=heatmaps.dtype, device=heatmaps.device)
    ys = torch.arange(H, dtype=heatmaps.dtype, device=heatmaps.device)
    return torch.stack([(p.sum(2) * xs).sum(-1), (p.sum(3) * ys).sum(-1)], -1)


def pdj(pred: torch.Tensor, gt: torch.Tensor, a: int, b: int, fraction: float = 0.2) -> torch.Tensor:
    """Percentage of detected joints: distance < fraction x the torso diameter |gt[a] - gt[b]|, per sample."""
    torso = (gt[:, a] - gt[:, b]).norm(dim=-1, keepdim=True)
    return ((pred - gt).norm(dim=-1) < fraction * torso).float().mean(-1) * 100
