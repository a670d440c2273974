"""The plugin contract every method implements (`Method`), and the method registry.

A method is one module with a subclass of `Method` decorated with `@register`; it overrides what it
needs, and every hook the orchestrator calls is declared on `Method` with its default. A walk-through
of a minimal method is in docs/writing-a-method.md. The orchestrator owns the epoch loop,
checkpoints, reporting and resources; a method never imports Ray. Third-party methods register
through the `posectl.methods` entry-point group.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from importlib.metadata import entry_points
import contextlib
from typing import Any, Callable, ClassVar, Iterator, Literal

import numpy as np
import torch

from posectl.config import field
from posectl.errors import ConfigError, PosectlError


POSE_METRICS = ("mpjpe", "p_mpjpe", "n_mpjpe", "pck150", "auc", "mpjpe_action_avg", "p_mpjpe_action_avg")


@dataclass
class DataConfig:
    path: str = field("synthetic", "dataset: 'synthetic', 'synthetic:target' or a prepared dataset directory")
    keypoints: str = field("gt", "2D input: 'gt' (projected ground truth) or a detection source in the dataset")
    train_split: str = field("train", "split used for training")
    val_split: str = field("val", "split for model selection and searches (never the test split)")
    test_split: str = field("test", "split reported at the end with the best-validation weights")
    train_subjects: list[str] = field([], "restrict training to these subjects (e.g. [S1] for data-limited runs)")
    val_subjects: list[str] = field([], "restrict validation (model selection) to these subjects (empty: all), e.g. "
                                        "the labelled source subjects of a cross-subject adaptation")
    train_stride: int = field(1, "use every n-th training frame")
    eval_stride: int = field(1, "use every n-th validation/test frame")
    max_train_samples: int = field(0, "cap on training rows (0 = all)")
    device_fraction: float = field(0.25, "keep a worker's split on its GPU when it fits in this fraction of the GPU's "
                                         "memory (0: never; batches are then gathered into pinned host memory and "
                                         "copied without blocking)", le=1)
    stream: Literal["auto", "always", "never"] = field(
        "auto", "read the training split piece by piece through Ray Data instead of into each worker's memory: "
                "auto = when it is larger than memory_fraction of this node's memory (methods that can: baseline)")
    memory_fraction: float = field(0.25, "the memory budget of data.stream=auto, as a fraction of the node's memory",
                                   gt=0, le=1)
    stream_chunk: int = field(200_000, "rows a streaming worker holds at once (the window its shuffle mixes)", ge=1)


@dataclass
class TrainConfig:
    epochs: int = field(10, "training epochs")
    batch_size: int = field(256, "global batch size, split across the workers (the same training at any worker "
                                 "count)")
    batch_size_per_worker: int = field(0, "if > 0: each worker's batch instead (the global batch is then this x "
                                          "the workers, and the learning rate is not rescaled)", ge=0)
    sync_bn: Literal["auto", "always", "never"] = field(
        "auto", "batch-norm statistics synchronised across workers (SyncBatchNorm): auto = with several GPU "
                "workers; always needs GPUs")
    lr: float = field(1e-3, "learning rate", gt=0)
    lr_decay: float = field(0.95, "multiplicative learning-rate decay per epoch")
    seed: int = field(0, "random seed (workers add their rank)")
    precision: Literal["fp32", "bf16", "fp16"] = field(
        "fp32", "arithmetic of training and evaluation: fp32 (TF32 matmuls on GPUs that have them), bf16 "
                "(autocast; CPU and GPU) or fp16 (autocast with loss scaling; GPU only)")
    data: DataConfig = field(DataConfig, "dataset options")

    def validate(self) -> None:
        if self.epochs < 1:
            raise ConfigError("epochs: must be >= 1")
        if self.batch_size < 1:
            raise ConfigError("batch_size: must be >= 1")
        if not 0 < self.lr_decay <= 1:
            raise ConfigError("lr_decay: must be in (0, 1]")
        if self.data.train_stride < 1 or self.data.eval_stride < 1:
            raise ConfigError("data.train_stride/eval_stride: must be >= 1")
        if self.data.val_split == self.data.test_split:
            raise ConfigError(f"data.val_split: '{self.data.val_split}' is also the test split; model selection "
                              "and searches never see the test split")


@dataclass(frozen=True)
class DataInput:
    """A dataset split a method needs besides `cfg.data`'s train/val/test (e.g. a target domain).

    A method lists them in `inputs(cfg) -> {role: DataInput}`; the orchestrator loads each one whole
    for every worker and hands it over as `ctx.inputs[role]` (PoseArrays). The role "test" replaces
    the test split. With `with_3d=False` the 3D column is never read: the arrays carry NaN in its place.
    """
    path: str
    split: str
    keypoints: str = "gt"
    with_3d: bool = True
    subjects: tuple[str, ...] = ()     # restrict to these subjects (empty: all)


@dataclass
class Context:
    """What the orchestrator gives a method inside a worker."""
    rank: int = 0
    world_size: int = 1
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    prepare_model: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m
    progress: Callable[[int, int], None] = lambda done, total: None   # steps done / total this epoch
    inputs: dict[str, Any] = dataclasses.field(default_factory=dict)   # role -> PoseArrays (see DataInput)
    # (columns, fn, sizes, fn_kwargs) -> fn(batch, **fn_kwargs) over consecutive batches of `sizes` rows, in
    # order: here in this process; in Ray workers as Ray Data map_batches on the cluster's other CPUs
    map_batches: Callable[..., Iterator[dict]] = dataclasses.field(default_factory=lambda: local_map_batches)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def local_map_batches(columns: dict[str, np.ndarray], fn: Callable[..., dict], sizes: list[int],
                      fn_kwargs: dict | None = None) -> Iterator[dict]:
    """Context.map_batches in this process: fn over consecutive slices of `columns` of the given sizes."""
    start = 0
    for n in sizes:
        yield fn({k: v[start:start + n] for k, v in columns.items()}, **(fn_kwargs or {}))
        start += n


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The network inside a DDP wrapper (what `ctx.prepare_model` may return), or the network itself."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


class Method:
    """Base class of every method plugin. Override `train_epoch` and `evaluate` (required), set the
    class attributes, and override any other hook whose default does not fit.

    Checkpoints: `state_dict()` is everything needed to resume, and its "model" entry holds the weights
    that are evaluated. A state holding only {"model": ...} is weights-only (best.pt of a search, an
    exported trial, what `posectl eval` loads); `load_state_dict` must accept both. The random streams
    (torch's, and `self.gen`) are saved per worker by the orchestrator, not by the method.
    """
    # -- class level: read on the driver, before any worker exists ----------------------------------
    name: ClassVar[str] = ""                     # registry key
    description: ClassVar[str] = ""              # one line for `posectl methods`
    Config: ClassVar[type] = TrainConfig         # a dataclass deriving from TrainConfig
    metrics: ClassVar[tuple[str, ...]] = POSE_METRICS   # numeric entries of evaluate(), reported as val_<name>
                                                 # every epoch ("<N>" stands for an index); a search's metric
                                                 # must be one of them
    smoke_overrides: ClassVar[dict[str, Any]] = {}    # config values `--smoke-test` adds to the common ones
    smoke_defaults: ClassVar[dict[str, Any]] = {}     # ... and those it uses where the user kept the default
    shared_validation: ClassVar[bool] = True     # evaluate() of disjoint shares of a split merges into that of
                                                 # the whole (per-sample means with a per-action table): with
                                                 # several workers, each validates a share (orchestrator/loop.py)
    host_batches: ClassVar[str | None] = None    # why training batches are built on the host, if they are
                                                 # (else they are indexed and augmented on the device:
                                                 # tests/test_device.py checks that no step copies floats to it)

    @classmethod
    def inputs(cls, cfg: Any) -> dict[str, DataInput]:
        """Datasets this method reads besides cfg.data's train/val/test (e.g. a target domain), by role."""
        return {}

    @classmethod
    def check_training(cls, cfg: Any) -> None:
        """Checks before a training job or search starts, beyond the config (e.g. that a file it will read
        exists); raises ConfigError. Evaluation skips them."""

    @classmethod
    def reads_images(cls, cfg: Any) -> bool:
        """Whether the workers need the dataset's image column."""
        return False

    @classmethod
    def stream_context(cls, cfg: Any) -> int | None:
        """Whether the method trains from a streamed split (datasets/lifting.py: StreamedSplit, iterated
        with `data.parts()`), and then how many neighbouring frames each side a training row needs (0:
        single frames; `train_stride` is then applied in the read). None: it needs the split in memory."""
        return None

    @classmethod
    def smoke_prerequisites(cls, cfg: Any) -> dict[str, tuple[str, dict[str, Any]]]:
        """Runs a `--smoke-test` needs first, as {config key: (method, config values)}: each is trained
        smoke-sized in-process (cached), and the key is set to a list holding its checkpoint's path."""
        return {}

    @classmethod
    def generates_poses(cls) -> bool:
        """Whether `sample_poses` is implemented (`posectl samples`)."""
        return cls.sample_poses is not Method.sample_poses

    @classmethod
    def lifts_keypoints(cls) -> bool:
        """Whether `lift` is implemented (`posectl predict` on a user's own 2D keypoints)."""
        return cls.lift is not Method.lift

    @classmethod
    def predicts_meshes(cls) -> bool:
        """Whether `predict_meshes` is implemented (`posectl meshes`)."""
        return cls.predict_meshes is not Method.predict_meshes

    # -- per worker ---------------------------------------------------------------------------------
    def __init__(self, cfg: Any, data: Any, ctx: Context):
        """Build networks and optimisers for this worker; `data` is its training shard (LiftingData).
        Subclasses call this first: it seeds torch and `self.gen`, this worker's own random draws."""
        self.cfg, self.data, self.ctx = cfg, data, ctx
        self.gen = seed_everything(cfg.seed + ctx.rank)
        # draws made on the device: its own generator on CUDA; on the CPU the same stream as `gen`
        self.dgen = self.gen if ctx.device.type == "cpu" else device_generator(ctx.device, cfg.seed + ctx.rank)
        if ctx.device.type == "cuda" and cfg.precision == "fp32":
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        self.scaler = torch.amp.GradScaler("cuda" if ctx.device.type == "cuda" else "cpu",
                                           enabled=cfg.precision == "fp16")

    # Random numbers on this worker's device, from its seeded device stream `dgen` (on the CPU that is
    # `gen` itself, so a CPU run draws exactly what it would from `gen`); on a device without a generator
    # of its own, drawn from `gen` and copied.
    def rand(self, *shape: int) -> torch.Tensor:
        return self._draw(torch.rand, shape)

    def randn(self, *shape: int) -> torch.Tensor:
        return self._draw(torch.randn, shape)

    def randint(self, high: int, *shape: int) -> torch.Tensor:
        return self._draw(torch.randint, high, shape)

    def randperm(self, n: int) -> torch.Tensor:
        return self._draw(torch.randperm, n)

    def _draw(self, fn: Callable, *args) -> torch.Tensor:
        if self.dgen is not None:
            return fn(*args, generator=self.dgen, device=self.ctx.device)
        return fn(*args, generator=self.gen).to(self.ctx.device)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The run's precision: bf16/fp16 autocast on this worker's device, or nothing for fp32. The
        orchestrator runs `train_epoch` and `evaluate` inside it."""
        if self.cfg.precision == "fp32" or self.ctx.device.type not in ("cpu", "cuda"):
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.cfg.precision == "bf16" else torch.float16
        # no weight-cast cache: it lives as long as the context, here a whole epoch of optimiser steps,
        # and would keep serving the first step's weights
        return torch.autocast(self.ctx.device.type, dtype=dtype, cache_enabled=False)

    def fp32(self) -> contextlib.AbstractContextManager:
        """Autocast off: geometry that builds a training batch (projection, alignment, augmentation) stays
        in fp32 inside a bf16/fp16 run, as it would on the host."""
        if self.cfg.precision == "fp32" or self.ctx.device.type not in ("cpu", "cuda"):
            return contextlib.nullcontext()
        return torch.autocast(self.ctx.device.type, enabled=False)

    def optimize(self, loss: torch.Tensor, opt: torch.optim.Optimizer, max_norm: float = 0.0,
                 gradient: torch.Tensor | None = None) -> None:
        """One optimiser step on `loss`: zero the gradients, backward (loss-scaled under fp16), clip their
        norm to `max_norm` (0: no clipping), step."""
        opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward(gradient)
        if max_norm > 0:
            self.scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], max_norm)
        self.scaler.step(opt)
        self.scaler.update()

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One epoch of training (0-based `epoch`); returns scalar metrics such as train_loss_mm."""
        raise NotImplementedError

    def evaluate(self, data: Any, stride: int = 1, detailed: bool = False) -> dict[str, Any]:
        """Metrics on every `stride`-th row of a split (mm), with a "protocol" string naming what was
        measured; `detailed` adds per-action tables and lists."""
        raise NotImplementedError

    def per_worker(self, batch_size: int | None = None) -> int:
        """This worker's share of a global batch size; without one, this worker's training batch:
        `batch_size_per_worker`, or `batch_size` (global) divided over the workers."""
        if batch_size is None:
            if self.cfg.batch_size_per_worker:
                return self.cfg.batch_size_per_worker
            batch_size = self.cfg.batch_size
        return max(1, batch_size // self.ctx.world_size)

    def resumables(self) -> dict[str, Any]:
        """Objects besides the weights whose `state_dict()` a resume needs (optimisers, schedulers), by name."""
        return {}

    def weights(self) -> dict[str, Any]:
        """The "model" entry of a checkpoint (default: `self.model`'s state dict)."""
        return unwrap(self.model).state_dict()

    def load_weights(self, weights: dict[str, Any]) -> None:
        unwrap(self.model).load_state_dict(weights)

    def state_dict(self) -> dict[str, Any]:
        parts = {**self.resumables(), **({"scaler": self.scaler} if self.scaler.is_enabled() else {})}
        return {"model": self.weights(), **{k: v.state_dict() for k, v in parts.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.load_weights(state["model"])
        parts = {**self.resumables(), **({"scaler": self.scaler} if self.scaler.is_enabled() else {})}
        if any(k in state for k in parts):      # a full state, not weights only
            for k, obj in parts.items():
                obj.load_state_dict(state[k])

    def sample_poses(self, n: int) -> torch.Tensor:
        """n generated 3D poses (a generative method, e.g. DH-AUG's generator)."""
        raise PosectlError(f"method '{self.name}' does not generate poses")

    def lift(self, data: Any, progress: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
        """3D for every row of `data` (LiftingData whose 3D is not read), in row order: {"joints_3d": (N, J, 3)
        metres, root-relative camera frame, as `evaluate` scores it, and any further outputs (e.g. "vertices")}.
        `progress(done, total)` is called per batch."""
        raise PosectlError(f"method '{self.name}' does not lift 2D keypoints")

    def predict_meshes(self, data: Any, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(predicted vertices, ground-truth vertices, faces) for `rows` of a split (a mesh method)."""
        raise PosectlError(f"method '{self.name}' does not predict meshes")


class StateGroup:
    """Several named objects saved as one resumable entry ({name: state_dict()})."""

    def __init__(self, parts: dict[str, Any]):
        self.parts = parts

    def state_dict(self) -> dict[str, Any]:
        return {k: unwrap(v).state_dict() if isinstance(v, torch.nn.Module) else v.state_dict()
                for k, v in self.parts.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, v in self.parts.items():
            (unwrap(v) if isinstance(v, torch.nn.Module) else v).load_state_dict(state[k])


def summary(res: dict[str, Any], detailed: bool) -> dict[str, Any]:
    """An `evaluate` result: whole with `detailed`, else without its per-action tables and lists."""
    return res if detailed else {k: v for k, v in res.items() if not isinstance(v, (dict, list))}


def protocol_tail(stride: int, precision: str) -> str:
    """The end of a protocol string: the frame stride and the arithmetic."""
    return f"{f', every {stride}th frame' if stride > 1 else ''}, {precision}"


REQUIRED_HOOKS = ("train_epoch", "evaluate")


def check_method(cls: Any) -> None:
    """Refuse a class that does not implement the contract (raises ConfigError naming what is missing)."""
    where = f"method plugin {cls!r}"
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise ConfigError(f"{where}: must derive from posectl.methods.base.Method")
    if not cls.name or not cls.description:
        raise ConfigError(f"{where}: needs a name and a description")
    if not (dataclasses.is_dataclass(cls.Config) and issubclass(cls.Config, TrainConfig)):
        raise ConfigError(f"{where}: Config must be a dataclass deriving from TrainConfig")
    own = cls.__mro__[:cls.__mro__.index(Method)]          # the plugin's classes, above Method
    missing = [h for h in REQUIRED_HOOKS if not any(h in vars(k) for k in own)]
    if missing:
        raise ConfigError(f"{where}: does not implement {', '.join(missing)}")


_REGISTRY: dict[str, type] = {}
_BUILTINS = {"baseline": "posectl.methods.baseline", "dhaug": "posectl.methods.dhaug", "gpa": "posectl.methods.gpa",
             "posynda": "posectl.methods.posynda", "pose2mesh": "posectl.methods.pose2mesh",
             "l2d": "posectl.methods.l2d"}


def register(cls: type) -> type:
    """Class decorator: make a method available under `cls.name` (checked against the contract)."""
    check_method(cls)
    _REGISTRY[cls.name] = cls
    return cls


def _load_all() -> None:
    import importlib
    for mod in _BUILTINS.values():
        importlib.import_module(mod)
    for ep in entry_points(group="posectl.methods"):
        if ep.name not in _REGISTRY:
            cls = ep.load()
            check_method(cls)
            _REGISTRY.setdefault(cls.name, cls)


def available() -> dict[str, type]:
    _load_all()
    return dict(sorted(_REGISTRY.items()))


def get_method(name: str) -> type:
    methods = available()
    if name not in methods:
        import difflib
        close = difflib.get_close_matches(name, list(methods), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"unknown method '{name}'{hint}; available: {', '.join(methods)}")
    return methods[name]


def device_generator(device: torch.device, seed: int) -> torch.Generator | None:
    """A seeded generator of the accelerator's own (CUDA), or None where it has none."""
    if device.type != "cuda":
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    np.random.seed(seed % (2 ** 32))
    return torch.Generator().manual_seed(seed)
