"""Cross-domain pose alignment and local pose augmentation (GPA, Chai et al. ICCV 2023; docs/methods/gpa.md).

Global position alignment moves each source pose rigidly so that its projection through a *target*
camera has the 2D size and position of a randomly paired target 2D pose: the source inputs then follow
the target domain's global-position distribution while their root-relative 3D is unchanged. The
local augmentation perturbs the root-relative pose itself (bone directions, bone lengths per symmetric
group, a rotation about the root) within anatomical limits, PoseAug-style; GPA's own learned local
augmentation was never released (docs/methods/gpa.md), so this is its non-adversarial form.

Everything is batched torch, unit-agnostic where it says so, and reused by PoSynDA.
"""
from __future__ import annotations

import math

import torch

from posectl.core.skeleton import Layout, index_tensor


def gpa_root(src3d: torch.Tensor, tgt2d: torch.Tensor, f: torch.Tensor, c: torch.Tensor,
             root: int = 0) -> torch.Tensor:
    """The root position (N, 3) at which each source pose takes its paired target pose's 2D scale and
    root location.

    src3d (N, J, 3) camera-frame metres; tgt2d (N, J, 2) the target poses' 2D; f, c (N, 2) or (2,) the
    target cameras' focal lengths and principal points *in the units of tgt2d* (pixels, or the paper's
    normalised coordinates f*2/w, c*2/w - [1, h/w]: the result is the same).
      s = (w2D + h2D) / 2                       target 2D extent
      z = (fx * dx + fy * dy) / (2 s)           depth at which the source extent dx, dy looks that size
      root = z * ((q_root - c) / f, 1)          back-projection of the target root at that depth
    """
    ext2 = tgt2d.amax(-2) - tgt2d.amin(-2)                        # (N, 2) target 2D width, height
    s = ext2.mean(-1).clamp_min(1e-6 * f.abs().max())
    ext3 = src3d[..., :2].amax(-2) - src3d[..., :2].amin(-2)      # (N, 2) source dx, dy
    f, c = f.expand_as(ext3), c.expand_as(ext3)
    z = (f * ext3).sum(-1) / (2 * s)
    uv = (tgt2d[:, root] - c) / f
    return torch.cat([z[:, None] * uv, z[:, None]], -1)


def global_position_alignment(src3d: torch.Tensor, tgt2d: torch.Tensor, f: torch.Tensor, c: torch.Tensor,
                              root: int = 0) -> torch.Tensor:
    """Move every source pose rigidly (no rotation, no scaling) to `gpa_root`; returns (N, J, 3)."""
    new_root = gpa_root(src3d, tgt2d, f, c, root)
    return src3d - src3d[:, root:root + 1] + new_root[:, None]


# -- local augmentation ----------------------------------------------------------------------------
def _check_topological(layout: Layout) -> None:
    if any(p >= j for j, p in enumerate(layout.parents) if p >= 0):
        raise ValueError(f"{layout.name}: parents must precede their children")


def bone_vectors(poses: torch.Tensor, layout: Layout) -> torch.Tensor:
    """(N, J, 3) -> (N, J, 3): joint minus its parent (zero at the root)."""
    parents = index_tensor([max(p, 0) for p in layout.parents], poses.device)
    b = poses - poses[:, parents]
    b[:, layout.root] = 0
    return b


def from_bones(root: torch.Tensor, bones: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Inverse of bone_vectors: accumulate bone vectors from the root (N, 3) down the tree."""
    _check_topological(layout)
    joints = [None] * layout.num_joints
    for j, p in enumerate(layout.parents):
        joints[j] = root if p < 0 else joints[p] + bones[:, j]
    return torch.stack(joints, 1)


def _rodrigues(axis: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (..., 3, 3) about unit `axis` (..., 3) by `angle` (...) radians."""
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    K = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).view(*axis.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=axis.dtype, device=axis.device).expand_as(K)
    s, c = torch.sin(angle)[..., None, None], torch.cos(angle)[..., None, None]
    return eye + s * K + (1 - c) * (K @ K)


def symmetric_groups(layout: Layout) -> list[list[int]]:
    """Child-joint ids of the bones that share a length factor: a left bone with its right mirror."""
    groups, seen = [], set()
    mirror = dict(zip(layout.left, layout.right)) | dict(zip(layout.right, layout.left))
    for j, p in enumerate(layout.parents):
        if p < 0 or j in seen:
            continue
        g = [j] + ([mirror[j]] if j in mirror else [])
        seen.update(g)
        groups.append(g)
    return groups


def local_augment(poses: torch.Tensor, layout: Layout, generator: torch.Generator, *, angle_deg: float = 15.0,
                  length: float = 0.1, rotation_deg: float = 30.0, tilt_deg: float = 10.0,
                  keep_torso: bool = True) -> torch.Tensor:
    """Root-relative camera-frame poses (N, J, 3) -> locally perturbed poses (N, J, 3), root at 0.

    Bone angle: every limb bone's direction turns by U(0, angle_deg) about a random axis (its length
      kept); torso bones (root -> spine -> thorax) stay fixed with `keep_torso`, as in PoseAug's BA.
    Bone length: one factor 1 + U(-length, length) per symmetric group (left and right together).
    Rotation: about the root, U(-rotation_deg, rotation_deg) about the camera's vertical (y) axis and
      U(-tilt_deg, tilt_deg) about the x and z axes.
    The random numbers come from `generator` (local_draws), the perturbation is local_apply.
    """
    limits = {"angle_deg": angle_deg, "length": length, "rotation_deg": rotation_deg, "tilt_deg": tilt_deg}
    draws = local_draws(len(poses), layout, generator, **limits)
    return local_apply(poses, {k: v.to(poses.device) for k, v in draws.items()}, layout, **limits,
                       keep_torso=keep_torso)


def local_draws(n: int, layout: Layout, generator: torch.Generator, *, angle_deg: float, length: float,
                rotation_deg: float, tilt_deg: float) -> dict[str, torch.Tensor]:
    """The random numbers local_apply uses for n poses, drawn from `generator` in a fixed order (so
    that they can be drawn ahead, for many batches, and applied later on another device)."""
    J, out = layout.num_joints, {}
    if angle_deg > 0:
        out["axis"] = torch.randn(n, J, 3, generator=generator)
        out["angle"] = torch.rand(n, J, generator=generator)
    if length > 0:
        out["length"] = torch.cat([torch.rand(n, 1, generator=generator) for _ in symmetric_groups(layout)], 1)
    if rotation_deg > 0 or tilt_deg > 0:
        out["rotation"] = torch.stack([torch.rand(n, generator=generator) for _ in range(3)], 1)
    return out


def local_apply(poses: torch.Tensor, draws: dict[str, torch.Tensor], layout: Layout, *, angle_deg: float,
                length: float, rotation_deg: float, tilt_deg: float, keep_torso: bool = True) -> torch.Tensor:
    """local_augment of (N, J, 3) poses with the random numbers `draws` (local_draws, on the poses' device)."""
    N, J, _ = poses.shape
    dev, dt = poses.device, poses.dtype
    bones = bone_vectors(poses, layout)
    if angle_deg > 0:
        axis = draws["axis"].to(dt)
        axis = axis / axis.norm(dim=-1, keepdim=True).clamp_min(1e-9)
        ang = draws["angle"].to(dt) * math.radians(angle_deg)
        if keep_torso:
            spine = [j for j, p in enumerate(layout.parents) if p == layout.root and j not in layout.left + layout.right]
            torso = set(spine) | {j for j, p in enumerate(layout.parents) if p in spine and
                                  sum(1 for q in layout.parents if q == j) > 1}
            ang[:, index_tensor(sorted(torso), dev)] = 0
        bones = (_rodrigues(axis, ang) @ bones[..., None])[..., 0]
    if length > 0:
        scale = torch.ones(N, J, dtype=dt, device=dev)
        u = draws["length"].to(dt)
        for k, g in enumerate(symmetric_groups(layout)):
            scale[:, index_tensor(g, dev)] = 1 + (u[:, k:k + 1] * 2 - 1) * length
        bones = bones * scale[..., None]
    out = from_bones(torch.zeros(N, 3, dtype=dt, device=dev), bones, layout)
    if rotation_deg > 0 or tilt_deg > 0:
        u = draws["rotation"].to(dt)
        yaw = (u[:, 0] * 2 - 1) * math.radians(rotation_deg)
        pitch = (u[:, 1] * 2 - 1) * math.radians(tilt_deg)
        roll = (u[:, 2] * 2 - 1) * math.radians(tilt_deg)
        ex, ey, ez = (torch.zeros(N, 3, dtype=dt, device=dev) for _ in range(3))   # unit axes, made on the device
        ex[:, 0], ey[:, 1], ez[:, 2] = 1.0, 1.0, 1.0
        R = _rodrigues(ey, yaw) @ _rodrigues(ex, pitch) @ _rodrigues(ez, roll)
        out = out @ R.transpose(1, 2)
    return out
