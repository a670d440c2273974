"""The embedded default dataset: synthetic human motion seen by Human3.6M-like cameras.

Bodies are a forward-kinematics skeleton in the Human3.6M 17-joint layout. Each sequence is a
motion type (walking, gesturing, sitting, sitting down, phoning, waving, bending, and for the
shifted domain also exercising and crouching) written as smooth joint-angle trajectories that are
clipped to anatomical limits, with per-subject bone lengths drawn around the Human3.6M template.
Bone lengths are constant within a subject, feet rest on the floor, and every sequence is seen by
four cameras. Everything is deterministic from the seed.

Domains:
  source  Human3.6M-like: the real calibrated H36M cameras (with distortion), H36M proportions,
          moderate motion amplitudes.
  target  a shifted, MPI-INF-3DHP-like domain: cameras at other heights (0.3-2.6 m), distances
          and a longer focal length (2048x2048, f~1500 px, no distortion), wider pose
          distribution and two extra motion types, other body proportions.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from posectl.core.camera import Camera, h36m_cameras, look_at, project, world_to_camera
from posectl.core.skeleton import H36M17

GENERATOR_VERSION = 2      # 2: the built-in H36M camera constants corrected (1820ba4), so cached v1 data differs
FPS = 50

# Rest directions (body frame: x = subject's right, y = forward, z = up) of each joint's bone from
# its parent, in H36M17 joint order.
_REST_DIRS = np.array([
    [0, 0, 0], [1, 0, 0], [0, 0, -1], [0, 0, -1], [-1, 0, 0], [0, 0, -1], [0, 0, -1],
    [0, 0, 1], [0, 0, 1], [0, 0.35, 0.94], [0, -0.25, 0.97],
    [-1, 0, 0], [0, 0, -1], [0, 0, -1], [1, 0, 0], [0, 0, -1], [0, 0, -1]], dtype=np.float64)
_REST_DIRS[1:] /= np.linalg.norm(_REST_DIRS[1:], axis=1, keepdims=True)

# Human3.6M mean bone lengths (metres) per joint (length of the bone from its parent); S1 template
# values (PoseAug's hm36s15678 table) with the thorax-head bone split into thorax-nose and nose-head.
TEMPLATE_BONES = np.array([0, 0.1329, 0.4429, 0.4542, 0.1329, 0.4429, 0.4542, 0.2335, 0.2571,
                           0.1150, 0.1150, 0.1510, 0.2789, 0.2517, 0.1510, 0.2789, 0.2517])
_BONE_GROUPS = {  # bones scaled together (left/right symmetric)
    "pelvis": [1, 4], "thigh": [2, 5], "shin": [3, 6], "spine": [7, 8], "neck": [9, 10],
    "clavicle": [11, 14], "upper_arm": [12, 15], "forearm": [13, 16]}

# Anatomical limits in degrees for every degree of freedom the generator drives.
LIMITS = {
    "hip_flex": (-30, 125), "hip_abd": (-25, 50), "hip_rot": (-40, 40), "knee": (0, 150),
    "spine_flex": (-25, 85), "spine_lat": (-30, 30), "spine_twist": (-40, 40),
    "chest_flex": (-15, 30), "neck_flex": (-40, 60), "neck_twist": (-70, 70), "neck_lat": (-35, 35),
    "sh_flex": (-60, 180), "sh_abd": (-10, 180), "sh_rot": (-80, 80), "elbow": (0, 150),
}
SIDES = ("r", "l")
MOTIONS_SOURCE = ("Walking", "Directions", "Sitting", "SittingDown", "Phoning", "Greeting", "Purchases")
MOTIONS_TARGET = MOTIONS_SOURCE + ("Exercise", "Crouching")


# version of the body posing (`body="anny"`); 2: rotations interpolated by slerp between key frames
BODY_POSE_VERSION = 2


@dataclass(frozen=True)
class SynthConfig:
    domain: str = "source"          # source | target
    seed: int = 0
    subjects: int = 8
    frames: int = 200               # per sequence (50 Hz)
    sequences_per_motion: int = 1
    amplitude: float = 1.0          # motion amplitude scale (target default 1.45)
    body: str = ""                  # "anny": pose the anny body along each motion (exact meshes, see below)

    def key(self) -> str:
        d = asdict(self)
        if not self.body:
            d.pop("body")                   # keys of body-less datasets are those of earlier versions
        h = hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]
        body = f"-{self.body}{BODY_POSE_VERSION}" if self.body else ""
        return f"{self.domain}{body}-s{self.seed}-v{GENERATOR_VERSION}-{h}"


def _rot(axis: str, deg: np.ndarray) -> np.ndarray:
    a = np.deg2rad(deg)
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    m = {"x": [[o, z, z], [z, c, -s], [z, s, c]],
         "y": [[c, z, s], [z, o, z], [-s, z, c]],
         "z": [[c, -s, z], [s, c, z], [z, z, o]]}[axis]
    return np.moveaxis(np.array(m), (0, 1), (-2, -1))


def forward_kinematics(angles: dict[str, np.ndarray], bones: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """Joint angles (degrees, (T,) each) + bone lengths (17,) + heading -> root-centred world poses (T,17,3)."""
    T = len(yaw)
    eye = np.broadcast_to(np.eye(3), (T, 3, 3))
    local = {j: eye for j in range(17)}
    for side, hip, knee, sh, elb in (("r", 2, 3, 15, 16), ("l", 5, 6, 12, 13)):
        sgn = -1.0 if side == "r" else 1.0  # abduction moves a right limb towards +x
        local[hip] = _rot("x", angles[f"{side}_hip_flex"]) @ _rot("y", sgn * angles[f"{side}_hip_abd"]) \
            @ _rot("z", angles[f"{side}_hip_rot"])
        local[knee] = _rot("x", -angles[f"{side}_knee"])
        local[sh] = _rot("y", sgn * angles[f"{side}_sh_abd"]) @ _rot("x", angles[f"{side}_sh_flex"]) \
            @ _rot("z", angles[f"{side}_sh_rot"])
        local[elb] = _rot("x", angles[f"{side}_elbow"])
    local[7] = _rot("x", -angles["spine_flex"]) @ _rot("y", angles["spine_lat"]) @ _rot("z", angles["spine_twist"])
    local[8] = _rot("x", -angles["chest_flex"])
    local[9] = _rot("x", -angles["neck_flex"]) @ _rot("z", angles["neck_twist"]) @ _rot("y", angles["neck_lat"])
    root_rot = _rot("z", yaw)
    glob = {0: root_rot}
    pos = np.zeros((T, 17, 3))
    for j in range(1, 17):
        p = H36M17.parents[j]
        glob[j] = glob[p] @ local[j]
        pos[:, j] = pos[:, p] + (glob[j] @ (bones[j] * _REST_DIRS[j]))
    return pos


class _Motion:
    """Smooth angle trajectories for one sequence."""

    def __init__(self, rng: np.random.Generator, T: int, amp: float):
        self.rng, self.T, self.amp = rng, T, amp
        self.t = np.arange(T) / FPS

    def wave(self, freq, phase=None):
        ph = self.rng.uniform(0, 2 * np.pi) if phase is None else phase
        return np.sin(2 * np.pi * freq * self.t + ph)

    def drift(self, scale_deg):
        """Low-frequency random perturbation (sum of three slow sinusoids)."""
        out = np.zeros(self.T)
        for _ in range(3):
            out += self.rng.normal(0, scale_deg / 2) * self.wave(self.rng.uniform(0.05, 0.6))
        return out * self.amp

    def ramp(self):
        """Smooth 0 -> 1 transition somewhere in the sequence."""
        mid = self.rng.uniform(0.3, 0.7) * self.t[-1]
        return 1 / (1 + np.exp(-(self.t - mid) * self.rng.uniform(2, 5)))


def _motion_angles(kind: str, rng: np.random.Generator, T: int, amp: float):
    """Angle trajectories (deg), heading (deg) and ground-plane root path (T,2) for one motion."""
    m = _Motion(rng, T, amp)
    base = {f"{s}_{k}": np.zeros(T) for s in SIDES for k in
            ("hip_flex", "hip_abd", "hip_rot", "knee", "sh_flex", "sh_abd", "sh_rot", "elbow")}
    base.update({k: np.zeros(T) for k in ("spine_flex", "spine_lat", "spine_twist", "chest_flex",
                                          "neck_flex", "neck_twist", "neck_lat")})
    a = base
    for s in SIDES:  # relaxed standing pose with individual variation
        a[f"{s}_sh_abd"] += 8 + m.drift(6)
        a[f"{s}_elbow"] += 12 + abs(m.drift(10))
        a[f"{s}_hip_abd"] += 4 + m.drift(3)
        a[f"{s}_knee"] += 4 + abs(m.drift(4))
        a[f"{s}_sh_flex"] += m.drift(10)
        a[f"{s}_sh_rot"] += m.drift(15)
        a[f"{s}_hip_rot"] += m.drift(8)
    a["neck_twist"] += m.drift(25)
    a["neck_flex"] += 8 + m.drift(10)
    a["spine_lat"] += m.drift(4)
    a["spine_twist"] += m.drift(8)
    yaw = rng.uniform(0, 360) + m.drift(40)
    centre = rng.uniform(-0.6, 0.6, size=2)
    path = np.broadcast_to(centre, (T, 2)).copy()
    path += np.stack([m.drift(0.15), m.drift(0.15)], 1) / max(amp, 1e-6) * 1.0

    if kind == "Walking":
        f = rng.uniform(0.8, 1.1)
        g = m.wave(f)
        ph = rng.uniform(0, 2 * np.pi)
        for s, sg in zip(SIDES, (1, -1)):
            a[f"{s}_hip_flex"] += 8 + 24 * amp * sg * np.sin(2 * np.pi * f * m.t + ph)
            a[f"{s}_knee"] += 5 + 45 * amp * np.clip(np.sin(2 * np.pi * f * m.t + ph + sg * 0 + (1.8 if sg > 0 else 1.8 + np.pi)), 0, None)
            a[f"{s}_sh_flex"] += -20 * amp * sg * np.sin(2 * np.pi * f * m.t + ph)
            a[f"{s}_elbow"] += 15 + 10 * amp * np.clip(-sg * np.sin(2 * np.pi * f * m.t + ph), 0, None)
        a["spine_flex"] += 5 + 2 * g
        # walk on a circle around the capture area so the subject stays in view
        radius = rng.uniform(0.8, 1.4)
        direction = rng.choice([-1, 1])
        speed = 1.1 * f
        theta0 = rng.uniform(0, 2 * np.pi)
        theta = theta0 + direction * speed * m.t / radius
        path = np.stack([radius * np.cos(theta), radius * np.sin(theta)], 1)
        yaw = np.rad2deg(theta) + (180 if direction > 0 else 0) + m.drift(5)
    elif kind == "Directions":
        s = rng.choice(SIDES)
        gesture = np.clip(m.wave(rng.uniform(0.15, 0.4)), 0, None)
        a[f"{s}_sh_flex"] += 70 * amp * gesture
        a[f"{s}_sh_abd"] += 25 * amp * gesture
        a[f"{s}_elbow"] += 40 * amp * gesture
        a["spine_twist"] += 10 * m.wave(0.2)
    elif kind in ("Sitting", "SittingDown", "Phoning"):
        sit = {"Sitting": np.ones(T), "SittingDown": m.ramp(),
               "Phoning": np.full(T, float(rng.random() < 0.5))}[kind]
        for s in SIDES:
            a[f"{s}_hip_flex"] += sit * (rng.uniform(75, 100) + m.drift(6))
            a[f"{s}_knee"] += sit * (rng.uniform(75, 105) + m.drift(6))
            a[f"{s}_hip_abd"] += sit * rng.uniform(0, 15)
            a[f"{s}_sh_flex"] += sit * rng.uniform(10, 35)
            a[f"{s}_elbow"] += sit * rng.uniform(40, 80)
        a["spine_flex"] += sit * (rng.uniform(0, 25) + m.drift(8)) + 20 * (kind == "SittingDown") * \
            np.exp(-((m.ramp() - 0.5) ** 2) / 0.05)
        if kind == "Phoning":
            s = rng.choice(SIDES)
            a[f"{s}_sh_flex"] += rng.uniform(25, 50) * amp
            a[f"{s}_sh_abd"] += rng.uniform(10, 35)
            a[f"{s}_elbow"] = np.full(T, rng.uniform(120, 145)) + m.drift(5)
            a["neck_lat"] += rng.uniform(-15, 15)
    elif kind == "Greeting":
        s = rng.choice(SIDES)
        lift = m.ramp()
        a[f"{s}_sh_abd"] += lift * rng.uniform(90, 150) * amp
        a[f"{s}_sh_flex"] += lift * rng.uniform(0, 40)
        a[f"{s}_elbow"] += lift * (50 + 30 * amp * m.wave(rng.uniform(1.0, 2.0)))
    elif kind == "Purchases":  # bending down to pick something up
        bend = np.clip(m.wave(rng.uniform(0.15, 0.35)), 0, None)
        a["spine_flex"] += bend * rng.uniform(40, 75) * amp
        for s in SIDES:
            a[f"{s}_knee"] += bend * rng.uniform(10, 40)
            a[f"{s}_hip_flex"] += bend * rng.uniform(10, 40)
            a[f"{s}_sh_flex"] += bend * rng.uniform(20, 60)
    elif kind == "Exercise":  # jumping jacks / squats
        f = rng.uniform(0.4, 0.9)
        g = 0.5 + 0.5 * m.wave(f)
        if rng.random() < 0.5:
            for s in SIDES:
                a[f"{s}_sh_abd"] += 160 * g
                a[f"{s}_hip_abd"] += 30 * g
        else:
            for s in SIDES:
                a[f"{s}_hip_flex"] += 95 * g
                a[f"{s}_knee"] += 125 * g
                a[f"{s}_sh_flex"] += 85 * g
            a["spine_flex"] += 25 * g
    elif kind == "Crouching":
        for s in SIDES:
            a[f"{s}_hip_flex"] += rng.uniform(100, 120)
            a[f"{s}_knee"] += rng.uniform(125, 145)
            a[f"{s}_sh_flex"] += rng.uniform(30, 100) + 30 * m.wave(0.3)
            a[f"{s}_elbow"] += rng.uniform(20, 90)
        a["spine_flex"] += rng.uniform(20, 50)
    else:
        raise ValueError(f"unknown motion '{kind}'")
    for name, traj in a.items():
        lo, hi = LIMITS[name.split("_", 1)[1] if name[:2] in ("r_", "l_") else name]
        a[name] = np.clip(traj, lo, hi)
    return a, yaw, path


def _subject_bones(rng: np.random.Generator, domain: str) -> np.ndarray:
    bones = TEMPLATE_BONES.copy()
    if domain == "source":
        bones *= rng.normal(1.0, 0.04)
        spread, bias = 0.04, {}
    else:  # other body proportions: longer legs and forearms, shorter spine
        bones *= rng.normal(1.0, 0.07)
        spread, bias = 0.08, {"thigh": 1.06, "shin": 1.07, "spine": 0.93, "forearm": 1.05, "neck": 1.1}
    for group, idx in _BONE_GROUPS.items():
        bones[idx] *= bias.get(group, 1.0) * np.clip(rng.normal(1.0, spread), 1 - 2.5 * spread, 1 + 2.5 * spread)
    return bones


def _subject_cameras(rng: np.random.Generator, domain: str, index: int) -> list[Camera]:
    if domain == "source":
        return h36m_cameras(("S1", "S5", "S6", "S7", "S8", "S9", "S11")[index % 7])
    cams = []
    az0 = rng.uniform(0, 2 * np.pi)
    for i in range(4):
        az = az0 + i * np.pi / 2 + rng.uniform(-0.4, 0.4)
        dist = rng.uniform(3.0, 5.0)
        height = rng.uniform(0.3, 2.6)
        centre = np.array([dist * np.cos(az), dist * np.sin(az), height])
        R, t = look_at(centre, [rng.uniform(-0.3, 0.3), rng.uniform(-0.3, 0.3), rng.uniform(0.7, 1.1)])
        f = rng.uniform(1450, 1550)
        c = 1024 + rng.uniform(-20, 20, size=2)
        cams.append(Camera(f"tgt{index:02d}c{i}", R, t, np.array([f, f]), c, width=2048, height=2048))
    return cams


def generate(cfg: SynthConfig) -> dict[str, dict]:
    """Generate every subject: {subject: dict of arrays (rows = sequence x camera x frame)}."""
    if cfg.domain not in ("source", "target"):
        raise ValueError(f"unknown synthetic domain '{cfg.domain}' (source | target)")
    motions = MOTIONS_SOURCE if cfg.domain == "source" else MOTIONS_TARGET
    amp = cfg.amplitude * (1.0 if cfg.domain == "source" else 1.45)
    prefix = "s" if cfg.domain == "source" else "t"
    children = np.random.SeedSequence([cfg.seed, 0 if cfg.domain == "source" else 1]).spawn(cfg.subjects)
    body = None
    if cfg.body:
        if cfg.body != "anny":
            raise ValueError(f"unknown synthetic body '{cfg.body}' (anny)")
        import torch

        from posectl.core.bodies import AnnyBody, matrix_to_rotvec, rotvec_to_matrix
        body = AnnyBody()
    out = {}
    for si, ss in enumerate(children):
        rng = np.random.default_rng(ss)
        subject = f"{prefix}{si + 1:02d}"
        bones = _subject_bones(rng, cfg.domain)
        cams = _subject_cameras(rng, cfg.domain, si)
        rows = {k: [] for k in ("keypoints_2d", "joints_3d", "intrinsics", "image_size", "extrinsics",
                                "action", "camera", "frame", *(["body_params"] if body else []))}
        if body is not None:        # the subject's body shape: phenotypes uniform in [0.2, 0.8]
            u = np.random.default_rng([cfg.seed, si, 7]).uniform(0.2, 0.8, body.num_shape)
            shape = torch.from_numpy(np.log(u / (1 - u)).astype(np.float32))
        seqs = []
        for motion in motions:
            for rep in range(cfg.sequences_per_motion):
                angles, yaw, path = _motion_angles(motion, rng, cfg.frames, amp)
                seqs.append((motion, rep, path, forward_kinematics(angles, bones, yaw), None))
        if body is not None:            # the body follows each motion; its own joints replace the skeleton's
            import sys
            print(f"posing the anny body along the motions of subject {si + 1}/{cfg.subjects}", file=sys.stderr,
                  flush=True)
            posed = body.pose_sequences([torch.from_numpy(q[3] - q[3][:, :1]).float() for q in seqs], shape)
            seqs = [(m, r, pa, j.double().numpy(), params) for (m, r, pa, _, _), (params, j) in zip(seqs, posed)]
        for motion, rep, path, pose, params in seqs:
            floor = pose[:, [3, 6], 2].min(1)          # feet on the floor
            world = pose.copy()
            world[..., 0] += path[:, None, 0]
            world[..., 1] += path[:, None, 1]
            world[..., 2] -= floor[:, None]
            action = motion if rep == 0 else f"{motion} {rep}"
            for cam in cams:
                X = world_to_camera(world, cam.R, cam.t)
                rows["joints_3d"].append(X)
                rows["keypoints_2d"].append(project(X, cam.intrinsics.astype(np.float64)))
                rows["intrinsics"].append(np.broadcast_to(cam.intrinsics, (cfg.frames, 9)))
                rows["image_size"].append(np.broadcast_to([cam.width, cam.height], (cfg.frames, 2)))
                rows["extrinsics"].append(np.broadcast_to(np.concatenate([cam.R.ravel(), cam.t]), (cfg.frames, 12)))
                rows["action"] += [action] * cfg.frames
                rows["camera"] += [cam.id] * cfg.frames
                rows["frame"].append(np.arange(cfg.frames))
                if body is not None:    # global rotation into the camera frame
                    pc = params.clone()
                    Rg = torch.from_numpy(cam.R.astype(np.float32)) @ rotvec_to_matrix(pc[:, :3])
                    pc[:, :3] = matrix_to_rotvec(Rg)
                    rows["body_params"].append(pc.numpy())
        out[subject] = {k: (np.asarray(v) if isinstance(v[0], str) else np.concatenate(v)) for k, v in rows.items()}
        out[subject]["bones"] = bones
    return out


def default_splits(subjects: list[str]) -> dict[str, list[str]]:
    """Hold out whole subjects: ~60 % train, one validation subject, the rest test."""
    n = len(subjects)
    if n < 3:
        raise ValueError("the synthetic dataset needs at least 3 subjects (train, val, test)")
    n_test = max(1, round(n * 0.25))
    n_val = 1
    return {"train": subjects[: n - n_test - n_val], "val": subjects[n - n_test - n_val: n - n_test],
            "test": subjects[n - n_test:]}


def write_synthetic(out: str | Path, cfg: SynthConfig, overwrite: bool = False) -> Path:
    from posectl.datasets.store import DatasetWriter, PoseArrays, table_from_arrays

    data = generate(cfg)
    splits = default_splits(sorted(data))
    info = {"generator": "posectl.synthetic", "generator_version": GENERATOR_VERSION, **asdict(cfg),
            "fps": FPS, "motions": list(MOTIONS_SOURCE if cfg.domain == "source" else MOTIONS_TARGET)}
    spec = {"model": cfg.body, "dim": int(data[next(iter(data))]["body_params"].shape[1])} if cfg.body else None
    with DatasetWriter(out, f"synthetic-{cfg.domain}{'-' + cfg.body if cfg.body else ''}", "h36m17", info=info,
                       overwrite=overwrite, body_params=spec) as w:
        for split, subjects in splits.items():
            tables = []
            for s in subjects:
                d = data[s]
                n = len(d["frame"])
                arr = PoseArrays(d["keypoints_2d"], d["joints_3d"], d["intrinsics"], d["image_size"],
                                 np.full(n, s), d["action"], d["camera"], d["frame"],
                                 body_params=d.get("body_params"))
                tables.append(table_from_arrays(arr, f"synthetic-{cfg.domain}", cfg.domain, d["extrinsics"]))
            import pyarrow as pa
            w.add_split(split, pa.concat_tables(tables), subjects)
        return w.commit()


def cache_dir() -> Path:
    return Path(os.environ.get("POSECTL_CACHE", Path.home() / ".cache" / "posectl"))


def cached_synthetic(domain: str = "source", seed: int = 0, **kw) -> Path:
    """Path of the cached synthetic dataset, generating it on first use."""
    cfg = SynthConfig(domain=domain, seed=seed, **kw)
    path = cache_dir() / "synthetic" / cfg.key()
    if not (path / "manifest.json").is_file():
        from posectl.errors import DataError
        try:
            write_synthetic(path, cfg)
        except (OSError, DataError):
            if not (path / "manifest.json").is_file():  # unless a concurrent writer got there first
                raise
    return path
