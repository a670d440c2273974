"""Joint layouts (Human3.6M 32/17/16, MPII-16 detections, MPI-INF-3DHP 17), conversions and bones.

Index lists follow VideoPose3D / SemGCN / PoseAug (see docs/data.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class Layout:
    name: str
    joints: tuple[str, ...]
    parents: tuple[int, ...]
    left: tuple[int, ...]
    right: tuple[int, ...]
    root: int = 0

    @property
    def num_joints(self) -> int:
        return len(self.joints)

    @cached_property
    def bones(self) -> tuple[tuple[int, int], ...]:
        """(parent, child) pairs in joint order, root excluded."""
        return tuple((p, j) for j, p in enumerate(self.parents) if p >= 0)

    @cached_property
    def flip_permutation(self) -> np.ndarray:
        """Joint permutation that swaps left and right."""
        perm = np.arange(self.num_joints)
        perm[list(self.left)] = self.right
        perm[list(self.right)] = self.left
        return perm

    def index(self, name: str) -> int:
        return self.joints.index(name)


_H36M17_NAMES = (
    "Hip", "RHip", "RKnee", "RFoot", "LHip", "LKnee", "LFoot", "Spine", "Thorax", "Neck/Nose",
    "Head", "LShoulder", "LElbow", "LWrist", "RShoulder", "RElbow", "RWrist",
)

H36M17 = Layout(
    "h36m17", _H36M17_NAMES,
    parents=(-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15),
    left=(4, 5, 6, 11, 12, 13), right=(1, 2, 3, 14, 15, 16),
)

H36M16 = Layout(
    "h36m16", tuple(n for n in _H36M17_NAMES if n != "Neck/Nose"),
    parents=(-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 8, 10, 11, 8, 13, 14),
    left=(4, 5, 6, 10, 11, 12), right=(1, 2, 3, 13, 14, 15),
)

# Full 32-joint mocap skeleton; unnamed entries are static duplicates / end sites.
_H36M32_PARENTS = (-1, 0, 1, 2, 3, 4, 0, 6, 7, 8, 9, 0, 11, 12, 13, 14, 12, 16, 17, 18, 19, 20,
                   19, 22, 12, 24, 25, 26, 27, 28, 27, 30)
H36M32_TO_17 = (0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 15, 17, 18, 19, 25, 26, 27)
H36M32_TO_16 = (0, 1, 2, 3, 6, 7, 8, 12, 13, 15, 17, 18, 19, 25, 26, 27)
_h36m32_names = [f"site{i}" for i in range(32)]
for _i, _n in zip(H36M32_TO_17, _H36M17_NAMES):
    _h36m32_names[_i] = _n
H36M32 = Layout(
    "h36m32", tuple(_h36m32_names), parents=_H36M32_PARENTS,
    left=(6, 7, 8, 9, 10, 16, 17, 18, 19, 20, 21, 22, 23),
    right=(1, 2, 3, 4, 5, 24, 25, 26, 27, 28, 29, 30, 31),
)

# Stacked-hourglass / MPII 16-joint detections as shipped by VideoPose3D (`sh_pt_mpii`, `sh_ft_h36m`).
MPII16 = Layout(
    "mpii16",
    ("RFoot", "RKnee", "RHip", "LHip", "LKnee", "LFoot", "Hip", "Spine", "Thorax", "Head",
     "RWrist", "RElbow", "RShoulder", "LShoulder", "LElbow", "LWrist"),
    parents=(1, 2, 6, 6, 3, 4, -1, 6, 7, 8, 11, 12, 8, 8, 13, 14),
    left=(3, 4, 5, 13, 14, 15), right=(2, 1, 0, 12, 11, 10), root=6,
)

# MPI-INF-3DHP official 17-joint test order (root = pelvis, index 14).
MPI3DHP17 = Layout(
    "3dhp17",
    ("head_top", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist",
     "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "pelvis", "spine", "head"),
    parents=(16, 15, 1, 2, 3, 1, 5, 6, 14, 8, 9, 14, 11, 12, -1, 14, 1),
    left=(5, 6, 7, 11, 12, 13), right=(2, 3, 4, 8, 9, 10), root=14,
)

LAYOUTS: dict[str, Layout] = {l.name: l for l in (H36M17, H36M16, H36M32, MPII16, MPI3DHP17)}

# index lists: target joint i is taken from source joint MAP[i]
_CONVERSIONS: dict[tuple[str, str], tuple[int, ...]] = {
    ("h36m32", "h36m17"): H36M32_TO_17,
    ("h36m32", "h36m16"): H36M32_TO_16,
    ("h36m17", "h36m16"): tuple(i for i in range(17) if i != 9),
    ("mpii16", "h36m16"): (6, 2, 1, 0, 3, 4, 5, 7, 8, 9, 13, 14, 15, 12, 11, 10),
    # semantic mapping by joint names (neck -> Thorax, head -> Neck/Nose, head_top -> Head)
    ("3dhp17", "h36m17"): (14, 8, 9, 10, 11, 12, 13, 15, 1, 16, 0, 5, 6, 7, 2, 3, 4),
}
_CONVERSIONS[("3dhp17", "h36m16")] = tuple(
    _CONVERSIONS[("3dhp17", "h36m17")][i] for i in _CONVERSIONS[("h36m17", "h36m16")])


def get_layout(name: str) -> Layout:
    try:
        return LAYOUTS[name]
    except KeyError:
        raise ValueError(f"unknown joint layout '{name}' (known: {', '.join(LAYOUTS)})") from None


def conversion_indices(src: str, dst: str) -> tuple[int, ...]:
    if src == dst:
        return tuple(range(get_layout(src).num_joints))
    try:
        return _CONVERSIONS[(src, dst)]
    except KeyError:
        raise ValueError(f"no joint mapping from layout '{src}' to '{dst}'") from None


def convert(poses, src: str, dst: str):
    """Select/reorder joints (axis -2) from layout `src` into layout `dst`."""
    return poses[..., list(conversion_indices(src, dst)), :]


def bone_lengths(poses, layout: Layout):
    """(..., J, D) -> (..., J-1) Euclidean bone lengths in the order of `layout.bones`."""
    parents = [p for p, _ in layout.bones]
    children = [c for _, c in layout.bones]
    d = poses[..., children, :] - poses[..., parents, :]
    return (d ** 2).sum(-1) ** 0.5


_INDEX: dict[tuple, object] = {}


def index_tensor(values, device):
    """A long tensor of the joint/bone numbers `values` on `device`, made once per process and device (a
    Python list used as an index makes and copies a new one, a blocking copy on a GPU, at every call)."""
    import torch
    key = (tuple(int(v) for v in values), str(device))
    if key not in _INDEX:
        _INDEX[key] = torch.tensor(key[0], dtype=torch.long, device=device)
    return _INDEX[key]


def flip_poses(poses, layout: Layout):
    """Mirror poses horizontally (x -> -x) and swap left/right joints.

    Works for root-relative 3D and for screen-normalised 2D (centred on 0); numpy or torch.
    """
    if not isinstance(poses, np.ndarray):  # torch: no constant made (and copied to the device) per call
        import torch
        out = poses[..., index_tensor(layout.flip_permutation, poses.device), :]
        return torch.cat([-out[..., :1], out[..., 1:]], -1)
    out = poses[..., layout.flip_permutation, :]
    sign = np.ones(poses.shape[-1], dtype=np.float32)
    sign[0] = -1.0
    return out * sign


# -- 2D keypoint layouts of detectors, mapped onto h36m17 for `posectl predict` ------------------------
# A target joint is one source joint, or the mean of several ("derived": e.g. the pelvis as the hips'
# midpoint, as the importers do). Names follow each detector's documentation.
COCO17_JOINTS = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
                 "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
                 "left_knee", "right_knee", "left_ankle", "right_ankle")
BODY25_JOINTS = ("Nose", "Neck", "RShoulder", "RElbow", "RWrist", "LShoulder", "LElbow", "LWrist", "MidHip",
                 "RHip", "RKnee", "RAnkle", "LHip", "LKnee", "LAnkle", "REye", "LEye", "REar", "LEar",
                 "LBigToe", "LSmallToe", "LHeel", "RBigToe", "RSmallToe", "RHeel")
# HumanEva-I's 15 joints in VideoPose3D's order (datasets/humaneva.py)
HUMANEVA15_JOINTS = ("pelvis", "thorax", "lshoulder", "lelbow", "lwrist", "rshoulder", "relbow", "rwrist",
                     "lhip", "lknee", "lankle", "rhip", "rknee", "rankle", "head")
KEYPOINT_JOINTS: dict[str, tuple[str, ...]] = {
    "coco17": COCO17_JOINTS, "body25": BODY25_JOINTS, "humaneva15": HUMANEVA15_JOINTS,
    "h36m17": H36M17.joints, "h36m16": H36M16.joints, "mpii16": MPII16.joints, "3dhp17": MPI3DHP17.joints,
}


def _by_name(src: tuple[str, ...], spec: tuple) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(src.index(n) for n in ((s,) if isinstance(s, str) else s)) for s in spec)


_FACE = ("left_eye", "right_eye", "left_ear", "right_ear")
_KEYPOINT_MAPS: dict[tuple[str, str], tuple[tuple[int, ...], ...]] = {
    # h36m17 order: Hip RHip RKnee RFoot LHip LKnee LFoot Spine Thorax Neck/Nose Head LShoulder LElbow
    #               LWrist RShoulder RElbow RWrist
    ("coco17", "h36m17"): _by_name(COCO17_JOINTS, (
        ("left_hip", "right_hip"), "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee",
        "left_ankle", ("left_hip", "right_hip", "left_shoulder", "right_shoulder"),
        ("left_shoulder", "right_shoulder"), "nose", _FACE, "left_shoulder", "left_elbow", "left_wrist",
        "right_shoulder", "right_elbow", "right_wrist")),
    ("body25", "h36m17"): _by_name(BODY25_JOINTS, (
        "MidHip", "RHip", "RKnee", "RAnkle", "LHip", "LKnee", "LAnkle", ("MidHip", "Neck"), "Neck", "Nose",
        ("LEye", "REye", "LEar", "REar"), "LShoulder", "LElbow", "LWrist", "RShoulder", "RElbow", "RWrist")),
    ("humaneva15", "h36m17"): _by_name(HUMANEVA15_JOINTS, (
        "pelvis", "rhip", "rknee", "rankle", "lhip", "lknee", "lankle", ("pelvis", "thorax"), "thorax",
        ("thorax", "head"), "head", "lshoulder", "lelbow", "lwrist", "rshoulder", "relbow", "rwrist")),
    ("h36m16", "h36m17"): _by_name(H36M16.joints, (
        *H36M16.joints[:9], ("Thorax", "Head"), *H36M16.joints[9:])),
}
_KEYPOINT_MAPS[("mpii16", "h36m17")] = _by_name(MPII16.joints, (
    *H36M16.joints[:9], ("Thorax", "Head"), *H36M16.joints[9:]))


def keypoint_mapping(src: str, dst: str) -> tuple[tuple[int, ...], ...]:
    """For each joint of layout `dst`, the joints of `src` averaged into it (one index: taken as is)."""
    if src not in KEYPOINT_JOINTS:
        raise ValueError(f"unknown keypoint layout '{src}' (known: {', '.join(KEYPOINT_JOINTS)})")
    if (src, dst) in _KEYPOINT_MAPS:
        return _KEYPOINT_MAPS[(src, dst)]
    return tuple((i,) for i in conversion_indices(src, dst))


def describe_mapping(src: str, dst: str) -> list[dict]:
    """`keypoint_mapping` by joint names, for manifests and outputs: [{"joint", "from", "derived"}]."""
    names = KEYPOINT_JOINTS[src]
    dst_names = KEYPOINT_JOINTS.get(dst) or get_layout(dst).joints
    return [{"joint": j, "from": [names[i] for i in ix], "derived": len(ix) > 1}
            for j, ix in zip(dst_names, keypoint_mapping(src, dst))]


def map_keypoints(kp: np.ndarray, src: str, dst: str) -> np.ndarray:
    """(..., J_src, C) -> (..., J_dst, C): joints taken or averaged per `keypoint_mapping` (NaN propagates)."""
    mapping = keypoint_mapping(src, dst)
    return np.stack([kp[..., list(ix), :].mean(-2) for ix in mapping], axis=-2)


# Evaluation joint sets, as h36m17 indices:
#   all  the 17 joints (VideoPose3D; root included with zero error)
#   16   without Neck/Nose (SemGCN / PoseAug / DH-AUG 16-joint protocol, incl. 3DHP PCK of PoseAug)
#   14   without Hip (root), Spine and Neck/Nose (Pose2Mesh's 14 joints; P-STMO/MixSTE-style 3DHP PCK)
EVAL_JOINT_SETS: dict[str, tuple[int, ...]] = {
    "all": tuple(range(17)),
    "16": tuple(i for i in range(17) if i != 9),
    "14": tuple(i for i in range(17) if i not in (0, 7, 9)),
}
