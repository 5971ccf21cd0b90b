"""What the tables hold, as the domain reads it: plain frozen values, never pynamodb items.

The data layer (`adapters.dynamodb`) converts its items into these before returning them, so the domain never
reads an ORM attribute and a test can build one in a line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from typing import Any, Final

from ximilar_async.values.statuses import Status


class Claim(StrEnum):
    """What a claim of an upload's image found."""

    TAKEN = "TAKEN"  # written SUBMITTING for this submission
    DUPLICATE = "DUPLICATE"  # finished, newer, or held by a submission that has its request item
    BUSY = "BUSY"  # held by a live claim that has no request item yet: deliver it again after the lease


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
    size_bytes: int | None = None  # of the copy, counted as it was written (None: not STORED, or stored unsized)


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
# How often the due index is read whole, from its first entry: the margin above is an optimization, and
# an entry visible later than it (DynamoDB promises no bound) is found by the next full pass. A pass
# reads what the fast reading left over in each run, from where the last run's pass got to, so it
# costs no run its work on entries due now.
FULL_PASS_EVERY: Final = 24 * 3600
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
    taken (which moves its check time after the run's start, so past the mark), unless it became
    visible in the index later than the margin. The entries the previous run passed inside that
    margin (`passed_before`) are not read again.

    The full pass bounds what the margin cannot: every `FULL_PASS_EVERY` seconds each shard is read
    again from its first entry up to where the fast reading starts, over as many runs as it takes
    (`full_from`: where the pass under way got to in each shard it has left to read).
    """

    marks: dict[int, int] = field(default_factory=dict)  # shard -> check time (epoch s) read up to before
    passed_before: dict[str, int] = field(default_factory=dict)  # request -> check time: the last run passed it
    full_from: dict[int, int] = field(default_factory=dict)  # shard -> where the full pass under way resumes
    full_started: int | None = None  # epoch s: when the last full pass began (None: never)
    items_read: int = 0  # items DynamoDB returned from the index (the sweeper's cost figure)
    reached: dict[int, int] = field(default_factory=dict)  # shard -> check time of the entry read last
    read_through: dict[int, int] = field(default_factory=dict)  # shard -> every entry due by then was read
    passed: dict[str, int] = field(default_factory=dict)  # request -> check time: this run is done with it
    full_reached: dict[int, int] = field(default_factory=dict)  # shard -> full pass: check time read last
    full_done: set[int] = field(default_factory=set)  # shards whose full pass ended in this run

    def start_of(self, shard: int, until: int | None = None) -> int:
        """The first check time to read of `shard` (never after `until`: a mark from a clock ahead)."""
        mark = self.marks.get(shard)
        start = 0 if mark is None else max(0, mark - DUE_INDEX_LAG)
        return start if until is None else min(start, until)

    def resume_of(self, shard: int, until: int) -> int:
        """Where this run reads `shard` from: its start, or the entry it read last (a reading that failed)."""
        return self.reached.get(shard, self.start_of(shard, until))

    def begin_full_pass_if_due(self, now: int, shards: int) -> None:
        """Start a full pass of every shard when none is under way and the last began long enough ago."""
        if not self.full_from and (self.full_started is None or now - self.full_started >= FULL_PASS_EVERY):
            self.full_from = dict.fromkeys(range(shards), 0)
            self.full_started = now

    def full_window(self, shard: int, until: int) -> tuple[int, int] | None:
        """The check times the full pass still has to read in `shard` (below the fast reading), or None."""
        start = self.full_reached.get(shard, self.full_from[shard])
        end = self.start_of(shard, until) - 1
        return (start, end) if start <= end else None

    def next_marks(self) -> dict[int, int]:
        """Where the next run starts: after every shard read through; on the entry a stopped run had
        not handled (the one read last); unmoved for a shard this run did not reach."""
        return {**self.marks, **self.reached, **self.read_through}

    def next_full_from(self) -> dict[int, int]:
        """Where the next run resumes the full pass under way, in each shard it has left to read."""
        return {
            shard: self.full_reached.get(shard, start)
            for shard, start in self.full_from.items()
            if shard not in self.full_done
        }

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
