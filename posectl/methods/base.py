"""The plugin contract every method implements, and the method registry.

A method is a class with:
  name, description     registry key and one-line summary
  Config                a dataclass (subclass of TrainConfig) with defaults and help texts
  __init__(cfg, data, ctx)       build networks/optimisers for this worker (`data` = its training shard)
  train_epoch(epoch) -> dict     one epoch of training, returns scalar metrics (e.g. loss)
  evaluate(data) -> dict         metrics on a split (MPJPE etc., in mm)
  state_dict() / load_state_dict(sd)   everything needed to resume (networks, optimisers, schedulers)

The orchestrator owns the epoch loop, checkpoints, reporting and resources; a method never imports
Ray. Third-party methods register through the `posectl.methods` entry-point group.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Callable, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch

from posectl.config import field
from posectl.errors import ConfigError


POSE_METRICS = ("mpjpe", "p_mpjpe", "n_mpjpe", "pck150", "auc", "mpjpe_action_avg", "p_mpjpe_action_avg")


@dataclass
class DataConfig:
    path: str = field("synthetic", "dataset: 'synthetic', 'synthetic:target' or a prepared dataset directory")
    keypoints: str = field("gt", "2D input: 'gt' (projected ground truth) or a detection source in the dataset")
    train_split: str = field("train", "split used for training")
    val_split: str = field("val", "split for model selection and searches (never the test split)")
    test_split: str = field("test", "split reported at the end with the best-validation weights")
    train_subjects: list[str] = field([], "restrict training to these subjects (e.g. [S1] for data-limited runs)")
    train_stride: int = field(1, "use every n-th training frame")
    eval_stride: int = field(1, "use every n-th validation/test frame")
    max_train_samples: int = field(0, "cap on training rows (0 = all)")


@dataclass
class TrainConfig:
    epochs: int = field(10, "training epochs")
    batch_size: int = field(256, "global batch size (split across workers)")
    lr: float = field(1e-3, "learning rate", gt=0)
    lr_decay: float = field(0.95, "multiplicative learning-rate decay per epoch")
    seed: int = field(0, "random seed (workers add their rank)")
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


def method_inputs(cls: type, cfg: Any) -> dict[str, DataInput]:
    fn = getattr(cls, "inputs", None)
    return dict(fn(cfg)) if fn else {}


def check_training(cls: type, cfg: Any) -> None:
    """Checks a method needs before a training job starts, beyond its config (e.g. that a file it will read
    exists): `check_training(cfg)` on the class, optional; raises ConfigError. Evaluation skips them."""
    fn = getattr(cls, "check_training", None)
    if fn:
        fn(cfg)


def reads_images(cls: type, cfg: Any) -> bool:
    """Whether a method reads the dataset's optional image column (`reads_images(cfg)` on the class)."""
    fn = getattr(cls, "reads_images", None)
    return bool(fn(cfg)) if fn else False


@dataclass
class Context:
    """What the orchestrator gives a method inside a worker."""
    rank: int = 0
    world_size: int = 1
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    prepare_model: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m
    progress: Callable[[int, int], None] = lambda done, total: None   # steps done / total this epoch
    inputs: dict[str, Any] = dataclasses.field(default_factory=dict)   # role -> PoseArrays (see DataInput)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@runtime_checkable
class Method(Protocol):
    name: ClassVar[str]
    description: ClassVar[str]
    Config: ClassVar[type]
    # Optional, and so not a member here: `metrics`, a tuple of the numeric entries of evaluate(), which
    # the loop reports as val_<name> every epoch (<N> stands for an index). A search space's metric must
    # be one of them; without it, any val_ metric is accepted. Also optional: `gen`, the torch.Generator
    # of this worker's own random draws (shuffles, flips, noise; seeded with seed + rank), which the
    # loop saves and restores per worker together with torch's global random state.
    # Also optional: `inputs(cfg)` (extra datasets a method reads), `check_training(cfg)` (checks before a
    # training job or search starts, e.g. that a file it loads exists) and `reads_images(cfg)`.

    def __init__(self, cfg: Any, data: Any, ctx: Context): ...
    def train_epoch(self, epoch: int) -> dict[str, float]: ...
    def evaluate(self, data: Any) -> dict[str, Any]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


_REGISTRY: dict[str, type] = {}
_BUILTINS = {"baseline": "posectl.methods.baseline", "dhaug": "posectl.methods.dhaug", "gpa": "posectl.methods.gpa",
             "posynda": "posectl.methods.posynda", "pose2mesh": "posectl.methods.pose2mesh",
             "l2d": "posectl.methods.l2d"}


def register(cls: type) -> type:
    """Class decorator: make a method available under `cls.name`."""
    _REGISTRY[cls.name] = cls
    return cls


def _load_all() -> None:
    import importlib
    for mod in _BUILTINS.values():
        importlib.import_module(mod)
    for ep in entry_points(group="posectl.methods"):
        if ep.name not in _REGISTRY:
            cls = ep.load()
            _REGISTRY.setdefault(getattr(cls, "name", ep.name), cls)


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


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    np.random.seed(seed % (2 ** 32))
    return torch.Generator().manual_seed(seed)
