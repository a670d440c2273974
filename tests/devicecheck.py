"""Catching device bugs without a GPU: a stand-in accelerator for tests.

`OnDevice` is a tensor that reports the `meta` device (so `x.device`, `torch.zeros(..., device=x.device)`
and `module.to(device)` behave as they would for an accelerator) while holding real CPU data, so every
op computes real values and `.item()` works. `DeviceCheck`, a dispatch mode, moves what is sent to the
`meta` device onto `OnDevice`, and fails an op the way CUDA fails it:

- an op mixing device tensors with CPU tensors, except 0-dim CPU tensors read as scalars and CPU index
  tensors of an indexing op;
- an in-place or `out=` op writing into a CPU tensor from a device tensor (`cpu_total += loss`: the
  case plain `meta` tensors do not catch);
- a random op on the device drawing from a CPU generator, or on the CPU from the device's generator
  (`device_generator` makes the stand-in's: CPU generators marked as the device's).

`.item()` / `.tolist()`, device-to-CPU copies and ops whose output size depends on device values
(boolean masks, nonzero) are host syncs; they are counted in `syncs`. Copies of floating-point CPU
tensors to the device (batches gathered on the host, random numbers drawn there) are counted in `uploads`,
tensors made on the device from Python lists or numpy arrays (constants, list indices) in `constants`.
"""
from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

DEVICE = torch.device("meta")
aten = torch.ops.aten
_INDEX_OPS = {aten.index.Tensor, aten.index_put_.default, aten.index_put.default, aten._index_put_impl_.default}
_SYNC_OPS = {aten._local_scalar_dense.default}
_SHAPE_OPS = {aten.nonzero.default, aten.masked_select.default, aten._unique2.default}


def _bool_index(func, tensors) -> bool:
    """A boolean-mask index of a device tensor: its output size is only known after a sync."""
    return func in _INDEX_OPS and any(t.dtype == torch.bool for t in tensors[1:])


class DeviceError(RuntimeError):
    pass


_MARK = 1 << 48          # CPU generators seeded above this stand in for the device's own (a generator
                        # reaches the dispatcher as a new Python object: its seed is what identifies it)


def device_generator(device: torch.device, seed: int) -> torch.Generator | None:
    """The stand-in for posectl.methods.base.device_generator: a seeded generator that draws on `DEVICE`."""
    if torch.device(device).type != DEVICE.type:
        return None
    return torch.Generator().manual_seed(_MARK + seed)


def _device_gen(gen) -> bool:
    return gen.device.type == "cpu" and gen.initial_seed() >= _MARK


_SYNCS = [0]          # host syncs made through Python-level calls (tolist) while a check is active
_CONSTANTS = [0]      # tensors built on the device from Python or numpy data (torch.tensor(list, device=...),
                      # list and numpy indices): one blocking host-to-device copy each on CUDA


class OnDevice(torch.Tensor):
    """CPU data that says it is on the accelerator (see the module docstring)."""

    @staticmethod
    def __new__(cls, data: torch.Tensor):
        r = torch.Tensor._make_wrapper_subclass(cls, data.shape, strides=data.stride(),
                                                storage_offset=data.storage_offset(), dtype=data.dtype,
                                                layout=data.layout, device=DEVICE, requires_grad=data.requires_grad)
        r.cpu_data = data
        return r

    # Python lists as indices become index tensors on the indexed tensor's device inside C++ (data-less
    # here); CUDA reads them as CPU indices would be read, so they are handed over as CPU tensors.
    def __getitem__(self, idx):
        return super().__getitem__(_list_indices(idx))

    def __setitem__(self, idx, value):
        return super().__setitem__(_list_indices(idx), value)

    def tolist(self):                     # a host sync, allowed on an accelerator
        _SYNCS[0] += 1
        return self.cpu_data.tolist()

    def numpy(self, *, force: bool = False):
        raise DeviceError(f"numpy() of a device tensor of shape {tuple(self.shape)} (CUDA refuses it: .cpu() first)")

    def __repr__(self, *, tensor_contents=None):
        return f"OnDevice({self.cpu_data!r})"

    def __tensor_flatten__(self):
        return ["cpu_data"], None

    @staticmethod
    def __tensor_unflatten__(inner, meta, outer_size, outer_stride):
        return OnDevice(inner["cpu_data"])

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {}, None)


def _list_indices(idx):
    """Python-list and numpy indices of a device tensor as CPU index tensors; each is a constant copied
    to the device on CUDA (a blocking copy), counted in `constants`."""
    import numpy as np
    parts = idx if isinstance(idx, tuple) else (idx,)
    out = []
    for i in parts:
        if isinstance(i, (list, np.ndarray)):
            _CONSTANTS[0] += 1
            i = torch.as_tensor(np.asarray(i))
        out.append(i)
    return tuple(out) if isinstance(idx, tuple) else out[0]


def _is_dev(t) -> bool:
    return isinstance(t, OnDevice)


def _plain(t) -> bool:
    return isinstance(t, torch.Tensor) and not isinstance(t, OnDevice)


def _run(func, args, kwargs, mode: "DeviceCheck | None"):
    flat, _ = tree_flatten((args, kwargs))
    tensors = [t for t in flat if isinstance(t, torch.Tensor)]
    on_dev = any(_is_dev(t) for t in tensors)
    name = str(func)
    target = kwargs.get("device")
    to_dev = target is not None and torch.device(target).type == DEVICE.type
    for t in tensors:
        if _plain(t) and t.device.type == DEVICE.type:
            raise DeviceError(f"{name}: a data-less meta tensor (made outside the check)")
    gen = kwargs.get("generator")
    if gen is not None and _device_gen(gen) and not to_dev and not on_dev:
        raise DeviceError(f"{name}: draws CPU random numbers from the device's generator")
    if on_dev or to_dev:
        _check(func, args, kwargs, tensors, name, to_dev)
    if mode is not None and to_dev and func is aten._to_copy.default and any(
            _plain(t) and t.is_floating_point() for t in tensors):
        mode._uploads += 1
    if mode is not None and func is aten.copy_.default and _is_dev(args[0]) and _plain(args[1]) \
            and args[1].is_floating_point():
        mode._uploads += 1
    if mode is not None and on_dev and (func in _SYNC_OPS or func in _SHAPE_OPS or _bool_index(func, tensors)
                                        or (func is aten._to_copy.default and target is not None and not to_dev)):
        mode._syncs += 1
    unwrap = (lambda t: t.cpu_data if _is_dev(t) else t)
    kw = {k: (torch.device("cpu") if k == "device" and to_dev else v) for k, v in kwargs.items()}
    out = func(*tree_map(unwrap, args), **tree_map(unwrap, kw))
    if func is aten._to_copy.default and not to_dev:          # .cpu(), .to("cpu"), dtype changes on the CPU
        if on_dev and (target is None):                       # a dtype change stays where it was
            return tree_map(lambda t: OnDevice(t) if isinstance(t, torch.Tensor) else t, out)
        return out
    if not (on_dev or to_dev) or func in _SYNC_OPS:
        return out
    mutated = _mutated_args(func, args, kwargs)
    if mutated and all(_plain(m) for m in mutated) and func is aten.copy_.default:
        return out                                            # device -> host copy into a CPU tensor
    back = {id(m.cpu_data): m for m in mutated if _is_dev(m)}  # an in-place op returns its own argument
    def wrap(t):
        if not isinstance(t, torch.Tensor) or _is_dev(t):
            return t
        return back[id(t)] if id(t) in back else OnDevice(t)
    return tree_map(wrap, out)


def _mutated_args(func, args, kwargs) -> list:
    out = []
    for i, a in enumerate(func._schema.arguments):
        if a.alias_info is not None and a.alias_info.is_write:
            v = args[i] if i < len(args) else kwargs.get(a.name)
            if isinstance(v, torch.Tensor):
                out.append(v)
    return out


def _check(func, args, kwargs, tensors, name, to_dev) -> None:
    if func in (aten._to_copy.default, aten.copy_.default, aten.detach.default, aten.alias.default):
        return                                                # explicit transfers and views
    gen = kwargs.get("generator")
    if gen is not None and to_dev and gen.device.type == "cpu" and not _device_gen(gen):
        raise DeviceError(f"{name}: draws device random numbers from a CPU generator")
    mutated = _mutated_args(func, args, kwargs)
    for m in mutated:
        if _plain(m) and m.device.type == "cpu":
            raise DeviceError(f"{name}: writes device values into a CPU tensor of shape {tuple(m.shape)} "
                              "(Expected all tensors to be on the same device)")
    index = func in _INDEX_OPS
    for i, t in enumerate(tensors):
        if _plain(t) and t.device.type == "cpu" and t.dim() > 0:
            if index and t is not tensors[0] and t.dtype in (torch.long, torch.int, torch.bool):
                continue                                      # CPU indices into a device tensor
            raise DeviceError(f"{name}: mixes a device tensor with a CPU tensor of shape {tuple(t.shape)} "
                              "(Expected all tensors to be on the same device)")


class _NewTensors(TorchFunctionMode):
    """torch.tensor(data, device=DEVICE) builds its tensor inside C++, out of the dispatch mode's sight:
    build it on the CPU, then send it to the device."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        dev = kwargs.get("device")
        if (func in (torch.tensor, torch.as_tensor) and dev is not None and torch.device(dev).type == DEVICE.type
                and not (args and isinstance(args[0], torch.Tensor))):
            _CONSTANTS[0] += 1
            return func(*args, **{**kwargs, "device": "cpu"}).to(DEVICE)
        return func(*args, **kwargs)


class DeviceCheck(TorchDispatchMode):
    """Within it, `DEVICE` (meta) acts as an accelerator holding real values (see the module docstring)."""

    def __init__(self):
        super().__init__()
        self._syncs = 0
        self._uploads = 0

    @property
    def uploads(self) -> int:
        return self._uploads

    @property
    def constants(self) -> int:
        return _CONSTANTS[0] - self._start_constants

    @property
    def syncs(self) -> int:
        return self._syncs + _SYNCS[0] - self._start

    def __enter__(self):
        self._start = _SYNCS[0]
        self._start_constants = _CONSTANTS[0]
        self._new = _NewTensors()
        self._new.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        out = super().__exit__(*exc)
        self._new.__exit__(*exc)
        return out

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {}, self)
