"""Connecting to Ray and checking that a resource plan can be scheduled before submitting it."""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from posectl.errors import ResourceError

# Quiet, local-first defaults; users can override any of them in their environment.
_ENV_DEFAULTS = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "0",
    "RAY_DEDUP_LOGS": "1",
    "RAY_TRAIN_ENABLE_STATE_TRACKING": "1",      # Ray Train's run state in the dashboard (/api/train/v2/runs/v1)
    # A Train worker's report waits in a one-place queue until the controller's next poll (2 s by default):
    # every epoch's ray.train.report and the end of a run waited up to that long. Measured on 2 cores, a
    # 4-epoch baseline fit: 26 s -> 15-18 s. Passed on to the controller and the workers by Ray Train.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
}


@dataclass
class Resources:
    """What a job asks for: `workers` Ray Train workers, each with `cpus` CPUs and `gpus` GPUs."""
    workers: int = 1
    cpus: float = 1.0
    gpus: float = 0.0

    @property
    def use_gpu(self) -> bool:
        return self.gpus > 0

    @property
    def backend(self) -> str:
        """DDP's backend: nccl with a GPU per worker; gloo on CPUs and when workers share a GPU (NCCL refuses
        two ranks on one device)."""
        return "nccl" if self.gpus >= 1 else "gloo"

    def describe(self) -> str:
        per = f"{self.cpus:g} CPU" + (f" + {self.gpus:g} GPU" if self.gpus else "")
        return f"{self.workers} worker{'s' if self.workers != 1 else ''} x ({per})"


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds when nothing listens at host:port (ray.init would retry for minutes)."""
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        return                                  # 'auto', or an address form ray.init resolves itself
    import socket
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise ResourceError(f"cannot connect to Ray at {address}: nothing answers at {host}:{port} "
                            f"({reason} after up to {timeout_s:g} s)") from None


def plan_resources(gpus: int | None, workers: int | None, cpus_per_worker: float | None = None,
                   gpus_per_worker: float | None = None) -> Resources:
    """`--gpus N`: one worker per GPU; `--workers N`: N CPU workers, or N workers sharing GPUs with
    `--gpus-per-worker F` (e.g. 0.5: two workers on one GPU, over gloo); default: one CPU worker."""
    if gpus is not None and workers is not None:
        raise ResourceError("use either --gpus or --workers, not both")
    if cpus_per_worker is not None and not cpus_per_worker > 0:
        raise ResourceError(f"--cpus-per-worker must be > 0, got {cpus_per_worker:g}")
    if workers is not None and workers < 1:
        raise ResourceError(f"--workers must be >= 1, got {workers}")
    if gpus_per_worker is not None:
        if gpus is not None:
            raise ResourceError("--gpus-per-worker goes with --workers N (--gpus N gives each worker a GPU)")
        if not 0 < gpus_per_worker <= 1:
            raise ResourceError(f"--gpus-per-worker must be in (0, 1], got {gpus_per_worker:g}")
        return Resources(workers=1 if workers is None else workers, cpus=cpus_per_worker or 1.0, gpus=gpus_per_worker)
    if gpus is not None:
        if gpus < 1:
            raise ResourceError("--gpus must be >= 1")
        return Resources(workers=gpus, cpus=cpus_per_worker or 1.0, gpus=1.0)
    n = 1 if workers is None else workers
    if cpus_per_worker is None:
        # one worker alone may use every local core (Ray sets its thread count from this)
        cpus_per_worker = max(1.0, float((os.cpu_count() or 1) // n)) if n == 1 else 1.0
    return Resources(workers=n, cpus=cpus_per_worker, gpus=0.0)


def ray_address_file() -> Path:
    """Where Ray notes the cluster started on this machine (read by `ray.init(address="auto")`); found as
    Ray finds it (RAY_TMPDIR, TMPDIR, /tmp), without importing Ray."""
    import tempfile
    root = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or ("/tmp" if os.name == "posix" else tempfile.gettempdir())
    return Path(root) / "ray" / "ray_current_cluster"


def running_local_cluster() -> str | None:
    """The address of a Ray cluster started on this machine (`ray start`, `posectl cluster up`) that
    answers; None when there is none, or when Ray's address file is left over from a stopped cluster."""
    try:
        addr = ray_address_file().read_text().strip()
    except OSError:
        return None
    if not addr:
        return None
    try:
        _check_reachable(addr, timeout_s=1.0)
    except ResourceError:
        return None
    return addr


def is_loopback(address: str) -> bool:
    host = address.split("://", 1)[-1].rpartition(":")[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1")


def keep_on_loopback() -> bool:
    """Make the Ray this process starts or joins use 127.0.0.1 as its node address, so that its servers
    (GCS, raylet, metrics endpoints) bind to loopback: Ray's switch for single-machine clusters,
    ray_constants.ENABLE_RAY_CLUSTER (env RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0), read when Ray is
    imported. Returns False when Ray is already imported (its choice is made) or the user set it."""
    if "ray" in sys.modules or "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" in os.environ:
        return os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == "0"
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    return True


def use_token_auth() -> None:
    """Clients speak token authentication (Ray's default for clusters since 2.60) unless the user chose a
    mode: set before `ray` is imported, which reads it once. A cluster without auth accepts such clients."""
    if "RAY_AUTH_MODE" not in os.environ and "ray" not in sys.modules:
        os.environ["RAY_AUTH_MODE"] = "token"


@dataclass
class Connection:
    """The Ray this driver uses: `started` (a private one, shut down at the end) and its dashboard."""
    started: bool
    address: str
    dashboard: str | None = None

    def __bool__(self) -> bool:          # `if connect(...)`: did we start it
        return self.started


def connect(address: str | None = None, num_cpus: int | None = None, quiet: bool = True, dashboard: bool = True,
            say: Callable[[str], None] | None = None) -> Connection:
    """The Ray to use, by Ray's conventions: `address` (or RAY_ADDRESS) names a cluster, "auto" the one
    running on this machine, "local" a private one; without an address, a cluster running on this machine
    is used (said in one line), else a private local Ray starts, with the dashboard on 127.0.0.1."""
    say = say or (lambda line: None)
    for k, v in _ENV_DEFAULTS.items():
        os.environ.setdefault(k, v)
    use_token_auth()
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        return Connection(False, "(this process's Ray)", dashboard_url())
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address == "auto":
        address = running_local_cluster()
        if address is None:
            raise ResourceError("--address auto: no Ray cluster is running on this machine "
                                "(`ray start --head` or `posectl cluster up` starts one; without --address posectl starts its own)")
    elif address is None:
        address = running_local_cluster()
        if address is not None:
            say(f"using the Ray cluster already running on this machine at {address} (`--address local` for a "
                f"private one)")
    if address is None or address == "local" or is_loopback(address):
        keep_on_loopback()           # a Ray of this machine alone: its servers listen on 127.0.0.1 only
    import logging

    import ray
    level = logging.ERROR if quiet else logging.INFO
    for name in ("ray.data", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(level)
    if address and address != "local":
        _check_reachable(address)
        try:
            ray.init(address=address, log_to_driver=not quiet, namespace="posectl", logging_level=level)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ResourceError(f"cannot connect to Ray at {address}: {str(e).splitlines()[0]}") from None
        conn = Connection(False, address, dashboard_url())
        if conn.dashboard:
            say(f"Ray dashboard: {conn.dashboard}")
        return conn
    if dashboard and os.environ.get("RAY_AUTH_MODE") == "token":
        from posectl.orchestrator.head import ensure_token
        ensure_token()             # the dashboard's login token (Ray writes one on first use; make sure)
    port = free_port(8265) if dashboard else None
    ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=dashboard,
             dashboard_host="127.0.0.1", **({"dashboard_port": port} if port else {}),
             log_to_driver=not quiet, namespace="posectl", logging_level=level,
             object_store_memory=_object_store_bytes(), runtime_env=private_runtime_env(port))
    conn = Connection(True, "local", dashboard_url() if dashboard else None)
    if conn.dashboard:
        say(login_hint(conn.dashboard))
    return conn


def dashboard_url() -> str | None:
    """http://HOST:PORT of the dashboard of the Ray this process is connected to (None without one)."""
    try:
        from ray._private import worker
        url = worker.global_worker.node.address_info.get("webui_url")
    except Exception:  # noqa: BLE001 - private API; a missing URL only means nothing is printed
        return None
    if not url:
        return None
    return url if url.startswith("http") else f"http://{url}"


def login_hint(url: str) -> str:
    if os.environ.get("RAY_AUTH_MODE") == "token":
        from posectl.orchestrator.head import token_path
        return (f"Ray dashboard: {url} (open it, paste the token that `cat {token_path()}` prints; the run's "
                f"driver is under Jobs, its workers under Actors, Ray Train's run list at {url}/api/train/v2/runs/v1)")
    return f"Ray dashboard: {url} (no token needed: RAY_AUTH_MODE={os.environ.get('RAY_AUTH_MODE')})"


# A private local Ray has no dashboard, and Ray's state API then falls back to http://127.0.0.1:8265:
# the dashboard of *any other* Ray on this machine. Ray Train's placement-group cleaner asks that API
# every second whether its controller is alive; the other cluster answers "no such actor", and the
# cleaner removes the running job's placement group, killing the run about 10 s after it starts
# (seen in Ray 2.60 with a second Ray started on the same machine). Point the state API of our workers
# at a closed port instead: the cleaner then treats the state API as unavailable and keeps waiting.
# With a dashboard of its own, a private Ray's state API is pointed at that one, by its port.
# A private Ray is this machine alone: no node of it is drained or preempted under a run, so Ray Train's
# preemption watcher (an actor per run that polls for node drains) is left out. Measured on 2 cores, a
# 2-worker fit: 2.8 CPU-s and 1.4 s less. A value set in the driver's environment is passed on by Ray
# Train and wins.
PRIVATE_RUNTIME_ENV = {"env_vars": {"RAY_API_SERVER_ADDRESS": "http://127.0.0.1:9",
                                    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}}


def private_runtime_env(dashboard_port: int | None) -> dict:
    if dashboard_port is None:
        return PRIVATE_RUNTIME_ENV
    return {"env_vars": {**PRIVATE_RUNTIME_ENV["env_vars"], "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{dashboard_port}"}}


def free_port(preferred: int, what: str = "the dashboard") -> int:
    """`preferred` when nothing listens on it on 127.0.0.1 (another Ray's dashboard or agent may), else a free
    port; `what` names the port's user in the error."""
    import socket
    for port in (preferred, 0):
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)      # as the dashboard's server binds
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise ResourceError(f"no free TCP port on 127.0.0.1 for {what}")


def local_session_dir() -> str | None:
    """The session directory (/tmp/ray/session_*) of the Ray this process is connected to."""
    try:
        from ray._private import worker
        return worker.global_worker.node.get_session_dir_path()
    except Exception:  # noqa: BLE001 - private API; only used to clean up after crashes
        return None


def session_processes(session_dir: str) -> list[int]:
    """PIDs whose command line names `session_dir` (the processes of that Ray instance)."""
    from pathlib import Path
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if session_dir in (d / "cmdline").read_bytes().decode(errors="ignore"):
                    out.append(int(d.name))
            except OSError:
                continue
    return out


def reap(session_dir: str, timeout_s: float = 15.0) -> int:
    """Stop every process of one Ray session (SIGTERM, then SIGKILL); never touches other clusters."""
    import signal
    import time
    found = set()
    deadline = time.monotonic() + timeout_s
    while (pids := session_processes(session_dir)) and time.monotonic() < deadline:
        found |= set(pids)
        sig = signal.SIGTERM if time.monotonic() < deadline - timeout_s / 2 else signal.SIGKILL
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        time.sleep(0.5)
    return len(found)


def _object_store_bytes() -> int:
    """A modest object store (datasets are small); at most 2 GiB or 20 % of memory."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        total = 8 << 30
    return int(min(2 << 30, 0.2 * total))


def cluster_summary() -> dict:
    import ray
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return {
        "nodes": len(nodes),
        "cpus": ray.cluster_resources().get("CPU", 0.0),
        "gpus": ray.cluster_resources().get("GPU", 0.0),
        "max_node_cpus": max((n["Resources"].get("CPU", 0.0) for n in nodes), default=0.0),
        "max_node_gpus": max((n["Resources"].get("GPU", 0.0) for n in nodes), default=0.0),
    }


def fit_default_worker(res: Resources) -> Resources:
    """The default single CPU worker (this machine's cores) capped at the largest node of the cluster in use
    (a user's `ray start --head --num-cpus 1`, or nodes smaller than this machine)."""
    biggest = cluster_summary()["max_node_cpus"]
    if res.workers == 1 and not res.gpus and biggest > 0 and res.cpus > biggest:
        # a whole 1-CPU node leaves Ray Train nothing to start with (its actor creation is cancelled;
        # measured with `ray start --head --num-cpus 1`): half of it trains
        return Resources(workers=1, cpus=float(biggest) if biggest >= 2 else biggest / 2, gpus=0.0)
    return res


def leave_cpu_for_data(res: Resources) -> Resources:
    """CPU workers whose CPUs were not given, shrunk to leave one CPU of the cluster to Ray Data's read
    tasks (a streamed split): workers holding every CPU would wait forever for their data (ray-notes)."""
    have = cluster_summary()
    if res.gpus or res.workers * res.cpus + 1 <= have["cpus"] or have["cpus"] < 1.5:
        return res
    cpus = (have["cpus"] - 1) / res.workers
    return Resources(workers=res.workers, cpus=float(int(cpus)) if cpus >= 1 else cpus, gpus=0.0)


def check_resources(res: Resources, concurrent: int = 1, reserve_cpus: float = 0.0) -> dict:
    """Fail fast, with the numbers, when the cluster cannot ever run the plan (Ray would wait forever)."""
    have = cluster_summary()
    need_gpus = res.workers * res.gpus * concurrent
    need_cpus = res.workers * res.cpus * concurrent + reserve_cpus
    where = f"the cluster has {have['nodes']} node(s), {have['cpus']:g} CPUs, {have['gpus']:g} GPUs"
    if need_gpus > have["gpus"]:
        raise ResourceError(f"asked for {need_gpus:g} GPUs ({res.describe()}"
                            f"{f' x {concurrent} trials' if concurrent > 1 else ''}) but {where}")
    if need_cpus > have["cpus"]:
        raise ResourceError(f"asked for {need_cpus:g} CPUs ({res.describe()}"
                            f"{f' x {concurrent} trials' if concurrent > 1 else ''}"
                            f"{f' + {reserve_cpus:g} for Ray Data tasks' if reserve_cpus else ''}) but {where}")
    if res.cpus > have["max_node_cpus"] or res.gpus > have["max_node_gpus"]:
        raise ResourceError(f"one worker needs {res.cpus:g} CPUs and {res.gpus:g} GPUs on a single node, "
                            f"but the largest node has {have['max_node_cpus']:g} CPUs and "
                            f"{have['max_node_gpus']:g} GPUs")
    return have


SESSION_FILE = ".ray_session.json"


def record_session(directory: Path) -> None:
    """Note the private local Ray this driver started in `directory` (a run or a search), so that a
    later --resume can stop what a driver killed with SIGKILL left running."""
    from posectl.orchestrator.experiment import atomic_write_bytes
    atomic_write_bytes(Path(directory) / SESSION_FILE,
                       json.dumps({"session_dir": local_session_dir(), "driver_pid": os.getpid()}).encode())


def reap_orphans(directory: Path) -> None:
    """A driver killed with SIGKILL leaves its local Ray running: stop what is left of it."""
    import warnings
    p = Path(directory) / SESSION_FILE
    if not p.exists():
        return
    try:
        info = json.loads(p.read_text())
    except ValueError:
        return
    session, pid = info.get("session_dir"), info.get("driver_pid")
    if not session or pid_running(pid):
        return
    n = reap(session)
    if n:
        warnings.warn(f"stopped {n} leftover Ray process(es) of the interrupted run ({session})", stacklevel=2)


def proc_stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command name (state first, start time at [19]); None if unknown."""
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()


def pid_running(pid) -> bool:
    """The process runs: a zombie (exited, its parent gone and an init that reaps nothing, as in many
    containers) does not."""
    try:
        os.kill(int(pid), 0)
    except (OSError, TypeError, ValueError):
        return False
    fields = proc_stat(pid)
    return fields is None or fields[0] != "Z"      # no /proc: the signal test is all there is


def check_shared_storage(path: Path, given: bool, flag: str) -> None:
    """On a cluster of several nodes, a run's directory must be one every node reaches (rank 0 may write
    its checkpoints on any node, and the driver reads them): refuse a default (node-local) directory, and
    check a given one by a marker file the driver writes and a task on every node reads."""
    import uuid

    import ray
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2:
        return
    if not given:
        raise ResourceError(f"the cluster has {len(nodes)} nodes: a run's directory must be on storage every node "
                            f"reaches; pass {flag} DIR (a shared file system mounted at the same path on every node)")
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    path = Path(path).absolute()
    path.mkdir(parents=True, exist_ok=True)
    marker = path / f".posectl-shared-{uuid.uuid4().hex[:8]}"
    marker.write_text("posectl")

    @ray.remote(num_cpus=0)
    def sees(p: str) -> bool:
        return os.path.exists(p)

    try:
        seen = ray.get([sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                        .remote(str(marker)) for n in nodes], timeout=120)
    finally:
        marker.unlink(missing_ok=True)
    blind = [n["NodeManagerAddress"] for n, ok in zip(nodes, seen) if not ok]
    if blind:
        raise ResourceError(f"{flag} {path} is not shared: node(s) {', '.join(blind)} do not see it; pass a directory "
                            f"on a file system every node mounts at the same path")
