"""Entry point of the backfill function: one batch of a Distributed Map over existing objects into the submit queue.

The state machine (statemachines/backfill.asl.json) lists a prefix or reads an S3 Inventory manifest and hands
this function `{"BatchInput": {...}, "Items": [...]}` (at most 100 items, `values.backfill`). What is sent, once
per object version and at a bounded pace, is `ximilar_async.services.backfiller`'s. `BackfillHeld` (the queue
is deep, or the spend guard paused) is raised on purpose: the state machine retries the batch with backoff.
"""

from __future__ import annotations

import gc

# A cold start is mostly imports and clients that live as long as the process: no collection walks them
# until coldstart.cold_start() has frozen them, and turns collection on.
gc.disable()

from dataclasses import asdict
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from ximilar_async import runtime
from ximilar_async.coldstart import cold_start
from ximilar_async.handler_setup import function_setup
from ximilar_async.services.errors import BackfillHeld
from ximilar_async.settings import BackfillSettings
from ximilar_async.values.backfill import BadBatch, parse_batch

settings, logger, metrics = function_setup(BackfillSettings)
with cold_start():
    backfiller = runtime.backfiller(settings)


@logger.inject_lambda_context
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    try:
        batch = parse_batch(event)
    except BadBatch as error:
        # Not retried (it would fail the same way): the batch is reported failed with its reason.
        logger.error("malformed backfill batch", extra={"reason": str(error)})
        metrics.add_metric(name="BackfillFailed", unit=MetricUnit.Count, value=len(event.get("Items") or []))
        return {"failed": len(event.get("Items") or []), "reason": str(error)}
    try:
        outcome = backfiller.run_batch(batch)
    except BackfillHeld as held:
        metrics.add_metric(name="BackfillHeld", unit=MetricUnit.Count, value=1)
        logger.info("backfill batch held back", extra={"run": batch.run.name, "reason": str(held)})
        raise
    metrics.add_metric(name="BackfillObjects", unit=MetricUnit.Count, value=outcome.total)
    metrics.add_metric(name="BackfillEnqueued", unit=MetricUnit.Count, value=outcome.enqueued)
    metrics.add_metric(
        name="BackfillAlreadyKnown", unit=MetricUnit.Count, value=outcome.already_known + outcome.already_queued
    )
    metrics.add_metric(name="BackfillFailed", unit=MetricUnit.Count, value=outcome.failed)
    summary = {"run": batch.run.name, **asdict(outcome)}
    logger.info("backfill batch done", extra=summary)
    return summary
