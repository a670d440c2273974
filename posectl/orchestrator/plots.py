"""Figures a person looks at: learning curves of a run and of a search, grids of 3D skeletons
(generated or predicted poses), meshes."""
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


def _save(fig, out: str | Path, title: str = "", series: list[str] | None = None) -> Path:
    """Save a figure as a PNG; `series` (the plotted curves) goes into its "Series" metadata."""
    import matplotlib.pyplot as plt
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=90, metadata={"Series": ", ".join(series)} if series else None)
    plt.close(fig)
    return out


def learning_curves(history: list[dict], metric: str, best_epoch: int, out: str | Path, title: str = "") -> Path:
    """Training loss and the validation `metric` per epoch, the selected (`best_epoch`) epoch marked, as a
    PNG; its "Series" metadata names the plotted curves."""
    if not history:
        raise ValueError("learning curves: no epoch to plot")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ep = [r.get("epoch", i + 1) for i, r in enumerate(history)]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    series = []
    for key, style in (("train_loss_mm", "o-"), (metric, "s-")):
        if any(key in r for r in history):
            ax.plot(ep, [r.get(key, np.nan) for r in history], style, label=key)
            series.append(key)
    if best_epoch in ep:
        ax.axvline(best_epoch, color="gray", ls="--", lw=1)
        ax.plot([best_epoch], [history[ep.index(best_epoch)].get(metric, np.nan)], "*", ms=14, color="tab:green",
                label=f"selected: epoch {best_epoch}")
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("mm" if metric.endswith(("mpjpe", "_mm")) else metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out, title, series)


def search_curves(trials, metric: str, mode: str, out: str | Path, title: str = "") -> Path:
    """The validation `metric` per epoch of every trial of a search: trials stopped early dashed, the best
    trial thick and starred; the "Series" metadata lists the trial ids."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    runs = [t for t in trials if any(metric in r for r in t.history)]
    if not runs:
        raise ValueError(f"search curves: no trial reported {metric}")
    pick = min if mode == "min" else max
    best = pick(runs, key=lambda t: pick(r[metric] for r in t.history if metric in r))
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for t in runs:
        ep = [r.get("epoch", i + 1) for i, r in enumerate(t.history)]
        ax.plot(ep, [r.get(metric, np.nan) for r in t.history], "-" if t.state != "stopped early" else "--",
                lw=2.5 if t is best else 1, alpha=1 if t is best else 0.7,
                label=f"{t.id[:8]}{' (best)' if t is best else ' (stopped early)' if t.state == 'stopped early' else ''}")
    vals = [r[metric] for r in best.history if metric in r]
    i = vals.index(pick(vals))
    ax.plot([best.history[i].get("epoch", i + 1)], [vals[i]], "*", ms=14, color="tab:green")
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, out, title, [t.id for t in runs])
