"""Camera model: world <-> camera, Human3.6M distortion, screen normalisation, real H36M cameras.

Conventions (same as ../shared/data/h36m/cameras.json):
  X_cam = R @ X_world + t   (R rotates world to camera; t = -R @ C, C the centre in metres)
  camera frame: x right, y down, z forward.
  intrinsics 9-vector: [fx, fy, cx, cy, k1, k2, k3, p1, p2] in pixels, with p in the Human3.6M
  (cameras.h5) order. VideoPose3D's `tangential_distortion` is [p2, p1] of this order.

All functions accept numpy arrays or torch tensors (torch keeps gradients).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def _is_torch(x) -> bool:
    """A torch tensor (of any subclass), without importing torch for numpy callers."""
    import sys
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _stack(xs, axis=-1):
    if _is_torch(xs[0]):
        import torch
        return torch.stack(xs, dim=axis)
    return np.stack(xs, axis=axis)


def world_to_camera(X, R, t):
    """X (..., J, 3) world -> camera; R (..., 3, 3) and t (..., 3) broadcast over the leading dims."""
    return _einsum("...ij,...kj->...ki", R, X) + t[..., None, :]


def camera_to_world(X, R, t):
    """Inverse of world_to_camera: X_world = R^T (X_cam - t)."""
    return _einsum("...ji,...kj->...ki", R, X - t[..., None, :])


def _einsum(eq, *ops):
    if _is_torch(ops[1]):
        import torch
        return torch.einsum(eq, *(torch.as_tensor(o, dtype=ops[1].dtype, device=ops[1].device) for o in ops))
    return np.einsum(eq, *ops)


def project(X, intrinsics, distort: bool = True):
    """Project camera-frame points (..., J, 3) to pixels (..., J, 2).

    `intrinsics` is (..., 9) broadcastable against the leading dims of X. Human3.6M's model:
    x = X/Z, y = Y/Z; r2 = x^2+y^2; radial = 1 + k1 r2 + k2 r2^2 + k3 r2^3; tan = p1 y + p2 x;
    x_d = x (radial + tan) + p2 r2; y_d = y (radial + tan) + p1 r2; u = fx x_d + cx.
    """
    intr = intrinsics[..., None, :]  # broadcast over joints
    x = X[..., 0] / X[..., 2]
    y = X[..., 1] / X[..., 2]
    if distort:
        r2 = x * x + y * y
        radial = 1 + intr[..., 4] * r2 + intr[..., 5] * r2 ** 2 + intr[..., 6] * r2 ** 3
        tan = intr[..., 7] * y + intr[..., 8] * x
        x, y = x * (radial + tan) + intr[..., 8] * r2, y * (radial + tan) + intr[..., 7] * r2
    return _stack([intr[..., 0] * x + intr[..., 2], intr[..., 1] * y + intr[..., 3]])


def normalize_screen(uv, width, height):
    """Pixels -> [-1, 1] along x, both axes divided by the width (VideoPose3D convention)."""
    w = _as_col(width, uv)
    h = _as_col(height, uv)
    return _stack([uv[..., 0] / w * 2 - 1, uv[..., 1] / w * 2 - h / w])


def image_coordinates(xy, width, height):
    """Inverse of normalize_screen."""
    w = _as_col(width, xy)
    h = _as_col(height, xy)
    return _stack([(xy[..., 0] + 1) * w / 2, (xy[..., 1] + h / w) * w / 2])


def _as_col(v, like):
    """Scalar or per-sample (...,) value broadcast against (..., J) coordinates."""
    if np.isscalar(v):
        return v
    if _is_torch(like):
        import torch
        v = torch.as_tensor(v, dtype=like.dtype, device=like.device)
    else:
        v = np.asarray(v, dtype=like.dtype)
    return v[..., None] if v.ndim == like.ndim - 2 else v


def quaternion_to_matrix(q) -> np.ndarray:
    """Unit quaternion (w, x, y, z) -> 3x3 rotation matrix."""
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def look_at(center, target, up=(0.0, 0.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """Rotation/translation of a camera at `center` looking at `target` (world z up, image y down)."""
    center = np.asarray(center, dtype=np.float64)
    fwd = np.asarray(target, dtype=np.float64) - center
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, np.asarray(up, dtype=np.float64))
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    R = np.stack([right, down, fwd])
    return R, -R @ center


@dataclass
class Camera:
    id: str
    R: np.ndarray
    t: np.ndarray
    f: np.ndarray
    c: np.ndarray
    k: np.ndarray = field(default_factory=lambda: np.zeros(3))
    p: np.ndarray = field(default_factory=lambda: np.zeros(2))
    width: int = 1000
    height: int = 1000

    @property
    def intrinsics(self) -> np.ndarray:
        return np.concatenate([self.f, self.c, self.k, self.p]).astype(np.float32)

    @property
    def center(self) -> np.ndarray:
        return -self.R.T @ self.t


# Human3.6M cameras (published calibration, as in VideoPose3D's table): intrinsics per camera,
# extrinsics per subject as (orientation quaternion w,x,y,z rotating camera->world, centre in mm).
H36M_CAMERA_IDS = ("54138969", "55011271", "58860488", "60457274")
_H36M_INTRINSICS = {  # f, c, k, p (p in Human3.6M order), width, height
    "54138969": ((1145.0494, 1143.7811), (512.5415, 515.4515), (-0.20709891, 0.24777518, -0.00307515),
                 (-0.00142447, -0.00097570), 1000, 1002),
    "55011271": ((1149.6757, 1147.5917), (508.8486, 508.0649), (-0.19421363, 0.24040854, 0.00681998),
                 (-0.00274089, -0.00161903), 1000, 1000),
    "58860488": ((1149.1407, 1148.7990), (519.8159, 501.4026), (-0.20833819, 0.25548801, -0.00246050),
                 (-0.00075950, 0.00148438), 1000, 1000),
    "60457274": ((1145.5114, 1144.7739), (514.9682, 501.8820), (-0.19838409, 0.21832368, -0.00894781),
                 (-0.00181336, -0.00058721), 1000, 1002),
}
_H36M_EXTRINSICS = {
    "S1": [((0.140706, -0.150070, -0.755241, 0.622328), (1841.11, 4955.28, 1563.45)),
           ((0.615719, -0.764836, -0.148338, 0.117947), (1761.28, -5078.01, 1606.27)),
           ((0.146515, -0.146479, 0.765302, -0.609418), (-1846.78, 5215.05, 1491.97)),
           ((0.583401, -0.785316, 0.145488, -0.147496), (-1794.79, -3722.70, 1574.89))],
    "S5": [((0.146738, -0.162371, -0.755189, 0.617894), (2097.39, 4880.94, 1605.73)),
           ((0.615976, -0.762679, -0.157282, 0.118982), (2031.70, -5167.93, 1612.92)),
           ((0.142914, -0.129078, 0.767838, -0.611014), (-1620.59, 5171.66, 1496.44)),
           ((0.592048, -0.781422, 0.127475, -0.150364), (-1637.17, -3867.32, 1547.03))],
    "S6": [((0.133790, -0.156924, -0.757109, 0.619888), (1935.45, 4950.25, 1618.08)),
           ((0.614720, -0.762881, -0.161748, 0.118192), (1969.80, -5128.74, 1632.78)),
           ((0.152995, -0.135291, 0.764610, -0.611278), (-1769.60, 5185.36, 1476.99)),
           ((0.591610, -0.780477, 0.128323, -0.156159), (-1721.67, -3884.13, 1540.49))],
    "S7": [((0.143524, -0.163134, -0.754833, 0.618882), (1974.51, 4926.35, 1597.83)),
           ((0.614167, -0.763826, -0.159665, 0.117793), (1937.06, -5119.79, 1631.57)),
           ((0.145501, -0.128748, 0.766052, -0.612714), (-1741.81, 5208.25, 1464.82)),
           ((0.591285, -0.782176, 0.124455, -0.151965), (-1734.71, -3832.42, 1548.58))],
    "S8": [((0.141106, -0.155899, -0.756192, 0.619644), (2150.65, 4896.16, 1611.90)),
           ((0.616960, -0.764767, -0.148464, 0.111582), (2219.97, -5148.45, 1613.04)),
           ((0.147144, -0.133771, 0.767013, -0.610037), (-1571.22, 5137.02, 1498.18)),
           ((0.592782, -0.782587, 0.121478, -0.146320), (-1476.91, -3896.74, 1547.97))],
    "S9": [((0.155406, -0.155482, -0.753210, 0.619959), (2044.46, 4935.12, 1481.23)),
           ((0.618784, -0.763474, -0.141322, 0.119340), (1990.96, -5123.81, 1568.80)),
           ((0.133578, -0.136710, 0.768945, -0.610074), (-1670.99, 5211.99, 1528.39)),
           ((0.587940, -0.782341, 0.142761, -0.147949), (-1696.04, -3827.10, 1591.41))],
    "S11": [((0.152325, -0.154423, -0.754756, 0.619107), (2098.44, 4926.55, 1500.28)),
            ((0.618945, -0.760092, -0.153006, 0.125526), (2083.18, -4912.17, 1561.08)),
            ((0.149432, -0.156502, 0.768123, -0.602630), (-1609.82, 5177.34, 1537.90)),
            ((0.589425, -0.781888, 0.139912, -0.147154), (-1590.74, -3854.17, 1578.02))],
}


def h36m_cameras(subject: str) -> list[Camera]:
    """The four calibrated Human3.6M cameras of `subject` (S1, S5-S9, S11), in VideoPose3D order."""
    if subject not in _H36M_EXTRINSICS:
        raise ValueError(f"no Human3.6M calibration for subject '{subject}'")
    cams = []
    for cid, (q, centre_mm) in zip(H36M_CAMERA_IDS, _H36M_EXTRINSICS[subject]):
        f, c, k, p, w, h = _H36M_INTRINSICS[cid]
        R = quaternion_to_matrix(q).T
        t = -R @ (np.asarray(centre_mm) / 1000.0)
        cams.append(Camera(cid, R, t, np.array(f), np.array(c), np.array(k), np.array(p), w, h))
    return cams


def cameras_from_json(obj: dict) -> dict[str, list[Camera]]:
    """Parse a cameras.json-style dict: subjects -> camera id -> {R, t, f, c, k, p, width, height};
    a wrong structure is a one-line DataError naming the subject, camera and key."""
    from posectl.errors import DataError
    if not isinstance(obj, dict) or not isinstance(obj.get("subjects"), dict) or not obj["subjects"]:
        raise DataError("expected an object with 'subjects': subject -> camera id -> calibration")
    order = obj.get("camera_order")
    if order is not None and (not isinstance(order, list) or not all(isinstance(c, str) for c in order)):
        raise DataError("'camera_order' must be a list of camera ids")
    order = order or list(H36M_CAMERA_IDS)
    out = {}
    for subject, cams in obj["subjects"].items():
        if not isinstance(cams, dict) or not cams:
            raise DataError(f"subjects['{subject}'] must be an object camera id -> calibration")
        parsed = {cid: _camera_from_json(cid, c, f"{subject} camera {cid}") for cid, c in cams.items()}
        out[subject] = [parsed[cid] for cid in order if cid in parsed]
        if not out[subject]:
            raise DataError(f"no camera of {subject} is in the camera order ({', '.join(order)})")
    return out


def _camera_from_json(cid: str, c, where: str) -> Camera:
    from posectl.errors import DataError
    if not isinstance(c, dict):
        raise DataError(f"{where}: calibration must be an object with R, t, f, c, width, height")
    shapes = {"R": (3, 3), "t": (3,), "f": (2,), "c": (2,), "k": (3,), "p": (2,)}
    v = {"k": np.zeros(3), "p": np.zeros(2)}               # no distortion unless given
    for key, shape in shapes.items():
        if key not in c:
            if key in v:
                continue
            raise DataError(f"{where}: lacks '{key}'")
        try:
            v[key] = np.asarray(c[key], dtype=np.float64)
        except (ValueError, TypeError):
            v[key] = None
        if v[key] is None or v[key].shape != shape or not np.isfinite(v[key]).all():
            raise DataError(f"{where}: '{key}' must be {' x '.join(map(str, shape))} finite numbers")
    for key in ("width", "height"):
        x = c.get(key)
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not np.isfinite(x) or x != int(x) or x <= 0:
            raise DataError(f"{where}: '{key}' must be a positive integer (pixels)")
    return Camera(cid, v["R"], v["t"], v["f"], v["c"], v["k"], v["p"], int(c["width"]), int(c["height"]))
