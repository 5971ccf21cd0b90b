"""A slice of the deployed system on moto server, wired from template.yaml, and a way to run a handler.

Used by the tests and the benchmarks.

`AwsStack` creates what the template declares for the functions under test (input bucket with its
S3 -> SQS notification, tables, the token in SSM, the signing key in Secrets Manager) under unique
names, and gives each function the environment the template would, pointing at those resources.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import uuid
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any

import boto3

from xasync.servers import wait_for
from xasync.template import Resolver, functions
from ximilar_async.dal.models import Tables, bind_tables
from ximilar_async.webhook_auth import SUBMISSION_HEADER, TOKEN_HEADER, WebhookAuth, static_keys


@dataclass
class FakeLambdaContext:
    function_name: str = "test-function"
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:test-function"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    remaining_millis: int = 60_000

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_millis


@dataclass
class AwsStack:
    endpoint: str
    template: dict[str, Any]
    bucket: str
    queue_url: str
    queue_arn: str
    images_table: str
    requests_table: str
    results_bucket: str
    token_parameter: str
    secret_arn: str
    signing_key: bytes
    tables: Tables

    @property
    def auth(self) -> WebhookAuth:
        """Webhook authentication with this stack's signing key, as the functions build it."""
        max_age = int(self.template["Parameters"]["MaxRequestAgeSeconds"]["Default"])
        return WebhookAuth(static_keys(self.signing_key), timedelta(seconds=max_age))

    def client(self, service: str) -> Any:
        factory: Any = boto3.client  # its overloads want a literal service name
        return factory(service, endpoint_url=self.endpoint)

    def environment(self, logical_id: str, **parameters: str) -> dict[str, str]:
        """The function's environment as the template sets it, for these resources and parameters."""
        resolver = Resolver(
            self.template,
            parameters=parameters,
            physical_ids={
                "ImagesTable": self.images_table,
                "RequestsTable": self.requests_table,
                "InputBucket": self.bucket,
                "ResultsBucket": self.results_bucket,
                "WebhookSigningKey": self.secret_arn,
            },
        )
        environment = functions(self.template, resolver)[logical_id].environment
        return {**environment, "AWS_ENDPOINT_URL": self.endpoint, "POWERTOOLS_TRACE_DISABLED": "true"}

    def put(self, key: str, body: bytes) -> None:
        self.client("s3").put_object(Bucket=self.bucket, Key=key, Body=body)

    def receive_uploads(self, count: int, timeout: float = 10) -> list[dict[str, Any]]:
        """`count` upload notifications, with any TestEvent that came along left out."""
        received: list[dict[str, Any]] = []

        def enough() -> bool:
            received.extend(record for record in self.receive(0) if not is_test_event(record))
            return len(received) >= count

        wait_for(enough, timeout=timeout, what=f"{count} upload notifications")
        return received

    def receive(self, count: int, timeout: float = 10) -> list[dict[str, Any]]:
        """`count` messages from the queue, shaped as Lambda's SQS event records (TestEvents included)."""
        sqs = self.client("sqs")
        received: list[dict[str, Any]] = []

        def enough() -> bool:
            answer = sqs.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=0,
                AttributeNames=["All"],
                VisibilityTimeout=600,
            )
            received.extend(answer.get("Messages", []))
            return len(received) >= count

        wait_for(enough, timeout=timeout, what=f"{count} messages")
        return [lambda_sqs_record(message, self.queue_arn) for message in received]


def count_dynamodb_calls(repository: Any, counter: Counter[str]) -> None:
    """Count every DynamoDB operation sent through a repository's pynamodb connections, by name."""
    for model in (repository.tables.images, repository.tables.requests):
        client = model._get_connection().connection.client
        client.meta.events.register(
            "before-call.dynamodb", lambda model, **_: counter.update([model.name]), unique_id="xasync-counter"
        )


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


def time_shifted(sweeper: Any, ahead: timedelta) -> Any:
    """A copy of `sweeper` living `ahead` in the future, so a test or benchmark need not wait for due times."""

    def clock() -> datetime:
        return datetime.now(UTC) + ahead

    return replace(
        sweeper,
        clock=clock,
        submitter=replace(sweeper.submitter, clock=clock),
        recorder=replace(sweeper.recorder, clock=clock),
    )


def is_test_event(record: dict[str, Any]) -> bool:
    return bool(json.loads(record["body"]).get("Event") == "s3:TestEvent")


def sqs_event(records: list[dict[str, Any]]) -> dict[str, Any]:
    return {"Records": records}


def create_table_from_template(dynamodb: Any, template: dict[str, Any], logical_id: str, table_name: str) -> None:
    """Create a table exactly as template.yaml declares it (keys, indexes, encryption, PITR, TTL)."""
    properties = template["Resources"][logical_id]["Properties"]
    dynamodb.create_table(
        TableName=table_name,
        **{
            name: properties[name]
            for name in ("BillingMode", "AttributeDefinitions", "KeySchema", "GlobalSecondaryIndexes")
            if name in properties
        },
        SSESpecification={"Enabled": properties["SSESpecification"]["SSEEnabled"]},
    )
    dynamodb.get_waiter("table_exists").wait(TableName=table_name)
    if properties.get("PointInTimeRecoverySpecification", {}).get("PointInTimeRecoveryEnabled"):
        dynamodb.update_continuous_backups(
            TableName=table_name, PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True}
        )
    ttl = properties.get("TimeToLiveSpecification")
    if ttl:
        dynamodb.update_time_to_live(
            TableName=table_name, TimeToLiveSpecification={"AttributeName": ttl["AttributeName"], "Enabled": True}
        )


# The signing key of local stacks: events/webhook-*.json carry tokens made with it.
LOCAL_SIGNING_KEY = "local-webhook-signing-key"


def freshly_signed(event: dict[str, Any], key: str = LOCAL_SIGNING_KEY) -> dict[str, Any]:
    """A webhook event (HTTP API 2.0) whose token, if `key` made it, is made again now.

    Tokens expire (MaxRequestAgeSeconds), so the signed examples in events/ are signed again when they
    are used: by `xasync invoke`, by `xasync up` for `sam local invoke` (.xasync/events/), by the tests.
    A token of another key, or no token of ours (the wrong-token example), is left as it is.
    """
    headers = {name.lower(): value for name, value in (event.get("headers") or {}).items()}
    token, submission_id = headers.get(TOKEN_HEADER.lower()), headers.get(SUBMISSION_HEADER.lower())
    auth = WebhookAuth(static_keys(key))
    if not token or not submission_id or not auth.signs(token):
        return event
    fresh = auth.headers(submission_id)[TOKEN_HEADER]
    return {**event, "headers": {**headers, TOKEN_HEADER.lower(): fresh}}


def create_stack(endpoint: str, template: dict[str, Any], token: str, signing_key: str | None = None) -> AwsStack:
    suffix = uuid.uuid4().hex[:10]
    s3 = boto3.client("s3", endpoint_url=endpoint)
    sqs = boto3.client("sqs", endpoint_url=endpoint)
    bucket, results = f"xasync-in-{suffix}", f"xasync-results-{suffix}"
    s3.create_bucket(Bucket=bucket)
    s3.create_bucket(Bucket=results)
    queue_url = sqs.create_queue(QueueName=f"submit-{suffix}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    prefix = template["Parameters"]["InputPrefix"]["Default"]
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "QueueArn": queue_arn,
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": prefix}]}},
                }
            ]
        },
    )
    dynamodb = boto3.client("dynamodb", endpoint_url=endpoint)
    images, requests_ = f"images-{suffix}", f"requests-{suffix}"
    create_table_from_template(dynamodb, template, "ImagesTable", images)
    create_table_from_template(dynamodb, template, "RequestsTable", requests_)
    parameter = f"/ximilar-async-{suffix}/api-token"
    boto3.client("ssm", endpoint_url=endpoint).put_parameter(Name=parameter, Value=token, Type="SecureString")
    signing_key = signing_key or uuid.uuid4().hex + uuid.uuid4().hex
    secret_arn = boto3.client("secretsmanager", endpoint_url=endpoint).create_secret(
        Name=f"webhook-key-{suffix}", SecretString=signing_key
    )["ARN"]
    return AwsStack(
        endpoint=endpoint,
        template=template,
        bucket=bucket,
        queue_url=queue_url,
        queue_arn=queue_arn,
        images_table=images,
        requests_table=requests_,
        results_bucket=results,
        token_parameter=parameter,
        secret_arn=secret_arn,
        signing_key=signing_key.encode(),
        tables=bind_tables(images, requests_, host=endpoint),
    )


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
    return importlib.import_module(module_name)
