"""The functions as Lambda runs them: the `sam build` output under Lambda's runtime interface emulator.

`xasync.lambda_runtime` imports a handler module from the repository into this process. Here each function
runs as a process of its own, from what `sam build` made of it, under the two programs Lambda's python3.13
runtime consists of:
- `aws-lambda-rie`, the Runtime Interface Emulator that `sam local invoke` runs in its container, taken
  from the installed aws-sam-cli package (`.venv-sam`, `make sam-venv`): it serves the invoke API
  (`POST /2015-03-31/functions/function/invocations`) and the Runtime API, starts the runtime on the first
  invoke (a cold start, whose duration it reports), enforces the timeout (and starts a new runtime after
  one, as Lambda does) and takes one invoke at a time;
- `awslambdaric`, Lambda's Python runtime interface client, in a venv of python3.13 (`.venv-lambda`) that
  holds nothing else (requirements-lambda-runtime.txt): it imports the handler and calls it per event.

The runtime process sees only the built artifacts: the function's folder is LAMBDA_TASK_ROOT (and the
working directory), the layer's `python/` is on the path where Lambda mounts /opt/python, then the
standard library and the runtime client. Its environment is the function's own (the local stack's
`function_environment`) with what Lambda's runtime adds; nothing of this process's environment leaks in.

The layer is built for Lambda's arm64. On another machine its extension modules cannot load: each must
have the pure-Python module its package falls back to (charset_normalizer's `md` and `cd` do), or the
stack refuses to start, naming it (`foreign_extensions`).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import requests

from xasync.servers import free_port, wait_for
from xasync.template import PROJECT_ROOT, resources_of_type

DEFAULT_BUILD_DIR = PROJECT_ROOT / ".aws-sam" / "build"
LAMBDA_VENV = PROJECT_ROOT / ".venv-lambda"
SAM_VENV = PROJECT_ROOT / ".venv-sam"
INVOKE_PATH = "/2015-03-31/functions/function/invocations"
# What to run when a part is missing (the Makefile's targets).
SETUP = {
    "build": "make build (sam build; or name another build with --build-dir)",
    "lambda-venv": "make lambda-venv (python3.13 with requirements-lambda-runtime.txt in .venv-lambda)",
    "sam-venv": "make sam-venv (aws-sam-cli, which ships aws-lambda-rie)",
}
# RIE's own log lines, apart from what the function prints: its rapid log, and START / END / REPORT.
RIE_LINE = re.compile(r"^(\d{2} \w{3} \d{4} [\d:,]+ \[\w+\] \(rapid\) |(START|END|REPORT) RequestId: )")
# The init phase, from the runtime's start to its first call for an event: Lambda's Init Duration. (The
# REPORT line's "Init Duration" of this RIE is not that: it printed 0.04 to 0.19 ms for inits of 50 to 90 ms.)
INIT_REPORT = re.compile(r"\(rapid\) INIT REPORT\(durationMs: ([\d.]+)\)")
# ELF e_machine values (the extension modules' target), by platform.machine() of this host.
ELF_MACHINES = {"x86_64": 62, "amd64": 62, "aarch64": 183, "arm64": 183}
RIE_ARCHITECTURES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}


class RuntimeUnavailable(RuntimeError):
    """A part of the Lambda runtime mode is missing; the message says what to run."""


class FunctionError(Exception):
    """What the runtime answered instead of a result: the handler raised, its init failed, or it timed out."""

    def __init__(self, function: str, error_type: str, message: str) -> None:
        super().__init__(f"{function}: {error_type}: {message}")
        self.function, self.error_type, self.message = function, error_type, message


def rie_binary(sam_venv: Path = SAM_VENV) -> Path | None:
    """aws-lambda-rie for this machine, as the installed aws-sam-cli ships it (XASYNC_RIE names another)."""
    if named := os.environ.get("XASYNC_RIE"):
        return Path(named)
    architecture = RIE_ARCHITECTURES.get(platform.machine().lower())
    if architecture is None:
        return None
    pattern = f"lib/python3*/site-packages/samcli/local/rapid/aws-lambda-rie-{architecture}"
    found = sorted(glob.glob(str(sam_venv / pattern)))
    return Path(found[-1]) if found else None


def missing_parts(build_dir: Path = DEFAULT_BUILD_DIR, lambda_venv: Path = LAMBDA_VENV) -> list[str]:
    """What the runtime mode lacks on this machine, each with what makes it (empty: nothing)."""
    missing = []
    if not (build_dir / "template.yaml").is_file():
        missing.append(f"{build_dir} (no sam build output): {SETUP['build']}")
    if not (lambda_venv / "bin" / "python").exists():
        missing.append(f"{lambda_venv}: {SETUP['lambda-venv']}")
    rie = rie_binary()
    if rie is None or not rie.is_file():
        missing.append(f"aws-lambda-rie for {platform.machine()}: {SETUP['sam-venv']}")
    return missing


@dataclass(frozen=True)
class LambdaRuntime:
    """Where the runtime's parts are: the build, the emulator, the runtime client's python3.13."""

    build_dir: Path
    rie: Path
    python: Path

    @classmethod
    def locate(cls, build_dir: Path | None = None, lambda_venv: Path = LAMBDA_VENV) -> LambdaRuntime:
        build_dir = (build_dir or DEFAULT_BUILD_DIR).resolve()
        missing = missing_parts(build_dir, lambda_venv)
        if missing:
            raise RuntimeUnavailable("the Lambda runtime mode needs:\n  " + "\n  ".join(missing))
        rie = rie_binary()
        assert rie is not None  # missing_parts checked it
        return cls(build_dir, rie, lambda_venv / "bin" / "python")

    def site_packages(self) -> Path:
        """Where the runtime client is installed: Lambda's /var/runtime."""
        found = sorted((self.python.parent.parent / "lib").glob("python3*/site-packages"))
        if not found:
            raise RuntimeUnavailable(f"{self.python.parent.parent} has no site-packages: {SETUP['lambda-venv']}")
        return found[-1]

    def python_version(self) -> str:
        """`python3.13`: the runtime the venv's interpreter is, in the template's words."""
        # pyvenv.cfg says it without starting the interpreter.
        config = (self.python.parent.parent / "pyvenv.cfg").read_text()
        version = re.search(r"^version(?:_info)?\s*=\s*(\d+)\.(\d+)", config, re.MULTILINE)
        if version is None:
            raise RuntimeUnavailable(f"{self.python.parent.parent}/pyvenv.cfg names no version")
        return f"python{version.group(1)}.{version.group(2)}"


@dataclass(frozen=True)
class BuiltFunction:
    """One function of the build: its folder (/var/task), its layers' python/ (/opt/python), its settings."""

    logical_id: str
    task_root: Path
    layers: tuple[Path, ...]
    handler: str
    runtime: str
    timeout: int
    memory_size: int


def built_functions(template: dict[str, Any], build_dir: Path) -> dict[str, BuiltFunction]:
    """Every AWS::Serverless::Function of the template, as `sam build` laid it out in `build_dir`:
    `<build_dir>/<FunctionId>/` and `<build_dir>/<LayerId>/python/` (Globals merged in as SAM merges them)."""
    globals_ = template.get("Globals", {}).get("Function", {})
    found: dict[str, BuiltFunction] = {}
    for logical_id, resource in resources_of_type(template, "AWS::Serverless::Function").items():
        properties = {**globals_, **resource["Properties"]}
        layers = []
        for layer in properties.get("Layers", []):
            if not (isinstance(layer, dict) and "Ref" in layer):
                raise RuntimeUnavailable(f"{logical_id}: only layers of this template run locally, not {layer}")
            layers.append(build_dir / layer["Ref"] / "python")
        found[logical_id] = BuiltFunction(
            logical_id=logical_id,
            task_root=build_dir / logical_id,
            layers=tuple(layers),
            handler=str(properties["Handler"]),
            runtime=str(properties["Runtime"]),
            timeout=int(properties.get("Timeout", 3)),
            memory_size=int(properties.get("MemorySize", 128)),
        )
        for folder in (found[logical_id].task_root, *layers):
            if not folder.is_dir():
                raise RuntimeUnavailable(f"{folder} is missing from the build: {SETUP['build']}")
    return found


def _elf_machine(path: Path) -> int | None:
    with path.open("rb") as file:
        header = file.read(20)
    if header[:4] != b"\x7fELF" or len(header) < 20:
        return None
    return int.from_bytes(header[18:20], "little" if header[5] == 1 else "big")


@dataclass(frozen=True)
class ForeignExtension:
    """An extension module built for another machine, and what this machine imports in its place."""

    path: Path
    fallback: Path | None  # the pure-Python module the import system finds instead; None: nothing

    @property
    def module(self) -> str:
        return self.path.name.split(".", 1)[0]


def foreign_extensions(folder: Path, machine: str | None = None) -> list[ForeignExtension]:
    """The extension modules under `folder` that this machine cannot load, each with its fallback.

    Such a module is skipped by the import system when its file name carries another platform's tag
    (`md.cpython-313-aarch64-linux-gnu.so` is not among this machine's suffixes), and the package's
    pure-Python module of the same name is imported instead, if it has one. A name any machine's Python
    would try (`.abi3.so`, a bare `.so`) would fail to load instead: it has no fallback here.
    """
    host = ELF_MACHINES.get((machine or platform.machine()).lower())
    found = []
    for path in sorted(folder.rglob("*.so")):
        target = _elf_machine(path)
        if target is None or target == host:
            continue
        module = path.name.split(".", 1)[0]
        tagged = not path.name.endswith(".abi3.so") and path.name != f"{module}.so"
        candidates = [path.parent / f"{module}.py", path.parent / module / "__init__.py"]
        fallback = next((candidate for candidate in candidates if candidate.exists()), None) if tagged else None
        found.append(ForeignExtension(path, fallback))
    return found


PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)", re.MULTILINE)


def _files(folder: Path, *, in_packages_only: bool = False) -> Iterator[Path]:
    """The files under `folder`, without bytecode (and with `in_packages_only`, without its top-level files)."""
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if (
            path.is_file()
            and "__pycache__" not in relative.parts
            and not (in_packages_only and len(relative.parts) == 1)
        ):
            yield path


def stale_sources(template: dict[str, Any], build_dir: Path) -> list[str]:
    """What the repository has that the build does not: the build would run other code than the sources.

    By content, not by time (a checkout rewrites files it did not change): each function's modules against
    its folder in the build, the layer's packages against its python/, and its pinned requirements against
    the distributions installed there.
    """
    differences = []
    for logical_id, resource in resources_of_type(template, "AWS::Serverless::Function").items():
        source = PROJECT_ROOT / str(resource["Properties"]["CodeUri"])
        for path in _files(source):
            if path.suffix == ".py" and not _same(path, build_dir / logical_id / path.relative_to(source)):
                differences.append(str(path.relative_to(PROJECT_ROOT)))
    for logical_id, resource in resources_of_type(template, "AWS::Serverless::LayerVersion").items():
        source, layer = PROJECT_ROOT / str(resource["Properties"]["ContentUri"]), build_dir / logical_id / "python"
        for path in _files(source, in_packages_only=True):
            if not _same(path, layer / path.relative_to(source)):
                differences.append(str(path.relative_to(PROJECT_ROOT)))
        requirements = source / "requirements.txt"
        installed = {path.name.lower() for path in layer.glob("*.dist-info")} if layer.is_dir() else set()
        for name, version in PIN.findall(requirements.read_text() if requirements.is_file() else ""):
            if f"{re.sub(r'[-_.]+', '_', name).lower()}-{version}.dist-info" not in installed:
                differences.append(f"{requirements.relative_to(PROJECT_ROOT)}: {name}=={version}")
    return differences


def _same(source: Path, built: Path) -> bool:
    return built.is_file() and built.read_bytes() == source.read_bytes()


def runtime_environment(function: BuiltFunction, environment: dict[str, str], runtime: LambdaRuntime) -> dict[str, str]:
    """The runtime process's environment: the function's variables, and what Lambda's runtime sets beside them."""
    layer_paths = []
    for layer in function.layers:
        # Lambda's order for a layer: its python/lib/python3.x/site-packages, then python/.
        layer_paths += [str(layer / "lib" / function.runtime / "site-packages"), str(layer)]
    return {
        **environment,
        "AWS_LAMBDA_FUNCTION_NAME": function.logical_id,
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(function.memory_size),
        "AWS_LAMBDA_FUNCTION_TIMEOUT": str(function.timeout),
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "AWS_EXECUTION_ENV": f"AWS_Lambda_{function.runtime}",
        "LAMBDA_TASK_ROOT": str(function.task_root),
        "LAMBDA_RUNTIME_DIR": str(runtime.site_packages()),
        # /var/task, then the layers (/opt/python), then the standard library and the runtime client.
        "PYTHONPATH": os.pathsep.join([str(function.task_root), *layer_paths]),
        # Lambda's code folders are read-only: a module without bytecode in the build is compiled again by
        # every cold start, and must not leave a .pyc in the build that later runs would use.
        "PYTHONDONTWRITEBYTECODE": "1",
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "en_US.UTF-8",
        "TZ": ":UTC",
        # Lambda has no ~/.aws: the user's profiles must not shape a local run.
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }


def children_of(pid: int) -> list[int]:
    """The processes `pid` started that still run (Linux's /proc; empty elsewhere)."""
    found = []
    for path in glob.glob(f"/proc/{pid}/task/*/children"):
        with contextlib.suppress(OSError):
            found += [int(child) for child in Path(path).read_text().split()]
    return found


def _write_to_stdout(line: str) -> None:
    sys.stdout.write(line)
    sys.stdout.flush()


class RieFunction:
    """One function under aws-lambda-rie: its own process on free ports of 127.0.0.1, one event at a time.

    `invoke` is a handler as the local event sources call one (`(event, context)`); the context is the
    runtime's own (its deadline counts from the invoke, from the function's Timeout), not the caller's.
    What the function prints goes to `echo` (this process's stdout by default, as in-process handlers
    print); RIE's own lines go to `log_path`, if given, and its init reports to `init_durations_ms`.
    """

    def __init__(
        self,
        function: BuiltFunction,
        environment: dict[str, str],
        runtime: LambdaRuntime,
        *,
        echo: Callable[[str], None] | None = _write_to_stdout,
        log_path: Path | None = None,
    ) -> None:
        self.function, self.runtime, self.echo, self.log_path = function, runtime, echo, log_path
        self.environment = runtime_environment(function, environment, runtime)
        self.port, self.runtime_api_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # RIE takes one invoke at a time, as one Lambda instance does: a second one while the first runs
        # crashes this RIE (a nil pointer dereference after "ReserveFailed: AlreadyReserved").
        self._lock = threading.Lock()
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._children: set[int] = set()
        self.init_durations_ms: list[float] = []
        self.rie_lines: deque[str] = deque(maxlen=500)
        self._log: IO[str] | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None, "not started"
        return self._process.pid

    def start(self) -> RieFunction:
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.log_path.open("w", encoding="utf-8")
        command = [
            str(self.runtime.rie),
            "--log-level",
            "info",  # its INIT REPORT lines are at info
            "--runtime-interface-emulator-address",
            f"127.0.0.1:{self.port}",
            "--runtime-api-address",
            f"127.0.0.1:{self.runtime_api_port}",
            # -P: no working directory ahead of the path; LAMBDA_TASK_ROOT heads PYTHONPATH, as on Lambda.
            str(self.runtime.python),
            "-P",
            "-m",
            "awslambdaric",
            self.function.handler,
        ]
        self._process = subprocess.Popen(  # noqa: S603 - the emulator and the runtime's python, fixed flags
            command,
            cwd=self.function.task_root,
            env=self.environment,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
            errors="replace",
            # Its own session: Ctrl-C in a terminal reaches `xasync up`, which stops the functions itself,
            # after their event sources (a function stopped first would fail the events still in flight).
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, name=f"rie-{self.function.logical_id}", daemon=True)
        self._reader.start()

        def listening() -> bool:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"aws-lambda-rie for {self.function.logical_id} exited: {self.recent_output()}")
            try:
                requests.get(self.url, timeout=1)  # any answer: it listens
                return True
            except requests.ConnectionError:
                return False

        wait_for(listening, timeout=15, what=f"aws-lambda-rie for {self.function.logical_id}")
        return self

    def _read(self) -> None:
        assert self._process is not None
        assert self._process.stdout is not None
        for line in self._process.stdout:
            if RIE_LINE.match(line):
                self.rie_lines.append(line.rstrip("\n"))
                if match := INIT_REPORT.search(line):
                    self.init_durations_ms.append(float(match.group(1)))
                if self._log is not None:
                    self._log.write(line)
                    self._log.flush()
            elif self.echo is not None:
                self.echo(line)

    def recent_output(self, lines: int = 20) -> str:
        return "\n".join(list(self.rie_lines)[-lines:])

    def invoke(self, event: Any, context: Any = None) -> Any:
        """Send `event` through the invoke API and return the handler's answer; raise FunctionError if the
        runtime answered an error (the handler raised, its init failed, or the function timed out)."""
        del context  # the runtime makes its own
        with self._lock:
            # Bounded by RIE's own timeout (the function's) plus an init, which Lambda bounds at 10 s.
            answer = requests.post(self.url + INVOKE_PATH, data=json.dumps(event), timeout=self.function.timeout + 30)
            if self._process is not None:
                self._children.update(children_of(self._process.pid))
        try:
            body = answer.json()
        except ValueError:  # a timeout's answer is plain text: "Task timed out after 2.00 seconds"
            raise FunctionError(self.function.logical_id, "Sandbox.Timedout", answer.text) from None
        if answer.status_code != 200:
            raise FunctionError(self.function.logical_id, f"HTTP {answer.status_code}", answer.text)
        # An error is answered 200 too, as the runtime posted it: errorType, errorMessage, stackTrace.
        if isinstance(body, dict) and {"errorType", "errorMessage"} <= body.keys() and "requestId" in body:
            raise FunctionError(self.function.logical_id, str(body["errorType"]), str(body["errorMessage"]))
        return body

    def stop(self) -> None:
        """Stop the emulator by its process id, then any runtime it started that outlived it."""
        process = self._process
        if process is None:
            return
        self._children.update(children_of(process.pid))
        if process.poll() is None:
            process.terminate()  # RIE stops its runtime on SIGTERM
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        for child in self._children:  # our own runtimes, had RIE been killed before it could stop them
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(child, signal.SIGKILL)
        if self._reader is not None:
            self._reader.join(timeout=5)
        if self._log is not None:
            self._log.close()

    def wait_for_init(self, count: int = 1, timeout: float = 30) -> float:
        """The duration (ms) of the `count`-th init RIE reported, once it has."""
        wait_for(lambda: len(self.init_durations_ms) >= count, timeout=timeout, interval=0.01, what="an init report")
        return self.init_durations_ms[count - 1]


@contextlib.contextmanager
def running_function(
    function: BuiltFunction,
    environment: dict[str, str],
    runtime: LambdaRuntime,
    *,
    echo: Callable[[str], None] | None = _write_to_stdout,
    log_path: Path | None = None,
) -> Iterator[RieFunction]:
    """A function under aws-lambda-rie for the block, stopped by its process id after it."""
    process = RieFunction(function, environment, runtime, echo=echo, log_path=log_path)
    try:
        yield process.start()
    finally:
        process.stop()


def init_duration_ms(
    function: BuiltFunction, environment: dict[str, str], runtime: LambdaRuntime, event: Any = None
) -> float:
    """One cold start: a fresh emulator and runtime, one invoke, RIE's own figure for the init.

    The default event is a JSON list, which no handler reads: each fails on its first line, before any
    call, so nothing is reached whatever the environment points at.
    """
    with running_function(function, environment, runtime, echo=None) as process:
        started = time.monotonic()
        with contextlib.suppress(FunctionError):
            process.invoke([] if event is None else event)
        try:
            return process.wait_for_init(timeout=max(5.0, 30 - (time.monotonic() - started)))
        except TimeoutError:
            raise RuntimeError(f"{function.logical_id}: no init report:\n{process.recent_output()}") from None


__all__ = [
    "DEFAULT_BUILD_DIR",
    "BuiltFunction",
    "ForeignExtension",
    "FunctionError",
    "LambdaRuntime",
    "RieFunction",
    "RuntimeUnavailable",
    "built_functions",
    "foreign_extensions",
    "init_duration_ms",
    "missing_parts",
    "running_function",
    "stale_sources",
]
