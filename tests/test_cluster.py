"""`posectl cluster up/status/down` (token auth, loopback) and a search on a two-node cluster."""
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray


def _last_json(stdout: str) -> dict:
    """The script's JSON line: Ray may print worker log lines to the driver's stdout after it."""
    return json.loads(next(line for line in reversed(stdout.strip().splitlines()) if line.startswith("{")))


def _cluster_env() -> dict:
    """The environment of a script that builds its own ray.cluster_utils.Cluster (no RAY_ADDRESS)."""
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


def _session_procs(session):
    from posectl.orchestrator.cluster import session_processes
    return session_processes(session)


def test_non_loopback_addresses_warn_before_anything_starts(tmp_path, monkeypatch):
    """`--dashboard-host 0.0.0.0` and `--host ADDR` each print their warning before `ray start` runs (here
    `ray start` is stopped at once: the warnings are what is checked; tests/test_ray_native.py runs the
    real head and checks its token, its sockets and what `down` leaves)."""
    from posectl.orchestrator import head
    monkeypatch.setenv("POSECTL_HOME", str(tmp_path))
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "ray" / "auth_token"))   # a machine without a token
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)

    class Stop(Exception):
        pass

    def no_start(cmd, **kw):
        raise Stop(cmd)
    monkeypatch.setattr(head.subprocess, "Popen", no_start)
    warnings = []
    with pytest.raises(Stop) as cmd:
        head.up(port=6399, dashboard_port=8299, dashboard_host="0.0.0.0", host="10.1.2.3", num_cpus=1,
                warn=warnings.append)
    assert len(warnings) == 2 and "anyone who can reach that port can run code" in warnings[0]
    assert "10.1.2.3:6399" in warnings[1] and "--node-ip-address=10.1.2.3" in cmd.value.args[0]
    assert head.token_path().stat().st_mode & 0o777 == 0o600                # created, owner-only
    assert head.read_state() is None


SCRIPT = textwrap.dedent("""
    import json, os, sys
    os.environ["RAY_AUTH_MODE"] = "disabled"
    from ray.cluster_utils import Cluster
    import ray
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    ray.init(address=c.address)
    from posectl.orchestrator.tune import tune_search
    plan, grid = tune_search("baseline", space=sys.argv[1], storage_path=sys.argv[2], name="mn",
                             overrides={"data.path": sys.argv[3]}, verbose=0)
    print(json.dumps({"nodes": len(ray.nodes()), "errors": grid.num_errors,
                      "trial_nodes": sorted({r.metrics["node_id"] for r in grid})}))
    ray.shutdown(); c.shutdown()
""")


def test_search_on_two_nodes_uses_both(tmp_path, small_dataset):
    import yaml
    space = tmp_path / "s.yaml"
    space.write_text(yaml.safe_dump({
        "method": "baseline", "samples": 4, "concurrent": 2, "scheduler": {"name": "none"},
        "resources": {"cpus": 1, "workers": 1}, "fixed": {"epochs": 1, "backbone.width": 32, "batch_size": 64},
        "parameters": {"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}}))
    script = tmp_path / "mn.py"
    script.write_text(SCRIPT)
    out = subprocess.run([sys.executable, str(script), str(space), str(tmp_path / "storage"), str(small_dataset)],
                         capture_output=True, text=True, timeout=600, env=_cluster_env())
    assert out.returncode == 0, out.stderr[-2000:]
    res = _last_json(out.stdout)
    assert res["nodes"] == 2 and res["errors"] == 0
    assert len(res["trial_nodes"]) == 2        # trials were placed on both nodes
    trials = list((tmp_path / "storage" / "mn").glob("trial_*/result.json"))
    assert len(trials) == 4                     # every result landed in the shared storage path


NODE_LOSS = textwrap.dedent("""
    import json, os, sys, threading, time
    os.environ["RAY_AUTH_MODE"] = "disabled"
    from ray.cluster_utils import Cluster
    import ray
    space, storage, data, marker = sys.argv[1:5]
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = c.add_node(num_cpus=1)
    c.wait_for_nodes()
    ray.init(address=c.address)
    victim = worker.node_id

    def hold_on_victim(epoch):
        # runs in the trial after each reported (and checkpointed) epoch: a trial on the worker node
        # announces itself after epoch 1 and then keeps running there until the node disappears
        if ray.get_runtime_context().get_node_id() == victim and epoch == 1 and not os.path.exists(marker):
            open(marker, "w").write(victim)
            time.sleep(300)

    def remove_when_marked():
        while not os.path.exists(marker):
            time.sleep(0.2)
        c.remove_node(worker, allow_graceful=False)   # the node dies with its trial on it

    threading.Thread(target=remove_when_marked, daemon=True).start()
    import posectl.orchestrator.tune as tune_mod
    inner = tune_mod.single_worker_trial

    def trial(params, spec, datasets, blocks, metric, mode):
        # the fault, injected into the trial's process: after each reported epoch, hold_on_victim
        from posectl.orchestrator.reporters import SearchReporter
        report = SearchReporter.epoch

        def epoch(self, row, state_fn, improved):
            report(self, row, state_fn, improved)
            hold_on_victim(row["epoch"])
        SearchReporter.epoch = epoch
        inner(params, spec, datasets, blocks, metric, mode)
    tune_mod.single_worker_trial = trial
    plan, grid = tune_mod.tune_search("baseline", space=space, storage_path=storage, name="nl",
                                      overrides={"data.path": data}, verbose=0)
    for _ in range(120):           # the GCS marks a killed node dead after its health checks fail
        if sum(n["Alive"] for n in ray.nodes()) == 1:
            break
        time.sleep(1)
    print(json.dumps({"victim": victim, "alive": sum(n["Alive"] for n in ray.nodes()), "errors": grid.num_errors}))
    ray.shutdown(); c.shutdown()
""")


def test_node_loss_retries_its_trial_elsewhere_and_the_search_completes(tmp_path, small_dataset, ledger):
    """Issue #10: a node removed while one of its trials runs; the trial resumes from its checkpoint on
    the surviving node, every trial finishes and no reported epoch is lost or repeated."""
    import yaml
    space = tmp_path / "s.yaml"
    space.write_text(yaml.safe_dump({
        "method": "baseline", "samples": 3, "concurrent": 2, "scheduler": {"name": "none"},
        "resources": {"cpus": 1, "workers": 1}, "fixed": {"epochs": 3, "backbone.width": 32, "batch_size": 64},
        "parameters": {"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}}))
    script, marker = tmp_path / "nl.py", tmp_path / "node-marked"
    script.write_text(NODE_LOSS)
    ledger.fault()
    out = subprocess.run([sys.executable, str(script), str(space), str(tmp_path / "storage"), str(small_dataset),
                          str(marker)], capture_output=True, text=True, timeout=900, env=_cluster_env())
    assert out.returncode == 0, out.stderr[-3000:]
    res = _last_json(out.stdout)
    assert marker.exists() and res["alive"] == 1 and res["errors"] == 0
    rows = {d.name: [json.loads(line) for line in (d / "result.json").read_text().splitlines()]
            for d in (tmp_path / "storage" / "nl").glob("trial_*")}
    assert len(rows) == 3
    moved = [r for r in rows.values() if len({x["node_id"] for x in r}) == 2]
    assert len(moved) == 1, {k: [(x["epoch"], x["node_id"][:6]) for x in v] for k, v in rows.items()}
    assert [x["node_id"] for x in moved[0]][0] == res["victim"]         # started on the lost node ...
    assert [x["node_id"] for x in moved[0]][-1] != res["victim"]        # ... finished on the survivor
    # every trial reports epochs 1..3 exactly once (the moved one resumed at epoch 2 from its checkpoint)
    lost = sum(len(set(range(1, 4)) ^ {x["epoch"] for x in r}) + len(r) - len({x["epoch"] for x in r})
               for r in rows.values())
    assert ledger.lost(lost) == 0
    ledger.recovered()


def test_cluster_down_never_signals_a_reused_pid(tmp_path, monkeypatch):
    """After a reboot or a crashed head, the recorded PID may belong to another process of this user:
    `down` must leave that process alone (and still forget the state)."""
    from posectl.orchestrator import head
    monkeypatch.setenv("POSECTL_HOME", str(tmp_path))
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    try:
        st = {"pid": other.pid, "pid_start": "1", "address": "127.0.0.1:1", "session_dir": None}
        head.state_file().write_text(json.dumps(st))
        assert head.read_state() is None                 # not the recorded `ray start`
        assert head.down(timeout_s=1) is True
        assert other.poll() is None, "down killed a process that reused the recorded PID"
        assert not head.state_file().exists()
        st["pid_start"] = head._start_time(other.pid)      # the same process: it is ours
        head.state_file().write_text(json.dumps(st))
        assert head.read_state() == st
    finally:
        other.kill()
        other.wait()


def test_a_zombie_is_neither_a_running_head_nor_a_running_driver(tmp_path, monkeypatch):
    """An init that reaps nothing (many containers; this VM's) leaves a stopped `ray start` or a killed
    driver a zombie: it is no running cluster, and a resume stops what the driver left. `ray start` runs
    without Ray's SIGTERM drain (its raylet stops with it), unless the user set one: with it, `cluster
    down` waited 15 s for each node."""
    from posectl.orchestrator import cluster, head
    monkeypatch.setenv("POSECTL_HOME", str(tmp_path))
    reaped = []
    monkeypatch.setattr(cluster, "reap", lambda session, *a: reaped.append(session) or 0)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        for _ in range(600):                  # a hang guard: the child exits at once and stays unreaped
            if Path(f"/proc/{gone.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                break
            time.sleep(0.05)
        st = {"pid": gone.pid, "pid_start": head._start_time(gone.pid), "address": "127.0.0.1:1", "session_dir": None}
        head.state_file().write_text(json.dumps(st))
        assert not head.pid_running(gone.pid) and head.read_state() is None
        (tmp_path / cluster.SESSION_FILE).write_text(json.dumps({"session_dir": "/tmp/ray/s", "driver_pid": gone.pid}))
        cluster.reap_orphans(tmp_path)
        assert reaped == ["/tmp/ray/s"]
    finally:
        gone.wait()
    monkeypatch.delenv("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", raising=False)
    assert head._ray_env()["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] == "0"
    monkeypatch.setenv("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "20")
    assert head._ray_env()["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] == "20"


TRAIN_TWO_NODES = textwrap.dedent("""
    import json, os, sys
    os.environ["RAY_AUTH_MODE"] = "disabled"
    from ray.cluster_utils import Cluster
    import ray
    from posectl.errors import PosectlError
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    ray.init(address=c.address)
    from posectl.orchestrator.train import train
    shared, local, data = sys.argv[1:4]
    layers = [{"data.path": data, "epochs": 2, "backbone.width": 32, "batch_size": 64}]
    out = {"nodes": len(ray.nodes())}
    try:
        train("baseline", layers, workers=2, cpus_per_worker=1, runs_dir=local, name="refused")
    except PosectlError as e:
        out["refused"] = str(e)
    res = train("baseline", layers, workers=2, cpus_per_worker=1, storage_path=shared, name="both")
    out.update(best_epoch=res.results["best_epoch"], test_mpjpe=res.results["test"]["mpjpe"],
               root=str(res.experiment.root))
    print(json.dumps(out))
    ray.shutdown(); c.shutdown()
""")


def test_train_on_two_nodes_needs_and_uses_shared_storage(tmp_path, small_dataset):
    """A run on a two-node cluster: refused in one line with a node-local (default) runs directory; with
    --storage-path on storage both nodes see (checked by a task on each node), its two workers (one per
    node) train and the driver reads the results from there."""
    script = tmp_path / "tn.py"
    script.write_text(TRAIN_TWO_NODES)
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "shared"), str(tmp_path / "local"),
                          str(small_dataset)], capture_output=True, text=True, timeout=600, env=_cluster_env())
    assert out.returncode == 0, out.stderr[-2000:]
    res = _last_json(out.stdout)
    assert res["nodes"] == 2 and "--storage-path" in res["refused"] and "2 nodes" in res["refused"]
    assert not (tmp_path / "local" / "refused").exists()          # nothing was created for the refused run
    assert res["best_epoch"] in (1, 2) and res["test_mpjpe"] > 0
    assert (tmp_path / "shared" / "both" / "checkpoints" / "best.pt").is_file()
    assert not list((tmp_path / "shared").glob(".posectl-shared-*"))      # the marker is removed


def test_a_second_node_joins_with_the_token(tmp_path, monkeypatch):
    """`cluster up --host ADDR` (warned), then `cluster join ADDR:PORT --token-file` from another posectl home
    (here the same machine): `status` lists both nodes with their CPUs; `down` on each stops its own node."""
    from posectl.orchestrator import head
    from ray._private.services import node_ip_address_from_perspective
    ip = node_ip_address_from_perspective()
    if ip in head.LOOPBACK:
        pytest.skip("this machine has no address besides loopback")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    env.update(RAY_AUTH_TOKEN_PATH=str(tmp_path / "head_token"), PATH=f"{os.path.dirname(sys.executable)}:{env['PATH']}")

    def sh(cmd, home):
        return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env={**env, "POSECTL_HOME": str(tmp_path / home)})

    up = sh(f"posectl cluster up --host {ip} --port 6396 --dashboard-port 8296 --num-cpus 1", "head")
    assert up.returncode == 0, up.stderr
    try:
        assert "listens on" in up.stderr and f"{ip}:6396" in up.stdout
        (tmp_path / "copied").write_text((tmp_path / "head_token").read_text())        # handed over
        joined = sh(f"posectl cluster join {ip}:6396 --token-file {tmp_path / 'copied'} --num-cpus 1", "worker")
        assert joined.returncode == 0, joined.stderr
        for _ in range(60):                       # a hang guard: the node registers within seconds
            st = sh("posectl cluster status", "head").stdout
            if "2 node(s)" in st:
                break
            time.sleep(1)
        assert "2 node(s), 2 CPUs" in st and st.count("1 CPUs, 0 GPUs") == 2, st
        assert "worker node of" in sh("posectl cluster status", "worker").stdout
    finally:
        sh("posectl cluster down", "worker")
        sh("posectl cluster down", "head")
    bad = sh(f"posectl cluster join {ip}:6396 --token-file {tmp_path / 'none'}", "worker2")
    assert bad.returncode == 2 and "no cluster token" in bad.stderr
