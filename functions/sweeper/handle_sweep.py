"""Entry point of the sweeper function: finish what webhooks did not, on a schedule.

One run by hand: `xasync sweep` (the local stack, or `--stack-name` for a deployed one).
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
from ximilar_async.settings import SweeperSettings
from ximilar_async.values.sweeps import SweepOutcome

settings, logger, metrics = function_setup(SweeperSettings)
with cold_start():
    sweeper = runtime.sweeper(settings)


SWEEP_COUNTS = (
    "items_read",
    "api_calls",
    "recorded",
    "requests_recorded",  # the webhook-health alarm: requests no webhook finished
    "rescheduled",
    "failed_too_old",
    "resubmitted_images",
    "incomplete",  # DONE answers with images missing, checked again later
    "errors",  # requests whose sweep raised (isolated; bounded by MAX_SWEEP_FAILURES)
    "failed_after_errors",
    "storage_errors",  # requests whose sweep DynamoDB failed (throttled, 5xx): back after their hold
    "read_failures",  # the run's own reads or writes failed after their retries: the run ended early
)


def record_metrics(outcome: SweepOutcome) -> None:
    for name in SWEEP_COUNTS:
        metrics.add_metric(
            name="Sweep" + name.title().replace("_", ""), unit=MetricUnit.Count, value=getattr(outcome, name)
        )
    metrics.add_metric(name="ImagesFailed", unit=MetricUnit.Count, value=outcome.images_failed)
    if outcome.paused:  # the spend guard's alarm watches this (with the submit function's)
        metrics.add_metric(name="SubmissionsPaused", unit=MetricUnit.Count, value=outcome.paused)
    # EMF takes at most 100 values of a metric per document: a busy run sends an even sample.
    for seconds in outcome.latencies[:: len(outcome.latencies) // 100 + 1]:
        metrics.add_metric(name="ResultLatencySeconds", unit=MetricUnit.Seconds, value=seconds)


@logger.inject_lambda_context
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    logger.debug("sweep started", extra={"event_id": event.get("id")})  # the schedule's EventBridge event
    outcome = sweeper.sweep(context.get_remaining_time_in_millis)
    record_metrics(outcome)
    # A run that found nothing due is the common case every minute (every 2 s locally): keep it out of INFO.
    busy = outcome.items_read or outcome.taken or outcome.stopped
    summary = {name: value for name, value in asdict(outcome).items() if name != "latencies"}
    (logger.info if busy else logger.debug)("sweep finished", extra=summary)
    return summary
