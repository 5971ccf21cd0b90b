"""Entry point of the webhook function: Ximilar's DONE webhooks (HTTP API, payload 2.0) to DynamoDB.

Routing and answers go through Powertools' HTTP resolver. The domain refuses with a reason
(`Refusal`); `STATUS_OF` below is the one table from reason to HTTP status code. Every refusal is a
4xx: a body never earns a 5xx, which would only make Ximilar deliver it again.
"""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from ximilar_async import runtime
from ximilar_async.settings import WebhookSettings
from ximilar_async.webhook import Refusal, WebhookRefused

STATUS_OF: dict[Refusal, int] = {
    Refusal.TOO_LARGE: 413,
    Refusal.MISSING_TOKEN: 401,
    Refusal.BAD_TOKEN: 401,
    Refusal.BAD_ENCODING: 400,
    Refusal.NOT_JSON: 400,
    Refusal.NOT_A_PAYLOAD: 422,
    Refusal.RECORDS_MISMATCH: 422,
    Refusal.SOURCE_MISMATCH: 422,
}

settings = WebhookSettings.from_env()
logger = Logger()
copy_config_to_registered_loggers(source_logger=logger, include={"ximilar_async"})
metrics = Metrics()
app = APIGatewayHttpResolver()
receiver = runtime.webhook_receiver(settings)


def json_response(status_code: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response[str]:
    return Response(status_code=status_code, content_type="application/json", body=json.dumps(body), headers=headers)


@app.post("/webhook")
def receive_webhook() -> Response[str]:
    event = app.current_event
    # The body stays as the event carries it: the receiver checks the token before decoding it.
    receipt = receiver.receive(event.headers or {}, event.body or "", base64_encoded=bool(event.is_base64_encoded))
    outcome = receipt.outcome
    metrics.add_metric(name="WebhooksAccepted", unit=MetricUnit.Count, value=1)
    metrics.add_metric(name="ImagesRecorded", unit=MetricUnit.Count, value=outcome.recorded)
    metrics.add_metric(name="DuplicateRecords", unit=MetricUnit.Count, value=outcome.duplicates)
    # The webhook-health alarm compares this with the sweeper's SweepRequestsRecorded.
    metrics.add_metric(name="RequestsRecordedByWebhook", unit=MetricUnit.Count, value=1 if outcome.recorded else 0)
    for seconds in outcome.latencies:
        metrics.add_metric(name="ResultLatencySeconds", unit=MetricUnit.Seconds, value=seconds)
    if receipt.deferred is not None:
        metrics.add_metric(name=f"WebhooksDeferred.{receipt.deferred.value}", unit=MetricUnit.Count, value=1)
        return json_response(202, {"deferred": receipt.deferred.value, "stored": receipt.stored_at})
    return json_response(
        200, {"recorded": outcome.recorded, "duplicates": outcome.duplicates, "unmatched": outcome.unmatched}
    )


@app.exception_handler(WebhookRefused)  # type: ignore[untyped-decorator]
def refused(error: WebhookRefused) -> Response[str]:
    status_code = STATUS_OF[error.refusal]
    logger.warning("webhook refused", extra={"reason": error.refusal.value, "status_code": status_code})
    metrics.add_metric(name=f"WebhooksRejected.{error.refusal.value}", unit=MetricUnit.Count, value=1)
    return json_response(status_code, {"message": error.message})


@app.not_found
def not_found(error: NotFoundError) -> Response[str]:
    if app.current_event.path == "/webhook":
        return json_response(405, {"message": "Method Not Allowed"}, {"Allow": "POST"})
    return json_response(404, {"message": "Not Found"})


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
