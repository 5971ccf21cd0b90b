"""The sweeper: no request stays pending. Runs on a schedule, reads only what is due.

For each due request (from the sparse, sharded `due` index, read from where the last run got to; shards
in random order so none starves):
- CREATED, none of its images waiting for it (the webhook recorded them all and had nothing else to
  write): finished; passed over without a call or a write;
- CREATED/PROCESSING at Ximilar: ask `/status`; DONE -> fetch the details and record them through the
  same path as the webhook; still pending -> check again later (exponential backoff with jitter);
  too old -> FAILED with the reason, request and images;
- a state outside the reference: terminal ones (FAILED, NOT_SUPPORTED) end the images FAILED with the
  state as reason; API_LIMIT_EXCEEDED submits the images again; unknown ones wait like pending ones;
- SUBMITTING past its timeout (submit died before or during the POST): submitted again through the
  submit code path, same `_id`s, a bounded number of times;
- DONE with transient ERROR images (their URL expired, the download failed): those images are
  submitted again with fresh URLs, a bounded number of times, then FAILED;
- DONE at Ximilar but some images without a record in its answer (kept due by the recorder): the
  details are fetched again, a bounded number of times (`result_recorder.MAX_INCOMPLETE_ANSWERS`).

A sweep survives any one request: an unexpected error (a bug, a DynamoDB refusal) is logged with the
request's ids, counted, and the request is checked again later; after `MAX_SWEEP_FAILURES` of them it
ends FAILED with the error as reason. Should even that bookkeeping fail, the run goes on: the hold
taken on the request brings it back after `HOLD`.

Each request is taken with a conditional write before any call, so overlapping runs never both work
on it. A run stops taking work before the Lambda deadline, at its API call budget, and on a 429.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Final, TypeVar

from ximilar_async.adapters.dynamodb.writes import is_transient_storage_error
from ximilar_async.services.errors import XimilarAuthError, XimilarNotFound, XimilarThrottled, XimilarTransientError
from ximilar_async.services.ports import DueRequests, ImageResults, SubmissionPause, SweepLog, XimilarApi
from ximilar_async.services.resubmission import Resubmission, ResubmissionThrottled
from ximilar_async.services.result_recorder import ResultRecorder
from ximilar_async.services.submitter import Submitter
from ximilar_async.settings import SweeperSettings
from ximilar_async.values import schedule
from ximilar_async.values.clock import Clock, utc_now
from ximilar_async.values.entities import DueScan, TrackedRequest
from ximilar_async.values.statuses import Status, XimilarStateKind, classify_ximilar_state
from ximilar_async.values.sweeps import SweepOutcome
from ximilar_async.values.ximilar_payloads import PayloadError, RequestOutcome, parse_outcome

logger = logging.getLogger(__name__)

HOLD: Final = timedelta(minutes=5)  # how long a run holds a request it took (longer than any one request's work)
RETRY_AFTER_THROTTLE: Final = timedelta(minutes=1)
MAX_SUBMIT_ATTEMPTS: Final = 5  # submissions of one request before its images end FAILED
DEADLINE_MARGIN_MS: Final = 15_000  # stop taking work this long before the Lambda deadline
CALLS_PER_REQUEST: Final = 2  # at most: /status then the details
MAX_SWEEP_FAILURES: Final = 5  # sweeps of one request ending in an unexpected error before it ends FAILED
MAX_ERROR_CHARS: Final = 500  # of an exception's message kept in a reason
# The run's own reads and writes (the last sweep, the due index, its marks) are tried this many times,
# backing off from this many seconds, within the deadline; then the run ends with what it did.
RUN_CALL_ATTEMPTS: Final = 4
RUN_CALL_BACKOFF_SECONDS: Final = 0.5


T = TypeVar("T")


@dataclass
class Sweeper:
    requests: DueRequests
    images: ImageResults
    sweep_log: SweepLog
    ximilar: XimilarApi
    recorder: ResultRecorder
    submitter: Submitter
    settings: SweeperSettings
    clock: Clock = utc_now
    rng: random.Random = field(default_factory=random.Random)
    sleep: Callable[[float], None] = time.sleep  # between a run's own reads that failed
    guard: SubmissionPause | None = None  # the spend guard, asked before submitting again; None: unguarded
    deadline: float | None = field(default=None, init=False)  # of the current run, time.monotonic()
    # Why submission is paused, read once per run when first needed ("" until read; None: not paused).
    _pause: str | None = field(default="", init=False)
    _resubmission: Resubmission = field(init=False)

    def __post_init__(self) -> None:
        self._resubmission = Resubmission(
            self.images, self.requests, self.recorder, self.submitter, self.settings.records_per_request, self.clock
        )

    def sweep(self, remaining_millis: Callable[[], int]) -> SweepOutcome:
        outcome = SweepOutcome()
        scan = self._with_retries(self.sweep_log.due_scan, remaining_millis, outcome, "reading the last sweep")
        if scan is None:
            return outcome  # nothing read, so no mark to move
        shards = list(range(self.settings.index_shards))
        self.rng.shuffle(shards)
        now = self.clock()
        self._pause = ""
        for request in self._due_requests(shards, now, scan, remaining_millis, outcome):
            left = remaining_millis()
            if left < DEADLINE_MARGIN_MS:
                outcome.stopped = "deadline"
                break
            # The client's retries end before the run's margin: a run is never killed in a backoff.
            self.deadline = time.monotonic() + (left - DEADLINE_MARGIN_MS) / 1000
            self.ximilar.set_deadline(self.deadline)
            if outcome.api_calls + CALLS_PER_REQUEST > self.settings.max_api_calls_per_run:
                outcome.stopped = "budget"
                break
            if self._finished_by_webhook(request):
                outcome.found_finished += 1
                continue
            if not self._take(request, outcome):
                continue  # another run has it (or the write failed: the entry is read again next run)
            outcome.taken += 1
            if not self._sweep_isolated(request, outcome):
                outcome.stopped = "throttled"
                break
        outcome.items_read = scan.items_read
        # For `xasync status`: one small item, overwritten every run (it also shows the sweeper is alive),
        # which also keeps where the next run starts reading the due index.
        summary = {name: value for name, value in asdict(outcome).items() if name != "latencies"}
        counts = {key: value for key, value in summary.items() if value is not None}

        def keep() -> bool:
            self.sweep_log.record_sweep(counts, self.clock(), scan)
            return True

        self._with_retries(keep, remaining_millis, outcome, "keeping where the reading got to")
        return outcome

    def _with_retries(
        self, call: Callable[[], T], remaining_millis: Callable[[], int], outcome: SweepOutcome, what: str
    ) -> T | None:
        """`call`, tried again within the run's deadline; None when it still fails (counted, logged)."""
        for attempt in range(1, RUN_CALL_ATTEMPTS + 1):
            try:
                return call()
            except Exception as error:
                if not self._may_try_again(attempt, remaining_millis, outcome, what, error):
                    return None
        return None

    def _due_requests(
        self,
        shards: list[int],
        now: datetime,
        scan: DueScan,
        remaining_millis: Callable[[], int],
        outcome: SweepOutcome,
    ) -> Iterator[TrackedRequest]:
        """The due requests; a read that fails (after the client's retries) is read again, where it was,
        within the run's deadline, then the run ends with what it read (its marks go no further)."""
        for attempt in range(1, RUN_CALL_ATTEMPTS + 1):
            try:
                yield from self.requests.due_requests(shards, now, scan)
                return
            except Exception as error:
                if not self._may_try_again(attempt, remaining_millis, outcome, "reading the due index", error):
                    return

    def _may_try_again(
        self, attempt: int, remaining_millis: Callable[[], int], outcome: SweepOutcome, what: str, error: Exception
    ) -> bool:
        """After a run-level call failed: back off and say True while attempts and time are left; else
        count it, log it, and say False."""
        pause = RUN_CALL_BACKOFF_SECONDS * 2 ** (attempt - 1) * (0.5 + self.rng.random() / 2)
        if attempt < RUN_CALL_ATTEMPTS and remaining_millis() - pause * 1000 > DEADLINE_MARGIN_MS:
            logger.warning(f"{what} failed; trying again", extra={"error_type": type(error).__name__})
            self.sleep(pause)
            return True
        logger.error(f"{what} failed; the run ends here", exc_info=error)
        outcome.read_failures += 1
        outcome.stopped = "storage"
        return False

    def _take(self, request: TrackedRequest, outcome: SweepOutcome) -> bool:
        """`take_due`; a write that fails (after the client's retries) takes nothing: the entry stays due."""
        try:
            return self.requests.take_due(request, self.clock() + HOLD)
        except Exception as error:
            outcome.storage_errors += 1
            logger.warning("taking a due request failed", extra=self._context(request, error))
            return False

    def _finished_by_webhook(self, request: TrackedRequest) -> bool:
        """A request Ximilar has, none of whose images waits for it: its webhook recorded them all, and
        left the item as it was (`ResultRecorder`). Nothing to write: the run's marks pass over it.
        A read that fails (after the client's retries) is no answer: the request is swept like any other,
        by Ximilar's answer, rather than end the run and stop every run after it at the same request."""
        if request.status is not Status.CREATED or request.retry_record_ids:
            return False
        try:
            return self.images.request_finished(request)
        except Exception as error:
            logger.warning(
                "reading whether a request is finished failed; sweeping it", extra=self._context(request, error)
            )
            return False

    def _sweep_isolated(self, request: TrackedRequest, outcome: SweepOutcome) -> bool:
        """Sweep one request; nothing it raises stops the run. False when Ximilar throttles (stop the run)."""
        try:
            try:
                self._sweep_one(request, outcome)
            except ResubmissionThrottled:
                return False  # the submitter already handed the request on
            except XimilarThrottled:
                self._reschedule(request, self.clock() + RETRY_AFTER_THROTTLE, None, outcome)
                return False
            except XimilarTransientError as error:
                logger.warning("Ximilar unavailable; checking again later", extra=self._context(request, error))
                self._check_later(request, None, outcome)
        except XimilarAuthError:
            raise  # the token is wrong for every request: fail the run loudly, blame no request
        except Exception as error:  # one request's failure must not end the others' sweep
            if is_transient_storage_error(error):
                # DynamoDB busy or unsure (after the client's retries): not the request's fault, so not
                # counted against it; the hold taken on it brings it back after `HOLD`.
                outcome.storage_errors += 1
                logger.warning("DynamoDB failed while sweeping a request", extra=self._context(request, error))
                return True
            outcome.errors += 1
            logger.exception("sweeping a request failed", extra=self._context(request, error))
            try:
                self._after_error(request, error, outcome)
            except Exception as bookkeeping:  # the hold taken by take_due brings the request back later
                logger.exception(
                    "recording a failed sweep failed; the request comes back after its hold",
                    extra=self._context(request, bookkeeping),
                )
        return True

    def _after_error(self, request: TrackedRequest, error: Exception, outcome: SweepOutcome) -> None:
        """Count the failure on the request and check it again later; give up after MAX_SWEEP_FAILURES."""
        failures = request.sweep_failures + 1
        cause = f"{type(error).__name__}: {str(error)[:MAX_ERROR_CHARS]}"
        if failures < MAX_SWEEP_FAILURES:
            first = timedelta(seconds=self.settings.first_check_delay_seconds)
            check_at = self.clock() + schedule.next_check_delay(first, failures, self.rng)
            reason = f"sweep failed ({failures} of {MAX_SWEEP_FAILURES}): {cause}"
            if not self.requests.note_sweep_failure(request.submission_id, reason, self.clock(), check_at):
                outcome.finished_meanwhile += 1
            return
        reason = f"gave up after {failures} failed sweeps: {cause}"
        outcome.failed_after_errors += 1
        if request.status is Status.DONE:
            # DONE is never undone: what still waited for it (ERROR images to retry) ends FAILED instead.
            waiting = {
                record_id: uri for record_id, uri in request.images.items() if record_id in request.retry_record_ids
            }
            logger.warning("retries given up", extra={**self._context(request), "reason": reason})
            self.recorder.fail_images(waiting, reason, self.clock(), from_statuses=(Status.ERROR,))
            self.requests.clear_retries(request.submission_id, self.clock())
            return
        self._give_up(request, request.ximilar_status or request.status.value, reason, outcome)

    def _paused(self) -> str | None:
        """Why the spend guard holds submissions now (read at most once per run), or None."""
        if self._pause == "":
            self._pause = self.guard.paused() if self.guard is not None else None
        return self._pause

    def _wait_for_resume(self, request: TrackedRequest, outcome: SweepOutcome) -> bool:
        """Paused: check the request again later, untouched (a pause is not an attempt and does not age it out)."""
        if self._paused() is None:
            return False
        outcome.paused += 1
        later = self.clock() + timedelta(seconds=self.settings.first_check_delay_seconds)
        self._reschedule(request, later, None, outcome, paused=True)
        return True

    def _context(self, request: TrackedRequest, error: Exception | None = None) -> dict[str, object]:
        # Ids and the error only: no record (its URLs are presigned) and no token.
        context: dict[str, object] = {"submission_id": request.submission_id, "request_id": request.request_id}
        if error is not None:
            context["error"] = str(error)
            context["error_type"] = type(error).__name__
        return context

    def _sweep_one(self, request: TrackedRequest, outcome: SweepOutcome) -> None:
        resubmits = request.status is Status.SUBMITTING or (request.status is Status.DONE and request.retry_record_ids)
        if resubmits and self._wait_for_resume(request, outcome):
            return
        if request.status is Status.SUBMITTING:
            self._submit_again(request, outcome)
        elif request.status is Status.DONE and request.retry_record_ids:
            self._resubmission.retry_errors(request, outcome, self.deadline)
        elif request.request_id:
            self._check(request, outcome)
        else:
            reason = f"request in status {request.status} without a Ximilar id"
            self._give_up(request, request.status, reason, outcome)

    # --- requests Ximilar has ------------------------------------------------------------------------
    def _check(self, request: TrackedRequest, outcome: SweepOutcome) -> None:
        request_id = str(request.request_id)
        outcome.api_calls += 1
        try:
            state = self.ximilar.status(request_id)
        except XimilarNotFound:
            self._give_up(request, "NOT_FOUND", "Ximilar does not know the request", outcome)
            return
        outcome.by_state[state] = outcome.by_state.get(state, 0) + 1
        kind = classify_ximilar_state(state)
        if kind is XimilarStateKind.DONE:
            outcome.api_calls += 1
            try:
                details = parse_outcome(self.ximilar.get(request_id))
            except PayloadError as error:
                logger.error("Ximilar's details do not parse", extra=self._context(request, error))
                self._check_later(request, state, outcome)
                return
            recorded = self.recorder.record(request.submission_id, details)
            outcome.recorded += recorded.recorded
            if recorded.missing:
                outcome.incomplete += 1
            outcome.requests_recorded += 1 if recorded.recorded else 0
            outcome.latencies += recorded.latencies
        elif kind is XimilarStateKind.FAILED:
            recorded = self.recorder.record(request.submission_id, RequestOutcome(status=state, id=request_id))
            outcome.failed_by_ximilar += recorded.recorded
            outcome.images_failed += recorded.recorded
        elif kind is XimilarStateKind.THROTTLED:
            if not self._wait_for_resume(request, outcome):
                self._resubmission.elsewhere(request, state, outcome, self.deadline)
        elif self._too_old(request):
            seconds = self.settings.max_request_age_seconds
            self._give_up(request, state, f"not finished after {seconds} s (last state {state})", outcome)
            outcome.failed_too_old += 1
        else:
            self._check_later(request, state, outcome)

    def _too_old(self, request: TrackedRequest) -> bool:
        born = max(request.created_at, request.age_from or request.created_at)
        return self.clock() - born > timedelta(seconds=self.settings.max_request_age_seconds)

    def _check_later(self, request: TrackedRequest, state: str | None, outcome: SweepOutcome) -> None:
        first = timedelta(seconds=self.settings.first_check_delay_seconds)
        delay = schedule.next_check_delay(first, request.checks + 1, self.rng)
        if self._reschedule(request, self.clock() + delay, state, outcome):
            outcome.rescheduled += 1

    def _reschedule(
        self, request: TrackedRequest, at: datetime, state: str | None, outcome: SweepOutcome, *, paused: bool = False
    ) -> bool:
        """Check again at `at`; a lost race means a webhook finished the request meanwhile: nothing to do."""
        if self.requests.reschedule(request.submission_id, at, self.clock(), ximilar_status=state, paused=paused):
            return True
        logger.info("request finished while it was being checked", extra=self._context(request))
        outcome.finished_meanwhile += 1
        return False

    def _give_up(self, request: TrackedRequest, state: str, reason: str, outcome: SweepOutcome) -> None:
        now = self.clock()
        logger.warning("request given up", extra={**self._context(request), "reason": reason})
        outcome.images_failed += self.recorder.fail_images(request.images, reason, now)
        # False: it became DONE meanwhile, and DONE is never undone.
        self.requests.finish_request(
            request.submission_id,
            Status.FAILED,
            now,
            ximilar_status=state,
            request_id=request.request_id,
            reason=reason,
        )

    # --- submitting again ----------------------------------------------------------------------------

    def _submit_again(self, request: TrackedRequest, outcome: SweepOutcome) -> None:
        """A request still SUBMITTING past its timeout: the submitter died, or Ximilar kept refusing."""
        # Attempts held back (throttled, no time left) are not failures: the max age bounds those.
        exhausted = self._too_old(request) if request.held_back else request.submit_attempts >= MAX_SUBMIT_ATTEMPTS
        if exhausted:
            reason = f"not submitted after {request.submit_attempts} attempts: {request.status_reason or 'no answer'}"
            self._give_up(request, Status.SUBMITTING.value, reason, outcome)
            return
        self._resubmission.submit_again(request, outcome, self.deadline)
