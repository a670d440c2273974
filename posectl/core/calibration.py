"""A pinhole camera recovered from 2D-3D correspondences: the direct linear transform (DLT), Hartley-
normalised, then an RQ decomposition into intrinsics and a rotation. For datasets whose files carry no
calibration (HumanEva-I in VideoPose3D's layout: datasets/humaneva.py).
"""
from __future__ import annotations

import numpy as np


def _normaliser(pts: np.ndarray) -> np.ndarray:
    """Similarity that moves points to their centroid and scales their mean distance to sqrt(dim)."""
    d = pts.shape[1]
    c = pts.mean(0)
    s = np.sqrt(d) / max(np.linalg.norm(pts - c, axis=1).mean(), 1e-12)
    T = np.eye(d + 1)
    T[:d, :d] *= s
    T[:d, d] = -s * c
    return T


def dlt(X: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """The 3x4 projection matrix P (uv ~ P [X; 1]) from N >= 6 correspondences, least squares."""
    X, uv = np.asarray(X, np.float64).reshape(-1, 3), np.asarray(uv, np.float64).reshape(-1, 2)
    ok = np.isfinite(X).all(1) & np.isfinite(uv).all(1)
    X, uv = X[ok], uv[ok]
    if len(X) < 6:
        raise ValueError(f"a camera needs at least 6 2D-3D pairs, got {len(X)}")
    T3, T2 = _normaliser(X), _normaliser(uv)
    Xh = np.c_[X, np.ones(len(X))] @ T3.T
    uh = np.c_[uv, np.ones(len(uv))] @ T2.T
    A = np.zeros((2 * len(X), 12))
    A[0::2, 0:4] = Xh
    A[0::2, 8:12] = -uh[:, :1] * Xh
    A[1::2, 4:8] = Xh
    A[1::2, 8:12] = -uh[:, 1:2] * Xh
    P = np.linalg.svd(A, full_matrices=False)[2][-1].reshape(3, 4)
    return np.linalg.inv(T2) @ P @ T3


def decompose(P: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """P = K [R | t] with K upper triangular (positive diagonal, K[2, 2] = 1) and R a rotation (P's
    unknown sign is fixed by det R = +1)."""
    M = P[:, :3]
    # RQ decomposition through QR of the row-reversed transpose
    flip = np.eye(3)[::-1]
    q, r = np.linalg.qr((flip @ M).T)
    K = flip @ r.T @ flip
    R = flip @ q.T
    S = np.diag(np.sign(np.diag(K)))
    K, R = K @ S, S @ R
    t = np.linalg.solve(K, P[:, 3])
    if np.linalg.det(R) < 0:           # P was found up to sign: take the one with a proper rotation
        R, t = -R, -t
    return K / K[2, 2], R, t


def calibrate(X: np.ndarray, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(K, R, t, per-point reprojection error in pixels) of the pinhole camera that best maps world
    points X (N, 3) to pixels uv (N, 2), the points in front of it (positive depth)."""
    X = np.asarray(X, np.float64).reshape(-1, 3)
    uv = np.asarray(uv, np.float64).reshape(-1, 2)
    K, R, t = decompose(dlt(X, uv))
    if np.nanmedian(X @ R[2] + t[2]) < 0:
        raise ValueError("the points lie behind the recovered camera (a mirrored image?)")
    return K, R, t, reprojection_error(X, uv, K, R, t)


def reprojection_error(X, uv, K, R, t) -> np.ndarray:
    Xc = np.asarray(X, np.float64) @ R.T + t
    p = Xc @ K.T
    return np.linalg.norm(p[:, :2] / p[:, 2:3] - np.asarray(uv, np.float64), axis=1)
