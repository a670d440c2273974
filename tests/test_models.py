"""Tests for the lifting backbones in posectl.models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from posectl.models import (
    BACKBONES,
    SimpleBaseline,
    TemporalModel,
    TemporalModelOptimized1f,
    build_backbone,
    receptive_field,
)

torch.set_num_threads(2)


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_simple_baseline_shapes() -> None:
    m = SimpleBaseline(16, 17, hidden=64).eval()
    assert m(torch.randn(4, 16, 2)).shape == (4, 17, 3)
    assert m(torch.randn(4, 1, 16, 2)).shape == (4, 1, 17, 3)
    assert receptive_field(m) == 1
    with pytest.raises(ValueError):
        m(torch.randn(4, 3, 16, 2))


def test_simple_baseline_in_features() -> None:
    m = SimpleBaseline(17, 17, hidden=32, in_features=3).eval()
    assert m(torch.randn(2, 17, 3)).shape == (2, 17, 3)


def test_simple_baseline_param_count() -> None:
    n = _n_params(SimpleBaseline(16, 17))
    assert 4.2e6 < n < 4.4e6


@pytest.mark.parametrize("rf", [27, 81, 243])
def test_temporal_receptive_field_and_length(rf: int) -> None:
    m = build_backbone("videopose", 17, 17, receptive_field=rf, channels=16).eval()
    assert receptive_field(m) == rf
    t = rf + 5
    with torch.no_grad():
        assert m(torch.randn(2, t, 17, 2)).shape == (2, t - rf + 1, 17, 3)


def test_temporal_receptive_field_mixed_widths() -> None:
    m = TemporalModel(17, 17, filter_widths=(3, 5, 3), channels=8)
    assert m.receptive_field == 45


@pytest.mark.parametrize("causal", [False, True])
def test_temporal_causal_and_dense_shapes(causal: bool) -> None:
    for dense in (False, True):
        m = TemporalModel(17, 17, filter_widths=(3, 3), channels=16, causal=causal, dense=dense).eval()
        with torch.no_grad():
            assert m(torch.randn(2, 20, 17, 2)).shape == (2, 12, 17, 3)


def test_single_frame_temporal_models() -> None:
    for name in ("videopose", "videopose_1f"):
        m = build_backbone(name, 17, 17, receptive_field=1, channels=16).eval()
        assert receptive_field(m) == 1
        with torch.no_grad():
            assert m(torch.randn(3, 1, 17, 2)).shape == (3, 1, 17, 3)
    m = build_backbone("videopose", 17, 17, filter_widths=[1], channels=16).eval()
    with torch.no_grad():
        assert m(torch.randn(3, 7, 17, 2)).shape == (3, 7, 17, 3)


def test_optimized_1f_shape() -> None:
    m = TemporalModelOptimized1f(17, 17, filter_widths=(3, 3, 3), channels=16).eval()
    with torch.no_grad():
        assert m(torch.randn(5, 27, 17, 2)).shape == (5, 1, 17, 3)


def _randomise_bn(m: nn.Module) -> None:
    """Give BN layers non-trivial statistics/affine params so equivalence tests are meaningful."""
    g = torch.Generator().manual_seed(0)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm1d):
            mod.running_mean.copy_(torch.randn(mod.num_features, generator=g) * 0.1)
            mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
            mod.weight.data.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
            mod.bias.data.copy_(torch.randn(mod.num_features, generator=g) * 0.1)


@pytest.mark.parametrize("widths", [(3, 3, 3), (3, 5), (1,)])
@pytest.mark.parametrize("causal", [False, True])
def test_optimized_1f_matches_temporal_model(widths: tuple[int, ...], causal: bool) -> None:
    torch.manual_seed(0)
    full = TemporalModel(17, 16, filter_widths=widths, channels=32, causal=causal)
    fast = TemporalModelOptimized1f(17, 16, filter_widths=widths, channels=32, causal=causal)
    assert set(full.state_dict()) == set(fast.state_dict())
    _randomise_bn(full)
    x = torch.randn(4, full.receptive_field, 17, 2)

    # full -> fast
    fast.load_state_dict(full.state_dict())
    full.eval(), fast.eval()
    with torch.no_grad():
        torch.testing.assert_close(fast(x), full(x), atol=1e-5, rtol=1e-5)

    # fast -> full (fresh model, so the weights really come from the optimised one)
    torch.manual_seed(1)
    fast2 = TemporalModelOptimized1f(17, 16, filter_widths=widths, channels=32, causal=causal)
    _randomise_bn(fast2)
    full2 = TemporalModel(17, 16, filter_widths=widths, channels=32, causal=causal)
    full2.load_state_dict(fast2.state_dict())
    fast2.eval(), full2.eval()
    with torch.no_grad():
        torch.testing.assert_close(full2(x), fast2(x), atol=1e-5, rtol=1e-5)


def test_set_bn_momentum() -> None:
    m = TemporalModel(17, 17, filter_widths=(3, 3), channels=8)
    m.set_bn_momentum(0.01)
    bns = [x for x in m.modules() if isinstance(x, nn.BatchNorm1d)]
    assert bns and all(bn.momentum == 0.01 for bn in bns)


@pytest.mark.parametrize(
    "name,kwargs,t",
    [
        ("simple", {"hidden": 128, "dropout": 0.0}, 1),
        ("videopose", {"receptive_field": 9, "channels": 64, "dropout": 0.0}, 9),
        ("videopose_1f", {"receptive_field": 9, "channels": 64, "dropout": 0.0}, 9),
    ],
)
def test_tiny_model_overfits(name: str, kwargs: dict, t: int) -> None:
    torch.manual_seed(0)
    m = build_backbone(name, 17, 17, **kwargs)
    x = torch.randn(16, t, 17, 2)
    target = torch.randn(16, 1, 17, 3)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    losses = []
    for _ in range(200):
        opt.zero_grad()
        loss = ((m(x) - target) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10


def test_build_backbone_registry_and_errors() -> None:
    assert set(BACKBONES) == {"simple", "videopose", "videopose_1f", "semgcn"}
    assert isinstance(build_backbone("simple", 16, 17, hidden=32), SimpleBaseline)
    assert isinstance(build_backbone("videopose", 17, 17, filter_widths=[3, 3], channels=8), TemporalModel)
    assert isinstance(build_backbone("videopose_1f", 17, 17, channels=8), TemporalModelOptimized1f)
    with pytest.raises(ValueError, match="unknown backbone 'nope'"):
        build_backbone("nope", 17, 17)
    with pytest.raises(ValueError, match="unknown"):
        build_backbone("videopose", 17, 17, foo=1)
    with pytest.raises(ValueError, match="unknown"):
        build_backbone("videopose_1f", 17, 17, dense=True)
    with pytest.raises(ValueError, match="unknown"):
        build_backbone("simple", 17, 17, channels=8)
    with pytest.raises(ValueError):
        build_backbone("videopose", 17, 17, receptive_field=5)
    with pytest.raises(ValueError):
        build_backbone("videopose", 17, 17, receptive_field=9, filter_widths=[3, 3])
    with pytest.raises(ValueError):
        build_backbone("simple", 17, 17, receptive_field=27)
    with pytest.raises(ValueError):
        TemporalModel(17, 17, filter_widths=(2, 3))


def test_semgcn_graph_weights_shapes_and_size():
    from posectl.core.skeleton import H36M16, H36M17
    from posectl.models.semgcn import SemGCN, SemGraphConv, skeleton_adjacency
    A = skeleton_adjacency(H36M17.parents)
    assert A.sum() == 17 + 2 * 16 and torch.equal(A, A.T)
    conv = SemGraphConv(2, 8, A)
    with torch.no_grad():
        conv.e.normal_()
    adj = conv.adjacency()
    assert torch.allclose(adj.sum(1), torch.ones(17))              # softmax over each joint's neighbourhood
    assert torch.all(adj[A == 0] == 0)                             # no weight off the skeleton graph
    # a joint's output depends only on itself and its graph neighbours
    x = torch.randn(1, 17, 2, requires_grad=True)
    conv(x)[0, 3].sum().backward()
    touched = set(torch.nonzero(x.grad[0].abs().sum(1)).flatten().tolist())
    assert touched == {j for j in range(17) if A[3, j] > 0}
    # the published configuration: hidden 128, 4 residual blocks, 16 joints, about 0.27 M parameters
    m = SemGCN(H36M16.parents, hidden=128, blocks=4)
    n = sum(p.numel() for p in m.parameters())
    assert 0.25e6 < n < 0.29e6, n
    y = m(torch.randn(5, 16, 2))
    assert y.shape == (5, 16, 3) and m(torch.randn(5, 1, 16, 2)).shape == (5, 1, 16, 3)
    with pytest.raises(ValueError, match="16, 2"):
        m(torch.randn(5, 17, 2))


def test_semgcn_is_a_backbone_for_every_lifting_method(small_dataset):
    import numpy as np

    from posectl.config import build
    from posectl.datasets.lifting import LiftingData
    from posectl.datasets.store import PoseDataset
    from posectl.methods.base import Context, get_method
    ds = PoseDataset(small_dataset)
    data = LiftingData(ds.load("train"), ds.layout)
    for name, extra in (("baseline", {}), ("dhaug", {"mode": "none"})):
        cls = get_method(name)
        cfg = build(cls.Config, {"backbone.name": "semgcn", "backbone.width": 32, "batch_size": 64, **extra})
        m = cls(cfg, data, Context())
        out = m.train_epoch(0)
        assert np.isfinite(out["train_loss_mm"])
        assert out["precise_bn_batches"] > 0       # semgcn's statistics are re-estimated after each epoch
        assert np.isfinite(m.evaluate(LiftingData(ds.load("val"), ds.layout))["mpjpe"])


def test_precise_bn_sets_the_average_batch_statistics_and_nothing_else():
    from posectl.models.norm import precise_bn
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4, 2)).eval()
    weights = {k: v.clone() for k, v in m.state_dict().items() if "running" not in k and "tracked" not in k}
    batches = [torch.randn(32, 3) * (i + 1) + i for i in range(5)]
    assert precise_bn(m, iter(batches)) == 5
    with torch.no_grad():
        h = [m[0](b) for b in batches]
    bn = m[1]
    assert torch.allclose(bn.running_mean, torch.stack([x.mean(0) for x in h]).mean(0), atol=1e-5)
    assert torch.allclose(bn.running_var, torch.stack([x.var(0) for x in h]).mean(0), rtol=1e-4)   # unbiased, like BN
    assert bn.momentum == 0.1 and not m.training                  # settings and mode restored
    for k, v in weights.items():
        assert torch.equal(m.state_dict()[k], v), k
    before = bn.running_mean.clone()
    assert precise_bn(m, iter([])) == 0 and torch.equal(bn.running_mean, before)   # no batches: untouched
    assert precise_bn(nn.Linear(3, 2), iter(batches)) == 0                          # no batch norm


def test_precise_bn_setting():
    from posectl.config import build
    from posectl.errors import ConfigError
    from posectl.methods.base import get_method
    cls = get_method("baseline")
    assert build(cls.Config, {"backbone.name": "semgcn"}).precise_bn_batches() == 50
    assert build(cls.Config, {}).precise_bn_batches() == 0
    assert build(cls.Config, {"precise_bn": 7}).precise_bn_batches() == 7
    with pytest.raises(ConfigError, match="precise_bn"):
        build(cls.Config, {"precise_bn": -3})
