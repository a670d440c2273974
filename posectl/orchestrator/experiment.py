"""Experiment directories, write-once resolved configs, metric history and atomic checkpoints.

runs/<name>/
  config.yaml           the resolved config (written once, never overwritten)
  metrics.jsonl         one JSON line per epoch
  checkpoints/last.pt   latest full state (resume)      checkpoints/best.pt  best validation MPJPE
  results.json          final validation/test metrics of the best checkpoint
  ray/                  Ray Train's own storage (its checkpoints, for worker-failure recovery)
"""
from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml

from posectl.errors import ConfigError, PosectlError

from posectl.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, load_checkpoint  # noqa: F401 - re-exported


def check_run_name(name: str | None, flag: str = "--name") -> None:
    """A run or search name is one folder name under the runs' directory, never a path out of it."""
    if name is not None and (not name.strip() or name in (".", "..") or "/" in name or os.sep in name):
        raise PosectlError(f"{flag} '{name}': a folder name, not a path (runs go under --runs-dir / --storage-path)")


def default_runs_dir() -> Path:
    return Path(os.environ.get("POSECTL_RUNS", "runs"))


class Experiment:
    def __init__(self, root: str | Path):
        self.root = Path(root).absolute()

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def exists(self) -> bool:
        return self.config_path.is_file()

    def create(self, method: str, config: dict) -> None:
        """Write the resolved config once; a second write with a different config is refused."""
        doc = {"method": method, "config": config}
        if self.config_path.exists():
            old = self.read_config()
            if old != doc:
                raise ConfigError(f"{self.config_path} already holds a different config; "
                                  "use a new --name (configs are never overwritten)")
            return
        self.root.mkdir(parents=True, exist_ok=True)
        self.checkpoints.mkdir(exist_ok=True)
        atomic_write_bytes(self.config_path, yaml.safe_dump(doc, sort_keys=False).encode())

    def read_config(self) -> dict:
        try:
            doc = yaml.safe_load(self.config_path.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise PosectlError(f"{self.config_path}: unreadable ({e.__class__.__name__})") from None
        if not isinstance(doc, dict) or "method" not in doc or "config" not in doc:
            raise PosectlError(f"{self.config_path}: not a posectl run config")
        return doc

    def history(self) -> list[dict]:
        p = self.root / "metrics.jsonl"
        if not p.exists():
            return []
        rows = []
        for line in p.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a crash
        return rows

    def write_history(self, rows: list[dict]) -> None:
        atomic_write_bytes(self.root / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())

    def results(self) -> dict | None:
        p = self.root / "results.json"
        return json.loads(p.read_text()) if p.exists() else None


def _atomic_write(path: Path, write) -> None:
    """`write(f)` into a temporary file beside `path`, fsync, then rename over it: never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic_write(Path(path), lambda f: f.write(data))


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    _atomic_write(Path(path), lambda f: torch.save(
        {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}, f))


def latest_valid_checkpoint(exp: Experiment, method: str) -> dict | None:
    """last.pt, or best.pt if last.pt is corrupt (with a warning); None if neither exists."""
    for name in ("last.pt", "best.pt"):
        p = exp.checkpoints / name
        if not p.exists():
            continue
        try:
            return load_checkpoint(p, method)
        except PosectlError as e:
            warnings.warn(f"skipping corrupt checkpoint: {e}", stacklevel=2)
    return None
