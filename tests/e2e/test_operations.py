"""The operations commands on the embedded stack, as an operator runs them: status, backfill, reprocess,
redrive, reconcile. Requests come due for the sweeper only after 20 s here, so what reconcile records is
not recorded by the sweeper first."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli_runner import point_cli_at, xasync
from tests.support.stack_items import image
from xasync import local_stack
from xasync.local_stack import LocalStack
from xasync.sample_images import png_bytes
from xasync.servers import wait_for
from ximilar_async.adapters.ximilar import XimilarClient, make_session
from ximilar_emulator import EmulatorControl


@pytest.fixture(scope="module")
def local() -> Iterator[LocalStack]:
    parameters = {"LogLevel": "WARNING", "FirstCheckDelaySeconds": "20"}
    with local_stack.running(parameters=parameters, sweep_every=1.0, retry_delay=1) as running:
        yield running


@pytest.fixture
def control(local: LocalStack) -> EmulatorControl:
    emulator = EmulatorControl(local.ximilar_url)
    emulator.set_knobs(webhook_drop_rate=0.0, webhook_duplicate_rate=0.0, final_state="DONE")
    return emulator


@pytest.fixture(autouse=True)
def state_file(local: LocalStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return point_cli_at(local, tmp_path / "local.json", monkeypatch)


def field(local: LocalStack, key: str, name: str) -> str | None:
    value = image(local, key).get(name)
    return None if value is None else str(next(iter(value.values())))


def request_field(local: LocalStack, key: str, name: str) -> str | None:
    """A field of the image's request item: in flight, Ximilar's id and state are there, not on the image."""
    submission_id = field(local, key, "submission_id")
    if submission_id is None:
        return None
    answer = local.client("dynamodb").get_item(
        TableName=local.outputs["RequestsTableName"], Key={"submission_id": {"S": submission_id}}, ConsistentRead=True
    )
    value = answer.get("Item", {}).get(name)
    return None if value is None else str(next(iter(value.values())))


def wait_all(local: LocalStack, keys_: list[str], status: str, timeout: float = 60) -> None:
    wait_for(
        lambda: all(field(local, key, "status") == status for key in keys_),
        timeout=timeout,
        interval=0.25,
        what=f"{len(keys_)} images {status}",
    )


def put(local: LocalStack, keys_: list[str]) -> None:
    s3 = local.client("s3")
    for key in keys_:
        s3.put_object(Bucket=local.outputs["InputBucketName"], Key=key, Body=png_bytes(16, 12))


def put_unnoticed(local: LocalStack, keys_: list[str]) -> None:
    """Objects that were in the bucket before the pipeline watched it: put with the notification off."""
    s3, bucket = local.client("s3"), local.outputs["InputBucketName"]
    configuration = s3.get_bucket_notification_configuration(Bucket=bucket)
    configuration.pop("ResponseMetadata", None)
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={})
    try:
        for key in keys_:
            s3.put_object(Bucket=bucket, Key=key, Body=png_bytes(8, 8))
    finally:
        s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration=configuration)


def test_backfill_of_500_existing_objects_run_twice_submits_each_once(
    local: LocalStack, control: EmulatorControl
) -> None:
    keys_ = [f"incoming/flows/backfill/{n:03d}.png" for n in range(500)]
    put_unnoticed(local, keys_)
    assert image(local, keys_[0]) == {}  # the pipeline never heard of them

    first = xasync("backfill", "--prefix", "incoming/flows/backfill/")
    assert "listed 500, sent 500" in first.output
    wait_all(local, keys_, "DONE", timeout=180)
    second = xasync("backfill", "--prefix", "incoming/flows/backfill/")
    assert "listed 500, sent 0 to the submit queue, skipped 500 already known" in second.output
    assert {field(local, key, "attempts") for key in keys_} == {"1"}


def test_backfill_reads_an_s3_inventory_manifest(local: LocalStack, control: EmulatorControl, tmp_path: Path) -> None:
    keys_ = ["incoming/inventory/a b.png", "incoming/inventory/c.png"]
    put_unnoticed(local, keys_)
    s3, bucket = local.client("s3"), local.outputs["InputBucketName"]
    rows = []
    for key in keys_:
        head = s3.head_object(Bucket=bucket, Key=key)
        quoted = key.replace(" ", "+")
        rows.append(f'"{bucket}","{quoted}","{head["ContentLength"]}","{head["ETag"].strip(chr(34))}"\n')
    rows.append(f'"{bucket}","elsewhere/skipped.png","10","abc"\n')
    destination = local.outputs["ResultsBucketName"]
    s3.put_object(Bucket=destination, Key="inventory/data/1.csv.gz", Body=gzip.compress("".join(rows).encode()))
    manifest = tmp_path / "manifest.json"
    manifest.write_text(
        json.dumps(
            {
                "sourceBucket": bucket,
                "destinationBucket": f"arn:aws:s3:::{destination}",
                "fileFormat": "CSV",
                "fileSchema": "Bucket, Key, Size, ETag",
                "files": [{"key": "inventory/data/1.csv.gz", "size": 1, "MD5checksum": "x"}],
            }
        )
    )
    result = xasync("backfill", "--prefix", "incoming/inventory/", "--inventory", str(manifest))
    assert "listed 2, sent 2" in result.output
    wait_all(local, keys_, "DONE")


def test_reprocess_dry_run_changes_nothing_then_submits_again_as_a_new_attempt(
    local: LocalStack, control: EmulatorControl
) -> None:
    keys_ = ["incoming/again/one.png", "incoming/again/two.png"]
    put(local, keys_)
    wait_all(local, keys_, "DONE")
    first_requests = {field(local, key, "request_id") for key in keys_}

    dry = xasync("reprocess", "--prefix", "incoming/again/", "--dry-run")
    assert "dry run: 2 of 2 images would be submitted again" in dry.output
    assert {field(local, key, "attempts") for key in keys_} == {"1"}

    xasync("reprocess", "--prefix", "incoming/again/")
    wait_for(
        lambda: all(field(local, k, "attempts") == "2" and field(local, k, "status") == "DONE" for k in keys_),
        what="both images DONE a second time",
    )
    assert not {field(local, key, "request_id") for key in keys_} & first_requests

    by_request = xasync("reprocess", "--request-id", str(field(local, keys_[0], "request_id")), "--dry-run")
    assert "dry run: 1 of 1 images" in by_request.output
    by_status = xasync("reprocess", "--status", "DONE", "--since", "10m", "--dry-run")
    assert "incoming/again/two.png" in by_status.output


def test_redrive_moves_dead_letters_back_and_they_are_submitted(local: LocalStack, control: EmulatorControl) -> None:
    key = "incoming/dead/letter.png"
    put_unnoticed(local, [key])
    sqs = local.client("sqs")
    dead_letters = local.outputs["SubmitDeadLetterQueueUrl"]
    head = local.client("s3").head_object(Bucket=local.outputs["InputBucketName"], Key=key)
    body = {
        "Records": [
            {
                "eventSource": "aws:s3",
                "eventName": "ObjectCreated:Put",
                "eventTime": "2026-01-01T00:00:00.000Z",
                "s3": {
                    "bucket": {"name": local.outputs["InputBucketName"]},
                    "object": {"key": key, "size": head["ContentLength"], "eTag": head["ETag"].strip('"')},
                },
            }
        ]
    }
    sqs.send_message(QueueUrl=dead_letters, MessageBody=json.dumps(body))

    result = xasync("redrive")
    assert "moved 1 messages" in result.output
    wait_all(local, [key], "DONE")
    depth = sqs.get_queue_attributes(QueueUrl=dead_letters, AttributeNames=["ApproximateNumberOfMessages"])
    assert depth["Attributes"]["ApproximateNumberOfMessages"] == "0"


def test_reconcile_reports_unknown_requests_and_records_done_ones_we_missed(
    local: LocalStack, control: EmulatorControl
) -> None:
    # Billed but lost to us: a request our tables never heard of.
    client = XimilarClient(local.ximilar_url, make_session(local_stack.LOCAL_TOKEN))
    lost = client.submit("flows", "demo-flow", [{"_id": "lost-record", "_base64": "aGVsbG8="}])["id"]
    # DONE at Ximilar, no webhook came, and the sweeper's first check is 20 s away.
    control.set_knobs(webhook_drop_rate=1.0)
    key = "incoming/flows/reconcile/missed.png"
    put(local, [key])
    wait_for(lambda: request_field(local, key, "request_id"), what="the request to be created")
    missed = str(request_field(local, key, "request_id"))
    wait_for(lambda: client.status(missed) == "DONE", what="Ximilar to finish it")
    assert (field(local, key, "status"), request_field(local, key, "status")) == ("SUBMITTING", "CREATED")

    report = json.loads(xasync("reconcile", "--output", "json").output)
    findings = {finding["request_id"]: finding for finding in report}
    assert findings[lost]["finding"] == "unknown"
    assert findings[lost]["records"] == [{"_id": "lost-record", "source": "_base64"}]
    assert (findings[missed]["finding"], findings[missed]["recorded"]) == ("recorded", 1)
    assert field(local, key, "status") == "DONE"

    again = json.loads(xasync("reconcile", "--status", "DONE", "--type", "flows", "--output", "json").output)
    assert {f["request_id"]: f["finding"] for f in again}[missed] == "ok"
    table = xasync("reconcile")
    assert "unknown" in table.output and lost in table.output


def test_status_counts_queues_last_sweep_and_failures(local: LocalStack, control: EmulatorControl) -> None:
    local.client("s3").put_object(Bucket=local.outputs["InputBucketName"], Key="incoming/status/notes.txt", Body=b"x")
    put(local, ["incoming/status/ok.png"])
    wait_all(local, ["incoming/status/ok.png"], "DONE")
    wait_all(local, ["incoming/status/notes.txt"], "FAILED")

    report = json.loads(xasync("status", "--output", "json", "--since", "1h").output)
    assert report["images_by_status"]["DONE"] >= 1
    assert report["images_by_status"]["FAILED"] >= 1
    assert set(report["queues"]) == {"submit", "dead-letter"}
    assert report["last_sweep"]["age_seconds"] < 30  # the sweeper runs every second here
    assert ["not an image extension: .txt", 1] in report["top_failure_reasons"]
    assert report["spend_guard"]["paused"] is False

    table = xasync("status", "--since", "1h")
    for title in ("Images updated since", "Queues", "last sweep", "spend guard", "top failure reasons"):
        assert title in table.output
