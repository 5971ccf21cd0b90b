"""Entry point of the webhook function: Ximilar's DONE webhooks (HTTP API, payload 2.0) to DynamoDB.

Routing and answers go through Powertools' HTTP resolver; every rejection is one typed exception
mapped to its status code here, in one place.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from ximilar_async import runtime
from ximilar_async.results import ResultRecorder
from ximilar_async.settings import WebhookSettings
from ximilar_async.webhook import WebhookReceiver, WebhookRejected

settings = WebhookSettings.from_env()
logger = Logger()
copy_config_to_registered_loggers(source_logger=logger, include={"ximilar_async"})
tracer = Tracer()
metrics = Metrics()
app = APIGatewayHttpResolver()
recorder = ResultRecorder(runtime.repository(settings), boto3.client("s3"), settings.results_bucket)
secrets = runtime.SecretSources.create()
source = runtime.ximilar_client(settings) if settings.verify_with_source else None


def json_response(status_code: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response[str]:
    return Response(status_code=status_code, content_type="application/json", body=json.dumps(body), headers=headers)


def raw_body() -> bytes:
    event = app.current_event
    body = event.body or ""
    return base64.b64decode(body) if event.is_base64_encoded else body.encode()


@app.post("/webhook")
def receive_webhook() -> Response[str]:
    if source is not None:
        source.set_token(secrets.api_token(settings))
    receiver = WebhookReceiver(
        recorder, secrets.signing_key(settings.webhook_secret_arn), settings.max_webhook_body_bytes, source
    )
    answer = receiver.receive(app.current_event.headers, raw_body())
    outcome = answer.outcome
    metrics.add_metric(name="WebhooksAccepted", unit=MetricUnit.Count, value=1)
    metrics.add_metric(name="ImagesRecorded", unit=MetricUnit.Count, value=outcome.recorded)
    metrics.add_metric(name="DuplicateRecords", unit=MetricUnit.Count, value=outcome.duplicates)
    if answer.status_code == 202:
        metrics.add_metric(name="WebhooksUnmatched", unit=MetricUnit.Count, value=1)
    return json_response(answer.status_code, answer.body)


@app.exception_handler(WebhookRejected)  # type: ignore[untyped-decorator]
def rejected(error: WebhookRejected) -> Response[str]:
    logger.warning("webhook rejected", extra={"reason": error.reason, "status_code": error.status_code})
    metrics.add_metric(name=f"WebhooksRejected.{error.reason}", unit=MetricUnit.Count, value=1)
    return json_response(error.status_code, {"message": error.message})


@app.not_found
def not_found(error: NotFoundError) -> Response[str]:
    if app.current_event.path == "/webhook":
        return json_response(405, {"message": "Method Not Allowed"}, {"Allow": "POST"})
    return json_response(404, {"message": "Not Found"})


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
