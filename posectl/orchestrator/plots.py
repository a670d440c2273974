"""Figures a person looks at: grids of 3D skeletons (generated or predicted poses), meshes."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from posectl.core.skeleton import Layout


def skeleton_grid(poses, layout: Layout, out: str | Path, title: str = "", cols: int = 6) -> Path:
    """Save a grid of 3D skeletons (N, J, 3), z up, left side blue and right side red, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    poses = np.asarray(poses, dtype=np.float64)
    n = len(poses)
    rows = max(1, -(-n // cols))
    fig = plt.figure(figsize=(2.2 * min(n, cols), 2.4 * rows))
    left, right = set(layout.left), set(layout.right)
    for i, p in enumerate(poses):
        ax = fig.add_subplot(rows, min(n, cols), i + 1, projection="3d")
        p = p - p[layout.root]
        for parent, child in layout.bones:
            color = "tab:blue" if child in left else "tab:red" if child in right else "k"
            ax.plot(*[p[[parent, child], k] for k in range(3)], color=color, lw=2)
        _cube(ax, 0.9, azim=-70)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_zticks([])
    return _save(fig, out, title)


def mesh_grid(gt, pred, faces, out: str | Path, title: str = "") -> Path:
    """Ground-truth (top row) and predicted (bottom row) meshes (N, V, 3), camera frame (x right, y down,
    z forward; drawn upright), as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection
    gt, pred = np.asarray(gt, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    n = len(gt)
    fig = plt.figure(figsize=(2.6 * n, 5.4))
    for row, (meshes, label, color) in enumerate(((gt, "ground truth", "#9bb7d4"), (pred, "predicted", "#e3a77f"))):
        for i, v in enumerate(meshes):
            ax = fig.add_subplot(2, n, row * n + i + 1, projection="3d")
            v = v - v.mean(0)
            v = np.stack([v[:, 0], v[:, 2], -v[:, 1]], axis=1)       # camera frame -> z up
            ax.add_collection3d(Poly3DCollection(v[faces], facecolor=color, edgecolor="k", linewidths=0.05,
                                                 alpha=0.9))
            _cube(ax, 0.85, azim=-80)
            ax.set_axis_off()
            if i == 0:
                ax.set_title(label, fontsize=9, loc="left")
    return _save(fig, out, title)


def _cube(ax, r: float, azim: float) -> None:
    """A 3D axis spanning [-r, r] on every side, seen from slightly above."""
    ax.set_xlim(-r, r)
    ax.set_ylim(-r, r)
    ax.set_zlim(-r, r)
    ax.set_box_aspect((1, 1, 1))
    ax.view_init(elev=10, azim=azim)


def _save(fig, out: str | Path, title: str = "") -> Path:
    import matplotlib.pyplot as plt
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
