"""posectl beside the user's own Ray (issue #28): Ray's address conventions, a cluster started on the
machine used and said, a stale address file ignored, and every command `posectl cluster up` prints run
exactly as printed."""
import contextlib
import os
import re
import socket
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


def test_the_train_controller_polls_often_unless_the_user_says_otherwise(fake_ray, monkeypatch):
    """A Train worker's report waits for the controller's next poll (docs/cluster.md): posectl lowers Ray's
    2 s to 0.25 s for the drivers it runs, and keeps a value the user set."""
    monkeypatch.setattr(cluster, "running_local_cluster", lambda: None)
    monkeypatch.delenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", raising=False)
    cluster.connect(None)
    assert os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "0.25"
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "3")
    cluster.connect(None)
    assert os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "3"


def test_a_private_ray_leaves_out_the_preemption_watcher_unless_the_user_asks(monkeypatch):
    """One machine has no node to drain: a private Ray's workers (Ray Train's controller among them) get
    RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0; a value in the driver's environment is the one Ray Train hands
    its controller."""
    from ray.train.v2._internal.constants import get_env_vars_to_propagate
    key = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
    assert cluster.PRIVATE_RUNTIME_ENV["env_vars"][key] == cluster.private_runtime_env(8265)["env_vars"][key] == "0"
    assert cluster.private_runtime_env(8265)["env_vars"]["RAY_API_SERVER_ADDRESS"] == "http://127.0.0.1:8265"
    monkeypatch.setenv(key, "1")
    assert get_env_vars_to_propagate()[key] == "1"


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


PORT, DASHBOARD_PORT = 6391, 8291


@pytest.fixture(scope="module")
def head_cluster(tmp_path_factory):
    """`posectl cluster up`, as a user types it, with its own home, token and runs directory; the tests
    below run what it printed. Stopped at the end whatever happened."""
    tmp = tmp_path_factory.mktemp("up")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update(POSECTL_HOME=str(tmp / "home"), RAY_AUTH_TOKEN_PATH=str(tmp / "token"),
               POSECTL_RUNS=str(tmp / "runs"), PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}")

    def sh(cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=env, cwd=tmp)

    # not Ray's default ports: a `ray start --head` of the user may hold them (the suite must pass beside it);
    # hold the dashboard agent's default port as another Ray would (its job API then needs another one)
    held = socket.socket()
    with contextlib.suppress(OSError):
        held.bind(("127.0.0.1", 52365))
        held.listen()
    up = sh(f"posectl cluster up --num-cpus 2 --port {PORT} --dashboard-port {DASHBOARD_PORT}")
    assert up.returncode == 0, up.stderr
    state = {"sh": sh, "tmp": tmp, "up": up.stdout, "cmds": _printed_commands(up.stdout)}
    yield state
    sh("posectl cluster down")
    held.close()


def test_cluster_up_prints_commands_that_work_as_printed(head_cluster):
    """Each command `cluster up` printed, in a shell, as a user would paste them: posectl finds the cluster
    by itself (and says so), `--submit` runs as a Ray Job that succeeds; every socket of the head is on
    loopback."""
    sh, cmds = head_cluster["sh"], head_cluster["cmds"]
    assert (head_cluster["tmp"] / "token").stat().st_mode & 0o777 == 0o600      # created for it, owner-only
    again = sh(f"posectl cluster up --port {PORT + 1} --dashboard-port {DASHBOARD_PORT + 1}")
    assert again.returncode == 2 and "already running" in again.stderr            # one head per posectl home
    status = sh("posectl cluster status")
    assert "answers 401 without the token, 200 with it" in status.stdout
    socks = re.findall(r"^  (\S+):(\d+)  (\S+)$", status.stdout, re.M)
    assert {"gcs_server", "raylet", "dashboard"} <= {p for _, _, p in socks}, status.stdout
    assert [s for s in socks if s[0] not in LOOPBACK] == [], status.stdout      # docs/security.md
    assert cmds[-1] == "posectl cluster down" and any("--submit" in c for c in cmds), head_cluster["up"]
    for cmd in cmds[:-1]:
        out = sh(cmd)
        assert out.returncode == 0, (cmd, out.stdout[-1500:], out.stderr[-1500:])
        if cmd == "posectl train baseline --smoke-test":
            assert "using the Ray cluster already running on this machine" in out.stdout
        if cmd.startswith("curl"):
            assert '"ray_version"' in out.stdout
        if cmd.endswith("--submit"):
            name, job = re.search(r"submitted the run '(\S+)' as Ray Job (\S+);", out.stdout).groups()
            results = head_cluster["tmp"] / "runs" / name / "results.json"
            for i in range(600):               # a hang guard only: the job takes ~30 s
                if results.exists() or i % 10 == 9:      # `cluster status` takes a CPU-second: asked rarely
                    status = sh("posectl cluster status").stdout
                    if f"{job}: SUCCEEDED" in status or f"{job}: FAILED" in status:
                        break
                time.sleep(1)
            assert f"{job}: SUCCEEDED" in status, status
            head_cluster.update(job=job, run=name)
    assert len(list((head_cluster["tmp"] / "runs").glob("*/checkpoints/best.pt"))) == 2    # on the cluster, as a job


def test_the_dashboard_shows_the_job_and_the_run_in_a_browser(head_cluster):
    """Headless Chromium, logged in with the token: the submitted job is in the Jobs view, and the run it
    trained is listed by Ray Train's state API (RAY_TRAIN_ENABLE_STATE_TRACKING; the dashboard bundle of
    Ray 2.60 has no Train page). The Jobs view's screenshot is the README's (POSECTL_SCREENSHOTS=docs/img)."""
    from dashboard_browser import browser_missing, open_dashboard, screenshot, wait_for_text
    why = browser_missing()
    if why:
        pytest.skip(f"no headless browser: {why}")
    if "job" not in head_cluster:
        pytest.skip("needs the job submitted by test_cluster_up_prints_commands_that_work_as_printed")
    url = f"http://127.0.0.1:{DASHBOARD_PORT}"
    token = (head_cluster["tmp"] / "token").read_text().strip()
    driver = open_dashboard(url, token)
    try:
        jobs = wait_for_text(driver, f"{url}/#/jobs", [head_cluster["run"], "SUCCEEDED"])
        assert jobs.count("SUCCEEDED") == 2, jobs[-3000:]     # the two runs' drivers; `cluster status` adds none
        shot = screenshot(driver, head_cluster["tmp"] / "dashboard-jobs.png")
        assert head_cluster["run"] in jobs and "SUCCEEDED" in jobs, jobs[-2000:]        # its Name column
        assert "Authentication Token Required" not in jobs
        runs = wait_for_text(driver, f"{url}/api/train/v2/runs/v1", [f"train-{head_cluster['run']}"])
        assert f'"name":"train-{head_cluster["run"]}"' in runs and '"status":"FINISHED"' in runs, runs[:2000]
        denied = open_dashboard(url, None)
        try:
            assert "Unauthorized" in wait_for_text(denied, f"{url}/api/train/v2/runs/v1", ["Unauthorized"], tries=3)
        finally:
            denied.quit()
    finally:
        driver.quit()
    from PIL import Image
    with Image.open(shot) as im:
        assert im.size[0] >= 1000
    target = os.environ.get("POSECTL_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        (Path(target) / "dashboard-jobs.png").write_bytes(shot.read_bytes())


def test_after_cluster_down_a_run_starts_its_own_ray(head_cluster):
    """`cluster down` as printed; Ray's address file stays behind, and the next run ignores it."""
    sh = head_cluster["sh"]
    import json
    st = json.loads((head_cluster["tmp"] / "home" / "cluster.json").read_text())
    down = sh(head_cluster["cmds"][-1])
    assert down.returncode == 0 and "stopped" in down.stdout
    time.sleep(1)
    assert cluster.session_processes(st["session_dir"]) == []          # nothing of the head is left running
    again = sh("posectl train baseline --smoke-test")
    assert again.returncode == 0, again.stderr[-1500:]
    assert "already running" not in again.stdout and "Ray dashboard: http://127.0.0.1:" in again.stdout


def test_the_default_worker_fits_a_smaller_cluster(monkeypatch):
    """The default worker takes this machine's cores; on a running cluster with smaller nodes it takes a node
    (half of a 1-CPU node: a whole one leaves Ray Train unable to start, measured)."""
    from posectl.orchestrator.cluster import Resources, fit_default_worker
    for biggest, expect in ((1.0, 0.5), (2.0, 2.0), (8.0, 4.0)):
        monkeypatch.setattr(cluster, "cluster_summary", lambda b=biggest: {"max_node_cpus": b})
        assert fit_default_worker(Resources(1, 4.0, 0.0)).cpus == expect
