"""3D human pose evaluation metrics (MPJPE, P-MPJPE, N-MPJPE, MPJVE, PCK, AUC).

Poses are arrays of shape (N, J, 3). NumPy metrics work in float64 and return
errors in the input unit, except :func:`evaluate_poses`, which takes metres and
reports millimetres / percentages.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = [
    "root_relative", "joint_errors", "mpjpe", "procrustes_align", "p_mpjpe_errors",
    "p_mpjpe", "n_mpjpe_errors", "n_mpjpe", "mpjve", "pck", "auc", "canonical_action",
    "per_action", "action_wise_average", "per_joint", "evaluate_poses", "mpjpe_loss",
]

AUC_THRESHOLDS_MM = np.arange(0, 151, 5)
_EPS = 1e-12


def _as_poses(p, name: str = "poses") -> np.ndarray:
    """Convert to float64 (N, J, 3) and validate (non-empty, finite)."""
    a = np.asarray(p, dtype=np.float64)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (N, J, 3), got {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or Inf values")
    return a


def _pair(pred, gt) -> tuple[np.ndarray, np.ndarray]:
    p, g = _as_poses(pred, "pred"), _as_poses(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"shape mismatch: pred {p.shape} vs gt {g.shape}")
    return p, g


def _as_errors(errors, name: str = "errors") -> np.ndarray:
    e = np.asarray(errors, dtype=np.float64)
    if e.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(e)):
        raise ValueError(f"{name} contains NaN or Inf values")
    return e


def root_relative(p: np.ndarray, root: int = 0) -> np.ndarray:
    """Subtract the root joint from every joint: (N, J, 3) -> (N, J, 3)."""
    p = _as_poses(p)
    if not -p.shape[1] <= root < p.shape[1]:
        raise ValueError(f"root index {root} out of range for {p.shape[1]} joints")
    return p - p[:, root : root + 1]


def joint_errors(pred, gt, root: int | None = 0) -> np.ndarray:
    """Per-joint Euclidean errors (N, J); root-centred first unless ``root`` is None."""
    p, g = _pair(pred, gt)
    if root is not None:
        p, g = root_relative(p, root), root_relative(g, root)
    return np.linalg.norm(p - g, axis=-1)


def mpjpe(pred, gt, root: int | None = 0) -> float:
    """Protocol #1: mean per-joint position error after root centring."""
    return float(joint_errors(pred, gt, root).mean())


def procrustes_align(pred, gt) -> np.ndarray:
    """Align each frame of ``pred`` to ``gt`` with the optimal similarity transform
    (scale, proper rotation, translation); returns (N, J, 3)."""
    p, g = _pair(pred, gt)
    mu_p, mu_g = p.mean(axis=1, keepdims=True), g.mean(axis=1, keepdims=True)
    y0, x0 = p - mu_p, g - mu_g
    norm_y = np.maximum(np.sqrt((y0**2).sum(axis=(1, 2), keepdims=True)), _EPS)
    norm_x = np.sqrt((x0**2).sum(axis=(1, 2), keepdims=True))
    y0n, x0n = y0 / norm_y, x0 / norm_x.clip(min=_EPS)
    # Row-vector convention: find R maximising tr(R^T H), H = Y0^T X0, so y0 @ R ~ x0.
    h = np.swapaxes(y0n, 1, 2) @ x0n
    u, s, vt = np.linalg.svd(h)
    sign = np.sign(np.linalg.det(u @ vt))
    sign[sign == 0] = 1.0
    vt[:, -1, :] *= sign[:, None]  # reflection fix -> proper rotation
    s[:, -1] *= sign
    r = u @ vt
    scale = (s.sum(axis=1)[:, None, None] * norm_x / norm_y)
    return scale * (y0 @ r) + mu_g


def p_mpjpe_errors(pred, gt) -> np.ndarray:
    """Per-joint errors (N, J) after per-frame Procrustes alignment."""
    p, g = _pair(pred, gt)
    return np.linalg.norm(procrustes_align(p, g) - g, axis=-1)


def p_mpjpe(pred, gt) -> float:
    """Protocol #2: MPJPE after per-frame similarity (Procrustes) alignment."""
    return float(p_mpjpe_errors(pred, gt).mean())


def n_mpjpe_errors(pred, gt, root: int | None = 0) -> np.ndarray:
    """Per-joint errors (N, J) after root centring (unless ``root`` is None) and per-frame scale-only alignment."""
    p, g = _pair(pred, gt)
    if root is not None:
        p, g = root_relative(p, root), root_relative(g, root)
    num = (p * g).sum(axis=(1, 2))
    den = (p * p).sum(axis=(1, 2))
    s = np.where(den > _EPS, num / np.maximum(den, _EPS), 1.0)
    return np.linalg.norm(s[:, None, None] * p - g, axis=-1)


def n_mpjpe(pred, gt, root: int = 0) -> float:
    """Protocol #3: MPJPE after per-frame optimal scaling."""
    return float(n_mpjpe_errors(pred, gt, root).mean())


def mpjve(pred, gt, root: int = 0) -> float:
    """Mean per-joint velocity error: MPJPE of first differences along time (axis 0)."""
    p, g = _pair(pred, gt)
    if p.shape[0] < 2:
        raise ValueError(f"mpjve needs at least 2 frames, got {p.shape[0]}")
    p, g = root_relative(p, root), root_relative(g, root)
    return float(np.linalg.norm(np.diff(p, axis=0) - np.diff(g, axis=0), axis=-1).mean())


def pck(errors_mm: np.ndarray, threshold: float = 150.0) -> float:
    """Percentage of joint instances with error strictly below ``threshold``."""
    e = _as_errors(errors_mm, "errors_mm")
    return float((e < threshold).mean() * 100.0)


def auc(errors_mm: np.ndarray, thresholds=AUC_THRESHOLDS_MM) -> float:
    """Mean of the PCK curve over ``thresholds`` (default 0..150 mm step 5), in %."""
    e = _as_errors(errors_mm, "errors_mm")
    t = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if t.size == 0:
        raise ValueError("thresholds is empty")
    return float((e.reshape(-1)[None, :] < t[:, None]).mean(axis=1).mean() * 100.0)


def canonical_action(name: str) -> str:
    """Action name without its trailing sub-action index: 'Walking 1' -> 'Walking'."""
    return str(name).split(" ", 1)[0]


def per_action(errors: np.ndarray, actions: Sequence[str]) -> dict[str, float]:
    """Mean error per canonical action (sorted by name); ``errors`` is (N, J) or (N,)."""
    e = _as_errors(errors)
    if e.ndim not in (1, 2):
        raise ValueError(f"errors must have shape (N,) or (N, J), got {e.shape}")
    if len(actions) != e.shape[0]:
        raise ValueError(f"{len(actions)} actions for {e.shape[0]} samples")
    per_sample = e.mean(axis=1) if e.ndim == 2 else e
    names = np.array([canonical_action(a) for a in actions])
    return {a: float(per_sample[names == a].mean()) for a in sorted(set(names.tolist()))}


def action_wise_average(errors, actions) -> float:
    """Mean over canonical actions of the per-action mean error (VideoPose3D convention)."""
    return float(np.mean(list(per_action(errors, actions).values())))


def per_joint(errors: np.ndarray) -> np.ndarray:
    """Mean error per joint over samples: (N, J) -> (J,)."""
    e = _as_errors(errors)
    if e.ndim != 2:
        raise ValueError(f"errors must have shape (N, J), got {e.shape}")
    return e.mean(axis=0)


def evaluate_poses(pred, gt, actions=None, root=0, joints=None, pck_threshold_mm=150.0,
                   align_on: str = "all") -> dict:
    """Evaluate poses given in metres; returns errors in mm and PCK/AUC in %.

    Root centring uses the ``root`` joint; ``joints`` restricts which joints enter every
    metric. The per-frame Procrustes (P-MPJPE) and scale (N-MPJPE) alignments are fitted
    on all joints (``align_on="all"``, VideoPose3D) or on the ``joints`` subset only
    (``align_on="subset"``: Pose2Mesh selects its 14 joints, then aligns). Means are
    per-sample; with ``actions`` the action-wise averages and a per-action breakdown are added.
    """
    p, g = _pair(pred, gt)
    if align_on not in ("all", "subset"):
        raise ValueError(f"align_on must be 'all' or 'subset', got {align_on!r}")
    idx = None
    if joints is not None:
        idx = np.asarray(joints, dtype=np.int64).reshape(-1)
        if idx.size == 0 or idx.min() < -p.shape[1] or idx.max() >= p.shape[1]:
            raise ValueError(f"invalid joint subset {list(idx)} for {p.shape[1]} joints")
    mpjpe_errs = joint_errors(p, g, root) * 1000.0
    if align_on == "subset" and idx is not None:
        # the root (often outside the subset) centres both poses first; the fits then see only the subset
        pr, gr = root_relative(p, root)[:, idx], root_relative(g, root)[:, idx]
        errs = {"mpjpe": mpjpe_errs[:, idx], "p_mpjpe": p_mpjpe_errors(pr, gr) * 1000.0,
                "n_mpjpe": n_mpjpe_errors(pr, gr, root=None) * 1000.0}
    else:
        errs = {"mpjpe": mpjpe_errs, "p_mpjpe": p_mpjpe_errors(p, g) * 1000.0,
                "n_mpjpe": n_mpjpe_errors(p, g, root) * 1000.0}
        if idx is not None:
            errs = {k: v[:, idx] for k, v in errs.items()}
    out: dict = {k: float(v.mean()) for k, v in errs.items()}
    out["pck150"] = pck(errs["mpjpe"], pck_threshold_mm)
    out["auc"] = auc(errs["mpjpe"])
    if actions is not None:
        out["mpjpe_action_avg"] = action_wise_average(errs["mpjpe"], actions)
        out["p_mpjpe_action_avg"] = action_wise_average(errs["p_mpjpe"], actions)
        m, pm = per_action(errs["mpjpe"], actions), per_action(errs["p_mpjpe"], actions)
        counts: dict[str, int] = {}
        for a in actions:
            counts[canonical_action(a)] = counts.get(canonical_action(a), 0) + 1
        out["per_action"] = {a: {"mpjpe": m[a], "p_mpjpe": pm[a], "n": counts[a]} for a in m}
    out["per_joint_mpjpe"] = per_joint(errs["mpjpe"]).tolist()
    return out


def mpjpe_loss(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Differentiable mean Euclidean distance over the last dim (no root centring)."""
    if pred.shape != gt.shape:
        raise ValueError(f"shape mismatch: pred {tuple(pred.shape)} vs gt {tuple(gt.shape)}")
    if pred.ndim < 1 or pred.numel() == 0:
        raise ValueError(f"empty or scalar input: shape {tuple(pred.shape)}")
    return torch.linalg.vector_norm(pred - gt, dim=-1).mean()
