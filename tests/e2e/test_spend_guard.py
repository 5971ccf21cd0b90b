"""The spend guard on the embedded stack: a daily limit of 20 images, a pause by hand, `xasync resume`."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli_runner import point_cli_at, xasync
from xasync import local_stack
from xasync.local_stack import LocalStack
from xasync.sample_images import png_bytes
from xasync.servers import wait_for
from ximilar_async.values import identity
from ximilar_emulator import EmulatorControl

LIMIT = 20
WAITING_FOR_LIMIT = f"waiting to be submitted: daily submit limit of {LIMIT} images reached"


@pytest.fixture(scope="module")
def local() -> Iterator[LocalStack]:
    parameters = {"LogLevel": "WARNING", "DailySubmitLimit": str(LIMIT)}
    with local_stack.running(parameters=parameters, sweep_every=1.0, retry_delay=1) as running:
        yield running


@pytest.fixture(autouse=True)
def state_file(local: LocalStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return point_cli_at(local, tmp_path / "local.json", monkeypatch)


def put(local: LocalStack, keys_: list[str]) -> None:
    s3 = local.client("s3")
    for key in keys_:
        s3.put_object(Bucket=local.outputs["InputBucketName"], Key=key, Body=png_bytes(16, 12))


def states(local: LocalStack, keys_: list[str]) -> Counter[str]:
    """(status, reason) of each image, counted; the reason only for images still waiting."""
    dynamodb = local.client("dynamodb")
    found: Counter[str] = Counter()
    for key in keys_:
        item = dynamodb.get_item(
            TableName=local.outputs["ImagesTableName"],
            Key={"image_uri": {"S": identity.image_uri(local.outputs["InputBucketName"], key)}},
            ConsistentRead=True,
        ).get("Item", {})
        status = item.get("status", {}).get("S", "none")
        reason = item.get("status_reason", {}).get("S", "") if status == "SUBMITTING" else ""
        found[f"{status} {reason}".strip()] += 1
    return found


def test_a_limit_of_20_submits_20_of_50_uploads_and_the_rest_finish_after_resume(local: LocalStack) -> None:
    control = EmulatorControl(local.ximilar_url)
    keys_ = [f"incoming/limit/{n:02d}.png" for n in range(50)]  # upscaler: one image per request
    put(local, keys_)

    waiting = f"SUBMITTING {WAITING_FOR_LIMIT} (until the next UTC day or `xasync resume`)"
    wait_for(
        lambda: states(local, keys_) == {"DONE": 20, waiting: 30}, timeout=60, interval=0.5, what="20 done, 30 waiting"
    )
    posts = [call for call in control.calls() if call["method"] == "POST"]
    assert len(posts) == 20  # the sweeper, running every second meanwhile, submitted none of the 30
    report = json.loads(xasync("status", "--output", "json").output)
    assert report["spend_guard"]["paused"] is True
    assert report["spend_guard"]["submitted_today"] == 20
    assert report["requests_unfinished"] == {"SUBMITTING": 30}

    xasync("resume")
    wait_for(lambda: states(local, keys_) == {"DONE": 50}, timeout=90, interval=0.5, what="all 50 done")
    assert json.loads(xasync("status", "--output", "json").output)["spend_guard"]["paused"] is False


def test_pause_by_hand_holds_uploads_until_resume(local: LocalStack) -> None:
    xasync("pause", "--reason", "end of month")
    keys_ = ["incoming/paused/a.png", "incoming/paused/b.png"]
    put(local, keys_)
    waiting = "SUBMITTING waiting to be submitted: submission paused by hand: end of month"
    wait_for(lambda: states(local, keys_) == {waiting: 2}, timeout=30, interval=0.5, what="both waiting")
    report = json.loads(xasync("status", "--output", "json").output)
    assert (report["spend_guard"]["paused"], report["spend_guard"]["reason"]) == (True, "end of month")
    assert "already paused" in xasync("pause").output

    xasync("resume")
    wait_for(lambda: states(local, keys_) == {"DONE": 2}, timeout=60, interval=0.5, what="both done")
