"""Entry point of the sweeper function: finish what webhooks did not, on a schedule.

Also runs once from a shell with the function's environment set:
    python functions/sweeper/handle_sweep.py [--seconds 120]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import EventBridgeEvent
from aws_lambda_powertools.utilities.typing import LambdaContext

from ximilar_async import runtime
from ximilar_async.settings import SweeperSettings
from ximilar_async.sweeper import SweepOutcome

settings = SweeperSettings.from_env()
logger = Logger()
copy_config_to_registered_loggers(source_logger=logger, include={"ximilar_async"})
tracer = Tracer()
metrics = Metrics()
sweeper = runtime.sweeper(settings)


def record_metrics(outcome: SweepOutcome) -> None:
    names = (
        "items_read",
        "api_calls",
        "recorded",
        "rescheduled",
        "failed_too_old",
        "resubmitted_images",
        "incomplete",
        "errors",
        "failed_after_errors",
    )
    for name in names:
        metrics.add_metric(
            name="Sweep" + name.title().replace("_", ""), unit=MetricUnit.Count, value=getattr(outcome, name)
        )


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    logger.info("sweep started", extra={"event_id": EventBridgeEvent(event).get_id})
    outcome = sweeper.sweep(context.get_remaining_time_in_millis)
    record_metrics(outcome)
    logger.info("sweep finished", extra=asdict(outcome))
    return asdict(outcome)


class _ShellContext:
    """What the handler needs of a Lambda context, for a run from the shell."""

    function_name = "sweeper-shell"
    function_version = "$LATEST"
    memory_limit_in_mb = 0
    invoked_function_arn = "arn:aws:lambda:local:000000000000:function:sweeper-shell"
    aws_request_id = "shell"

    def __init__(self, seconds: float) -> None:
        self._deadline = time.monotonic() + seconds

    def get_remaining_time_in_millis(self) -> int:
        return int((self._deadline - time.monotonic()) * 1000)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run one sweep with the environment's settings.")
    parser.add_argument("--seconds", type=float, default=120.0, help="the run's time budget (a Lambda timeout)")
    args = parser.parse_args(argv)
    event = {"id": "shell", "detail-type": "Scheduled Event", "source": "aws.events", "detail": {}}
    print(json.dumps(lambda_handler(event, _ShellContext(args.seconds))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
