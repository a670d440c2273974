"""Denoising diffusion for pose lifting (D3DP / PoSynDA, docs/methods/posynda.md): a cosine noise schedule,
the forward (noising) process, DDIM sampling with an x0-predicting denoiser, and joint-wise
reprojection-based multi-hypothesis aggregation (JPMA).

Pure torch; the denoiser is any callable `model(x_t, t, cond) -> x0`.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from posectl.core.camera import project


def cosine_alphas_cumprod(T: int, s: float = 0.008) -> torch.Tensor:
    """abar_t for t = 0..T-1 of Nichol & Dhariwal's cosine schedule, as D3DP builds it: betas from
    f(t) = cos(((t/T + s) / (1 + s)) pi/2)^2, clipped to [0, 0.999], then abar = cumprod(1 - beta)."""
    x = torch.linspace(0, T, T + 1, dtype=torch.float64)
    f = torch.cos(((x / T) + s) / (1 + s) * math.pi * 0.5) ** 2
    f = f / f[0]
    betas = (1 - f[1:] / f[:-1]).clamp(0, 0.999)
    return torch.cumprod(1 - betas, 0)


class Diffusion:
    """Forward noising and DDIM sampling over tensors of any shape (..., J, 3)."""

    def __init__(self, T: int = 1000, scale: float = 1.0, s: float = 0.008):
        self.T, self.scale = T, scale
        self.abar = cosine_alphas_cumprod(T, s)          # float64 on CPU; cast at use
        self._on: dict[str, torch.Tensor] = {}           # abar copied once per device

    def _a(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        key = str(like.device)
        if key not in self._on:
            self._on[key] = self.abar.to(like.device)
        a = self._on[key][t.to(like.device)].to(like.dtype)
        return a.view(-1, *([1] * (like.dim() - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) * x0 * scale + sqrt(1 - abar_t) * noise (t per batch element)."""
        a = self._a(t, x0)
        return a.sqrt() * x0 * self.scale + (1 - a).sqrt() * noise

    def ddim_times(self, steps: int) -> list[tuple[int, int]]:
        """(t, t_next) pairs of a K-step DDIM run from T-1 down to the final x0 (t_next = -1)."""
        times = torch.linspace(-1, self.T - 1, steps + 1).long().flip(0).tolist()
        return list(zip(times[:-1], times[1:]))

    def ddim_step(self, x: torch.Tensor, x0: torch.Tensor, t: int, t_next: int, eta: float,
                  noise: torch.Tensor | None) -> torch.Tensor:
        """One DDIM update from x_t and the predicted (scaled) x0 to x_{t_next}."""
        if t_next < 0:
            return x0
        a, a_next = float(self.abar[t]), float(self.abar[t_next])
        eps = (x - math.sqrt(a) * x0) / math.sqrt(1 - a)
        sigma = eta * math.sqrt((1 - a / a_next) * (1 - a_next) / (1 - a))
        c = math.sqrt(max(1 - a_next - sigma ** 2, 0.0))
        out = math.sqrt(a_next) * x0 + c * eps
        return out + sigma * noise if sigma > 0 and noise is not None else out

    @torch.no_grad()
    def sample(self, model: Callable, cond: torch.Tensor, shape: tuple[int, ...], steps: int, eta: float = 1.0,
               generator: torch.Generator | None = None, clip: float = 1.1) -> torch.Tensor:
        """Draw x0 of `shape` by K-step DDIM from pure noise; `model(x_t, t, cond)` predicts x0 / scale.
        The prediction is clamped to +-clip*scale at every step (D3DP)."""
        dev = cond.device
        x = torch.randn(shape, generator=generator).to(dev, cond.dtype)
        for t, t_next in self.ddim_times(steps):
            tt = torch.full((shape[0],), t, dtype=torch.long, device=dev)
            x0 = (model(x, tt, cond) * self.scale).clamp(-clip * self.scale, clip * self.scale)
            noise = torch.randn(shape, generator=generator).to(dev, cond.dtype) if eta > 0 else None
            x = self.ddim_step(x, x0, t, t_next, eta, noise)
        return x / self.scale


def undistort(xy: torch.Tensor, dist: torch.Tensor, iters: int = 20) -> torch.Tensor:
    """Inverse of core.camera.project's Human3.6M distortion on normalised image coordinates (..., J, 2),
    with dist (..., 5) = [k1, k2, k3, p1, p2]: fixed-point iterations x <- (x_d - p2 r2) / (radial + tan),
    y <- (y_d - p1 r2) / (radial + tan). Distortion is mild inside the image (a contraction of about
    2 |k1| r2 < 0.1 per iteration), so 20 iterations reach float64 precision."""
    k1, k2, k3, p1, p2 = (d[..., None] for d in dist.unbind(-1))
    xd, yd = xy.unbind(-1)
    x, y = xd, yd
    for _ in range(iters):
        r2 = x * x + y * y
        s = 1 + k1 * r2 + k2 * r2 ** 2 + k3 * r2 ** 3 + p1 * y + p2 * x
        x, y = (xd - p2 * r2) / s, (yd - p1 * r2) / s
    return torch.stack([x, y], -1)


def estimate_root(pose: torch.Tensor, kp: torch.Tensor, f: torch.Tensor, c: torch.Tensor,
                  dist: torch.Tensor | None = None) -> torch.Tensor:
    """Root positions (..., 3) that best explain 2D keypoints (..., J, 2) for root-relative poses (..., J, 3)
    under a pinhole camera (f, c (..., 2), same units as kp): the linear least-squares solution of
    x_j (Z_j + T_z) = X_j + T_x, y_j (Z_j + T_z) = Y_j + T_y with x_j, y_j the normalised image coordinates.
    `dist` (..., 5) = intrinsics[4:9]: the keypoints are distorted (as jpma's reprojection assumes), so they
    are undistorted first; on distorted keypoints the pinhole solution is off by decimetres towards the
    image borders. No ground-truth root is needed."""
    xy = (kp.double() - c[..., None, :].double()) / f[..., None, :].double()      # (..., J, 2)
    if dist is not None:
        xy = undistort(xy, dist.double())
    X, Y, Z = pose.double().unbind(-1)
    one, zero = torch.ones_like(X), torch.zeros_like(X)
    rows_x = torch.stack([one, zero, -xy[..., 0]], -1)                    # (..., J, 3)
    rows_y = torch.stack([zero, one, -xy[..., 1]], -1)
    A = torch.cat([rows_x, rows_y], -2)                                    # (..., 2J, 3)
    b = torch.cat([xy[..., 0] * Z - X, xy[..., 1] * Z - Y], -1)[..., None]
    sol = torch.linalg.lstsq(A, b).solution[..., 0]
    return sol.to(pose.dtype)


def jpma(hypotheses: torch.Tensor, root: torch.Tensor, intrinsics: torch.Tensor, kp: torch.Tensor,
         distort: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint-wise reprojection-based multi-hypothesis aggregation.

    hypotheses (H, B, J, 3) root-relative; root (B, 3) camera-frame root positions; intrinsics (B, 9)
    pixel intrinsics; kp (B, J, 2) the input 2D in pixels. For every joint, the hypothesis whose
    reprojection lands closest to the input keypoint is chosen. Returns the aggregated pose (B, J, 3)
    and the per-joint minimum 2D error (B, J) in pixels.
    """
    cam = hypotheses + root[None, :, None, :]
    uv = project(cam, intrinsics[None].expand(hypotheses.shape[0], *intrinsics.shape), distort=distort)
    err = (uv - kp[None]).norm(dim=-1)                                     # (H, B, J)
    best = err.argmin(0)                                                   # (B, J)
    pose = hypotheses.gather(0, best[None, ..., None].expand(1, *hypotheses.shape[1:]))[0]
    return pose, err.min(0).values
