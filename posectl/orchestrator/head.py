"""`posectl cluster up/join/status/down`: a Ray head (or a worker node) that posectl starts, and stops by itself.

Safe by default: the dashboard and job API bind to 127.0.0.1 (anyone who reaches them can run
code), Ray's token authentication stays on, and `down` stops only the processes of the cluster
posectl started (never `ray stop`, which kills every Ray process on the machine by name).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from posectl.errors import PosectlError, ResourceError
from posectl.orchestrator.cluster import pid_running, proc_stat

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def state_file() -> Path:
    return Path(os.environ.get("POSECTL_HOME", Path.home() / ".posectl")) / "cluster.json"


def token_path() -> Path:
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))


def ensure_token() -> Path:
    """The cluster's auth token file, created (256 random bits, owner-only) when there is none: `ray start`
    with token auth refuses to start without one, e.g. on a fresh machine."""
    p = token_path()
    if os.environ.get("RAY_AUTH_TOKEN") or p.is_file():
        return p
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    os.replace(tmp, p)
    return p


def read_state() -> dict | None:
    p = state_file()
    if not p.is_file():
        return None
    st = json.loads(p.read_text())
    return st if _ours(st) else None


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22); None if unknown."""
    fields = proc_stat(pid)
    return fields[19] if fields else None


def _ours(st: dict) -> bool:
    """The recorded `ray start` is still running, and the PID has not been reused by another process
    (after a reboot or a crash of the head) since `up` recorded it."""
    return pid_running(st["pid"]) and st.get("pid_start") in (None, _start_time(st["pid"]))


def _ray_bin() -> str:
    cand = Path(sys.executable).with_name("ray")
    return str(cand) if cand.exists() else (shutil.which("ray") or "ray")


def _http_status(url: str, token: str | None = None) -> int:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=3) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError):
        return 0


def _ray_env(**extra: str) -> dict:
    """The environment of a `ray start` posectl runs: token auth, no usage stats, the Train view on, no
    drain on SIGTERM, and this Python's bin directory first (jobs and workers find the same interpreter).
    `cluster down` signals the node's whole process group at once, so the raylet a drain would wait for
    is already stopping: Ray's default drain (RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S, 30 s) only held
    `ray start` until `down` killed it 15 s later."""
    return {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_TRAIN_ENABLE_STATE_TRACKING": os.environ.get("RAY_TRAIN_ENABLE_STATE_TRACKING", "1"),
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": os.environ.get("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "0"),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", **extra}


def _agent_port_arg() -> str:
    """The node's dashboard agent serves the job API on one fixed port (52365). Another Ray on this machine
    (a user's, a run's private one) may hold it: the agent then stays up without it and every job
    submission fails with "No available agent" (seen in CI). Take another port then."""
    from posectl.orchestrator.cluster import free_port
    return f"--dashboard-agent-listen-port={free_port(52365, 'the dashboard agent')}"


def up(port: int = 6379, dashboard_port: int = 8265, dashboard_host: str = "127.0.0.1",
       num_cpus: int | None = None, num_gpus: int | None = None, warn=print, timeout_s: float = 90,
       host: str = "127.0.0.1") -> dict:
    """Start a Ray head. `host`: the address other nodes join at (loopback: this machine only)."""
    if read_state():
        raise PosectlError(f"a posectl cluster is already running (see {state_file()}); `posectl cluster down` first")
    if dashboard_host not in LOOPBACK:
        warn(f"the dashboard and job API will listen on {dashboard_host}:{dashboard_port}: anyone who can "
             "reach that port can run code on this machine (token authentication is on; keep the token secret)")
    if host not in LOOPBACK:
        warn(f"the head listens on {host}:{port} for nodes that join: whoever reaches it with the token can run "
             f"code on this machine; hand the token ({token_path()}) only to the machines that join")
    log = state_file().parent / "cluster.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    ensure_token()
    cmd = [_ray_bin(), "start", "--head", "--block", f"--port={port}", f"--node-ip-address={host}",
           "--include-dashboard=true", f"--dashboard-host={dashboard_host}", f"--dashboard-port={dashboard_port}",
           "--disable-usage-stats", _agent_port_arg()]
    if num_cpus is not None:
        cmd.append(f"--num-cpus={num_cpus}")
    if num_gpus is not None:
        cmd.append(f"--num-gpus={num_gpus}")
    with open(log, "ab") as lf:
        # a head for this machine alone keeps every server on loopback (cluster.keep_on_loopback)
        extra = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"} if host in LOOPBACK else {}
        proc = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, env=_ray_env(**extra), start_new_session=True)
    url = f"http://127.0.0.1:{dashboard_port}"
    from posectl.orchestrator.cluster import ray_address_file
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PosectlError(f"ray start exited with code {proc.returncode}; see {log}")
        # up when the dashboard answers and Ray has noted the head for `address="auto"` (its last step)
        if _http_status(f"{url}/api/version") in (200, 401) and _names_port(ray_address_file(), port):
            break
        time.sleep(0.5)
    else:
        _kill_group(proc.pid)
        raise PosectlError(f"the Ray head did not come up within {timeout_s:.0f} s; see {log}")
    st = {"role": "head", "pid": proc.pid, "pid_start": _start_time(proc.pid), "address": f"{host}:{port}",
          "dashboard": url, "dashboard_host": dashboard_host, "log": str(log),
          "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "session_dir": _session_dir(proc.pid)}
    state_file().write_text(json.dumps(st, indent=2))
    return st


def join(head: str, host: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None,
         token_file: str | Path | None = None, timeout_s: float = 90) -> dict:
    """Join this machine to the cluster whose head is at `head` (HOST:PORT) as a worker node. The token is
    the head's (`RAY_AUTH_TOKEN_PATH`, as Ray reads it): `token_file`, or this machine's token file."""
    from posectl.orchestrator.cluster import _check_reachable
    if read_state():
        raise PosectlError(f"this machine already runs a posectl node (see {state_file()}); `posectl cluster down` first")
    token = Path(token_file) if token_file else token_path()
    if not os.environ.get("RAY_AUTH_TOKEN") and not token.is_file():
        raise PosectlError(f"no cluster token at {token}: copy the head's token file (on the head: "
                           f"`cat ~/.ray/auth_token`) to this machine and pass --token-file, or put it at {token}")
    _check_reachable(head)
    log = state_file().parent / "cluster.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [_ray_bin(), "start", f"--address={head}", "--block", "--disable-usage-stats", _agent_port_arg()]
    if host:
        cmd.append(f"--node-ip-address={host}")
    if num_cpus is not None:
        cmd.append(f"--num-cpus={num_cpus}")
    if num_gpus is not None:
        cmd.append(f"--num-gpus={num_gpus}")
    with open(log, "ab") as lf:
        proc = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, start_new_session=True,
                                env=_ray_env(RAY_AUTH_TOKEN_PATH=str(token)))
    session = None
    deadline = time.monotonic() + timeout_s
    while session is None and time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PosectlError(f"ray start --address={head} exited with code {proc.returncode}; see {log}")
        session = _session_dir(proc.pid)
    if session is None:
        _kill_group(proc.pid)
        raise PosectlError(f"the node did not join {head} within {timeout_s:.0f} s; see {log}")
    st = {"role": "worker", "pid": proc.pid, "pid_start": _start_time(proc.pid), "address": head, "log": str(log),
          "token_file": str(token), "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "session_dir": session}
    state_file().write_text(json.dumps(st, indent=2))
    return st


def listeners(pids) -> list[dict]:
    """TCP sockets listening in processes `pids`: [{"pid", "process", "address", "port"}], read from /proc
    (Linux; an empty list elsewhere)."""
    import ipaddress
    inodes: dict[str, int] = {}
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes[target[8:-1]] = pid
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            if f[3] != "0A" or f[9] not in inodes:          # 0A: LISTEN
                continue
            hexip, hexport = f[1].split(":")
            raw = bytes.fromhex(hexip)
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))    # words in host order
            pid = inodes[f[9]]
            try:
                name = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                name = _process_name([p.decode(errors="ignore") for p in name if p])
            except OSError:
                name = "?"
            out.append({"pid": pid, "process": name, "address": str(ipaddress.ip_address(raw)),
                        "port": int(hexport, 16)})
    return sorted(out, key=lambda r: (r["process"], r["port"]))


def _process_name(argv: list[str]) -> str:
    """A Ray process's role from its command line (gcs_server, raylet, dashboard, ...)."""
    if not argv:
        return "?"
    first = Path(argv[0]).name
    if first.startswith("ray::"):
        return first
    if "-m" in argv[:-1]:
        return argv[argv.index("-m") + 1]             # e.g. ray.util.client.server
    for a in argv[:3]:
        n = Path(a).name
        if n.endswith(".py"):
            return n[:-3]
    return first


def _names_port(path: Path, port: int) -> bool:
    try:
        return path.read_text().strip().endswith(f":{port}")
    except OSError:
        return False


def _session_dir(pid: int) -> str | None:
    """The /tmp/ray/session_* directory of the raylet started under `pid` (to find its processes)."""
    for _ in range(20):
        for child in _descendants(pid):
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes().decode(errors="ignore")
            except OSError:
                continue
            for part in cmdline.split("\0"):
                if "/session_" in part:
                    i = part.index("/session_")
                    j = part.find("/", i + 1)
                    return part[: j if j > 0 else None].split("=")[-1]
        time.sleep(0.2)
    return None


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            kids = []
        for k in map(int, kids):
            out.append(k)
            todo.append(k)
    return out


def _kill_group(pid: int, sig=signal.SIGTERM) -> None:
    try:
        os.killpg(pid, sig)
    except OSError:
        pass


def down(timeout_s: float = 30) -> bool:
    """Stop the cluster posectl started: its process group, then any process of its Ray session."""
    p = state_file()
    if not p.is_file():
        return False
    st = json.loads(p.read_text())
    pid, session = st["pid"], st.get("session_dir")
    if _ours(st):                        # never signal a process that merely reuses the recorded PID
        _kill_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while pid_running(pid) and time.monotonic() < deadline - timeout_s / 2:
            time.sleep(0.3)
        for q in _descendants(pid) + [pid]:
            if pid_running(q):
                try:
                    os.kill(q, signal.SIGKILL)
                except OSError:
                    pass
    if session:
        from posectl.orchestrator.cluster import reap
        reap(session, timeout_s / 2)
    p.unlink(missing_ok=True)
    return True


def status() -> dict:
    st = read_state()
    if st is None:
        raise ResourceError("no posectl cluster is running (`posectl cluster up` starts one)")
    out = dict(st)
    if "dashboard" in st:
        token = token_path().read_text().strip() if token_path().exists() else None
        out.update(auth_without_token=_http_status(f"{st['dashboard']}/api/version"),
                   auth_with_token=_http_status(f"{st['dashboard']}/api/version", token))
    if st.get("session_dir"):
        from posectl.orchestrator.cluster import session_processes
        out["listeners"] = listeners(set(session_processes(st["session_dir"])) | {st["pid"], *_descendants(st["pid"])})
    try:
        if "dashboard" in st:            # a head: ask its dashboard over HTTP (a driver would add a row to Jobs)
            _status_over_http(st, out)
        else:
            _status_as_driver(st, out)
    except Exception as e:  # noqa: BLE001 - status is best effort
        out["error"] = str(e).splitlines()[0] if str(e) else type(e).__name__
    return out


def _node_row(address: str, head: bool, res: dict) -> dict:
    return {"address": address, "head": head, "cpus": res.get("CPU", 0), "gpus": res.get("GPU", 0)}


def _status_over_http(st: dict, out: dict) -> None:
    token = token_path().read_text().strip() if token_path().exists() else None
    req = urllib.request.Request(f"{st['dashboard']}/api/v0/nodes?detail=1",
                                 headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=10) as r:
        rows = json.loads(r.read())["data"]["result"]["result"]
    nodes = [_node_row(n["node_ip"], n["is_head_node"], n["resources_total"]) for n in rows if n["state"] == "ALIVE"]
    out.update(nodes=len(nodes), cpus=sum(n["cpus"] for n in nodes), gpus=sum(n["gpus"] for n in nodes), node_list=nodes)
    os.environ["RAY_AUTH_MODE"] = "token"       # before Ray is imported: it reads the mode at import
    from ray.job_submission import JobSubmissionClient
    client = JobSubmissionClient(st["dashboard"])
    out["jobs"] = [(j.submission_id, str(j.status)) for j in client.list_jobs() if j.submission_id]


def _status_as_driver(st: dict, out: dict) -> None:
    """A worker node has no dashboard of its own (the head's may be on the head's loopback): connect."""
    os.environ["RAY_AUTH_MODE"] = "token"
    from posectl.orchestrator.cluster import is_loopback, keep_on_loopback
    if is_loopback(st["address"]):
        keep_on_loopback()                      # a driver of a loopback head must be on loopback too
    if st.get("token_file"):
        os.environ["RAY_AUTH_TOKEN_PATH"] = st["token_file"]
    import ray
    ray.init(address=st["address"], log_to_driver=False, logging_level="ERROR")
    nodes = [_node_row(n["NodeManagerAddress"], "node:__internal_head__" in n["Resources"], n["Resources"])
             for n in ray.nodes() if n.get("Alive")]
    out.update(nodes=len(nodes), cpus=sum(n["cpus"] for n in nodes), gpus=sum(n["gpus"] for n in nodes), node_list=nodes)
    ray.shutdown()


def submit(argv: list[str], name: str, dashboard: str | None = None) -> str:
    """Submit `posectl <argv>` as a Ray Job (it appears in the dashboard's Jobs view with its logs)."""
    st = read_state()
    url = dashboard or (st["dashboard"] if st else None)
    if not url:
        from posectl.orchestrator.cluster import running_local_cluster
        if running_local_cluster():            # started with `ray start --head`: its dashboard's default port
            url = "http://127.0.0.1:8265"
    if not url:
        raise ResourceError("no cluster to submit to: `posectl cluster up` or pass --address http://HOST:8265")
    if st and url == st["dashboard"]:
        os.environ["RAY_AUTH_MODE"] = "token"   # clusters posectl starts always use token auth
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    from ray.job_submission import JobSubmissionClient
    client = JobSubmissionClient(url)
    entry = " ".join([sys.executable, "-m", "posectl", *[_quote(a) for a in argv]])
    sid = f"posectl-{name}-{secrets.token_hex(2)}"
    # job_name: the dashboard's Jobs view shows it in its Name column
    deadline = time.monotonic() + 60   # a head that has just started may have no job agent yet
    while True:
        try:
            return client.submit_job(entrypoint=entry, submission_id=sid, metadata={"posectl": name, "job_name": name})
        except RuntimeError as e:
            if "No available agent" not in str(e):
                raise
            if time.monotonic() > deadline:
                raise ResourceError(f"the cluster at {url} has no job agent answering after 60 s (Ray's agent port may "
                                    "be held by another Ray on the head; its dashboard_agent.log says)") from None
            time.sleep(1)


def _quote(a: str) -> str:
    import shlex
    return shlex.quote(a)
