"""The submit function against a slow, throttling Ximilar: nothing stranded, every wait bounded.

Each upload is owned (an item with a status) before any slow call; what the deadline or Ximilar's
throttling holds back is handed to the sweeper, which submits it when Ximilar takes requests again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import RunningEmulator
from tests.support.aws import AwsStack, sqs_event, time_shifted
from tests.support.receiver import Receiver, webhook_receiver
from xasync.lambda_runtime import LocalLambdaContext, load_function
from xasync.sample_images import png_bytes
from ximilar_async.adapters.dynamodb import Storage
from ximilar_async.values import identity
from ximilar_async.values.sweeps import SweepOutcome

ROUTES = "incoming/=upscaler:upscale_2x;incoming/flows/=flows:my-flow"
LATER = timedelta(minutes=5)  # past any hand-on delay


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with webhook_receiver() as running:
        yield running


@pytest.fixture
def cold_start(
    monkeypatch: pytest.MonkeyPatch, aws_stack: AwsStack, emulator: RunningEmulator, receiver: Receiver
) -> Callable[..., ModuleType]:
    """Cold-start a function with the template's environment pointed at this test's stack."""

    def start(logical_id: str, **parameters: str) -> ModuleType:
        environment = aws_stack.environment(
            logical_id,
            XimilarApiUrl=emulator.url,
            XimilarTokenParameterName=aws_stack.token_parameter,
            Routes=ROUTES,
            **parameters,
        )
        environment["WEBHOOK_URL"] = receiver.url  # the webhook function is not under test here
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        return load_function(aws_stack.template, logical_id, environment)

    return start


def upload(stack: AwsStack, keys_: list[str]) -> list[dict[str, Any]]:
    for key in keys_:
        stack.put(key, png_bytes(8, 8))
    return stack.receive_uploads(len(keys_))


def statuses(stack: AwsStack, keys_: list[str]) -> list[tuple[str, str | None]]:
    """(status, reason) of each image as reported: one in flight takes its request's status."""
    storage = Storage.of(stack.tables, shards=1, request_retention=timedelta(days=1))  # no index is read
    uris = [identity.image_uri(stack.bucket, key) for key in keys_]
    found = storage.queries.images_as_known(uris)
    return [(found[uri].status.value, found[uri].status_reason) for uri in uris]


def posts(emulator: RunningEmulator) -> list[dict[str, Any]]:
    return [call for call in emulator.control.calls() if call["method"] == "POST"]


def sweep(sweeper_module: ModuleType, ahead: timedelta) -> SweepOutcome:
    outcome: SweepOutcome = time_shifted(sweeper_module.sweeper, ahead).sweep(lambda: 120_000)
    return outcome


def test_a_429_storm_returns_inside_the_timeout_with_every_upload_owned_and_sweeps_finish_them(
    cold_start: Callable[..., ModuleType], aws_stack: AwsStack, emulator: RunningEmulator
) -> None:
    # Given a Ximilar that answers every call 429 (Retry-After 1 s), and 30 upscaler uploads
    submit = cold_start("SubmitFunction")
    keys_ = [f"incoming/storm-{n:02d}.png" for n in range(30)]
    records = upload(aws_stack, keys_)
    emulator.control.fail_next(100_000, status=429, retry_after=1)

    # When one invocation with a 60 s timeout takes the whole batch
    context = LocalLambdaContext(function_name="submit", timeout_seconds=60)
    started = time.monotonic()
    answer = submit.lambda_handler(sqs_event(records), context)
    took = time.monotonic() - started

    # Then it returns well inside its timeout, reports no message for redelivery, and every
    # upload has an item, waiting with the reason
    assert took < 30, f"the invocation took {took:.1f} s"
    assert answer == {"batchItemFailures": []}
    found = statuses(aws_stack, keys_)
    assert {status for status, _ in found} == {"SUBMITTING"}
    assert all(reason and "waiting to be submitted: Ximilar is throttling" in reason for _, reason in found)
    # the breaker opened: at most one round of POSTs from the pool, each with its bounded retries
    assert len(posts(emulator)) <= 8 * 5

    # When the storm ends, sweeps submit them
    emulator.control.clear_faults()
    sweeper = cold_start("SweeperFunction")
    for _ in range(3):
        if {status for status, _ in statuses(aws_stack, keys_)} == {"CREATED"}:
            break
        sweep(sweeper, LATER)
    assert {status for status, _ in statuses(aws_stack, keys_)} == {"CREATED"}
    assert sum(1 for call in posts(emulator) if call["status"] == 201) == 30  # once each


def test_a_slow_ximilar_gets_the_requests_of_a_batch_concurrently(
    cold_start: Callable[..., ModuleType], aws_stack: AwsStack, emulator: RunningEmulator
) -> None:
    # Given a Ximilar that answers each call after 0.5 s, and 40 upscaler uploads (40 requests)
    submit = cold_start("SubmitFunction", SubmitConcurrency="8")
    keys_ = [f"incoming/slow-{n:02d}.png" for n in range(40)]
    records = upload(aws_stack, keys_)
    emulator.control.set_knobs(response_delay_seconds=0.5)

    # When one invocation submits them
    uploads = [u for record in records for u in submit.uploads_from_notification(record["messageId"], record["body"])]
    started = time.monotonic()
    outcome = submit.submitter.submit_uploads(
        uploads, remaining_millis=LocalLambdaContext().get_remaining_time_in_millis
    )
    took = time.monotonic() - started

    # Then eight are in flight at once, and the batch takes a fraction of 40 x 0.5 s
    assert (outcome.requests_submitted, outcome.max_in_flight) == (40, 8)
    assert took < 40 * 0.5 / 2, f"{took:.1f} s"
    assert {status for status, _ in statuses(aws_stack, keys_)} == {"CREATED"}


def test_no_request_starts_when_the_time_left_is_under_the_margin(
    cold_start: Callable[..., ModuleType], aws_stack: AwsStack, emulator: RunningEmulator
) -> None:
    # Given an invocation with less time left than one POST may take
    submit = cold_start("SubmitFunction")
    keys_ = ["incoming/flows/late-1.png", "incoming/flows/late-2.png"]
    records = upload(aws_stack, keys_)
    margin = submit.submitter.start_margin

    # When it runs
    answer = submit.lambda_handler(sqs_event(records), LocalLambdaContext(timeout_seconds=margin - 1))

    # Then nothing is posted, the uploads wait with the reason, and the sweeper submits them
    assert answer == {"batchItemFailures": []}
    assert posts(emulator) == []
    assert (
        statuses(aws_stack, keys_)
        == [("SUBMITTING", "waiting to be submitted: the submit function ran out of time")] * 2
    )
    sweep(cold_start("SweeperFunction"), LATER)
    assert {status for status, _ in statuses(aws_stack, keys_)} == {"CREATED"}
    assert len(posts(emulator)) == 1
