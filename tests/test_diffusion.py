"""PoSynDA's building blocks: noise schedule, DDIM, root estimation, JPMA, LoRA, the MixSTE denoiser."""
import math

import numpy as np
import pytest
import torch

from posectl.core.camera import project
from posectl.core.diffusion import Diffusion, cosine_alphas_cumprod, estimate_root, jpma
from posectl.models.lora import LoRALinear, inject_lora, lora_state
from posectl.models.mixste import Attention, MixSTEDenoiser


def test_cosine_schedule_matches_its_closed_form():
    T, s = 1000, 0.008
    abar = cosine_alphas_cumprod(T, s)
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2     # noqa: E731
    # unclipped steps: abar_t = f(t + 1) / f(0) exactly (the product telescopes)
    for t in (0, 1, 10, 100, 500, 900):
        assert abar[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert torch.all(abar[1:] < abar[:-1]) and 0 < abar[-1] < 1e-4 and abar[0] > 0.9999


def test_q_sample_and_ddim_step_match_their_formulas():
    d = Diffusion(T=1000, scale=1.0)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 1, 17, 3, generator=g)
    eps = torch.randn(4, 1, 17, 3, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    xt = d.q_sample(x0, t, eps)
    a = d.abar[t].float().view(-1, 1, 1, 1)
    assert torch.allclose(xt, a.sqrt() * x0 + (1 - a).sqrt() * eps, atol=1e-6)
    # DDIM with eta = 0 and a perfect x0 predictor returns x_{t_next} = sqrt(a')x0 + sqrt(1-a')eps exactly
    tt, tn = 500, 250
    x_t = d.q_sample(x0, torch.full((4,), tt), eps)
    x_next = d.ddim_step(x_t, x0, tt, tn, eta=0.0, noise=None)
    an = float(d.abar[tn])
    assert torch.allclose(x_next, math.sqrt(an) * x0 + math.sqrt(1 - an) * eps, atol=1e-5)
    assert torch.equal(d.ddim_step(x_t, x0, tt, -1, eta=1.0, noise=eps), x0)   # the last step gives x0
    # eta = 1: sigma^2 = (1 - a/a')(1 - a')/(1 - a)
    a_t = float(d.abar[tt])
    sig = math.sqrt((1 - a_t / an) * (1 - an) / (1 - a_t))
    z = torch.randn(4, 1, 17, 3, generator=g)
    got = d.ddim_step(x_t, x0, tt, tn, eta=1.0, noise=z)
    want = math.sqrt(an) * x0 + math.sqrt(1 - an - sig ** 2) * eps + sig * z
    assert torch.allclose(got, want, atol=1e-5)
    assert d.ddim_times(5)[0][0] == 999 and d.ddim_times(5)[-1][1] == -1 and len(d.ddim_times(5)) == 5


def test_sampling_with_an_oracle_denoiser_recovers_x0():
    d = Diffusion(T=1000)
    target = torch.rand(3, 1, 17, 3) - 0.5
    out = d.sample(lambda x, t, c: target, torch.zeros(3, 1, 17, 2), (3, 1, 17, 3), steps=4,
                   generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, target, atol=1e-6)


def _camera(B):
    intr = torch.tensor([1145.0, 1144.0, 512.0, 515.0, 0, 0, 0, 0, 0]).repeat(B, 1)
    return intr


def test_root_is_estimated_from_2d_without_ground_truth():
    g = torch.Generator().manual_seed(1)
    pose = torch.randn(8, 17, 3, generator=g) * 0.3
    pose = pose - pose[:, :1]
    root = torch.stack([torch.rand(8, generator=g) - 0.5, torch.rand(8, generator=g) - 0.5,
                        4 + 2 * torch.rand(8, generator=g)], 1)
    intr = _camera(8)
    kp = project(pose + root[:, None], intr, distort=False)
    est = estimate_root(pose, kp, intr[:, :2], intr[:, 2:4])
    assert torch.allclose(est, root, atol=1e-3)


def test_jpma_picks_the_hypothesis_that_reprojects_best_per_joint():
    g = torch.Generator().manual_seed(2)
    B, J, H = 2, 17, 4
    truth = torch.randn(B, J, 3, generator=g) * 0.3
    truth = truth - truth[:, :1]
    root = torch.tensor([[0.1, -0.2, 5.0], [0.0, 0.1, 4.0]])
    intr = _camera(B)
    kp = project(truth + root[:, None], intr)
    hyp = truth[None].repeat(H, 1, 1, 1) + torch.randn(H, B, J, 3, generator=g) * 0.1
    right = torch.randint(H, (B, J), generator=g)          # per joint, one hypothesis holds the truth
    for h in range(H):
        hyp[h][right == h] = truth[right == h]
    pose, err = jpma(hyp, root, intr, kp)
    assert torch.allclose(pose, truth, atol=1e-6) and err.max() < 1e-3


def test_lora_starts_as_identity_and_leaves_frozen_weights_bit_identical():
    torch.manual_seed(0)
    model = MixSTEDenoiser(num_joints=17, frames=1, width=32, depth=2, heads=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, t, c = torch.randn(3, 1, 17, 3), torch.tensor([1, 50, 900]), torch.randn(3, 1, 17, 2)
    y0 = model(x, t, c)
    params = inject_lora(model, rank=4, where=lambda name, m: isinstance(m, Attention))
    assert len(params) == 2 * 2 * 2              # depth 2 x (qkv, proj) x (A, B); one frame: no temporal blocks
    assert torch.equal(model(x, t, c), y0)       # B = 0: exactly the source model
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in params}
    opt = torch.optim.Adam(trainable, lr=1e-2)
    for _ in range(3):
        loss = (model(x, t, c) - 1).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not torch.equal(model(x, t, c), y0)   # the adapters learned something ...
    after = model.state_dict()
    for k, v in before.items():                   # ... and every frozen weight is bit-identical
        key = k if k in after else k.replace(".qkv.", ".qkv.base.").replace(".proj.", ".proj.base.")
        assert torch.equal(after[key], v), k
    assert set(lora_state(model)) and all(".lora_" in k for k in lora_state(model))
    with pytest.raises(ValueError, match="matched no module"):
        inject_lora(MixSTEDenoiser(width=32, depth=1, heads=4), 4, where=lambda n, m: False)
    with pytest.raises(ValueError, match="rank"):
        LoRALinear(torch.nn.Linear(3, 3), 0)


def test_denoiser_shapes_and_temporal_mixing():
    m = MixSTEDenoiser(num_joints=17, frames=9, width=32, depth=2, heads=4).eval()
    x, c = torch.randn(2, 9, 17, 3), torch.randn(2, 9, 17, 2)
    y = m(x, torch.tensor([3, 700]), c)
    assert y.shape == (2, 9, 17, 3) and np.isfinite(y.detach().numpy()).all()
    c2 = c.clone()
    c2[:, 0] += 1.0                                # change frame 0 only: other frames' outputs move too
    assert not torch.allclose(m(x, torch.tensor([3, 700]), c2)[:, 8], y[:, 8])
    with pytest.raises(ValueError, match="expected"):
        m(torch.randn(2, 3, 17, 3), torch.tensor([1, 1]), torch.randn(2, 3, 17, 2))


def test_checkpointed_denoiser_gives_the_same_outputs_and_gradients_with_lora_and_dropout():
    torch.manual_seed(0)
    plain = MixSTEDenoiser(num_joints=17, frames=3, width=32, depth=2, heads=4, dropout=0.3)
    ckpt = MixSTEDenoiser(num_joints=17, frames=3, width=32, depth=2, heads=4, dropout=0.3, checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    grads = []
    for m in (plain, ckpt):
        torch.manual_seed(1)                         # same LoRA init, same dropout masks
        params = inject_lora(m, rank=2, where=lambda name, mod: isinstance(mod, Attention))
        for p in params:
            torch.nn.init.normal_(p, std=0.1)        # non-zero B so the adapters carry gradient to A
        x, c = torch.randn(2, 3, 17, 3), torch.randn(2, 3, 17, 2)
        kept = []                                    # bytes the forward keeps for the backward
        with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t.numel() * t.element_size()) or t,
                                                      lambda t: t):
            y = m(x, torch.tensor([5, 600]), c)
        y.pow(2).mean().backward()
        grads.append((y.detach(), [p.grad.clone() for p in params], sum(kept)))
    (y0, g0, kept0), (y1, g1, kept1) = grads
    assert kept1 < kept0 / 4, (kept0, kept1)
    assert torch.allclose(y0, y1, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g0, g1)) and any(a.abs().sum() > 0 for a in g0)


def test_root_is_estimated_through_the_lens_distortion():
    """Keypoints projected with Human3.6M's distortion (camera 54138969) give the root within a millimetre,
    at the image centre and off it; the pinhole solution on the same keypoints is off by centimetres."""
    from posectl.core.camera import h36m_cameras
    g = torch.Generator().manual_seed(1)
    pose = torch.randn(3, 17, 3, generator=g) * 0.3
    pose = pose - pose[:, :1]
    root = torch.tensor([[0.0, 0.0, 5.0], [1.5, -1.2, 4.5], [-1.6, 1.0, 4.0]])
    intr = torch.from_numpy(h36m_cameras("S9")[0].intrinsics).repeat(3, 1)
    kp = project(pose + root[:, None], intr)
    est = estimate_root(pose, kp, intr[:, :2], intr[:, 2:4], intr[:, 4:9])
    assert (est - root).norm(dim=-1).max() < 1e-3
    pinhole = estimate_root(pose, kp, intr[:, :2], intr[:, 2:4])
    assert (pinhole - root).norm(dim=-1).min() > 0.01
