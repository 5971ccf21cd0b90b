"""Pages of images for the results page: newest first over every `by_status` shard, and by request."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from ximilar_async.adapters.dynamodb import Storage, keys
from ximilar_async.adapters.dynamodb.models import Tables
from ximilar_async.values import identity
from ximilar_async.values.entities import Image
from ximilar_async.values.statuses import Status

# The data layer's expressions meet DynamoDB's own validation too (dynalite), not only moto's leniency.
pytestmark = pytest.mark.parametrize("dynamodb_backend", ["moto", "dynalite"], indirect=True)

SHARDS = 4
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


Row = tuple[str, Status, datetime, str | None, str | None]


def seed(tables: Tables, rows: Sequence[Row]) -> None:
    """(key, status, updated_at, request type, request id) per image, written in one batch."""
    with tables.images.batch_write() as batch:
        for key, status, at, request_type, request_id in rows:
            uri = identity.image_uri("input", key)
            batch.save(
                tables.images(
                    uri,
                    bucket="input",
                    key=key,
                    version="etag",
                    sequencer="0" * 64,
                    record_id=identity.record_id("input", key, "etag"),
                    status=status.value,
                    status_shard=keys.status_shard(status, uri, SHARDS),
                    request_type=request_type,
                    request_id=request_id,
                    size_bytes=10,
                    created_at=at,
                    updated_at=at,
                )
            )


def every_page(storage: Storage, limit: int, **filters: object) -> list[list[Image]]:
    pages, after = [], None
    while True:
        page = storage.queries.images_page(list(Status), NOW - timedelta(days=1), limit, after=after, **filters)  # type: ignore[arg-type]
        pages.append(page.images)
        if page.after is None:
            return pages
        after = page.after


def test_pages_walk_every_status_and_shard_newest_first_without_gaps_or_repeats(tables: Tables) -> None:
    statuses = [Status.DONE, Status.ERROR, Status.FAILED]  # the statuses `by_status` holds (images in flight: no)
    rows = [
        (f"incoming/{n:03d}.png", statuses[n % len(statuses)], NOW - timedelta(minutes=n), "upscaler", None)
        for n in range(40)
    ]
    # Equal times across shards and statuses: the page order still names one place for each.
    rows += [(f"incoming/tie-{n}.png", statuses[n % 3], NOW - timedelta(minutes=10), "flows", None) for n in range(6)]
    rows.append(("incoming/too-old.png", Status.DONE, NOW - timedelta(days=2), "upscaler", None))
    seed(tables, rows)
    storage = Storage.of(tables, SHARDS, timedelta(days=1))

    pages = every_page(storage, 7)

    shown = [image.key for page in pages for image in page]
    assert len(shown) == len(set(shown)) == 46
    assert "incoming/too-old.png" not in shown
    times = [image.updated_at for page in pages for image in page]
    assert times == sorted(times, reverse=True)
    assert all(len(page) == 7 for page in pages[:-1])


def test_prefix_filters_in_the_index_and_type_filters_within_a_budget(tables: Tables) -> None:
    # Eight newer upscaler images come first in the index, then the cards, then twelve older upscales.
    rows = [(f"incoming/{n}.png", Status.DONE, NOW - timedelta(seconds=n), "upscaler", None) for n in range(8)]
    rows += [
        (f"incoming/cards/{n}.png", Status.DONE, NOW - timedelta(minutes=1 + n), "card-grader", None) for n in range(5)
    ]
    rows += [
        (f"incoming/old-{n}.png", Status.DONE, NOW - timedelta(hours=1, minutes=n), "upscaler", None) for n in range(12)
    ]
    seed(tables, rows)
    storage = Storage.of(tables, SHARDS, timedelta(days=1))
    since = NOW - timedelta(days=1)

    cards = storage.queries.images_page([Status.DONE], since, 10, uri_prefix="s3://input/incoming/cards/")
    assert [image.key for image in cards.images] == [f"incoming/cards/{n}.png" for n in range(5)]
    assert cards.after is None

    # Ten index items examined at most: a short page, and a position to go on from.
    short = storage.queries.images_page([Status.DONE], since, 10, request_type="card-grader", budget=10)
    assert [image.key for image in short.images] == ["incoming/cards/0.png", "incoming/cards/1.png"]
    assert short.after is not None
    rest = storage.queries.images_page([Status.DONE], since, 10, request_type="card-grader", after=short.after)
    assert [image.key for image in short.images + rest.images] == [f"incoming/cards/{n}.png" for n in range(5)]


def test_a_request_pages_by_uri_and_counts_come_from_the_status_shards(tables: Tables) -> None:
    rows: list[Row] = [(f"incoming/r/{n:02d}.png", Status.DONE, NOW, "flows", "request-1") for n in range(12)]
    rows += [("incoming/other.png", Status.DONE, NOW, "flows", "request-2")]
    rows += [(f"incoming/bad-{n}.txt", Status.FAILED, NOW - timedelta(hours=1), None, None) for n in range(3)]
    seed(tables, rows)
    storage = Storage.of(tables, SHARDS, timedelta(days=1))

    first = storage.queries.images_of_request_page("request-1", 5)
    assert first.after is not None
    second = storage.queries.images_of_request_page("request-1", 10, after_uri=first.after.uri)
    keys_ = [image.key for image in first.images + second.images]
    assert keys_ == [f"incoming/r/{n:02d}.png" for n in range(12)]
    assert second.after is None

    counts = storage.queries.count_by_status(NOW - timedelta(days=1))
    assert counts[Status.DONE] == 13
    assert counts[Status.FAILED] == 3
    assert counts[Status.PROCESSING] == 0
    assert storage.queries.count_by_status(NOW - timedelta(minutes=5), [Status.FAILED]) == {Status.FAILED: 0}
