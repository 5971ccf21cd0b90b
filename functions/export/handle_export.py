"""Entry point of the export function: finished images to S3 as JSON Lines by day, for Athena, on a schedule.

Only with the `ExportSchedule` parameter set. Each run exports what changed since the last one
(`ximilar_async.services.exporter`); by hand, `xasync export` (`--full` rewrites every day).
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
from ximilar_async.settings import ExportSettings

settings, logger, metrics = function_setup(ExportSettings)
with cold_start():
    exporter = runtime.exporter(settings)


@logger.inject_lambda_context
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    logger.debug("export started", extra={"event_id": event.get("id")})  # the schedule's EventBridge event
    outcome = exporter.export(remaining_ms=context.get_remaining_time_in_millis)
    metrics.add_metric(name="ExportedRows", unit=MetricUnit.Count, value=outcome.rows)
    metrics.add_metric(name="ExportDaysLeft", unit=MetricUnit.Count, value=len(outcome.days_left))
    summary = asdict(outcome)
    summary["since"] = outcome.since.isoformat() if outcome.since else None
    logger.info("export finished", extra=summary)
    return summary
