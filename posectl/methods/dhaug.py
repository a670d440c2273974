"""`dhaug`: DH-AUG (Huang, Liang, Deng, ECCV 2022) - DH forward-kinematics GAN augmentation for lifting.

A generator maps noise to Denavit-Hartenberg joint angles, a global rotation and a root translation;
the fixed, differentiable DH skeleton (`core.kinematics.DHSkeleton`) turns them, with bone lengths
borrowed from the current real batch (+-20 % per symmetric group), into a 3D pose. WGAN-GP critics
judge the root-centred pose (3D critic, with bone-cosine/length features) and its projection through a
randomly chosen real camera (2D critic). The generated 2D-3D pairs train the lifting network.

Per epoch (docs/methods/dhaug.md):
  1. bone-length swap: every training pose takes a random training subject's mean bone lengths and
     is re-projected with its own camera; these are the critics' "real" samples;
  2. GAN pass over the training set (mode `gan`: critic steps, a generator step every
     `gan.critic_steps`-th iteration; mode `normal`: angles drawn at random, no learning), filling a
     fresh buffer of generated pairs (about one epoch's worth);
  3. after `warmup` GAN-only epochs (mode `gan`; `normal` and `none` train from epoch 0): one pass of the
     lifting network on the generated pairs, then one on the real pairs (MSE, grad-norm clip 1, a
     second step on the mirrored pair).
Learning rate of the lifting network: linear decay over the first `epochs - extra_epochs` epochs, then
x `lr_decay` per epoch (the paper's extra phase). Single-frame, the schedule runs from epoch 0 (warm-up
included); in video mode it starts at the first lifting epoch (as released: the warm-ups are added to
the first phase). Mode `none` is the baseline of the ablation.

The network works on the 16-joint skeleton of PoseAug/DH-AUG (no Neck/Nose); evaluation therefore
defaults to `eval_joints=16`. Video mode (`backbone.name=videopose`, `backbone.receptive_field` 9 or 27):
the generator emits whole clips (bone lengths shared across the clip) and motion critics on the
clip join after `gan.motion_warmup` epochs.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist

from posectl.config import field
from posectl.core.camera import normalize_screen, project, world_to_camera
from posectl.core.kinematics import (
    BONE_NAMES, FREE_ANGLES, ROTATION, SCALE_GROUPS, DHSkeleton, bone_lengths16,
    subject_templates, swap_bone_lengths, upright_alignment, yaw_matrix,
)
from posectl.core.skeleton import H36M16, flip_poses, index_tensor
from posectl.datasets.lifting import DeviceRows, LiftingData, batch_bounds
from posectl.errors import ConfigError
from posectl.methods.base import Context, StateGroup, register, unwrap
from posectl.methods.lifting import LiftingConfig, LiftingMethod
from posectl.models.dh_gan import Critic2D, Critic3D, DHGenerator, MotionCritic2D, MotionCritic3D
from posectl.models.subset import SubsetLifter

KEEP16 = tuple(i for i in range(17) if i != 9)     # h36m17 -> h36m16 (drop Neck/Nose)


@dataclass
class GANConfig:
    gen_width: int = field(256, "generator width (released default 1000, README runs 256)", ge=1)
    critic3d_width: int = field(256, "3D critic width", ge=1)
    critic2d_width: int = field(256, "2D critic width", ge=1)
    noise_dim: int = field(128, "generator noise dimension", ge=1)
    lr: float = field(1e-4, "Adam learning rate of generator and critics (1e-4, betas 0.5/0.9, as released)", gt=0)
    w3d: float = field(1.0, "generator weight of the 3D critic")
    w2d: float = field(0.2, "generator weight of the 2D critic")
    w_motion: float = field(1.0, "video: generator weight of each motion critic")
    gp: float = field(10.0, "gradient-penalty weight (WGAN-GP lambda)")
    critic_steps: int = field(5, "critic iterations per generator update", ge=1)
    batch_size: int = field(64, "GAN batch (global). Released: the lifting batch, 1024, for 110 epochs; at short "
                                "budgets a small batch gives the generator many more updates per pass", ge=1)
    flip: bool = field(True, "average every critic and generator term with the left-right mirrored input")
    bone_scaling: Literal["different", "same", "none"] = field(
        "different", "bone-length jitter: independent per symmetric group, one factor for all, or none")
    bone_scale: float = field(0.2, "bone-length jitter amplitude (+-20 % as released)")
    rotation: bool = field(True, "generate a global rotation (False: keep the DH model's upright frame)")
    ranged_angles: bool = field(True, "map angles into per-joint ranges (False: tanh x 180 deg, the ablation)")
    motion_warmup: int = field(4, "video: epochs before the motion critics join")


@dataclass
class DHAugConfig(LiftingConfig):
    epochs: int = field(8, "training epochs (warm-up included)")
    lr_decay: float = field(0.95, "per-epoch decay of the lifting learning rate in the extra phase")
    eval_joints: Literal["all", "16", "14"] = field("16", "evaluation joints: 16 (PoseAug/DH-AUG protocol) or 14")
    mode: Literal["gan", "normal", "none"] = field(
        "gan", "gan: learned DH augmentation; normal: random DH sampling; none: no augmentation (baseline)")
    warmup: int = field(2, "mode gan: number of GAN-only epochs; the lifting network trains from epoch `warmup` "
                           "(0-based; the release's `epoch > warmup` waits one more). normal/none: no warm-up")
    extra_epochs: int = field(0, "final epochs of the extra phase (lr x lr_decay per epoch after the linear decay)")
    bone_swap: bool = field(True, "swap in a random training subject's bone lengths every epoch (PoseAug's step)")
    train_flip: bool = field(True, "a second optimiser step on the mirrored pair")
    pose_loss: Literal["mse", "mpjpe"] = field("mse", "lifting loss (released: MSE single-frame, MPJPE video)")
    max_2d: float = field(1.0, "drop generated pairs with a normalised 2D coordinate beyond this", gt=0)
    gan: GANConfig = field(GANConfig, "generator and critics")

    def validate(self) -> None:
        super().validate()
        if self.eval_joints == "all":
            raise ConfigError("eval_joints: dhaug predicts the 16-joint skeleton (no Neck/Nose); use 16 or 14")
        if not 0 <= self.extra_epochs < self.epochs:
            raise ConfigError("extra_epochs: must be >= 0 and < epochs")
        if self.warmup < 0 or self.gan.critic_steps < 1 or self.gan.motion_warmup < 0:
            raise ConfigError("warmup, gan.critic_steps, gan.motion_warmup: must be >= 0 (critic_steps >= 1)")
        if self._lifting_start() >= self.epochs:
            raise ConfigError(f"warmup: the lifting network never trains ({self.warmup} warm-up epochs "
                              f"+ {self._motion_delay()} motion warm-up >= {self.epochs} epochs)")
        if self.gan.batch_size < 1:
            raise ConfigError("gan.batch_size: must be >= 1")
        if not 0 <= self.gan.bone_scale < 1:
            raise ConfigError("gan.bone_scale: must be in [0, 1)")

    def _motion_delay(self) -> int:
        return self.gan.motion_warmup if self.backbone.receptive_field > 1 else 0

    def _lifting_start(self) -> int:
        """First epoch that trains the lifting network: random DH sampling (`normal`) needs no warm-up
        and the release trains from the start there; `gan` waits for the generator (and motion critics)."""
        return self.warmup + self._motion_delay() if self.mode == "gan" else 0


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _agree_min(n: int) -> int:
    """The smallest `n` over all workers (so every DDP worker runs the same number of steps)."""
    if not _distributed():
        return n
    t = torch.tensor([n], dtype=torch.long, device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())



@register
class DHAug(LiftingMethod):
    name = "dhaug"
    description = "DH-AUG: DH forward-kinematics GAN augmentation for 2D->3D lifting (ECCV'22)"
    Config = DHAugConfig
    smoke_overrides = {"epochs": 2, "warmup": 1}

    def __init__(self, cfg: DHAugConfig, data: LiftingData, ctx: Context):
        if data.layout.name != "h36m17":
            raise ConfigError(f"dhaug: needs the h36m17 joint layout, the dataset has {data.layout.name}")
        super().__init__(cfg, data, ctx)
        torch.manual_seed(cfg.seed)   # identical initial weights on every worker
        self.frames = cfg.backbone.receptive_field
        backbone = cfg.backbone.build(16, 16, H36M16)
        self.model = ctx.prepare_model(SubsetLifter(backbone, KEEP16, 17, fill={9: 8}))
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, amsgrad=True)
        # The release's lambda rule 1 - k/(n1+1) over the first phase's n1 epochs, then the last step's
        # 1/(n1+1) x lr_decay per extra epoch. k counts from epoch 0 single-frame (the release steps through
        # the warm-up), from the first lifting epoch in video mode (the release steps only once lifting
        # runs, and the first phase holds the warm-ups), so lifting starts at the full rate there.
        start = cfg._lifting_start() if self.frames > 1 else 0
        n1 = max(cfg.epochs - cfg.extra_epochs - start, 0)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda e: (
            1 - max(e - start, 0) / (n1 + 1) if e - start < n1 else cfg.lr_decay ** (e - start - n1) / (n1 + 1)))
        # real data in the 16-joint layout
        self.inputs16 = data.inputs[:, list(KEEP16)]
        self.targets16 = data.targets[:, list(KEEP16)]
        self._on: DeviceRows | None = None   # the real 16-joint rows on the device (`_rows`)
        self.nets: dict[str, torch.nn.Module] = {}
        self.opts: dict[str, torch.optim.Optimizer] = {}
        self._ready = False     # generator, critics and camera tensors are built on first use, so that
                                # evaluating a checkpoint needs no cameras and no GAN

    def _rows(self) -> DeviceRows:
        """The training rows (16-joint 2D and 3D, sequence bounds) on the device: batches, windows and
        augmentation are made there, from the device's generator (Method.rand/randn/randint)."""
        if self._on is None:
            self._on = self.data.on_device(self.ctx.device, inputs16=self.inputs16, targets16=self.targets16)
        return self._on

    def _setup_augmentation(self) -> None:
        cfg, ctx, data = self.cfg, self.ctx, self.data
        if self._ready or cfg.mode == "none":
            return
        self._ready = True
        dev = ctx.device
        a = data.arrays
        if a.extrinsics is None:
            raise ConfigError(f"dhaug mode={cfg.mode}: the training data has no camera extrinsics (world frame); "
                              "use a dataset with cameras (Human3.6M, synthetic) or mode=none")
        # per-row camera tables, on the device
        cam3d = torch.from_numpy(a.joints_3d[:, list(KEEP16)].astype(np.float32))
        self.templates = subject_templates(cam3d, a.subject).to(dev)
        self.cam3d = cam3d.to(dev)
        self.intr = torch.from_numpy(a.intrinsics.astype(np.float32)).to(dev)
        self.wh = torch.from_numpy(a.image_size.astype(np.float32)).to(dev)
        ext = torch.from_numpy(a.extrinsics.astype(np.float32)).to(dev)
        self.R, self.t = ext[:, :9].reshape(-1, 3, 3), ext[:, 9:]
        # world-frame root positions (for `normal` mode)
        self.world_root = torch.einsum("nji,nj->ni", self.R, self.cam3d[:, 0] - self.t)
        self.fk = DHSkeleton().to(dev)
        self.align = upright_alignment(self.fk)
        g = cfg.gan
        if cfg.mode == "gan":
            with torch.random.fork_rng():
                torch.manual_seed(cfg.seed + 1)     # identical initial weights on every worker
                nets = {"G": DHGenerator(g.gen_width, g.noise_dim, self.frames),
                        "D3": Critic3D(g.critic3d_width), "D2": Critic2D(g.critic2d_width)}
                if self.frames > 1:
                    nets["M3"] = MotionCritic3D(self.frames, g.critic3d_width)
                    nets["M2"] = MotionCritic2D(self.frames, g.critic2d_width)
            self.nets = {k: ctx.prepare_model(v) for k, v in nets.items()}
            self.opts = {k: torch.optim.Adam(v.parameters(), lr=g.lr, betas=(0.5, 0.9))
                         for k, v in self.nets.items()}

    # -- real data for the critics ---------------------------------------------------------------
    def _swap_and_project(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Bone-length template swap of every training pose, re-projected with its own camera.
        Returns world-frame root-centred 3D, normalised 2D and the bone lengths used."""
        if self.cfg.bone_swap:
            lengths = self.templates[self.randint(len(self.templates), len(self.cam3d))]
            cam = swap_bone_lengths(self.cam3d, lengths)
        else:
            cam, lengths = self.cam3d, bone_lengths16(self.cam3d)
        uv = project(cam, self.intr)
        kp = normalize_screen(uv, self.wh[:, 0], self.wh[:, 1])
        world = torch.einsum("nji,nkj->nki", self.R, cam - cam[:, :1])   # R^T (X - root)
        return world, kp, lengths

    def _jitter(self, lengths: torch.Tensor) -> torch.Tensor:
        g = self.cfg.gan
        if g.bone_scaling == "none" or g.bone_scale == 0:
            return lengths
        B = lengths.shape[0]
        shared = (self.rand(B) * 2 - 1) * g.bone_scale if g.bone_scaling == "same" else None
        scale = lengths.new_ones(B, len(BONE_NAMES))   # the thorax link stays unscaled in both modes (§4.3)
        for bones in SCALE_GROUPS.values():
            eps = shared if shared is not None else (self.rand(B) * 2 - 1) * g.bone_scale
            for b in bones:
                scale[:, BONE_NAMES.index(b)] = 1 + eps
        return lengths * scale

    # -- generation ------------------------------------------------------------------------------
    def _generate(self, lengths: torch.Tensor, grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, 16, 3) world-frame poses (root placed) and their root-centred version."""
        g, B, T = self.cfg.gan, lengths.shape[0], self.frames
        dev = self.ctx.device
        if self.cfg.mode == "gan":
            z = self.randn(B, g.noise_dim)
            with torch.set_grad_enabled(grad):
                raw, trans = self.nets["G"](z)                       # (B, T, 31), (B, T, 3)
                raw = raw.reshape(B * T, -1)
                if g.ranged_angles:
                    angles = self.fk.ranged(raw)
                else:
                    angles = torch.zeros(B * T, 37, device=dev).index_copy(
                        1, index_tensor(FREE_ANGLES, dev), (torch.tanh(raw) * 180).float())
                if not g.rotation:
                    angles = angles.index_fill(1, index_tensor(ROTATION, dev), 0.0)
                L = lengths.repeat_interleave(T, 0)
                rc = self.fk(angles, L).view(B, T, 16, 3)
                return rc + trans[:, :, None, :], rc
        # `normal`: clipped Gaussian angles around each range's middle (sd 60 deg as released), upright with
        # a random heading, root at a random real root position. The released generator's narrower ranges
        # are not documented; the trunk and neck DOFs (range +-180 for the GAN) get sd 15 deg here, or
        # the trunk would fold over as often as not.
        lo, hi = self.fk.lo, self.fk.hi
        sd = torch.full((37,), 60.0, device=dev)
        sd[10:22] = 15.0
        angles = ((lo + hi) / 2 + sd * self.randn(B * T, 37)).clamp(lo, hi)
        pose = self.fk(angles, lengths.repeat_interleave(T, 0), rotate=False)
        yaw = (self.rand(B) * 2 - 1) * torch.pi
        rot = yaw_matrix(yaw) @ self.align
        rc = torch.einsum("bij,btkj->btki", rot, pose.view(B, T, 16, 3))
        root = self.world_root[self.randint(len(self.world_root), B)]
        return rc + root[:, None, None, :], rc

    def _view(self, world: torch.Tensor, cams: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Camera-frame 3D, normalised 2D and a validity mask for poses seen through training cameras."""
        R, t = self.R[cams].to(world), self.t[cams].to(world)
        cam = world_to_camera(world.flatten(1, 2), R, t).view_as(world)
        safe = torch.cat([cam[..., :2], cam[..., 2:].clamp_min(0.1)], -1)
        intr, wh = self.intr[cams].to(world), self.wh[cams].to(world)
        uv = project(safe.flatten(1, 2), intr)
        kp = normalize_screen(uv, wh[:, 0], wh[:, 1]).view(*world.shape[:-1], 2)
        valid = (cam[..., 2] > 0.1).flatten(1).all(1) & torch.isfinite(kp).flatten(1).all(1)
        valid &= kp.abs().flatten(1).amax(1) <= self.cfg.max_2d
        return cam, kp.clamp(-5, 5), valid

    def _critic_step(self, name: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """One WGAN-GP critic update; a single forward over real, fake and interpolates (DDP-friendly)."""
        g, layout = self.cfg.gan, H36M16
        if g.flip:
            real = torch.cat([real, flip_poses(real, layout)])
            fake = torch.cat([fake, flip_poses(fake, layout)])
        B = real.shape[0]
        eps = self.rand(B, *([1] * (real.dim() - 1))).to(real)
        interp = (eps * real + (1 - eps) * fake).requires_grad_(True)
        out = self.nets[name](torch.cat([real, fake, interp]))
        d_real, d_fake, d_int = out.split(B)
        (grad,) = torch.autograd.grad(d_int.sum(), interp, create_graph=True)
        gp = ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
        w_dist = d_real.mean() - d_fake.mean()
        loss = -w_dist + g.gp * gp
        self.optimize(loss, self.opts[name])
        return w_dist.detach().float()      # summed over the epoch: not in bf16

    def _generator_step(self, lengths: torch.Tensor, cams: torch.Tensor, motion: bool) -> torch.Tensor:
        g = self.cfg.gan
        critics = [k for k in ("D3", "D2", "M3", "M2") if k in self.nets and (motion or k[0] == "D")]
        for k in critics:
            self.nets[k].requires_grad_(False)
        world, rc = self._generate(lengths, grad=True)
        _, kp, _ = self._view(world, cams)
        terms = {"D3": (g.w3d, rc[:, self.frames // 2]), "D2": (g.w2d, kp[:, self.frames // 2]),
                 "M3": (g.w_motion, rc), "M2": (g.w_motion, kp)}
        loss = torch.zeros((), device=rc.device)
        for k in critics:
            w, x = terms[k]
            if g.flip:
                x = torch.cat([x, flip_poses(x, H36M16)])
            loss = loss - w * unwrap(self.nets[k])(x).mean()    # critics are frozen: no DDP sync needed
        self.optimize(loss, self.opts["G"])
        for k in critics:
            self.nets[k].requires_grad_(True)
        return loss.detach().float()

    def _augment_pass(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """GAN pass (or random sampling) over the training set; returns the generated 2D windows
        (N, T, 16, 2) and centre-frame root-relative camera 3D (N, 16, 3)."""
        cfg, T = self.cfg, self.frames
        with self.fp32():
            world_rc, real2d, lengths = self._swap_and_project()
        per_worker = self.per_worker(cfg.gan.batch_size)
        order = torch.arange(0, len(world_rc), cfg.data.train_stride, device=self.ctx.device)
        order = order[self.randperm(len(order))]
        steps = _agree_min(len(order) // per_worker)          # incomplete batches are skipped, as released
        motion = T > 1 and epoch >= cfg.gan.motion_warmup
        kp_out, y_out, valid_out = [], [], []          # kept on the device, filtered once at the end
        stats = {"w_dist_3d": 0.0, "w_dist_2d": 0.0, "w_dist_motion": 0.0, "g_loss": 0.0}
        n_g = 0
        for step in range(steps):
            idx = order[step * per_worker: (step + 1) * per_worker]
            L = self._jitter(lengths[idx])
            cams = self.randint(len(self.R), len(idx))   # a random training camera
            with torch.no_grad():
                world, rc = self._generate(L, grad=False)
                cam, kp, valid = self._view(world, cams)
            if cfg.mode == "gan":
                c = T // 2
                stats["w_dist_3d"] += self._critic_step("D3", world_rc[idx], rc[:, c])
                stats["w_dist_2d"] += self._critic_step("D2", real2d[idx], kp[:, c])
                if motion:   # real clips: windows of the swapped poses within their sequences
                    on = self._rows()
                    clip3, clip2 = on.windows(world_rc, idx, T), on.windows(real2d, idx, T)
                    stats["w_dist_motion"] += self._critic_step("M3", clip3, rc)
                    stats["w_dist_motion"] += self._critic_step("M2", clip2, kp)
                if step % cfg.gan.critic_steps == cfg.gan.critic_steps - 1:
                    stats["g_loss"] += self._generator_step(L, cams, motion)
                    n_g += 1
            root = cam[:, T // 2, :1]
            kp_out.append(kp)
            y_out.append(cam[:, T // 2] - root)
            valid_out.append(valid)
            self.ctx.progress(step + 1, steps)
        if kp_out:
            keep = torch.cat(valid_out)                  # one sync per epoch: how many poses are kept
            kp_all, y_all = torch.cat(kp_out)[keep], torch.cat(y_out)[keep]
        else:
            kp_all, y_all = world_rc.new_zeros(0, T, 16, 2), world_rc.new_zeros(0, 16, 3)
        n = _agree_min(len(kp_all))
        out = {k: float(v) / max(steps, 1) for k, v in stats.items() if k != "g_loss"}
        out["g_loss"] = float(stats["g_loss"]) / max(n_g, 1)
        out["generated"] = n
        out["generated_kept"] = len(kp_all) / max(steps * per_worker, 1)
        if cfg.mode != "gan":
            out = {"generated": n, "generated_kept": out["generated_kept"]}
        return kp_all[:n], y_all[:n], out

    # -- lifting ---------------------------------------------------------------------------------
    def _pose_loss(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.cfg.pose_loss == "mse":
            return ((pred - y) ** 2).mean()
        return (pred - y).norm(dim=-1).mean()

    def _pose_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        pred = self.model(x)[:, 0]
        loss = self._pose_loss(pred, y)
        self.optimize(loss, self.opt, max_norm=1.0)
        return (pred.detach() - y).norm(dim=-1).mean()

    def _pose_pass(self, windows_of, targets: torch.Tensor, n: int) -> tuple[float, int]:
        """One pass over n pairs; `windows_of(idx)` gives (B, T, 16, 2) inputs of device rows `idx`.
        Returns MPJPE (mm)."""
        cfg, dev = self.cfg, self.ctx.device
        per_worker = self.per_worker()
        perm = self.randperm(n)
        # the generated buffer's size varies (per worker, too): never a batch of one; every worker
        # takes the same number of steps, zero when one of them holds a single pair
        bounds = batch_bounds(n, per_worker) if n > 1 else []
        steps = _agree_min(len(bounds))
        total, count = torch.zeros((), device=dev), 0       # summed on the device: one sync per pass
        for start, end in bounds[:steps]:
            idx = perm[start:end]
            x, y = windows_of(idx), targets[idx]
            err = self._pose_step(x, y)
            if cfg.train_flip:
                self._pose_step(flip_poses(x, H36M16), flip_poses(y, H36M16))
            total += err * len(idx)
            count += len(idx)
        return 1000 * total.item() / max(count, 1), count

    def train_epoch(self, epoch: int) -> dict[str, float]:
        cfg, T = self.cfg, self.frames
        self._setup_augmentation()
        self.model.train()
        out: dict[str, float] = {}
        lifting = epoch >= cfg._lifting_start()
        if cfg.mode != "none":
            kp, y, stats = self._augment_pass(epoch)
            out.update(stats)
            if lifting:
                err, n = self._pose_pass(lambda idx: kp[idx], y, len(kp))
                if n:
                    out["train_fake_mpjpe_mm"] = err
                out["train_samples"] = n
        if lifting:
            on = self._rows()
            rows = torch.arange(0, len(self.data), cfg.data.train_stride, device=self.ctx.device)
            err, n = self._pose_pass(lambda idx: on.windows("inputs16", rows[idx], T), on["targets16"][rows], len(rows))
            out["train_loss_mm"] = err          # MPJPE on real training pairs (the objective is cfg.pose_loss)
            out["train_samples"] = out.get("train_samples", 0) + n
            out["precise_bn_batches"] = self.refresh_batch_norm(   # statistics of real inputs: what is evaluated
                lambda idx: on.windows("inputs16", idx.to(self.ctx.device), T), self.gen)
        out["lr"] = self.opt.param_groups[0]["lr"]
        with warnings.catch_warnings():   # warm-up epochs step the schedule (at 1 in video mode) without lifting
            warnings.simplefilter("ignore", UserWarning)
            self.sched.step()
        return out

    # -- checkpoints -----------------------------------------------------------------------------
    def resumables(self) -> dict[str, Any]:
        return {"optimizer": self.opt, "scheduler": self.sched, "nets": StateGroup(self.nets),
                "net_optimizers": StateGroup(self.opts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "nets" in state:               # a full state: the GAN exists before its weights are loaded
            self._setup_augmentation()
        super().load_state_dict(state)

    # -- for people ------------------------------------------------------------------------------
    def sample_poses(self, n: int) -> torch.Tensor:
        """n generated root-centred world-frame 3D poses (16 joints, metres), for inspection."""
        if self.cfg.mode == "none":
            raise ConfigError("dhaug mode=none generates no poses")
        self._setup_augmentation()
        if self.cfg.bone_swap:   # the lengths a training batch would lend: a random subject's template
            lengths = self.templates[self.randint(len(self.templates), n)]
        else:
            lengths = bone_lengths16(self.cam3d[self.randint(len(self.cam3d), n)])
        L = self._jitter(lengths)
        with torch.no_grad():
            _, rc = self._generate(L, grad=False)
        return rc[:, self.frames // 2].cpu()
