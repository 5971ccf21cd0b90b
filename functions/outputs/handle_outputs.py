"""Entry point of the outputs function: copy the artifacts Ximilar hosts into the output location.

Takes SQS batches of output jobs (one per image, queued by the recorder). A job that failed for a
passing reason is reported as a batch item failure and delivered again; its last delivery
(`OUTPUTS_MAX_RECEIVE_COUNT`, the queue's maxReceiveCount) ends the outputs FAILED instead.
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
from ximilar_async.adapters.sqs import Record, process_records
from ximilar_async.coldstart import cold_start
from ximilar_async.handler_setup import function_setup
from ximilar_async.settings import OutputsSettings
from ximilar_async.values.outputs import OutputJob

settings, logger, metrics = function_setup(OutputsSettings)
with cold_start():
    copier = runtime.output_copier(settings)


def copy_one(record: Record) -> None:
    job = OutputJob.from_json(record["body"])
    attempt = int(record["attributes"]["ApproximateReceiveCount"] or 1)
    logger.append_keys(image_uri=job.image_uri, request_id=job.request_id)
    result = copier.copy(job, attempt)
    metrics.add_metric(name="OutputsStored", unit=MetricUnit.Count, value=len(result.stored))
    metrics.add_metric(name="OutputsFailed", unit=MetricUnit.Count, value=len(result.failed))
    if result.regenerated:
        metrics.add_metric(name="OutputsRegenerated", unit=MetricUnit.Count, value=1)
    if result.skipped:
        logger.info("output job skipped", extra={"reason": result.skipped})


@logger.inject_lambda_context
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return process_records(event, copy_one)
