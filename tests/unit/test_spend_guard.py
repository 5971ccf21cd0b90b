"""The spend guard: a daily limit counted atomically, a credits floor, a pause by hand; the sweeper obeys it."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta

import pytest

from tests.support.fakes import FakeClock, FakeObjectStore, FakeXimilar
from ximilar_async.adapters.dynamodb import Storage
from ximilar_async.services.spend_guard import SpendGuard
from ximilar_async.services.submitter import Submitter
from ximilar_async.services.sweeper import Sweeper
from ximilar_async.settings import SweeperSettings
from ximilar_async.values.entities import SpendDay
from ximilar_async.values.statuses import Status

SMALL = b"\x89PNG\r\n\x1a\n" + bytes(40)


def guarded(submitter: Submitter, storage: Storage, *, limit: int = 0, floor: int = 0) -> Submitter:
    submitter.guard = SpendGuard(storage.control, submitter.ximilar, limit, floor, submitter.clock)
    return submitter


def plenty_of_time() -> int:
    return 60_000


def test_the_daily_count_never_passes_the_limit_and_resume_lifts_it(storage: Storage, clock: FakeClock) -> None:
    now = clock()
    admitted = [storage.control.reserve_submissions(now.date(), 1, 20, now) for _ in range(25)]
    assert admitted.count(True) == 20 and admitted[20:] == [False] * 5
    assert not storage.control.reserve_submissions(now.date(), 21, 20, now)  # larger than the limit itself
    assert storage.control.spend_day(now.date()).submitted == 20

    assert storage.control.resume(now.date(), now)
    assert storage.control.reserve_submissions(now.date(), 10, 20, now)
    tomorrow = now + timedelta(days=1)
    assert storage.control.spend_day(tomorrow.date()).submitted == 0  # a new day, a new counter


def test_past_the_limit_uploads_are_owned_and_wait_with_the_reason(
    submitter: Submitter, objects: FakeObjectStore, ximilar: FakeXimilar, storage: Storage
) -> None:
    uploads = [objects.put(f"incoming/photo-{n}.png", SMALL) for n in range(3)]  # upscaler: three requests

    outcome = guarded(submitter, storage, limit=2).submit_uploads(uploads, remaining_millis=plenty_of_time)

    assert (outcome.images_submitted, outcome.paused, outcome.handed_on) == (2, 1, 1)
    assert len(ximilar.sent) == 2
    # Every image stays SUBMITTING until its result; the one held back carries the reason.
    images = [image for u in uploads if (image := storage.images.image(u.uri)) and image.status is Status.SUBMITTING]
    waiting = [image for image in images if image.status_reason]
    assert (len(images), len(waiting)) == (3, 1)
    assert str(waiting[0].status_reason).startswith("waiting to be submitted: daily submit limit of 2 images")


def test_under_the_credits_floor_nothing_is_posted_until_resume(
    submitter: Submitter, objects: FakeObjectStore, ximilar: FakeXimilar, storage: Storage, clock: FakeClock
) -> None:
    ximilar.credits_left = 5
    guarded(submitter, storage, floor=10)
    first = objects.put("incoming/flows/a.png", SMALL)
    held = submitter.submit_uploads([first], remaining_millis=plenty_of_time)
    assert (held.paused, ximilar.sent) == (1, [])
    image = storage.images.image(first.uri)
    assert image is not None and "5 Ximilar credits left, under the floor of 10" in str(image.status_reason)

    storage.control.resume(clock().date(), clock())
    fine = submitter.submit_uploads([objects.put("incoming/flows/b.png", SMALL)], remaining_millis=plenty_of_time)
    assert fine.images_submitted == 1


def test_the_sweeper_leaves_held_requests_alone_while_paused_and_submits_them_after_resume(
    submitter: Submitter,
    objects: FakeObjectStore,
    ximilar: FakeXimilar,
    storage: Storage,
    clock: FakeClock,
    sweeper: Sweeper,
    settings: SweeperSettings,
) -> None:
    sweeper.guard = guarded(submitter, storage).guard  # one guard, as runtime.sweeper gives both
    storage.control.pause("by hand", clock())
    upload = objects.put("incoming/flows/held.png", SMALL)
    assert submitter.submit_uploads([upload], remaining_millis=plenty_of_time).paused == 1

    clock.advance(hours=30)  # longer than any age limit: a pause does not age a request out
    paused = sweeper.sweep(plenty_of_time)
    assert (paused.taken, paused.paused, paused.resubmitted_images, ximilar.sent) == (1, 1, 0, [])
    image = storage.images.image(upload.uri)
    assert image is not None and image.status is Status.SUBMITTING

    storage.control.resume(clock().date(), clock())
    clock.advance(seconds=settings.first_check_delay_seconds + 1)
    resumed = sweeper.sweep(plenty_of_time)
    assert resumed.resubmitted_images == 1 and len(ximilar.sent) == 1
    last = storage.control.last_sweep()
    assert last is not None and last[1]["resubmitted_images"] == 1


@pytest.mark.parametrize("limit", [0, 5])
def test_without_a_pause_the_guard_reads_one_item_and_says_nothing(
    storage: Storage, ximilar: FakeXimilar, clock: FakeClock, limit: int
) -> None:
    guard = SpendGuard(storage.control, replace(ximilar), limit, 0, clock)
    assert guard.check() is None and guard.paused() is None
    assert ("remaining_credits", "") not in ximilar.calls


# --- the guard's one reading of its state, against a fake of its port (`ports.SpendLedger`) --------------
@dataclass
class FakeSpendLedger:
    """The pause and each day's count in memory, with every read counted: the guard's rule, not DynamoDB's."""

    pause: str | None = None
    submitted: int = 0
    resumed: bool = False
    reads: list[str] = field(default_factory=list)

    def pause_reason(self) -> str | None:
        self.reads.append("pause")
        return self.pause

    def spend_day(self, day: date) -> SpendDay:
        self.reads.append("day")
        return SpendDay(day, self.submitted, self.resumed)

    def reserve_submissions(self, day: date, images: int, limit: int, now: datetime) -> bool:
        self.reads.append("reserve")
        if not self.resumed and self.submitted + images > limit:
            return False
        self.submitted += images
        return True


@pytest.mark.parametrize(
    ("ledger", "limit", "paused", "checked", "reads"),
    [
        (FakeSpendLedger(pause="audit"), 5, "submission paused by hand: audit", "submission paused by hand: audit", 1),
        (FakeSpendLedger(submitted=5), 5, "daily submit limit of 5", None, 2),
        (FakeSpendLedger(submitted=5, resumed=True), 5, None, None, 2),
        (FakeSpendLedger(), 0, None, None, 1),
    ],
)
def test_paused_and_check_read_the_pause_and_the_day_once_each_at_most(
    ledger: FakeSpendLedger, limit: int, paused: str | None, checked: str | None, reads: int, clock: FakeClock
) -> None:
    guard = SpendGuard(ledger, None, limit, 0, clock)  # as the backfill function's: no floor, no Ximilar client

    said = guard.paused()
    assert (said or "").startswith(paused or "") and (said is None) == (paused is None)
    assert len(ledger.reads) == reads
    ledger.reads.clear()
    # `check` leaves the daily limit to `reserve`, which counts and checks it in one write
    assert guard.check() == checked
    assert ledger.reads.count("pause") == 1 and ledger.reads.count("day") == 0


def test_reserve_counts_what_fits_and_refuses_the_rest_with_the_reason(clock: FakeClock) -> None:
    ledger = FakeSpendLedger(submitted=3)
    guard = SpendGuard(ledger, FakeXimilar(), 5, 0, clock)

    assert guard.reserve(2) is None and ledger.submitted == 5
    assert (guard.reserve(1) or "").startswith("daily submit limit of 5") and ledger.submitted == 5


def test_a_credits_floor_needs_the_ximilar_client_that_reads_the_credits(clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="a credits floor needs the Ximilar client"):
        SpendGuard(FakeSpendLedger(), None, 0, 100, clock)
