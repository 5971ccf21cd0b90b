"""Shared fixtures: real server processes (moto, the emulator) and tables built from template.yaml."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest

from tests.support.aws import AwsStack, create_stack, create_table_from_template
from xasync.servers import emulator_process, moto_server
from xasync.template import load_template
from ximilar_async.dal.models import Tables, bind_tables
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


@pytest.fixture(scope="session")
def template() -> dict[str, Any]:
    return load_template()


@pytest.fixture(scope="session")
def aws_endpoint() -> Iterator[str]:
    with moto_server() as url:
        yield url


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
def dynamodb(aws_endpoint: str) -> Any:
    return boto3.client("dynamodb", endpoint_url=aws_endpoint)


@pytest.fixture
def aws_stack(aws_endpoint: str, template: dict[str, Any]) -> AwsStack:
    """Input bucket notifying a queue, tables, token and signing key: fresh names per test."""
    return create_stack(aws_endpoint, template, EMULATOR_TOKEN)


@pytest.fixture
def tables(dynamodb: Any, template: dict[str, Any], aws_endpoint: str) -> Tables:
    """Fresh tables for one test, created from template.yaml, and the models bound to them."""
    suffix = uuid.uuid4().hex[:8]
    images, requests_ = f"images-{suffix}", f"requests-{suffix}"
    create_table_from_template(dynamodb, template, "ImagesTable", images)
    create_table_from_template(dynamodb, template, "RequestsTable", requests_)
    return bind_tables(images, requests_, host=aws_endpoint)
