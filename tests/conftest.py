"""Shared fixtures: real server processes (moto, the emulator) and tables built from template.yaml."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from xasync.template import load_template

from tests.support.servers import emulator_process, moto_server
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


def create_table_from_template(dynamodb: Any, template: dict[str, Any], logical_id: str, table_name: str) -> None:
    """Create a table exactly as template.yaml declares it (keys, indexes, encryption, PITR, TTL)."""
    properties = template["Resources"][logical_id]["Properties"]
    dynamodb.create_table(
        TableName=table_name,
        **{
            name: properties[name]
            for name in ("BillingMode", "AttributeDefinitions", "KeySchema", "GlobalSecondaryIndexes")
            if name in properties
        },
        SSESpecification={"Enabled": properties["SSESpecification"]["SSEEnabled"]},
    )
    dynamodb.get_waiter("table_exists").wait(TableName=table_name)
    if properties.get("PointInTimeRecoverySpecification", {}).get("PointInTimeRecoveryEnabled"):
        dynamodb.update_continuous_backups(
            TableName=table_name, PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True}
        )
    ttl = properties.get("TimeToLiveSpecification")
    if ttl:
        dynamodb.update_time_to_live(
            TableName=table_name, TimeToLiveSpecification={"AttributeName": ttl["AttributeName"], "Enabled": True}
        )


@pytest.fixture
def dynamodb(aws_endpoint: str) -> Any:
    return boto3.client("dynamodb", endpoint_url=aws_endpoint)


@pytest.fixture
def tables(dynamodb: Any, template: dict[str, Any], aws_endpoint: str) -> Tables:
    """Fresh tables for one test, created from template.yaml, and the models bound to them."""
    suffix = uuid.uuid4().hex[:8]
    images, requests_ = f"images-{suffix}", f"requests-{suffix}"
    create_table_from_template(dynamodb, template, "ImagesTable", images)
    create_table_from_template(dynamodb, template, "RequestsTable", requests_)
    return bind_tables(images, requests_, host=aws_endpoint)
