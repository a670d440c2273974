"""Every `posectl ...` line in the README's ```bash blocks parses against the CLI: commands, sub-commands,
options and their values exist and are well-formed. Nothing is executed: each line only goes through
click's argument parsing (`make_context`), walking into the command groups."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from posectl.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"
PLACEHOLDER = re.compile(r"<[^<>\s]+>")          # <run>, <date>, <trial>: not something a shell can run
TRAILING_COMMENT = re.compile(r"\s+#.*$")        # (for the test ids only; shlex strips comments properly)
SHELL_OPERATORS = {"|", "||", "&&", ";", "&", ">", ">>", "<", "2>", "2>&1"}


def readme_commands(text: str) -> list[tuple[int, str]]:
    """(line number, command) of every line in a ```bash block that starts with `posectl `; lines continued
    with a trailing backslash are joined. Trailing comments are left in (shlex drops them)."""
    out: list[tuple[int, str]] = []
    fence: str | None = None                       # language of the open code block, None outside one
    pending: tuple[int, str] | None = None
    for no, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            fence = None if fence is not None else (stripped[3:].strip() or "text")
            pending = None
            continue
        if fence != "bash":
            continue
        if pending is not None:
            start, joined = pending
            line = joined + " " + stripped
            no = start
        else:
            line = stripped
        if line.endswith("\\"):
            pending = (no, line[:-1].rstrip())
            continue
        pending = None
        if line.startswith("posectl "):
            out.append((no, line))
    return out


COMMANDS = readme_commands(README.read_text(encoding="utf-8"))


def parse_cli(args: list[str]) -> None:
    """Parse `posectl ARGS` like the CLI would, without running any command: raises click's UsageError
    (unknown command or option, bad value, missing argument...)."""
    cmd = typer.main.get_command(app)
    name, ctx = "posectl", None
    while True:
        try:
            ctx = cmd.make_context(name, list(args), parent=ctx, resilient_parsing=False)
        except Exception as e:  # noqa: BLE001 - --help prints the help and exits with 0: parsed fine
            if getattr(e, "exit_code", None) == 0 and type(e).__name__ == "Exit":
                return
            raise
        if not hasattr(cmd, "resolve_command"):    # a command, not a group: fully parsed
            return
        rest = [*(getattr(ctx, "_protected_args", None) or getattr(ctx, "protected_args", None) or []), *ctx.args]
        if not rest:
            ctx.fail("Missing command.")
        name, cmd, args = cmd.resolve_command(ctx, rest)


def test_readme_has_posectl_commands():
    assert len(COMMANDS) >= 10, f"only {len(COMMANDS)} `posectl` lines found in the bash blocks of {README}"


def test_the_parser_rejects_what_the_cli_rejects():
    parse_cli(["train", "baseline", "epochs=3", "--workers", "2"])
    parse_cli(["data", "prepare", "h36m", "--3d", "a.npz", "--out", "d"])
    parse_cli(["trials", "--help"])
    for bad in (["train", "baseline", "--gpuz", "2"], ["nosuchcommand"], ["data", "prepare", "nosuch"],
                ["trials"], ["eval"], ["train", "baseline", "--workers", "two"], ["spaces", "ls", "extra"]):
        with pytest.raises(Exception) as e:
            parse_cli(bad)
        assert e.value.exit_code == 2, bad
    assert readme_commands("```bash\nposectl a \\\n  --b c   # note\nls\n```\n```text\nposectl x\n```\n"
                           "```bash\n  posectl y\n```\n") == [(2, "posectl a --b c   # note"), (10, "posectl y")]


@pytest.mark.parametrize("no, line", COMMANDS, ids=[f"README.md:{no}: {TRAILING_COMMENT.sub('', c)}" for no, c in COMMANDS])
def test_readme_command_parses(no, line):
    where = f"README.md:{no}: `{line}`"
    try:
        args = shlex.split(line, comments=True)
    except ValueError as e:
        pytest.fail(f"{where}: not a shell command line ({e})")
    placeholders = [p for a in args for p in PLACEHOLDER.findall(a)]
    assert not placeholders, (f"{where}: shell placeholder {', '.join(placeholders)} in a bash block (a shell "
                              "reads < and > as redirections); write a runnable value, e.g. runs/NAME")
    operators = [a for a in args if a in SHELL_OPERATORS]
    assert not operators, f"{where}: shell operator {operators[0]!r}; a bash-block line is one posectl command"
    assert args[0] == "posectl"
    try:
        parse_cli(args[1:])
    except Exception as e:  # noqa: BLE001 - click's UsageError, BadParameter, NoArgsIsHelpError...
        msg = e.format_message() if hasattr(e, "format_message") else f"{type(e).__name__}: {e}"
        pytest.fail(f"{where} does not parse: {msg}")
