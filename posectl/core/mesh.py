"""Body meshes for mesh recovery (Pose2Mesh): the body-model interface, a free skeleton-driven body,
mesh graphs, their coarsening hierarchy, scaled Laplacians, and mesh losses. Pure numpy/torch.

Body model (`BodyModel`): fixed topology (faces), a joint regressor J x V for the evaluation skeleton,
and `pose(joints) -> vertices`, which produces the ground-truth mesh of a 3D pose. Providers:
  * `TubeBody` (free, no assets; `body.model=tube`): every bone of the skeleton is a closed tube (rings of
    vertices around the bone, capped at both ends) whose axis runs along the bone; the tube's twist
    follows the body's facing direction. A mesh is an exact function of the 3D joints, so every frame of
    any dataset (synthetic or real Human3.6M) has an exact ground-truth mesh, with no fitting error.
    Each joint is the centre of the rings that meet at it, so the joint regressor (ring averages)
    reproduces the joints exactly.
  * the parametric bodies of posectl.core.bodies (anny, the default of pose2mesh, and the user's SMPL) plug in
    through the same interface, `pose(joints)` being a fit to the joints.

Graph coarsening follows the scheme Pose2Mesh uses (Defferrard et al. 2016, written here from the
description): heavy-edge matching merges node pairs level by level; fake nodes are added so that
every level has exactly half the nodes of the one below, with coarse node k the parent of fine nodes
2k and 2k+1. Upsampling between levels is then `repeat_interleave(2)` over the node order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from posectl.core.skeleton import Layout, index_tensor


class BodyModel(Protocol):
    layout: Layout
    faces: np.ndarray                 # (F, 3) int64 vertex indices
    joint_regressor: np.ndarray       # (J, V) float32, rows sum to 1

    @property
    def num_vertices(self) -> int: ...
    def pose(self, joints: torch.Tensor) -> torch.Tensor: ...   # (B, J, 3) -> (B, V, 3), same units


# -- the free skeleton-driven body ------------------------------------------------------------------

# tube radius (metres) of the bone ending at each h36m17 joint; other layouts use DEFAULT_RADIUS
TUBE_RADII = {"RHip": 0.07, "LHip": 0.07, "RKnee": 0.075, "LKnee": 0.075, "RFoot": 0.05, "LFoot": 0.05,
              "Spine": 0.12, "Thorax": 0.13, "Neck/Nose": 0.05, "Head": 0.09, "LShoulder": 0.05,
              "RShoulder": 0.05, "LElbow": 0.045, "RElbow": 0.045, "LWrist": 0.035, "RWrist": 0.035}
DEFAULT_RADIUS = 0.05


class TubeBody:
    """Skeleton-driven tube body for a joint layout (see module docstring). `ring` vertices per ring,
    `rings` rings per bone (both ends included), one cap vertex beyond each end of a bone."""

    def __init__(self, layout: Layout, ring: int = 12, rings: int = 5, radii: dict[str, float] | None = None):
        if ring < 3 or rings < 2:
            raise ValueError("TubeBody: ring >= 3 and rings >= 2")
        self.layout, self.ring, self.rings = layout, ring, rings
        radii = {**TUBE_RADII, **(radii or {})}
        self.bones = np.array(layout.bones, dtype=np.int64)                      # (nb, 2) parent, child
        self.radius = torch.tensor([radii.get(layout.joints[c], DEFAULT_RADIUS) for _, c in layout.bones])
        per_bone = rings * ring + 2
        nb = len(self.bones)
        faces = []
        for b in range(nb):
            o = b * per_bone
            for s in range(rings - 1):
                for a in range(ring):
                    a2 = (a + 1) % ring
                    v00, v01 = o + s * ring + a, o + s * ring + a2
                    v10, v11 = o + (s + 1) * ring + a, o + (s + 1) * ring + a2
                    faces += [(v00, v01, v11), (v00, v11, v10)]
            cap0, cap1 = o + rings * ring, o + rings * ring + 1
            last = o + (rings - 1) * ring
            for a in range(ring):
                a2 = (a + 1) % ring
                faces += [(cap0, o + a2, o + a), (cap1, last + a, last + a2)]
        self.faces = np.array(faces, dtype=np.int64)
        # joint regressor: each joint is the mean of the rings centred on it (start rings of the bones
        # leaving it, the end ring of the bone arriving at it)
        J, V = layout.num_joints, nb * per_bone
        reg = np.zeros((J, V), dtype=np.float64)
        for b, (p, c) in enumerate(self.bones):
            reg[p, b * per_bone: b * per_bone + ring] += 1
            reg[c, b * per_bone + (rings - 1) * ring: b * per_bone + rings * ring] += 1
        if (reg.sum(1) == 0).any():
            raise ValueError(f"TubeBody: layout {layout.name} has a joint on no bone")
        self.joint_regressor = (reg / reg.sum(1, keepdims=True)).astype(np.float32)
        self._t = torch.linspace(0, 1, rings)
        ang = torch.arange(ring) * (2 * np.pi / ring)
        self._cos, self._sin = torch.cos(ang), torch.sin(ang)
        self._side = (layout.right[0], layout.left[0]) if layout.left else (0, 0)

    @property
    def num_vertices(self) -> int:
        return len(self.bones) * (self.rings * self.ring + 2)

    def __getstate__(self) -> dict:                      # the per-device copies are not pickled
        return {k: v for k, v in self.__dict__.items() if k != "_on"}

    def _constants(self, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, ...]:
        """Radii, ring cos/sin and ring positions in `dtype` on `device`, copied there once."""
        cache = self.__dict__.setdefault("_on", {})
        key = (dtype, str(device))
        if key not in cache:
            cache[key] = tuple(v.to(dtype=dtype, device=device) for v in (self.radius, self._cos, self._sin, self._t))
        return cache[key]

    def pose(self, joints: torch.Tensor) -> torch.Tensor:
        """(B, J, 3) joints -> (B, V, 3) vertices (differentiable)."""
        dt = {"dtype": joints.dtype, "device": joints.device}     # the body's constants follow the joints
        P = joints
        pa, ch = P[:, index_tensor(self.bones[:, 0], P.device)], P[:, index_tensor(self.bones[:, 1], P.device)]
        axis = ch - pa
        length = axis.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        d = axis / length
        # body frame: right (left hip -> right hip) and up (root -> mean joint); forward = up x right
        r_i, l_i = self._side
        right = P[:, r_i] - P[:, l_i]
        up = P.mean(1) - P[:, self.layout.root]
        fwd = torch.cross(up, right, dim=-1)
        fwd = fwd / fwd.norm(dim=-1, keepdim=True).clamp_min(1e-9)
        right = right / right.norm(dim=-1, keepdim=True).clamp_min(1e-9)

        def perp(v):                                     # component of v orthogonal to each bone
            v = v[:, None].expand_as(d)
            return v - (v * d).sum(-1, keepdim=True) * d
        u = perp(fwd) + 0.25 * perp(right)               # the second term decides only near-parallel cases
        u = u / u.norm(dim=-1, keepdim=True).clamp_min(1e-9)
        w = torch.cross(d, u, dim=-1)
        radius, cos, sin, t = self._constants(**dt)
        rad = radius[None, :, None, None]                                        # (1, nb, 1, 1)
        circle = (cos[None, None, :, None] * u[:, :, None]
                  + sin[None, None, :, None] * w[:, :, None])                    # (B, nb, R, 3)
        t = t[None, None, :, None, None]                                         # (1, 1, S, 1, 1)
        centres = pa[:, :, None, None] + t * axis[:, :, None, None]              # (B, nb, S, 1, 3)
        rings = centres + rad[..., None] * circle[:, :, None]                    # (B, nb, S, R, 3)
        B, nb = P.shape[0], len(self.bones)
        cap_off = 0.5 * radius[None, :, None]
        caps = torch.stack([pa - cap_off * d, ch + cap_off * d], dim=2)          # (B, nb, 2, 3)
        verts = torch.cat([rings.reshape(B, nb, -1, 3), caps], dim=2)
        return verts.reshape(B, -1, 3)


# -- mesh graph, coarsening, Laplacians --------------------------------------------------------------

def mesh_edges(faces: np.ndarray) -> np.ndarray:
    """Unique undirected edges (E, 2), i < j, of a triangle mesh."""
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    e = np.sort(e, axis=1)
    return np.unique(e, axis=0)


@dataclass
class Graph:
    """An undirected weighted graph on n nodes as a symmetric edge list (both directions stored)."""
    n: int
    rows: np.ndarray
    cols: np.ndarray
    weights: np.ndarray

    @classmethod
    def from_edges(cls, n: int, edges: np.ndarray, weights: np.ndarray | None = None,
                   self_loops: bool = False) -> "Graph":
        """Undirected edges (listed once); `self_loops` adds A + I (a self-loop of weight 1 on every node)."""
        edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
        w = np.ones(len(edges)) if weights is None else np.asarray(weights, dtype=np.float64)
        keep = edges[:, 0] != edges[:, 1]
        edges, w = edges[keep], w[keep]
        loops = np.arange(n if self_loops else 0)
        rows = np.concatenate([edges[:, 0], edges[:, 1], loops])
        cols = np.concatenate([edges[:, 1], edges[:, 0], loops])
        return cls._merge(n, rows, cols, np.concatenate([w, w, np.ones(len(loops))]))

    @classmethod
    def _merge(cls, n, rows, cols, w) -> "Graph":
        key = rows * n + cols
        uniq, inv = np.unique(key, return_inverse=True)
        ww = np.zeros(len(uniq))
        np.add.at(ww, inv, w)
        return cls(n, uniq // n, uniq % n, ww)

    def dense(self) -> np.ndarray:
        A = np.zeros((self.n, self.n))
        A[self.rows, self.cols] = self.weights
        return A

    def degree(self) -> np.ndarray:
        d = np.zeros(self.n)
        np.add.at(d, self.rows, self.weights)
        return d


def _match(g: Graph, rng: np.random.Generator) -> np.ndarray:
    """Heavy-edge matching: cluster id per node (pairs or singletons), ids 0..m-1."""
    deg = g.degree()
    order = np.lexsort((rng.random(g.n), deg))           # low degree first, random ties
    nbr_start = np.searchsorted(g.rows, np.arange(g.n + 1))
    cluster = -np.ones(g.n, dtype=np.int64)
    m = 0
    for i in order:
        if cluster[i] >= 0:
            continue
        best, best_score = -1, -np.inf
        for k in range(nbr_start[i], nbr_start[i + 1]):
            j = g.cols[k]
            if j == i or cluster[j] >= 0:                  # a self-loop is no partner
                continue
            score = g.weights[k] * (1.0 / max(deg[i], 1e-12) + 1.0 / max(deg[j], 1e-12))
            if score > best_score:
                best, best_score = j, score
        cluster[i] = m
        if best >= 0:
            cluster[best] = m
        m += 1
    return cluster


@dataclass
class Hierarchy:
    """Coarsened graphs with fake nodes: graphs[0] is the finest (size n0 = nL * 2**L), graphs[l] has
    half the nodes of graphs[l-1]; node k of level l+1 is the parent of nodes 2k, 2k+1 of level l.
    `order[v]` is the position of real vertex v at level 0 (fake nodes fill the rest)."""
    graphs: list[Graph]
    order: np.ndarray
    num_real: int

    @property
    def sizes(self) -> list[int]:
        return [g.n for g in self.graphs]


def coarsen(g: Graph, levels: int, seed: int = 0) -> Hierarchy:
    """Coarsen `levels` times (each level about halves) and lay the levels out with fake nodes. As in
    Pose2Mesh's coarsening (Defferrard's HEM), the edges inside a merged pair become a self-loop of the coarse
    node (weight: both directions plus the children's own loops), which enters its degree and Laplacian."""
    rng = np.random.default_rng(seed)
    graphs, parents = [g], []
    for _ in range(levels):
        cur = graphs[-1]
        cl = _match(cur, rng)
        parents.append(cl)
        m = int(cl.max()) + 1 if cur.n else 0
        graphs.append(Graph._merge(m, cl[cur.rows], cl[cur.cols], cur.weights)
                      if len(cur.rows) else Graph(m, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)))
    # layout top-down: positions hold real node ids or -1 (fake)
    layout = [np.arange(graphs[-1].n)]
    for lvl in range(levels - 1, -1, -1):
        children: dict[int, list[int]] = {}
        for node, par in enumerate(parents[lvl]):
            children.setdefault(int(par), []).append(node)
        fine = []
        for par in layout[0]:
            kids = children.get(int(par), []) if par >= 0 else []
            fine += kids + [-1] * (2 - len(kids))
        layout.insert(0, np.array(fine, dtype=np.int64))
    out = []
    for lvl, ids in enumerate(layout):
        real = graphs[lvl]
        pos = -np.ones(real.n, dtype=np.int64)
        pos[ids[ids >= 0]] = np.nonzero(ids >= 0)[0]
        out.append(Graph(len(ids), pos[real.rows], pos[real.cols], real.weights))
    order = -np.ones(g.n, dtype=np.int64)
    order[layout[0][layout[0] >= 0]] = np.nonzero(layout[0] >= 0)[0]
    return Hierarchy(out, order, g.n)


def scaled_laplacian(g: Graph) -> tuple[np.ndarray, np.ndarray, int]:
    """Rescaled normalised Laplacian L~ = 2 L / lambda_max - I, L = I - D^-1/2 A D^-1/2, as sparse
    (indices (2, nnz), values (nnz,), n; one entry per position). Self-loops of A count in D and lower
    the diagonal of L; isolated (fake) nodes get L = 1 on the diagonal."""
    d = g.degree()
    dinv = np.where(d > 0, 1.0 / np.sqrt(np.maximum(d, 1e-12)), 0.0)
    norm = g.weights * dinv[g.rows] * dinv[g.cols]
    loop = g.rows == g.cols
    diag_vals = np.ones(g.n)
    np.subtract.at(diag_vals, g.rows[loop], norm[loop])
    diag = np.arange(g.n)
    rows = np.concatenate([g.rows[~loop], diag])
    cols = np.concatenate([g.cols[~loop], diag])
    L = np.concatenate([-norm[~loop], diag_vals])
    lam = _lambda_max(g.n, rows, cols, L)
    vals = 2 * L / lam - (rows == cols)
    return np.stack([rows, cols]), vals.astype(np.float32), g.n


def _lambda_max(n, rows, cols, vals) -> float:
    """Largest eigenvalue of the sparse L (dense for small graphs, else power iteration;
    L is PSD with spectrum in [0, 2])."""
    if n == 0:
        return 2.0
    if n <= 3000:                                       # exact for the sizes trained on CPU
        L = np.zeros((n, n))
        np.add.at(L, (rows, cols), vals)
        return max(float(np.linalg.eigvalsh(L)[-1]), 1e-3)
    x = np.random.default_rng(0).standard_normal(n)
    lam = 1.0
    for _ in range(300):
        y = np.zeros(n)
        np.add.at(y, rows, vals * x[cols])
        lam_new = float(np.linalg.norm(y))
        x = y / max(lam_new, 1e-12)
        if abs(lam_new - lam) < 1e-7:
            break
        lam = lam_new
    return max(min(lam_new, 2.0), 1e-3)


def joint_graph(layout: Layout) -> Graph:
    """Skeleton edges plus left/right symmetric pairs plus self-loops (Pose2Mesh's build_adj: A + I). The
    self-loops are not the Chebyshev T0 term: they raise every degree, so they change both the diagonal and
    the off-diagonal entries of the normalised Laplacian."""
    edges = list(layout.bones) + list(zip(layout.left, layout.right))
    return Graph.from_edges(layout.num_joints, np.array(edges), self_loops=True)


# -- losses ------------------------------------------------------------------------------------------

def face_normals(v: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    a, b, c = v[:, faces[:, 0]], v[:, faces[:, 1]], v[:, faces[:, 2]]
    n = torch.cross(b - a, c - a, dim=-1)
    return n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def normal_loss(pred: torch.Tensor, gt: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Mean |cos| between every predicted face edge and the ground-truth face normal."""
    n = face_normals(gt, faces)
    a, b, c = pred[:, faces[:, 0]], pred[:, faces[:, 1]], pred[:, faces[:, 2]]
    loss = 0
    for e in (b - a, c - a, c - b):
        e = e / e.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        loss = loss + (e * n).sum(-1).abs().mean()
    return loss / 3


def edge_length_loss(pred: torch.Tensor, gt: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Mean | |e_pred| - |e_gt| | over the three edges of every face."""
    loss = 0
    for i, j in ((0, 1), (1, 2), (2, 0)):
        lp = (pred[:, faces[:, i]] - pred[:, faces[:, j]]).norm(dim=-1)
        lg = (gt[:, faces[:, i]] - gt[:, faces[:, j]]).norm(dim=-1)
        loss = loss + (lp - lg).abs().mean()
    return loss / 3


def write_obj(path, vertices: np.ndarray, faces: np.ndarray) -> None:
    """A mesh as a Wavefront OBJ file (1-based faces)."""
    lines = [f"v {x:.5f} {y:.5f} {z:.5f}" for x, y, z in np.asarray(vertices, dtype=np.float64)]
    lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in np.asarray(faces)]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
