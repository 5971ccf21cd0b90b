"""A slice of the deployed system on moto server, wired from template.yaml, for tests and benchmarks.

`AwsStack` creates what the template declares for the functions under test (input bucket with its
S3 -> SQS notification, tables, the token in SSM, the signing key in Secrets Manager) under unique
names, and gives each function the environment the template would, pointing at those resources.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3

from xasync.lambda_runtime import lambda_sqs_record
from xasync.servers import wait_for
from xasync.template import Resolver, functions
from ximilar_async.adapters.dynamodb.models import Tables, bind_tables
from ximilar_async.services.webhook_auth import WebhookAuth, static_keys
from ximilar_async.values.entities import DueScan


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
    outputs_queue_url: str = ""

    @property
    def auth(self) -> WebhookAuth:
        """Webhook authentication with this stack's signing key, as the functions build it."""
        max_age = int(self.template["Parameters"]["MaxRequestAgeSeconds"]["Default"])
        return WebhookAuth(static_keys(self.signing_key), timedelta(seconds=max_age))

    def request_of(self, image: Any) -> Any:
        """The request item of an image in flight (its `submission_id`): the image item itself is not
        written between its claim and its result, so Ximilar's id and CREATED are on the request."""
        found = list(self.tables.requests.batch_get([image.submission_id]))
        return found[0] if found else None

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
                "OutputsQueue": self.outputs_queue_url,
                "SubmitQueue": self.queue_url,
            },
        )
        environment = functions(self.template, resolver)[logical_id].environment
        return {**environment, "AWS_ENDPOINT_URL": self.endpoint}

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


def count_dynamodb_calls(store: Any, counter: Counter[str]) -> None:
    """Count every DynamoDB operation sent through a store's pynamodb connections (both tables'), by name."""
    for model in (store.tables.images, store.tables.requests):
        client = model._get_connection().connection.client
        client.meta.events.register(
            "before-call.dynamodb", lambda model, **_: counter.update([model.name]), unique_id="xasync-counter"
        )


def time_shifted(sweeper: Any, ahead: timedelta) -> Any:
    """A copy of `sweeper` living `ahead` in the future, so a test or benchmark need not wait for due times."""

    def clock() -> datetime:
        return datetime.now(UTC) + ahead

    return replace(
        sweeper,
        clock=clock,
        submitter=replace(sweeper.submitter, clock=clock),
        recorder=replace(sweeper.recorder, clock=clock),
        sweep_log=MarksInWritersTime(sweeper.sweep_log, ahead),
    )


@dataclass(frozen=True)
class MarksInWritersTime:
    """The sweep log of a sweeper living ahead, its due-index marks kept in the writers' time.

    A mark says "every entry due by then was handled", which holds because writers set check times
    after their own clock, and their clock is the sweeper's: in production, one wall clock. A sweeper
    living ahead would leave marks in the writers' future, past check times they write next; moved
    back by `ahead`, a mark only makes the next run read some entries again.
    """

    sweep_log: Any
    ahead: timedelta

    def record_sweep(self, outcome: Mapping[str, Any], now: datetime, scan: DueScan) -> None:
        back = int(self.ahead.total_seconds())
        marks = {shard: mark - back for shard, mark in scan.next_marks().items()}
        self.sweep_log.record_sweep(outcome, now, replace(scan, marks=marks, reached={}, read_through={}))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sweep_log, name)


def is_test_event(record: dict[str, Any]) -> bool:
    return bool(json.loads(record["body"]).get("Event") == "s3:TestEvent")


def sqs_event(records: list[dict[str, Any]]) -> dict[str, Any]:
    return {"Records": records}


def create_table_from_template(
    dynamodb: Any, template: dict[str, Any], logical_id: str, table_name: str, *, backups_and_ttl: bool = True
) -> None:
    """Create a table exactly as template.yaml declares it (keys, indexes, encryption, PITR, TTL).

    `backups_and_ttl=False` leaves PITR and TTL out, for a backend without their operations: dynalite
    answers UnknownOperationException to UpdateContinuousBackups and UpdateTimeToLive. Neither changes
    what a read or a write does (TTL only deletes expired items, in the background), so the data
    layer's tests lose nothing.
    """
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

    # Polled, not boto3's table_exists waiter: a table that is not ACTIVE at its first look (dynalite
    # flips it just after answering CreateTable) would cost the waiter's fixed 20 s sleep.
    def active() -> bool:
        return bool(dynamodb.describe_table(TableName=table_name)["Table"]["TableStatus"] == "ACTIVE")

    wait_for(active, what=f"table {table_name} ACTIVE")
    if not backups_and_ttl:
        return
    if properties.get("PointInTimeRecoverySpecification", {}).get("PointInTimeRecoveryEnabled"):
        dynamodb.update_continuous_backups(
            TableName=table_name, PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True}
        )
    ttl = properties.get("TimeToLiveSpecification")
    if ttl:
        dynamodb.update_time_to_live(
            TableName=table_name, TimeToLiveSpecification={"AttributeName": ttl["AttributeName"], "Enabled": True}
        )


def create_stack(endpoint: str, template: dict[str, Any], token: str, signing_key: str | None = None) -> AwsStack:
    suffix = uuid.uuid4().hex[:10]
    s3 = boto3.client("s3", endpoint_url=endpoint)
    sqs = boto3.client("sqs", endpoint_url=endpoint)
    bucket, results = f"xasync-in-{suffix}", f"xasync-results-{suffix}"
    s3.create_bucket(Bucket=bucket)
    s3.create_bucket(Bucket=results)
    queue_url = sqs.create_queue(QueueName=f"submit-{suffix}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    outputs_queue_url = sqs.create_queue(QueueName=f"outputs-{suffix}")["QueueUrl"]
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
        outputs_queue_url=outputs_queue_url,
    )
