"""Device correctness without a GPU (tests/devicecheck.py): every registered method trains two epochs
and evaluates with its networks and batches on a stand-in accelerator, and no step mixes devices the
way CUDA refuses."""
import functools
import math

import numpy as np
import pytest
import torch

from devicecheck import DEVICE, DeviceCheck, DeviceError, OnDevice
from posectl.methods.base import Context, available
from posectl.orchestrator.spec import RunSpec, build_worker


def test_the_check_fails_what_cuda_fails_and_passes_what_it_allows():
    with DeviceCheck() as mode:
        loss = torch.ones(3).to(DEVICE).sum()
        assert isinstance(loss, OnDevice) and loss.device == DEVICE
        total = torch.zeros(())
        with pytest.raises(DeviceError, match="writes device values into a CPU tensor"):
            total += loss.detach() * 4               # baseline's per-epoch loss sum, as it was
        with pytest.raises(DeviceError, match="mixes a device tensor with a CPU tensor"):
            torch.ones(3) + loss.expand(3)
        with pytest.raises(DeviceError, match="CPU generator"):
            torch.randn(3, generator=torch.Generator(), device=DEVICE)
        x = torch.arange(6.0).to(DEVICE)
        assert x[torch.tensor([1, 3])].tolist() == [1.0, 3.0]          # CPU indices: allowed
        assert (x * torch.tensor(2.0)).sum().item() == 30.0             # a 0-dim CPU scalar: allowed
        z = torch.zeros(2, device=x.device)
        assert isinstance(z, OnDevice) and z.cpu().device.type == "cpu"
        w = torch.nn.Linear(6, 2).to(DEVICE)
        w(x).sum().backward()
        assert isinstance(w.weight.grad, OnDevice)
    assert mode.syncs >= 3                                             # .tolist(), .item(), .cpu()


@pytest.mark.parametrize("name", sorted(available()))
def test_every_method_keeps_its_step_on_the_device(name):
    spec = RunSpec.build(name, [], smoke_test=True).with_params({"epochs": 2})
    sources = spec.local_sources(test=False)
    with DeviceCheck():
        ctx = Context(device=DEVICE, prepare_model=lambda net: net.to(DEVICE))
        method, data = build_worker(spec.describe(), sources, ctx)
        for epoch in range(2):
            assert method.train_epoch(epoch)
        res = method.evaluate(data["val"], stride=spec.cfg.data.eval_stride)
    assert math.isfinite(res["mpjpe"]) and res["mpjpe"] > 0            # computed on real values


@pytest.mark.parametrize("name", sorted(available()))
def test_every_method_trains_in_bf16_on_the_cpu(name):
    """precision=bf16: train_epoch and evaluate run under CPU autocast; in two smoke epochs the network
    improves on its untrained validation MPJPE or its training loss falls, and the evaluation is finite and
    names its arithmetic. 128 rows in batches of 16 (eight steps: DH-AUG's generator steps after five critic
    steps) and every 100th validation frame: CPUs without bf16 instructions emulate it (20x the fp32 time)."""
    from posectl.orchestrator.loop import run_epochs
    from posectl.orchestrator.reporters import MemoryReporter
    spec = RunSpec.build(name, [{"precision": "bf16"}], smoke_test=True).with_params(
        {"epochs": 2, "data.max_train_samples": 128, "batch_size": 16, "data.eval_stride": 100})
    ctx = Context()
    method, data = build_worker(spec.describe(), spec.local_sources(test=False), ctx)
    stride = spec.cfg.data.eval_stride
    with method.autocast():
        before = method.evaluate(data["val"], stride=stride)["mpjpe"]
    rep = MemoryReporter()
    res = run_epochs(method, spec.cfg, data, ctx, None, rep)
    after = res["val"]["mpjpe"]
    loss = [r.get("train_loss_mm", r.get("loss")) for r in rep.rows]
    assert math.isfinite(after) and (after < before or None not in loss and loss[1] < loss[0]), (before, after, loss)
    assert res["val"]["protocol"].endswith("bf16")


def test_fp16_needs_a_gpu():
    from posectl.errors import ConfigError
    with pytest.raises(ConfigError, match="precision=fp16 needs GPUs"):
        RunSpec.build("baseline", [{"precision": "fp16"}])
    assert RunSpec.build("baseline", [{"precision": "fp16"}], training=False, open_data=False).cfg.precision == "fp16"


COUNTERS = ("syncs", "uploads", "constants")


@functools.cache
def _per_epoch(name: str) -> dict[str, list[list[int]]]:
    """How many of each DeviceCheck counter (syncs, uploads, constants) each of two smoke epochs of `name`
    makes on the stand-in device, with 512 and with 1024 training rows (twice the steps), the split held
    on the device and random numbers drawn there, as on a GPU the split fits:
    {counter: [[epoch 1, epoch 2] at 512, [...] at 1024]}. Measured once per method for the tests below."""
    import posectl.core.skeleton as skeleton
    import posectl.datasets.lifting as lifting
    import posectl.methods.base as base
    from devicecheck import device_generator
    out = {c: [] for c in COUNTERS}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lifting, "device_memory", lambda device: 1 << 40)
        mp.setattr(base, "device_generator", device_generator)
        for rows in (512, 1024):
            spec = RunSpec.build(name, [], smoke_test=True).with_params({"epochs": 2, "data.max_train_samples": rows})
            sources = spec.local_sources(test=False)
            skeleton._INDEX.clear()                       # the index tensors are made again in each run
            with DeviceCheck() as mode:
                ctx = Context(device=DEVICE, prepare_model=lambda net: net.to(DEVICE))
                method, _ = build_worker(spec.describe(), sources, ctx)
                per_epoch = {c: [] for c in COUNTERS}
                for epoch in range(2):
                    before = {c: getattr(mode, c) for c in COUNTERS}
                    method.train_epoch(epoch)
                    for c in COUNTERS:
                        per_epoch[c].append(getattr(mode, c) - before[c])
            for c in COUNTERS:
                out[c].append(per_epoch[c])
    return out


@pytest.mark.parametrize("name", sorted(available()))
def test_batches_and_random_numbers_are_made_on_the_device(name):
    """With the split on the device, an epoch of twice the steps copies no more floating-point tensors from
    the host (batches indexed on the device, augmentation drawn from the device generator), unless the
    method says why its batches are built on the host (Method.host_batches), and makes no more constants
    on the device from Python lists (index tensors are made once: core/skeleton.py index_tensor)."""
    cls = available()[name]
    made = _per_epoch(name)
    counts, constants = made["uploads"], made["constants"]
    assert constants[0] == constants[1], constants
    if cls.host_batches:
        assert isinstance(cls.host_batches, str) and len(cls.host_batches) > 20
        return
    assert counts[0] == counts[1], counts


@pytest.mark.parametrize("name", sorted(available()))
def test_host_syncs_per_epoch_do_not_grow_with_the_steps(name):
    """Metrics are summed on the device and read once per epoch: an epoch of twice the steps makes the
    same number of host syncs (.item(), copies to the CPU, boolean masks)."""
    counts = _per_epoch(name)["syncs"]
    assert counts[0] == counts[1] and max(counts[1]) <= 8, counts


def test_the_gpu_check_plans_every_method_in_both_precisions(tmp_path):
    """benchmarks/gpu_check.py --dry-run on a CPU: its plan parses against the CLI and resolves."""
    import json
    import subprocess
    import sys
    from pathlib import Path
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    r = subprocess.run([sys.executable, str(script), "--dry-run", "--out", str(tmp_path)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    steps = json.loads((tmp_path / "gpu_check.json").read_text())["steps"]
    names = {s["name"] for s in steps}
    assert {f"smoke {m} {p}" for m in available() for p in ("fp32", "bf16")} <= names
    assert {"throughput fp32", "throughput bf16"} <= names and all(s["status"] == "planned" for s in steps)


@pytest.mark.parametrize("backbone", [{}, {"backbone.name": "videopose", "backbone.receptive_field": 9}])
@pytest.mark.parametrize("placement", ["device", "host"])
def test_batches_held_on_the_device_or_copied_from_the_host_train_as_on_the_cpu(placement, backbone, monkeypatch):
    """data.device_fraction: baseline's split kept on the device (batches and windows indexed there, flips
    drawn there) or gathered on the host and copied gives the CPU run's losses and MPJPE exactly (the
    stand-in device computes on the same values)."""
    import posectl.datasets.lifting as lifting
    monkeypatch.setattr(lifting, "device_memory", lambda device: 1 << 40)
    params = {"epochs": 2, "data.device_fraction": 0.25 if placement == "device" else 0.0, **backbone}
    spec = RunSpec.build("baseline", [], smoke_test=True).with_params(params)
    sources = spec.local_sources(test=False)

    def run(device):
        ctx = Context(device=device, prepare_model=lambda net: net.to(device))
        method, data = build_worker(spec.describe(), sources, ctx)
        losses = [method.train_epoch(epoch)["train_loss_mm"] for epoch in range(2)]
        return losses, method.evaluate(data["val"])["mpjpe"], data["train"].place(device, 0.25)

    cpu = run(torch.device("cpu"))
    with DeviceCheck():
        dev = run(DEVICE)
    assert dev[2] == placement and cpu[2] == "cpu"
    assert dev[:2] == cpu[:2]


@pytest.mark.parametrize("name", sorted(available()))
def test_validation_in_shares_merges_to_the_whole_split(name, monkeypatch):
    """With several workers each rank evaluates its block of whole validation sequences and the results are
    merged (orchestrator/loop.py: validate): for every method the merged metrics equal one evaluation of
    the whole split, or the method falls back to evaluating the whole split on every rank. The split here:
    its first 7 of 28 sequences (1,400 rows)."""
    from posectl.orchestrator.loop import merge_results
    from posectl.orchestrator.spec import val_shares
    spec = RunSpec.build(name, [], smoke_test=True).with_params({"epochs": 2})
    method, data = build_worker(spec.describe(), spec.local_sources(test=False), Context())
    method.train_epoch(0)
    val = val_shares(data["val"], 4)[0]                 # a quarter of the split, in whole sequences
    assert len(np.unique(val.arrays.sequence_ids)) == 7
    whole = method.evaluate(val, detailed=True)
    shares = val_shares(val, 3)
    assert shares is not None and sum(len(s) for s in shares) == len(val)
    parts = [method.evaluate(s, detailed=True) for s in shares]
    merged = merge_results(parts)
    # what an epoch's validation on rank 0 of 3 evaluates (the other ranks' results gathered as here)
    import posectl.orchestrator.loop as loop
    seen, evaluate = [], method.evaluate
    monkeypatch.setattr(method, "evaluate", lambda d, **kw: seen.append(len(d)) or evaluate(d, **kw))
    monkeypatch.setattr(loop, "_gather", lambda mine, ctx: [mine, *parts[1:]])
    stride = 1 if method.shared_validation else 10           # the fallback's whole split: every 10th frame
    epoch = loop.validate(method, {"val": val, "val_share": shares[0]}, Context(world_size=3), stride)
    if not method.shared_validation:                    # the fallback: the whole split, on every rank
        assert seen == [len(val)], (name, seen)
        return
    assert merged is not None and seen == [len(shares[0])], (name, seen)
    assert epoch["mpjpe"] == pytest.approx(whole["mpjpe"], rel=1e-4), name
    for k, v in whole.items():
        if isinstance(v, float):
            assert merged[k] == pytest.approx(v, rel=1e-4, abs=1e-6), (name, k)     # float32 batches differ
    assert merged["per_action"].keys() == whole["per_action"].keys()
