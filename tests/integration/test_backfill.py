"""The backfill function on moto server over HTTP: markers, a second run sending 0, pacing, counters."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from types import ModuleType
from typing import Any

import pytest

from tests.support.aws import AwsStack
from xasync.lambda_runtime import LocalLambdaContext, load_function
from ximilar_async.adapters.dynamodb import Storage
from ximilar_async.values.backfill import BackfillRun, ExistingObject, batch_input, listing_item
from ximilar_async.values.clock import utc_now


@pytest.fixture
def backfill_handler(monkeypatch: pytest.MonkeyPatch, aws_stack: AwsStack) -> Callable[..., ModuleType]:
    def cold_start(**parameters: str) -> ModuleType:
        environment = aws_stack.environment("BackfillFunction", **parameters)
        environment["SUBMIT_QUEUE_URL"] = aws_stack.queue_url
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        return load_function(aws_stack.template, "BackfillFunction", environment)

    return cold_start


def batch(stack: AwsStack, count: int, run: str) -> dict[str, Any]:
    found = [
        ExistingObject(stack.bucket, f"incoming/old/{n:03d}.png", 10, f"e{n}", None, utc_now()) for n in range(count)
    ]
    backfill_run = BackfillRun(run, f"local:{run}", f"s3://{stack.bucket}/incoming/old/")
    return {
        "BatchInput": batch_input(backfill_run, "listing", stack.bucket, "incoming/old/"),
        "Items": [listing_item(o) for o in found],
    }


def invoke(module: ModuleType, event: dict[str, Any]) -> Any:
    return module.lambda_handler(event, LocalLambdaContext(function_name="BackfillFunction"))


def test_a_batch_is_sent_once_counted_and_a_second_run_sends_nothing(
    aws_stack: AwsStack, backfill_handler: Callable[..., ModuleType]
) -> None:
    module = backfill_handler()
    first = invoke(module, batch(aws_stack, 100, "run-a"))
    assert (first["total"], first["enqueued"]) == (100, 100)
    second = invoke(module, batch(aws_stack, 100, "run-b"))  # nothing consumed the queue yet
    assert (second["enqueued"], second["already_queued"]) == (0, 100)
    received = aws_stack.receive(100)
    assert len(received) == 100 and len({r["body"] for r in received}) == 100
    storage = Storage.of(aws_stack.tables, 8, timedelta(days=1))
    runs = {run.name: run for run in storage.control.backfill_runs()}
    assert (runs["run-a"].enqueued, runs["run-b"].already_queued, runs["run-b"].total) == (100, 100, 100)
    assert runs["run-a"].engine_id == "local:run-a"


def test_held_while_the_queue_is_deep_or_paused(
    aws_stack: AwsStack, backfill_handler: Callable[..., ModuleType]
) -> None:
    module = backfill_handler(BackfillMaxQueueDepth="5")
    invoke(module, batch(aws_stack, 10, "run-c"))
    with pytest.raises(Exception, match=r"over the backfill.s bound of 5") as held:
        invoke(module, batch(aws_stack, 10, "run-d"))
    assert type(held.value).__name__ == "BackfillHeld" and "over the backfill's bound of 5" in str(held.value)
    storage = Storage.of(aws_stack.tables, 8, timedelta(days=1))
    storage.control.pause("test", utc_now())
    module = backfill_handler()
    with pytest.raises(Exception, match="paused by hand"):
        invoke(module, batch(aws_stack, 1, "run-e"))


def test_a_malformed_batch_is_reported_not_retried(
    aws_stack: AwsStack, backfill_handler: Callable[..., ModuleType]
) -> None:
    answer = invoke(backfill_handler(), {"Items": [{"Key": "x"}]})
    assert answer["failed"] == 1 and "BatchInput" in answer["reason"]
