"""What Lambda does around a handler, done in this process: a cold start, the context, an SQS record.

Used by the local stack and the CLI (and by the tests, which run the handlers the same way).
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from xasync.template import functions


@dataclass
class LocalLambdaContext:
    """The Lambda context of a local invocation: the names Powertools logs, and a real deadline.

    The remaining time counts down from the invocation's start, as on Lambda, so a handler that
    stops before its deadline (the sweeper) behaves locally as deployed.
    """

    function_name: str = "local-function"
    timeout_seconds: float = 60.0
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 512
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    started: float = field(default_factory=time.monotonic)

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:us-east-1:123456789012:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.started + self.timeout_seconds - time.monotonic()) * 1000))


def lambda_sqs_record(message: dict[str, Any], queue_arn: str) -> dict[str, Any]:
    """An SQS ReceiveMessage message as Lambda's SQS event source hands it to a function."""
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": message.get("Attributes", {}),
        "messageAttributes": {},
        "md5OfBody": message["MD5OfBody"],
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": "us-east-1",
    }


def load_function(template: dict[str, Any], logical_id: str, environment: dict[str, str]) -> ModuleType:
    """Import a function's handler module afresh under `environment` (set in os.environ): a cold start.

    The module comes from the function's CodeUri, as Lambda finds it; the layer's package is already
    importable in this venv.
    """
    spec = functions(template)[logical_id]
    module_name = spec.handler_module
    if str(spec.code_uri) not in sys.path:
        sys.path.insert(0, str(spec.code_uri))
    os.environ.update(environment)
    # A new process would have no Powertools logger yet: forget the one an earlier cold start made,
    # whose handler writes to that test's captured stdout.
    logging.Logger.manager.loggerDict.pop(environment.get("POWERTOOLS_SERVICE_NAME", "service_undefined"), None)
    sys.modules.pop(module_name, None)
    try:
        return importlib.import_module(module_name)
    finally:
        # The cold start froze what it built (`coldstart.cold_start`), for good in a Lambda process. A process
        # that cold-starts handlers again and again gives them back to the collector, or every earlier cold
        # start's reference cycles would stay; and a cold start that failed before its end (the handler
        # turned collection off) leaves collection on, as a failed Lambda cold start leaves no process.
        gc.unfreeze()
        gc.enable()
