"""Submit: turn uploads into Ximilar requests, grouped, limited per type, and submitted once.

For each group of uploads with the same (type, endpoint), in chunks of the type's records limit:
1. the request item is written SUBMITTING (so nothing sent is ever unrecorded);
2. each image is claimed SUBMITTING for it (duplicates and stale uploads are skipped);
3. one POST to Ximilar, with a webhook whose headers authenticate this one request;
4. on success the request and its images become CREATED with Ximilar's request id; on a transient
   failure the claims are released and the messages retried; on a 4xx the images end FAILED.
"""

from __future__ import annotations

import base64
import logging
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from ximilar_async.entities import Image
from ximilar_async.objects import ObjectGone
from ximilar_async.ports import ObjectStore, Store, XimilarApi
from ximilar_async.request_types import RequestType
from ximilar_async.settings import SubmitSettings
from ximilar_async.statuses import Status
from ximilar_async.uploads import Rejection, Upload, rejection_of, route_for
from ximilar_async.webhook_auth import WebhookAuth
from ximilar_async.ximilar import InvalidRequest, XimilarRequestError, XimilarTransientError

logger = logging.getLogger(__name__)

# A claim outlives the submit function's timeout (60 s) so a live submitter is never overtaken,
# and ends before SQS shows the message again (visibility timeout 360 s).
CLAIM_LEASE = timedelta(seconds=120)


T = TypeVar("T")


def chunks(items: Sequence[T], size: int) -> Iterable[Sequence[T]]:
    """`itertools.batched`, which needs Python 3.12 (the code runs on 3.11 too)."""
    return (items[start : start + size] for start in range(0, len(items), size))


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class SubmitOutcome:
    """What one invocation did; `retry` names the SQS messages to report as batch item failures."""

    retry: dict[str, str] = field(default_factory=dict)  # message id -> reason
    requests_submitted: int = 0
    images_submitted: int = 0
    duplicates: int = 0
    images_failed: Counter[str] = field(default_factory=Counter)  # rejection code -> images

    def merge(self, other: SubmitOutcome) -> None:
        self.retry.update(other.retry)
        self.requests_submitted += other.requests_submitted
        self.images_submitted += other.images_submitted
        self.duplicates += other.duplicates
        self.images_failed.update(other.images_failed)


@dataclass
class Submitter:
    repository: Store
    ximilar: XimilarApi
    objects: ObjectStore  # presigns URLs, reads objects sent inline
    auth: WebhookAuth
    settings: SubmitSettings
    clock: Callable[[], datetime] = utc_now

    def submit_uploads(self, uploads: Iterable[Upload]) -> SubmitOutcome:
        outcome = SubmitOutcome()
        groups: dict[tuple[RequestType, str], list[Upload]] = {}
        for upload in uploads:
            route = route_for(upload.key, self.settings.routes)
            rejection = rejection_of(upload, route, self.settings.max_image_bytes)
            if rejection is not None or route is None:
                self._reject(upload, rejection or Rejection("no-route", "no route matches the key"), outcome)
                continue
            groups.setdefault((route.request_type, route.endpoint), []).append(upload)
        for (request_type, endpoint), members in groups.items():
            for chunk in chunks(members, self.settings.records_per_request[request_type]):
                try:
                    outcome.merge(self.submit_batch(request_type, endpoint, chunk))
                except Exception as error:
                    logger.exception("submitting a batch failed", extra={"keys": [u.key for u in chunk]})
                    outcome.retry.update({u.message_id: f"{type(error).__name__}" for u in chunk})
        return outcome

    def _reject(self, upload: Upload, rejection: Rejection, outcome: SubmitOutcome) -> None:
        if self.repository.reject_image(upload, rejection.text, self.clock()):
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
    ) -> SubmitOutcome:
        """One Ximilar request for `uploads` (at most the type's limit), recorded before and after.

        The sweeper passes `submission_id` to submit a stuck request again, and `previous` (image
        items by URI, as it read them) to submit images again that had an earlier request.
        """
        outcome = SubmitOutcome()
        now = self.clock()
        give_up_at = now + timedelta(seconds=self.settings.submitting_timeout_seconds)
        intended = {upload.record_id: upload.uri for upload in uploads}
        existing = submission_id is not None
        if submission_id is None:
            submission_id = str(uuid.uuid4())
            if not self.repository.open_request(submission_id, request_type.value, endpoint, intended, now, give_up_at):
                raise RuntimeError(f"submission id {submission_id} already exists")  # a UUID4 collision
        elif not self.repository.restart_request(submission_id, now, give_up_at):
            return outcome  # it left SUBMITTING meanwhile (finished, or taken by another attempt)

        claimed: list[Upload] = []
        for upload in uploads:
            retry_of = (previous or {}).get(upload.uri)
            if upload.record_id in {c.record_id for c in claimed}:
                outcome.duplicates += 1  # the same notification twice in one batch
            elif self.repository.claim_image(
                upload, request_type.value, endpoint, submission_id, now, CLAIM_LEASE, retry_of=retry_of
            ):
                claimed.append(upload)
            else:
                outcome.duplicates += 1
        if not claimed and existing:
            reason = "superseded: its images were submitted in other requests"
            self.repository.finish_request(submission_id, Status.FAILED, now, reason=reason)
            return outcome
        if not claimed:
            # Nothing was sent; if the item is no longer SUBMITTING, someone else owns it: leave it.
            self.repository.forget_request(submission_id)
            return outcome

        records, gone = self._records(claimed)
        for upload in gone:
            self.repository.fail_claimed_images(submission_id, [upload.uri], "the object no longer exists", now)
            outcome.images_failed["object-gone"] += 1
        sent = [upload for upload in claimed if upload not in gone]
        if len(sent) != len(intended):
            self.repository.set_request_images(submission_id, {u.record_id: u.uri for u in sent}, now)
        if not sent:
            self.repository.finish_request(submission_id, Status.FAILED, now, reason="no object could be read")
            return outcome

        uris = [upload.uri for upload in sent]
        webhook = self.auth.webhook(self.settings.webhook_url, submission_id)
        log_context = {"submission_id": submission_id, "keys": [upload.key for upload in sent]}
        try:
            answer = self.ximilar.submit(request_type, endpoint, records, webhook)
        except XimilarTransientError as error:
            reason = f"not accepted yet: {error}"
            logger.warning("Ximilar did not take the request; it will be retried", extra=log_context)
            self.repository.release_images(submission_id, uris, reason, now)
            # False: the sweeper finished it meanwhile; the messages are retried all the same.
            self.repository.defer_request(submission_id, reason, now, give_up_at)
            outcome.retry.update({upload.message_id: reason for upload in sent})
            return outcome
        except (XimilarRequestError, InvalidRequest) as error:
            reason = f"Ximilar refused the request: {error}"
            logger.warning("Ximilar refused the request", extra={**log_context, "reason": reason})
            self.repository.fail_claimed_images(submission_id, uris, reason, now)
            self.repository.finish_request(submission_id, Status.FAILED, now, reason=reason)
            outcome.images_failed["refused"] += len(sent)
            return outcome

        request_id = str(answer["id"])
        accepted_at = self.clock()
        first_check = timedelta(seconds=self.settings.first_check_delay_seconds)
        if not self.repository.mark_request_created(submission_id, request_id, accepted_at, accepted_at + first_check):
            # The request left SUBMITTING while the POST was out (the sweeper gave up on it): Ximilar
            # has it all the same, so its images still get its id; say so for whoever looks.
            logger.warning("request was finished while it was being submitted", extra=log_context)
        self.repository.mark_images_created(submission_id, request_id, uris, accepted_at)
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
