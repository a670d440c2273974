"""posectl beside the user's own Ray (issue #28): Ray's address conventions, a cluster started on the
machine used and said, a stale address file ignored, and every command `posectl cluster up` prints run
exactly as printed."""
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from posectl.errors import ResourceError
from posectl.orchestrator import cluster

pytestmark = pytest.mark.ray


class FakeRay:
    def __init__(self):
        self.calls = []

    def init(self, **kw):
        self.calls.append(kw)

    def is_initialized(self):
        return False


@pytest.fixture
def fake_ray(monkeypatch):
    import ray
    fake = FakeRay()
    monkeypatch.setattr(ray, "init", fake.init)
    monkeypatch.setattr(ray, "is_initialized", fake.is_initialized)
    monkeypatch.setattr(cluster, "_check_reachable", lambda address, timeout_s=5.0: None)
    monkeypatch.setattr(cluster, "dashboard_url", lambda: "http://127.0.0.1:8265")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return fake


@pytest.mark.parametrize("address, running, expect, said", [
    (None, "10.0.0.5:6379", "10.0.0.5:6379", "already running on this machine"),   # the user's `ray start --head`
    (None, None, "local", "Ray dashboard"),                                           # nothing runs: a private Ray
    ("local", "10.0.0.5:6379", "local", "Ray dashboard"),                             # forced private
    ("auto", "10.0.0.5:6379", "10.0.0.5:6379", "Ray dashboard"),
    ("ray.example:6379", None, "ray.example:6379", "Ray dashboard"),
])
def test_the_address_follows_rays_conventions(fake_ray, monkeypatch, address, running, expect, said):
    monkeypatch.setattr(cluster, "running_local_cluster", lambda: running)
    lines = []
    conn = cluster.connect(address, say=lines.append)
    (call,) = fake_ray.calls
    assert call["address"] == expect and conn.started == (expect == "local")
    assert any(said in line for line in lines), lines
    if expect == "local":      # a private Ray: its own dashboard on loopback, its state API pointed at it
        assert call["include_dashboard"] and call["dashboard_host"] == "127.0.0.1"
        port = call["dashboard_port"]
        assert call["runtime_env"]["env_vars"]["RAY_API_SERVER_ADDRESS"] == f"http://127.0.0.1:{port}"
        assert "num_cpus" in call
    else:
        assert "num_cpus" not in call and "include_dashboard" not in call      # never for an existing cluster


def test_no_dashboard_and_auto_without_a_cluster(fake_ray, monkeypatch):
    monkeypatch.setattr(cluster, "running_local_cluster", lambda: None)
    with pytest.raises(ResourceError, match="no Ray cluster is running on this machine"):
        cluster.connect("auto")
    cluster.connect(None, dashboard=False)
    (call,) = fake_ray.calls
    assert call["include_dashboard"] is False and call["runtime_env"] == cluster.PRIVATE_RUNTIME_ENV


def test_a_stale_address_file_is_not_a_cluster(tmp_path, monkeypatch):
    """`cluster down` (or a crash) leaves /tmp/ray/ray_current_cluster behind; nothing answers there."""
    import socket
    with socket.socket() as s:           # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    assert cluster.ray_address_file() == tmp_path / "ray" / "ray_current_cluster"
    assert cluster.running_local_cluster() is None                     # no file
    (tmp_path / "ray").mkdir()
    cluster.ray_address_file().write_text(f"127.0.0.1:{port}")
    assert cluster.running_local_cluster() is None                     # a file, and nothing answers


LOOPBACK = ("127.0.0.1", "::1", "::ffff:7f00:1")

PRIVATE = """
import json, os, sys
os.environ.pop("RAY_ADDRESS", None)
from posectl.orchestrator import cluster, head
conn = cluster.connect(None, num_cpus=1)
import ray
@ray.remote
def f():
    return 1
assert ray.get(f.remote()) == 1
pids = set(cluster.session_processes(cluster.local_session_dir())) | {os.getpid()}
print(json.dumps({"started": conn.started, "dashboard": conn.dashboard, "listeners": head.listeners(pids)}))
ray.shutdown()
"""


def test_a_private_ray_listens_on_loopback_only(tmp_path):
    """The private Ray of `train` and `tune` (dashboard included): every listening socket of its
    processes is bound to loopback (cluster.keep_on_loopback)."""
    import json
    import shutil
    import tempfile
    short = tempfile.mkdtemp(prefix="pl", dir="/tmp")      # Ray's socket paths must stay under 107 bytes
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    env.update(RAY_TMPDIR=short, RAY_AUTH_TOKEN_PATH=str(tmp_path / "token"))   # no cluster file there
    try:
        out = subprocess.run([sys.executable, "-c", PRIVATE], capture_output=True, text=True, env=env)
    finally:
        shutil.rmtree(short, ignore_errors=True)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["started"] and res["dashboard"].startswith("http://127.0.0.1:")
    names = {r["process"] for r in res["listeners"]}
    assert {"gcs_server", "raylet", "dashboard"} <= names, res["listeners"]
    assert [r for r in res["listeners"] if r["address"] not in LOOPBACK] == []


def _printed_commands(text: str) -> list[str]:
    """The indented command lines of `posectl cluster up`'s output."""
    return [line.strip() for line in text.splitlines() if re.match(r"^  (posectl|curl|cat|RAY_AUTH_MODE=)", line)]


def test_cluster_up_prints_commands_that_work_as_printed(tmp_path, small_dataset):
    """`posectl cluster up`, then each command it prints, in a shell, as a user would paste them: posectl
    finds the cluster by itself (and says so), `--submit` runs as a Ray Job that succeeds, `cluster down`
    stops it, and the next `posectl train` starts its own Ray although Ray's address file is left behind."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update(POSECTL_HOME=str(tmp_path / "home"), RAY_AUTH_TOKEN_PATH=str(tmp_path / "token"),
               POSECTL_RUNS=str(tmp_path / "runs"), PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}")

    def sh(cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=env, cwd=tmp_path)

    up = sh("posectl cluster up --num-cpus 2")
    assert up.returncode == 0, up.stderr
    try:
        # every socket the head's processes listen on is on loopback (docs/security.md)
        status = sh("posectl cluster status")
        socks = re.findall(r"^  (\S+):(\d+)  (\S+)$", status.stdout, re.M)
        assert {"gcs_server", "raylet", "dashboard"} <= {p for _, _, p in socks}, status.stdout
        assert [s for s in socks if s[0] not in LOOPBACK] == [], status.stdout
        cmds = _printed_commands(up.stdout)
        assert cmds[-1] == "posectl cluster down" and any("--submit" in c for c in cmds), up.stdout
        for cmd in cmds[:-1]:
            out = sh(cmd)
            assert out.returncode == 0, (cmd, out.stdout[-1500:], out.stderr[-1500:])
            if cmd == "posectl train baseline --smoke-test":
                assert "using the Ray cluster already running on this machine" in out.stdout
            if cmd.startswith("curl"):
                assert '"ray_version"' in out.stdout
            if cmd.endswith("--submit"):
                job = re.search(r"Ray Job (\S+);", out.stdout).group(1)
                for _ in range(600):               # a hang guard only: the job takes ~30 s
                    status = sh("posectl cluster status").stdout
                    if f"{job}: SUCCEEDED" in status or f"{job}: FAILED" in status:
                        break
                    time.sleep(1)
                assert f"{job}: SUCCEEDED" in status, status
    finally:
        down = sh(cmds[-1] if cmds else "posectl cluster down")
    assert down.returncode == 0 and "stopped" in down.stdout
    again = sh("posectl train baseline --smoke-test")
    assert again.returncode == 0, again.stderr[-1500:]
    assert "already running" not in again.stdout and "Ray dashboard: http://127.0.0.1:" in again.stdout
    assert len(list((tmp_path / "runs").glob("*/checkpoints/best.pt"))) == 3       # on the cluster, as a job, alone
