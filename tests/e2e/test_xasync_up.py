"""`xasync up` as a user (or a supervisor) runs and stops it: a process of its own, ended by a signal."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from xasync.servers import wait_for

READY = "ximilar-async local stack is up"
PIDS = re.compile(r"^\s*Server pids\s+(.+)$")


def alive(pid: int) -> bool:
    """Whether the process exists and has not exited (a zombie has: only its exit status is left)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:  # it exited just now, or there is no /proc to tell a zombie by
        return not Path("/proc/self").exists()


class Lines:
    """The output of a process, read by a thread so that a test can wait for a line with a deadline."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert process.stdout is not None
        stream = process.stdout
        self.thread = threading.Thread(target=lambda: self.lines.extend(stream), daemon=True)
        self.thread.start()

    def text(self) -> str:
        return "".join(self.lines)


@pytest.fixture
def xasync_up(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Lines]]:
    """`xasync up` in its own session, its state in tmp_path (a user's own `xasync up` is left alone)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "xasync.cli", "up", "--sweep-every", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "XASYNC_STATE_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1"},
    )
    lines = Lines(process)
    try:
        yield process, lines
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


@pytest.mark.slow
def test_sigterm_stops_up_and_every_server_it_started(
    xasync_up: tuple[subprocess.Popen[str], Lines], tmp_path: Path
) -> None:
    process, output = xasync_up

    def started_pids() -> list[int] | None:
        if process.poll() is not None:
            raise AssertionError(f"xasync up exited with {process.returncode}:\n{output.text()}")
        if READY not in output.text():
            return None
        found = [PIDS.match(line) for line in list(output.lines)]
        return next(([int(pid) for pid in re.findall(r"\d+", m.group(1))] for m in found if m), None)

    pids = wait_for(started_pids, timeout=90, interval=0.2, what="xasync up to be ready")
    try:
        assert len(pids) == 2  # moto and the emulator
        assert all(alive(pid) for pid in pids)
        assert (tmp_path / "local.json").exists()

        process.send_signal(signal.SIGTERM)

        wait_for(lambda: process.poll() is not None, timeout=30, interval=0.1, what="xasync up to exit")
        assert process.returncode == 0, output.text()
        wait_for(lambda: not any(alive(pid) for pid in pids), timeout=10, interval=0.1, what="the servers to stop")
        assert not (tmp_path / "local.json").exists()
        output.thread.join(timeout=10)
        assert "stopping" in output.text()
    finally:
        for pid in pids:  # a failed run must not leave them behind either: stopped by their own ids
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
