"""Parametric body models for mesh recovery: a shared parameter-fitting core and two providers.

A `ParametricBody` maps parameters `[global rotation (3) | bone rotations (3 per driven bone) | shape]`
to mesh vertices, root-aligned at the regressed pelvis joint, and has a linear joint regressor (J x V)
for the Human3.6M 17-joint layout. It satisfies the `BodyModel` interface of `posectl.core.mesh`:
`pose(joints)` fits the parameters to a batch of 3D joints and returns the fitted mesh, so any pose
dataset gets pseudo-ground-truth meshes, as Pose2Mesh used SMPL fits to Human3.6M joints; `fit` also
returns the per-sample fitting error so bad fits can be masked.

Providers:
  * `AnnyBody` (free, the default parametric body): the `anny` package (Apache-2.0, assets CC0 from
    MakeHuman, bundled in its wheel: no network at run time). Its 6 phenotype parameters are the shape;
    a subset of its rig (spine, neck, head, clavicles, shoulders, elbows, hips, knees) is driven. The
    17 Human3.6M joints are defined on its skeleton (bone heads; nose and skull top from vertices) and
    the vertex regressor is the least-squares regressor of those joints over random posed bodies.
  * `SMPLBody` (user-provided files, read by posectl.methods.pose2mesh.load_smpl): the SMPL model's arrays
    (v_template, shapedirs, posedirs, J_regressor, weights, kintree_table, f) and the Human3.6M joint
    regressor (17 x V).
    Linear blend skinning with shape and pose blend shapes, written from the SMPL paper's equations.
"""
from __future__ import annotations

from dataclasses import dataclass
import numpy as np
import torch

from posectl.core.skeleton import H36M17, Layout
from posectl.errors import DataError


def rotvec_to_matrix(r: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula, (..., 3) -> (..., 3, 3); smooth at zero (Taylor terms below 1e-4 rad)."""
    theta2 = (r * r).sum(-1, keepdim=True)[..., None]                    # (..., 1, 1)
    theta = theta2.clamp_min(1e-12).sqrt()
    small = theta2 < 1e-8
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / theta2.clamp_min(1e-12))
    x, y, z = r.unbind(-1)
    zero = torch.zeros_like(x)
    K = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*r.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=r.dtype, device=r.device).expand_as(K)
    return eye + a * K + b * (K @ K)


def kabsch(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Rotation R (B, 3, 3) minimising |R src - dst| for centred point sets (B, N, 3)."""
    s = src - src.mean(1, keepdim=True)
    d = dst - dst.mean(1, keepdim=True)
    U, _, Vt = torch.linalg.svd(d.transpose(1, 2) @ s)
    sign = torch.sign(torch.linalg.det(U @ Vt))
    D = torch.diag_embed(torch.stack([torch.ones_like(sign), torch.ones_like(sign), sign], -1))
    return U @ D @ Vt


def matrix_to_rotvec(R: torch.Tensor) -> torch.Tensor:
    """Inverse of `rotvec_to_matrix` (angles in [0, pi]), through the quaternion: for each matrix the
    largest of the four quaternion components is computed from the diagonal, the others from it."""
    m = R.reshape(-1, 3, 3)
    d0, d1, d2 = m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]
    cand = torch.stack([1 + d0 + d1 + d2, 1 + d0 - d1 - d2, 1 - d0 + d1 - d2, 1 - d0 - d1 + d2], -1)
    k = cand.argmax(-1)
    s = 0.5 * cand.gather(1, k[:, None]).clamp_min(1e-12).sqrt()[:, 0]        # the largest |component|
    w = torch.where(k == 0, s, torch.where(k == 1, m[:, 2, 1] - m[:, 1, 2], torch.where(
        k == 2, m[:, 0, 2] - m[:, 2, 0], m[:, 1, 0] - m[:, 0, 1])) / (4 * s))
    x = torch.where(k == 1, s, torch.where(k == 0, m[:, 2, 1] - m[:, 1, 2],
                                           torch.where(k == 2, m[:, 0, 1] + m[:, 1, 0], m[:, 0, 2] + m[:, 2, 0])) / (4 * s))
    y = torch.where(k == 2, s, torch.where(k == 0, m[:, 0, 2] - m[:, 2, 0],
                                           torch.where(k == 1, m[:, 0, 1] + m[:, 1, 0], m[:, 1, 2] + m[:, 2, 1])) / (4 * s))
    z = torch.where(k == 3, s, torch.where(k == 0, m[:, 1, 0] - m[:, 0, 1],
                                           torch.where(k == 1, m[:, 0, 2] + m[:, 2, 0], m[:, 1, 2] + m[:, 2, 1])) / (4 * s))
    q = torch.stack([w, x, y, z], -1)
    q = q * torch.where(q[:, :1] < 0, -1.0, 1.0)                                   # w >= 0: angle <= pi
    v = q[:, 1:]
    n = v.norm(dim=-1, keepdim=True)
    angle = 2 * torch.atan2(n, q[:, :1])
    scale = torch.where(n > 1e-8, angle / n.clamp_min(1e-12), 2.0 / q[:, :1].clamp_min(1e-12))
    return (v * scale).reshape(*R.shape[:-2], 3)


def regressor_least_squares(verts: torch.Tensor, targets: torch.Tensor, support: list[np.ndarray],
                            ridge: float = 1e-4) -> np.ndarray:
    """Linear joint regressor (J, V): for each joint, weights over its `support` vertices summing to 1 that
    best reproduce `targets` (N, J, 3) from `verts` (N, V, 3) in the least-squares sense (ridge-regularised,
    solved through the equality-constrained normal equations)."""
    J, V = targets.shape[1], verts.shape[1]
    out = np.zeros((J, V))
    for j in range(J):
        idx = torch.as_tensor(support[j])
        A = verts[:, idx].permute(0, 2, 1).reshape(-1, len(idx)).double()    # (3N, K)
        b = targets[:, j].reshape(-1).double()
        K = len(idx)
        M = torch.zeros(K + 1, K + 1, dtype=torch.float64)
        M[:K, :K] = A.T @ A + ridge * len(b) * torch.eye(K, dtype=torch.float64)
        M[:K, K] = 1
        M[K, :K] = 1
        rhs = torch.cat([A.T @ b, torch.ones(1, dtype=torch.float64)])
        w = torch.linalg.solve(M, rhs)[:K]
        out[j, idx.numpy()] = w.numpy()
    return out


@dataclass
class FitResult:
    params: torch.Tensor        # (B, P)
    vertices: torch.Tensor      # (B, V, 3), root-aligned, same units as the joints
    joints: torch.Tensor        # (B, J, 3) regressed from the fitted mesh
    error_mm: torch.Tensor      # (B,) mean distance of the fit over the non-root joints (root-aligned), mm


class ParametricBody:
    """Shared machinery of the parametric providers; subclasses set `layout`, `faces`, `joint_regressor`,
    `num_bones` (driven bones), `num_shape`, and implement `_vertices(global_R, bone_R, shape)`."""

    layout: Layout = H36M17
    faces: np.ndarray
    joint_regressor: np.ndarray
    num_bones: int
    num_shape: int
    name = "parametric"
    # fitting: iterations of Adam, step size, priors on bone rotations and shape
    fit_iters = 150
    fit_lr = 0.05
    pose_prior = 1e-6          # per squared radian; the joint term is in squared metres
    shape_prior = 1e-6
    torso = ("Hip", "RHip", "LHip", "Spine", "Thorax", "LShoulder", "RShoulder")

    @property
    def num_vertices(self) -> int:
        return int(self.joint_regressor.shape[1])

    @property
    def param_dim(self) -> int:
        return 3 + 3 * self.num_bones + self.num_shape

    def split(self, params: torch.Tensor):
        B = params.shape[0]
        g = params[:, :3]
        bones = params[:, 3:3 + 3 * self.num_bones].reshape(B, self.num_bones, 3)
        shape = params[:, 3 + 3 * self.num_bones:]
        return g, bones, shape

    def _vertices(self, global_R: torch.Tensor, bone_R: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def vertices(self, params: torch.Tensor, shape: torch.Tensor | None = None) -> torch.Tensor:
        """(B, P) parameters -> (B, V, 3) vertices in metres, the regressed root joint at the origin. With
        `shape` (1 or B, S) given, `params` holds only the pose part (B, 3 + 3 * num_bones)."""
        g, bones, own = self.split(params.float())
        shape = own if shape is None else shape
        v = self._vertices(rotvec_to_matrix(g), rotvec_to_matrix(bones), shape)
        reg = self._reg_t(v)
        root = torch.einsum("v,bvc->bc", reg[self.layout.root], v)
        return v - root[:, None]

    def _reg_t(self, like: torch.Tensor) -> torch.Tensor:
        if getattr(self, "_reg_cache", None) is None or self._reg_cache.device != like.device:
            self._reg_cache = torch.as_tensor(self.joint_regressor, dtype=torch.float32, device=like.device)
        return self._reg_cache

    def regress(self, vertices: torch.Tensor) -> torch.Tensor:
        return torch.einsum("jv,bvc->bjc", self._reg_t(vertices).to(vertices.dtype), vertices)

    def zero_params(self, batch: int) -> torch.Tensor:
        return torch.zeros(batch, self.param_dim)

    def fit(self, joints: torch.Tensor, iters: int | None = None, init: torch.Tensor | None = None,
            shape: torch.Tensor | None = None) -> FitResult:
        """Fit parameters to root-relative 3D joints (B, 17, 3) in metres: global rotation initialised by
        Kabsch on the torso joints, then Adam on all parameters (joint L2 + small pose and shape priors).
        `shape` (1 or B, S) fixes the shape parameters (the body's rest shape is then built once, without
        gradients, when it is one row). Keeps each sample's best iterate."""
        joints = joints.detach().float()
        B = joints.shape[0]
        root = self.layout.root
        nonroot = [j for j in range(self.layout.num_joints) if j != root]
        target = joints - joints[:, root:root + 1]
        nb = 3 + 3 * self.num_bones
        if shape is not None:
            shape = shape.detach().float().reshape(-1, self.num_shape)
        with torch.no_grad():
            if init is None:
                init = self.zero_params(B)
                t = [self.layout.index(n) for n in self.torso]
                tmpl = self.regress(self.vertices(init[:1]))[0, t]
                R = kabsch(tmpl[None].expand(B, -1, -1), target[:, t])
                init[:, :3] = matrix_to_rotvec(R)
        # with a fixed shape only the pose part is optimised (Adam is element-wise: the same pose steps)
        params = (init[:, :nb] if shape is not None else init).clone().requires_grad_(True)
        opt = torch.optim.Adam([params], lr=self.fit_lr)
        best = params.detach().clone()
        best_err = torch.full((B,), float("inf"))
        n_iters = self.fit_iters if iters is None else iters
        for it in range(n_iters + 1):
            v = self.vertices(params, shape)
            j = self.regress(v)
            per_joint = (j - target).norm(dim=-1)                       # (B, J)
            err = per_joint[:, nonroot].mean(1).detach()          # the root is aligned: excluded
            better = err < best_err
            best[better] = params.detach()[better]
            best_err = torch.where(better, err, best_err)
            if it == n_iters:
                break
            loss = ((j - target) ** 2).sum(-1).mean(1) + self.pose_prior * (params[:, 3:nb] ** 2).sum(-1)
            if shape is None:
                loss = loss + self.shape_prior * (params[:, nb:] ** 2).sum(-1)
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            opt.step()
        if shape is not None:
            best = torch.cat([best, shape.expand(B, -1)], 1)
        with torch.no_grad():
            v = self.vertices(best)
            return FitResult(best, v, self.regress(v), best_err * 1000)

    def pose_sequences(self, sequences: list[torch.Tensor], shape: torch.Tensor, step: int = 5, iters: int = 60):
        """Pose the body along motions: fit every `step`-th frame (and the last) of each sequence of
        root-centred joints (T, 17, 3) with the given shape (S,), all sequences in one batch, and interpolate
        the pose parameters linearly in between. Returns per sequence (parameters (T, P), root-aligned
        joints regressed from the posed meshes (T, 17, 3))."""
        keys = [np.unique(np.r_[np.arange(0, len(q), step), len(q) - 1]) for q in sequences]
        joints = torch.cat([q[k] for q, k in zip(sequences, keys)])
        fit = self.fit(joints, iters=iters, shape=shape[None])
        kp = fit.params.split([len(k) for k in keys])
        out = []
        for q, k, p in zip(sequences, keys, kp):
            params = self.interpolate(p, torch.from_numpy(k), len(q))
            with torch.no_grad():
                out.append((params, torch.cat([self.regress(self.vertices(x)) for x in params.split(512)])))
        return out

    def interpolate(self, key_params: torch.Tensor, key_frames: torch.Tensor, T: int) -> torch.Tensor:
        """Parameters of frames 0..T-1 from parameters at increasing key frames: every rotation (global and
        per bone) by slerp along the shortest arc between neighbouring keys (rotation vectors themselves
        cannot be interpolated across the +-pi wrap), the shape linearly."""
        t = torch.arange(T, dtype=torch.float32)
        hi = torch.searchsorted(key_frames, t, right=False).clamp(1, len(key_frames) - 1) if len(key_frames) > 1 \
            else torch.zeros(T, dtype=torch.long)
        lo = (hi - 1).clamp_min(0)
        span = (key_frames[hi] - key_frames[lo]).float().clamp_min(1)
        s = ((t - key_frames[lo].float()) / span).clamp(0, 1)[:, None]
        nr = 1 + self.num_bones
        rot = key_params[:, :3 * nr].reshape(-1, nr, 3)
        Ra, Rb = rotvec_to_matrix(rot[lo]), rotvec_to_matrix(rot[hi])
        rel = matrix_to_rotvec(Ra.transpose(-1, -2) @ Rb)                       # shortest arc, angle <= pi
        R = Ra @ rotvec_to_matrix(rel * s[:, :, None])
        shape = key_params[lo, 3 * nr:] * (1 - s) + key_params[hi, 3 * nr:] * s
        return torch.cat([matrix_to_rotvec(R).reshape(T, -1), shape], 1)

    def pose(self, joints: torch.Tensor) -> torch.Tensor:
        """BodyModel interface: the mesh fitted to the joints (B, V, 3)."""
        return self.fit(joints).vertices.to(joints.dtype)


# -- anny --------------------------------------------------------------------------------------------

# driven bones of the anny rig (others keep their rest orientation)
ANNY_DRIVEN = ("spine04", "spine02", "neck01", "head", "upperleg01.R", "lowerleg01.R", "upperleg01.L",
               "lowerleg01.L", "clavicle.R", "upperarm01.R", "lowerarm01.R", "clavicle.L", "upperarm01.L",
               "lowerarm01.L")
# Human3.6M joint -> anny bone whose head it is (None: defined from vertices, see AnnyBody)
ANNY_JOINTS = {"Hip": None, "RHip": "upperleg01.R", "RKnee": "lowerleg01.R", "RFoot": "foot.R",
               "LHip": "upperleg01.L", "LKnee": "lowerleg01.L", "LFoot": "foot.L", "Spine": "spine02",
               "Thorax": "neck01", "Neck/Nose": None, "Head": None, "LShoulder": "upperarm01.L",
               "LElbow": "lowerarm01.L", "LWrist": "wrist.L", "RShoulder": "upperarm01.R",
               "RElbow": "lowerarm01.R", "RWrist": "wrist.R"}
ANNY_TOPOLOGIES = ("notoes_collapse10pc", "notoes_collapse5pc", "notoes_collapse3pc", "notoes", "anny")


def anny_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("anny") is not None


class AnnyBody(ParametricBody):
    """anny body (see module docstring). `topology`: one of ANNY_TOPOLOGIES (notoes_collapse10pc: 1229
    vertices, trains on CPU; notoes / anny: full resolution for GPUs). Shape: 6 phenotype values
    (gender, age, muscle, weight, height, proportions) = sigmoid(shape parameters)."""

    name = "anny"
    # Thorax lies this share of the way from the neck01 head down to the spine01 head; Head this share of
    # the way from the nose tip up to the skull top (Human3.6M's head joint sits below the skull top)
    thorax_mix = 0.4
    head_mix = 0.5

    def __init__(self, topology: str = "notoes_collapse10pc", regressor_samples: int = 256, seed: int = 0):
        if topology not in ANNY_TOPOLOGIES:
            raise ValueError(f"anny topology must be one of {', '.join(ANNY_TOPOLOGIES)} (got {topology!r})")
        if not anny_available():
            raise ImportError("the anny body model needs the 'anny' package: pip install anny")
        import logging
        import warnings
        logging.getLogger("anny").setLevel(logging.WARNING)
        try:                                           # warp (anny's skinning kernels) greets on stdout
            import warp
            warp.config.log_level = max(warp.config.log_level, getattr(warp, "LOG_ERROR", 40))
        except (ImportError, AttributeError):
            pass
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import anny
            self.model = anny.Anny(topology=topology, rig="anny").to(torch.float32)
        self.topology = topology
        m = self.model
        labels = list(m.bone_labels)
        self.bone_ids = torch.tensor([labels.index(b) for b in ANNY_DRIVEN])
        self.num_bones, self.num_shape = len(ANNY_DRIVEN), len(m.phenotype_labels)
        self.num_all_bones = len(labels)
        self.faces = m.get_triangular_faces().cpu().numpy().astype(np.int64)
        self._joint_bones = {n: labels.index(b) for n, b in ANNY_JOINTS.items() if b}
        self._spine01 = labels.index("spine01")
        # the vertex-defined joints, from the rest mesh (z up, -y forward, metres)
        with torch.no_grad():
            rest = m(pose_parameters=None, phenotype_kwargs=None)["vertices"][0]
        head_z = rest[:, 2] > rest[:, 2].max() - 0.25
        near_mid = rest[:, 0].abs() < 0.02
        cand = torch.nonzero(head_z & near_mid).squeeze(1)
        nose = cand[rest[cand, 1].argmin()]
        top = torch.argsort(rest[:, 2], descending=True)[:8]
        self._nose = torch.argsort((rest - rest[nose]).norm(dim=-1))[:4]
        self._top = top
        self._fit_regressor(regressor_samples, seed)

    # raw model: bones' rotations (B, nb, 3, 3), global (B, 3, 3), shape (B, 6) -> vertices, bone heads
    def _raw(self, global_R, bone_R, shape):
        B = bone_R.shape[0]
        P = torch.eye(4, dtype=bone_R.dtype).repeat(B, self.num_all_bones, 1, 1)
        P[:, self.bone_ids, :3, :3] = bone_R
        P[:, 0, :3, :3] = global_R
        out = self.model(pose_parameters=P, phenotype_kwargs=torch.sigmoid(shape))
        return out["vertices"], out["bone_poses"][..., :3, 3]

    def _vertices(self, global_R, bone_R, shape):
        return self._raw(global_R, bone_R, shape)[0]

    def skeleton_joints(self, verts: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
        """The 17 joints by definition: bone heads; Hip = mid-hips; Neck/Nose = nose tip; Head between nose
        and skull top; Thorax between the neck01 and spine01 heads."""
        out = []
        for name in H36M17.joints:
            if name == "Hip":
                out.append(0.5 * (heads[:, self._joint_bones["RHip"]] + heads[:, self._joint_bones["LHip"]]))
            elif name == "Neck/Nose":
                out.append(verts[:, self._nose].mean(1))
            elif name == "Head":
                nose, top = verts[:, self._nose].mean(1), verts[:, self._top].mean(1)
                out.append(nose + self.head_mix * (top - nose))
            elif name == "Thorax":
                neck, spine = heads[:, self._joint_bones["Thorax"]], heads[:, self._spine01]
                out.append(neck + self.thorax_mix * (spine - neck))
            else:
                out.append(heads[:, self._joint_bones[name]])
        return torch.stack(out, 1)

    def random_params(self, n: int, gen: torch.Generator, pose_std: float = 0.35) -> torch.Tensor:
        p = torch.zeros(n, self.param_dim)
        p[:, :3] = torch.randn(n, 3, generator=gen) * 0.5
        p[:, 3:3 + 3 * self.num_bones] = torch.randn(n, 3 * self.num_bones, generator=gen) * pose_std
        p[:, 3 + 3 * self.num_bones:] = torch.randn(n, self.num_shape, generator=gen) * 1.0
        return p

    def _fit_regressor(self, n: int, seed: int) -> None:
        """The vertex regressor of the rig-defined joints, fitted on `n` random bodies; each joint's support
        is the 40 rest vertices nearest to its rest position (the zero-parameter body, posed in the same call)."""
        p = torch.cat([self.random_params(n, torch.Generator().manual_seed(seed)), torch.zeros(1, self.param_dim)])
        with torch.no_grad():
            g, b, s = self.split(p)
            v, h = self._raw(rotvec_to_matrix(g), rotvec_to_matrix(b), s)
            target = self.skeleton_joints(v, h)
        rest_v, rest_j = v[-1], target[-1]
        support = [torch.argsort((rest_v - rest_j[j]).norm(dim=-1))[:40].numpy() for j in range(len(rest_j))]
        self.joint_regressor = regressor_least_squares(v[:-1], target[:-1], support).astype(np.float32)


# -- SMPL (user-provided) ------------------------------------------------------------------------------

SMPL_KEYS = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f")


def check_smpl(d: dict, where: str) -> dict[str, np.ndarray]:
    """The SMPL arrays of a model file's dict, dense, checked for consistent sizes (DataError otherwise)."""
    missing = [k for k in SMPL_KEYS if k not in d]
    if missing:
        raise DataError(f"{where}: SMPL model lacks {', '.join(missing)}")
    d = {k: np.asarray(d[k]) for k in SMPL_KEYS}
    V = d["v_template"].shape[0]
    J = d["J_regressor"].shape[0] if d["J_regressor"].ndim == 2 else -1
    checks = [d["v_template"].shape == (V, 3), d["shapedirs"].ndim == 3 and d["shapedirs"].shape[:2] == (V, 3),
              d["posedirs"].shape == (V, 3, 9 * (J - 1)), d["J_regressor"].shape == (J, V),
              d["weights"].shape == (V, J), d["kintree_table"].shape == (2, J), d["f"].ndim == 2]
    if not all(checks):
        raise DataError(f"{where}: SMPL arrays have inconsistent shapes "
                        f"({', '.join(f'{k} {d[k].shape}' for k in SMPL_KEYS)})")
    return d


class SMPLBody(ParametricBody):
    """SMPL from the user's arrays (read from their files by `posectl.methods.pose2mesh.load_smpl`): the model
    dict (SMPL_KEYS) and the Human3.6M joint regressor (17 x V). Parameters: global rotation, 23 joint
    rotations, `num_betas` betas."""

    name = "smpl"

    def __init__(self, model: dict, regressor: np.ndarray, num_betas: int = 10, where: str = "SMPL model"):
        d = check_smpl(model, where)
        reg = np.asarray(regressor)
        V = d["v_template"].shape[0]
        if reg.shape != (17, V):
            raise DataError(f"{where}: the Human3.6M joint regressor must be 17 x {V} (got {reg.shape})")
        self.faces = d["f"].astype(np.int64)
        self.joint_regressor = reg.astype(np.float32)
        t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32))   # noqa: E731
        self.num_shape = min(num_betas, d["shapedirs"].shape[2])
        self.v_template = t(d["v_template"])
        self.shapedirs = t(d["shapedirs"][:, :, :self.num_shape])
        self.posedirs = t(d["posedirs"].reshape(-1, d["posedirs"].shape[-1]).T)     # (9(J-1), 3V)
        self.J_reg_smpl = t(d["J_regressor"])
        self.weights = t(d["weights"])
        parents = d["kintree_table"][0].astype(np.int64)
        parents[0] = -1
        self.parents = parents
        self.num_bones = len(parents) - 1

    def _vertices(self, global_R, bone_R, shape):
        B = bone_R.shape[0]
        v_shaped = self.v_template + torch.einsum("vck,bk->bvc", self.shapedirs, shape)
        Jr = torch.einsum("jv,bvc->bjc", self.J_reg_smpl, v_shaped)                 # rest joints
        eye = torch.eye(3)
        pose_feat = (bone_R - eye).reshape(B, -1)
        v_posed = v_shaped + (pose_feat @ self.posedirs).reshape(B, -1, 3)
        R = torch.cat([global_R[:, None], bone_R], 1)                                 # (B, J, 3, 3)
        # world transforms of each joint, parents before children (kintree order)
        G_R, G_t = [R[:, 0]], [Jr[:, 0]]
        for j in range(1, len(self.parents)):
            p = self.parents[j]
            G_R.append(G_R[p] @ R[:, j])
            G_t.append(G_t[p] + (G_R[p] @ (Jr[:, j] - Jr[:, p])[..., None])[..., 0])
        GR, Gt = torch.stack(G_R, 1), torch.stack(G_t, 1)
        # skinning transforms map rest positions: x -> GR (x - Jr) + Gt
        A_R = torch.einsum("vj,bjcd->bvcd", self.weights, GR)
        A_t = torch.einsum("vj,bjc->bvc", self.weights, Gt - (GR @ Jr[..., None])[..., 0])
        return (A_R @ v_posed[..., None])[..., 0] + A_t
