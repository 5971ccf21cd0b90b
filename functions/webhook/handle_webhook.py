"""Entry point of the webhook function: Ximilar's DONE webhooks to DynamoDB records.

Thin by design: settings and clients are built once per cold start; the work is done by the
shared package in the layer. The behaviour itself lands with issue #5; until then every
invocation fails loudly, so no event is taken as handled.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from ximilar_async.settings import WebhookSettings

settings = WebhookSettings.from_env()
logger = Logger()


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    raise NotImplementedError("the webhook function is not implemented yet (issue #5)")
