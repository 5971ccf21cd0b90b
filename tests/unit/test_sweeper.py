"""Sweeper: no request stays pending; each run bounded by the Lambda deadline, its call budget and throttling."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from botocore.exceptions import ClientError
from pynamodb.exceptions import QueryError, UpdateError

from tests.support.fakes import FakeClock, FakeObjectStore, FakeXimilar, SentRequest, error
from tests.unit.given import a_submitted_request, image_of, request_of, submission_id
from ximilar_async.adapters.dynamodb import ControlStore, ImageStore, RequestStore, Storage
from ximilar_async.adapters.dynamodb.mapping import epoch
from ximilar_async.services.errors import XimilarThrottled, XimilarTransientError
from ximilar_async.services.result_recorder import ResultRecorder
from ximilar_async.services.submitter import Submitter
from ximilar_async.services.sweeper import HOLD, RETRY_AFTER_THROTTLE, RUN_CALL_ATTEMPTS, Sweeper
from ximilar_async.values.entities import DUE_INDEX_LAG, DUE_PASSED_MAX, FULL_PASS_EVERY, DueScan, TrackedRequest
from ximilar_async.values.statuses import Status
from ximilar_async.values.uploads import Upload
from ximilar_async.values.ximilar_payloads import parse_outcome

PAST_FIRST_CHECK = timedelta(minutes=3)  # the first check is due 120 s after submission


def plenty_of_time() -> int:
    return 60_000


@pytest.fixture
def submitted(submitter: Submitter, objects: FakeObjectStore, ximilar: FakeXimilar) -> tuple[SentRequest, list[Upload]]:
    """A request of two images Ximilar accepted, that no webhook has finished."""
    return a_submitted_request(submitter, objects, ximilar, "incoming/flows/a.png", "incoming/flows/b.png")


@pytest.fixture
def sent(submitted: tuple[SentRequest, list[Upload]]) -> SentRequest:
    return submitted[0]


def several_requests(
    submitter: Submitter, objects: FakeObjectStore, ximilar: FakeXimilar, count: int
) -> list[SentRequest]:
    """`count` requests of one image each (the upscaler takes one record a request)."""
    return [a_submitted_request(submitter, objects, ximilar, f"incoming/photo-{n}.png")[0] for n in range(count)]


def pending_requests_due(
    submitter: Submitter, objects: FakeObjectStore, ximilar: FakeXimilar, clock: FakeClock, count: int
) -> list[SentRequest]:
    """`count` requests Ximilar still reports PROCESSING, past their first check time."""
    requests = several_requests(submitter, objects, ximilar, count)
    for sent in requests:
        ximilar.set_state(sent.id, "PROCESSING")
    clock.advance(PAST_FIRST_CHECK)
    return requests


def seconds_until(moment: int | None, now: datetime) -> int:
    assert moment is not None, "the request is not due at all"
    return moment - epoch(now)


def test_a_request_not_yet_due_is_not_checked(sweeper: Sweeper, sent: SentRequest, ximilar: FakeXimilar) -> None:
    outcome = sweeper.sweep(plenty_of_time)

    assert (outcome.taken, outcome.api_calls) == (0, 0)
    assert ("status", sent.id) not in ximilar.calls


def test_a_pending_request_is_checked_again_later_with_growing_backoff(
    sweeper: Sweeper, sent: SentRequest, ximilar: FakeXimilar, storage: Storage, clock: FakeClock
) -> None:
    # Given a request Ximilar is still processing, past its first check
    ximilar.set_state(sent.id, "PROCESSING")
    clock.advance(PAST_FIRST_CHECK)

    # When the sweeper runs, and again when the next check is due
    first = sweeper.sweep(plenty_of_time)
    after_first = request_of(storage, sent)
    first_wait = seconds_until(after_first.next_check_at, clock())
    clock.advance(seconds=first_wait)
    second = sweeper.sweep(plenty_of_time)
    after_second = request_of(storage, sent)
    second_wait = seconds_until(after_second.next_check_at, clock())

    # Then it is rescheduled each time with Ximilar's state, each wait twice the last (jittered over its upper half)
    assert (first.rescheduled, first.by_state, first.api_calls) == (1, {"PROCESSING": 1}, 1)
    assert (after_first.status, after_first.ximilar_status, after_first.checks) == (Status.CREATED, "PROCESSING", 1)
    assert second.rescheduled == 1
    assert after_second.checks == 2
    assert 120 <= first_wait <= 240
    assert 240 <= second_wait <= 480


def test_a_request_done_at_ximilar_whose_webhook_was_lost_is_recorded_from_its_details(
    sweeper: Sweeper,
    submitted: tuple[SentRequest, list[Upload]],
    ximilar: FakeXimilar,
    storage: Storage,
    clock: FakeClock,
) -> None:
    sent, uploads = submitted
    details = ximilar.finish(sent.id)
    clock.advance(PAST_FIRST_CHECK)

    outcome = sweeper.sweep(plenty_of_time)

    assert (outcome.recorded, outcome.by_state, outcome.api_calls) == (2, {"DONE": 1}, 2)
    assert [image_of(storage, upload).result for upload in uploads] == details["response"]["records"]
    assert storage.images.unfinished_images(request_of(storage, sent)) == {}
    assert sweeper.sweep(plenty_of_time).taken == 0  # nothing left due
    # When its hold ends, a run finds it finished by its images: no call, no write
    clock.advance(HOLD)
    later = sweeper.sweep(plenty_of_time)
    assert (later.found_finished, later.taken, later.api_calls) == (1, 0, 0)
    assert sweeper.sweep(plenty_of_time).items_read == 1  # its index entry, inside the lag margin; not the request


def test_a_request_pending_past_the_maximum_age_ends_failed(
    sweeper: Sweeper,
    submitted: tuple[SentRequest, list[Upload]],
    ximilar: FakeXimilar,
    storage: Storage,
    clock: FakeClock,
) -> None:
    sent, uploads = submitted
    ximilar.set_state(sent.id, "PROCESSING")
    clock.advance(minutes=61)  # MAX_REQUEST_AGE_SECONDS 3600

    outcome = sweeper.sweep(plenty_of_time)

    reason = "not finished after 3600 s (last state PROCESSING)"
    assert (outcome.failed_too_old, outcome.rescheduled) == (1, 0)
    assert [(image_of(storage, u).status, image_of(storage, u).status_reason) for u in uploads] == [
        (Status.FAILED, reason)
    ] * 2
    request = request_of(storage, sent)
    assert (request.status, request.status_reason, request.next_check_at) == (Status.FAILED, reason, None)


def test_a_request_ximilar_does_not_know_ends_failed(
    sweeper: Sweeper,
    submitted: tuple[SentRequest, list[Upload]],
    ximilar: FakeXimilar,
    storage: Storage,
    clock: FakeClock,
) -> None:
    sent, uploads = submitted
    ximilar.forget(sent.id)
    clock.advance(PAST_FIRST_CHECK)

    sweeper.sweep(plenty_of_time)

    reason = "Ximilar does not know the request"
    assert {(image_of(storage, u).status, image_of(storage, u).status_reason) for u in uploads} == {
        (Status.FAILED, reason)
    }
    request = request_of(storage, sent)
    assert (request.status, request.ximilar_status, request.status_reason) == (Status.FAILED, "NOT_FOUND", reason)


def test_a_throttled_check_stops_the_run_and_retries_that_request_a_minute_later(
    sweeper: Sweeper,
    submitter: Submitter,
    objects: FakeObjectStore,
    ximilar: FakeXimilar,
    storage: Storage,
    clock: FakeClock,
) -> None:
    # Given three requests due, and Ximilar throttling the next call
    requests = several_requests(submitter, objects, ximilar, 3)
    clock.advance(PAST_FIRST_CHECK)
    ximilar.fail_next(XimilarThrottled("throttled", 429))

    # When the sweeper runs
    outcome = sweeper.sweep(plenty_of_time)

    # Then it stops after that one call; the throttled request waits a minute, the others stay due
    assert (outcome.stopped, outcome.taken, outcome.rescheduled) == ("throttled", 1, 0)
    assert [method for method, _ in ximilar.calls if method != "submit"] == ["status"]
    next_checks = sorted(seconds_until(request_of(storage, sent).next_check_at, clock()) for sent in requests)
    assert next_checks[-1] == RETRY_AFTER_THROTTLE.total_seconds()
    assert all(wait <= 0 for wait in next_checks[:-1])


def test_ximilar_unavailable_during_a_check_reschedules_the_request_and_the_run_goes_on(
    sweeper: Sweeper,
    submitter: Submitter,
    objects: FakeObjectStore,
    ximilar: FakeXimilar,
    clock: FakeClock,
) -> None:
    several_requests(submitter, objects, ximilar, 2)
    clock.advance(PAST_FIRST_CHECK)
    ximilar.fail_next(XimilarTransientError("503: unavailable", 503))

    outcome = sweeper.sweep(plenty_of_time)

    assert (outcome.stopped, outcome.taken, outcome.rescheduled) == (None, 2, 2)


def test_a_webhook_finishing_a_request_during_its_check_is_counted_and_the_run_goes_on(
    sweeper: Sweeper,
    submitter: Submitter,
    objects: FakeObjectStore,
    ximilar: FakeXimilar,
    storage: Storage,
    clock: FakeClock,
) -> None:
    # Given two pending requests due, and a webhook that finishes the first one checked while /status answers
    requests = several_requests(submitter, objects, ximilar, 2)
    by_id = {sent.id: sent for sent in requests}
    clock.advance(PAST_FIRST_CHECK)
    finished: list[str] = []

    def webhook_finishes_it(request_id: str) -> None:
        if not finished:
            finished.append(request_id)
            storage.requests.finish_request(
                submission_id(by_id[request_id]), Status.DONE, clock(), request_id=request_id
            )

    ximilar.during_status = webhook_finishes_it

    # When the sweeper runs
    outcome = sweeper.sweep(plenty_of_time)

    # Then the lost race is counted (the reschedule did not apply), and the other request is still checked
    assert (outcome.taken, outcome.finished_meanwhile, outcome.rescheduled, outcome.stopped) == (2, 1, 1, None)
    (done,) = finished
    assert request_of(storage, by_id[done]).status is Status.DONE
    assert request_of(storage, by_id[done]).next_check_at is None


def test_a_run_takes_no_work_this_close_to_the_lambda_deadline(
    sweeper: Sweeper, sent: SentRequest, ximilar: FakeXimilar, clock: FakeClock
) -> None:
    clock.advance(PAST_FIRST_CHECK)

    outcome = sweeper.sweep(lambda: 14_999)  # under DEADLINE_MARGIN_MS

    assert (outcome.stopped, outcome.taken, outcome.api_calls) == ("deadline", 0, 0)
    assert ("status", sent.id) not in ximilar.calls


def test_a_run_stops_before_its_api_call_budget_is_exceeded(
    sweeper: Sweeper,
    submitter: Submitter,
    objects: FakeObjectStore,
    ximilar: FakeXimilar,
    clock: FakeClock,
) -> None:
    # Given five pending requests due and a budget of four calls a run (two kept for a request's worst case)
    pending_requests_due(submitter, objects, ximilar, clock, 5)
    budgeted = replace(sweeper, settings=replace(sweeper.settings, max_api_calls_per_run=4))

    # When the sweeper runs
    outcome = budgeted.sweep(plenty_of_time)

    # Then it checks three (1 + 1 + 1, a fourth might need 2 more) and says why it stopped
    assert (outcome.stopped, outcome.taken, outcome.api_calls) == ("budget", 3, 3)


def test_a_request_ximilar_never_took_is_submitted_again_once_its_submit_timed_out(
    sweeper: Sweeper,
    submitter: Submitter,
    objects: FakeObjectStore,
    ximilar: FakeXimilar,
    storage: Storage,
    clock: FakeClock,
) -> None:
    # Given uploads Ximilar did not take (503), and no redelivery of their messages
    uploads = [objects.put(f"incoming/flows/stuck-{n}.png", b"\x89PNG" + bytes(20)) for n in range(2)]
    ximilar.fail_next(XimilarTransientError("503: unavailable", 503), on=["submit"])
    submitter.submit_uploads(uploads)

    # When the sweeper runs past the submitting timeout (900 s)
    clock.advance(minutes=16)
    outcome = sweeper.sweep(plenty_of_time)

    # Then the same request is submitted again, with the same record ids
    assert outcome.resubmitted_images == 2
    (sent,) = ximilar.sent
    assert sorted(sent.record_ids) == sorted(upload.record_id for upload in uploads)
    request = request_of(storage, sent)
    assert (request.status, request.request_id, request.submit_attempts) == (Status.CREATED, sent.id, 2)


def test_images_whose_download_failed_are_submitted_again_in_a_new_request(
    sweeper: Sweeper,
    submitted: tuple[SentRequest, list[Upload]],
    ximilar: FakeXimilar,
    recorder: ResultRecorder,
    storage: Storage,
    clock: FakeClock,
) -> None:
    # Given a DONE request one of whose images failed to download
    sent, (fine, failed) = submitted
    recorder.record(
        submission_id(sent),
        parse_outcome(ximilar.finish(sent.id, {failed.record_id: error(500, "Image download failed")})),
    )

    # When the sweeper runs after the retry delay
    clock.advance(minutes=2)
    outcome = sweeper.sweep(plenty_of_time)

    # Then that image alone goes out again, in a new request
    assert outcome.resubmitted_images == 1
    again = ximilar.sent[-1]
    assert (again.id != sent.id, again.record_ids) == (True, [failed.record_id])
    assert (image_of(storage, failed).status, image_of(storage, failed).attempts) == (Status.SUBMITTING, 2)
    assert image_of(storage, fine).status is Status.DONE
    assert request_of(storage, sent).retry_record_ids == frozenset()


class Died(BaseException):
    """The function's process ends here (a timeout, an out-of-memory kill): nothing after it runs."""


def test_a_resubmission_whose_sweeper_died_after_its_claims_is_still_submitted(
    sweeper: Sweeper,
    submitted: tuple[SentRequest, list[Upload]],
    ximilar: FakeXimilar,
    recorder: ResultRecorder,
    storage: Storage,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a DONE request one of whose images failed to download, and a sweeper run that dies once it
    # has claimed that image for a new request, before posting it (no SQS message stands behind it)
    sent, (_, failed) = submitted
    recorder.record(
        submission_id(sent),
        parse_outcome(ximilar.finish(sent.id, {failed.record_id: error(500, "Image download failed")})),
    )
    clock.advance(minutes=2)
    with monkeypatch.context() as patched:

        def die(*_: object, **__: object) -> None:
            raise Died

        patched.setattr(Submitter, "post_all", die)
        with pytest.raises(Died):
            sweeper.sweep(plenty_of_time)
    claimed = image_of(storage, failed)
    assert (claimed.status, claimed.submission_id != submission_id(sent)) == (Status.SUBMITTING, True)

    # When the sweeper runs after the submitting timeout
    clock.advance(seconds=sweeper.settings.submitting_timeout_seconds + HOLD.total_seconds())
    sweeper.sweep(plenty_of_time)

    # Then the image claimed for the new request goes out in it: it was written before the claims
    again = ximilar.sent[-1]
    assert (again.id != sent.id, again.record_ids) == (True, [failed.record_id])
    assert request_of(storage, again).submission_id == claimed.submission_id


def test_a_run_stopped_by_its_budget_leaves_the_rest_to_the_next_run(
    sweeper: Sweeper, submitter: Submitter, objects: FakeObjectStore, ximilar: FakeXimilar, clock: FakeClock
) -> None:
    # Given five pending requests due, and a run that stops at its budget after three
    requests = pending_requests_due(submitter, objects, ximilar, clock, 5)
    first = replace(sweeper, settings=replace(sweeper.settings, max_api_calls_per_run=4)).sweep(plenty_of_time)
    assert (first.stopped, first.taken) == ("budget", 3)

    # When the next run comes, a minute later
    clock.advance(timedelta(minutes=1))
    second = sweeper.sweep(plenty_of_time)

    # Then it takes the two the first did not reach: its marks stopped before them
    assert second.taken == 2
    assert {call for call in ximilar.calls if call[0] == "status"} == {("status", sent.id) for sent in requests}


def test_requests_their_webhook_finished_are_read_once_and_never_written_again(
    sweeper: Sweeper,
    submitter: Submitter,
    objects: FakeObjectStore,
    ximilar: FakeXimilar,
    recorder: ResultRecorder,
    storage: Storage,
    clock: FakeClock,
) -> None:
    # Given three requests whose webhooks recorded every image
    requests = several_requests(submitter, objects, ximilar, 3)
    for sent in requests:
        recorder.record(submission_id(sent), parse_outcome(ximilar.finish(sent.id)))
    written = {sent.id: request_of(storage, sent) for sent in requests}

    # When runs come from their first check time on
    clock.advance(timedelta(seconds=sweeper.settings.first_check_delay_seconds))
    first = sweeper.sweep(plenty_of_time)
    later = []
    for step in (timedelta(seconds=20), timedelta(minutes=10), timedelta(minutes=1)):
        clock.advance(step)
        later.append(sweeper.sweep(plenty_of_time))

    # Then the first finds them finished by their images, without a call or a write; the next runs read
    # their index entries while inside the margin behind the last run's mark, and never the requests
    assert (first.found_finished, first.taken, first.api_calls) == (3, 0, 0)
    assert {sent.id: request_of(storage, sent) for sent in requests} == written
    assert [(run.found_finished, run.items_read) for run in later] == [(0, 3), (0, 3), (0, 0)]


def test_an_entry_that_shows_on_the_index_late_is_still_found_inside_the_margin(
    sweeper: Sweeper, sent: SentRequest, ximilar: FakeXimilar, storage: Storage, clock: FakeClock
) -> None:
    # Given a run that read every shard through now
    ximilar.set_state(sent.id, "PROCESSING")
    clock.advance(PAST_FIRST_CHECK)
    mark = epoch(clock())
    request = request_of(storage, sent)
    storage.requests.take_due(request, clock() + timedelta(hours=1))  # out of this run's sight
    assert sweeper.sweep(plenty_of_time).items_read == 0

    # When an entry due before that run's reading shows on the index only now (a GSI lags its table)
    moved = request_of(storage, sent)
    assert storage.requests.take_due(moved, datetime.fromtimestamp(mark - DUE_INDEX_LAG + 5, UTC))
    clock.advance(timedelta(minutes=1))
    outcome = sweeper.sweep(plenty_of_time)

    # Then the next run reads back far enough to take it
    assert (outcome.taken, outcome.by_state) == (1, {"PROCESSING": 1})


def test_the_entries_kept_as_passed_are_bounded_the_newest_kept() -> None:
    scan = DueScan(marks={0: 10_000}, read_through={0: 10_000})
    scan.passed = {f"request-{n:05d}": 10_000 - n % 20 for n in range(DUE_PASSED_MAX + 500)}
    scan.passed["too-old"] = 10_000 - DUE_INDEX_LAG - 1

    kept = scan.next_passed(lambda _: 0)

    assert len(kept) == DUE_PASSED_MAX
    assert "too-old" not in kept
    assert min(kept.values()) >= max(scan.passed.values()) - 19
    assert sorted(kept.values(), reverse=True) == sorted(scan.passed.values(), reverse=True)[:DUE_PASSED_MAX]


def test_a_run_stopped_by_the_deadline_leaves_the_rest_to_the_next_run(
    sweeper: Sweeper, submitter: Submitter, objects: FakeObjectStore, ximilar: FakeXimilar, clock: FakeClock
) -> None:
    # Given five pending requests due, and a run whose time runs out after two
    requests = pending_requests_due(submitter, objects, ximilar, clock, 5)
    left = iter([60_000, 60_000])
    first = sweeper.sweep(lambda: next(left, 1_000))
    assert (first.stopped, first.taken) == ("deadline", 2)

    # When the next run comes, a minute later
    clock.advance(timedelta(minutes=1))
    second = sweeper.sweep(plenty_of_time)

    # Then it takes the three the first did not
    assert second.taken == 3
    assert {call for call in ximilar.calls if call[0] == "status"} == {("status", sent.id) for sent in requests}


def test_a_request_due_far_ahead_is_kept_past_its_check(storage: Storage, sent: SentRequest, clock: FakeClock) -> None:
    far = clock() + timedelta(days=90)  # beyond the retention period (30 days here)
    request = request_of(storage, sent)

    assert storage.requests.take_due(request, far)

    item = storage.tables.requests.get(submission_id(sent))
    assert item.expires_at is not None and item.expires_at >= far + storage.requests.request_retention


def test_a_request_whose_finish_cannot_be_read_is_swept_by_ximilars_answer_and_the_run_goes_on(
    sweeper: Sweeper,
    submitted: tuple[SentRequest, list[Upload]],
    ximilar: FakeXimilar,
    storage: Storage,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent, uploads = submitted
    details = ximilar.finish(sent.id)
    clock.advance(PAST_FIRST_CHECK)

    def unreadable(self: ImageStore, request: TrackedRequest) -> bool:
        raise RuntimeError("throttled after every retry")

    monkeypatch.setattr(ImageStore, "request_finished", unreadable)
    outcome = sweeper.sweep(plenty_of_time)

    assert (outcome.recorded, outcome.errors, outcome.api_calls) == (2, 0, 2)
    assert [image_of(storage, upload).result for upload in uploads] == details["response"]["records"]


# --- the due index further behind than the margin, and a run's own reads failing ---------------------


def throttled(operation: str = "Query") -> QueryError:
    """What pynamodb raises once botocore's retries of a throttled call ran out."""
    answer = {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "throttled"}}
    return QueryError("Failed to query items", ClientError(answer, operation))  # type: ignore[arg-type]


def test_an_entry_that_shows_on_the_index_later_than_the_margin_is_found_by_the_next_full_pass(
    sweeper: Sweeper, sent: SentRequest, ximilar: FakeXimilar, storage: Storage, clock: FakeClock
) -> None:
    # Given a run that read every shard through now (the first run, which also began a full pass)
    clock.advance(PAST_FIRST_CHECK)
    request = request_of(storage, sent)
    storage.requests.take_due(request, clock() + timedelta(days=30))  # out of this run's sight
    mark = epoch(clock())
    assert sweeper.sweep(plenty_of_time).items_read == 0

    # When its entry, due long before that run's reading, shows on the index only now: later than the
    # margin (no bound is promised), and Ximilar finished it while its webhook was lost
    moved = request_of(storage, sent)
    assert storage.requests.take_due(moved, datetime.fromtimestamp(mark - DUE_INDEX_LAG - 600, UTC))
    details = ximilar.finish(sent.id)
    hourly = []
    for _ in range(23):
        clock.advance(timedelta(hours=1))
        hourly.append(sweeper.sweep(plenty_of_time))
    clock.advance(timedelta(hours=1, minutes=1))
    after_a_day = sweeper.sweep(plenty_of_time)

    # Then the runs within the day do not see it, and the first run after FULL_PASS_EVERY records it
    assert FULL_PASS_EVERY == 24 * 3600
    assert [run.taken for run in hourly] == [0] * 23
    assert (after_a_day.taken, after_a_day.recorded) == (1, len(details["response"]["records"]))


def test_a_full_pass_reads_what_the_run_left_over_and_resumes_in_the_next_run(
    sweeper: Sweeper,
    submitter: Submitter,
    objects: FakeObjectStore,
    ximilar: FakeXimilar,
    storage: Storage,
    clock: FakeClock,
) -> None:
    # Given three finished requests whose entries all became visible late, below every run's margin
    requests = several_requests(submitter, objects, ximilar, 3)
    clock.advance(PAST_FIRST_CHECK)
    sweeper.sweep(plenty_of_time)  # the first run: marks through now, a full pass begun and done
    late = datetime.fromtimestamp(epoch(clock()) - DUE_INDEX_LAG - 600, UTC)
    for sent in requests:
        storage.requests.take_due(request_of(storage, sent), late)
        ximilar.finish(sent.id)

    # When the full pass is due, and the first run's time runs out after one request
    clock.advance(timedelta(seconds=FULL_PASS_EVERY + 60))
    left = iter([60_000])
    first = sweeper.sweep(lambda: next(left, 1_000))
    clock.advance(timedelta(minutes=1))
    second = sweeper.sweep(plenty_of_time)

    # Then the next run resumes the pass where the first stopped, and every request is recorded once
    assert (first.stopped, first.taken, second.taken) == ("deadline", 1, 2)
    assert first.recorded + second.recorded == len(requests)


def test_a_run_whose_last_sweep_cannot_be_read_ends_cleanly_after_its_retries(
    sweeper: Sweeper, storage: Storage, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a last-sweep item that cannot be read, after the client's retries, for the whole run
    pauses: list[float] = []
    sweeper.sleep = pauses.append

    def unreadable(self: ControlStore) -> DueScan:
        raise throttled("GetItem")

    monkeypatch.setattr(ControlStore, "due_scan", unreadable)
    outcome = sweeper.sweep(plenty_of_time)

    # Then the run raises nothing, tries within its deadline, counts it, and writes nothing
    assert (outcome.stopped, outcome.read_failures, len(pauses)) == ("storage", 1, RUN_CALL_ATTEMPTS - 1)
    assert storage.control.last_sweep() is None


def test_a_due_index_read_that_fails_is_read_again_where_it_was(
    sweeper: Sweeper,
    submitter: Submitter,
    objects: FakeObjectStore,
    ximilar: FakeXimilar,
    storage: Storage,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given three pending requests due, and the read of the second's item failing once
    requests = pending_requests_due(submitter, objects, ximilar, clock, 3)
    pauses: list[float] = []
    sweeper.sleep = pauses.append
    real = RequestStore.get_request
    reads: list[str] = []

    def flaky(self: RequestStore, submission: str) -> TrackedRequest | None:
        reads.append(submission)
        if len(reads) == 2:
            raise throttled("GetItem")
        return real(self, submission)

    monkeypatch.setattr(RequestStore, "get_request", flaky)
    outcome = sweeper.sweep(plenty_of_time)

    # Then the run backs off once, reads on from that entry, and checks every request once
    assert (outcome.read_failures, outcome.taken, len(pauses)) == (0, 3, 1)
    assert sorted(call for call in ximilar.calls if call[0] == "status") == sorted(
        ("status", sent.id) for sent in requests
    )


def test_a_due_index_that_cannot_be_read_ends_the_run_with_its_marks_where_the_reading_got(
    sweeper: Sweeper,
    submitter: Submitter,
    objects: FakeObjectStore,
    ximilar: FakeXimilar,
    storage: Storage,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given pending requests due, and the due index unreadable (after the client's retries) for a run
    requests = pending_requests_due(submitter, objects, ximilar, clock, 3)
    sweeper.sleep = lambda _: None
    with monkeypatch.context() as patched:
        patched.setattr(RequestStore, "due_requests", lambda *_: (_ for _ in ()).throw(throttled()))
        failed = sweeper.sweep(plenty_of_time)

    # When the next run can read it
    clock.advance(timedelta(minutes=1))
    after = sweeper.sweep(plenty_of_time)

    # Then the failed run ended cleanly having moved no mark past what it read, and the next takes all
    assert (failed.stopped, failed.read_failures, failed.taken) == ("storage", 1, 0)
    assert after.taken == len(requests)


def test_dynamodb_failing_a_requests_sweep_is_not_counted_against_the_request(
    sweeper: Sweeper,
    sent: SentRequest,
    ximilar: FakeXimilar,
    storage: Storage,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a pending request due, whose reschedule DynamoDB throttles past the client's retries
    ximilar.set_state(sent.id, "PROCESSING")
    clock.advance(PAST_FIRST_CHECK)

    def busy(*_: object, **__: object) -> bool:
        raise UpdateError("Failed to update item", throttled("UpdateItem").cause)

    monkeypatch.setattr(RequestStore, "reschedule", busy)
    outcome = sweeper.sweep(plenty_of_time)

    # Then it is counted as DynamoDB's failure, not the request's: no step towards giving it up
    request = request_of(storage, sent)
    assert (outcome.storage_errors, outcome.errors, request.sweep_failures) == (1, 0, 0)
    assert seconds_until(request.next_check_at, clock()) == HOLD.total_seconds()
