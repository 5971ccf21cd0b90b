"""The unit layer: the domain's logic against in-memory collaborators, with the network blocked.

Every test here runs with sockets disabled (pytest-socket), so nothing can reach moto server, the
emulator or AWS by accident; they are enabled again after each test, for the integration layer.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from pytest_socket import disable_socket, enable_socket

from tests.support.fakes import (
    FakeClock,
    FakeEventBus,
    FakeObjectStore,
    FakeOutputQueue,
    FakeXimilar,
    empty_tables,
    in_process_tables,
)
from ximilar_async.adapters.dynamodb import Storage
from ximilar_async.adapters.dynamodb.models import Tables
from ximilar_async.services.completion_events import CompletionEvents
from ximilar_async.services.result_recorder import ResultRecorder
from ximilar_async.services.submitter import Submitter
from ximilar_async.services.sweeper import Sweeper
from ximilar_async.services.webhook_auth import WebhookAuth, static_keys
from ximilar_async.services.webhook_receiver import WebhookReceiver
from ximilar_async.settings import SweeperSettings

RESULTS_BUCKET = "results-bucket"
SIGNING_KEY = b"unit-test-signing-key"

SETTINGS_ENVIRONMENT = {
    "IMAGES_TABLE": "images",
    "REQUESTS_TABLE": "requests",
    "INDEX_SHARDS": "4",
    "XIMILAR_API_URL": "https://api.ximilar.com",
    "XIMILAR_TOKEN_PARAMETER": "/ximilar-async/api-token",
    "XIMILAR_READ_TIMEOUT_SECONDS": "10",
    "RECORDS_PER_REQUEST": "",
    "REQUEST_RETENTION_DAYS": "30",
    "WEBHOOK_URL": "https://example.execute-api.us-east-1.amazonaws.com/webhook",
    "WEBHOOK_SECRET_ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:key",
    "ROUTES": "incoming/=upscaler:upscale_2x;incoming/flows/=flows:my-flow",
    "MAX_IMAGE_BYTES": "1000",
    "INLINE_BASE64_MAX_BYTES": "100",
    "PRESIGNED_URL_EXPIRY_SECONDS": "3600",
    "SUBMITTING_TIMEOUT_SECONDS": "900",
    "FIRST_CHECK_DELAY_SECONDS": "120",
    "SUBMIT_CONCURRENCY": "4",
    "DAILY_SUBMIT_LIMIT": "0",
    "MIN_REMAINING_CREDITS": "0",
    "RESULTS_BUCKET": RESULTS_BUCKET,
    "MAX_REQUEST_AGE_SECONDS": "3600",
    "MAX_API_CALLS_PER_RUN": "100",
    "EVENT_BUS_NAME": "default",
    "EVENT_SOURCE": "ximilar-async",
    "OUTPUT_BUCKET_NAME": "",
    "OUTPUT_PREFIX": "outputs/",
    "INPUT_PREFIX": "incoming/",
    "WATCHED_BUCKETS": "",
    "OUTPUTS_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/outputs",
    "ROUTE_OPTIONS": "",
}


@pytest.fixture(autouse=True)
def _no_network() -> Iterator[None]:
    disable_socket(allow_unix_socket=False)
    yield
    enable_socket()


@pytest.fixture(scope="package")
def _tables(template: dict[str, Any]) -> Iterator[Tables]:
    """Created once for the unit tests (moto's in-process mock ends with them, before other packages)."""
    with in_process_tables(template) as tables:
        yield tables


@pytest.fixture
def settings() -> SweeperSettings:
    """Settings of the sweeper, which include the submitter's: max 1000 bytes an image, inline up to 100."""
    return SweeperSettings.from_env(SETTINGS_ENVIRONMENT)


@pytest.fixture
def bus() -> FakeEventBus:
    return FakeEventBus()


@pytest.fixture
def output_queue() -> FakeOutputQueue:
    return FakeOutputQueue()


@pytest.fixture
def storage(_tables: Tables, settings: SweeperSettings) -> Storage:
    empty_tables(_tables)
    return Storage.of(_tables, settings.index_shards, timedelta(days=settings.request_retention_days))


@pytest.fixture
def events(bus: FakeEventBus) -> CompletionEvents:
    return CompletionEvents(bus)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ximilar() -> FakeXimilar:
    return FakeXimilar()


@pytest.fixture
def objects() -> FakeObjectStore:
    return FakeObjectStore()


@pytest.fixture
def auth(clock: FakeClock) -> WebhookAuth:
    return WebhookAuth(static_keys(SIGNING_KEY), max_age=timedelta(days=1), clock=clock)


@pytest.fixture
def submitter(
    storage: Storage,
    ximilar: FakeXimilar,
    objects: FakeObjectStore,
    auth: WebhookAuth,
    settings: SweeperSettings,
    clock: FakeClock,
    events: CompletionEvents,
) -> Submitter:
    return Submitter(storage.images, storage.requests, ximilar, objects, auth, settings, clock=clock, events=events)


@pytest.fixture
def recorder(
    storage: Storage,
    objects: FakeObjectStore,
    clock: FakeClock,
    settings: SweeperSettings,
    output_queue: FakeOutputQueue,
    events: CompletionEvents,
) -> ResultRecorder:
    return ResultRecorder(
        storage.images,
        storage.requests,
        objects,
        RESULTS_BUCKET,
        clock=clock,
        output_location=settings.output_location,
        output_queue=output_queue,
        events=events,
    )


@pytest.fixture
def sweeper(
    storage: Storage,
    ximilar: FakeXimilar,
    recorder: ResultRecorder,
    submitter: Submitter,
    settings: SweeperSettings,
    clock: FakeClock,
) -> Sweeper:
    return Sweeper(
        storage.requests,
        storage.images,
        storage.control,
        ximilar,
        recorder,
        submitter,
        settings,
        clock=clock,
        rng=random.Random(7),
    )


@pytest.fixture
def receiver(recorder: ResultRecorder, storage: Storage, auth: WebhookAuth, ximilar: FakeXimilar) -> WebhookReceiver:
    return WebhookReceiver(recorder, storage.requests, auth, max_body_bytes=64_000, source=ximilar)
