"""Skeleton kinematics: bone vectors/lengths, bone-length swaps and the DH-AUG forward-kinematics model.

Everything here is pure torch (batched, differentiable) on the 16-joint Human3.6M layout
(`H36M16`: Hip, RHip, RKnee, RFoot, LHip, LKnee, LFoot, Spine, Thorax, Head, LShoulder, LElbow,
LWrist, RShoulder, RElbow, RWrist), the layout DH-AUG and PoseAug use. See docs/methods/dhaug.md

The DH model (`DHSkeleton`) uses the modified (Craig) convention, one transform per frame
    T_i = Rx(alpha_i) . Tx(a_i) . Rz(theta_i) . Tz(d_i)
chained along five chains that all start at the pelvis: right leg, left leg, body (pelvis -> spine
-> thorax -> neck -> head), and two arms that branch from the 9th body frame (thorax orientation).
Bone lengths enter as the link offsets a/d, so the output reproduces the given lengths exactly for
any angles.
"""
from __future__ import annotations

import torch

from posectl.core.skeleton import H36M16, bone_lengths, index_tensor

# -- bones of the 16-joint layout ------------------------------------------------------------------
# H36M16.bones in joint order: (parent, child) for joints 1..15.
BONES16 = H36M16.bones
BONE_NAMES = ("r_hip", "r_thigh", "r_shin", "l_hip", "l_thigh", "l_shin", "waist", "thorax", "neck",
              "l_clavicle", "l_upper_arm", "l_forearm", "r_clavicle", "r_upper_arm", "r_forearm")
_B = {n: i for i, n in enumerate(BONE_NAMES)}

# Symmetric groups for DH-AUG's +-20 % bone scaling (the thorax link is not scaled, §4.3).
SCALE_GROUPS = {
    "shin": ("r_shin", "l_shin"), "thigh": ("r_thigh", "l_thigh"), "hip": ("r_hip", "l_hip"),
    "waist": ("waist",), "clavicle": ("r_clavicle", "l_clavicle"),
    "upper_arm": ("r_upper_arm", "l_upper_arm"), "forearm": ("r_forearm", "l_forearm"), "neck": ("neck",),
}

# Pairs of adjacent bones whose cosine the 3D critic sees (15 pairs, §4.4).
ADJACENT_PAIRS = tuple((_B[a], _B[b]) for a, b in (
    ("r_shin", "r_thigh"), ("l_shin", "l_thigh"), ("r_thigh", "r_hip"), ("l_thigh", "l_hip"),
    ("r_hip", "l_hip"), ("r_hip", "waist"), ("l_hip", "waist"), ("waist", "thorax"), ("thorax", "neck"),
    ("thorax", "r_clavicle"), ("thorax", "l_clavicle"), ("r_clavicle", "r_upper_arm"),
    ("l_clavicle", "l_upper_arm"), ("r_upper_arm", "r_forearm"), ("l_upper_arm", "l_forearm")))


def bone_vectors(poses: torch.Tensor) -> torch.Tensor:
    """(..., 16, 3) -> (..., 15, 3) child minus parent, in `BONE_NAMES` order."""
    parents = index_tensor([p for p, _ in BONES16], poses.device)
    children = index_tensor([c for _, c in BONES16], poses.device)
    return poses[..., children, :] - poses[..., parents, :]


def bone_lengths16(poses: torch.Tensor) -> torch.Tensor:
    return bone_lengths(poses, H36M16)


def assemble(root: torch.Tensor, bones: torch.Tensor) -> torch.Tensor:
    """Inverse of bone_vectors: root (..., 3) and bone vectors (..., 15, 3) -> joints (..., 16, 3)."""
    joints = [root]
    for j, (p, c) in enumerate(BONES16):   # parents always precede children in H36M16
        assert c == j + 1
        joints.append(joints[p] + bones[..., j, :])
    return torch.stack(joints, dim=-2)


def swap_bone_lengths(poses: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Keep every bone's direction, give it a new length, re-assemble from the root (PoseAug's step)."""
    b = bone_vectors(poses)
    unit = b / b.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    return assemble(poses[..., 0, :], unit * lengths[..., :, None])


def kcs_features(poses: torch.Tensor) -> torch.Tensor:
    """DH-AUG's 3D-critic features: 15 adjacent-bone cosines followed by the 15 bone lengths."""
    b = bone_vectors(poses)
    n = b.norm(dim=-1).clamp_min(1e-8)
    u = b / n[..., None]
    i = index_tensor([p for p, _ in ADJACENT_PAIRS], poses.device)
    j = index_tensor([q for _, q in ADJACENT_PAIRS], poses.device)
    cos = (u[..., i, :] * u[..., j, :]).sum(-1)
    return torch.cat([cos, n], dim=-1)


def subject_templates(poses: torch.Tensor, subjects) -> torch.Tensor:
    """Mean bone lengths per subject (PoseAug's `hm36s15678_bl_templates.npy`, re-derived): (S, 15)."""
    import numpy as np
    subjects = np.asarray(subjects)
    lengths = bone_lengths16(poses)
    rows = [lengths[torch.from_numpy(subjects == s)].mean(0) for s in sorted(set(subjects.tolist()))]
    return torch.stack(rows)


# -- the DH model --------------------------------------------------------------------------------
# 37-entry angle vector (degrees): 0-4 right leg, 5-9 left leg, 10-22 body, 23-27 right arm,
# 28-32 left arm, 33 unused, 34-36 global rotation about x, y, z.
NUM_ANGLES = 37
ZERO_ANGLES = (4, 9, 22, 23, 28, 33)            # frames without a positional effect, forced to 0
FREE_ANGLES = tuple(i for i in range(NUM_ANGLES) if i not in ZERO_ANGLES)   # 31 generated values
ROTATION = (34, 35, 36)

# Elbow flexion. The released code gives the elbow frame's theta (index 26 / 31, the frame displaced
# by the upper-arm length, i.e. *at* the elbow) the range (-100, 180) and the next index (27 / 32, the
# wrist frame, which has no positional effect) (0, 180); the poster labels (0, 180) as the elbow, one
# index later. Here the elbow frame (26 / 31) carries flexion and gets a one-sided 180-degree range on
# the flexing side (checked numerically in tests: the forearm folds towards the front of the upper
# arm); 27 / 32 keep their (0, 180) but cannot move a joint.
# Right shoulder index 25 deviates from the released table, which gives it (-155, 65) like index 24.
# The left-arm angles that mirror the right arm's (a24, a25, a26) are (-a24, +a25, +a26) (checked in
# tests), so the ranges of 24 / 29 must be negatives of each other but 25 / 30 equal; with (-155, 65) the
# right upper arm swung 155 deg backwards and only 65 forwards, the left one (anatomically) the opposite.
# The rest of the table is mirror-consistent (hips: 0, 1 negated give 5, 6; 2 = 7; knees 3 = 8).
RANGES: dict[int, tuple[float, float]] = {
    0: (-110, 65), 1: (-110, 65), 2: (-110, 180), 3: (-180, 0),         # right hip x3, knee
    5: (-65, 110), 6: (-65, 110), 7: (-110, 180), 8: (-180, 0),         # left hip x3, knee
    **{i: (-180, 180) for i in range(10, 22)},                           # pelvis, spine, thorax, neck (3 each)
    24: (-155, 65), 25: (-65, 155), 26: (0, 180), 27: (0, 180),          # right shoulder x2, elbow, wrist frame
    29: (-65, 155), 30: (-65, 155), 31: (0, 180), 32: (0, 180),          # left shoulder x2, elbow, wrist frame
    34: (-180, 180), 35: (-180, 180), 36: (-180, 180),                   # global rotation
}


def angle_bounds() -> tuple[torch.Tensor, torch.Tensor]:
    """(37,) lower and upper bounds in degrees (0, 0 for the forced-zero entries)."""
    lo = torch.zeros(NUM_ANGLES)
    hi = torch.zeros(NUM_ANGLES)
    for i, (a, b) in RANGES.items():
        lo[i], hi[i] = a, b
    return lo, hi


def _chain(alpha, theta_off):
    return {"alpha": torch.tensor(alpha, dtype=torch.float32), "theta_off": torch.tensor(theta_off, dtype=torch.float32)}


# (alpha, theta offset) per frame, degrees; a/d come from bone lengths at run time (§4.2 table).
_RLEG = _chain([0, -90, -90, 0, 0], [0, -90, 180, 0, 0])
_LLEG = _chain([0, 90, 90, 0, 0], [180, -90, 0, 0, 0])
_BODY = _chain([0] + [-90] * 11 + [90], [90] + [-90] * 10 + [0, 0])
_RARM = _chain([-90, -90, -90, 0, 0], [-180, -90, 180, 0, 0])
_LARM = _chain([-90, 90, 90, 0, 0], [0, -90, 0, 0, 0])


def dh_transforms(alpha: torch.Tensor, a: torch.Tensor, theta: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Modified DH transforms: alpha (F,), a (B, F), theta (B, F) degrees, d (B, F) -> (B, F, 4, 4)."""
    al = torch.deg2rad(alpha).to(theta)
    th = torch.deg2rad(theta)
    ca, sa = torch.cos(al).expand_as(th), torch.sin(al).expand_as(th)
    ct, st = torch.cos(th), torch.sin(th)
    zero, one = torch.zeros_like(th), torch.ones_like(th)
    rows = [
        torch.stack([ct, -st, zero, a], -1),
        torch.stack([st * ca, ct * ca, -sa, -d * sa], -1),
        torch.stack([st * sa, ct * sa, ca, d * ca], -1),
        torch.stack([zero, zero, zero, one], -1),
    ]
    return torch.stack(rows, -2)


def _cumulative(T: torch.Tensor, start: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Running products T_1, T_1 T_2, ... (optionally left-multiplied by `start`)."""
    out, acc = [], start
    for i in range(T.shape[1]):
        acc = T[:, i] if acc is None else acc @ T[:, i]
        out.append(acc)
    return out


def rotation_xyz(angles_deg: torch.Tensor) -> torch.Tensor:
    """R = Rx(ax) Ry(ay) Rz(az) for (B, 3) angles in degrees."""
    ax, ay, az = torch.deg2rad(angles_deg).unbind(-1)
    o, z = torch.ones_like(ax), torch.zeros_like(ax)

    def mat(*v):
        return torch.stack([torch.stack(v[0:3], -1), torch.stack(v[3:6], -1), torch.stack(v[6:9], -1)], -2)

    rx = mat(o, z, z, z, torch.cos(ax), -torch.sin(ax), z, torch.sin(ax), torch.cos(ax))
    ry = mat(torch.cos(ay), z, torch.sin(ay), z, o, z, -torch.sin(ay), z, torch.cos(ay))
    rz = mat(torch.cos(az), -torch.sin(az), z, torch.sin(az), torch.cos(az), z, z, z, o)
    return rx @ ry @ rz


class DHSkeleton(torch.nn.Module):
    """Batched DH forward kinematics: (angles, bone lengths, root) -> 16 joints, root-centred or placed.

    angles: (B, 37) degrees; lengths: (B, 15) metres in BONE_NAMES order; root: (B, 3) or None.
    """

    def __init__(self):
        super().__init__()
        for name, ch in (("rleg", _RLEG), ("lleg", _LLEG), ("body", _BODY), ("rarm", _RARM), ("larm", _LARM)):
            self.register_buffer(f"{name}_alpha", ch["alpha"], persistent=False)
            self.register_buffer(f"{name}_off", ch["theta_off"], persistent=False)
        lo, hi = angle_bounds()
        self.register_buffer("lo", lo, persistent=False)
        self.register_buffer("hi", hi, persistent=False)
        mask = torch.ones(NUM_ANGLES)
        mask[list(ZERO_ANGLES)] = 0
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, angles: torch.Tensor, lengths: torch.Tensor, root: torch.Tensor | None = None,
                rotate: bool = True) -> torch.Tensor:
        B = angles.shape[0]
        ang = angles * self.mask
        L = {n: lengths[:, i] for i, n in enumerate(BONE_NAMES)}
        z = torch.zeros(B, dtype=angles.dtype, device=angles.device)

        def frames(name, sl, a_cols, d_cols, nf):
            a = torch.stack(a_cols, 1) if a_cols else angles.new_zeros(B, nf)
            d = torch.stack(d_cols, 1) if d_cols else angles.new_zeros(B, nf)
            theta = getattr(self, f"{name}_off") + ang[:, sl]
            return dh_transforms(getattr(self, f"{name}_alpha"), a, theta, d)

        rleg = _cumulative(frames("rleg", slice(0, 5), [L["r_hip"], z, z, L["r_thigh"], L["r_shin"]], None, 5))
        lleg = _cumulative(frames("lleg", slice(5, 10), [-L["l_hip"], z, z, L["l_thigh"], L["l_shin"]], None, 5))
        body_d = [z, z, z, L["waist"], z, z, L["thorax"], z, z, z, z, z, z]
        body_a = [z] * 12 + [L["neck"]]
        body = _cumulative(frames("body", slice(10, 23), body_a, body_d, 13))
        rarm = _cumulative(frames("rarm", slice(23, 28), [-L["r_clavicle"], z, z, L["r_upper_arm"], L["r_forearm"]],
                                  None, 5), start=body[8])
        larm = _cumulative(frames("larm", slice(28, 33), [L["l_clavicle"], z, z, L["l_upper_arm"], L["l_forearm"]],
                                  None, 5), start=body[8])
        pos = [
            body[0], rleg[0], rleg[3], rleg[4], lleg[0], lleg[3], lleg[4],     # Hip, RHip, RKnee, RFoot, L...
            body[3], body[6], body[12],                                        # Spine, Thorax, Head
            larm[0], larm[3], larm[4], rarm[0], rarm[3], rarm[4],             # LShoulder.., RShoulder..
        ]
        joints = torch.stack([T[:, :3, 3] for T in pos], dim=1)               # (B, 16, 3)
        joints = joints - joints[:, :1]
        if rotate:
            R = rotation_xyz(ang[:, index_tensor(ROTATION, ang.device)])
            joints = joints @ R.transpose(-1, -2)
        if root is not None:
            joints = joints + root[:, None, :]
        return joints

    def ranged(self, raw: torch.Tensor) -> torch.Tensor:
        """Map unconstrained generator outputs (B, 31) into each free angle's range (poster's P_DH)."""
        free = index_tensor(FREE_ANGLES, raw.device)
        lo, hi = self.lo[free], self.hi[free]
        vals = (1 + torch.tanh(raw)) * (hi - lo) / 2 + lo     # fp32 (the ranges) also under autocast
        out = torch.zeros(raw.shape[0], NUM_ANGLES, dtype=vals.dtype, device=raw.device)
        return out.index_copy(1, free, vals)


def upright_alignment(fk: DHSkeleton) -> torch.Tensor:
    """Rotation taking the FK model's zero-angle frame to a z-up frame (spine along +z, hips along x)."""
    dev = fk.mask.device              # the model's device (GPU in training), not the default one
    pose = fk(torch.zeros(1, NUM_ANGLES, device=dev), torch.full((1, 15), 0.3, device=dev), rotate=False)[0]
    up = pose[8] - pose[0]
    side = pose[4] - pose[1]          # right hip -> left hip
    ez = up / up.norm()
    ex = side - (side @ ez) * ez
    ex = ex / ex.norm()
    ey = torch.linalg.cross(ez, ex)
    return torch.stack([ex, ey, ez])  # rows: new axes expressed in FK coordinates


def yaw_matrix(yaw: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(yaw), torch.sin(yaw)
    o, z = torch.ones_like(yaw), torch.zeros_like(yaw)
    return torch.stack([torch.stack([c, -s, z], -1), torch.stack([s, c, z], -1), torch.stack([z, z, o], -1)], -2)

