"""Entry point of the submit function: S3 upload notifications to Ximilar requests.

Takes SQS batches of S3 notifications (the deployed trigger) and plain S3 events (what
`sam local invoke SubmitFunction -e events/s3-put.json` sends). Messages that must be tried again
are reported as batch item failures; after the queue's maxReceiveCount they move to the DLQ.
"""

from __future__ import annotations

import gc

# A cold start is mostly imports and clients that live as long as the process: no collection walks them
# until coldstart.cold_start() has frozen them, and turns collection on.
gc.disable()

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from ximilar_async import runtime
from ximilar_async.adapters.sqs import partial_batch_response
from ximilar_async.coldstart import cold_start
from ximilar_async.handler_setup import function_setup
from ximilar_async.settings import SubmitSettings
from ximilar_async.values.submissions import SubmitOutcome
from ximilar_async.values.uploads import NotAnS3Notification, Upload, uploads_from_notification

settings, logger, metrics = function_setup(SubmitSettings)
with cold_start():
    submitter = runtime.submitter(settings, lazy=runtime.SUBMIT_LAZY)


class RetryLater(Exception):
    """Raised for a message SQS should deliver again."""


def record_metrics(outcome: SubmitOutcome) -> None:
    metrics.add_metric(name="RequestsSubmitted", unit=MetricUnit.Count, value=outcome.requests_submitted)
    metrics.add_metric(name="ImagesSubmitted", unit=MetricUnit.Count, value=outcome.images_submitted)
    metrics.add_metric(name="DuplicateNotifications", unit=MetricUnit.Count, value=outcome.duplicates)
    metrics.add_metric(name="ImagesRetried", unit=MetricUnit.Count, value=len(outcome.retry))
    metrics.add_metric(name="ImagesHandedOn", unit=MetricUnit.Count, value=outcome.handed_on)
    if outcome.throttled:
        metrics.add_metric(name="XimilarThrottled", unit=MetricUnit.Count, value=1)
    if outcome.paused:  # the spend guard's alarm watches this
        metrics.add_metric(name="SubmissionsPaused", unit=MetricUnit.Count, value=outcome.paused)
    for reason, count in outcome.images_failed.items():
        metrics.add_metric(name=f"ImagesFailed.{reason}", unit=MetricUnit.Count, value=count)
    # One total across reasons (and functions) for the FAILED-per-hour alarm: alarms cannot sum a wildcard.
    metrics.add_metric(name="ImagesFailed", unit=MetricUnit.Count, value=sum(outcome.images_failed.values()))


def handle_sqs_batch(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    records = event["Records"]
    uploads: list[Upload] = []
    failures: dict[str, str] = {}
    for record in records:
        message_id = record["messageId"]
        try:
            uploads.extend(uploads_from_notification(message_id, record["body"]))
        except NotAnS3Notification as error:
            # Not ours to drop: retried, then kept in the DLQ for someone to look at.
            logger.error("message is not an S3 notification", extra={"message_id": message_id})
            failures[message_id] = str(error)
    outcome = submitter.submit_uploads(uploads, remaining_millis=context.get_remaining_time_in_millis)
    record_metrics(outcome)
    failures.update(outcome.retry)
    # The failures are known: Powertools' BatchProcessor would only format them.
    return partial_batch_response([record["messageId"] for record in records], failures)


def handle_s3_event(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    uploads = list(uploads_from_notification("s3-event", event))
    outcome = submitter.submit_uploads(uploads, remaining_millis=context.get_remaining_time_in_millis)
    record_metrics(outcome)
    if outcome.retry:
        raise RetryLater(f"not submitted yet, S3 will invoke again: {sorted(set(outcome.retry.values()))}")
    return {
        "requests_submitted": outcome.requests_submitted,
        "images_submitted": outcome.images_submitted,
        "images_failed": dict(outcome.images_failed),
        "duplicates": outcome.duplicates,
    }


@logger.inject_lambda_context
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    records = event.get("Records") or []
    if records and records[0].get("eventSource") == "aws:s3":
        return handle_s3_event(event, context)
    return handle_sqs_batch(event, context)
