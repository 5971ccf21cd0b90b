"""End to end through the embedded stack, as a user drives it: boto3 puts (as `aws s3 cp`), the
functions wired from template.yaml, the CLI."""

from __future__ import annotations

import io
import json
import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aws_lambda_powertools.utilities.data_classes import (
    APIGatewayProxyEventV2,
    EventBridgeEvent,
    S3Event,
    SQSEvent,
)
from click.testing import CliRunner
from PIL import Image

from tests.support.events import EVENTS, load_event
from tests.support.stack_items import image
from xasync import cli, local_stack
from xasync.local_stack import LocalStack
from xasync.sample_images import png_bytes
from xasync.servers import wait_for
from xasync.template import PROJECT_ROOT
from ximilar_emulator import EmulatorControl

EVENT_TYPES = {
    "s3-put.json": S3Event,
    "sqs-s3-put.json": SQSEvent,
    "webhook-done.json": APIGatewayProxyEventV2,
    "webhook-wrong-token.json": APIGatewayProxyEventV2,
    "webhook-malformed.json": APIGatewayProxyEventV2,
    "schedule.json": EventBridgeEvent,
}


@pytest.fixture(scope="module")
def local() -> Iterator[LocalStack]:
    with local_stack.running(parameters={"LogLevel": "WARNING"}, sweep_every=1.0, retry_delay=1) as running:
        yield running


@pytest.fixture
def control(local: LocalStack) -> EmulatorControl:
    emulator = EmulatorControl(local.ximilar_url)
    emulator.set_knobs(webhook_drop_rate=0.0, webhook_duplicate_rate=0.0, final_state="DONE", artifact_ttl_seconds=0.0)
    return emulator


@pytest.fixture
def state_file(local: LocalStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The state `xasync up` writes, so the CLI's commands find this stack."""
    path = tmp_path / "local.json"
    monkeypatch.setattr(local_stack, "STATE_FILE", path)
    local_stack.write_state(local, path)
    return path


def put(local: LocalStack, keys_: list[str], body: bytes | None = None) -> None:
    s3 = local.client("s3")
    for key in keys_:
        s3.put_object(
            Bucket=local.outputs["InputBucketName"], Key=key, Body=png_bytes(16, 12) if body is None else body
        )


def status_of(local: LocalStack, key: str) -> str | None:
    item = image(local, key)
    return item["status"]["S"] if item else None


def wait_all(local: LocalStack, keys_: list[str], statuses: set[str], timeout: float = 60) -> None:
    wait_for(
        lambda: all(status_of(local, key) in statuses for key in keys_),
        timeout=timeout,
        interval=0.25,
        what=f"{len(keys_)} images in {statuses}",
    )


def recorded_by(local: LocalStack, function: str) -> int:
    with local.invocations.lock:
        answers = list(local.invocations.answers.get(function, []))
    if function == "WebhookFunction":
        return sum(json.loads(answer["body"]).get("recorded", 0) for answer in answers)
    return sum(answer.get("recorded", 0) for answer in answers)


def test_every_resource_of_the_template_exists_locally(local: LocalStack) -> None:
    assert set(local.resources) == set(local.template["Resources"])
    tables = local.client("dynamodb")
    for name in ("ImagesTableName", "RequestsTableName"):
        described = tables.describe_table(TableName=local.outputs[name])["Table"]
        assert described["GlobalSecondaryIndexes"]
    sqs = local.client("sqs")
    queue = sqs.get_queue_url(QueueName=local.outputs["SubmitQueueUrl"].rsplit("/", 1)[1])["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["All"])["Attributes"]
    assert json.loads(attributes["RedrivePolicy"])["maxReceiveCount"] == 5
    assert json.loads(attributes["Policy"])["Statement"][0]["Sid"] == "OnlyTheInputBucketSends"
    notification = local.client("s3").get_bucket_notification_configuration(Bucket=local.outputs["InputBucketName"])
    assert notification["QueueConfigurations"][0]["QueueArn"].endswith(queue.rsplit("/", 1)[1])
    local.client("secretsmanager").describe_secret(SecretId=local.outputs["WebhookSigningKeyArn"])


def test_25_images_put_with_boto3_all_end_done_with_results(local: LocalStack, control: EmulatorControl) -> None:
    keys_ = [f"incoming/flows/e2e-{n:02d}.png" for n in range(20)] + [f"incoming/e2e-{n}.png" for n in range(5)]
    put(local, keys_)
    wait_all(local, keys_, {"DONE"})
    upscaled = image(local, "incoming/e2e-0.png")["result"]["M"]
    assert upscaled["_upscaled_width"]["N"] == "32"
    assert image(local, "incoming/flows/e2e-00.png")["result"]["M"]["_tags"]


def test_lost_and_duplicated_webhooks_are_finished_by_the_sweeper_and_recorded_once(
    local: LocalStack, control: EmulatorControl
) -> None:
    control.set_knobs(webhook_drop_rate=0.3, webhook_duplicate_rate=0.2)
    wait_for(local.invocations.idle, what="earlier work to settle")
    before = recorded_by(local, "WebhookFunction") + recorded_by(local, "SweeperFunction")
    keys_ = [f"incoming/lossy-{n:02d}.png" for n in range(25)]  # upscaler: 25 requests, 25 webhooks
    put(local, keys_)
    wait_all(local, keys_, {"DONE"}, timeout=90)
    dropped = sum(1 for w in control.webhooks() if w["outcome"] == "dropped")
    assert dropped > 0
    # A function that wrote a result is in flight until it answers: wait for the answers to be counted.
    wait_for(local.invocations.idle, timeout=30, what="invocations to settle")
    assert recorded_by(local, "SweeperFunction") > 0
    after = recorded_by(local, "WebhookFunction") + recorded_by(local, "SweeperFunction")
    assert after - before == 25  # every image recorded exactly once, duplicates and sweeps included


def test_bad_inputs_end_failed_or_error_with_reasons(local: LocalStack, control: EmulatorControl) -> None:
    put(local, ["incoming/bad/notes.txt"], b"text")
    put(local, ["incoming/bad/empty.png"], b"")
    put(local, ["incoming/flows/bad/fake.jpg"], b"not really a jpeg")
    wait_all(
        local, ["incoming/bad/notes.txt", "incoming/bad/empty.png", "incoming/flows/bad/fake.jpg"], {"FAILED", "ERROR"}
    )
    assert image(local, "incoming/bad/notes.txt")["status_reason"]["S"] == "not an image extension: .txt"
    assert image(local, "incoming/bad/empty.png")["status_reason"]["S"] == "the object is empty"
    fake = image(local, "incoming/flows/bad/fake.jpg")
    assert fake["status"]["S"] == "ERROR"
    assert fake["status_reason"]["S"].startswith("400: Unable to load image")


def test_a_429_storm_during_submission_delays_but_loses_nothing(local: LocalStack, control: EmulatorControl) -> None:
    control.fail_next(40, status=429, retry_after=0)
    keys_ = [f"incoming/flows/storm-{n:02d}.png" for n in range(12)]
    put(local, keys_)
    wait_all(local, keys_, {"DONE"}, timeout=90)
    assert any(call["status"] == 429 for call in control.calls())


@pytest.mark.parametrize("name", sorted(EVENT_TYPES))
def test_every_event_file_parses_as_its_event_type(name: str) -> None:
    event = EVENT_TYPES[name](load_event(name))
    if isinstance(event, S3Event):
        assert event.record.s3.get_object.key
    elif isinstance(event, SQSEvent):
        assert all(record.body for record in event.records)
    elif isinstance(event, APIGatewayProxyEventV2):
        assert (event.request_context.http.method, event.raw_path) == ("POST", "/webhook")
    else:
        assert isinstance(event, EventBridgeEvent)
        assert event.detail_type == "Scheduled Event"


@pytest.mark.parametrize(
    ("function", "name", "expect"),
    [
        ("SubmitFunction", "s3-put.json", "images_submitted"),
        ("SubmitFunction", "sqs-s3-put.json", "batchItemFailures"),
        ("WebhookFunction", "webhook-done.json", '"statusCode": 202'),
        ("WebhookFunction", "webhook-wrong-token.json", '"statusCode": 401'),
        ("WebhookFunction", "webhook-malformed.json", '"statusCode": 400'),
        ("SweeperFunction", "schedule.json", '"taken"'),
    ],
)
def test_xasync_invoke_runs_every_event_file(
    local: LocalStack, state_file: Path, function: str, name: str, expect: str
) -> None:
    result = CliRunner().invoke(
        cli.main,
        ["invoke", function, "--event", str(EVENTS / name), "--env-vars", str(PROJECT_ROOT / "env.json")],
    )
    assert result.exit_code == 0, result.output
    assert expect in result.output.splitlines()[-1]


def test_xasync_upload_and_results(
    local: LocalStack, state_file: Path, control: EmulatorControl, tmp_path: Path
) -> None:
    folder = tmp_path / "shots"
    folder.mkdir()
    (folder / "a b.png").write_bytes(png_bytes(10, 10))
    (folder / "c.png").write_bytes(png_bytes(11, 11))
    runner = CliRunner()
    uploaded = runner.invoke(cli.main, ["upload", str(folder), "--prefix", "incoming/cli/"])
    assert uploaded.exit_code == 0, uploaded.output
    wait_all(local, ["incoming/cli/a b.png", "incoming/cli/c.png"], {"DONE"})

    one = runner.invoke(cli.main, ["results", "--key", "incoming/cli/a b.png", "--format", "json"])
    (item,) = json.loads(one.output)
    assert (item["status"], item["result"]["_upscaled_width"]) == ("DONE", 20)
    by_request = runner.invoke(cli.main, ["results", "--request-id", item["request_id"], "--format", "csv"])
    # The outputs column is new with the output copies (issue 12): each output's state and key.
    assert by_request.output.splitlines()[0] == "key,status,request_id,summary,outputs"
    assert "incoming/cli/a b.png,DONE" in by_request.output
    recent = runner.invoke(cli.main, ["results", "--status", "DONE", "--since", "10m"])
    assert "incoming/cli/c.png" in recent.output
    swept = runner.invoke(cli.main, ["sweep"])
    assert swept.exit_code == 0, swept.output


# --- outputs and completion events (issue 12) ---------------------------------------------------------


def output_of(local: LocalStack, key: str, name: str = "upscaled") -> dict[str, Any] | None:
    outputs = image(local, key).get("outputs", {}).get("M", {})
    found = outputs.get(name, {}).get("M")
    return {field: value.get("S") for field, value in found.items()} if found else None


def wait_outputs(local: LocalStack, keys_: list[str], states: set[str], timeout: float = 60) -> None:
    wait_for(
        lambda: all((output_of(local, key) or {}).get("state") in states for key in keys_),
        timeout=timeout,
        interval=0.25,
        what=f"outputs of {len(keys_)} images in {states}",
    )


def drain_events(local: LocalStack) -> list[dict[str, Any]]:
    sqs = local.client("sqs")
    events: list[dict[str, Any]] = []
    while True:
        answer = sqs.receive_message(
            QueueUrl=local.outputs["LocalEventsQueueUrl"], MaxNumberOfMessages=10, WaitTimeSeconds=0
        )
        messages = answer.get("Messages", [])
        if not messages:
            return events
        for message in messages:
            events.append(json.loads(message["Body"]))
            sqs.delete_message(QueueUrl=local.outputs["LocalEventsQueueUrl"], ReceiptHandle=message["ReceiptHandle"])


class Captured(logging.Handler):
    """Every log record of the functions and the layer while a test runs, as text (message and extras)."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.getMessage()} {record.__dict__}")


@pytest.fixture
def captured_logs() -> Iterator[Captured]:
    handler = Captured()
    loggers = [logging.getLogger(name) for name in ("ximilar_async", "ximilar-async")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    yield handler
    for logger, level in zip(loggers, levels, strict=True):
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_every_upscaled_image_is_copied_to_the_output_location_and_each_finish_is_one_event(
    local: LocalStack, control: EmulatorControl, captured_logs: Captured
) -> None:
    # Given the events of earlier tests read, and images of every kind uploaded (upscaler, flows, not an image)
    wait_for(local.invocations.idle, timeout=30, what="earlier work to settle")
    drain_events(local)
    upscaled = [f"incoming/outputs/photo-{n}.png" for n in range(4)]
    others = ["incoming/flows/outputs-flow.png", "incoming/outputs/readme.txt"]
    put(local, upscaled)
    put(local, others[:1])
    put(local, others[1:], b"text")

    # When they finish and the copies are made
    wait_all(local, upscaled + others, {"DONE", "FAILED", "ERROR"})
    wait_outputs(local, upscaled, {"STORED"})

    # Then each upscaled copy is in the output location, an image of the upscaled size, named by its item
    s3 = local.client("s3")
    for key in upscaled:
        output = output_of(local, key)
        assert output is not None
        bucket, _, object_key = str(output["uri"]).removeprefix("s3://").partition("/")
        assert object_key == key.replace("incoming/", "outputs/").replace(".png", ".upscaled.jpg")
        stored = s3.get_object(Bucket=bucket, Key=object_key)
        assert stored["ContentType"] == "image/jpeg"
        assert stored["Metadata"]["record-id"] == image(local, key)["record_id"]["S"]
        with Image.open(io.BytesIO(stored["Body"].read())) as copy:
            assert copy.size == (32, 24)  # 16x12 upscaled 2x
    # And the pipeline created nothing under InputPrefix: the input bucket holds the uploads only
    listed = s3.list_objects_v2(Bucket=local.outputs["InputBucketName"], Prefix="incoming/outputs/")
    assert sorted(o["Key"] for o in listed.get("Contents", [])) == sorted(upscaled + others[1:])

    # And every finished image produced exactly one Image Finished event, each copy one Outputs Stored
    wait_for(local.invocations.idle, timeout=30, what="invocations to settle")
    mine = set(upscaled + others)
    events: list[dict[str, Any]] = []

    def all_told() -> bool:
        events.extend(e for e in drain_events(local) if e["detail"]["input"]["key"] in mine)
        return len([e for e in events if e["detail-type"] == "Image Finished"]) >= len(mine) and len(
            [e for e in events if e["detail-type"] == "Image Outputs Stored"]
        ) >= len(upscaled)

    wait_for(all_told, timeout=30, interval=0.5, what="the completion events")
    finished = Counter(e["detail"]["input"]["key"] for e in events if e["detail-type"] == "Image Finished")
    assert finished == Counter({key: 1 for key in mine})
    stored_events = [e for e in events if e["detail-type"] == "Image Outputs Stored"]
    assert Counter(e["detail"]["input"]["key"] for e in stored_events) == Counter({key: 1 for key in upscaled})
    assert {e["source"] for e in events} == {local_stack.STACK_NAME}
    readme = next(e["detail"] for e in events if e["detail"]["input"]["key"] == others[1])
    assert (readme["status"], readme["reason"]) == ("FAILED", "not an image extension: .txt")

    # And no item, event or log line holds a presigned URL
    items = local.client("dynamodb").scan(TableName=local.outputs["ImagesTableName"])["Items"]
    assert "X-Amz-Signature" not in json.dumps(items)
    assert "X-Amz-Signature" not in json.dumps(events)
    assert captured_logs.lines, "the functions logged nothing: the capture is not attached"
    assert not [line for line in captured_logs.lines if "X-Amz-Signature" in line]


def test_an_artifact_expired_before_its_copy_is_regenerated_once_then_ends_failed_with_the_reason(
    local: LocalStack, control: EmulatorControl
) -> None:
    # Given artifacts that expire at once (before any copy can start)
    control.set_knobs(artifact_ttl_seconds=0.000001)
    key = "incoming/outputs/expires.png"
    put(local, [key])

    # When the image finishes, its copy meets the expiry, it is submitted again once, and meets it again
    wait_outputs(local, [key], {"FAILED"})
    item = image(local, key)

    # Then it is DONE with its output FAILED and the reason, after exactly one regeneration
    assert item["status"]["S"] == "DONE"
    assert item["output_regenerations"]["N"] == "1"
    assert item["attempts"]["N"] == "2"
    output = output_of(local, key)
    assert output is not None
    assert output["reason"] == "the artifact is gone from Ximilar (HTTP 410)"
    bucket, _, object_key = str(output["uri"]).removeprefix("s3://").partition("/")
    assert "Contents" not in local.client("s3").list_objects_v2(Bucket=bucket, Prefix=object_key)


def test_xasync_fetch_downloads_an_images_outputs_and_events_prints_them(
    local: LocalStack, state_file: Path, control: EmulatorControl, tmp_path: Path
) -> None:
    key = "incoming/outputs/fetched.png"
    put(local, [key])
    wait_outputs(local, [key], {"STORED"})
    runner = CliRunner()

    fetched = runner.invoke(cli.main, ["fetch", "--key", key, "--to", str(tmp_path)])

    assert fetched.exit_code == 0, fetched.output
    with Image.open(tmp_path / "fetched.upscaled.jpg") as copy:
        assert copy.size == (32, 24)
    wait_for(
        lambda: "Image Outputs Stored: incoming/outputs/fetched.png DONE" in runner.invoke(cli.main, ["events"]).output,
        timeout=20,
        interval=0.5,
        what="the event printed",
    )
