"""posectl command line: thin wrappers that parse, call the orchestrator and print.

One module per command group (train, search, data, cluster, inspect, predict); this one holds the root app, the
--debug option and the console entry point `main` (one-line errors, exit codes).
Heavy imports (torch, ray) happen inside commands so `posectl --help` stays fast.
"""
from __future__ import annotations

import sys

import typer

from posectl.cli import cluster, data, inspect, predict, search, train
from posectl.cli.common import _job_argv  # noqa: F401  (importable from posectl.cli, as before the split)
from posectl.errors import PosectlError

app = typer.Typer(
    help="3D human pose estimation methods as searchable plugins on Ray.\n\n"
         "Quick start: `posectl train baseline` trains a lifting network on the built-in synthetic "
         "dataset on a local Ray cluster.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

_STATE = {"debug": False}


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")):
    _STATE["debug"] = debug


# Registration order is the order of `posectl --help`: commands first, then the groups.
app.command(context_settings={"allow_extra_args": False})(train.train)
app.command()(search.tune)
app.command("eval")(train.eval_cmd)
app.command("predict")(predict.predict_cmd)
app.command()(inspect.samples)
app.command()(inspect.meshes)
app.command()(inspect.methods)
app.command()(inspect.compare)
app.add_typer(data.app, name="data")
app.add_typer(search.trials_app, name="trials")
app.add_typer(search.spaces_app, name="spaces")
app.add_typer(cluster.app, name="cluster")


def _interrupted() -> None:
    print("interrupted: the local Ray that posectl started was shut down; continue a run with "
          "--resume --name NAME", file=sys.stderr, flush=True)
    sys.exit(130)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one-line errors with exit code 2; tracebacks only with --debug."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    from posectl.orchestrator.cluster import use_token_auth
    use_token_auth()          # before anything imports ray: clusters started with `ray start` want the token
    try:
        code = app(args=argv, prog_name="posectl", standalone_mode=False)
        if code == 130:  # typer reports Ctrl-C as exit code 130
            _interrupted()
        if isinstance(code, int) and code:
            sys.exit(code)
    except PosectlError as e:
        if debug:
            raise
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        _interrupted()
    except OSError as e:  # read-only or full disk, missing directories: a user problem, said in one line
        if debug:
            raise
        where = f" {e.filename}" if getattr(e, "filename", None) else ""
        typer.echo(f"error: cannot access{where}: {e.strerror or e}", err=True)
        sys.exit(2)
    except Exception as e:  # noqa: BLE001 - the CLI's last line of defence
        if type(e).__name__ == "Abort":  # click turns Ctrl-C into Abort
            _interrupted()
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):  # click/typer usage errors: one line too
            msg, ctx = " ".join(e.format_message().split()), getattr(e, "ctx", None)
            if not msg:                                      # a bare command group: its help
                e.show()
            else:
                typer.echo(f"error: {msg}" + (f" (see `{ctx.command_path} --help`)" if ctx else ""), err=True)
            sys.exit(2)
        if debug:
            raise
        typer.echo(f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
                   "(run with --debug for the traceback)", err=True)
        sys.exit(1)
