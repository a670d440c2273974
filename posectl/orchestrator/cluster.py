"""Connecting to Ray and checking that a resource plan can be scheduled before submitting it."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from posectl.errors import ResourceError

# Quiet, local-first defaults; users can override any of them in their environment.
_ENV_DEFAULTS = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "0",
    "RAY_DEDUP_LOGS": "1",
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
    if n < 1:
        raise ResourceError("--workers must be >= 1")
    if cpus_per_worker is None:
        # one worker alone may use every local core (Ray sets its thread count from this)
        cpus_per_worker = max(1.0, float((os.cpu_count() or 1) // n)) if n == 1 else 1.0
    return Resources(workers=n, cpus=cpus_per_worker, gpus=0.0)


def connect(address: str | None = None, num_cpus: int | None = None, quiet: bool = True) -> bool:
    """Attach to `address` / RAY_ADDRESS, or start a private local Ray. Returns True if we started it."""
    for k, v in _ENV_DEFAULTS.items():
        os.environ.setdefault(k, v)
    import logging

    import ray
    if ray.is_initialized():
        return False
    level = logging.ERROR if quiet else logging.INFO
    for name in ("ray.data", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(level)
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        _check_reachable(address)
        try:
            ray.init(address=address, log_to_driver=not quiet, namespace="posectl", logging_level=level)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ResourceError(f"cannot connect to Ray at {address}: {str(e).splitlines()[0]}") from None
        return False
    ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, dashboard_host="127.0.0.1",
             log_to_driver=not quiet, namespace="posectl", logging_level=level,
             object_store_memory=_object_store_bytes(), runtime_env=PRIVATE_RUNTIME_ENV)
    return True


# A private local Ray has no dashboard, and Ray's state API then falls back to http://127.0.0.1:8265:
# the dashboard of *any other* Ray on this machine. Ray Train's placement-group cleaner asks that API
# every second whether its controller is alive; the other cluster answers "no such actor", and the
# cleaner removes the running job's placement group, killing the run about 10 s after it starts
# (seen in Ray 2.60 with a second Ray started on the same machine). Point the state API of our workers
# at a closed port instead: the cleaner then treats the state API as unavailable and keeps waiting.
PRIVATE_RUNTIME_ENV = {"env_vars": {"RAY_API_SERVER_ADDRESS": "http://127.0.0.1:9"}}


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
                            f"{f' x {concurrent} trials' if concurrent > 1 else ''}) but {where}")
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
    if not session or _pid_alive(pid):
        return
    n = reap(session)
    if n:
        warnings.warn(f"stopped {n} leftover Ray process(es) of the interrupted run ({session})", stacklevel=2)


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
        return True
    except (OSError, TypeError, ValueError):
        return False
