"""Submit: turn uploads into Ximilar requests, grouped, limited per type, and submitted once.

An invocation works in two phases, so that no upload is ever left without an item:
1. own: for each group of uploads with the same (type, endpoint), in chunks of the type's records
   limit, each image is claimed SUBMITTING for a new submission id (duplicates and stale uploads
   are skipped). These are quick DynamoDB writes; nothing slow happens before them. The claims,
   each naming the submission, are the record of what is about to be sent.
2. post: the owned requests go to Ximilar through a bounded pool (`SUBMIT_CONCURRENCY`), one POST
   each, with a webhook whose headers authenticate that one request. No POST starts when the
   invocation's remaining time is under `start_margin`; after Ximilar throttles, none starts at all
   (a circuit breaker for the invocation). What is not posted is handed on: its claims released and
   a request item written SUBMITTING, due for the sweeper, which submits it (Retry-After honoured),
   with the reason on every image. The SQS message is done either way: the pipeline, not
   redelivery, owns the retry.
On success the request item is written once, CREATED with Ximilar's id and due for the sweeper's
first check; the images are not written again until their results (they stay SUBMITTING, owned by
the request). On a 4xx the images end FAILED with Ximilar's message. Should the invocation die
between the claims and the request item, SQS delivers the message again after the claims' lease,
and a claim with no request item is taken again (`ImageStore.claim_image`); a delivery that finds
such a claim still live is not acknowledged (SQS brings it back after the lease), so no claim
outlives its messages. A resubmission (the sweeper's, the copier's regenerations) has no message
behind it: its request item is written before its claims.
"""

from __future__ import annotations

import base64
import contextvars
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from ximilar_async.services.completion_events import NO_EVENTS
from ximilar_async.services.errors import (
    InvalidRequest,
    ObjectGone,
    XimilarRequestError,
    XimilarThrottled,
    XimilarTransientError,
)
from ximilar_async.services.ports import ImageClaims, ImageEvents, ObjectStore, RequestLifecycle, XimilarApi
from ximilar_async.services.spend_guard import SpendGuard
from ximilar_async.services.webhook_auth import WebhookAuth
from ximilar_async.settings import CONNECT_TIMEOUT_SECONDS, SubmitSettings
from ximilar_async.values.clock import Clock, utc_now
from ximilar_async.values.entities import Claim, Image
from ximilar_async.values.request_types import RequestType
from ximilar_async.values.statuses import Status
from ximilar_async.values.submissions import Owned, SubmitOutcome, chunks
from ximilar_async.values.uploads import Rejection, Upload, admit

logger = logging.getLogger(__name__)

# A claim outlives the submit function's timeout (60 s) so a live submitter is never overtaken,
# and ends before SQS shows the message again (visibility timeout 360 s).
CLAIM_LEASE: Final = timedelta(seconds=120)
# Time kept back at the end of an invocation for the writes after the last POST answers.
BOOKKEEPING_SECONDS: Final = 2.0


class Breaker:
    """Opens on the first throttling answer of an invocation: from then on nothing more is posted."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.retry_after: float | None = None
        self.is_open = False

    def trip(self, retry_after: float | None) -> None:
        with self._lock:
            self.is_open = True
            self.retry_after = max(self.retry_after or 0.0, retry_after or 0.0)


@dataclass
class Submitter:
    images: ImageClaims
    requests: RequestLifecycle
    ximilar: XimilarApi
    objects: ObjectStore  # presigns URLs, reads objects sent inline
    auth: WebhookAuth
    settings: SubmitSettings
    clock: Clock = utc_now
    guard: SpendGuard | None = None  # the spend guard (daily limit, credits floor, pause); None: unguarded
    events: ImageEvents = NO_EVENTS  # told of each image this submitter's writes finished (FAILED)

    @property
    def start_margin(self) -> float:
        """Seconds a POST may take, at worst, with its bookkeeping: none starts with less time left."""
        return self.settings.ximilar_read_timeout_seconds + CONNECT_TIMEOUT_SECONDS + 2 * BOOKKEEPING_SECONDS

    def submit_uploads(
        self, uploads: Iterable[Upload], *, remaining_millis: Callable[[], int] | None = None
    ) -> SubmitOutcome:
        """Own every upload, then post what the time left and Ximilar allow; hand the rest on."""
        outcome = SubmitOutcome()
        groups: dict[tuple[RequestType, str], list[Upload]] = {}
        for upload in uploads:
            route = admit(upload, self.settings.routes, self.settings.max_image_bytes)
            if isinstance(route, Rejection):
                self._reject(upload, route, outcome)
                continue
            groups.setdefault((route.request_type, route.endpoint), []).append(upload)
        owned: list[Owned] = []
        for (request_type, endpoint), members in groups.items():
            for chunk in chunks(members, self.settings.records_per_request[request_type]):
                try:
                    owned.extend(self.own(request_type, endpoint, chunk, outcome))
                except Exception as error:
                    # Not owned (DynamoDB failed): SQS delivers these messages again.
                    logger.exception("owning a batch failed", extra={"keys": [u.key for u in chunk]})
                    outcome.retry.update({u.message_id: f"{type(error).__name__}" for u in chunk})
        deadline = None if remaining_millis is None else time.monotonic() + remaining_millis() / 1000
        self.post_all(owned, deadline, outcome)
        return outcome

    def _fail_claimed(self, submission_id: str, uris: Iterable[str], reason: str, now: datetime) -> None:
        for image in self.images.fail_claimed_images(submission_id, uris, reason, now):
            self.events.finished(image)

    def _reject(self, upload: Upload, rejection: Rejection, outcome: SubmitOutcome) -> None:
        if rejected := self.images.reject_image(upload, rejection.text, self.clock()):
            self.events.finished(rejected)
            outcome.images_failed[rejection.code] += 1
            logger.info("upload not submitted", extra={"key": upload.key, "reason": rejection.text})
        else:
            outcome.duplicates += 1

    def submit_batch(
        self,
        request_type: RequestType,
        endpoint: str,
        uploads: Sequence[Upload],
        *,
        submission_id: str | None = None,
        previous: Mapping[str, Image] | None = None,
        deadline: float | None = None,
    ) -> SubmitOutcome:
        """One Ximilar request for `uploads` (at most the type's limit), owned, then posted.

        The sweeper passes `submission_id` to submit a stuck request again, and `previous` (image
        items by URI, as it read them) to submit images again that had an earlier request.
        """
        outcome = SubmitOutcome()
        owned = self.own(request_type, endpoint, uploads, outcome, submission_id=submission_id, previous=previous)
        self.post_all(owned, deadline, outcome)
        return outcome

    # --- phase 1: own ----------------------------------------------------------------------------------
    def own(
        self,
        request_type: RequestType,
        endpoint: str,
        uploads: Sequence[Upload],
        outcome: SubmitOutcome,
        *,
        submission_id: str | None = None,
        previous: Mapping[str, Image] | None = None,
    ) -> list[Owned]:
        """Claim the images for one submission; [] when nothing is left to post.

        A resubmission of images (`previous`) into a new submission has no SQS message behind it that
        would come back should this die after the claims: its request item is written first
        (SUBMITTING, due at the submitting timeout), so the sweeper finds whatever is left of it.
        """
        now = self.clock()
        give_up_at = now + timedelta(seconds=self.settings.submitting_timeout_seconds)
        existing = submission_id is not None
        if submission_id is None:
            submission_id = str(uuid.uuid4())
            if previous:
                first = Owned(submission_id, request_type, endpoint, uploads)
                self._open(first, uploads, now, give_up_at, reason="being submitted again")
                existing = True
        elif not self.requests.restart_request(submission_id, now, give_up_at):
            return []  # it left SUBMITTING meanwhile (finished, or taken by another attempt)

        claimed: list[Upload] = []
        for upload in uploads:
            retry_of = (previous or {}).get(upload.uri)
            if upload.record_id in {c.record_id for c in claimed}:
                outcome.duplicates += 1  # the same notification twice in one batch
                continue
            claim = self.images.claim_image(
                upload, request_type.value, endpoint, submission_id, now, CLAIM_LEASE, retry_of=retry_of
            )
            if claim is Claim.TAKEN:
                claimed.append(upload)
            elif claim is Claim.BUSY:
                # Its claim has no request item yet: SQS delivers the message again after the claim's
                # lease, when it is a duplicate (the claim's submitter wrote the item) or taken again.
                outcome.retry[upload.message_id] = "claimed by a submission not written yet"
            else:
                outcome.duplicates += 1
        if not claimed and existing:
            reason = "superseded: its images were submitted in other requests"
            self.requests.finish_request(submission_id, Status.FAILED, now, reason=reason)
            return []
        if not claimed:
            return []  # every upload was a duplicate: nothing to send, nothing written
        if existing and len(claimed) != len(uploads):
            self.requests.set_request_images(submission_id, {u.record_id: u.uri for u in claimed}, now)
        return [Owned(submission_id, request_type, endpoint, claimed, opened=existing)]

    # --- phase 2: post -----------------------------------------------------------------------------------
    def post_all(self, owned: Sequence[Owned], deadline: float | None, outcome: SubmitOutcome) -> None:
        """POST each owned request through the pool; hand on what the deadline or the breaker holds back."""
        if not owned:
            return
        # The client's own retries end in time for the bookkeeping after the last answer.
        self.ximilar.set_deadline(None if deadline is None else deadline - BOOKKEEPING_SECONDS)
        breaker = Breaker()
        # Once the guard says no, nothing more of this invocation is posted (as after a 429).
        paused = self.guard.check() if self.guard is not None else None
        waiting = deque(owned)
        running: set[Future[SubmitOutcome]] = set()
        workers = min(self.settings.submit_concurrency, len(owned))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="submit") as pool:
            while waiting or running:
                while waiting and len(running) < workers:
                    request = waiting.popleft()
                    held = self._held_back(deadline, breaker)
                    if held is not None:
                        outcome.merge(self._hand_on(request, held, breaker))
                        continue
                    if paused is None and self.guard is not None:
                        # Counted here, on this one thread, before the POST: the count is what may be billed.
                        paused = self.guard.reserve(len(request.uploads))
                    if paused is not None:
                        outcome.merge(self._hand_on(request, paused, breaker))
                        outcome.paused += len(request.uploads)
                        continue
                    # A copy of the context per task: log keys and test attribution follow the POST.
                    context = contextvars.copy_context()
                    running.add(pool.submit(context.run, self._post_or_hand_on, request, breaker))
                    outcome.max_in_flight = max(outcome.max_in_flight, len(running))
                if running:
                    finished, running = wait(running, return_when=FIRST_COMPLETED)
                    for future in finished:
                        outcome.merge(future.result())
        outcome.throttled = outcome.throttled or breaker.is_open

    def _held_back(self, deadline: float | None, breaker: Breaker) -> str | None:
        """Why a POST must not start now, or None."""
        if breaker.is_open:
            return "Ximilar is throttling (429)"
        if deadline is not None and deadline - time.monotonic() < self.start_margin:
            return "the submit function ran out of time"
        return None

    def _hand_on(
        self,
        request: Owned,
        reason: str,
        breaker: Breaker,
        outcome: SubmitOutcome | None = None,
        *,
        held_back: bool = True,
    ) -> SubmitOutcome:
        """Leave an owned request to the sweeper: claims released, due when Ximilar may take it again.

        `held_back`: it was not tried (throttling, no time left), so it is not a failed attempt.
        """
        now = self.clock()
        wait_seconds = max(float(self.settings.first_check_delay_seconds), breaker.retry_after or 0.0)
        text = f"waiting to be submitted: {reason}"
        uris = [upload.uri for upload in request.uploads]
        check_at = now + timedelta(seconds=wait_seconds)
        self.images.release_images(request.submission_id, uris, text, now)
        if request.opened:
            # False: the request left SUBMITTING meanwhile; whoever moved it owns it now.
            self.requests.defer_request(request.submission_id, text, now, check_at, held_back=held_back)
        else:
            self._open(request, request.uploads, now, check_at, reason=text, held_back=held_back)
        logger.warning(
            "request handed on to the sweeper", extra={"submission_id": request.submission_id, "reason": reason}
        )
        outcome = outcome or SubmitOutcome()
        outcome.handed_on += len(uris)
        return outcome

    def _open(
        self,
        request: Owned,
        uploads: Sequence[Upload],
        now: datetime,
        check_at: datetime,
        *,
        request_id: str | None = None,
        reason: str | None = None,
        held_back: bool = False,
    ) -> None:
        images = {upload.record_id: upload.uri for upload in uploads}
        if not self.requests.open_request(
            request.submission_id,
            request.request_type.value,
            request.endpoint,
            images,
            now,
            check_at,
            request_id=request_id,
            reason=reason,
            held_back=held_back,
        ):
            raise RuntimeError(f"submission id {request.submission_id} already exists")  # a UUID4 collision

    def _post_or_hand_on(self, request: Owned, breaker: Breaker) -> SubmitOutcome:
        try:
            return self._post(request, breaker)
        except Exception as error:
            logger.exception("posting a request failed", extra={"submission_id": request.submission_id})
            if request.opened:
                return SubmitOutcome()  # its item stays SUBMITTING, due at its submitting timeout
            # No request item yet: write one for the sweeper (the POST may or may not have reached
            # Ximilar; if it did, the webhook can still record it, its body naming the request).
            try:
                return self._hand_on(request, f"posting failed: {type(error).__name__}", breaker, held_back=False)
            except Exception:
                logger.exception("handing a request on failed", extra={"submission_id": request.submission_id})
                # SQS delivers these messages again, after the claims' lease, and they are taken again.
                return SubmitOutcome(retry={u.message_id: type(error).__name__ for u in request.uploads})

    def _post(self, request: Owned, breaker: Breaker) -> SubmitOutcome:
        outcome = SubmitOutcome()
        submission_id, now = request.submission_id, self.clock()
        records, gone = self._records(request.uploads)
        for upload in gone:
            self._fail_claimed(submission_id, [upload.uri], "the object no longer exists", now)
            outcome.images_failed["object-gone"] += 1
        sent = [upload for upload in request.uploads if upload not in gone]
        if gone and request.opened:
            self.requests.set_request_images(submission_id, {u.record_id: u.uri for u in sent}, now)
        if not sent:
            if request.opened:
                self.requests.finish_request(submission_id, Status.FAILED, now, reason="no object could be read")
            return outcome

        uris = [upload.uri for upload in sent]
        webhook = self.auth.webhook(self.settings.webhook_url, submission_id)
        log_context = {"submission_id": submission_id, "keys": [upload.key for upload in sent]}
        sending = Owned(submission_id, request.request_type, request.endpoint, sent, opened=request.opened)
        try:
            options = self.settings.route_options.get((request.request_type, request.endpoint))
            answer = self.ximilar.submit(request.request_type, request.endpoint, records, webhook, options)
        except XimilarThrottled as error:
            breaker.trip(error.retry_after)
            return self._hand_on(sending, "Ximilar is throttling (429)", breaker, outcome)
        except XimilarTransientError as error:
            logger.warning("Ximilar did not take the request; the sweeper will", extra=log_context)
            return self._hand_on(sending, f"not accepted yet: {error}", breaker, outcome, held_back=False)
        except (XimilarRequestError, InvalidRequest) as error:
            reason = f"Ximilar refused the request: {error}"
            logger.warning("Ximilar refused the request", extra={**log_context, "reason": reason})
            self._fail_claimed(submission_id, uris, reason, now)
            if request.opened:
                self.requests.finish_request(submission_id, Status.FAILED, now, reason=reason)
            outcome.images_failed["refused"] += len(sent)
            return outcome

        request_id = str(answer["id"])
        accepted_at = self.clock()
        check_at = accepted_at + timedelta(seconds=self.settings.first_check_delay_seconds)
        if not request.opened:
            # The request's one write before its result: Ximilar's id, and due for the sweeper's first check.
            self._open(sending, sent, accepted_at, check_at, request_id=request_id)
        elif not self.requests.mark_request_created(submission_id, request_id, accepted_at, check_at):
            # The request left SUBMITTING while the POST was out (the sweeper gave up on it): Ximilar
            # has it all the same; say so for whoever looks.
            logger.warning("request was finished while it was being submitted", extra=log_context)
        logger.info("request submitted", extra={**log_context, "request_id": request_id})
        outcome.requests_submitted += 1
        outcome.images_submitted += len(sent)
        return outcome

    def _records(self, uploads: Sequence[Upload]) -> tuple[list[dict[str, str]], list[Upload]]:
        """Ximilar records (`_id` and `_url` or `_base64`) and the uploads whose object is gone."""
        records: list[dict[str, str]] = []
        gone: list[Upload] = []
        for upload in uploads:
            try:
                records.append({"_id": upload.record_id, **self._image_source(upload)})
            except ObjectGone:
                gone.append(upload)
        return records, gone

    def _image_source(self, upload: Upload) -> dict[str, str]:
        if upload.size <= self.settings.inline_base64_max_bytes:
            return {"_base64": base64.b64encode(self.objects.read(upload.location)).decode()}
        return {"_url": self.objects.presigned_get(upload.location, self.settings.presigned_url_expiry_seconds)}
