"""A bucket the stack did not create, as its owner brings it: 1,000 objects and an SQS notification of its own.

`xasync connect-bucket` turns its EventBridge delivery on and keeps that notification; new uploads under
the watched prefix then finish DONE with their copies stored in the stack's output location, the
bucket's own queue still hears of them, and the pipeline writes nothing into the bucket (its object
versions before and after differ by the test's own uploads only). The objects already there are not
sent by connect-bucket (backfill's work), and stay.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import boto3
import pytest
from botocore.config import Config

from tests.support.cli_runner import point_cli_at, xasync
from xasync import local_stack
from xasync.local_stack import LocalStack
from xasync.sample_images import png_bytes
from xasync.servers import wait_for
from ximilar_async.values import identity

BUCKET = f"photos-archive-{uuid.uuid4().hex[:8]}"
PREFIX = "photos/"
EXISTING = 1000


@pytest.fixture(scope="module")
def local() -> Iterator[LocalStack]:
    parameters = {"LogLevel": "WARNING", "WatchedBuckets": f"{BUCKET}:{PREFIX}"}
    with local_stack.running(parameters=parameters, sweep_every=1.0, retry_delay=1) as running:
        yield running


def versions(s3: Any, bucket: str) -> set[tuple[str, str, str]]:
    """Every object version and delete marker of the bucket: (kind, key, version id)."""
    found: set[tuple[str, str, str]] = set()
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        found |= {("version", v["Key"], v["VersionId"]) for v in page.get("Versions", [])}
        found |= {("delete-marker", m["Key"], m["VersionId"]) for m in page.get("DeleteMarkers", [])}
    return found


def item(local: LocalStack, bucket: str, key: str) -> dict[str, Any]:
    answer = local.client("dynamodb").get_item(
        TableName=local.outputs["ImagesTableName"],
        Key={"image_uri": {"S": identity.image_uri(bucket, key)}},
        ConsistentRead=True,
    )
    return dict(answer.get("Item", {}))


def finished_with_copies(local: LocalStack, key: str) -> bool:
    found = item(local, BUCKET, key)
    outputs = json.dumps(found.get("outputs", {}))
    return found.get("status") == {"S": "DONE"} and "STORED" in outputs and "PENDING" not in outputs


def own_notifications(sqs: Any, queue_url: str, seen: set[str]) -> set[str]:
    """Keys the bucket's own queue has told of so far (S3 notification records, URL-decoded)."""
    for message in sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", []):
        body = json.loads(message["Body"])
        seen |= {unquote_plus(r["s3"]["object"]["key"]) for r in body.get("Records", [])}
    return seen


def test_a_connected_bucket_is_watched_keeps_its_own_notification_and_is_never_written(
    local: LocalStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the owner's bucket: versioned, 1,000 objects, then a notification to a queue of their own
    s3 = boto3.client("s3", endpoint_url=local.aws_endpoint, config=Config(max_pool_connections=16))
    sqs = local.client("sqs")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    body = png_bytes(16, 12)
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(
            pool.map(lambda n: s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}old/{n:04d}.png", Body=body), range(EXISTING))
        )
    own_queue = sqs.create_queue(QueueName=f"{BUCKET}-own")["QueueUrl"]
    own_arn = sqs.get_queue_attributes(QueueUrl=own_queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    own = {"QueueConfigurations": [{"Id": "owners-own", "QueueArn": own_arn, "Events": ["s3:ObjectCreated:*"]}]}
    s3.put_bucket_notification_configuration(Bucket=BUCKET, NotificationConfiguration=own)
    before = versions(s3, BUCKET)
    assert len(before) == EXISTING

    # When the owner connects it and uploads new images under the watched prefix (and one elsewhere)
    point_cli_at(local, tmp_path / "local.json", monkeypatch)
    said = xasync("connect-bucket", BUCKET).output
    assert "EventBridge delivery turned on; kept: 1 Queue" in said
    assert f"watched under: {PREFIX}" in said
    new_keys = [f"{PREFIX}new/cat {n}.png" for n in range(3)]  # a space: S3 URL-encodes keys in its events
    uploaded = {
        ("version", key, s3.put_object(Bucket=BUCKET, Key=key, Body=png_bytes(24, 16))["VersionId"])
        for key in [*new_keys, "elsewhere/dog.png"]
    }

    # Then each new upload under the prefix finishes DONE, its copy stored in the stack's output location
    wait_for(
        lambda: all(finished_with_copies(local, key) for key in new_keys),
        timeout=30,
        interval=0.25,
        what="the new uploads DONE with their copies stored",
    )
    done = item(local, BUCKET, new_keys[0])
    assert done["version_id"]["S"] == next(v for _, key, v in uploaded if key == new_keys[0])
    stored = next(iter(done["outputs"]["M"].values()))["M"]["uri"]["S"]
    assert stored.startswith(f"s3://{local.outputs['ResultsBucketName']}/outputs/")
    # the bucket's own notification still works, and still holds its configuration beside EventBridge's
    heard: set[str] = set()
    wait_for(lambda: set(new_keys) <= own_notifications(sqs, own_queue, heard), timeout=10, what="the own queue")
    # (moto 5.2 leaves EventBridgeConfiguration out of its answer: the uploads above showed it is on)
    configuration = s3.get_bucket_notification_configuration(Bucket=BUCKET)
    assert configuration["QueueConfigurations"] == own["QueueConfigurations"]
    # nothing outside the prefix, nothing already there, was submitted; and nothing was written into the bucket
    assert item(local, BUCKET, "elsewhere/dog.png") == {}
    assert item(local, BUCKET, f"{PREFIX}old/0000.png") == {}
    assert versions(s3, BUCKET) == before | uploaded
