"""Driving the `xasync` CLI in-process against a running local stack, as a user at a terminal would."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from xasync import cli, local_stack
from xasync.local_stack import LocalStack


def point_cli_at(local: LocalStack, path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Write the state `xasync up` writes, at `path`, so the CLI's commands find this stack."""
    monkeypatch.setattr(local_stack, "STATE_FILE", path)
    local_stack.write_state(local, path)
    return path


def xasync(*arguments: str) -> Result:
    """Run one command; it must succeed (its output and exception are the failure's message)."""
    result = CliRunner().invoke(cli.main, list(arguments))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result
