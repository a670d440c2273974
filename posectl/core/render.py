"""Images of posed skeletons, for training 2D detectors where no photographs are at hand (L2D).

A pose is drawn as an articulated figure: every bone a shaded capsule, the head a disc, hidden
surfaces removed per pixel by depth (a z-buffer over the bones), on a random smooth background.
The image is a square crop around the 2D pose, with optional random scale, shift and in-plane
rotation (the usual detector augmentation); `CropTransform` maps screen-normalised 2D coordinates
(posectl.core.camera.normalize_screen, i.e. where the camera model projects the joints) into crop
pixels and back, so detector outputs return to the coordinates a lifting network expects.

Pure torch, batched, deterministic for a given torch.Generator.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from posectl.core.skeleton import Layout


@dataclass
class CropTransform:
    """uv (screen-normalised) -> crop pixels: p = (rot @ (uv - centre)) / size * res + res / 2."""
    centre: torch.Tensor     # (B, 2) uv
    size: torch.Tensor       # (B,) side of the crop in uv units
    rot: torch.Tensor        # (B, 2, 2) rotation applied about the centre
    res: int                 # crop side in pixels

    def to_crop(self, uv: torch.Tensor) -> torch.Tensor:
        d = torch.einsum("bij,bkj->bki", self.rot, uv - self.centre[:, None])
        return d / self.size[:, None, None] * self.res + self.res / 2

    def to_uv(self, px: torch.Tensor) -> torch.Tensor:
        d = (px - self.res / 2) * self.size[:, None, None] / self.res
        return torch.einsum("bji,bkj->bki", self.rot, d) + self.centre[:, None]     # rot^T: the inverse

    def to(self, device) -> "CropTransform":
        return CropTransform(self.centre.to(device), self.size.to(device), self.rot.to(device), self.res)


def crop_around(uv: torch.Tensor, res: int, padding: float = 1.5, generator: torch.Generator | None = None,
                scale_jitter: float = 0.0, shift_jitter: float = 0.0, max_rotation_deg: float = 0.0) -> CropTransform:
    """A square crop around each pose's 2D bounding box (padding x its longer side), optionally jittered."""
    lo, hi = uv.amin(1), uv.amax(1)
    centre = (lo + hi) / 2
    size = (hi - lo).amax(1).clamp_min(1e-3) * padding
    B = len(uv)

    def rand(*shape):
        return torch.rand(*shape, generator=generator) * 2 - 1
    if scale_jitter:
        size = size * (1 + scale_jitter * rand(B))
    if shift_jitter:
        centre = centre + shift_jitter * size[:, None] * rand(B, 2)
    angle = torch.deg2rad(torch.tensor(max_rotation_deg)) * rand(B) if max_rotation_deg else torch.zeros(B)
    c, s = torch.cos(angle), torch.sin(angle)
    rot = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
    return CropTransform(centre, size, rot, res)


def _bone_colours(layout: Layout) -> torch.Tensor:
    """Right limbs reddish, left limbs bluish, the trunk grey-green: sides a detector can tell apart."""
    cols = []
    for parent, child in layout.bones:
        if child in layout.right:
            cols.append((0.85, 0.30, 0.25))
        elif child in layout.left:
            cols.append((0.25, 0.40, 0.85))
        else:
            cols.append((0.55, 0.70, 0.45))
    return torch.tensor(cols)


def _background(B: int, res: int, generator: torch.Generator | None) -> torch.Tensor:
    """(B, 3, res, res): a random colour gradient plus blurred noise, darker than the figure on average."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, res), torch.linspace(0, 1, res), indexing="ij")
    a = torch.rand(B, 3, 1, 1, generator=generator) * 0.5
    b = torch.rand(B, 3, 1, 1, generator=generator) * 0.5
    t = torch.rand(B, 1, 1, 1, generator=generator)
    grad = a + (b - a) * (xx * t + yy * (1 - t))
    noise = torch.rand(B, 3, res // 4, res // 4, generator=generator) * 0.3
    noise = torch.nn.functional.interpolate(noise, size=(res, res), mode="bilinear", align_corners=False)
    return (grad + noise - 0.15).clamp(0, 1)


def render(uv: torch.Tensor, depth: torch.Tensor, layout: Layout, crop: CropTransform,
           generator: torch.Generator | None = None, limb_radius: float = 0.035, head_radius: float = 0.075,
           background: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw (B, J) poses. uv: (B, J, 2) screen-normalised 2D; depth: (B, J) camera-frame z (any offset).

    Returns (images (B, 3, res, res) in [0, 1], joints in crop pixels (B, J, 2), figure mask (B, res, res)).
    Radii are fractions of the crop side.
    """
    res = crop.res
    B = len(uv)
    px = crop.to_crop(uv)                                          # (B, J, 2)
    grid = torch.stack(torch.meshgrid(torch.arange(res, dtype=torch.float32) + 0.5,
                                      torch.arange(res, dtype=torch.float32) + 0.5, indexing="xy"), -1)
    g = grid.view(1, -1, 2)                                        # (1, P, 2) pixel centres (x, y)
    radius = limb_radius * res
    colours = _bone_colours(layout)
    parts = [(a, b, colours[i]) for i, (a, b) in enumerate(layout.bones)]
    head = layout.joints.index("Head") if "Head" in layout.joints else None
    if head is not None:                                           # the head: a disc around the Head joint
        parts.append((head, head, torch.tensor([0.90, 0.75, 0.60])))
    P = g.shape[1]
    zbest = torch.full((B, P), float("inf"))                       # z-buffer, one part at a time
    fig = torch.zeros(B, P, 3)
    for a, b, colour in parts:
        pa, pb = px[:, a, None], px[:, b, None]                    # (B, 1, 2)
        ab = pb - pa
        t = (((g - pa) * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-6)).clamp(0, 1)    # (B, P)
        d = (g - pa - t[..., None] * ab).norm(dim=-1)
        r = head_radius * res if a == b else radius
        z = depth[:, a, None] + t * (depth[:, b] - depth[:, a])[:, None]
        win = (d < r) & (z < zbest)
        zbest = torch.where(win, z, zbest)
        shade = (1 - (d / r).clamp(0, 1) ** 2).sqrt() * 0.7 + 0.3  # a lit cylinder: bright on the axis
        fig = torch.where(win[..., None], colour * shade[..., None], fig)
    mask = torch.isfinite(zbest)
    fig = fig.permute(0, 2, 1).reshape(B, 3, res, res)
    m = mask.view(B, 1, res, res)
    bg = _background(B, res, generator) if background else torch.zeros(B, 3, res, res)
    return torch.where(m, fig, bg), px, mask.view(B, res, res)


def crop_frames(frames: list[torch.Tensor], image_size: torch.Tensor, crop: CropTransform) -> torch.Tensor:
    """Resample whole frames (photographs) into the crops: the same geometry `render` draws with.

    frames: B tensors (3, H, W) in [0, 1], each of its row's image_size (W, H) in pixels (pixel i covers
    [i, i+1)); image_size: (B, 2). Returns (B, 3, res, res), bilinear, zeros outside the frame.
    """
    res = crop.res
    centres = torch.arange(res, dtype=torch.float32) + 0.5
    grid = torch.stack(torch.meshgrid(centres, centres, indexing="xy"), -1).view(1, -1, 2)
    uv = crop.to_uv(grid.expand(len(frames), -1, -1))                       # (B, P, 2) screen-normalised
    wh = image_size.to(torch.float32)
    w, h = wh[:, 0, None], wh[:, 1, None]
    # grid_sample's [-1, 1] frame (align_corners=False) is screen-normalised uv with v rescaled by w / h:
    # u = x / w * 2 - 1 and v = y / w * 2 - h / w (posectl.core.camera.normalize_screen)
    norm = torch.stack([uv[..., 0], uv[..., 1] * w / h], -1)
    out = []
    for b, f in enumerate(frames):
        if tuple(f.shape[1:]) != (int(h[b]), int(w[b])):
            raise ValueError(f"frame {b} is {f.shape[2]}x{f.shape[1]} px, its row says {int(w[b])}x{int(h[b])}")
        g = norm[b].view(1, res, res, 2)
        out.append(torch.nn.functional.grid_sample(f[None], g, mode="bilinear", padding_mode="zeros",
                                                   align_corners=False)[0])
    return torch.stack(out)
