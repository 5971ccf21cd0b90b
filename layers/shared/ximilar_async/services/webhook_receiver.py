"""The webhook: authenticate what claims to be Ximilar, then record what Ximilar says through `results`.

Order matters, cheapest refusal first: the size, then the token from the headers alone (an unsigned
body is never decoded or parsed), then the body, read with bounds (`ximilar_payloads.load_json`), then the
request item. Every body maps to a receipt or a `Refusal`; this module knows nothing of HTTP, and the
handler maps each refusal to a 4xx.

Ximilar does not sign webhooks: the headers it posts back sit in its systems and in logs, so holding
them must not be enough to write results. By default (`ResultSource.XIMILAR`) a webhook is only a
notification: the results recorded are what `GET /request/<id>` returns for the request item's
Ximilar id. `ResultSource.PAYLOAD` records the posted body instead (one Ximilar call less), after
checking that its records are exactly the request's.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Final

from ximilar_async.services.errors import XimilarError, XimilarNotFound
from ximilar_async.services.ports import RequestOutcomes, XimilarApi
from ximilar_async.services.result_recorder import RecordingOutcome, ResultRecorder
from ximilar_async.services.webhook_auth import InvalidToken, MissingCredentials, WebhookAuth
from ximilar_async.settings import ResultSource
from ximilar_async.values.entities import TrackedRequest
from ximilar_async.values.statuses import Status, XimilarStateKind, classify_ximilar_state
from ximilar_async.values.ximilar_payloads import (
    NotJson,
    PayloadError,
    RequestOutcome,
    load_json,
    parse_outcome,
    requested_record_ids,
)

logger = logging.getLogger(__name__)

# When Ximilar cannot be asked, the sweeper asks instead, this soon (it runs every minute).
RECHECK_WHEN_UNAVAILABLE: Final = timedelta(minutes=1)
# The most a delivery waits on Ximilar, retries included, before leaving the request to the sweeper.
SOURCE_SECONDS: Final = 3.0
# The submitter writes a request item just after Ximilar answered its POST, so a fast webhook can come
# first: a delivery whose item is missing looks again for this long before calling it unknown.
REQUEST_ITEM_WAIT_SECONDS: Final = 3.0
REQUEST_ITEM_POLL_SECONDS: Final = 0.2


class Refusal(StrEnum):
    """Why a delivery is refused; the value names it in logs and metrics."""

    TOO_LARGE = "too-large"
    MISSING_TOKEN = "missing-token"  # noqa: S105 - a reason, not a secret
    BAD_TOKEN = "bad-token"  # noqa: S105 - a reason, not a secret
    BAD_ENCODING = "bad-encoding"  # flagged base64 and is not
    NOT_JSON = "not-json"
    NOT_A_PAYLOAD = "not-a-payload"
    RECORDS_MISMATCH = "records-mismatch"  # the posted records are not the request's
    SOURCE_MISMATCH = "source-mismatch"  # the Ximilar request the body names is not this request


class Deferral(StrEnum):
    """Why an authenticated delivery recorded nothing now; the sweeper completes the request."""

    SOURCE_UNAVAILABLE = "source-unavailable"  # Ximilar could not be asked
    NOT_FINISHED = "not-finished"  # Ximilar (or the payload) says the request is still pending
    UNKNOWN_REQUEST = "unknown-request"  # no request item: the payload is kept under unmatched/


class WebhookRefused(Exception):
    def __init__(self, refusal: Refusal, message: str) -> None:
        super().__init__(message)
        self.refusal = refusal
        self.message = message


@dataclass(frozen=True)
class WebhookReceipt:
    outcome: RecordingOutcome
    deferred: Deferral | None = None
    stored_at: str | None = None  # where a payload for an unknown request was kept (None: too large)


@dataclass
class WebhookReceiver:
    recorder: ResultRecorder
    requests: RequestOutcomes
    auth: WebhookAuth
    max_body_bytes: int
    source: XimilarApi
    result_source: ResultSource = ResultSource.XIMILAR

    def receive(self, headers: Mapping[str, str], body: str | bytes, *, base64_encoded: bool = False) -> WebhookReceipt:
        """One delivery: the headers and the body as the event carries them (text, or base64 text)."""
        self._check_size(len(body), base64_encoded)
        try:
            credentials = self.auth.authenticate(headers)
        except MissingCredentials as error:
            raise WebhookRefused(Refusal.MISSING_TOKEN, str(error)) from None
        except InvalidToken as error:
            raise WebhookRefused(Refusal.BAD_TOKEN, str(error)) from None
        raw = self._decode(body, base64_encoded)
        self._check_size(len(raw), False)
        try:
            posted = parse_outcome(load_json(raw))
        except NotJson as error:
            raise WebhookRefused(Refusal.NOT_JSON, str(error)) from None
        except PayloadError as error:
            raise WebhookRefused(Refusal.NOT_A_PAYLOAD, str(error)) from None

        request = self._request_item(credentials.submission_id)
        if request is None:
            # Authenticated, but the item is gone (expired by TTL, or deleted): keep it for a human.
            location = self.recorder.store_unmatched(raw)
            logger.warning(
                "webhook for an unknown request; payload kept for inspection",
                extra={"submission_id": credentials.submission_id, "stored_at": location, "bytes": len(raw)},
            )
            return WebhookReceipt(RecordingOutcome(request_known=False), Deferral.UNKNOWN_REQUEST, location)
        if self.result_source is ResultSource.PAYLOAD:
            return self._record_posted(request, posted)
        return self._record_from_ximilar(request, posted)

    def _request_item(self, submission_id: str) -> TrackedRequest | None:
        """The request item, waited for a moment (`REQUEST_ITEM_WAIT_SECONDS`) when it is not there yet."""
        give_up_at = time.monotonic() + REQUEST_ITEM_WAIT_SECONDS
        while (request := self.requests.get_request(submission_id)) is None:
            if time.monotonic() >= give_up_at:
                return None
            time.sleep(REQUEST_ITEM_POLL_SECONDS)
        return request

    def _check_size(self, length: int, base64_encoded: bool) -> None:
        # Base64 text is 4/3 of its bytes; a text body is at least as many bytes as characters.
        limit = -(-self.max_body_bytes // 3) * 4 if base64_encoded else self.max_body_bytes
        if length > limit:
            raise WebhookRefused(Refusal.TOO_LARGE, f"the body is over {self.max_body_bytes} bytes")

    @staticmethod
    def _decode(body: str | bytes, base64_encoded: bool) -> bytes:
        try:
            if base64_encoded:
                return base64.b64decode(body, validate=True)
            return body if isinstance(body, bytes) else body.encode("utf-8")
        except (binascii.Error, ValueError):  # ValueError: non-ASCII text given as base64
            raise WebhookRefused(Refusal.BAD_ENCODING, "the body is flagged base64 and is not") from None
        except UnicodeEncodeError:  # lone surrogates in the event's text
            raise WebhookRefused(Refusal.NOT_JSON, "the body is not UTF-8") from None

    def _record_posted(self, request: TrackedRequest, posted: RequestOutcome) -> WebhookReceipt:
        """`ResultSource.PAYLOAD`: the body is the result, if its records are exactly the request's."""
        if posted.response is not None and not records_match(requested_record_ids(posted), request.images):
            raise WebhookRefused(Refusal.RECORDS_MISMATCH, "the records posted are not the request's records")
        return self._record(request, posted)

    def _record_from_ximilar(self, request: TrackedRequest, posted: RequestOutcome) -> WebhookReceipt:
        """`ResultSource.XIMILAR`: the body only says "ask"; what Ximilar answers is recorded."""
        if request.status is Status.DONE:
            # Every record was written before the request became DONE: a repeat costs no Ximilar call.
            return WebhookReceipt(RecordingOutcome(duplicates=len(request.images)))
        # The item's id is the one submit got from Ximilar; the body's is used only when submit has
        # not written it yet (the webhook can win that race), and then must name our records exactly.
        from_body = request.request_id is None
        request_id = posted.id if request.request_id is None else request.request_id
        context = {"submission_id": request.submission_id, "request_id": request_id}
        # A webhook must answer quickly (its sender times out and gives up); a throttled or slow Ximilar
        # is left to the sweeper rather than waited for in retries.
        self.source.set_deadline(time.monotonic() + SOURCE_SECONDS)
        try:
            details = parse_outcome(self.source.get(request_id))
        except XimilarNotFound:
            if from_body:
                raise WebhookRefused(Refusal.SOURCE_MISMATCH, "Ximilar has no such request") from None
            return self._defer(request, "Ximilar does not know the request")
        except (XimilarError, PayloadError) as error:
            return self._defer(request, f"cannot ask Ximilar: {error}")
        if details.id != request_id:
            return self._defer(request, "Ximilar answered for another request")
        if from_body and not records_match(requested_record_ids(details), request.images):
            raise WebhookRefused(Refusal.SOURCE_MISMATCH, "the Ximilar request named is not this request")
        if details.status != posted.status:
            logger.info("webhook's state differs from Ximilar's", extra={**context, "ximilar_status": details.status})
        return self._record(request, details)

    def _record(self, request: TrackedRequest, outcome: RequestOutcome) -> WebhookReceipt:
        kind = classify_ximilar_state(outcome.status)
        if kind not in (XimilarStateKind.DONE, XimilarStateKind.FAILED):
            # Pending, throttled or unknown: nothing final; the sweeper checks it on its schedule.
            return WebhookReceipt(RecordingOutcome(), Deferral.NOT_FINISHED)
        return WebhookReceipt(self.recorder.record_for(request, outcome))

    def _defer(self, request: TrackedRequest, reason: str) -> WebhookReceipt:
        """Ximilar could not be asked: answer 2xx (a 5xx would only bring the same webhook back) and
        make the request due for the sweeper soon. Only requests Ximilar has: one still SUBMITTING is
        the submitter's (making it due would submit it again)."""
        logger.warning(
            "webhook deferred to the sweeper",
            extra={"submission_id": request.submission_id, "request_id": request.request_id, "reason": reason},
        )
        if request.request_id is not None and request.status in (Status.CREATED, Status.PROCESSING):
            now = self.recorder.clock()
            # False: it finished meanwhile (it left the due index); nothing to do.
            self.requests.reschedule(request.submission_id, now + RECHECK_WHEN_UNAVAILABLE, now)
        return WebhookReceipt(RecordingOutcome(), Deferral.SOURCE_UNAVAILABLE)


def records_match(claimed: list[str], expected: Mapping[str, str]) -> bool:
    """Exactly the request's records, each once: a repeated, missing, extra or joined `_id` does not match."""
    return len(claimed) == len(set(claimed)) and set(claimed) == set(expected)
