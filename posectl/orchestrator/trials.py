"""Reading a search's results from disk (no Ray needed): trials, histories, best trial, export."""
from __future__ import annotations

import glob
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from posectl.errors import PosectlError
from posectl.orchestrator.experiment import Experiment, atomic_write_bytes, load_checkpoint
from posectl.orchestrator.paths import SEARCH_FILE, default_storage

CHECKPOINT_PATH_KEY = "checkpoint_path"   # ray.tune.integration.ray_train.CHECKPOINT_PATH_KEY (no Ray import here)


@dataclass
class Trial:
    id: str
    path: Path
    params: dict
    history: list[dict]
    status: str
    metric: str
    mode: str
    max_epochs: int
    error: str | None = None

    @property
    def epochs(self) -> int:
        return len(self.history)

    @property
    def best(self) -> float:
        vals = [r[self.metric] for r in self.history if self.metric in r]
        if not vals:
            return math.nan
        return min(vals) if self.mode == "min" else max(vals)

    @property
    def state(self) -> str:
        if self.status == "TERMINATED":
            return "completed" if self.epochs >= self.max_epochs else "stopped early"
        return {"ERROR": "error", "RUNNING": "running", "PENDING": "pending", "PAUSED": "paused"}.get(
            self.status, self.status.lower())

    def checkpoint_dirs(self) -> list[Path]:
        """Where this trial's latest checkpoint may be, most trusted first: Tune's (single-worker
        trials); for a trial that ran a Ray Train job, the checkpoint it last reported ("checkpoint_path"
        in result.json), then the newest one in <search>/_train/train-<trial id>/."""
        found = sorted(self.path.glob("checkpoint_*"))[-1:]
        reported = [r[CHECKPOINT_PATH_KEY] for r in self.history if isinstance(r.get(CHECKPOINT_PATH_KEY), str)]
        if reported:
            found.append(Path(reported[-1].removeprefix("file://")))
        found += sorted((self.path.parent / "_train" / f"train-{self.id}").glob("checkpoint_*"), reverse=True)
        return [d for d in found if (d / "best.pt").is_file()]   # (also skips checkpoint_manager_snapshot.json)

    def checkpoint_dir(self) -> Path | None:
        found = self.checkpoint_dirs()
        return found[0] if found else None


@dataclass
class Search:
    path: Path
    method: str
    metric: str
    mode: str
    trials: list[Trial] = field(default_factory=list)

    def sorted(self) -> list[Trial]:
        sign = 1 if self.mode == "min" else -1
        return sorted(self.trials, key=lambda t: (math.isnan(t.best), sign * t.best if not math.isnan(t.best) else 0))

    def trial(self, trial_id: str) -> Trial:
        """The trial with this id or directory name, or the one whose id starts with it."""
        exact = [t for t in self.trials if trial_id and trial_id in (t.id, t.path.name)]
        found = exact or [t for t in self.trials if trial_id and t.id.startswith(trial_id)]
        if len(found) == 1:
            return found[0]
        if found:
            raise PosectlError(f"trial id prefix '{trial_id}' is ambiguous in {self.path}: "
                               f"{', '.join(t.id for t in found)}")
        raise PosectlError(f"no trial '{trial_id}' in {self.path} (trials: {', '.join(t.id for t in self.trials)})")

    def best(self) -> Trial:
        ranked = [t for t in self.sorted() if not math.isnan(t.best)]
        if not ranked:
            raise PosectlError(f"{self.path}: no trial has reported {self.metric} yet")
        return ranked[0]


def search_path(name: str | Path, storage_path: str | Path | None = None) -> Path:
    p = Path(name)
    if (p / SEARCH_FILE).is_file():
        return p
    base = Path(storage_path) if storage_path else default_storage()
    if (base / str(name) / SEARCH_FILE).is_file():
        return base / str(name)
    if p.exists() and (p.is_absolute() or not (base / str(name)).exists()):
        raise PosectlError(f"{p}: not a search directory (no {SEARCH_FILE})")
    raise PosectlError(f"no search '{name}' in {base} (pass --storage-path or a search directory)")


def load_search(name: str | Path, storage_path: str | Path | None = None) -> Search:
    path = search_path(name, storage_path)
    meta = yaml.safe_load((path / SEARCH_FILE).read_text())
    space = yaml.safe_load((path / "space.yaml").read_text())
    max_epochs = int(meta["base_config"]["epochs"])
    statuses: dict[str, tuple[str, str | None]] = {}
    states = sorted(glob.glob(str(path / "experiment_state-*.json")))
    if states:
        for entry in json.loads(Path(states[-1]).read_text()).get("trial_data", []):
            try:
                t = json.loads(entry[0])
                statuses[t["trial_id"]] = (t.get("status", "UNKNOWN"), t.get("error_filename"))
            except (ValueError, KeyError, IndexError, TypeError):
                continue
    s = Search(path, meta["method"], space["metric"], space["mode"])
    for d in sorted(path.glob("trial_*")):
        tid = d.name[len("trial_"):]
        params = json.loads((d / "params.json").read_text()) if (d / "params.json").exists() else {}
        hist = []
        if (d / "result.json").exists():
            for line in (d / "result.json").read_text().splitlines():
                try:
                    hist.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        status, _ = statuses.get(tid, ("UNKNOWN", None))
        err = None
        if (d / "error.txt").exists():
            err = (d / "error.txt").read_text().strip().splitlines()[-1][:200]
            status = "ERROR" if status == "UNKNOWN" else status
        s.trials.append(Trial(tid, d, params, hist, status, s.metric, s.mode, max_epochs, err))
    return s


def export_best(search: Search, out: str | Path) -> tuple[Trial, Path]:
    """Copy the best trial's best-validation weights and config to `out` (for `posectl eval`)."""
    t = search.best()
    found = t.checkpoint_dirs()
    if not found:
        raise PosectlError(f"trial {t.id} has no checkpoint to export")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise PosectlError(f"export directory {out} is not empty")
    for i, ck in enumerate(found):
        try:
            state = load_checkpoint(ck / "best.pt", search.method)
            break
        except PosectlError:        # a checkpoint cut short when the trial was stopped: try an older one
            if i == len(found) - 1:
                raise
    exp = Experiment(out)
    exp.create(search.method, state["config"])
    shutil.copyfile(ck / "best.pt", exp.checkpoints / "best.pt")
    atomic_write_bytes(out / "trial.yaml", yaml.safe_dump({
        "search": str(search.path), "trial": t.id, "params": t.params, "metric": search.metric,
        "best": t.best, "best_epoch": state.get("best_epoch"), "epochs_run": t.epochs}, sort_keys=False).encode())
    return t, exp.checkpoints / "best.pt"


def plot_curve(trial: Trial, out: str | Path) -> Path:
    """One trial's training loss and validation metric per epoch, its best epoch marked."""
    from posectl.orchestrator.plots import learning_curves
    vals = [(r[trial.metric], r.get("epoch", i + 1)) for i, r in enumerate(trial.history) if trial.metric in r]
    best = (min(vals) if trial.mode == "min" else max(vals))[1] if vals else 0
    return learning_curves(trial.history, trial.metric, best, out, f"trial {trial.id} ({trial.state})")