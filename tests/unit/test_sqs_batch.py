"""SQS partial batch responses: what Lambda's event source reads back, as Powertools' BatchProcessor answers."""

from __future__ import annotations

from typing import Any

import pytest

from ximilar_async.adapters.sqs import BatchFailed, Record, partial_batch_response, process_records


def event(*message_ids: str) -> dict[str, Any]:
    return {"Records": [{"messageId": message_id, "body": message_id} for message_id in message_ids]}


def test_the_failed_messages_are_named_in_the_events_order() -> None:
    assert partial_batch_response(["a", "b", "c"], {"c", "a"}) == {
        "batchItemFailures": [{"itemIdentifier": "a"}, {"itemIdentifier": "c"}]
    }
    assert partial_batch_response(["a"], set()) == {"batchItemFailures": []}


def test_a_batch_that_failed_entirely_fails_the_invocation() -> None:
    with pytest.raises(BatchFailed, match="All records failed"):
        partial_batch_response(["a", "b"], {"a", "b"})
    with pytest.raises(ValueError, match="no SQS Records"):
        partial_batch_response([], set())


def test_a_record_that_raises_is_retried_and_the_others_still_run() -> None:
    seen: list[str] = []

    def handle(record: Record) -> None:
        seen.append(record["body"])
        if record["body"] == "bad":
            raise RuntimeError("transient")

    assert process_records(event("ok-1", "bad", "ok-2"), handle) == {"batchItemFailures": [{"itemIdentifier": "bad"}]}
    assert seen == ["ok-1", "bad", "ok-2"]
