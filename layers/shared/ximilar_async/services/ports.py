"""The domain's collaborators, as the small interfaces it uses: what a test fakes and a factory builds.

- `XimilarApi`: `adapters.ximilar.XimilarClient` over HTTP;
- `ObjectStore`: `s3.S3Objects` on a boto3 client;
- the storage ports, each the part of one store (`adapters.dynamodb`) a service uses: `ImageClaims`, `ImageResults`,
  `ImageOutputs` (`dynamodb.ImageStore`), `RequestLifecycle`, `RequestOutcomes`, `DueRequests`
  (`dynamodb.RequestStore`), `SpendLedger`, `SweepLog` (`dynamodb.ControlStore`);
- `ImageEvents`: `completion_events.CompletionEvents`, told by a service of each image a write of its finished;
- `SubmissionPause`: `spend_guard.SpendGuard`, as the sweeper asks it.

A store raises `ItemTooLarge` when a write would make an item larger than DynamoDB allows; every
other refusal of a conditional write is a False (or None), and any other error propagates. A write
that finishes images returns them as written, for the service to tell `ImageEvents`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from datetime import date, datetime, timedelta
from typing import Any, Protocol

from ximilar_async.values.backfill import BackfillRun, BatchOutcome
from ximilar_async.values.entities import (
    Claim,
    DueScan,
    Image,
    ImageResult,
    ObjectLocation,
    Output,
    SpendDay,
    TrackedRequest,
)
from ximilar_async.values.request_types import RequestType
from ximilar_async.values.statuses import Status
from ximilar_async.values.uploads import Upload


class XimilarApi(Protocol):
    def submit(
        self,
        request_type: RequestType | str,
        endpoint: str,
        records: Sequence[Mapping[str, Any]],
        webhook: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """POST a request; `options` are extra body fields of its route (e.g. the upscaler's `mode`)."""
        ...

    def status(self, request_id: str) -> str: ...

    def remaining_credits(self) -> int: ...

    def get(self, request_id: str) -> dict[str, Any]: ...

    def set_deadline(self, deadline: float | None) -> None:
        """No call or retry runs past `deadline` (a `time.monotonic()` value; None: unbounded)."""
        ...


class ObjectStore(Protocol):
    def read(self, location: ObjectLocation) -> bytes:
        """The object's bytes; raises `errors.ObjectGone` when it no longer exists."""
        ...

    def presigned_get(self, location: ObjectLocation, expires_in: int) -> str: ...

    def put_json(self, bucket: str, key: str, body: bytes) -> str:
        """Store `body`; returns its `s3://` URI."""
        ...


class ImageClaims(Protocol):
    """The submitter's writes of image items: claims, and what becomes of a claim that is not posted."""

    def claim_image(
        self,
        upload: Upload,
        request_type: str,
        endpoint: str,
        submission_id: str,
        now: datetime,
        lease: timedelta,
        *,
        retry_of: Image | None = None,
    ) -> Claim: ...

    def reject_image(self, upload: Upload, reason: str, now: datetime) -> Image | None: ...

    def release_images(self, submission_id: str, uris: Iterable[str], reason: str, now: datetime) -> int: ...

    def fail_claimed_images(
        self, submission_id: str, uris: Iterable[str], reason: str, now: datetime
    ) -> list[Image]: ...


class ImageResults(Protocol):
    """Results into image items (the recorder), and the reads that say what still waits (the sweeper)."""

    def record_image_result(self, result: ImageResult, now: datetime) -> Image | None:
        """The image as written; None when the write did not apply (finished already, or uploaded again)."""
        ...

    def fail_unfinished_images(
        self,
        record_ids_to_uris: Mapping[str, str],
        reason: str,
        now: datetime,
        *,
        from_statuses: tuple[Status, ...] = ...,
    ) -> list[Image]: ...

    def unfinished_images(
        self, request: TrackedRequest, candidates: Mapping[str, str] | None = None, *, consistent: bool = True
    ) -> dict[str, str]: ...

    def request_finished(self, request: TrackedRequest) -> bool: ...

    def images_by_uri(self, uris: Iterable[str], *, consistent: bool = True) -> dict[str, Image]: ...


class ImageOutputs(Protocol):
    """The copier's reads and writes of one image's outputs."""

    def image(self, uri: str) -> Image | None: ...

    def set_output(self, uri: str, record_id: str, name: str, output: Output, now: datetime) -> Image | None: ...

    def count_output_regeneration(
        self, image: Image, name: str, reason: str, now: datetime, *, limit: int
    ) -> Image | None: ...


class RequestFinish(Protocol):
    """DONE or FAILED (DONE is never undone), or DONE with images to retry: every service that ends a request."""

    def finish_request(
        self,
        submission_id: str,
        status: Status,
        now: datetime,
        *,
        ximilar_status: str | None = None,
        request_id: str | None = None,
        reason: str | None = None,
        retry_record_ids: Collection[str] = (),
        retry_at: datetime | None = None,
    ) -> bool: ...


class RequestReschedule(Protocol):
    """Check a request again later: the webhook (Ximilar not ready) and the sweeper."""

    def reschedule(
        self,
        submission_id: str,
        check_at: datetime,
        now: datetime,
        *,
        ximilar_status: str | None = None,
        paused: bool = False,
    ) -> bool: ...


class RequestLifecycle(RequestFinish, Protocol):
    """The submitter's writes of request items, from the first POST's outcome to Ximilar's id."""

    def open_request(
        self,
        submission_id: str,
        request_type: str,
        endpoint: str,
        images: Mapping[str, str],
        now: datetime,
        check_at: datetime,
        *,
        request_id: str | None = None,
        reason: str | None = None,
        held_back: bool = False,
    ) -> bool: ...

    def set_request_images(self, submission_id: str, images: Mapping[str, str], now: datetime) -> None: ...

    def mark_request_created(self, submission_id: str, request_id: str, now: datetime, check_at: datetime) -> bool: ...

    def defer_request(
        self, submission_id: str, reason: str, now: datetime, check_at: datetime, *, held_back: bool = False
    ) -> bool: ...

    def restart_request(self, submission_id: str, now: datetime, check_at: datetime) -> bool: ...


class RequestOutcomes(RequestFinish, RequestReschedule, Protocol):
    """What the recorder and the webhook read and write of a request Ximilar answered (or did not yet)."""

    def get_request(self, submission_id: str) -> TrackedRequest | None: ...

    def await_missing_records(
        self,
        submission_id: str,
        reason: str,
        now: datetime,
        check_at: datetime,
        *,
        ximilar_status: str,
        request_id: str,
        retry_record_ids: Collection[str] = (),
    ) -> bool: ...


class DueRequests(RequestFinish, RequestReschedule, Protocol):
    """The sweeper's reads and writes of the due index and the requests it holds."""

    def due_requests(self, shard_order: Iterable[int], now: datetime, scan: DueScan) -> Iterator[TrackedRequest]: ...

    def take_due(self, request: TrackedRequest, until: datetime) -> bool: ...

    def note_sweep_failure(self, submission_id: str, reason: str, now: datetime, check_at: datetime) -> bool: ...

    def clear_retries(self, submission_id: str, now: datetime) -> None: ...


class SpendLedger(Protocol):
    """The spend guard's state: the pause by hand and each day's count."""

    def pause_reason(self) -> str | None: ...

    def spend_day(self, day: date) -> SpendDay: ...

    def reserve_submissions(self, day: date, images: int, limit: int, now: datetime) -> bool: ...


class SweepLog(Protocol):
    """Where a sweeper run starts reading the due index, and what it did."""

    def due_scan(self) -> DueScan: ...

    def record_sweep(self, outcome: Mapping[str, Any], now: datetime, scan: DueScan) -> None: ...


class ImageEvents(Protocol):
    """The bus, as the services tell it of images (after the write that changed them applied)."""

    def finished(self, image: Image) -> None: ...

    def outputs_stored(self, image: Image) -> None: ...


class SubmissionPause(Protocol):
    def paused(self) -> str | None:
        """Why submission is paused now (the spend guard's pause, daily limit or credits floor), or None."""
        ...


class KnownImages(Protocol):
    """The image items of some uris (one BatchGetItem of at most 100), to skip what the pipeline knows."""

    def images_by_uri(self, uris: Iterable[str], *, consistent: bool = True) -> dict[str, Image]: ...


class BackfillLedger(Protocol):
    """A backfill's markers (`control#queued#<record id>`: this version was sent) and its runs' counters."""

    def mark_queued(self, record_ids: Sequence[str], run: str, now: datetime) -> set[str]: ...

    def unmark_queued(self, record_ids: Sequence[str], run: str) -> None: ...

    def count_backfill(self, run: BackfillRun, outcome: BatchOutcome, now: datetime) -> None: ...


class SubmitQueue(Protocol):
    """The submit queue, as a backfill fills it."""

    def depth(self) -> int: ...

    def send(self, bodies: Sequence[str]) -> list[int]:
        """Send each body; the indexes of those SQS refused."""
        ...
