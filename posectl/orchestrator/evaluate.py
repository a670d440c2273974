"""Evaluate a checkpoint in-process (no Ray needed): the model is small, the data in memory."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from posectl.core.skeleton import EVAL_JOINT_SETS, get_layout
from posectl.datasets.lifting import LiftingData
from posectl.errors import ConfigError, DataError, PosectlError
from posectl.methods.base import Context, get_method
from posectl.orchestrator.experiment import load_checkpoint
from posectl.orchestrator.spec import RunSpec


def checkpoint_spec(state: dict, where, overrides: dict | None = None) -> RunSpec:
    """The RunSpec of a checkpoint's run (its resolved config, with `overrides`); data not opened."""
    method = get_method(state.get("method", "(none)"))      # an unknown method is named as such first
    missing = [k for k in ("config", "layout", "epoch", "method_state") if k not in state]
    if missing:
        raise PosectlError(f"{where}: an incomplete posectl checkpoint (no {', '.join(missing)})")
    return RunSpec.build(method, [state["config"], overrides or {}], training=False, open_data=False)


def evaluate_checkpoint(checkpoint: str | Path, data: str | None = None, split: str | None = None,
                        keypoints: str | None = None, flip: bool | None = None, stride: int = 1,
                        joints: str | None = None, device: str = "cpu") -> dict[str, Any]:
    if stride < 1:
        raise ConfigError(f"--stride must be >= 1, got {stride}")
    if joints is not None and joints not in EVAL_JOINT_SETS:
        raise ConfigError(f"--joints: {', '.join(EVAL_JOINT_SETS)}, got '{joints}'")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ConfigError(f"--device: cpu, cuda or cuda:N, got '{device}'")
    if device != "cpu" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA device on this machine")
    state = load_checkpoint(checkpoint)
    overrides: dict[str, Any] = {}
    if keypoints is not None:
        overrides["data.keypoints"] = keypoints
    if flip is not None:
        overrides["test_flip"] = flip
    if joints is not None:
        overrides["eval_joints"] = joints
    if device == "cpu" and state.get("config", {}).get("precision") == "fp16":
        overrides["precision"] = "fp32"         # fp16 autocast is for GPUs
    spec = checkpoint_spec(state, checkpoint, overrides)
    method_cls, cfg = spec.method, spec.cfg
    test_input = method_cls.inputs(cfg).get("test")
    # a method whose test data is its own (a target domain); another split (`--split val`) is the run's
    # own data, where model selection happened
    if data is None and test_input is not None and split in (None, test_input.split):
        path, split, kp = test_input.path, split or test_input.split, keypoints or test_input.keypoints
        subjects = list(test_input.subjects) or None
    else:
        path, split, kp = data or cfg.data.path, split or cfg.data.test_split, cfg.data.keypoints
        own_val = data is None and split == cfg.data.val_split        # the run's own selection split
        subjects = (cfg.data.val_subjects or None) if own_val else None
    ds = _open_any(path)  # only the evaluated split has to exist
    layout = get_layout(state["layout"])
    if ds.layout.name != layout.name:
        raise DataError(f"{ds.path}: joint layout {ds.layout.name} does not match the checkpoint's {layout.name}")
    lifting = LiftingData(ds.load(split, kp, subjects, images=method_cls.reads_images(cfg)), layout, keypoints=kp)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    dev = torch.device(device)
    method = method_cls(cfg, lifting, Context(device=dev, prepare_model=lambda net: net.to(dev)))
    method.load_state_dict({"model": state["method_state"]["model"]})
    with method.autocast():
        metrics = method.evaluate(lifting, stride=stride, detailed=True)
    return {"method": state["method"], "checkpoint": str(checkpoint), "dataset": ds.name, "split": split,
            "epoch": state["epoch"] + 1, "metrics": metrics}


def _open_any(path: str):
    from posectl.datasets.store import PoseDataset
    from posectl.orchestrator.data import resolve_path
    return PoseDataset(resolve_path(path), verify=True)


def capable_checkpoint(checkpoint: str | Path, default: str, capable, what: str):
    """(path, state, method class, config) of a checkpoint file, or of a run directory's `default` file,
    refusing a method for which `capable(method class)` is false."""
    p = Path(checkpoint)
    if p.is_dir():
        p = p / "checkpoints" / default if (p / "checkpoints").is_dir() else p / default
    state = load_checkpoint(p)
    spec = checkpoint_spec(state, p)
    if not capable(spec.method):
        raise PosectlError(f"method '{state['method']}' does not {what}")
    return p, state, spec.method, spec.cfg


def sample_checkpoint(checkpoint: str | Path, n: int = 18, out: str | Path | None = None) -> Path:
    """Draw `n` poses from a generative method's checkpoint (e.g. DH-AUG's generator) and save them
    as a PNG grid of skeletons. Needs the full state of `last.pt` (a run directory picks it)."""
    from posectl.core.skeleton import LAYOUTS
    from posectl.orchestrator.plots import skeleton_grid
    p, state, cls, cfg = capable_checkpoint(checkpoint, "last.pt", lambda m: m.generates_poses(), "generate poses")
    if set(state["method_state"]) == {"model"}:
        raise PosectlError(f"{p}: holds only the lifting weights; sample from last.pt or the run directory")
    ds = _open_any(cfg.data.path)
    data = LiftingData(ds.load(cfg.data.train_split, cfg.data.keypoints, cfg.data.train_subjects or None),
                       get_layout(state["layout"]))
    method = cls(cfg, data, Context())
    method.load_state_dict(state["method_state"])
    poses = method.sample_poses(n).numpy()
    layout = next(lay for lay in LAYOUTS.values() if lay.num_joints == poses.shape[1] and lay.name.startswith("h36m"))
    out = Path(out) if out else p.parent.parent / "generated_poses.png"
    return skeleton_grid(poses, layout, out, f"{state['method']} generated poses (epoch {state['epoch'] + 1}, "
                                             f"{cfg.data.path.rsplit('/', 1)[-1]})")


def export_meshes(checkpoint: str | Path, n: int = 4, split: str | None = None, data: str | None = None,
                  out: str | Path | None = None) -> Path:
    """Predict meshes for `n` evenly spaced frames of a split with a mesh method's checkpoint (Pose2Mesh):
    write predicted and ground-truth meshes as OBJ files and a PNG of both. Returns the output folder."""
    import numpy as np

    from posectl.core.mesh import write_obj
    from posectl.orchestrator.plots import mesh_grid
    p, state, cls, cfg = capable_checkpoint(checkpoint, "best.pt", lambda m: m.predicts_meshes(), "predict meshes")
    split = split or cfg.data.test_split
    ds = _open_any(data or cfg.data.path)
    lifting = LiftingData(ds.load(split, cfg.data.keypoints), get_layout(state["layout"]))
    method = cls(cfg, lifting, Context())
    method.load_state_dict({"model": state["method_state"]["model"]})
    rows = np.unique(np.linspace(0, len(lifting) - 1, n).round().astype(np.int64))
    pred, gt, faces = method.predict_meshes(lifting, rows)
    folder = Path(out) if out else p.parent.parent / "meshes"
    folder.mkdir(parents=True, exist_ok=True)
    for i, r in enumerate(rows):
        write_obj(folder / f"{split}_{r:06d}_pred.obj", pred[i], faces)
        write_obj(folder / f"{split}_{r:06d}_gt.obj", gt[i], faces)
    mesh_grid(gt, pred, faces, folder / "meshes.png",
              f"{state['method']} epoch {state['epoch'] + 1}: {ds.name} {split}, rows {', '.join(map(str, rows))}")
    return folder
