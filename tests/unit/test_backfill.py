"""The backfill's rule with fakes: the engine's batch shapes, what is sent once, pacing, and the local driver."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.support.events import load_event
from xasync import ops
from ximilar_async.services.backfiller import Backfiller
from ximilar_async.services.errors import BackfillHeld
from ximilar_async.values.backfill import (
    BackfillRun,
    BadBatch,
    Batch,
    BatchOutcome,
    ExistingObject,
    allowed,
    batch_input,
    from_inventory,
    inventory_item,
    listing_item,
    parse_batch,
)
from ximilar_async.values.entities import Image
from ximilar_async.values.uploads import Upload
from ximilar_async.values.watched import WatchedPrefix

NOW = datetime(2026, 12, 7, 7, 0, tzinfo=UTC)
RUN = BackfillRun("run-1", "local:run-1", "s3://in/incoming/")


@dataclass
class FakeImages:
    known: dict[str, Image] = field(default_factory=dict)

    def images_by_uri(self, uris: Iterable[str], *, consistent: bool = True) -> dict[str, Image]:
        return {uri: self.known[uri] for uri in uris if uri in self.known}


@dataclass
class FakeLedger:
    markers: dict[str, tuple[str, datetime]] = field(default_factory=dict)
    counts: dict[str, BatchOutcome] = field(default_factory=dict)

    def mark_queued(self, record_ids: Sequence[str], run: str, now: datetime) -> set[str]:
        marked = set()
        for record_id in record_ids:
            held = self.markers.get(record_id)
            if held is None or held[0] == run or held[1] < now - timedelta(hours=1):
                self.markers[record_id] = (run, now)
                marked.add(record_id)
        return marked

    def unmark_queued(self, record_ids: Sequence[str], run: str) -> None:
        for record_id in record_ids:
            self.markers.pop(record_id, None)

    def count_backfill(self, run: BackfillRun, outcome: BatchOutcome, now: datetime) -> None:
        self.counts.setdefault(run.name, BatchOutcome()).merge(outcome)


@dataclass
class FakeQueue:
    messages: list[dict[str, Any]] = field(default_factory=list)
    refuse: set[int] = field(default_factory=set)
    deep: int = 0

    def depth(self) -> int:
        return self.deep

    def send(self, bodies: Sequence[str]) -> list[int]:
        self.messages += [json.loads(body) for n, body in enumerate(bodies) if n not in self.refuse]
        return sorted(self.refuse & set(range(len(bodies))))


@dataclass
class FakeGuard:
    reason: str | None = None

    def paused(self) -> str | None:
        return self.reason


def objects(count: int, bucket: str = "in") -> list[ExistingObject]:
    return [ExistingObject(bucket, f"incoming/{n:04d}.png", 10, f"etag{n}", None, NOW) for n in range(count)]


def backfiller(
    images: FakeImages | None = None,
    ledger: FakeLedger | None = None,
    queue: FakeQueue | None = None,
    guard: FakeGuard | None = None,
    depth: int = 0,
) -> Backfiller:
    return Backfiller(
        images or FakeImages(),
        ledger or FakeLedger(),
        queue or FakeQueue(),
        "us-east-1",
        guard,
        depth,
        functools.partial(allowed, input_bucket="in", watched=(WatchedPrefix("theirs", "photos/"),)),
        clock=lambda: NOW,
    )


def event(found: list[ExistingObject], run: BackfillRun = RUN) -> dict[str, Any]:
    return {"BatchInput": batch_input(run, "listing", "in", "incoming/"), "Items": [listing_item(o) for o in found]}


def test_the_documented_listing_batch_reads_as_objects() -> None:
    batch = parse_batch(load_event("backfill-listing-batch.json"))
    assert [o.key for o in batch.objects] == [
        "incoming/archive/n02085620_1073.jpg",
        "incoming/archive/n02085620_10074.jpg",
    ]
    first = batch.objects[0]
    assert (first.bucket, first.size, first.etag) == ("amzn-s3-demo-bucket", 34910, "05704fbdccb224cb01c59005bebbad28")
    assert first.last_modified == datetime.fromtimestamp(1668699881, UTC)
    assert batch.run.engine_id.startswith("arn:aws:states:")


def test_the_documented_inventory_batch_decodes_keys_and_keeps_the_prefix() -> None:
    batch = parse_batch(load_event("backfill-inventory-batch.json"))
    assert [o.key for o in batch.objects] == ["incoming/csvDataset/titles one.jpg"]  # elsewhere/ is out of the prefix
    assert batch.objects[0].size == 3399671


def test_items_round_trip_through_both_shapes() -> None:
    found = ExistingObject("in", "incoming/a b+c.png", 5, "e", "v1", NOW)
    listing = parse_batch({"BatchInput": batch_input(RUN, "listing", "in", ""), "Items": [listing_item(found)]})
    inventory = parse_batch({"BatchInput": batch_input(RUN, "inventory", None, ""), "Items": [inventory_item(found)]})
    assert listing.objects[0].key == inventory.objects[0].key == found.key
    assert inventory.objects[0].record_id == found.record_id


def test_an_inventory_row_is_read_one_way_on_both_paths_and_names_the_uploads_version() -> None:
    row = {"Bucket": "in", "Key": "incoming/a+b.png", "Size": "5", "ETag": '"e"', "VersionId": "v1"}
    found = from_inventory({**row, "IsLatest": "TRUE", "IsDeleteMarker": "False"})
    assert found is not None and found.key == "incoming/a b.png"
    upload = Upload("m", "in", "incoming/a b.png", 5, "e", "v1", "0")
    assert (found.record_id, found.uri) == (upload.record_id, upload.uri)  # the submit path's dedupe finds it
    assert from_inventory({**row, "IsLatest": "FALSE"}) is None  # an older version, however the report spells it
    assert from_inventory({**row, "IsDeleteMarker": "TRUE"}) is None


def test_a_malformed_batch_or_item_is_refused_with_its_reason() -> None:
    with pytest.raises(BadBatch, match="BatchInput"):
        parse_batch({"Items": []})
    batch = parse_batch({"BatchInput": batch_input(RUN, "listing", "in", ""), "Items": [{"Key": "x"}]})
    assert batch.objects == [] and "unreadable" in batch.rejected[0].reason


def test_each_object_is_sent_once_and_a_second_run_sends_nothing() -> None:
    ledger, queue = FakeLedger(), FakeQueue()
    found = objects(100)
    first = backfiller(ledger=ledger, queue=queue).run_batch(parse_batch(event(found)))
    assert (first.total, first.enqueued) == (100, 100)
    assert len(queue.messages) == 100
    record = queue.messages[0]["Records"][0]
    assert record["s3"]["object"]["key"] == "incoming/0000.png" and "sequencer" not in record["s3"]["object"]
    second = backfiller(ledger=ledger, queue=queue).run_batch(
        parse_batch(event(found, BackfillRun("run-2", "local:run-2", "s3://in/incoming/")))
    )
    assert (second.enqueued, second.already_queued) == (0, 100)
    assert len(queue.messages) == 100


def test_a_retried_batch_of_the_same_run_sends_again_and_an_expired_marker_is_taken_over() -> None:
    ledger, queue = FakeLedger(), FakeQueue()
    found = objects(3)
    backfiller(ledger=ledger, queue=queue).run_batch(parse_batch(event(found)))
    backfiller(ledger=ledger, queue=queue).run_batch(parse_batch(event(found)))  # Step Functions' retry
    assert len(queue.messages) == 6  # at least once: the submit function's claim makes the copy harmless
    for record_id in list(ledger.markers):
        ledger.markers[record_id] = ("run-0", NOW - timedelta(hours=2))
    later = backfiller(ledger=ledger, queue=queue).run_batch(parse_batch(event(found, BackfillRun("r3", "x", "y"))))
    assert later.enqueued == 3


def test_known_versions_are_skipped_but_a_new_version_of_a_key_is_sent() -> None:
    found = objects(2)
    images = FakeImages({found[0].uri: _image(found[0].record_id), found[1].uri: _image("an older version")})
    outcome = backfiller(images=images).run_batch(parse_batch(event(found)))
    assert (outcome.already_known, outcome.enqueued) == (1, 1)


def _image(record_id: str) -> Image:
    @dataclass
    class Known:
        record_id: str

    return Known(record_id)  # type: ignore[return-value]  # the rule reads record_id only


def test_held_while_paused_or_the_queue_is_deep_before_any_write() -> None:
    ledger, queue = FakeLedger(), FakeQueue(deep=5000)
    with pytest.raises(BackfillHeld, match="5000 messages"):
        backfiller(ledger=ledger, queue=queue, depth=1000).run_batch(parse_batch(event(objects(3))))
    with pytest.raises(BackfillHeld, match="spend guard: daily limit"):
        backfiller(ledger=ledger, guard=FakeGuard("daily limit")).run_batch(parse_batch(event(objects(3))))
    assert ledger.markers == {} and ledger.counts == {} and queue.messages == []


def test_what_sqs_refuses_is_unmarked_and_counted_failed_and_foreign_buckets_fail() -> None:
    ledger, queue = FakeLedger(), FakeQueue(refuse={1})
    found = [*objects(3), ExistingObject("theirs", "elsewhere/x.png", 1, "e", None, NOW)]  # as an inventory lists it
    outcome = backfiller(ledger=ledger, queue=queue).run_batch(Batch(RUN, found))
    assert (outcome.enqueued, outcome.failed) == (2, 2)
    assert len(ledger.markers) == 2
    assert ledger.counts["run-1"].failed == 2


def test_the_local_driver_follows_the_definitions_retry_for_held_batches() -> None:
    retry = ops.HeldRetry.from_definition()
    assert (retry.interval, retry.backoff, retry.max_delay) == (60, 2.0, 900)
    assert retry.delay(10) == 900  # every wait bounded
    calls: list[dict[str, Any]] = []
    waits: list[float] = []

    def handler(event: dict[str, Any]) -> dict[str, Any]:
        calls.append(event)
        if len(calls) < 3:
            raise BackfillHeld("deep")
        return {"total": len(event["Items"]), "enqueued": len(event["Items"])}

    batches = list(ops.engine_batches([objects(250)], RUN, "listing", "in", "incoming/"))
    assert [len(b["Items"]) for b in batches] == [100, 100, 50]
    total = ops.drive_backfill(
        handler, batches, retry, is_held=lambda e: isinstance(e, BackfillHeld), sleep=waits.append, stop_after=2
    )
    assert total.enqueued == 200 and waits == [60, 120]
