"""`posynda`: multi-hypothesis pose synthesis for domain adaptation (PoSynDA; Liu et al., ACM MM 2023).

See docs/methods/posynda.md. Two stages, each a `posectl train posynda stage=...` run:

pretrain  a diffusion lifting model on the labelled source: a MixSTE-style denoiser predicts the clean
          root-relative 3D pose x0 from its noised version x_t (cosine schedule, T steps) and the 2D
          input; loss MPJPE(x0_hat, x0) with random flips.
adapt     the pretrained source model is frozen and gets LoRA adapters (rank r) on its attention
          projections, plus a per-pose refinement transformer; only those train. A teacher (an EMA copy
          of adapters + refiner) samples H hypotheses by K-step DDIM on *unlabelled* target 2D, refines
          them, estimates the root trajectory from the 2D (least squares; never from ground truth) and
          aggregates per joint by reprojection (JPMA): the pseudo-label. The student then samples H
          hypotheses for the same 2D and for source poses moved into the target's 2D scale/position
          distribution (global position alignment, core.alignment, through the target cameras):
            target loss = w_t2d * (min-over-hypotheses 2D reprojection error, px)
                        + w_t3d * MPJPE(every hypothesis, pseudo-label, mm)
            source loss = w_s3d * MPJPE(every hypothesis, source 3D, mm) + w_s2d * (min 2D error, px)
          in the released code's units (px and mm; computed / 1000, i.e. in metres), so the paper's weights
          0.5, 1, 1, 0.1 keep their balance. With several workers each takes a disjoint share of the target.
          With clips (denoiser.frames > 1) both losses cover every frame of every clip, each frame with its
          own root estimate (the released code's seq2seq losses), so clips a stride of `frames` apart use
          every frame once per epoch.
          The released code calls backward with the loss as upstream gradient (so it minimises loss^2/2);
          that is reproduced only with `legacy_backward=true`.
Prediction: H hypotheses by K-step DDIM with flip averaging at every step, then JPMA (root estimated from
the 2D); with clips, for the centre frame of the clip around each row. Evaluation adds P-Best (best
hypothesis per sample) and P-Agg (mean hypothesis). Target 3D is read only by the test split; the target
2D used for adaptation comes from a different split.

Deliberate deviations from the release: the student samples without flip averaging (the teacher and
prediction use it, `test_flip`); the losses supervise the final DDIM x0 only (the release supervises every step's x0);
the refiner has dropout 0.1, no causal mask and learned positions (released: 0.5, causal, sinusoidal); the
default lr 1e-3 and decay 0.95 suit CPU-scale models (paper: pretrain AdamW 6e-5, adapt Adam 1e-4, x0.993
per epoch); gradient clipping (`grad_clip`) is available but off by default.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from posectl.checkpoint import load_checkpoint
from posectl.config import field
from posectl.core import metrics
from posectl.core.alignment import global_position_alignment
from posectl.core.camera import normalize_screen, project
from posectl.core.diffusion import Diffusion, estimate_root, jpma
from posectl.core.skeleton import EVAL_JOINT_SETS, flip_poses
from posectl.datasets.lifting import LiftingData, batch_bounds
from posectl.datasets.store import dataset_id
from posectl.errors import ConfigError
from posectl.methods.base import (POSE_METRICS, Context, DataInput, Method, TrainConfig, protocol_tail, register,
                                  summary, unwrap)
from posectl.models.lora import LoRALinear, inject_lora, lora_state
from posectl.models.mixste import Attention, MixSTEDenoiser


@dataclass
class DenoiserConfig:
    width: int = field(128, "token width (published: 512)", ge=1)
    depth: int = field(4, "spatial + temporal block pairs (published: 8)", ge=1)
    heads: int = field(4, "attention heads (published: 8)", ge=1)
    frames: int = field(1, "frames per clip (published: 243; 1 = single-frame)", ge=1)
    dropout: float = field(0.1, "dropout in attention and MLPs", lt=1)
    checkpointing: bool = field(False, "recompute block activations in backward: far less memory, 1.4-1.8x "
                                       "the step time (for long clips, e.g. the published 243 frames)")


@dataclass
class RefinerConfig:
    width: int = field(64, "token width of the per-pose refinement transformer (published: 512)", ge=1)
    depth: int = field(2, "encoder layers (published: 8)", ge=1)
    heads: int = field(4, "attention heads", ge=1)


@dataclass
class PoSyndaTarget:
    path: str = field("synthetic:target", "target-domain dataset (its 2D adapts the model; its 3D is only tested)")
    split: str = field("train", "target split whose unlabelled 2D poses are used for adaptation")
    subjects: list[str] = field([], "restrict the adaptation 2D to these subjects (e.g. [S5, S6, S7, S8])")
    test_split: str = field("test", "target split evaluated at the end (a different split from `split`)")
    keypoints: str = field("gt", "target 2D source")


@dataclass
class PoSyndaConfig(TrainConfig):
    stage: Literal["pretrain", "adapt"] = field("pretrain", "pretrain: supervised source diffusion; adapt: LoRA adaptation")
    source_checkpoint: str = field("", "adapt: a `posynda stage=pretrain` checkpoint (best.pt or its run directory)")
    timesteps: int = field(1000, "diffusion steps T of the cosine schedule", ge=1)
    scale: float = field(1.0, "signal scale of the diffusion", gt=0)
    hypotheses: int = field(3, "hypotheses H sampled in parallel (README: 3)", ge=1)
    sampling_steps: int = field(2, "DDIM steps K", ge=1)
    lora_rank: int = field(4, "adapt: LoRA rank r on the attention projections", ge=1)
    ema: float = field(0.99, "adapt: EMA momentum of the teacher", lt=1)
    w_t2d: float = field(0.5, "adapt: weight of the target 2D reprojection term (per px, with 3D in mm)")
    w_t3d: float = field(1.0, "adapt: weight of the target pseudo-label term (per mm)")
    w_s3d: float = field(1.0, "adapt: weight of the GPA-styled source 3D term (per mm)")
    w_s2d: float = field(0.1, "adapt: weight of the source 2D reprojection term (per px, with 3D in mm)")
    legacy_backward: bool = field(False, "adapt/pretrain: backward with the loss as upstream gradient (released code)")
    grad_clip: float = field(0.0, "max gradient norm per step (0 = off, as the paper); posectl's addition. With "
                                  "legacy_backward, clipping undoes the released loss-scaled gradient")
    train_flip: bool = field(True, "random horizontal flips in training")
    test_flip: bool = field(True, "flip averaging at every DDIM step")
    eval_joints: Literal["all", "16", "14"] = field("all", "evaluation joint set")
    denoiser: DenoiserConfig = field(DenoiserConfig, "the diffusion denoiser")
    refiner: RefinerConfig = field(RefinerConfig, "adapt: the per-pose refinement transformer")
    target: PoSyndaTarget = field(PoSyndaTarget, "adapt: the unlabelled target domain, and the test data")

    def validate(self) -> None:
        super().validate()
        for part in ("denoiser", "refiner"):
            c = getattr(self, part)
            if c.width % c.heads:
                raise ConfigError(f"{part}.width: must be a multiple of {part}.heads ({c.width} vs {c.heads})")
        if self.sampling_steps > self.timesteps:
            raise ConfigError("sampling_steps: at most `timesteps`")
        if self.denoiser.frames not in (1, 3, 9, 27, 81, 243):
            raise ConfigError("denoiser.frames: one of 1, 3, 9, 27, 81, 243")
        if self.target.split == self.target.test_split:
            raise ConfigError("target.split: the adaptation 2D and the test data must be different splits")
        # labelled source poses must reach neither the test nor the adaptation 2D ([] means all subjects)
        t, d = self.target, self.data
        if dataset_id(t.path) == dataset_id(d.path):
            if t.test_split == d.train_split:    # the test reads every subject of its split
                raise ConfigError(f"target.test_split: '{t.test_split}' is data.train_split of the same dataset, "
                                  "so the test would include labelled source poses")
            if self.stage == "adapt" and t.split == d.train_split:
                overlap = set(t.subjects) & set(d.train_subjects)
                if overlap:
                    raise ConfigError(f"target.subjects: {sorted(overlap)} are also labelled source subjects")
                if not t.subjects or not d.train_subjects:
                    raise ConfigError(f"target.subjects: adapting on the source's own split '{t.split}' needs "
                                      "target.subjects and data.train_subjects both given and disjoint ([] = all)")


class Refiner(nn.Module):
    """Per-pose transformer over joint tokens: pose (N, J, 3) -> pose + correction (starts as identity)."""

    def __init__(self, joints: int, width: int, depth: int, heads: int):
        super().__init__()
        self.inp = nn.Linear(3, width)
        self.pos = nn.Parameter(torch.zeros(1, joints, width))
        nn.init.trunc_normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=width, dropout=0.1, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.out = nn.Linear(width, 3)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, pose: torch.Tensor) -> torch.Tensor:
        return pose + self.out(self.enc(self.inp(pose) + self.pos))


def _mpjpe_all(hyp: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean joint error of every hypothesis (H, B, J, 3) against y (B, J, 3)."""
    return (hyp - y[None]).norm(dim=-1).mean()


def _paper_loss(w2d: float, err_px: torch.Tensor, w3d: float, err_m: torch.Tensor) -> torch.Tensor:
    """w2d * px + w3d * mm, the released code's units (its 3D is x1000), divided by 1000 so that it reads
    in metres like posectl's 3D: the weights keep the paper's meaning."""
    return w2d * err_px / 1000 + w3d * err_m


@register
class PoSynDA(Method):
    name = "posynda"
    metrics = POSE_METRICS + ("p_best", "p_agg")
    shared_validation = False    # hypotheses are sampled per evaluation: shares draw other noise than the whole
    description = "PoSynDA: diffusion multi-hypothesis pose synthesis for domain adaptation (MM'23)"
    Config = PoSyndaConfig
    smoke_overrides = {"epochs": 1}

    @classmethod
    def check_training(cls, cfg: PoSyndaConfig) -> None:
        """Before a job starts (and again where the worker loads it); evaluating an adapted run needs no source."""
        if cfg.stage == "adapt" and not Path(cfg.source_checkpoint).expanduser().exists():
            raise ConfigError(f"source_checkpoint: {cfg.source_checkpoint} does not exist")

    @classmethod
    def inputs(cls, cfg: PoSyndaConfig) -> dict[str, DataInput]:
        t = cfg.target
        out = {"test": DataInput(t.path, t.test_split, t.keypoints, with_3d=True)}
        if cfg.stage == "adapt":       # checked here, before any job starts (a search space cannot name it); its
            if not cfg.source_checkpoint:   # existence in check_training: an adapted run evaluates without it
                raise ConfigError("source_checkpoint: stage=adapt needs a `posynda stage=pretrain` checkpoint")
            out["target"] = DataInput(t.path, t.split, t.keypoints, with_3d=False, subjects=tuple(t.subjects))
        return out

    def __init__(self, cfg: PoSyndaConfig, data: LiftingData, ctx: Context):
        super().__init__(cfg, data, ctx)
        self.layout = data.layout
        torch.manual_seed(cfg.seed)
        d = cfg.denoiser
        self.diffusion = Diffusion(cfg.timesteps, cfg.scale)
        net = MixSTEDenoiser(data.num_joints, d.frames, d.width, d.depth, d.heads, dropout=d.dropout,
                             checkpointing=d.checkpointing)
        self.refiner: nn.Module | None = None
        self.teacher: dict[str, torch.Tensor] | None = None
        self._source_loaded = cfg.stage == "pretrain"     # adapt: the source weights are loaded on first use
        if cfg.stage == "adapt":                           # (a resumed or evaluated run brings its own)
            self.lora_params = inject_lora(net, cfg.lora_rank, lambda name, m: isinstance(m, Attention))
            r = cfg.refiner
            self.refiner = ctx.prepare_model(Refiner(data.num_joints, r.width, r.depth, r.heads))
        self.model = ctx.prepare_model(net)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.refiner is not None:
            params += list(self.refiner.parameters())
        if cfg.stage == "pretrain":
            self.opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.1)
        else:
            self.opt = torch.optim.Adam(params, lr=cfg.lr)
        self.sched = torch.optim.lr_scheduler.ExponentialLR(self.opt, gamma=cfg.lr_decay)
        if cfg.stage == "adapt":
            self.teacher = {k: v.detach().clone() for k, v in self._student_state().items()}
        a = data.arrays
        self.intr = torch.from_numpy(a.intrinsics.astype(np.float32))
        self.kp_px = torch.from_numpy(a.keypoints_2d.astype(np.float32))
        self.root = torch.from_numpy(a.joints_3d[:, data.layout.root].astype(np.float32))
        self.target: dict[str, Any] | None = None

    # -- parts -------------------------------------------------------------------------------------
    def _load_source(self) -> None:
        """Put the pretrained source weights under the (frozen) adapted network."""
        if self._source_loaded:
            return
        self.check_training(self.cfg)
        state = load_checkpoint(Path(self.cfg.source_checkpoint).expanduser(), "posynda")
        sc = state["config"]
        if sc.get("stage") != "pretrain":
            raise ConfigError(f"source_checkpoint: {self.cfg.source_checkpoint} is not a stage=pretrain checkpoint")
        keys = ("width", "depth", "heads", "frames")
        src_d, mine = sc["denoiser"], dataclasses.asdict(self.cfg.denoiser)
        if any(src_d[k] != mine[k] for k in keys):
            raise ConfigError(f"denoiser: must match the source model's ({ {k: src_d[k] for k in keys} })")
        for k in ("timesteps", "scale"):    # the schedule and timestep embedding the source model learned
            if sc.get(k) != getattr(self.cfg, k):
                raise ConfigError(f"{k}: must match the source model's ({sc.get(k)})")
        net = unwrap(self.model)
        wrapped = {n for n, m in net.named_modules() if isinstance(m, LoRALinear)}
        src = {}
        for k, v in state["method_state"]["model"].items():
            k = k.removeprefix("net.")
            if k.startswith("refiner."):
                continue
            mod, _, leaf = k.rpartition(".")
            src[f"{mod}.base.{leaf}" if mod in wrapped else k] = v
        missing, unexpected = net.load_state_dict(src, strict=False)
        if unexpected or any(".lora_" not in k for k in missing):
            raise ConfigError(f"source_checkpoint: weights do not fit the denoiser ({(missing + unexpected)[:3]})")
        self._source_loaded = True

    def _student_state(self) -> dict[str, torch.Tensor]:
        out = {f"lora.{k}": v for k, v in lora_state(unwrap(self.model)).items()}
        out.update({f"refiner.{k}": v for k, v in unwrap(self.refiner).state_dict().items()})
        return out

    def _ema_update(self) -> None:
        with torch.no_grad():
            for k, v in self._student_state().items():
                if v.dtype.is_floating_point:
                    self.teacher[k].mul_(self.cfg.ema).add_(v.detach(), alpha=1 - self.cfg.ema)

    def _swap_in(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Load (teacher) weights into the student modules; returns the weights they replaced."""
        old = {k: v.detach().clone() for k, v in self._student_state().items()}
        m, r = unwrap(self.model), unwrap(self.refiner)
        m.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("lora.")}, strict=False)
        r.load_state_dict({k[8:]: v for k, v in state.items() if k.startswith("refiner.")})
        return old

    def _denoise(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, flip: bool) -> torch.Tensor:
        y = self.model(x, t, cond)
        if flip:
            yf = self.model(flip_poses(x, self.layout), t, flip_poses(cond, self.layout))
            y = (y + flip_poses(yf, self.layout)) / 2
        return y

    def _hypotheses(self, cond: torch.Tensor, grad: bool, flip: bool, all_frames: bool = False,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """Hypotheses by K-step DDIM from noise (DDIM eta = 1, as released): (H, B, J, 3) for the centre frame
        of each clip, or (H, B, T, J, 3) for every frame with `all_frames`. The noise comes from `generator`
        (a CPU generator, copied), by default this worker's training stream (drawn on the device)."""
        cfg, H = self.cfg, self.cfg.hypotheses
        B, T = cond.shape[:2]
        c = cond.repeat(H, 1, 1, 1)
        shape = (H * B, *cond.shape[1:-1], 3)

        def draw() -> torch.Tensor:
            return (torch.randn(shape, generator=generator) if generator is not None else self.randn(*shape)).to(cond)
        with torch.set_grad_enabled(grad):
            x = draw()
            d = self.diffusion
            for t, t_next in d.ddim_times(cfg.sampling_steps):
                tt = torch.full((H * B,), t, dtype=torch.long, device=cond.device)
                x0 = (self._denoise(x, tt, c, flip) * d.scale).clamp(-1.1 * d.scale, 1.1 * d.scale)
                noise = draw()
                x = d.ddim_step(x, x0, t, t_next, 1.0, noise)
            x = x / d.scale
        out = x if all_frames else x[:, T // 2]
        out = out.view(H, B, *out.shape[1:])
        if self.refiner is not None:
            with torch.set_grad_enabled(grad):
                out = self.refiner(out.reshape(-1, *out.shape[-2:])).view_as(out)
        return out

    def _reproject(self, hyp: torch.Tensor, kp_px: torch.Tensor, intr: torch.Tensor, root: torch.Tensor | None):
        """JPMA pose and per-joint min 2D error (px); the root is estimated from the 2D unless given (on the
        undistorted 2D, as jpma reprojects with the distortion)."""
        if root is None:
            with torch.no_grad():
                root = estimate_root(hyp.mean(0), kp_px, intr[:, :2], intr[:, 2:4], intr[:, 4:9])
        return jpma(hyp, root, intr, kp_px)

    def _backward(self, loss: torch.Tensor) -> None:
        # legacy_backward: the released code's quirk, the gradient of loss^2 / 2
        self.optimize(loss, self.opt, max_norm=self.cfg.grad_clip,
                      gradient=loss.detach() if self.cfg.legacy_backward else None)

    def _target_arrays(self) -> dict[str, Any]:
        if self.target is None:
            t = self.ctx.inputs.get("target")
            if t is None:
                raise ConfigError("posynda adapt: no target input (the orchestrator loads it from target.path)")
            tl = LiftingData(t, self.layout)          # sorted by sequence; 3D is NaN (never read from disk)
            # the target's rows and the source's 3D on the device: batches are gathered and moved there
            self.target = {"rows": len(tl), "on": tl.on_device(
                self.ctx.device, inputs=tl.inputs, kp=torch.from_numpy(tl.arrays.keypoints_2d.astype(np.float32)),
                intr=torch.from_numpy(tl.arrays.intrinsics.astype(np.float32)),
                wh=torch.from_numpy(tl.arrays.image_size.astype(np.float32))),
                "source": self.data.on_device(self.ctx.device, targets=self.data.targets, root=self.root)}
        return self.target

    # -- training ----------------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> dict[str, float]:
        return self._pretrain_epoch() if self.cfg.stage == "pretrain" else self._adapt_epoch(epoch)

    def _pretrain_epoch(self) -> dict[str, float]:
        cfg, data, dev, T = self.cfg, self.data, self.ctx.device, self.cfg.denoiser.frames
        self.model.train()
        batches = list(data.batches(self.per_worker(), shuffle=True, generator=self.gen,
                                    stride=cfg.data.train_stride))
        total, n = torch.zeros((), device=dev), 0      # summed on the device: one sync per epoch
        for step, idx in enumerate(batches):
            # (B, T, J, 2) and (B, T, J, 3) clips, indexed on the device when the split is held there
            cond, x0 = data.fetch(idx, dev, T, cfg.data.device_fraction, target_windows=True)
            if cfg.train_flip:
                flip = (self.rand(len(idx)) < 0.5)[:, None, None, None]
                cond = torch.where(flip, flip_poses(cond, self.layout), cond)
                x0 = torch.where(flip, flip_poses(x0, self.layout), x0)
            t = self.randint(cfg.timesteps, len(idx))
            noise = self.randn(*x0.shape)
            x_t = self.diffusion.q_sample(x0, t, noise)
            pred = self.model(x_t, t, cond)
            loss = (pred - x0).norm(dim=-1).mean()
            self._backward(loss)
            total += loss.detach() * len(idx)
            n += len(idx)
            self.ctx.progress(step + 1, len(batches))
        lr = self.opt.param_groups[0]["lr"]
        self.sched.step()
        return {"train_loss_mm": 1000 * total.item() / max(n, 1), "lr": lr, "train_samples": n}

    def _target_batches(self, n: int, epoch: int) -> list[torch.Tensor]:
        """This rank's batches of the target rows for an epoch. Every rank holds the whole target input, so
        all draw one permutation (seeded by seed and epoch, not by rank) and deal it round-robin, padded by
        wrapping to a multiple of the world size: disjoint shares that cover the target once, of equal
        length, so every rank takes the same number of steps (DDP's collectives need lockstep)."""
        W, cfg = self.ctx.world_size, self.cfg
        idx = torch.arange(0, n, cfg.data.train_stride)
        idx = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))]
        idx = torch.cat([idx, idx[torch.arange((-len(idx)) % W) % len(idx)]])[self.ctx.rank::W]
        return [idx[a:b] for a, b in batch_bounds(len(idx), max(1, cfg.batch_size // W))]

    def _adapt_epoch(self, epoch: int) -> dict[str, float]:
        cfg, data, dev, T = self.cfg, self.data, self.ctx.device, self.cfg.denoiser.frames
        self._load_source()
        tgt = self._target_arrays()
        on, src = tgt["on"], tgt["source"]                 # target rows, source 3D: on the device
        self.model.train()
        self.refiner.train()
        t_batches = [b.to(dev) for b in self._target_batches(tgt["rows"], epoch)]
        stats = {k: torch.zeros((), dtype=torch.float64, device=dev)   # summed on the device: one sync an epoch
                 for k in ("target_loss", "source_loss", "target_min2d_px", "pseudo_vs_mean_mm")}
        n = 0
        for step, tidx in enumerate(t_batches):
            # target step: teacher pseudo-labels by JPMA, student pulled towards them; with clips every frame
            # of the clip is supervised (each with its own root estimate), as the released code does
            cond = on.windows("inputs", tidx, T)
            kp = on.windows("kp", tidx, T).flatten(0, 1)                           # (B*T, J, 2)
            intr = on["intr"][tidx].repeat_interleave(T, 0)                         # a clip is one sequence
            student = self._swap_in(self.teacher)
            with torch.no_grad():
                hyp_t = self._hypotheses(cond, grad=False, flip=cfg.test_flip, all_frames=True).flatten(1, 2)
                pseudo, _ = self._reproject(hyp_t, kp, intr, None)
            self._swap_in(student)
            hyp = self._hypotheses(cond, grad=True, flip=False, all_frames=True).flatten(1, 2)
            _, err2d = self._reproject(hyp, kp, intr, None)
            loss_t = _paper_loss(cfg.w_t2d, err2d.mean(), cfg.w_t3d, _mpjpe_all(hyp, pseudo))
            # source step: source clips moved frame by frame into a target clip's 2D scale/position (as the
            # released code does on flattened clips), seen through that target sequence's camera
            sidx = self.randint(len(data), len(tidx))
            pick = self.randint(tgt["rows"], len(sidx))
            y = src.windows("targets", sidx, T)                                   # (B, T, J, 3) root-relative
            posed = (y + src.windows("root", sidx, T)[:, :, None]).flatten(0, 1)   # camera frame
            t_kp = on.windows("kp", pick, T).flatten(0, 1)
            t_intr = on["intr"][pick].repeat_interleave(T, 0)                      # one camera per clip
            with self.fp32():
                moved = global_position_alignment(posed, t_kp, t_intr[:, :2], t_intr[:, 2:4], self.layout.root)
                s_px = project(moved, t_intr)
                wh = on["wh"][pick].repeat_interleave(T, 0)
                s_cond = normalize_screen(s_px, wh[:, 0], wh[:, 1]).view(len(sidx), T, *s_px.shape[1:])
            hyp_s = self._hypotheses(s_cond, grad=True, flip=False, all_frames=True).flatten(1, 2)
            _, err_s = self._reproject(hyp_s, s_px, t_intr, moved[:, self.layout.root])
            loss_s = _paper_loss(cfg.w_s2d, err_s.mean(), cfg.w_s3d, _mpjpe_all(hyp_s, y.flatten(0, 1)))
            self._backward(loss_t + loss_s)
            self._ema_update()
            stats["target_loss"] += loss_t.detach().double()
            stats["source_loss"] += loss_s.detach().double()
            stats["target_min2d_px"] += err2d.detach().mean().double()
            stats["pseudo_vs_mean_mm"] += 1000 * (pseudo - hyp_t.mean(0)).norm(dim=-1).mean().double()
            n += len(tidx)
            self.ctx.progress(step + 1, len(t_batches))
        lr = self.opt.param_groups[0]["lr"]
        self.sched.step()
        out = {k: v / max(len(t_batches), 1) for k, v in zip(stats, torch.stack(list(stats.values())).tolist())}
        out.update({"lr": lr, "train_samples": n, "train_loss_mm": 1000 * out["source_loss"]})
        return out

    # -- prediction and evaluation -------------------------------------------------------------------
    def predict_hypotheses(self, data: LiftingData, stride: int = 1, batch_size: int | None = None,
                           progress=None):
        """(H, N, J, 3) hypotheses, (N, J, 3) JPMA poses and the row indices, for every stride-th row.

        The default batch holds about 1024 frames (1024 single frames, 4 clips of 243): a batch is sampled
        as H hypotheses x 2 flips at once, so a row-count batch would need ~100x the memory at 243 frames."""
        batch_size = batch_size or max(1, 1024 // self.cfg.denoiser.frames)
        self.model.eval()
        if self.refiner is not None:
            self.refiner.eval()
        dev = self.ctx.device
        intr_all = torch.from_numpy(data.arrays.intrinsics.astype(np.float32))
        kp_all = torch.from_numpy(data.arrays.keypoints_2d.astype(np.float32))
        hyps, poses, rows = [], [], []
        noise = torch.Generator().manual_seed(self.cfg.seed)   # the same draws for every evaluation of a model
        batches = list(data.batches(batch_size, shuffle=False, stride=stride))
        with torch.no_grad():
            for step, idx in enumerate(batches):
                cond = data.windows(idx, self.cfg.denoiser.frames).to(dev)
                h = self._hypotheses(cond, grad=False, flip=self.cfg.test_flip, generator=noise)
                p, _ = self._reproject(h, kp_all[idx].to(dev), intr_all[idx].to(dev), None)
                h[..., data.layout.root, :] = 0
                p[..., data.layout.root, :] = 0
                hyps.append(h.float().cpu())
                poses.append(p.float().cpu())
                rows.append(idx)
                if progress is not None:
                    progress(step + 1, len(batches))
        self.model.train()
        return torch.cat(hyps, 1).numpy(), torch.cat(poses).numpy(), torch.cat(rows).numpy()

    def lift(self, data: LiftingData, progress=None) -> dict[str, np.ndarray]:
        """JPMA poses (the evaluated prediction); the 2D reprojection uses the rows' intrinsics."""
        return {"joints_3d": self.predict_hypotheses(data, progress=progress)[1]}

    def evaluate(self, data: LiftingData, stride: int = 1, detailed: bool = False) -> dict[str, Any]:
        hyp, pred, rows = self.predict_hypotheses(data, stride)
        gt = data.targets[rows].numpy()
        joints = None
        if self.cfg.eval_joints != "all":
            joints = list(EVAL_JOINT_SETS[self.cfg.eval_joints])
        res = metrics.evaluate_poses(pred, gt, actions=data.actions[rows], root=data.layout.root, joints=joints)
        sel = joints or list(range(data.layout.num_joints))
        per_h = np.linalg.norm(hyp[..., sel, :] - gt[None][..., sel, :], axis=-1).mean(-1)     # (H, N)
        res["p_best"] = 1000 * float(per_h.min(0).mean())
        res["p_agg"] = 1000 * float(np.linalg.norm(hyp.mean(0)[:, sel] - gt[:, sel], axis=-1).mean())
        # the test role is the target input (inputs()), evaluated in detail at the end and by `posectl eval`;
        # the per-epoch validation is the source's val split (the loop keeps only its numbers)
        kp = data.keypoints or (self.cfg.target.keypoints if detailed else self.cfg.data.keypoints)
        res["protocol"] = (f"{data.layout.name} ({len(sel)} joints), root-relative, 2D {kp}, "
                           f"JPMA over {self.cfg.hypotheses} hypotheses x {self.cfg.sampling_steps} DDIM steps "
                           f"(root estimated from 2D), flip {'on' if self.cfg.test_flip else 'off'}"
                           f"{protocol_tail(stride, self.cfg.precision)}")
        return summary(res, detailed)

    # -- checkpoints ---------------------------------------------------------------------------------
    def weights(self) -> dict[str, torch.Tensor]:
        """Everything prediction needs (denoiser, adapters, refiner): the checkpoint's "model" entry."""
        w = {f"net.{k}": v for k, v in unwrap(self.model).state_dict().items()}
        if self.refiner is not None:
            w.update({f"refiner.{k}": v for k, v in unwrap(self.refiner).state_dict().items()})
        return w

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        unwrap(self.model).load_state_dict({k[4:]: v for k, v in weights.items() if k.startswith("net.")})
        if self.refiner is not None:
            unwrap(self.refiner).load_state_dict({k[8:]: v for k, v in weights.items() if k.startswith("refiner.")})
        self._source_loaded = True

    def resumables(self) -> dict[str, Any]:
        return {"optimizer": self.opt, "scheduler": self.sched}

    def state_dict(self) -> dict[str, Any]:
        st = super().state_dict()
        if self.teacher is not None:
            st["teacher"] = {k: v.clone() for k, v in self.teacher.items()}
        return st

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if "optimizer" in state and self.refiner is not None:
            self.teacher = {k: v.clone() for k, v in state["teacher"].items()}
