"""Real server processes for the local stack and the tests: moto in server mode, dynalite and the Ximilar emulator.

Each starts on a free port of 127.0.0.1 and is stopped by its own process id.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

import requests

T = TypeVar("T")

# dynalite is an npm package: `make dynalite` installs the version pinned in this folder's package-lock.json.
DYNALITE_DIR = Path(__file__).resolve().parents[1] / "dynalite"
DYNALITE_CLI = DYNALITE_DIR / "node_modules" / "dynalite" / "cli.js"


def wait_for(condition: Callable[[], T | None], timeout: float = 10.0, interval: float = 0.05, what: str = "") -> T:
    """Poll `condition` until it returns something truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@dataclass(frozen=True)
class Server:
    """A server process this process started: where it listens, and the id it is stopped by."""

    url: str
    pid: int


@contextmanager
def _http_server(name: str, argv: list[str], url: str, health: str) -> Iterator[Server]:
    """Start `argv` (a server listening at `url`), wait until GET `url + health` answers 2xx, yield it,
    stop it by its own process id. Its stderr goes to a file (nothing reads a pipe until it exits), and
    says why should it exit before it answers."""
    with tempfile.TemporaryFile("w+") as errors:
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=errors, text=True)  # noqa: S603

        def up() -> bool:
            if process.poll() is not None:
                errors.seek(0)
                raise RuntimeError(f"{name} exited with {process.returncode}: {errors.read().strip()[-2000:]}")
            try:
                return requests.get(f"{url}{health}", timeout=1).ok
            except requests.ConnectionError:
                return False

        try:
            wait_for(up, timeout=30, what=name)
            yield Server(url, process.pid)
        finally:
            _stop(process)


@contextmanager
def run_moto() -> Iterator[Server]:
    """moto in server mode in its own process."""
    port = free_port()
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with _http_server("moto server", argv, f"http://127.0.0.1:{port}", "/moto-api/") as server:
        yield server


@contextmanager
def moto_server() -> Iterator[str]:
    """moto in server mode in its own process; yields its endpoint URL."""
    with run_moto() as server:
        yield server.url


@contextmanager
def run_dynalite() -> Iterator[Server]:
    """dynalite in its own node process, in memory: a second DynamoDB, with DynamoDB's own validation."""
    node = shutil.which("node")
    if node is None or not DYNALITE_CLI.is_file():
        raise RuntimeError(f"dynalite needs node and {DYNALITE_CLI}: run `make dynalite`")
    port = free_port()
    # Tables (and updates, deletes) take effect at once, as on moto, rather than after dynalite's default
    # half second: the tests make two tables each.
    timings = ["--createTableMs", "0", "--deleteTableMs", "0", "--updateTableMs", "0"]
    argv = [node, str(DYNALITE_CLI), "--host", "127.0.0.1", "--port", str(port), *timings]
    # DynamoDB's own health check: a GET of / answers "healthy: dynamodb.<region>.amazonaws.com".
    with _http_server("dynalite", argv, f"http://127.0.0.1:{port}", "/") as server:
        yield server


@contextmanager
def dynalite_server() -> Iterator[str]:
    """dynalite in its own process; yields its endpoint URL."""
    with run_dynalite() as server:
        yield server.url


def _read_line(stream: IO[str], prefix: str, process: subprocess.Popen[str]) -> str:
    for line in stream:
        if line.startswith(prefix):
            return line[len(prefix) :].strip()
    raise RuntimeError(f"process exited ({process.poll()}) before printing {prefix!r}")


@contextmanager
def run_emulator(token: str, *flags: str) -> Iterator[Server]:
    """The Ximilar emulator as a user starts it (`python -m ximilar_emulator`)."""
    process = subprocess.Popen(  # noqa: S603 - a fixed argv of this interpreter
        [sys.executable, "-m", "ximilar_emulator", "--port", "0", "--token", token, *flags],
        stdout=subprocess.PIPE,
        stderr=None,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        url = _read_line(process.stdout, "ximilar-emulator listening on ", process)
        yield Server(url, process.pid)
    finally:
        _stop(process)


@contextmanager
def emulator_process(token: str, *flags: str) -> Iterator[str]:
    """The Ximilar emulator as a user starts it (`python -m ximilar_emulator`); yields its URL."""
    with run_emulator(token, *flags) as server:
        yield server.url
