"""Control items in the requests table: the pause by hand, each day's spend, the sweeper's own record, backfills.

Small items keyed `control#...` (never confused with a submission id, a UUID), each written by one
conditional write or overwritten whole (the last sweep).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Final

from pynamodb.expressions.update import Action

from ximilar_async.adapters.dynamodb import keys, writes
from ximilar_async.adapters.dynamodb.models import Tables
from ximilar_async.values.backfill import BackfillRun, BatchOutcome, RunProgress
from ximilar_async.values.entities import DueScan, SpendDay

PAUSE_KEY: Final = "control#pause"
LAST_SWEEP_KEY: Final = "control#last-sweep"
SPEND_DAY_RETENTION: Final = timedelta(days=7)  # a day's counter is kept a week, for `xasync status`
BACKFILL_RUNS_KEY: Final = "control#backfill-runs"
# A backfill's marker says "sent, not claimed yet" for this long: a new run sends it again after that (a lost
# message, a run stopped between marker and send). The submit queue is kept shallow (the backfill's bound),
# so a message sent is read within minutes; the image item then says it is known.
MARKER_LEASE: Final = timedelta(hours=1)
MARKER_TTL: Final = timedelta(days=2)  # DynamoDB's TTL removes spent markers (free)
RUN_RETENTION: Final = timedelta(days=30)  # a run's counters, for `xasync status`
MARKER_WRITERS: Final = 16  # conditional puts of one batch's markers at once (one client, 48 connections)


def spend_key(day: date) -> str:
    return f"control#spend#{day.isoformat()}"


def marker_key(record_id: str) -> str:
    return f"control#queued#{record_id}"


def run_key(name: str) -> str:
    return f"control#backfill#{name}"


@dataclass(frozen=True)
class ControlStore:
    tables: Tables
    shards: int

    # --- the spend guard ---------------------------------------------------------------------------------
    def pause_reason(self) -> str | None:
        """Why submission is paused by hand, or None."""
        try:
            return str(self.tables.control.get(PAUSE_KEY, consistent_read=True).reason or "paused")
        except self.tables.control.DoesNotExist:
            return None

    def pause(self, reason: str, now: datetime) -> bool:
        """Pause submission until `resume`; False when it was already paused (the first reason is kept)."""
        control = self.tables.control
        item = control(PAUSE_KEY, reason=reason, updated_at=now)
        return writes.put(item, control.submission_id.does_not_exist())

    def resume(self, day: date, now: datetime) -> bool:
        """End a pause by hand and lift `day`'s limit; False when neither was in force (the day is lifted anyway)."""
        control = self.tables.control
        unpaused = writes.delete(control(PAUSE_KEY), control.submission_id.exists())
        lift: list[Action] = [
            control.resumed.set(True),
            control.updated_at.set(now),
            control.expires_at.set(now + SPEND_DAY_RETENTION),
        ]
        lifted = writes.update(control(spend_key(day)), lift, control.resumed.does_not_exist())
        return unpaused or lifted

    def reserve_submissions(self, day: date, images: int, limit: int, now: datetime) -> bool:
        """Count `images` against `day`'s limit in one atomic ADD; False (nothing counted) when they do not fit.

        The condition makes the check and the count one write: concurrent submitters never overshoot.
        A day whose limit was lifted by `resume` takes everything.
        """
        control = self.tables.control
        actions: list[Action] = [
            control.submitted.add(images),
            control.updated_at.set(now),
            control.expires_at.set(now + SPEND_DAY_RETENTION),
        ]
        # `resumed` is only ever set (to true): its existence is the lift.
        fits = control.resumed.exists()
        if images <= limit:
            fits = fits | control.submitted.does_not_exist() | (control.submitted <= limit - images)
        return writes.update(control(spend_key(day)), actions, fits)

    def spend_day(self, day: date) -> SpendDay:
        try:
            item = self.tables.control.get(spend_key(day), consistent_read=True)
        except self.tables.control.DoesNotExist:
            return SpendDay(day, 0, resumed=False)
        return SpendDay(day, int(item.submitted or 0), resumed=bool(item.resumed))

    def record_sweep(self, outcome: Mapping[str, Any], now: datetime, scan: DueScan) -> None:
        """Keep what the last sweeper run did, and where the next starts reading (one small item,
        overwritten every run). Overlapping runs may write theirs in either order: an earlier mark
        only makes the next run read some entries again."""
        marks = {str(shard): mark for shard, mark in scan.next_marks().items()}
        passed = scan.next_passed(lambda submission_id: keys.shard_of(submission_id, self.shards))
        full = {str(shard): start for shard, start in scan.next_full_from().items()}
        self.tables.control(
            LAST_SWEEP_KEY,
            outcome=dict(outcome),
            due_marks=marks,
            due_passed=passed,
            due_full_from=full,
            due_full_at=scan.full_started,
            updated_at=now,
        ).save()

    def last_sweep(self) -> tuple[datetime, dict[str, Any]] | None:
        """When the last sweeper run ended, and what it did."""
        try:
            item = self.tables.control.get(LAST_SWEEP_KEY, consistent_read=True)
        except self.tables.control.DoesNotExist:
            return None
        return item.updated_at, item.outcome.as_dict() if item.outcome is not None else {}  # type: ignore[no-untyped-call]

    # --- the sweeper's own record ---------------------------------------------------------------------
    def due_scan(self) -> DueScan:
        """A sweep's pass over the due index, starting where the last run's reading got to."""
        try:
            item = self.tables.control.get(LAST_SWEEP_KEY, consistent_read=True)
        except self.tables.control.DoesNotExist:
            return DueScan()
        marks = item.due_marks.as_dict() if item.due_marks is not None else {}  # type: ignore[no-untyped-call]
        passed = item.due_passed.as_dict() if item.due_passed is not None else {}  # type: ignore[no-untyped-call]
        full = item.due_full_from.as_dict() if item.due_full_from is not None else {}  # type: ignore[no-untyped-call]
        return DueScan(
            marks={int(shard): int(mark) for shard, mark in marks.items()},
            passed_before={str(request): int(check_at) for request, check_at in passed.items()},
            full_from={int(shard): int(start) for shard, start in full.items()},
            full_started=None if item.due_full_at is None else int(item.due_full_at),
        )

    # --- backfills ---------------------------------------------------------------------------------------
    def mark_queued(self, record_ids: Sequence[str], run: str, now: datetime) -> set[str]:
        """Write each version's marker where none is, where it is `run`'s own, or where it is older than
        MARKER_LEASE; the record ids marked now (to be sent). One conditional PutItem each, MARKER_WRITERS at once."""
        control = self.tables.control

        def mark(record_id: str) -> bool:
            item = control(marker_key(record_id), run=run, updated_at=now, expires_at=now + MARKER_TTL)
            free = (
                control.submission_id.does_not_exist()
                | (control.run == run)
                | (control.updated_at < now - MARKER_LEASE)
            )
            return writes.put(item, free)

        if not record_ids:
            return set()
        with ThreadPoolExecutor(max_workers=min(MARKER_WRITERS, len(record_ids))) as pool:
            return {
                record_id for record_id, applied in zip(record_ids, pool.map(mark, record_ids), strict=True) if applied
            }

    def unmark_queued(self, record_ids: Sequence[str], run: str) -> None:
        """Remove `run`'s markers of versions it could not send (a later run sends them)."""
        control = self.tables.control
        for record_id in record_ids:
            writes.delete(control(marker_key(record_id)), control.run == run)

    def count_backfill(self, run: BackfillRun, outcome: BatchOutcome, now: datetime) -> None:
        """Add a batch's counts to its run's item (one ADD: a retry of an applied write never counts twice),
        and the run's name to the set `xasync status` reads."""
        control = self.tables.control
        actions: list[Action] = [
            control.total.add(outcome.total),
            control.enqueued.add(outcome.enqueued),
            control.already_known.add(outcome.already_known),
            control.already_queued.add(outcome.already_queued),
            control.failed.add(outcome.failed),
            control.run.set(run.name),
            control.engine_id.set(run.engine_id),
            control.source.set(run.source),
            control.started_at.set(control.started_at | now),
            control.updated_at.set(now),
            control.expires_at.set(now + RUN_RETENTION),
        ]
        if outcome.reasons:
            actions.append(control.last_failure.set(outcome.reasons[-1][:500]))
        writes.update(control(run_key(run.name)), actions, None)
        writes.update(control(BACKFILL_RUNS_KEY), [control.runs.add({run.name}), control.updated_at.set(now)], None)

    def backfill_runs(self, limit: int = 5) -> list[RunProgress]:
        """The `limit` most recently started runs still kept, newest first."""
        control = self.tables.control
        try:
            names = sorted(control.get(BACKFILL_RUNS_KEY, consistent_read=True).runs or ())
        except control.DoesNotExist:
            return []
        runs = [
            RunProgress(
                item.run or "",
                item.engine_id or "",
                item.source or "",
                item.started_at or item.updated_at,
                item.updated_at,
                int(item.total or 0),
                int(item.enqueued or 0),
                int(item.already_known or 0),
                int(item.already_queued or 0),
                int(item.failed or 0),
                item.last_failure,
            )
            for item in control.batch_get([run_key(name) for name in names], consistent_read=True)
        ]
        return sorted(runs, key=lambda progress: progress.started_at, reverse=True)[:limit]
