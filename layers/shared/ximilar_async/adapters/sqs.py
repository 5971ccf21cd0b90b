"""SQS: the outputs queue (`SqsOutputQueue`), and partial batch responses (an event source with
ReportBatchItemFailures), as Powertools' BatchProcessor
answers them: the failed messages by id, and an error of the invocation when every message failed.

The handlers build them here rather than through Powertools' batch utility, whose import (its async
processor's asyncio, and every event data class) was about a tenth of their cold start.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from ximilar_async.values.outputs import OutputJob
from ximilar_async.values.submissions import chunks

logger = logging.getLogger(__name__)

Record = dict[str, Any]  # one SQS record of the event, as Lambda sends it


class BatchFailed(Exception):
    """Every message of the batch failed: the invocation fails, and SQS delivers them all again."""


def partial_batch_response(message_ids: Sequence[str], failed: Collection[str]) -> dict[str, Any]:
    """The answer for a batch of `message_ids` (in the event's order) of which `failed` are to be delivered again."""
    if not message_ids:
        raise ValueError("Unexpected batch event type: no SQS Records")
    retried = [message_id for message_id in message_ids if message_id in failed]
    if len(retried) == len(message_ids):
        raise BatchFailed(f"All records failed processing ({len(retried)})")
    return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in retried]}


def process_records(event: dict[str, Any], handle: Callable[[Record], None]) -> dict[str, Any]:
    """`handle` each record; one that raises is reported as failed (the others are not held back)."""
    records: list[Record] = event["Records"]
    failed: set[str] = set()
    for record in records:
        try:
            handle(record)
        except Exception as error:
            logger.debug("record failed", extra={"message_id": record["messageId"], "error": repr(error)})
            failed.add(record["messageId"])
    return partial_batch_response([record["messageId"] for record in records], failed)


SEND_BATCH_LIMIT: Final = 10  # SendMessageBatch's entries per call


@dataclass(frozen=True)
class SqsOutputQueue:
    """`OutputQueue` on a boto3 SQS client."""

    sqs: Any
    queue_url: str

    def send(self, jobs: Iterable[OutputJob]) -> None:
        for batch in chunks(list(jobs), SEND_BATCH_LIMIT):
            answer = self.sqs.send_message_batch(
                QueueUrl=self.queue_url,
                Entries=[{"Id": str(number), "MessageBody": job.to_json()} for number, job in enumerate(batch)],
            )
            if answer.get("Failed"):
                codes = sorted({str(failure.get("Code")) for failure in answer["Failed"]})
                raise RuntimeError(f"{len(answer['Failed'])} output jobs not queued: {codes}")


@dataclass(frozen=True)
class SqsSubmitQueue:
    """`SubmitQueue` on a boto3 SQS client: what a backfill sends, and how deep the queue is."""

    sqs: Any
    queue_url: str

    def depth(self) -> int:
        """Messages waiting to be read (SQS's approximate count: no message is read)."""
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=self.queue_url, AttributeNames=["ApproximateNumberOfMessages"]
        )
        return int(attributes["Attributes"].get("ApproximateNumberOfMessages", 0))

    def send(self, bodies: Sequence[str]) -> list[int]:
        """SendMessageBatch, 10 bodies a call; the indexes (in `bodies`) SQS refused (botocore retries a call)."""
        refused: list[int] = []
        for number, batch in enumerate(chunks(bodies, SEND_BATCH_LIMIT)):
            start = number * SEND_BATCH_LIMIT  # entry ids are indexes in `bodies`
            entries = [{"Id": str(start + place), "MessageBody": body} for place, body in enumerate(batch)]
            for entry in self.sqs.send_message_batch(QueueUrl=self.queue_url, Entries=entries).get("Failed", []):
                logger.warning(
                    "SQS refused a message", extra={"code": entry.get("Code"), "sender_fault": entry.get("SenderFault")}
                )
                refused.append(int(entry["Id"]))
        return sorted(refused)
