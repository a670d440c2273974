"""Figures a person looks at: grids of 3D skeletons (generated or predicted poses)."""
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
        r = 0.9
        ax.set_xlim(-r, r)
        ax.set_ylim(-r, r)
        ax.set_zlim(-r, r)
        ax.set_box_aspect((1, 1, 1))
        ax.view_init(elev=10, azim=-70)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_zticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
