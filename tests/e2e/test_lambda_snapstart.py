"""SnapStart under Lambda's runtime client: each handler cold-started from the `sam build` output by awslambdaric,
with `AWS_LAMBDA_INITIALIZATION_TYPE=snap-start`, against a Runtime API served here.

That is how Lambda takes a snapshot: awslambdaric imports the handler (the init), runs the before-snapshot hooks
registered with `snapshot_restore_py` (the real module, from .venv-lambda), asks the Runtime API for
`/restore/next` (the snapshot is taken, and later resumed, there), runs the after-restore hooks, then asks for
events. A probe module, loaded by the runtime as the handler module, imports the real one and registers a hook
on each side of the handler's (before-snapshot hooks run in the reverse order of their registration), to see
what `ximilar_async/snapstart.py` promises:
- the init opens no connection (an audit hook on `socket.connect`, installed before the handler's import);
- every `random.Random` alive at the snapshot (`random`'s own, the sweeper's) draws from a new state after a
  restore;
- nothing cached before the snapshot outlives the restore: a value put in each Powertools parameters
  provider's cache at the snapshot is gone after it.

They need the build (`make build`; XASYNC_BUILD_DIR names another) and .venv-lambda (`make lambda-venv`).
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.support.lambda_runtime import BUILD_DIR, require_lambda_runtime
from xasync import lambda_rie
from xasync.servers import wait_for
from xasync.template import functions, load_template

SPECS = functions(load_template())

PROBE = '''
"""Loaded by awslambdaric as the handler module: the real handler's init, watched from both sides."""
import gc, hashlib, importlib, json, os, random, sys
from datetime import datetime, timedelta

CONNECTIONS = []


def audit(event, args):
    if event == "socket.connect":
        CONNECTIONS.append(repr(args[1]))


sys.addaudithook(audit)

from snapshot_restore_py import register_after_restore, register_before_snapshot

REPORT, GENERATORS, PROVIDERS = {}, [], []


def digest(generator):
    return hashlib.sha256(repr(generator.getstate()).encode()).hexdigest()


def open_sockets():
    """The sockets this process holds open (Linux: its descriptors that name a socket)."""
    found = []
    for descriptor in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{descriptor}")
        except OSError:  # the listing's own descriptor, closed by now
            continue
        if target.startswith("socket:"):
            found.append(target)
    return found


@register_before_snapshot  # registered before the handler's hooks: runs after them
def at_snapshot():
    REPORT["connections_during_init"] = list(CONNECTIONS)
    REPORT["sockets_open_at_snapshot"] = len(open_sockets())
    # The cold start froze what it made (coldstart.cold_start), and gc.get_objects() lists unfrozen objects only.
    gc.unfreeze()
    objects = gc.get_objects()
    # Exactly random.Random: a SystemRandom reads os.urandom, which no snapshot holds.
    GENERATORS.extend(o for o in objects if type(o) is random.Random)
    REPORT["generators"] = len(GENERATORS)
    REPORT["random_module_generator"] = any(g is random._inst for g in GENERATORS)
    REPORT["at_snapshot"] = [digest(g) for g in GENERATORS]
    from aws_lambda_powertools.utilities.parameters.base import BaseProvider, ExpirableValue

    PROVIDERS.extend(o for o in objects if isinstance(o, BaseProvider))
    for provider in PROVIDERS:  # as if the init had read a secret
        expires = datetime.now() + timedelta(hours=1)
        provider.store[("read-before-the-snapshot", "plain")] = ExpirableValue("secret", expires)
    REPORT["providers"] = sorted(type(p).__name__ for p in PROVIDERS)


module, name = os.environ["PROBED_HANDLER"].rsplit(".", 1)
handler = getattr(importlib.import_module(module), name)


@register_after_restore  # registered after the handler's hooks: runs after them
def after_restore():
    REPORT["after_restore"] = [digest(g) for g in GENERATORS]
    REPORT["cached_after_restore"] = sum(len(p.store) for p in PROVIDERS)
    with open(os.environ["PROBE_REPORT"], "w") as report:
        json.dump(REPORT, report)
'''


CREDENTIALS_PATH = "/2021-04-23/credentials"
CONTAINER_CREDENTIALS = {
    "AccessKeyId": "ASIASNAPSTARTTEST000",
    "SecretAccessKey": "snapstart-test-secret",
    "Token": "snapstart-test-token",
    "Expiration": "2099-01-01T00:00:00Z",
}


@dataclass
class RuntimeApi:
    """The Runtime API's part that a SnapStart init uses, recording what the runtime asked."""

    asked: list[str] = field(default_factory=list)
    posted: list[str] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)


def serve_runtime_api(api: RuntimeApi) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, so a client may keep its connection open, as it would on Lambda

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the test reads `api` instead."""

        def do_GET(self) -> None:
            api.asked.append(self.path)
            body = b""
            if self.path == CREDENTIALS_PATH:  # the container credentials endpoint, SnapStart's source of them
                body = json.dumps(CONTAINER_CREDENTIALS).encode()
                self.send_response(200)
            elif self.path.endswith("/invocation/next"):
                # Ready for events after the restore: the test has what it needs; no event ever comes (the
                # runtime is killed meanwhile, and nobody reads the answer).
                api.stopping.wait(60)
                self.close_connection = True
                return
            else:  # /restore/next: the snapshot is taken, and resumed
                self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
            api.posted.append(f"{self.path}: {body}")
            self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def built() -> dict[str, lambda_rie.BuiltFunction]:
    require_lambda_runtime()
    return lambda_rie.built_functions(load_template(), BUILD_DIR.resolve())


@pytest.fixture
def runtime_api() -> Iterator[tuple[RuntimeApi, str]]:
    api = RuntimeApi()
    server = serve_runtime_api(api)
    try:
        yield api, f"127.0.0.1:{server.server_port}"
    finally:
        api.stopping.set()
        server.shutdown()
        server.server_close()


def snapstart_init(
    function: lambda_rie.BuiltFunction,
    runtime_api: str,
    probe_dir: Path,
    environment: dict[str, str],
    resumed: Callable[[], bool] = lambda: True,
) -> dict[str, Any]:
    """awslambdaric's SnapStart init of the built function, watched by the probe; returns the probe's report
    once `resumed` holds (the runtime asks for its first invocation a moment after the probe reports)."""
    runtime = lambda_rie.LambdaRuntime.locate(BUILD_DIR)
    report = probe_dir / "report.json"
    env = lambda_rie.runtime_environment(function, environment, runtime)
    env |= {
        "PYTHONPATH": os.pathsep.join([env["PYTHONPATH"], str(probe_dir)]),  # last: it shadows nothing
        "AWS_LAMBDA_RUNTIME_API": runtime_api,
        "AWS_LAMBDA_INITIALIZATION_TYPE": "snap-start",
        "PROBED_HANDLER": function.handler,
        "PROBE_REPORT": str(report),
    }
    process = subprocess.Popen(
        [str(runtime.python), "-P", "-m", "awslambdaric", "snapstart_probe.handler"],
        cwd=function.task_root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(lambda: report.exists() or process.poll() is not None, timeout=60, what="the probe's report")
        if not report.exists():
            raise AssertionError(f"the runtime exited with {process.returncode}:\n{process.communicate()[0]}")
        written = dict(json.loads(wait_for(lambda: report.read_text() or None, what="the whole report")))
        wait_for(lambda: resumed() or process.poll() is not None, timeout=30, what="the runtime to resume")
        return written
    finally:
        process.kill()  # our own process, by its id (it waits for an event that never comes)
        process.wait(timeout=10)


def given_environment(logical_id: str, credentials: str, api_address: str) -> dict[str, str]:
    """The function's variables, every AWS endpoint a closed local port (a call would fail, and count), and
    credentials as on-demand Lambda gives them (in the environment) or as SnapStart does (an endpoint)."""
    environment = {
        **SPECS[logical_id].environment,
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
    }
    if credentials == "environment":
        return environment | {
            "AWS_ACCESS_KEY_ID": "ASIASNAPSTARTTEST000",
            "AWS_SECRET_ACCESS_KEY": "snapstart-test-secret",
            "AWS_SESSION_TOKEN": "snapstart-test-token",
        }
    return environment | {
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": f"http://{api_address}{CREDENTIALS_PATH}",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN": "snapstart-test-authorization",
    }


# SnapStart functions get their credentials from the container credentials endpoint. botocore fetches a
# session's credentials when it builds its first client, at the cold start: the init would connect, and the
# snapshot would hold the credentials and the pooled socket. coldstart.DeferredCredentials asks the chain on a
# client's first call instead: "container" proves it.
@pytest.mark.parametrize("logical_id", sorted(SPECS))
@pytest.mark.parametrize("credentials", ["environment", "container"])
def test_a_snapstart_init_opens_nothing_and_a_restore_reseeds_and_forgets(
    logical_id: str,
    credentials: str,
    built: dict[str, lambda_rie.BuiltFunction],
    runtime_api: tuple[RuntimeApi, str],
    tmp_path: Path,
) -> None:
    # Given the probe beside the built function, in its environment
    (tmp_path / "snapstart_probe.py").write_text(textwrap.dedent(PROBE))
    api, address = runtime_api
    environment = given_environment(logical_id, credentials, address)
    # When awslambdaric inits it for a snapshot, and resumes it
    next_invocation = "/2018-06-01/runtime/invocation/next"
    report = snapstart_init(built[logical_id], address, tmp_path, environment, lambda: next_invocation in api.asked)
    # Then the runtime went through the snapshot and the restore, without an error
    assert [path for path in api.asked if path.startswith("/2018-06-01/")] == [
        "/2018-06-01/runtime/restore/next",
        "/2018-06-01/runtime/invocation/next",
    ]
    assert not api.posted  # no init error, no restore error
    # every generator alive at the snapshot draws from a new state after the restore
    assert report["random_module_generator"]
    changed = [before != after for before, after in zip(report["at_snapshot"], report["after_restore"], strict=True)]
    assert all(changed), f"{changed.count(False)} of {report['generators']} generators not seeded again"
    if logical_id == "SweeperFunction":
        assert report["generators"] >= 2  # random's own and the sweeper's
    # what the providers cached before the snapshot is gone
    assert report["cached_after_restore"] == 0
    if logical_id in ("SubmitFunction", "WebhookFunction"):
        assert report["providers"]  # their SSM and Secrets Manager providers are built at the cold start
    # and the init opened no connection, so none is open in the snapshot
    assert report["connections_during_init"] == [], api.asked
    assert report["sockets_open_at_snapshot"] == 0
