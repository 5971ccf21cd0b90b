"""Entry point of the webhook function: Ximilar's DONE webhooks (HTTP API, payload 2.0) to DynamoDB.

One route, `POST /webhook`; any other method on it is answered 405 (`Allow: POST`), any other path 404,
in the HTTP API's payload 2.0 answer format (what Powertools' HTTP resolver answered, without importing
every resolver and event class it comes with). The domain refuses with a reason (`Refusal`); `STATUS_OF`
below is the one table from reason to HTTP status code. Every refusal is a 4xx: a body never earns a
5xx, which would only make Ximilar deliver it again.
"""

from __future__ import annotations

import gc

# A cold start is mostly imports and clients that live as long as the process: no collection walks them
# until coldstart.cold_start() has frozen them, and turns collection on.
gc.disable()

import json
from typing import Any

from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from ximilar_async import runtime
from ximilar_async.coldstart import cold_start
from ximilar_async.handler_setup import function_setup
from ximilar_async.services.webhook_receiver import Refusal, WebhookRefused
from ximilar_async.settings import WebhookSettings

ROUTE = ("POST", "/webhook")
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

settings, logger, metrics = function_setup(WebhookSettings)
with cold_start():
    receiver = runtime.webhook_receiver(settings)


def json_response(status_code: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
    """An HTTP API (payload 2.0) answer with a JSON body."""
    return {
        "statusCode": status_code,
        "body": json.dumps(body),
        "isBase64Encoded": False,
        "headers": {**(headers or {}), "Content-Type": "application/json"},
        "cookies": [],
    }


def route_path(event: dict[str, Any]) -> str:
    """The request's path below its stage (the API's `$default` stage has no prefix)."""
    path = str(event.get("rawPath") or "")
    stage = event["requestContext"].get("stage", "$default")
    return path if stage == "$default" else path[len("/" + stage) :]


def receive_webhook(event: dict[str, Any]) -> dict[str, Any]:
    # The body stays as the event carries it: the receiver checks the token before decoding it.
    receipt = receiver.receive(
        event.get("headers") or {}, event.get("body") or "", base64_encoded=bool(event.get("isBase64Encoded"))
    )
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


def refused(error: WebhookRefused) -> dict[str, Any]:
    status_code = STATUS_OF[error.refusal]
    logger.warning("webhook refused", extra={"reason": error.refusal.value, "status_code": status_code})
    metrics.add_metric(name=f"WebhooksRejected.{error.refusal.value}", unit=MetricUnit.Count, value=1)
    return json_response(status_code, {"message": error.message})


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    method, path = str(event["requestContext"]["http"]["method"]).upper(), route_path(event)
    if path != ROUTE[1]:
        return json_response(404, {"message": "Not Found"})
    if method != ROUTE[0]:
        return json_response(405, {"message": "Method Not Allowed"}, {"Allow": ROUTE[0]})
    try:
        return receive_webhook(event)
    except WebhookRefused as error:
        return refused(error)
