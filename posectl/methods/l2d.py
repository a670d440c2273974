"""`l2d`: training a 2D pose detector with 3D guidance from frozen lifting networks (L2D-Pose; Lee, Hwang,
Lee, ACCV 2024; docs/methods/l2d.md).

Per batch, top to bottom:
  1. Images: a square crop around each 2D pose, with random scale / shift / rotation. When the dataset has
     an image column (photographs, e.g. Human3.6M frames attached with `posectl data attach-images`) the
     crop is resampled from the row's frame (posectl.core.render.crop_frames); otherwise (`images=render`,
     or no column) the pose is rendered as an articulated figure (posectl.core.render: shaded limbs,
     z-buffered, random background). Labels are the dataset's 2D through the same crop.
  2. The detector (a compact HRNet, posectl.models.hrnet) predicts per-joint heatmaps; the 2D loss is
     HRNet's JointsMSE against Gaussian targets (joints outside the crop weigh 0).
  3. Modes `single` / `multi`: a differentiable soft-argmax (softmax of beta x heatmap) gives the 2D
     joints, mapped back from heatmap pixels through the crop to the screen-normalised coordinates every
     posectl lifting network takes as input; each frozen lifter (eval mode, no gradient to its weights,
     but in the graph) predicts root-relative 3D; losses per lifter m: MSE of xy and of z against the
     ground truth (metres), and OHKLM: per sample the top-k joints by that lifter's 3D error, whose
     heatmap losses are averaged.
  4. Lifter weights w_m by Dynamic Weight Average: softmax over m of (L_m(t-1) / L_m(t-2)) / T from
     the 3D losses of the two previous iterations (uniform until there are two); with
     `lifter_dropout` one random lifter gets weight 0 in an iteration (multi only).
  5. Total = loss_single_w x [loss_2d_w L2D + sum_m w_m (ohklm_w OHKLM_m + loss_3d_xy_w L_xy,m +
     loss_3d_z_w L_z,m)] and, in `multi`, + loss_3d_avg_w MSE(mean_m pred_m, GT) (global consistency)
     + loss_3d_cons_w sum_{a<b} MSE(pred_a, pred_b) (local consistency). Mode `2d`: the 2D term only.
Only the detector is optimised: Adam, lr x `lr_gamma` every `lr_step_every` epochs up to epoch `lr_step_last`,
and x `lr_restart_factor` from epoch `lr_restart_epoch` on (paper: x0.67 at epochs 5, 10, ..., 70 and x5 after
its epoch 30, counted from 0 as here, i.e. from epoch 31 on).

Evaluation renders every `eval_stride`-th frame without augmentation (the same images for every run:
backgrounds are seeded by the row), detects, and lifts through *every* configured lifter, whatever the
mode, so `2d`, `single` and `multi` are compared on identical terms: MPJPE / P-MPJPE per lifter and
their mean (the selection metric `mpjpe`), the ensemble (median over lifters), the lifters on ground
truth 2D (the floor a detector can reach), the mean 2D error in image pixels and PDJ@0.2.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from posectl.checkpoint import load_checkpoint
from posectl.config import build, field
from posectl.core import metrics
from posectl.core.heatmap import gaussian_heatmaps, joints_mse, pdj, soft_argmax
from posectl.core.render import CropTransform, crop_around, crop_frames, render
from posectl.datasets.images import crop_columns, crop_photos, decode
from posectl.datasets.lifting import LiftingData
from posectl.errors import ConfigError, DataError, PosectlError
from posectl.methods.base import POSE_METRICS, Context, Method, TrainConfig, protocol_tail, get_method, register
from posectl.methods.lifting import LiftingConfig
from posectl.models.hrnet import HRNet


@dataclass
class DetectorConfig:
    width: int = field(16, "channels of the high-resolution branch (HRNet-W32: 32); lower branches double it", ge=1)
    stages: int = field(3, "stages; stage s has s parallel branches (HRNet: 4)", ge=1)
    blocks: int = field(2, "residual blocks per branch and stage (HRNet: 4)")
    image_size: int = field(64, "side of the square image crop in pixels (paper: 288x384); heatmaps are half", ge=1)
    sigma: float = field(2.0, "Gaussian target sigma in heatmap pixels (paper: 3 at 72x96)", gt=0)


@dataclass
class AugmentConfig:
    scale: float = field(0.25, "random crop scale +- (paper: 0.25)")
    rotation_deg: float = field(30.0, "random in-plane rotation +- degrees (paper: 30)")
    shift: float = field(0.05, "random crop shift +- this fraction of the crop side")


@dataclass
class L2DConfig(TrainConfig):
    batch_size: int = field(64, "global batch size (paper: 64)")
    lr_decay: float = field(1.0, "extra multiplicative decay per epoch (the paper uses only the step below)")
    mode: Literal["2d", "single", "multi"] = field(
        "single", "2d: heatmap loss only; single: 3D guidance from the first lifter; multi: from every lifter")
    lifters: list[str] = field([], "frozen lifting networks: checkpoints or run directories of single-frame "
                                   "`posectl train baseline|gpa` runs on the same skeleton (all are used to evaluate)")
    images: Literal["auto", "dataset", "render"] = field(
        "auto", "auto: the dataset's image column when it has one, else rendered figures; dataset: require it; "
                "render: always render")
    detector: DetectorConfig = field(DetectorConfig, "the 2D detector")
    augment: AugmentConfig = field(AugmentConfig, "training-image augmentation")
    beta: float = field(15.0, "soft-argmax sharpness (softmax of beta x heatmap). The paper's 100 (at sigma 3, "
                              "72x96) acts as a hard argmax on small maps: measured on Gaussian peaks at sigma 2, "
                              "beta 15 is off by 0.02 px on average, beta 100 by 0.29 px", gt=0)
    loss_2d_w: float = field(0.5, "weight of the heatmap loss")
    ohklm: bool = field(True, "online hard keypoint lifting mining")
    ohklm_w: float = field(0.3, "weight of the OHKLM heatmap term")
    top_k: int = field(10, "OHKLM: joints per sample with the largest 3D error", ge=1)
    loss_3d_xy_w: float = field(0.02, "weight of the lifted xy MSE")
    loss_3d_z_w: float = field(0.04, "weight of the lifted z MSE")
    loss_single_w: float = field(1.0, "weight of the per-lifter part (README: 0.8)")
    loss_3d_avg_w: float = field(0.05, "multi: weight of the global consistency MSE(mean prediction, GT)")
    loss_3d_cons_w: float = field(0.1, "multi: weight of the local consistency sum of pairwise MSEs")
    dwa_temperature: float = field(2.0, "Dynamic Weight Average temperature T", gt=0)
    lifter_dropout: bool = field(False, "multi: zero one random lifter's weight per iteration")
    lr_step_every: int = field(5, "epochs between lr steps", ge=1)
    lr_gamma: float = field(0.67, "lr factor at each step", gt=0)
    lr_step_last: int = field(70, "epoch (0-based) of the last lr step (paper: 70)")
    lr_restart_epoch: int = field(31, "epoch (0-based) from which the lr is multiplied by lr_restart_factor (paper: "
                                      "x5 at the end of its epoch 30, counted from 0, so from epoch 31 on)")
    lr_restart_factor: float = field(5.0, "lr factor from lr_restart_epoch on (paper: 5; 1: no restart)", gt=0)

    def validate(self) -> None:
        super().validate()
        if self.data.keypoints != "gt":     # data.inputs are the heatmap targets and the 2D ground truth
            raise ConfigError(f"data.keypoints: l2d trains the 2D detector on ground-truth 2D, so it must be 'gt' "
                              f"(got '{self.data.keypoints}')")
        if not self.beta > 0 or not self.dwa_temperature > 0:
            raise ConfigError("beta and dwa_temperature: must be > 0")
        if self.detector.image_size < 16 or self.detector.image_size % 8:
            raise ConfigError("detector.image_size: a multiple of 8, at least 16")
        if self.detector.stages < 1 or self.detector.width < 2 or self.detector.sigma <= 0:
            raise ConfigError("detector: stages >= 1, width >= 2, sigma > 0")
        if self.lr_step_every < 1 or not 0 < self.lr_gamma <= 1:
            raise ConfigError("lr_step_every >= 1 and lr_gamma in (0, 1]")
        for name in ("loss_2d_w", "ohklm_w", "loss_3d_xy_w", "loss_3d_z_w", "loss_single_w", "loss_3d_avg_w",
                     "loss_3d_cons_w"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be >= 0")


def check_lifters(cfg: L2DConfig, read: bool = True) -> None:
    """Lifters named (two or more for multi); with `read`, each exists and holds a lifting network."""
    if not cfg.lifters:
        raise ConfigError("lifters: name at least one frozen lifting checkpoint (e.g. lifters=[runs/sb]); "
                          "every mode evaluates through them")
    if cfg.mode == "multi" and len(cfg.lifters) < 2:
        raise ConfigError("lifters: mode=multi needs at least two lifters")
    for p in cfg.lifters if read else ():
        if not Path(p).expanduser().exists():
            raise ConfigError(f"lifters: {p} does not exist")
        try:
            state = load_checkpoint(Path(p).expanduser())
        except PosectlError as e:
            raise ConfigError(f"lifters: {e}") from None
        if "backbone" not in state.get("config", {}) or not isinstance(state.get("method_state", {}).get("model"), dict):
            raise ConfigError(f"lifters: {p} is a '{state.get('method')}' checkpoint without a lifting network")


class FrozenLifter(torch.nn.Module):
    """A lifting network from a posectl checkpoint, frozen: eval mode, weights without gradients."""

    def __init__(self, path: str, layout):
        super().__init__()
        try:
            state = load_checkpoint(path)
        except PosectlError as e:
            raise ConfigError(f"lifters: {e}") from None
        method = state.get("method")
        try:
            cfg = build(get_method(method).Config, state.get("config", {}), context=f"lifter {path}")
        except ConfigError as e:
            raise ConfigError(f"lifters: {path}: {e}") from None
        bb = cfg.backbone if isinstance(cfg, LiftingConfig) else None
        weights = state.get("method_state", {}).get("model")
        if bb is None or not isinstance(weights, dict):
            raise ConfigError(f"lifters: {path} is a '{method}' checkpoint without a lifting network")
        if bb.receptive_field != 1:
            raise ConfigError(f"lifters: {path} sees {bb.receptive_field} frames; L2D lifts single frames")
        J = layout.num_joints
        self.net = bb.build(J, J, layout)
        try:
            self.net.load_state_dict(weights)
        except RuntimeError:
            raise ConfigError(f"lifters: {path} does not fit the {J}-joint {layout.name} skeleton") from None
        self.name = f"{method}:{bb.name}"
        self.framed = bb.name == "videopose"               # (B, 1, J, 2) in, (B, 1, J, 3) out
        root = torch.ones(1, J, 1)
        root[:, layout.root] = 0
        self.register_buffer("keep", root)
        self.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True):                   # stays in eval mode (dropout, BN statistics)
        return super().train(False)

    def forward(self, uv: torch.Tensor) -> torch.Tensor:
        y = self.net(uv[:, None])[:, 0] if self.framed else self.net(uv)
        return y * self.keep                               # root-relative: the root joint at 0, as in evaluation


def dwa_weights(history: list[list[float]], temperature: float, n: int) -> torch.Tensor:
    """Dynamic Weight Average over n losses from the last two iterations' values; uniform before that."""
    if len(history) < 2:
        return torch.full((n,), 1.0 / n)
    r = torch.as_tensor(history[-1]) / torch.as_tensor(history[-2]).clamp_min(1e-12)
    return torch.softmax(r / temperature, dim=0)


def hard_joints(errors: torch.Tensor, k: int) -> torch.Tensor:
    """OHKLM: indices (B, k) of the k joints with the largest error per sample."""
    return errors.topk(min(k, errors.shape[1]), dim=1).indices


@register
class L2D(Method):
    name = "l2d"
    metrics = POSE_METRICS + ("mpjpe_gt2d", "mpjpe_ensemble", "err_2d_px", "pdj", "mpjpe_l<N>", "p_mpjpe_l<N>",
                              "mpjpe_gt2d_l<N>")
    description = "L2D: a 2D detector on photographs or rendered figures, trained through frozen 3D lifters (ACCV'24)"
    Config = L2DConfig
    shared_validation = False    # merged shares differed from the whole split by 0.3 % in pdj (tests/test_device.py)
    host_batches = ("its training images are rendered or decoded and cropped on the CPU (in Ray jobs by Ray Data "
                    "tasks running ahead of the steps: Context.map_batches) and copied to the device each step")
    smoke_overrides = {"epochs": 1, "detector.width": 8, "detector.stages": 2, "detector.blocks": 1,
                       "detector.image_size": 32, "batch_size": 32, "data.train_stride": 4, "data.eval_stride": 8}

    @classmethod
    def reads_images(cls, cfg: L2DConfig) -> bool:
        return cfg.images != "render"

    @classmethod
    def check_training(cls, cfg: L2DConfig) -> None:
        """Before submission: the lifters are named, exist and hold lifting networks."""
        check_lifters(cfg)

    @classmethod
    def smoke_prerequisites(cls, cfg: L2DConfig) -> dict:
        """Without lifters, a smoke test trains a small SimpleBaseline on the same data to lift through."""
        if cfg.lifters:
            return {}
        return {"lifters": ("baseline", {"data.path": cfg.data.path, "backbone.width": 128, "epochs": 2,
                                         "data.max_train_samples": 2048, "seed": cfg.seed})}

    def __init__(self, cfg: L2DConfig, data: LiftingData, ctx: Context):
        super().__init__(cfg, data, ctx)
        self._uses_photos(data)
        torch.manual_seed(cfg.seed)                  # identical initial weights on every worker
        layout = data.layout
        check_lifters(cfg, read=False)                  # FrozenLifter reads each file once
        self.lifters = [FrozenLifter(p, layout).to(ctx.device) for p in cfg.lifters]
        self.train_lifters = {"2d": [], "single": self.lifters[:1], "multi": self.lifters}[cfg.mode]
        d = cfg.detector
        self.detector_raw = HRNet(layout.num_joints, width=d.width, stages=d.stages, blocks=d.blocks)
        self.detector = ctx.prepare_model(self.detector_raw)
        self.opt = torch.optim.Adam(self.detector.parameters(), lr=cfg.lr)
        self.loss_history: list[list[float]] = []    # 3D loss per training lifter, last iterations (DWA)

    # --- coordinates: crop pixels (pixel i covers [i, i+1)) <-> heatmap pixels (half resolution) ---
    @staticmethod
    def _to_heatmap(px: torch.Tensor) -> torch.Tensor:
        return (px - 1) / 2

    @staticmethod
    def _from_heatmap(xy: torch.Tensor) -> torch.Tensor:
        return xy * 2 + 1

    def _uses_photos(self, data: LiftingData) -> bool:
        if self.cfg.images == "render":
            return False
        if data.arrays.image is None and self.cfg.images == "dataset":
            raise ConfigError("images=dataset: the data has no image column (add one with `posectl data "
                              "attach-images`, or use images=auto to render figures)")
        return data.arrays.image is not None

    def _crop(self, idx: torch.Tensor, data: LiftingData, generator: torch.Generator, augment: bool):
        """(crop around each row's 2D, randomly scaled/shifted/rotated when `augment`, 2D, 3D) of rows `idx`."""
        uv, y = data.inputs[idx], data.targets[idx]
        a = self.cfg.augment
        crop = crop_around(uv, self.cfg.detector.image_size, generator=generator,
                           scale_jitter=a.scale if augment else 0.0, shift_jitter=a.shift if augment else 0.0,
                           max_rotation_deg=a.rotation_deg if augment else 0.0)
        return crop, uv, y

    def _images(self, idx: torch.Tensor, data: LiftingData, generator: torch.Generator, augment: bool):
        crop, uv, y = self._crop(idx, data, generator, augment)
        if not self._uses_photos(data):
            images, px, _ = render(uv, y[..., 2], data.layout, crop, generator=generator)
            return images, px, crop, uv, y
        rows = idx.numpy()
        frames = [torch.from_numpy(decode(data.arrays.image[r])).permute(2, 0, 1).float() / 255 for r in rows]
        try:
            images = crop_frames(frames, torch.from_numpy(data.arrays.image_size[rows]), crop)
        except ValueError as e:
            raise DataError(f"image column: {e} (rows {data.arrays.subject[rows[0]]}/{data.arrays.action[rows[0]]}"
                            f"/{data.arrays.camera[rows[0]]}...)") from None
        return images, crop.to_crop(uv), crop, uv, y

    def _photo_crops(self, batches: list[torch.Tensor], data: LiftingData) -> dict:
        """An epoch's augmented crops, drawn up front (the same draws as `_images`, step by step), and the
        frames decoded and resampled into them by Context.map_batches: in a Ray job, Ray Data tasks on the
        cluster's CPUs, running ahead of the training steps."""
        crops = [self._crop(idx, data, self.gen, augment=True) for idx in batches]
        rows = torch.cat(batches).numpy()
        whole = CropTransform(*(torch.cat([getattr(c, f) for c, _, _ in crops]) for f in ("centre", "size", "rot")),
                              self.cfg.detector.image_size)
        columns = crop_columns(data.arrays.image[rows], data.arrays.image_size[rows], whole)
        pixels = self.ctx.map_batches(columns, crop_photos, [len(b) for b in batches],
                                      {"res": self.cfg.detector.image_size})
        return {"crops": crops, "pixels": pixels}

    def _lr(self, epoch: int) -> float:
        """As the paper: x lr_gamma at epochs lr_step_every, 2 lr_step_every, ... up to lr_step_last (its
        MultiStepLR), x lr_restart_factor from lr_restart_epoch on (its manual x5)."""
        cfg = self.cfg
        steps = min(epoch, cfg.lr_step_last) // cfg.lr_step_every
        restart = cfg.lr_restart_factor if epoch >= cfg.lr_restart_epoch else 1.0
        return cfg.lr * cfg.lr_decay ** epoch * cfg.lr_gamma ** steps * restart

    def train_epoch(self, epoch: int) -> dict[str, float]:
        cfg, data, device = self.cfg, self.data, self.ctx.device
        lr = self._lr(epoch)
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.detector.train()
        batches = list(data.batches(self.per_worker(), shuffle=True, generator=self.gen,
                                    stride=cfg.data.train_stride))
        keys = ["loss", "heatmap", "xy", "z", "ohklm", "avg", "cons", "mpjpe_mm"]
        sums = {k: torch.zeros((), device=device) for k in keys}     # on the device: one sync per epoch
        n = 0
        res = cfg.detector.image_size
        M = len(self.train_lifters)
        photos = self._photo_crops(batches, data) if self._uses_photos(data) else None
        for step, idx in enumerate(batches):
            if photos is not None:          # decoded and cropped ahead, off this thread (Context.map_batches)
                crop, uv, y = photos["crops"][step]
                images, px = torch.from_numpy(next(photos["pixels"])["pixels"]), crop.to_crop(uv)
            else:
                images, px, crop, uv, y = self._images(idx, data, self.gen, augment=True)
            images, y, px = images.to(device), y.to(device), px.to(device)
            hm = self.detector(images)
            H = hm.shape[-1]
            target = gaussian_heatmaps(self._to_heatmap(px), H, H, cfg.detector.sigma)
            inside = ((px >= 0) & (px < res)).all(-1).float()                      # (B, J)
            hm_loss = joints_mse(hm, target, inside)                               # (B, J)
            l2d = hm_loss.mean()
            parts = {"heatmap": l2d.detach()}
            if M == 0:
                loss = cfg.loss_single_w * cfg.loss_2d_w * l2d
            else:
                uv_pred = crop.to(device).to_uv(self._from_heatmap(soft_argmax(hm, cfg.beta)))
                w = dwa_weights(self.loss_history, cfg.dwa_temperature, M).to(device)
                if cfg.lifter_dropout and M > 1:
                    w = w.clone()
                    w[torch.randint(M, (1,), generator=self.gen)] = 0
                preds, per_lifter, l3d = [], 0.0, []
                for m, lifter in enumerate(self.train_lifters):
                    pred = lifter(uv_pred)
                    err = pred - y
                    l_xy, l_z = (err[..., :2] ** 2).mean(), (err[..., 2] ** 2).mean()
                    term = cfg.loss_3d_xy_w * l_xy + cfg.loss_3d_z_w * l_z
                    if cfg.ohklm:
                        hard = hard_joints(err.detach().norm(dim=-1), cfg.top_k)
                        ohk = hm_loss.gather(1, hard).mean()
                        term = term + cfg.ohklm_w * ohk
                        parts["ohklm"] = parts.get("ohklm", 0) + ohk.detach() / M
                    per_lifter = per_lifter + w[m] * term
                    l3d.append((l_xy + l_z).detach())
                    parts["xy"] = parts.get("xy", 0) + l_xy.detach() / M
                    parts["z"] = parts.get("z", 0) + l_z.detach() / M
                    parts["mpjpe_mm"] = parts.get("mpjpe_mm", 0) + err.detach().norm(dim=-1).mean() * 1000 / M
                    preds.append(pred)
                self.loss_history = (self.loss_history + [torch.stack(l3d)])[-3:]
                loss = cfg.loss_single_w * (cfg.loss_2d_w * l2d + per_lifter)
                if cfg.mode == "multi":
                    P = torch.stack(preds)                                          # (M, B, J, 3)
                    l_avg = ((P.mean(0) - y) ** 2).mean()
                    l_cons = sum(((P[a] - P[b]) ** 2).mean() for a, b in itertools.combinations(range(M), 2))
                    loss = loss + cfg.loss_3d_avg_w * l_avg + cfg.loss_3d_cons_w * l_cons
                    parts.update(avg=l_avg.detach(), cons=l_cons.detach())
            self.optimize(loss, self.opt)
            b = len(idx)
            sums["loss"] += loss.detach() * b
            for k, v in parts.items():
                sums[k] += v * b
            n += b
            self.ctx.progress(step + 1, len(batches))
        sums = dict(zip(sums, torch.stack(list(sums.values())).tolist()))
        out = {k: v / max(n, 1) for k, v in sums.items() if k in ("loss", "heatmap") or (M and v)}
        out.update({"lr": lr, "train_samples": n})
        if M:
            out.update({f"dwa_w{m}": float(v) for m, v in
                        enumerate(dwa_weights(self.loss_history, cfg.dwa_temperature, M))})
        return out

    @torch.no_grad()
    def detect(self, data: LiftingData, stride: int = 1, batch_size: int = 256):
        """(detected screen-normalised 2D (N, J, 2), rows): un-augmented crops, backgrounds seeded per row."""
        was = self.detector.training
        self.detector.eval()
        device = next(self.detector_raw.parameters()).device
        out, rows = [], []
        for i, idx in enumerate(data.batches(batch_size, shuffle=False, stride=stride)):
            g = torch.Generator().manual_seed(1_000_003 + int(idx[0]))
            images, _, crop, _, _ = self._images(idx, data, g, augment=False)
            hm = self.detector_raw(images.to(device))
            out.append(crop.to_uv(self._from_heatmap(soft_argmax(hm, self.cfg.beta)).cpu()))
            rows.append(idx)
        self.detector.train(was)
        return torch.cat(out), torch.cat(rows)

    @torch.no_grad()
    def evaluate(self, data: LiftingData, stride: int = 1, detailed: bool = False) -> dict[str, Any]:
        layout = data.layout
        uv, rows = self.detect(data, stride)
        gt = data.targets[rows]
        actions = data.actions[rows.numpy()]
        device = next(self.detector_raw.parameters()).device
        per, preds, floor = [], [], []
        for lifter in self.lifters:
            p = torch.cat([lifter(c.to(device)).cpu() for c in uv.split(4096)])
            preds.append(p)
            per.append(metrics.evaluate_poses(p.numpy(), gt.numpy(), actions=actions, root=layout.root))
            pg = torch.cat([lifter(c.to(device)).cpu() for c in data.inputs[rows].split(4096)])
            floor.append(metrics.mpjpe(pg.numpy(), gt.numpy(), root=layout.root) * 1000)
        res: dict[str, Any] = {k: float(np.mean([r[k] for r in per])) for k, v in per[0].items()
                               if isinstance(v, float)}
        for m, r in enumerate(per):
            res[f"mpjpe_l{m}"], res[f"p_mpjpe_l{m}"], res[f"mpjpe_gt2d_l{m}"] = r["mpjpe"], r["p_mpjpe"], floor[m]
        res["mpjpe_gt2d"] = float(np.mean(floor))
        ens = torch.stack(preds).median(0).values
        res["mpjpe_ensemble"] = metrics.mpjpe(ens.numpy(), gt.numpy(), root=layout.root) * 1000
        width = torch.from_numpy(data.arrays.image_size[rows.numpy(), 0].astype(np.float32))
        uv_gt = data.inputs[rows]
        res["err_2d_px"] = float(((uv - uv_gt).norm(dim=-1) * width[:, None] / 2).mean())
        names = layout.joints
        if "LShoulder" in names and "RHip" in names:      # torso diameter |l-shoulder - r-hip|, as the paper
            res["pdj"] = float(pdj(uv, uv_gt, names.index("LShoulder"), names.index("RHip")).mean())
        if detailed:
            res["per_action"] = {a: {k: float(np.mean([r["per_action"][a][k] for r in per])) for k in ("mpjpe", "p_mpjpe")}
                                 | {"n": per[0]["per_action"][a]["n"]} for a in per[0]["per_action"]}
            res["lifters"] = [lf.name for lf in self.lifters]
        source = "the dataset's images" if self._uses_photos(data) else "rendered figures"
        res["protocol"] = (f"{layout.name} (all {layout.num_joints} joints), root-relative, 2D from the detector on "
                           f"{self.cfg.detector.image_size}px crops of {source} (soft-argmax), lifted by "
                           f"{len(self.lifters)} frozen lifter(s), MPJPE averaged over lifters, per-sample mean, "
                           f"no flip{protocol_tail(stride, self.cfg.precision)}")
        return res

    def weights(self) -> dict[str, Any]:
        return self.detector_raw.state_dict()

    def load_weights(self, weights: dict[str, Any]) -> None:
        self.detector_raw.load_state_dict(weights)

    def resumables(self) -> dict[str, Any]:
        return {"optimizer": self.opt}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "loss_history": [torch.as_tensor(x).tolist() for x in self.loss_history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if "optimizer" in state:
            self.loss_history = [list(x) for x in state.get("loss_history", [])]
