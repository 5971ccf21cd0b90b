"""Results out for SQL: finished images as gzipped JSON Lines in S3, one partition per UTC day, for Athena.

Layout (`ExportLocation`), under the results bucket by default:

    s3://<bucket>/<prefix>images/dt=YYYY-MM-DD/part-00000.json.gz   one row per finished image (`export_row`)
    s3://<bucket>/<prefix>_state/images.json                        where the last export got to (`ExportState`)

A row is flat and typed (the Glue table in template.yaml and docs/sql.md list its columns): the image's
keys and status, Ximilar's request, the columns the usual questions need (the card grade, the upscaled
output's dimensions, state and stored bytes) and the raw record as a JSON string. `dt` is the day the
image finished (the UTC day of its `updated_at`, which moves only when its status does).

What an export reads: the `by_status` index (every shard of DONE, ERROR, FAILED), never a Scan, then
the items themselves (BatchGetItem; the index projects no result), the records too large for an item
(`result_s3_uri`) and the size of each stored output (HeadObject).

- A full export (`full=True`, `xasync export --full`) rewrites every day the index holds and removes
  the partitions of days that no longer have a row.
- An incremental export (the default, and the scheduled function) reads the index from the last
  export's watermark (less `INDEX_LAG`), and rewrites whole the days it finds changed, plus the days
  whose rows still had an output PENDING (a copy marks its output STORED without moving `updated_at`).

A day is always rewritten whole, its rows sorted by URI into parts of `ROWS_PER_PART` with fixed names,
each one PutObject that replaces the part of the previous export; parts beyond the new count are
deleted (the state keeps each day's count). So exporting a day again replaces its rows and never
duplicates them. One limit: an image that finishes again on a later day (reprocessed, resubmitted, a
new upload of its key) leaves its earlier row in the earlier day until a full export rewrites it.

What a row holds and where the files go: `export_layout`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final, Protocol

from ximilar_async.values.clock import Clock, utc_now
from ximilar_async.values.entities import Image, OutputState
from ximilar_async.values.export_layout import ExportLocation, export_row, finished_day, part_body
from ximilar_async.values.outputs import split_s3_uri
from ximilar_async.values.statuses import TERMINAL_STATUSES
from ximilar_async.values.submissions import chunks

logger = logging.getLogger(__name__)

ROWS_PER_PART: Final = 20_000  # a part is a few MB gzipped: Athena reads each gzip file whole, in one split
# An index entry is visible this long after its write at the latest (GSIs are eventually consistent):
# an incremental export reads back this far before the last one's watermark.
INDEX_LAG: Final = timedelta(minutes=5)
# A day whose rows still have a PENDING output is exported again by the next runs, for this long at most.
PENDING_DAYS_KEPT: Final = timedelta(days=3)
BATCH: Final = 100  # BatchGetItem's limit
WORKERS: Final = 8  # index queries, item batches and S3 reads in flight at once
# The time a day's export needs at least: the scheduled function stops before a day it cannot finish.
DAY_MARGIN_MS: Final = 30_000


# --- where the last export got to ---------------------------------------------------------------------------------


@dataclass
class ExportState:
    """The last export's watermark (its start), each day's part count, and the days to export again."""

    watermark: datetime | None = None
    parts: dict[str, int] = field(default_factory=dict)  # day (ISO) -> parts written
    pending_days: set[str] = field(default_factory=set)  # days with an output still PENDING

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "watermark": self.watermark.isoformat() if self.watermark else None,
                "parts": dict(sorted(self.parts.items())),
                "pending_days": sorted(self.pending_days),
            },
            indent=1,
        ).encode()

    @classmethod
    def from_json(cls, body: bytes | None) -> ExportState:
        if not body:
            return cls()
        data = json.loads(body)
        watermark = data.get("watermark")
        return cls(
            watermark=datetime.fromisoformat(watermark) if watermark else None,
            parts={str(day): int(count) for day, count in (data.get("parts") or {}).items()},
            pending_days={str(day) for day in data.get("pending_days") or ()},
        )


# --- the object store it needs -----------------------------------------------------------------------------------


class ExportObjects(Protocol):
    def get(self, bucket: str, key: str) -> bytes | None: ...  # None: no such object

    def put(self, bucket: str, key: str, body: bytes, content_type: str) -> None: ...

    def delete(self, bucket: str, key: str) -> None: ...

    def size(self, bucket: str, key: str) -> int | None: ...  # None: no such object


class ExportSource(Protocol):
    """The finished images an export reads (`adapters.dynamodb.queries.ResultQueries`): the index, then the items."""

    def finished_between(
        self, start: datetime | None, end: datetime | None, *, workers: int
    ) -> list[tuple[str, datetime]]: ...

    def images_by_uri(self, uris: Iterable[str], *, consistent: bool = True) -> dict[str, Image]: ...


# --- the export ---------------------------------------------------------------------------------------------------


@dataclass
class ExportOutcome:
    full: bool
    since: datetime | None  # the incremental export's window start (None: full)
    days: list[str] = field(default_factory=list)  # days rewritten
    days_removed: list[str] = field(default_factory=list)  # partitions deleted: no row left (full exports)
    rows: int = 0
    parts_written: int = 0
    parts_deleted: int = 0
    index_items_read: int = 0
    results_read_from_s3: int = 0
    outputs_sized: int = 0  # HeadObjects: STORED outputs the copier did not size (stored before it kept sizes)
    days_left: list[str] = field(default_factory=list)  # not reached before the deadline (the next run does them)
    seconds: float = 0.0

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


RemainingMillis = Callable[[], int]


def _day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


@dataclass
class Exporter:
    """Exports the images table's finished images to `location` (see the module)."""

    source: ExportSource
    objects: ExportObjects
    location: ExportLocation
    clock: Clock = utc_now
    workers: int = WORKERS
    rows_per_part: int = ROWS_PER_PART

    def export(self, *, full: bool = False, remaining_ms: RemainingMillis | None = None) -> ExportOutcome:
        started = time.monotonic()
        now = self.clock()
        state = ExportState.from_json(self.objects.get(self.location.bucket, self.location.state_key))
        incremental = not full and state.watermark is not None
        since = state.watermark - INDEX_LAG if incremental and state.watermark else None
        outcome = ExportOutcome(full=not incremental, since=since)
        entries = self.source.finished_between(since, None, workers=self.workers)
        outcome.index_items_read += len(entries)
        by_day: dict[date, list[str]] = {}
        for uri, updated_at in entries:
            by_day.setdefault(updated_at.astimezone(UTC).date(), []).append(uri)
        days = set(by_day) | {date.fromisoformat(day) for day in state.pending_days}
        if not incremental:
            days |= {date.fromisoformat(day) for day in state.parts}
        pending: set[str] = set()
        for day in sorted(days):
            if remaining_ms is not None and remaining_ms() < DAY_MARGIN_MS:
                outcome.days_left.append(day.isoformat())
                continue
            if incremental:  # the window found the day changed: read the whole day
                uris = [
                    uri
                    for uri, _ in self.source.finished_between(
                        _day_start(day), _day_start(day + timedelta(days=1)), workers=self.workers
                    )
                ]
                outcome.index_items_read += len(uris)
            else:
                uris = by_day.get(day, [])
            has_pending = self._export_day(day, uris, state, outcome)
            if has_pending and now - _day_start(day) < PENDING_DAYS_KEPT:
                pending.add(day.isoformat())
        if not outcome.days_left:
            state.watermark = now
            state.pending_days = pending
        else:  # the watermark stays: the next run finds the days left again, and the pending ones
            state.pending_days = (state.pending_days | pending) - set(outcome.days)
        self.objects.put(self.location.bucket, self.location.state_key, state.to_json(), "application/json")
        outcome.seconds = time.monotonic() - started
        logger.info(
            "export finished",
            extra={
                "full": outcome.full,
                "days": len(outcome.days),
                "rows": outcome.rows,
                "parts_written": outcome.parts_written,
                "days_left": len(outcome.days_left),
            },
        )
        return outcome

    # --- reading ---
    def _rows_of(self, day: date, uris: list[str], outcome: ExportOutcome) -> Iterator[tuple[dict[str, Any], bool]]:
        """The day's rows in URI order, each with whether an output of its image is PENDING: each batch of
        items read (and its S3 reads made) in a worker."""
        batches = list(chunks(uris, BATCH))
        window = self.workers * 4  # batches in flight: memory stays bounded whatever the day's size
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            for at in range(0, len(batches), window):
                for rows, from_s3, sized in pool.map(
                    lambda batch: self._batch_rows(day, batch), batches[at : at + window]
                ):
                    outcome.results_read_from_s3 += from_s3
                    outcome.outputs_sized += sized
                    yield from rows

    def _batch_rows(self, day: date, uris: Sequence[str]) -> tuple[list[tuple[dict[str, Any], bool]], int, int]:
        found = self.source.images_by_uri(uris, consistent=False)
        rows: list[tuple[dict[str, Any], bool]] = []
        from_s3 = sized = 0
        for uri in uris:
            image = found.get(uri)
            # The index lags its table: an image finished again since (another day), or in flight again, is not
            # this day's.
            if image is None or image.status not in TERMINAL_STATUSES or finished_day(image) != day:
                continue
            record = image.result
            if record is None and image.result_s3_uri:
                body = self.objects.get(*split_s3_uri(image.result_s3_uri))
                record = json.loads(body) if body else None
                from_s3 += 1
            sizes: dict[str, int | None] = {}
            for name, output in image.outputs.items():
                if output.state is OutputState.STORED and output.size_bytes is not None:
                    sizes[name] = output.size_bytes  # counted by the copier as it wrote the copy
                elif output.state is OutputState.STORED:  # stored before the copier kept sizes: S3 knows
                    sizes[name] = self.objects.size(*split_s3_uri(output.uri))
                    sized += 1
            pending = any(output.state is OutputState.PENDING for output in image.outputs.values())
            rows.append((export_row(image, record, sizes), pending))
        return rows, from_s3, sized

    # --- writing ---
    def _export_day(self, day: date, uris: list[str], state: ExportState, outcome: ExportOutcome) -> bool:
        """Rewrite one day's partition; True when a row of it still has an output PENDING."""
        bucket = self.location.bucket
        written = 0
        has_pending = False
        part: list[dict[str, Any]] = []
        rows = 0

        def flush() -> None:
            nonlocal written, part
            self.objects.put(bucket, self.location.part_key(day, written), part_body(part), "application/json")
            written += 1
            part = []

        for row, pending in self._rows_of(day, sorted(set(uris)), outcome):
            part.append(row)
            rows += 1
            has_pending = has_pending or pending
            if len(part) >= self.rows_per_part:
                flush()
        if part:
            flush()
        before = state.parts.get(day.isoformat(), 0)
        for number in range(written, before):
            self.objects.delete(bucket, self.location.part_key(day, number))
            outcome.parts_deleted += 1
        if written:
            state.parts[day.isoformat()] = written
            outcome.days.append(day.isoformat())
        else:
            state.parts.pop(day.isoformat(), None)
            if before:
                outcome.days_removed.append(day.isoformat())
        outcome.rows += rows
        outcome.parts_written += written
        return has_pending
