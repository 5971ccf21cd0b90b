"""What the tables hold, as the domain reads it: plain frozen values, never pynamodb items.

The data layer (`dal`) converts its items into these before returning them, so the domain never
reads an ORM attribute and a test can build one in a line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from typing import Any, Final

from ximilar_async.statuses import Status


@dataclass(frozen=True)
class ObjectLocation:
    """One object version in S3 (`version_id` None: the latest)."""

    bucket: str
    key: str
    version_id: str | None = None


class OutputState(StrEnum):
    PENDING = "PENDING"  # Ximilar hosts it; the copy into the output location is queued
    STORED = "STORED"  # copied: `uri` is the user's own S3 object
    FAILED = "FAILED"  # could not be copied (expired, missing); `reason` says why


@dataclass(frozen=True)
class Output:
    """One artifact Ximilar made for an image (the upscaled image, a crop), and where its copy is."""

    uri: str  # s3://bucket/key of the copy (where it is or will be)
    state: OutputState
    reason: str | None = None


@dataclass(frozen=True, kw_only=True)
class Image:
    """One uploaded object (the latest upload of its key) and what became of it."""

    uri: str  # s3://bucket/key: the key of the images table
    bucket: str
    key: str
    version: str  # S3 version id, or ETag when the bucket is unversioned
    version_id: str | None
    sequencer: str
    size_bytes: int
    record_id: str  # the `_id` sent to Ximilar for this upload
    status: Status
    status_reason: str | None = None
    request_type: str | None = None
    endpoint: str | None = None
    submission_id: str | None = None
    request_id: str | None = None
    result: dict[str, Any] | None = None
    result_s3_uri: str | None = None
    attempts: int = 0
    outputs: dict[str, Output] = field(default_factory=dict)  # artifact name (e.g. "upscaled") -> its copy
    output_regenerations: int = 0  # resubmissions made because an artifact had expired before its copy
    lease_until: int | None = None  # SUBMITTING: epoch seconds its claim is held until (0: released)
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, kw_only=True)
class TrackedRequest:
    """One Ximilar request as the pipeline tracks it, keyed by the pipeline's own submission id."""

    submission_id: str
    request_id: str | None  # Ximilar's id, once it answered
    request_type: str
    endpoint: str
    status: Status
    ximilar_status: str | None = None
    status_reason: str | None = None
    images: dict[str, str] = field(default_factory=dict)  # record `_id` -> image URI
    checks: int = 0
    submit_attempts: int = 0
    retry_record_ids: frozenset[str] = frozenset()
    held_back: bool = False  # its last submission was not tried (throttled, out of time): not a failed attempt
    incomplete_answers: int = 0  # DONE answers of Ximilar's that left some of its images without a record
    sweep_failures: int = 0  # sweeps of this request that ended in an unexpected error
    next_check_at: int | None = None  # epoch seconds; None once it left the due index
    created_at: datetime
    age_from: datetime | None = None  # set while the spend guard holds it: its age counts from here
    updated_at: datetime


@dataclass(frozen=True)
class ImageResult:
    """What one record of a finished request says about one image."""

    uri: str
    record_id: str
    request_id: str
    status: Status  # DONE or ERROR
    reason: str | None
    record: dict[str, Any] | None  # the record, when it fits in the item
    result_s3_uri: str | None = None  # else where it is stored
    outputs: dict[str, Output] = field(default_factory=dict)  # artifacts to copy, PENDING (DONE results only)


# Seconds a sweep reads back before where the previous run stopped reading: a due-index entry is
# visible that long after its write at the latest. A GSI is eventually consistent, usually within a
# second, with no bound promised; every write sets a check time at or after its own clock, so only an
# entry later than this can be missed. The entries the last run was done with inside it are not read
# again (`passed_before`): the margin costs index reads (keys only), not request or image reads.
DUE_INDEX_LAG: Final = 300
# Most entries a run keeps as passed for the next (the last-sweep item stays far under DynamoDB's 400 KB):
# beyond, the oldest are read again, which costs reads only.
DUE_PASSED_MAX: Final = 2000


@dataclass
class DueScan:
    """One sweep's pass over the due index: where each shard's reading starts, how far it got, what it read.

    A request whose images the webhook has all recorded is not written again to leave the index (that
    write was a third of a request's cost): it stays there, finished, until its TTL. So a run does not
    read a shard from its start but from its mark, where the previous run got to (kept in the
    last-sweep item), less `DUE_INDEX_LAG`. Every entry before a mark was handled: found finished, or
    taken (which moves its check time after the run's start, so past the mark). The entries the
    previous run passed inside that margin (`passed_before`) are not read again.
    """

    marks: dict[int, int] = field(default_factory=dict)  # shard -> check time (epoch s) read up to before
    passed_before: dict[str, int] = field(default_factory=dict)  # request -> check time: the last run passed it
    items_read: int = 0  # items DynamoDB returned from the index (the sweeper's cost figure)
    reached: dict[int, int] = field(default_factory=dict)  # shard -> check time of the entry read last
    read_through: dict[int, int] = field(default_factory=dict)  # shard -> every entry due by then was read
    passed: dict[str, int] = field(default_factory=dict)  # request -> check time: this run is done with it

    def start_of(self, shard: int, until: int | None = None) -> int:
        """The first check time to read of `shard` (never after `until`: a mark from a clock ahead)."""
        mark = self.marks.get(shard)
        start = 0 if mark is None else max(0, mark - DUE_INDEX_LAG)
        return start if until is None else min(start, until)

    def next_marks(self) -> dict[int, int]:
        """Where the next run starts: after every shard read through; on the entry a stopped run had
        not handled (the one read last); unmoved for a shard this run did not reach."""
        return {**self.marks, **self.reached, **self.read_through}

    def next_passed(self, shard_of: Callable[[str], int]) -> dict[str, int]:
        """The entries passed (by this run or the last) that the next run's margin would read again."""
        marks = self.next_marks()
        kept = [
            (check_at, request)
            for request, check_at in {**self.passed_before, **self.passed}.items()
            if check_at >= marks.get(shard_of(request), 0) - DUE_INDEX_LAG
        ]
        return {request: check_at for check_at, request in sorted(kept, reverse=True)[:DUE_PASSED_MAX]}


@dataclass(frozen=True)
class SpendDay:
    """One UTC day of the spend guard: images admitted for submission, and whether its limit was lifted."""

    day: date
    submitted: int
    resumed: bool
