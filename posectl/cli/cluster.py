"""`posectl cluster up/status/down`: a local Ray head with the dashboard, token authentication on."""
from __future__ import annotations

from typing import Optional

import typer

app = typer.Typer(help="Start, inspect and stop a local Ray head with the dashboard.", no_args_is_help=True)


@app.command("up")
def cluster_up(
    port: int = typer.Option(6379, "--port", help="Ray (GCS) port."),
    dashboard_port: int = typer.Option(8265, "--dashboard-port", help="Dashboard / job API port."),
    dashboard_host: str = typer.Option("127.0.0.1", "--dashboard-host",
                                       help="Bind address of the dashboard and job API. Anything but loopback lets "
                                            "whoever reaches the port run code here (a warning is printed)."),
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus"),
    num_gpus: Optional[int] = typer.Option(None, "--num-gpus"),
):
    """Start a local Ray head (dashboard on 127.0.0.1, token authentication on)."""
    from posectl.cli.render import console, err_console
    from posectl.orchestrator import head
    st = head.up(port, dashboard_port, dashboard_host, num_cpus, num_gpus,
                 warn=lambda m: err_console.print(f"[yellow]warning:[/] {m}"))
    console.print(f"Ray head running (pid {st['pid']}): address {st['address']}, dashboard {st['dashboard']}")
    console.print(f"token authentication is on; the token is in {head.token_path()}.\n"
                  f"  browser: open {st['dashboard']} and paste the token when asked\n"
                  f"  CLI/API: export RAY_AUTH_MODE=token   (Ray reads the token file)\n"
                  f"  curl:    curl -H \"Authorization: Bearer $(cat {head.token_path()})\" {st['dashboard']}/api/version\n"
                  f"use it:   posectl tune baseline --address {st['address']} [--submit]\n"
                  f"stop it:  posectl cluster down")


@app.command("status")
def cluster_status():
    """Nodes, CPUs, GPUs and jobs of the cluster posectl started."""
    from posectl.cli.render import console
    from posectl.orchestrator import head
    st = head.status()
    console.print(f"address {st['address']}  dashboard {st['dashboard']} (bound to {st['dashboard_host']})  pid {st['pid']}")
    console.print(f"dashboard answers {st['auth_without_token']} without the token, {st['auth_with_token']} with it")
    if "error" in st:
        console.print(f"[red]could not query the cluster:[/] {st['error']}")
    else:
        console.print(f"{st['nodes']} node(s), {st['cpus']:g} CPUs, {st['gpus']:g} GPUs")
        for sid, status in st.get("jobs", []):
            console.print(f"  job {sid}: {status}")


@app.command("down")
def cluster_down():
    """Stop the cluster posectl started (only its own processes; never `ray stop`)."""
    from posectl.cli.render import console
    from posectl.orchestrator import head
    console.print("stopped" if head.down() else "no posectl cluster was running")
