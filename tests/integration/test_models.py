"""The pynamodb models against moto in server mode and dynalite, on tables created from template.yaml."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pynamodb.exceptions import PutError

from ximilar_async.adapters.dynamodb import keys
from ximilar_async.adapters.dynamodb.models import ImageItem, Tables
from ximilar_async.values import identity
from ximilar_async.values.statuses import Status

# The data layer's expressions meet DynamoDB's own validation too (dynalite), not only moto's leniency.
pytestmark = pytest.mark.parametrize("dynamodb_backend", ["moto", "dynalite"], indirect=True)

SHARDS = 4


def make_image(tables: Tables, key: str, status: Status, at: datetime, request_id: str | None = None) -> ImageItem:
    uri = identity.image_uri("input", key)
    image = tables.images(
        uri,
        bucket="input",
        key=key,
        version="etag-1",
        sequencer="0" * 64,
        record_id=identity.record_id("input", key, "etag-1"),
        status=status.value,
        status_shard=keys.status_shard(status, uri, SHARDS),
        request_id=request_id,
        created_at=at,
        updated_at=at,
    )
    image.save()
    return image


def test_an_image_is_one_getitem_by_bucket_and_key(tables: Tables) -> None:
    now = datetime.now(UTC)
    make_image(tables, "incoming/a b+c/ünï.jpg", Status.DONE, now)
    found = tables.images.get(identity.image_uri("input", "incoming/a b+c/ünï.jpg"))
    assert (found.key, found.status, found.attempts) == ("incoming/a b+c/ünï.jpg", "DONE", 0)


def test_all_images_of_a_request_come_from_the_by_request_index(tables: Tables) -> None:
    now = datetime.now(UTC)
    for n in range(3):
        make_image(tables, f"incoming/r1-{n}.jpg", Status.CREATED, now, request_id="request-1")
    make_image(tables, "incoming/other.jpg", Status.CREATED, now, request_id="request-2")
    make_image(tables, "incoming/unsent.jpg", Status.SUBMITTING, now)
    found = list(tables.images.by_request.query("request-1"))
    assert sorted(item.image_uri for item in found) == [
        identity.image_uri("input", f"incoming/r1-{n}.jpg") for n in range(3)
    ]
    assert {item.status for item in found} == {"CREATED"}


def test_recent_results_by_status_and_time_read_every_shard(tables: Tables) -> None:
    now = datetime.now(UTC)
    for n in range(10):
        make_image(tables, f"incoming/new-{n}.jpg", Status.DONE, now - timedelta(minutes=n))
    make_image(tables, "incoming/old.jpg", Status.DONE, now - timedelta(days=2))
    make_image(tables, "incoming/failed.jpg", Status.FAILED, now)
    since = now - timedelta(hours=1)
    found = [
        item
        for shard in keys.all_status_shards(Status.DONE, SHARDS)
        for item in tables.images.by_status.query(shard, tables.images.updated_at >= since)
    ]
    assert sorted(item.image_uri for item in found) == sorted(
        identity.image_uri("input", f"incoming/new-{n}.jpg") for n in range(10)
    )


def test_the_due_index_is_sparse_and_read_by_time(tables: Tables) -> None:
    now = datetime.now(UTC)
    epoch = int(now.timestamp())
    for n, offset in enumerate([-60, -1, 3600]):
        tables.requests(
            f"submission-{n}",
            request_type="flows",
            endpoint="f",
            status=Status.CREATED.value,
            images={},
            due_shard=keys.due_shard(f"submission-{n}", SHARDS),
            next_check_at=epoch + offset,
            created_at=now,
            updated_at=now,
        ).save()
    finished = tables.requests(
        "submission-done", request_type="flows", endpoint="f", status="DONE", images={}, created_at=now, updated_at=now
    )
    finished.save()

    def due() -> list[str]:
        return sorted(
            item.submission_id
            for shard in keys.all_due_shards(SHARDS)
            for item in tables.requests.due.query(shard, tables.requests.next_check_at <= epoch)
        )

    assert due() == ["submission-0", "submission-1"]
    leaving = tables.requests.get("submission-0")
    leaving.update(actions=[tables.requests.due_shard.remove(), tables.requests.next_check_at.remove()])
    assert due() == ["submission-1"]


def test_a_conditional_put_does_not_overwrite_an_existing_image(tables: Tables) -> None:
    now = datetime.now(UTC)
    make_image(tables, "incoming/once.jpg", Status.DONE, now)
    again = tables.images.get(identity.image_uri("input", "incoming/once.jpg"))
    again.status = Status.SUBMITTING.value
    with pytest.raises(PutError) as raised:
        again.save(condition=tables.images.image_uri.does_not_exist())
    assert raised.value.cause_response_code == "ConditionalCheckFailedException"
    assert tables.images.get(again.image_uri).status == "DONE"


def test_results_are_kept_whole_as_a_map(tables: Tables) -> None:
    now = datetime.now(UTC)
    image = make_image(tables, "incoming/result.jpg", Status.DONE, now)
    record = {"_id": image.record_id, "_status": {"code": 200, "text": "OK"}, "_width": 10, "grades": {"final": 9.5}}
    image.update(actions=[tables.images.result.set(record)])
    assert tables.images.get(image.image_uri).result.as_dict() == record
