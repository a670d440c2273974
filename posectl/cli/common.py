"""Small helpers shared by the command modules (no heavy imports here)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional


def config_layers(config: Optional[Path], overrides: Optional[list[str]], method: str | None = None) -> list[dict]:
    """The config layers of a command line: the --config YAML file (if any), then the key=value overrides.
    The file may be a run's config.yaml ({method, config}: a run directory's, or an exported trial's)."""
    from posectl.config import check_keys, load_yaml, parse_overrides
    from posectl.errors import ConfigError
    layers = []
    if config is not None:
        doc = load_yaml(config)
        if set(doc) == {"method", "config"} and isinstance(doc["config"], dict):
            if method is not None and doc["method"] != method:
                raise ConfigError(f"{config}: the config of a '{doc['method']}' run, not '{method}'")
            doc = doc["config"]
        if method is not None:                 # a misspelt key names the file it is in
            from posectl.methods.base import get_method
            check_keys(get_method(method).Config, doc, f"method {method} (in {config})")
        layers.append(doc)
    layers.append(parse_overrides(overrides or []))
    return layers



ADDRESS_HELP = ("Ray cluster: HOST:PORT, ray://HOST:PORT, 'auto' (the cluster running on this machine) or 'local' (a "
                "private one). Default: a cluster running on this machine if there is one (said), else a private one.")


def submit_job(method: str, name: str | None, address: str | None, extra: list[str], what: str) -> None:
    """Send this command line to the cluster as a Ray Job (without --submit and --address, with a fixed
    --name and the storage paths made absolute), and say how to follow it."""
    import sys
    from datetime import datetime

    from posectl.cli.render import console
    from posectl.orchestrator import head
    argv = _job_argv(sys.argv[1:])
    flags = {a.split("=", 1)[0] for a in argv}
    for k, v in zip(extra[::2], extra[1::2]):
        if k not in flags:
            argv += [k, v]
    if "--name" not in flags:
        name = f"{method}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        argv += ["--name", name]
    sid = head.submit(argv, name or method, dashboard=address if address and address.startswith("http") else None)
    console.print(f"submitted the {what} '{name or method}' as Ray Job {sid}; follow it in the dashboard (Jobs) or with "
                  f"`RAY_AUTH_MODE=token ray job logs -f {sid}`", soft_wrap=True)


def _job_argv(argv: list[str]) -> list[str]:
    """The command line a submitted job runs: without --submit, and without --address (the dashboard's
    http:// address is not one ray.init takes; the job supervisor sets RAY_ADDRESS for the job)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--address":
            skip = True
        elif a != "--submit" and not a.startswith("--address="):
            out.append(a)
    return out
