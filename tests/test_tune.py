"""Search spaces, and searches through Ray Tune + Optuna: end to end, multi-worker trials, resume."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
import torch
import yaml

from posectl.errors import ConfigError
from posectl.methods.base import Context
from posectl.orchestrator.experiment import Experiment
from posectl.orchestrator.spaces import load_space, packaged_spaces, validate_space

BASE = {"method": "baseline", "parameters": {"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}}


def test_every_shipped_space_validates():
    spaces = packaged_spaces()
    assert "baseline" in spaces
    for method, path in spaces.items():
        sp = load_space(path)
        assert sp.method == method and sp.metric.startswith("val_") and sp.parameters


@pytest.mark.parametrize("patch, message", [
    ({"colour": 1}, r"unknown key\(s\) colour"),
    ({"metric": "test_mpjpe"}, "must be a validation metric"),
    ({"mode": "best"}, "mode must be 'min' or 'max'"),
    ({"samples": 0}, "samples must be a positive integer"),
    ({"scheduler": {"name": "hyperband"}}, "scheduler must be 'asha' or 'none'"),
    ({"parameters": {"lr": {"type": "loguniform", "low": 1e-2, "high": 1e-4}}}, "empty range"),
    ({"parameters": {"lr": {"type": "loguniform", "low": 0, "high": 1e-4}}}, "log scale needs low > 0"),
    ({"parameters": {"lr": {"type": "gaussian", "low": 0, "high": 1}}}, "type must be one of"),
    ({"parameters": {"learning_rate": {"type": "uniform", "low": 0, "high": 1}}}, "has no such parameter"),
    ({"parameters": {"epochs": {"type": "int", "low": 1, "high": 2.5}}}, "epochs: expected int"),
    ({"parameters": {"backbone.name": {"type": "choice", "values": ["simple", "resnet"]}}}, "must be one of"),
    ({"parameters": {"backbone.receptive_field": {"type": "choice", "values": [9], "when": {"backbone.name": "videopose"}}}},
     "not an earlier choice parameter"),
    ({"parameters": {}}, "non-empty mapping"),
    ({"fixed": {"epochz": 3}}, "unknown parameter 'epochz'"),
])
def test_bad_spaces_fail_with_the_culprit(patch, message, ledger):
    ledger.bad_input()
    with pytest.raises(ConfigError, match=message):
        validate_space({**BASE, **patch}, "space.yaml")


def test_unsafe_yaml_tag_is_refused(tmp_path, ledger):
    ledger.bad_input()
    f = tmp_path / "s.yaml"
    f.write_text("method: !!python/name:os.system\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_space(f)


def test_conditional_parameters_compile_to_define_by_run():
    sp = validate_space({"method": "baseline", "parameters": {
        "backbone.name": {"type": "choice", "values": ["simple", "videopose"]},
        "backbone.receptive_field": {"type": "choice", "values": [9, 27], "when": {"backbone.name": "videopose"}},
        "backbone.width": {"type": "int", "low": 64, "high": 512, "log": True}}})
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    fn = sp.define_by_run()
    seen = set()
    for _ in range(20):
        t = study.ask()
        fn(t)
        study.tell(t, 0.0)
        assert ("backbone.receptive_field" in t.params) == (t.params["backbone.name"] == "videopose")
        assert 64 <= t.params["backbone.width"] <= 512
        seen.add(t.params["backbone.name"])
    assert seen == {"simple", "videopose"}


def _space(tmp_path, **kw):
    doc = {"method": "baseline", "samples": 4, "concurrent": 2,
           "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2},
           "resources": {"cpus": 1, "workers": 1},
           "fixed": {"epochs": 3, "backbone.width": 32, "batch_size": 64},
           "parameters": {"lr": {"type": "loguniform", "low": 3e-4, "high": 3e-3},
                          "backbone.dropout": {"type": "uniform", "low": 0.0, "high": 0.3}}}
    doc.update(kw)
    p = tmp_path / "space.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


@pytest.mark.ray
def test_search_end_to_end_then_export_and_eval(ray_session, small_dataset, tmp_path, capsys):
    from posectl.cli import main
    from posectl.orchestrator.trials import load_search
    from posectl.orchestrator.tune import tune_search

    db = f"sqlite:///{tmp_path / 'optuna.db'}"
    plan, grid = tune_search("baseline", space=_space(tmp_path, storage=db), storage_path=tmp_path / "tune",
                             name="s1", overrides={"data.path": str(small_dataset), "data.max_train_samples": 400},
                             verbose=0)
    assert len(grid) == 4 and grid.num_errors == 0
    study = optuna.load_study(study_name="s1", storage=db)   # what optuna-dashboard shows
    assert len(study.trials) == 4
    s = load_search("s1", tmp_path / "tune")
    assert len(s.trials) == 4 and len({t.id for t in s.trials}) == 4
    assert all(t.epochs >= 1 for t in s.trials) and all(t.state in ("completed", "stopped early") for t in s.trials)
    assert any((t.path / "events.out.tfevents").exists() or list(t.path.glob("events.out.tfevents*")) for t in s.trials)
    best = s.best()
    with pytest.raises(SystemExit) as e:
        main(["trials", "ls", "s1", "--storage-path", str(tmp_path / "tune")])
        raise SystemExit(0)
    assert e.value.code == 0 and best.id in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["trials", "show", "s1", best.id[:4], "--storage-path", str(tmp_path / "tune")])
        raise SystemExit(0)
    assert (best.path / "learning_curve.png").exists()
    with pytest.raises(SystemExit) as e:      # every trial's validation curve in one picture
        main(["trials", "plot", "s1", "--storage-path", str(tmp_path / "tune"), "--out", str(tmp_path / "s.png")])
        raise SystemExit(0)
    from PIL import Image
    assert e.value.code == 0 and set(Image.open(tmp_path / "s.png").text["Series"].split(", ")) == {t.id for t in s.trials}
    with pytest.raises(SystemExit) as e:
        main(["trials", "best", "s1", "--export", str(tmp_path / "best"), "--storage-path", str(tmp_path / "tune")])
        raise SystemExit(0)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["eval", str(tmp_path / "best" / "checkpoints" / "best.pt"), "--split", "val",
              "--json", str(tmp_path / "m.json")])
        raise SystemExit(0)
    assert e.value.code == 0
    got = json.loads((tmp_path / "m.json").read_text())["metrics"]["mpjpe"]
    assert got == pytest.approx(best.best, abs=0.01)  # eval of the export matches the table
    # one way to build a run: `posectl train` on the exported config sees the trial's rows (the same
    # max_train_samples subset) and draws the same numbers, so every epoch the trial ran repeats exactly
    with pytest.raises(SystemExit) as e:
        main(["train", "baseline", "-c", str(tmp_path / "best" / "config.yaml"), "--cpus-per-worker", "1",
              "--runs-dir", str(tmp_path / "runs"), "--name", "again"])
        raise SystemExit(0)
    assert e.value.code == 0
    again = Experiment(tmp_path / "runs" / "again").history()
    assert len(again) == 3 and len(best.history) >= 1
    for a, b in zip(again, best.history):
        assert (a["epoch"], a["train_loss_mm"], a["val_mpjpe"], a["val_p_mpjpe"]) == \
            (b["epoch"], b["train_loss_mm"], b["val_mpjpe"], b["val_p_mpjpe"])


def _dotted(d: dict, key: str):
    for part in key.split("."):
        d = d[part]
    return d


@pytest.mark.ray
@pytest.mark.timeout(600)  # a regression of the nested Tune + Train hang fails here instead of eating CI
def test_concurrent_multiworker_trials(ray_session, small_dataset, tmp_path):
    """Two trials of 2 Train workers each, side by side on 2 CPUs (0.49 CPU a worker: the groups and the
    trial functions' 0.01 CPU each fit at once), selected by a metric other than val_mpjpe; the best
    trial exports (its checkpoints live with the Train job, not with Tune) and loads."""
    from posectl.orchestrator.experiment import load_checkpoint
    from posectl.orchestrator.trials import export_best, load_search
    from posectl.orchestrator.tune import tune_search
    sp = _space(tmp_path, samples=2, concurrent=2, resources={"cpus": 0.49, "workers": 2},
                metric="val_pck150", mode="max",
                scheduler={"name": "none"}, fixed={"epochs": 2, "backbone.width": 32, "batch_size": 64})
    plan, grid = tune_search("baseline", space=sp, storage_path=tmp_path / "tune", name="mw",
                             overrides={"data.path": str(small_dataset)}, verbose=0)
    assert len(grid) == 2 and grid.num_errors == 0
    assert all(r.metrics["training_iteration"] == 2 and np.isfinite(r.metrics["val_mpjpe"]) for r in grid)
    assert all("best_val_pck150" in r.metrics for r in grid)    # the workers select by the space's metric
    s = load_search("mw", tmp_path / "tune")
    for t in s.trials:    # the Train jobs keep only their latest checkpoint
        assert len([d for d in (s.path / "_train" / f"train-{t.id}").glob("checkpoint_*") if d.is_dir()]) == 1
    best, ckpt = export_best(s, tmp_path / "best")
    assert best.id == max(s.trials, key=lambda t: t.best).id
    state = load_checkpoint(ckpt, "baseline")
    assert state["method_state"]["model"]
    assert state["config"]["epochs"] == 2 and state["config"]["backbone"]["width"] == 32
    assert state["config"]["data"]["path"] == str(small_dataset)
    for key, value in best.params.items():
        assert _dotted(state["config"], key) == pytest.approx(value)
    pck = [r["val_pck150"] for r in best.history]
    assert state["best_epoch"] == best.history[pck.index(max(pck))]["epoch"]
    assert yaml.safe_load((tmp_path / "best" / "trial.yaml").read_text())["trial"] == best.id


@pytest.mark.ray
def test_plans_that_cannot_run_are_refused(ray_session, small_dataset, tmp_path, ledger):
    ledger.bad_input(2)
    from posectl.errors import ResourceError
    from posectl.orchestrator.tune import tune_search
    with pytest.raises(ResourceError, match=r"asked for 4 CPUs .* x 2 trials\) but the cluster has .* 2 CPUs"):
        tune_search("baseline", space=_space(tmp_path, resources={"cpus": 1, "workers": 2}),
                    storage_path=tmp_path / "t", overrides={"data.path": str(small_dataset)})
    with pytest.raises(ResourceError, match="GPUs"):
        tune_search("baseline", space=_space(tmp_path), gpus_per_trial=1, storage_path=tmp_path / "t",
                    overrides={"data.path": str(small_dataset)})
    # worker groups that fill the cluster exactly leave nothing for the trial functions' own sliver of CPU:
    # the group would wait for a placement (Ray Train retrying the start) for ever
    ledger.bad_input()

    def never_run(plan):
        pytest.fail(f"a plan that cannot be placed was accepted: {plan.lines()}")
    with pytest.raises(ResourceError, match=r"asked for 2\.01 CPUs \(2 workers x \(1 CPU\) x 1 trial = 2, plus 0\.01 "
                                            r"per trial .*\) but the cluster has 2 CPUs"):
        tune_search("baseline", space=_space(tmp_path, concurrent=1, resources={"cpus": 1, "workers": 2}),
                    storage_path=tmp_path / "t", overrides={"data.path": str(small_dataset)}, on_plan=never_run)


@pytest.mark.ray
def test_interrupted_search_resumes_without_retraining(ray_session, small_dataset, tmp_path, ledger):
    from posectl.orchestrator.trials import load_search
    from posectl.orchestrator.tune import tune_search
    sp = _space(tmp_path, samples=4, concurrent=1, scheduler={"name": "none"})
    storage = tmp_path / "tune"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": "local"}      # a private Ray, whatever runs
    proc = subprocess.Popen([sys.executable, "-m", "posectl", "tune", "baseline", "--space", str(sp), "--name", "r",
                             "--storage-path", str(storage), f"data.path={small_dataset}", "--no-dashboard"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done_before = {}
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            finished = {d.name: len((d / "result.json").read_text().splitlines())
                        for d in storage.glob("r/trial_*") if (d / "result.json").exists()
                        and len((d / "result.json").read_text().splitlines()) >= 3}
            if len(finished) >= 2:
                done_before = finished
                break
            time.sleep(1)
        assert done_before, "the search never finished two trials"
        proc.send_signal(signal.SIGINT)   # Ctrl-C
        ledger.fault()
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, "an interrupted search must not exit as if it had finished"
    # the driver noted its private Ray, so a --resume after a SIGKILL could stop what it left running
    assert json.loads((storage / "r" / ".ray_session.json").read_text())["session_dir"]
    plan, grid = tune_search("baseline", storage_path=storage, name="r", resume=True, verbose=0)
    s = load_search("r", storage)
    assert ledger.lost(abs(4 - len(s.trials)) + len(s.trials) - len({t.id for t in s.trials})) == 0
    assert len(s.trials) == 4 and len({t.id for t in s.trials}) == 4     # every trial exactly once
    assert all(t.state == "completed" for t in s.trials)
    for name, lines in done_before.items():  # finished trials were not trained again
        assert len((storage / "r" / name / "result.json").read_text().splitlines()) == lines
    ledger.recovered()


def test_space_round_trips_through_its_saved_form():
    sp = validate_space({**BASE, "parameters": {"backbone.dropout": {"type": "uniform", "low": 0.0, "high": 0.3},
                                                "backbone.width": {"type": "int", "low": 64, "high": 256}}})
    again = validate_space(sp.to_dict())
    assert [vars(p) for p in again.parameters] == [vars(p) for p in sp.parameters]


@dataclasses.dataclass
class _LoopData:
    eval_stride: int = 1
    val_split: str = "val"
    test_split: str = "test"


@dataclasses.dataclass
class _LoopConfig:
    epochs: int = 3
    data: _LoopData = dataclasses.field(default_factory=_LoopData)


class _ScriptedMethod:
    """Validation metrics read from a script, one row per epoch; its "weights" are the epoch they came from."""
    name = "scripted"

    def __init__(self, rows):
        self.rows, self.epoch, self.loaded = rows, -1, None
        self.gen = torch.Generator()

    def autocast(self):
        import contextlib
        return contextlib.nullcontext()

    def train_epoch(self, epoch):
        self.epoch = epoch
        return {"train_loss_mm": 1.0}

    def evaluate(self, data, stride=1, detailed=False):
        return dict(self.rows[self.epoch])

    def state_dict(self):
        return {"model": {"trained_epochs": self.epoch + 1}}

    def load_state_dict(self, sd):
        self.epoch = sd["model"]["trained_epochs"] - 1
        self.loaded = sd["model"]["trained_epochs"]


class _Recorder:
    final_eval = True

    def __init__(self, stop_after=None):
        self.improved, self.best, self.states, self.stop_after = [], None, [], stop_after

    def epoch(self, row, state_fn, improved):
        self.improved.append(improved)
        self.states.append(state_fn())
        if improved:
            self.best = self.states[-1]

    def best_state(self):
        return self.best

    def finish(self, results):
        pass


# val_mpjpe is lowest after epoch 2; val_pck150 (higher is better) is highest after epoch 3
_ROWS = [{"mpjpe": 50.0, "pck150": 60.0}, {"mpjpe": 40.0, "pck150": 70.0}, {"mpjpe": 45.0, "pck150": 80.0}]


@pytest.mark.parametrize("kw, best_epoch, pattern, best", [
    ({}, 2, [True, True, False], 40.0),                                         # train runs: val_mpjpe, min
    ({"metric": "val_pck150", "mode": "max"}, 3, [True, True, True], 80.0),     # a search's metric
])
def test_run_epochs_selects_the_best_epoch_by_the_given_metric(kw, best_epoch, pattern, best):
    from posectl.orchestrator.loop import run_epochs
    method, rec = _ScriptedMethod(_ROWS), _Recorder()
    data = {"train": SimpleNamespace(layout=SimpleNamespace(name="h36m17")), "val": None}
    res = run_epochs(method, _LoopConfig(), data, Context(), None, rec, **kw)
    assert rec.improved == pattern
    assert res["best_epoch"] == best_epoch and method.loaded == best_epoch   # final weights: the selected epoch's
    last = rec.states[-1]
    assert last["best_epoch"] == best_epoch and last["best_metric"]["value"] == best
    assert last["best_val_mpjpe"] == _ROWS[best_epoch - 1]["mpjpe"]         # val_mpjpe of the selected epoch


@pytest.mark.parametrize("kw, best_epoch", [({}, 2), ({"metric": "val_pck150", "mode": "max"}, 3)])
def test_run_epochs_resumes_states_saved_before_the_metric_was_configurable(kw, best_epoch):
    """A state written by the old loop has "best_val_mpjpe" and no "best_metric"."""
    from posectl.orchestrator.loop import run_epochs
    data = {"train": SimpleNamespace(layout=SimpleNamespace(name="h36m17")), "val": None}
    ctx = Context()
    first = _Recorder()
    run_epochs(_ScriptedMethod(_ROWS), _LoopConfig(epochs=2), data, ctx, None, first)
    old = {k: v for k, v in first.states[-1].items() if k != "best_metric"}
    rec = _Recorder()
    rec.best = first.best
    res = run_epochs(_ScriptedMethod(_ROWS), _LoopConfig(), data, ctx, old, rec, **kw)
    assert [r["epoch"] for r in res["history"]] == [1, 2, 3]
    assert rec.improved == [best_epoch == 3] and res["best_epoch"] == best_epoch
