"""camstream.cli: every command's help, and the one error boundary (message, exit code,
no traceback)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from camstream.cli import app
from camstream.cli.common import new_app
from camstream.errors import CamstreamError, ConfigError, ServiceError
from camstream.settings import REPO_ROOT


def _paths(command: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    subcommands = getattr(command, "commands", None)
    if not subcommands:
        return [path]
    found = [path]
    for name, sub in subcommands.items():
        found += _paths(sub, (*path, name))
    return found


COMMANDS = _paths(typer.main.get_command(app))


def test_the_cli_has_the_commands_the_design_names() -> None:
    names = {path[0] for path in COMMANDS if path}
    assert names >= {"setup", "up", "status", "worker", "produce", "tail", "schemas"}
    assert names >= {"export", "drift", "bench", "cameras"}
    assert ("bench", "pipeline") in COMMANDS and ("cameras", "add") in COMMANDS


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "camstream")
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def _failing(error: CamstreamError) -> typer.Typer:
    failing = new_app(name="camstream")

    @failing.command()
    def broken() -> None:
        raise error

    @failing.command()
    def other() -> None:  # a second command keeps `broken` a subcommand
        pass

    group = new_app(help="a group")

    @group.command("deep")
    def deep() -> None:
        raise error

    failing.add_typer(group, name="group")
    return failing


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ConfigError("set CAMSTREAM_X to a number"), 2),
        (ServiceError("kafka did not start"), 1),
        (CamstreamError("something camstream knows"), 1),
    ],
)
def test_camstream_errors_end_as_a_message_and_an_exit_code(
    error: CamstreamError, code: int
) -> None:
    # Given a command that raises one of camstream's errors
    failing = _failing(error)
    for args, command in ((["broken"], "broken"), (["group", "deep"], "group deep")):
        # When it runs
        result = CliRunner().invoke(failing, args, prog_name="camstream")
        # Then it exits with the code for its kind and one line naming the command
        assert result.exit_code == code
        assert result.output == f"camstream {command}: {error}\n"
        assert "Traceback" not in result.output


def test_invalid_settings_exit_2_naming_the_variable() -> None:
    # Given an invalid setting, when a real command starts in its own process
    result = subprocess.run(
        [sys.executable, "-m", "camstream", "tail", "predictions"],
        env={"CAMSTREAM_BATCH_MAX": "0", "PATH": "/usr/bin:/bin"},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # Then it stops with exit 2, the variable to fix and no traceback
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("camstream tail: invalid settings")
    assert "CAMSTREAM_BATCH_MAX" in result.stderr
    assert "Traceback" not in result.stderr
