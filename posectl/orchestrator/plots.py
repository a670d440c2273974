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


def animate_prediction(kp2d, joints3d, image_size: tuple[int, int], layout: Layout, out: str | Path, fps: int = 25,
                       title: str = "", progress=None) -> Path:
    """An animation, one frame per input frame: the 2D keypoints on the image plane (left) beside the
    lifted 3D skeleton (right; camera frame shown with y up). .gif through Pillow, .mp4 through ffmpeg."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.animation import FFMpegWriter, FuncAnimation, PillowWriter
    kp2d, joints3d = np.asarray(kp2d, np.float64), np.asarray(joints3d, np.float64)
    w, h = image_size
    fig = plt.figure(figsize=(8, 4))
    ax2 = fig.add_subplot(1, 2, 1)
    ax3 = fig.add_subplot(1, 2, 2, projection="3d")
    lo, hi = np.nanmin(kp2d, axis=(0, 1)), np.nanmax(kp2d, axis=(0, 1))     # the person, not the whole frame
    c, r = (lo + hi) / 2, 0.6 * max(hi - lo) + 1
    ax2.set_xlim(c[0] - r, c[0] + r)
    ax2.set_ylim(c[1] + r, c[1] - r)
    ax2.set_aspect("equal")
    ax2.set_title(f"2D input (px, {w}x{h} image)", fontsize=9)
    _cube(ax3, 1.0, azim=-70)
    ax3.set_title("3D (m, root-relative)", fontsize=9)
    for a in (ax3.set_xticklabels, ax3.set_yticklabels, ax3.set_zticklabels):
        a([])
    left, right = set(layout.left), set(layout.right)
    colours = ["tab:blue" if c in left else "tab:red" if c in right else "k" for _, c in layout.bones]
    lines2 = [ax2.plot([], [], color=c, lw=2)[0] for c in colours]
    lines3 = [ax3.plot([], [], [], color=c, lw=2)[0] for c in colours]
    label = fig.text(0.01, 0.01, "", fontsize=8)
    fig.suptitle(title, fontsize=10)
    view = joints3d[..., [0, 2, 1]] * np.array([1.0, 1.0, -1.0])     # x right, z forward (depth), -y up

    def draw(i):
        for (p, c), l2, l3 in zip(layout.bones, lines2, lines3):
            l2.set_data(kp2d[i, [p, c], 0], kp2d[i, [p, c], 1])
            l3.set_data(view[i, [p, c], 0], view[i, [p, c], 1])
            l3.set_3d_properties(view[i, [p, c], 2])
        label.set_text(f"frame {i + 1}/{len(kp2d)}")      # frames always differ: none is merged away
        return [*lines2, *lines3, label]

    out = Path(out)
    anim = FuncAnimation(fig, draw, frames=len(kp2d), blit=False)
    writer = FFMpegWriter(fps=fps) if out.suffix.lower() == ".mp4" else PillowWriter(fps=fps)
    # a temporary file of the caller may lack the suffix a writer keys on; the writer is given explicitly
    anim.save(str(out), writer=writer, dpi=80,
              progress_callback=None if progress is None else (lambda i, n: progress(i + 1, n)))
    plt.close(fig)
    return out
