"""A backfill's values, no I/O: objects already in a bucket, the engine's batches of them, and the message each becomes.

The engine in AWS is a Step Functions Distributed Map (statemachines/backfill.asl.json): its ItemReader lists
the prefix (S3 ListObjectsV2) or reads an S3 Inventory manifest, its ItemBatcher hands the backfill function
`{"BatchInput": {...}, "Items": [...]}`, each item in the reader's documented shape:
- ListObjectsV2: `{"Etag": "\\"<md5>\\"", "Key": "...", "LastModified": <epoch seconds>, "Size": 34910,
  "StorageClass": "STANDARD"}` (the bucket is the BatchInput's: the reader lists one bucket);
- an S3 Inventory manifest (CSV): one string per column of its `fileSchema`, e.g. `{"Bucket": "...",
  "Key": "...", "Size": "3399671", "LastModifiedDate": "2022-11-16T00:29:32.000Z"}`; keys URL-encoded, as
  the inventory writes them.
`xasync backfill` without `--stack-name` makes the same batches on a laptop (`listing_item`, `inventory_item`)
and hands them to the same function. The laptop path (`xasync.ops.backfill`) goes through the same service.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote_plus, unquote_plus

from ximilar_async.values import identity
from ximilar_async.values.clock import parse_time, utc_now
from ximilar_async.values.watched import WatchedPrefix

MAX_ITEMS_PER_BATCH: Final = 100  # the ItemBatcher's MaxItemsPerBatch: one BatchGetItem (its limit) per batch
LISTING: Final = "listing"  # BatchInput.source: the ItemReader listed a prefix (ListObjectsV2)
INVENTORY: Final = "inventory"  # BatchInput.source: the ItemReader read an S3 Inventory manifest
MAX_REASONS: Final = 5  # failure reasons a batch's (and a run's) outcome keeps


@dataclass(frozen=True)
class ExistingObject:
    """One object version already in a bucket."""

    bucket: str
    key: str
    size: int
    etag: str
    version_id: str | None
    last_modified: datetime

    @property
    def record_id(self) -> str:
        """The record id its upload would have had: the same version, the same id (the submit path's dedupe)."""
        return identity.record_id(self.bucket, self.key, identity.version(self.version_id, self.etag))

    @property
    def uri(self) -> str:
        return identity.image_uri(self.bucket, self.key)


@dataclass(frozen=True)
class BackfillRun:
    """Which backfill a batch belongs to: its name (the key of its progress item), and the engine's own id."""

    name: str  # the execution's name (or the laptop run's), unique per run
    engine_id: str  # the execution ARN in AWS; `local:<name>` for the local driver, `laptop:<name>` for ops.backfill
    source: str  # what it reads, for people: s3://bucket/prefix or the manifest's s3:// URI


@dataclass(frozen=True)
class Rejected:
    """An item the function cannot backfill, and why (counted as failed; the run goes on)."""

    item: str  # the key as given, or the item's start
    reason: str


@dataclass(frozen=True)
class Batch:
    run: BackfillRun
    objects: list[ExistingObject]
    rejected: list[Rejected] = field(default_factory=list)


class BadBatch(ValueError):
    """The batch itself is malformed (no BatchInput, no Items list): nothing of it can be counted."""


def _from_listing(bucket: str, item: Mapping[str, Any]) -> ExistingObject:
    return ExistingObject(
        bucket,
        str(item["Key"]),
        int(item.get("Size") or 0),
        str(item.get("Etag") or item.get("ETag") or "").strip('"'),
        None,
        parse_time(item["LastModified"]),
    )


def from_inventory(item: Mapping[str, Any]) -> ExistingObject | None:
    """A row of an S3 Inventory (its columns by name, as the MANIFEST ItemReader hands it, and as `xasync backfill
    --inventory` reads the CSV on a laptop); None for what is no current object: an older version, a delete marker."""
    if str(item.get("IsLatest", "true")).lower() == "false" or str(item.get("IsDeleteMarker", "")).lower() == "true":
        return None
    modified = item.get("LastModifiedDate")
    return ExistingObject(
        str(item["Bucket"]),
        unquote_plus(str(item["Key"])),  # inventories URL-encode keys
        int(item.get("Size") or 0),
        str(item.get("ETag") or "").strip('"'),
        str(item.get("VersionId") or "") or None,
        parse_time(modified) if modified else utc_now(),  # a report without the column: sent as uploaded now
    )


def parse_batch(event: Mapping[str, Any]) -> Batch:
    """The function's event (one ItemBatcher batch) as a Batch; an item that cannot be read is Rejected."""
    batch_input = event.get("BatchInput")
    items = event.get("Items")
    if not isinstance(batch_input, Mapping) or not isinstance(items, list):
        raise BadBatch("not an ItemBatcher batch: BatchInput (an object) and Items (a list) are required")
    try:
        run = BackfillRun(str(batch_input["run"]), str(batch_input["engine_id"]), str(batch_input["source_uri"]))
        source = str(batch_input["source"])
        bucket = str(batch_input.get("bucket") or "")
        prefix = str(batch_input.get("prefix") or "")
    except KeyError as missing:
        raise BadBatch(f"BatchInput lacks {missing}") from None
    if source not in (LISTING, INVENTORY) or (source == LISTING and not bucket):
        raise BadBatch(f"BatchInput.source {source!r}: {LISTING!r} (with a bucket) or {INVENTORY!r}")
    objects: list[ExistingObject] = []
    rejected: list[Rejected] = []
    for item in items:
        try:
            found = _from_listing(bucket, item) if source == LISTING else from_inventory(item)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            rejected.append(Rejected(str(item)[:200], f"unreadable item: {error!r}"))
            continue
        if found is not None and found.key.startswith(prefix):  # an inventory lists the whole bucket
            objects.append(found)
    return Batch(run, objects, rejected)


def batch_input(run: BackfillRun, source: str, bucket: str | None, prefix: str) -> dict[str, Any]:
    """The ItemBatcher's BatchInput as the state machine builds it (statemachines/backfill.asl.json)."""
    return {
        "run": run.name,
        "engine_id": run.engine_id,
        "source_uri": run.source,
        "source": source,
        "prefix": prefix,
        **({"bucket": bucket} if bucket else {}),
    }


def listing_item(found: ExistingObject) -> dict[str, Any]:
    """An object as the ListObjectsV2 ItemReader hands it to the Map (the local driver's items)."""
    return {
        "Etag": f'"{found.etag}"',
        "Key": found.key,
        "LastModified": int(found.last_modified.timestamp()),
        "Size": found.size,
        "StorageClass": "STANDARD",
    }


def inventory_item(found: ExistingObject) -> dict[str, Any]:
    """An object as the MANIFEST ItemReader hands it to the Map: strings, the key URL-encoded."""
    item = {
        "Bucket": found.bucket,
        "Key": quote_plus(found.key, safe="/"),
        "Size": str(found.size),
        "LastModifiedDate": found.last_modified.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "ETag": found.etag,
    }
    if found.version_id:
        item |= {"VersionId": found.version_id, "IsLatest": "true", "IsDeleteMarker": "false"}
    return item


def allowed(found: ExistingObject, input_bucket: str, watched: Sequence[WatchedPrefix]) -> str | None:
    """Why this object may not be backfilled (None: it may): the stack's input bucket, or under a watched prefix."""
    if found.bucket == input_bucket or any(each.covers(found.bucket, found.key) for each in watched):
        return None
    return f"s3://{found.bucket}/{found.key} is neither in the input bucket nor under a watched prefix"


def notification(region: str, found: ExistingObject) -> dict[str, Any]:
    """The message S3 would have sent for this object: an ObjectCreated notification, one record.

    No `sequencer`: S3 has none for an old object; the submit function orders by the event time
    (the object's LastModified), as it does for any notification without one.
    """
    s3_object: dict[str, Any] = {"key": quote_plus(found.key, safe="/"), "size": found.size, "eTag": found.etag}
    if found.version_id:
        s3_object["versionId"] = found.version_id
    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "awsRegion": region,
                "eventTime": found.last_modified.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "eventName": "ObjectCreated:Put",
                "userIdentity": {"principalId": "xasync-backfill"},
                "requestParameters": {"sourceIPAddress": "127.0.0.1"},
                "responseElements": {},
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "configurationId": "xasync-backfill",
                    "bucket": {"name": found.bucket, "arn": f"arn:aws:s3:::{found.bucket}"},
                    "object": s3_object,
                },
            }
        ]
    }


@dataclass
class BatchOutcome:
    """What one batch did: every item is exactly one of enqueued, already known, already queued, failed."""

    total: int = 0
    enqueued: int = 0
    already_known: int = 0  # an image item exists for this version
    already_queued: int = 0  # a fresh marker of another run: sent already, not yet claimed by the submit function
    failed: int = 0  # unreadable, outside the stack's buckets, or refused by SQS
    reasons: list[str] = field(default_factory=list)  # of the failures (at most a few)

    def merge(self, other: BatchOutcome) -> None:
        self.total += other.total
        self.enqueued += other.enqueued
        self.already_known += other.already_known
        self.already_queued += other.already_queued
        self.failed += other.failed
        self.reasons = (self.reasons + other.reasons)[:MAX_REASONS]


@dataclass(frozen=True)
class RunProgress:
    """A run's counters as `xasync status` shows them (`control#backfill#<run>`)."""

    name: str
    engine_id: str
    source: str
    started_at: datetime
    updated_at: datetime
    total: int
    enqueued: int
    already_known: int
    already_queued: int
    failed: int
    last_failure: str | None
