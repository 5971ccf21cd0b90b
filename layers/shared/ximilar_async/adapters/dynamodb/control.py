"""Control items in the requests table: the pause by hand, each day's spend, and the sweeper's own record.

Small items keyed `control#...` (never confused with a submission id, a UUID), each written by one
conditional write or overwritten whole (the last sweep).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Final

from pynamodb.expressions.update import Action

from ximilar_async.adapters.dynamodb import keys, writes
from ximilar_async.adapters.dynamodb.models import Tables
from ximilar_async.values.entities import DueScan, SpendDay

PAUSE_KEY: Final = "control#pause"
LAST_SWEEP_KEY: Final = "control#last-sweep"
SPEND_DAY_RETENTION: Final = timedelta(days=7)  # a day's counter is kept a week, for `xasync status`


def spend_key(day: date) -> str:
    return f"control#spend#{day.isoformat()}"


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
