"""Uploads: what an S3 ObjectCreated notification says about one new object, and the checks before submitting.

Two shapes say it, and both give the same `Upload` (so the same record id, dedupe and ordering): S3's
own event notification (`Records`, the stack's input bucket) and S3's EventBridge `Object Created`
event (`detail-type`, `detail`), which the rules of `WatchedBuckets` send for buckets the stack did
not create.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import unquote_plus

from ximilar_async.values import identity
from ximilar_async.values.clock import parse_time
from ximilar_async.values.entities import Image, ObjectLocation
from ximilar_async.values.routing import Route, route_for

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
SEQUENCER_WIDTH = 64


@dataclass(frozen=True, slots=True)
class Upload:
    """One uploaded object version, as its notification describes it (`key` decoded)."""

    message_id: str  # the SQS message that carried it: the unit SQS retries
    bucket: str
    key: str
    size: int
    etag: str
    version_id: str | None
    sequencer: str  # right-padded with zeros, so that later uploads of a key sort after earlier ones

    @classmethod
    def of_image(cls, image: Image) -> Upload:
        """The upload an image item records (to submit it again, with a fresh URL)."""
        return cls(
            message_id="",
            bucket=image.bucket,
            key=image.key,
            size=image.size_bytes,
            etag="" if image.version_id else image.version,
            version_id=image.version_id,
            sequencer=image.sequencer,
        )

    @property
    def version(self) -> str:
        return identity.version(self.version_id, self.etag)

    @property
    def location(self) -> ObjectLocation:
        return ObjectLocation(self.bucket, self.key, self.version_id)

    @property
    def uri(self) -> str:
        return identity.image_uri(self.bucket, self.key)

    @property
    def record_id(self) -> str:
        return identity.record_id(self.bucket, self.key, self.version)


def normalize_sequencer(sequencer: str) -> str:
    """S3's rule: right-pad the shorter sequencer with zeros, then compare as strings."""
    return sequencer.upper().ljust(SEQUENCER_WIDTH, "0")


def sequencer_at(moment: datetime) -> str:
    """S3 always sends a sequencer for PUTs; emulators may not: order by event time, in hex, then."""
    return f"{int(moment.timestamp() * 1_000_000):016X}"


class NotAnS3Notification(ValueError):
    """The message body is neither an S3 event notification, S3's test event, nor S3's EventBridge event."""


EVENTBRIDGE_SOURCE = "aws.s3"
OBJECT_CREATED = "Object Created"


def _upload(
    message_id: str,
    bucket: str,
    key: str,
    size: Any,
    etag: str | None,
    version_id: str | None,
    sequencer: str | None,
    event_time: str,
) -> Upload:
    """One object version as either shape of S3's event names it, read by the same rules, so that an upload
    gets the same record id and the same order whichever way it arrives: the key URL-decoded ('+' for a
    space), the ETag unquoted, the sequencer padded (or, where there is none, made from the event time)."""
    return Upload(
        message_id=message_id,
        bucket=bucket,
        key=unquote_plus(key),
        size=int(size),
        etag=(etag or "").strip('"'),
        version_id=version_id or None,
        sequencer=normalize_sequencer(sequencer or sequencer_at(parse_time(event_time))),
    )


def uploads_from_notification(message_id: str, body: str | dict[str, Any]) -> Iterator[Upload]:
    """The ObjectCreated uploads of one S3 notification; nothing for S3's `s3:TestEvent`."""
    try:
        notification = json.loads(body) if isinstance(body, str) else body
    except json.JSONDecodeError as error:
        raise NotAnS3Notification(f"message body is not JSON: {error.msg}") from None
    if not isinstance(notification, dict):
        raise NotAnS3Notification("message body is not a JSON object")
    if notification.get("Event") == "s3:TestEvent":
        return
    if "detail-type" in notification:
        yield from uploads_from_eventbridge(message_id, notification)
        return
    if not isinstance(notification.get("Records"), list):
        raise NotAnS3Notification("message body has no S3 Records")
    # Read as Powertools' S3Event reads it (its data classes cost a tenth of a cold start to import).
    for record in notification["Records"]:
        if record["eventSource"] != "aws:s3" or not record["eventName"].startswith("ObjectCreated:"):
            continue
        s3 = record["s3"]
        s3_object = s3.get("get_object") or s3["object"]  # IntelligentTiering events say get_object
        yield _upload(
            message_id,
            s3["bucket"]["name"],
            s3_object["key"],
            s3_object["size"],
            s3_object.get("eTag"),
            s3_object.get("versionId"),
            s3_object.get("sequencer"),
            record["eventTime"],
        )


def uploads_from_eventbridge(message_id: str, event: dict[str, Any]) -> Iterator[Upload]:
    """The upload of one S3 EventBridge event (an EventBridge rule's target receives the whole event).

    The fields are S3's documented ones (`detail.bucket.name`, `detail.object.key`, `size`, `etag`,
    `version-id`, `sequencer`); the key is read as the notification's is, URL-decoded, as Powertools'
    S3EventBridgeNotificationObject reads it. Other S3 detail-types (Object Deleted, ...) give nothing.
    """
    if event.get("source") != EVENTBRIDGE_SOURCE:
        raise NotAnS3Notification(f"EventBridge event from {event.get('source')!r}, not from aws.s3")
    if event["detail-type"] != OBJECT_CREATED:
        return
    try:
        detail = event["detail"]
        s3_object = detail["object"]
        upload = _upload(
            message_id,
            detail["bucket"]["name"],
            s3_object["key"],
            s3_object["size"],
            s3_object.get("etag"),
            s3_object.get("version-id"),
            s3_object.get("sequencer"),
            event["time"],
        )
    except KeyError as error:
        raise NotAnS3Notification(f"S3 Object Created event without {error}") from None
    except (TypeError, ValueError) as error:
        raise NotAnS3Notification(f"S3 Object Created event with a malformed field: {error}") from None
    yield upload


@dataclass(frozen=True, slots=True)
class Rejection:
    code: str  # short, for metrics: no-route, not-an-image, empty, too-large, object-gone, refused
    text: str  # for people: stored as the image's status_reason


def admit(upload: Upload, routes: Sequence[Route], max_image_bytes: int) -> Route | Rejection:
    """The route this upload is submitted by, or why it is not: the one rule of what is submitted."""
    route = route_for(upload.key, routes)
    if route is None:
        return Rejection("no-route", "no route matches the key")
    extension = PurePosixPath(upload.key).suffix.lower()
    if extension not in IMAGE_EXTENSIONS:
        return Rejection("not-an-image", f"not an image extension: {extension or '(none)'}")
    if upload.size == 0:
        return Rejection("empty", "the object is empty")
    if upload.size > max_image_bytes:
        return Rejection("too-large", f"the object is {upload.size} bytes, over the maximum of {max_image_bytes}")
    return route


__all__ = [
    "Rejection",
    "Upload",
    "admit",
    "normalize_sequencer",
    "uploads_from_eventbridge",
    "uploads_from_notification",
]
