"""Shared fixtures: real server processes (moto, dynalite, the emulator) and tables built from template.yaml."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.support import iam_audit
from tests.support.aws import AwsStack, create_stack, create_table_from_template
from xasync.servers import dynalite_server, emulator_process, moto_server
from xasync.template import load_template
from ximilar_async.adapters.dynamodb.models import Tables, bind_tables
from ximilar_emulator import EmulatorControl

# Tests never reach AWS: fake credentials, a fixed region.
os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "POWERTOOLS_SERVICE_NAME": "ximilar-async-tests",
        "POWERTOOLS_METRICS_NAMESPACE": "XimilarAsyncTests",
    }
)
for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL"):
    os.environ.pop(name, None)

EMULATOR_TOKEN = "emulator-test-token"


@dataclass(frozen=True)
class RunningEmulator:
    url: str
    token: str
    control: EmulatorControl


@dataclass(frozen=True)
class DynamoDBBackend:
    """The DynamoDB a test's `tables` live in: moto, or dynalite (DynamoDB's own validation and errors)."""

    name: str
    endpoint: str
    backups_and_ttl: bool  # dynalite has no UpdateContinuousBackups / UpdateTimeToLive


@pytest.fixture(scope="session")
def template() -> dict[str, Any]:
    return load_template()


@pytest.fixture(scope="session")
def aws_endpoint() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture(scope="session")
def dynalite_endpoint() -> Iterator[str]:
    """dynalite for the session, started by the first test that runs on it."""
    with dynalite_server() as url:
        yield url


@pytest.fixture
def dynamodb_backend(request: pytest.FixtureRequest) -> DynamoDBBackend:
    """moto, which also serves S3, SQS and the rest of the stack. A data-layer module runs its tests on
    both backends, so that an expression moto lets through cannot hide from DynamoDB's validation:
    `pytestmark = pytest.mark.parametrize("dynamodb_backend", ["moto", "dynalite"], indirect=True)`.
    """
    name = getattr(request, "param", "moto")
    if name == "moto":
        return DynamoDBBackend(name, request.getfixturevalue("aws_endpoint"), backups_and_ttl=True)
    if name == "dynalite":
        return DynamoDBBackend(name, request.getfixturevalue("dynalite_endpoint"), backups_and_ttl=False)
    raise ValueError(f"no DynamoDB backend {name!r}")


@pytest.fixture(scope="session")
def _emulator_session() -> Iterator[RunningEmulator]:
    fast = ["--created-delay-seconds", "0.05", "--processing-delay-seconds", "0.05", "--seed", "7"]
    with emulator_process(EMULATOR_TOKEN, *fast) as url:
        yield RunningEmulator(url, EMULATOR_TOKEN, EmulatorControl(url))


@pytest.fixture
def emulator(_emulator_session: RunningEmulator) -> RunningEmulator:
    """The emulator, reset to its start-up knobs with no requests, faults or logs."""
    _emulator_session.control.reset()
    return _emulator_session


@pytest.fixture
def dynamodb(dynamodb_backend: DynamoDBBackend) -> Any:
    return boto3.client("dynamodb", endpoint_url=dynamodb_backend.endpoint)


@pytest.fixture
def aws_stack(aws_endpoint: str, template: dict[str, Any]) -> AwsStack:
    """Input bucket notifying a queue, tables, token and signing key: fresh names per test."""
    return create_stack(aws_endpoint, template, EMULATOR_TOKEN)


@pytest.fixture
def tables(dynamodb: Any, template: dict[str, Any], dynamodb_backend: DynamoDBBackend) -> Tables:
    """Fresh tables for one test on its DynamoDB backend, created from template.yaml, and the models bound to them."""
    suffix = uuid.uuid4().hex[:8]
    images, requests_ = f"images-{suffix}", f"requests-{suffix}"
    for logical_id, name in (("ImagesTable", images), ("RequestsTable", requests_)):
        create_table_from_template(
            dynamodb, template, logical_id, name, backups_and_ttl=dynamodb_backend.backups_and_ttl
        )
    return bind_tables(images, requests_, host=dynamodb_backend.endpoint)


# --- IAM proven, not read (tests/support/iam_audit.py) ------------------------------------------
# The functions' AWS calls are recorded for the whole session and compared with the template's
# statements when it ends. A call the template does not allow fails every run, even a run of one
# test. A grant no call used fails only a complete run (every test path, nothing deselected, no
# failure), since a subset of tests cannot be expected to use everything.
_deselected: list[int] = []
_verdict: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    iam_audit.install(load_template())  # before any function's client exists


def pytest_collection_finish(session: pytest.Session) -> None:
    audit = iam_audit.current()
    if audit is not None:
        iam_audit.wrap_load_function(audit)  # every module that imported load_function is imported now


def pytest_deselected(items: list[pytest.Item]) -> None:
    _deselected.append(len(items))


def _complete_run(session: pytest.Session) -> bool:
    config = session.config
    arguments = [Path(config.invocation_params.dir, argument) for argument in config.args]
    testpaths = [config.rootpath / path for path in config.getini("testpaths")]
    covered = all(
        any("::" not in str(argument) and path.resolve().is_relative_to(argument.resolve()) for argument in arguments)
        for path in testpaths
    )
    return covered and not _deselected and session.testsfailed == 0 and not session.shouldstop


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    audit = iam_audit.current()
    if audit is None or not audit.calls:
        return
    disallowed, unused = audit.disallowed(), audit.unused()
    lines = audit.report()
    if disallowed:
        lines.append("FAILED: calls the template does not allow the function to make:")
        lines += [f"  {call.function}: {call.action} on {call.resource}" for call in disallowed]
    if audit.unreadable:
        lines.append("FAILED: policies this audit cannot read (inline statements only):")
        lines += [f"  {policy}" for policy in audit.unreadable]
    complete = _complete_run(session)
    if unused:
        lines.append(("FAILED" if complete else "not checked (a partial run)") + ": grants no test used:")
        lines += [f"  {grant.function} {grant.sid}: {grant.action} on {grant.resource}" for grant in unused]
    ok = not disallowed and not audit.unreadable and not (complete and unused)
    lines.append(
        f"IAM audit: {'OK' if ok else 'FAILED'} ({len(audit.calls)} distinct calls, {len(audit.grants)} grants, "
        f"{'unused grants checked' if complete else 'unused grants not checked: partial run'})"
    )
    _verdict[:] = lines
    if not ok:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _verdict:
        terminalreporter.section("IAM audit: the functions' AWS calls against template.yaml")
        for line in _verdict:
            terminalreporter.write_line(line)
