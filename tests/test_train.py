"""Ray Train runs on CPU: 2 DDP workers training a baseline that clearly beats the mean-pose predictor;
faults (read-only storage, a killed worker, a second Ray, a SIGKILLed driver) and resumes that lose nothing.
Each fit costs ~15-30 s of Ray start-up here, so one run carries several checks."""
import json
import os

import numpy as np
import pytest

from posectl.core.metrics import mpjpe
from posectl.datasets.lifting import LiftingData
from posectl.datasets.store import PoseDataset
from posectl.errors import PosectlError, ResourceError
from posectl.orchestrator.experiment import Experiment
from posectl.orchestrator.train import train

from faults import after_each_epoch

pytestmark = pytest.mark.ray
TINY = {"backbone.width": 64, "batch_size": 64}


def test_two_worker_ddp_run_beats_the_mean_pose_on_held_out_subjects(ray_session, synthetic_source, tmp_path):
    """The embedded default (synthetic source, no data.path) through 2 DDP workers: each worker trains on
    its half, checkpoints and results are written, and the model clearly beats the mean-pose predictor."""
    out = train("baseline", [{"epochs": 4, "backbone.width": 512}], workers=2, runs_dir=tmp_path, name="ddp")
    exp = out.experiment
    hist = exp.history()
    assert [r["epoch"] for r in hist] == [1, 2, 3, 4]
    ds = PoseDataset(synthetic_source)
    assert hist[0]["train_samples"] == ds.manifest["splits"]["train"]["rows"] // 2  # each worker trained on its half
    assert (exp.checkpoints / "last.pt").is_file() and (exp.checkpoints / "best.pt").is_file()
    # two files, never one linked under two names: damage to last.pt must leave best.pt readable
    assert not os.path.samefile(exp.checkpoints / "last.pt", exp.checkpoints / "best.pt")
    assert exp.read_config()["config"]["epochs"] == 4
    res = json.loads((exp.root / "results.json").read_text())
    assert np.isfinite(res["test"]["mpjpe"]) and res["test"]["per_action"]
    assert res["best_epoch"] in (1, 2, 3, 4)
    # each worker validated its share of the sequences (merged): the best epoch's figure is the whole split's
    best_row = hist[res["best_epoch"] - 1]
    assert best_row["val_mpjpe"] == pytest.approx(res["val"]["mpjpe"], rel=1e-4)
    assert best_row["val_mpjpe_action_avg"] == pytest.approx(res["val"]["mpjpe_action_avg"], rel=1e-4)
    train_y = LiftingData(ds.load("train"), ds.layout).targets.numpy()
    test = LiftingData(ds.load("test"), ds.layout)
    mean_pose = np.broadcast_to(train_y.mean(0), test.targets.shape)
    trivial = 1000 * mpjpe(mean_pose, test.targets.numpy())
    assert out.results["test"]["mpjpe"] < 0.5 * trivial, (out.results["test"]["mpjpe"], trivial)
    # a private Ray is one machine: Ray Train's preemption watcher is left out (orchestrator/cluster.py)
    import ray
    classes = {a["ActorClassName"] for a in ray._private.state.actors().values()}
    assert "TrainController" in classes and "PreemptionWatcher" not in classes, classes
    # a run name is never reused silently
    with pytest.raises(PosectlError, match="already exists"):
        train("baseline", [{"epochs": 1}], runs_dir=tmp_path, name="ddp")


def test_two_worker_run_restarted_mid_run_equals_the_uninterrupted_run(ray_session, small_dataset, tmp_path,
                                                                       ledger, monkeypatch):
    """Rank 0 fails after epoch 2 and Ray Train restarts both workers from the epoch-2 checkpoint. Each
    rank continues its own random streams (shuffles, flips), saved per rank, so every epoch's figures
    equal those of the same run uninterrupted. (With rank 0's state restored on both ranks, as before,
    both workers drew the same shuffles and flips after the restart, and the figures differed.)"""
    cfg = [{**TINY, "data.path": str(small_dataset), "epochs": 4}]
    ref = train("baseline", cfg, workers=2, runs_dir=tmp_path, name="ref")
    ledger.fault()
    after_each_epoch(monkeypatch, _fail_once(str(tmp_path / "m"), 2, "raise"))
    out = train("baseline", cfg, workers=2, runs_dir=tmp_path, name="re", max_failures=1)
    assert (tmp_path / "m").exists()            # the failure happened
    hist, ref_hist = out.experiment.history(), ref.experiment.history()
    assert ledger.lost(_lost([r["epoch"] for r in hist], 4)) == 0
    for a, b in zip(hist, ref_hist, strict=True):
        assert (a["epoch"], a["train_loss_mm"], a["val_mpjpe"]) == (b["epoch"], b["train_loss_mm"], b["val_mpjpe"])
    assert out.results["test"]["mpjpe"] == ref.results["test"]["mpjpe"]
    ledger.recovered()


def _fail_once(marker, at_epoch, how):
    def hook(epoch, rank):
        if epoch == at_epoch and rank == 0 and not os.path.exists(marker):
            open(marker, "w").close()
            if how == "kill":
                os._exit(1)  # the worker process dies mid-run
            raise RuntimeError("injected failure")
    return hook


def _lost(epochs, n):
    """Epochs missing from or repeated in a run's history of n epochs."""
    return len(set(range(1, n + 1)) ^ set(epochs)) + len(epochs) - len(set(epochs))


def test_impossible_resource_plans_fail_fast(ray_session, small_dataset, tmp_path, ledger):
    ledger.bad_input(3)
    with pytest.raises(ResourceError, match=r"asked for 8 GPUs .* 0 GPUs"):
        train("baseline", [{"data.path": str(small_dataset)}], gpus=8, runs_dir=tmp_path)
    with pytest.raises(ResourceError, match=r"asked for 1 GPUs \(2 workers x \(1 CPU \+ 0.5 GPU\)\) .* 0 GPUs"):
        train("baseline", [{"data.path": str(small_dataset)}], workers=2, gpus_per_worker=0.5, runs_dir=tmp_path)
    with pytest.raises(ResourceError, match=r"asked for 6 CPUs .* 2 CPUs"):
        train("baseline", [{"data.path": str(small_dataset)}], workers=6, runs_dir=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing was created


def test_driver_killed_with_sigkill_resumes_and_reaps_its_ray(ray_session, small_dataset, tmp_path, ledger):
    import subprocess
    import sys
    import time

    from posectl.orchestrator import cluster
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": "local"}      # a private Ray, whatever runs
    proc = subprocess.Popen([sys.executable, "-m", "posectl", "train", "baseline", f"data.path={small_dataset}",
                             "epochs=12", "backbone.width=64", "batch_size=64", "--runs-dir", str(tmp_path),
                             "--name", "k", "--no-dashboard"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = tmp_path / "k" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    proc.kill()                       # SIGKILL: no chance to clean up
    ledger.fault()
    proc.wait()
    done = len(metrics.read_text().splitlines())
    assert 2 <= done < 12
    session = json.loads((tmp_path / "k" / ".ray_session.json").read_text())["session_dir"]
    out = train("baseline", [], runs_dir=tmp_path, name="k", resume=True)
    assert ledger.lost(_lost([r["epoch"] for r in out.experiment.history()], 12)) == 0
    assert [r["epoch"] for r in out.experiment.history()] == list(range(1, 13))   # every epoch exactly once
    assert cluster.session_processes(session) == []    # the killed driver's Ray was stopped
    assert np.isfinite(out.results["test"]["mpjpe"])
    ledger.recovered()


FOREIGN_RAY = """
import sys
from ray.cluster_utils import Cluster
c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})   # the machine's newest Ray, with a dashboard
print(c.address, flush=True)
sys.stdin.read()          # until stdin closes
c.shutdown()
"""


def _second_ray_during_the_run(start, epochs):
    """A fault hook: at the first epoch >= `start` this worker process sees, start a second Ray on this
    machine and wait for its dashboard; stop it after the last epoch. Every epoch from then on takes 2 s
    more, so the run outlives the placement-group cleaner's checks."""
    state = {}

    def hook(epoch, rank):
        import subprocess
        import sys
        import time
        import urllib.request
        if epoch >= start and "p" not in state:
            env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
            env.pop("RAY_API_SERVER_ADDRESS", None)
            state["p"] = p = subprocess.Popen([sys.executable, "-c", FOREIGN_RAY], stdin=subprocess.PIPE,
                                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
            p.stdout.readline()
            for _ in range(120):
                try:
                    urllib.request.urlopen("http://127.0.0.1:8265/api/v0/actors?limit=1", timeout=2)
                    break
                except OSError:
                    time.sleep(0.5)
        if "p" in state:
            time.sleep(2)
        if epoch == epochs and "p" in state:
            state["p"].stdin.close()
            state["p"].wait(timeout=60)
    return hook


def test_killed_worker_restarts_from_its_checkpoint_beside_a_second_ray(ray_session, small_dataset, tmp_path,
                                                                         ledger, monkeypatch):
    """Two faults in one run. (1) The worker process dies after epoch 2: Ray Train restarts it
    (max_failures=1) from the epoch-2 checkpoint. (2) Regression: a second Ray started on the machine
    during the run (its dashboard on 127.0.0.1:8265): Ray Train's placement-group cleaner asked that
    dashboard about our controller, was told it does not exist, and removed our workers' placement group
    ~10 s later. Every epoch must still run exactly once."""
    ledger.fault(2)
    kill = _fail_once(str(tmp_path / "m2"), 2, "kill")
    beside = _second_ray_during_the_run(3, 10)

    def hook(epoch, rank):
        kill(epoch, rank)
        beside(epoch, rank)
    after_each_epoch(monkeypatch, hook)
    out = train("baseline", [{**TINY, "data.path": str(small_dataset), "epochs": 10}], runs_dir=tmp_path,
                name="kill", max_failures=1)
    assert (tmp_path / "m2").exists()           # the worker was killed
    epochs = [r["epoch"] for r in out.experiment.history()]
    assert ledger.lost(_lost(epochs, 10)) == 0
    assert epochs == list(range(1, 11))
    assert np.isfinite(out.results["test"]["mpjpe"])
    ledger.recovered(2)


def _mount_tmpfs(path) -> bool:
    import subprocess
    path.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def _read_only_after(at_epoch, mnt, real):
    def hook(epoch, rank):
        if epoch != at_epoch or rank != 0:
            return
        if real:      # the storage really becomes read-only under the running job
            import subprocess
            subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        else:         # no permission to mount here: every later write fails as on a read-only mount
            import errno

            from posectl.orchestrator import experiment

            def refuse(path, write):
                raise OSError(errno.EROFS, "Read-only file system", str(path))
            experiment._atomic_write = refuse
    return hook


def test_interrupted_runs_resume_to_the_uninterrupted_result(ray_session, small_dataset, tmp_path, ledger,
                                                             monkeypatch):
    """Issue #10: the runs directory turns read-only mid-run -> one clear error naming the cause, the last
    good checkpoint intact and loadable; --resume may not change the config; with the storage writable
    again it finishes every epoch once, with the same validation and test figures as an uninterrupted run
    (in this process: run_local is the job's data, method and epoch loop without Ray)."""
    import subprocess

    from posectl.orchestrator.experiment import load_checkpoint
    from posectl.orchestrator.reporters import MemoryReporter
    from posectl.orchestrator.spec import RunSpec, run_local
    cfg = [{**TINY, "data.path": str(small_dataset), "epochs": 4}]
    ref = MemoryReporter()
    ref_results, _, _ = run_local(RunSpec.build("baseline", cfg), ref)
    mnt = tmp_path / "mnt"
    real = _mount_tmpfs(mnt)
    try:
        ledger.fault()
        with monkeypatch.context() as m:
            after_each_epoch(m, _read_only_after(2, mnt, real))
            with pytest.raises(PosectlError, match="Read-only file system.*last good checkpoint is intact"):
                train("baseline", cfg, runs_dir=mnt, name="ro")
        exp = Experiment(mnt / "ro")
        assert [r["epoch"] for r in exp.history()] == [1, 2]
        assert load_checkpoint(exp.checkpoints / "last.pt", "baseline")["epoch"] == 1      # 0-based: epoch 2
        if real:
            subprocess.run(["mount", "-o", "remount,rw", str(mnt)], check=True)
        ledger.bad_input()
        with pytest.raises(PosectlError, match="cannot change the config"):
            train("baseline", [{"epochs": 5}], runs_dir=mnt, name="ro", resume=True)
        out = train("baseline", [], runs_dir=mnt, name="ro", resume=True)
        hist = out.experiment.history()
        epochs = [r["epoch"] for r in hist]
        assert ledger.lost(_lost(epochs, 4)) == 0
        assert epochs == [1, 2, 3, 4]
        for a, b in zip(hist, ref.rows, strict=True):
            assert a["val_mpjpe"] == pytest.approx(b["val_mpjpe"], abs=1e-3)
        assert out.results["test"]["mpjpe"] == pytest.approx(ref_results["test"]["mpjpe"], abs=1e-3)
        ledger.recovered()
    finally:
        if real:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
