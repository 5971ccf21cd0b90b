"""Writes DynamoDB applied but answered 500 (or dropped the connection after): each recognizes its own echo.

The data layer runs against moto server through the fault proxy (`xasync.dynamodb_faults`), which
forwards a chosen write, so that it applies, then answers it with the fault. botocore retries; the
retry meets the write that already applied as a failed condition. Each of these tests fails when that
failure is taken for someone else's write (the data layer before `dal.writes`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from tests.support.aws import create_table_from_template
from xasync.dynamodb_faults import DynamoFaultProxy, DynamoFaults, dynamodb_fault_proxy
from ximilar_async.adapters.dynamodb import Storage
from ximilar_async.adapters.dynamodb.models import Tables, bind_tables
from ximilar_async.values.entities import Claim, DueScan, ImageResult
from ximilar_async.values.statuses import Status
from ximilar_async.values.uploads import Upload

SHARDS = 4
LEASE = timedelta(minutes=2)
NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
BUCKET = "input"


@pytest.fixture
def proxy(aws_endpoint: str) -> Iterator[DynamoFaultProxy]:
    with dynamodb_fault_proxy(aws_endpoint, DynamoFaults()) as running:
        yield running


@pytest.fixture
def faulty_tables(dynamodb: Any, template: dict[str, Any], proxy: DynamoFaultProxy) -> Tables:
    """Fresh tables on moto, the models bound to them through the fault proxy."""
    suffix = uuid.uuid4().hex[:8]
    images, requests_ = f"images-{suffix}", f"requests-{suffix}"
    create_table_from_template(dynamodb, template, "ImagesTable", images)
    create_table_from_template(dynamodb, template, "RequestsTable", requests_)
    return bind_tables(images, requests_, host=proxy.url)


@pytest.fixture
def storage(faulty_tables: Tables) -> Storage:
    return Storage.of(faulty_tables, SHARDS, timedelta(days=30))


def an_upload(key: str = "incoming/photo.png", sequencer: str = "0055AED6DCAF0EE501") -> Upload:
    return Upload(
        message_id=f"message-{key}",
        bucket=BUCKET,
        key=key,
        size=100,
        etag="etag-1",
        version_id=None,
        sequencer=sequencer.ljust(32, "0"),
    )


def table_of(model: Any) -> str:
    return str(model.Meta.table_name)


@pytest.mark.parametrize("fault", ["applied-then-500", "dropped-after-write"])
def test_a_claim_whose_answer_was_lost_is_taken(
    storage: Storage, proxy: DynamoFaultProxy, faulty_tables: Tables, fault: Any
) -> None:
    # Given the claim's PutItem applied, then answered with a fault
    proxy.fail_next_write(fault, operation="PutItem", table=table_of(faulty_tables.images))

    # When the image is claimed
    claim = storage.images.claim_image(an_upload(), "flows", "my-flow", "submission-1", NOW, LEASE)

    # Then the claim is this submission's (not a duplicate, which would leave it held by nobody)
    image = storage.images.image(an_upload().uri)
    assert (claim, image and image.submission_id) == (Claim.TAKEN, "submission-1")
    assert proxy.counts[fault.replace("-", " ")] == 1


def test_a_claim_taken_over_after_a_hand_on_whose_answer_was_lost_is_taken(
    storage: Storage, proxy: DynamoFaultProxy, faulty_tables: Tables
) -> None:
    # Given a claim handed on (released), and the new delivery's take-over applied then answered 500
    upload = an_upload()
    assert storage.images.claim_image(upload, "flows", "my-flow", "first", NOW, LEASE) is Claim.TAKEN
    assert storage.images.release_images("first", [upload.uri], "waiting to be submitted", NOW) == 1
    proxy.fail_next_write(
        "applied-then-500",
        operation="PutItem",
        table=table_of(faulty_tables.images),
        matches=lambda body: "updated_at" in body.get("ExpressionAttributeNames", {}).values(),
    )

    # When the next delivery claims it for another submission
    claim = storage.images.claim_image(upload, "flows", "my-flow", "second", NOW + timedelta(seconds=5), LEASE)

    # Then it is taken for that submission
    image = storage.images.image(upload.uri)
    assert (claim, image and image.submission_id) == (Claim.TAKEN, "second")
    assert proxy.counts["applied then 500"] == 1


def test_a_request_item_whose_answer_was_lost_is_opened(
    storage: Storage, proxy: DynamoFaultProxy, faulty_tables: Tables
) -> None:
    # Given the request item's PutItem applied, then answered 500
    proxy.fail_next_write("applied-then-500", operation="PutItem", table=table_of(faulty_tables.requests))

    # When the request is opened after Ximilar took it
    opened = storage.requests.open_request(
        "submission-1", "flows", "my-flow", {"r1": "s3://input/a.png"}, NOW, NOW + timedelta(minutes=2), request_id="x1"
    )

    # Then it reads as opened (not as a submission id taken by someone else)
    request = storage.requests.get_request("submission-1")
    assert (opened, request and request.request_id) == (True, "x1")


def test_a_due_request_whose_hold_answer_was_lost_is_taken(
    storage: Storage, proxy: DynamoFaultProxy, faulty_tables: Tables
) -> None:
    # Given a request due, and the sweeper's hold (UpdateItem) applied then answered 500
    storage.requests.open_request(
        "submission-1", "flows", "my-flow", {"r1": "s3://input/a.png"}, NOW, NOW + timedelta(minutes=2), request_id="x1"
    )
    due = next(storage.requests.due_requests(range(SHARDS), NOW + timedelta(minutes=3), DueScan()))
    proxy.fail_next_write("applied-then-500", operation="UpdateItem", table=table_of(faulty_tables.requests))

    # When the run takes it
    taken = storage.requests.take_due(due, NOW + timedelta(minutes=8))

    # Then this run has it (not "another run has it", which would leave it for 5 minutes)
    request = storage.requests.get_request("submission-1")
    assert (taken, request and request.next_check_at) == (True, int((NOW + timedelta(minutes=8)).timestamp()))


def test_a_result_whose_answer_was_lost_is_recorded_and_returned(
    storage: Storage, proxy: DynamoFaultProxy, faulty_tables: Tables
) -> None:
    # Given a claimed image, and its result's UpdateItem applied then answered 500
    upload = an_upload()
    storage.images.claim_image(upload, "flows", "my-flow", "submission-1", NOW, LEASE)
    proxy.fail_next_write("applied-then-500", operation="UpdateItem", table=table_of(faulty_tables.images))
    result = ImageResult(upload.uri, upload.record_id, "x1", Status.DONE, None, {"_id": upload.record_id})

    # When the result is recorded
    written = storage.images.record_image_result(result, NOW + timedelta(minutes=1))

    # Then it is recorded: the image as written is returned (its upload time with it), for its finish to be told
    assert written is not None
    assert (written.uri, written.status, written.created_at) == (upload.uri, Status.DONE, NOW)


def test_a_count_applied_then_answered_500_counts_once(
    storage: Storage, proxy: DynamoFaultProxy, faulty_tables: Tables
) -> None:
    # Given the spend guard's ADD applied, then answered 500 (its condition would still hold on a retry)
    day = date(2026, 12, 7)
    proxy.fail_next_write("applied-then-500", operation="UpdateItem", table=table_of(faulty_tables.control))

    # When ten images are counted against a limit of a hundred
    counted = storage.control.reserve_submissions(day, 10, 100, NOW)

    # Then they are counted once, not twice
    assert (counted, storage.control.spend_day(day).submitted) == (True, 10)


def test_a_write_whose_every_attempt_was_answered_500_is_sent_again_and_recognized(
    storage: Storage, proxy: DynamoFaultProxy, faulty_tables: Tables
) -> None:
    # Given the claim's PutItem applied, and botocore's every attempt (1 + 3 retries) answered 500
    proxy.fail_next_write("applied-then-500", operation="PutItem", table=table_of(faulty_tables.images), times=4)

    # When the image is claimed
    claim = storage.images.claim_image(an_upload(), "flows", "my-flow", "submission-1", NOW, LEASE)

    # Then the write is sent again with the same token, and its failed condition shows it applied
    assert claim is Claim.TAKEN
    assert proxy.counts["applied then 500"] == 4


def test_someone_elses_write_is_still_a_lost_race(storage: Storage, proxy: DynamoFaultProxy) -> None:
    # Given an image another submission holds (live lease, its request item written)
    upload = an_upload()
    assert storage.images.claim_image(upload, "flows", "my-flow", "other", NOW, LEASE) is Claim.TAKEN
    storage.requests.open_request(
        "other", "flows", "my-flow", {upload.record_id: upload.uri}, NOW, NOW, request_id="x1"
    )

    # When another delivery claims it
    claim = storage.images.claim_image(upload, "flows", "my-flow", "mine", NOW + timedelta(seconds=1), LEASE)

    # Then it is a duplicate: the item is the other submission's
    image = storage.images.image(upload.uri)
    assert (claim, image and image.submission_id) == (Claim.DUPLICATE, "other")


def test_a_live_claim_without_a_request_item_makes_a_delivery_come_back(storage: Storage) -> None:
    # Given an image claimed a moment ago by a submitter that has not written its request item
    upload = an_upload()
    assert storage.images.claim_image(upload, "flows", "my-flow", "other", NOW, LEASE) is Claim.TAKEN

    # When another delivery of the same upload claims it, within the lease and after it
    within = storage.images.claim_image(upload, "flows", "my-flow", "mine", NOW + timedelta(seconds=1), LEASE)
    after = storage.images.claim_image(upload, "flows", "my-flow", "mine", NOW + LEASE + timedelta(seconds=1), LEASE)

    # Then the first must come back later (not be dropped as a duplicate), and the second takes it
    assert (within, after) == (Claim.BUSY, Claim.TAKEN)
