"""`posectl cluster up/join/status/down`: a Ray head with the dashboard (token authentication on), worker nodes."""
from __future__ import annotations

from typing import Optional

import typer

app = typer.Typer(help="Start, join, inspect and stop a Ray cluster (head with the dashboard, token authentication on).", no_args_is_help=True)


@app.command("up")
def cluster_up(
    port: int = typer.Option(6379, "--port", help="Ray (GCS) port."),
    dashboard_port: int = typer.Option(8265, "--dashboard-port", help="Dashboard / job API port."),
    dashboard_host: str = typer.Option("127.0.0.1", "--dashboard-host",
                                       help="Bind address of the dashboard and job API. Anything but loopback lets "
                                            "whoever reaches the port run code here (a warning is printed)."),
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus"),
    num_gpus: Optional[int] = typer.Option(None, "--num-gpus"),
    host: str = typer.Option("127.0.0.1", "--host", help="The address other machines join at (`posectl cluster join "
                             "HOST:PORT` on them). Default: loopback, this machine only; anything else prints a warning."),
):
    """Start a Ray head (dashboard on 127.0.0.1, token authentication on)."""
    from posectl.cli.render import console, err_console
    from posectl.orchestrator import head
    st = head.up(port, dashboard_port, dashboard_host, num_cpus, num_gpus,
                 warn=lambda m: err_console.print(f"[yellow]warning:[/] {m}", soft_wrap=True), host=host)
    console.print(f"Ray head running (pid {st['pid']}): address {st['address']}, dashboard {st['dashboard']}",
                  soft_wrap=True)
    console.print(f"token authentication is on; the browser asks for the token, which this prints:\n"
                  f"  cat {head.token_path()}\n"
                  f"check the dashboard answers with it:\n"
                  f"  curl -s -H \"Authorization: Bearer $(cat {head.token_path()})\" {st['dashboard']}/api/version\n"
                  f"posectl finds this cluster by itself (runs appear in the dashboard: Train, Jobs):\n"
                  f"  posectl train baseline --smoke-test\n"
                  f"  posectl train baseline --smoke-test --submit\n"
                  f"  posectl cluster status\n"
                  f"stop it:\n"
                  f"  posectl cluster down\n"
                  f"(Ray's own CLI needs RAY_AUTH_MODE=token, e.g. RAY_AUTH_MODE=token ray job list --address "
                  f"{st['dashboard']}; your own Ray drivers of a loopback head also need "
                  f"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, see docs/security.md)", soft_wrap=True)


@app.command("join")
def cluster_join(
    head_address: str = typer.Argument(..., help="The head's HOST:PORT, as `posectl cluster up --host HOST` printed it."),
    token_file: Optional[str] = typer.Option(None, "--token-file", help="A copy of the head's token file (on the head: "
                                             "`cat ~/.ray/auth_token`). Default: this machine's ~/.ray/auth_token."),
    host: Optional[str] = typer.Option(None, "--host", help="This machine's address as the head should reach it (default: Ray's choice)."),
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus"),
    num_gpus: Optional[int] = typer.Option(None, "--num-gpus"),
):
    """Join this machine to a cluster as a worker node (token authentication as on the head)."""
    from posectl.cli.render import console
    from posectl.orchestrator import head
    st = head.join(head_address, host, num_cpus, num_gpus, token_file)
    console.print(f"joined {st['address']} as a worker node (pid {st['pid']}); runs started on the head can use it.\n"
                  f"  posectl cluster status\n"
                  f"leave:\n"
                  f"  posectl cluster down", soft_wrap=True)


@app.command("status")
def cluster_status():
    """Nodes, CPUs, GPUs and jobs of the cluster posectl started."""
    from posectl.cli.render import console
    from posectl.orchestrator import head
    st = head.status()
    if st.get("role") == "worker":
        console.print(f"worker node of {st['address']}  pid {st['pid']}", soft_wrap=True)
    else:
        console.print(f"address {st['address']}  dashboard {st['dashboard']} (bound to {st['dashboard_host']})  "
                      f"pid {st['pid']}", soft_wrap=True)
        console.print(f"dashboard answers {st['auth_without_token']} without the token, {st['auth_with_token']} with it")
    if "error" in st:
        console.print(f"[red]could not query the cluster:[/] {st['error']}")
    else:
        console.print(f"{st['nodes']} node(s), {st['cpus']:g} CPUs, {st['gpus']:g} GPUs")
        for n in st.get("node_list", []):
            console.print(f"  node {n['address']}{' (head)' if n['head'] else ''}: {n['cpus']:g} CPUs, {n['gpus']:g} GPUs")
        for sid, status in st.get("jobs", []):
            console.print(f"  job {sid}: {status}")
    if st.get("listeners"):
        console.print("listening sockets of this node's Ray processes (docs/security.md says what guards each):")
        for r in st["listeners"]:
            console.print(f"  {r['address']}:{r['port']}  {r['process']}")


@app.command("down")
def cluster_down():
    """Stop the cluster posectl started (only its own processes; never `ray stop`)."""
    from posectl.cli.render import console
    from posectl.orchestrator import head
    console.print("stopped" if head.down() else "no posectl cluster was running")
