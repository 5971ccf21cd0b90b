"""The webhook: authenticate what claims to be Ximilar, then record it through `results`.

Order matters: the size is checked before reading, the token headers before parsing, and the token
(which covers the records' `_id`s) before anything else in the payload is looked at or written.
This module knows nothing of HTTP: it refuses with a `Refusal`, and the handler maps each to a status.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from ximilar_async.payloads import PayloadError, RequestOutcome, parse_outcome, record_ids_of
from ximilar_async.ports import XimilarApi
from ximilar_async.results import RecordingOutcome, ResultRecorder
from ximilar_async.statuses import XimilarStateKind, classify_ximilar_state
from ximilar_async.webhook_auth import MissingCredentials, WebhookAuth
from ximilar_async.ximilar import XimilarError

logger = logging.getLogger(__name__)


class Refusal(StrEnum):
    """Why a delivery is refused; the value names it in logs and metrics."""

    TOO_LARGE = "too-large"
    MISSING_TOKEN = "missing-token"  # noqa: S105 - a reason, not a secret
    NOT_JSON = "not-json"
    NOT_A_PAYLOAD = "not-a-payload"
    BAD_TOKEN = "bad-token"  # noqa: S105 - a reason, not a secret
    SOURCE_UNAVAILABLE = "source-unavailable"  # Ximilar could not be asked
    SOURCE_NOT_DONE = "source-not-done"  # Ximilar says the request is not DONE
    SOURCE_MISMATCH = "source-mismatch"  # Ximilar's request is not the one signed for


class WebhookRefused(Exception):
    def __init__(self, refusal: Refusal, message: str) -> None:
        super().__init__(message)
        self.refusal = refusal
        self.message = message


@dataclass(frozen=True)
class WebhookReceipt:
    outcome: RecordingOutcome
    stored_at: str | None = None  # where a payload that names nothing known was kept


@dataclass
class WebhookReceiver:
    recorder: ResultRecorder
    auth: WebhookAuth
    max_body_bytes: int
    source: XimilarApi | None = None  # set: record what Ximilar's API says, not what was posted

    def receive(self, headers: Mapping[str, str], body: bytes) -> WebhookReceipt:
        if len(body) > self.max_body_bytes:
            raise WebhookRefused(Refusal.TOO_LARGE, f"the body is over {self.max_body_bytes} bytes")
        try:
            credentials = self.auth.credentials(headers)
        except MissingCredentials as error:
            raise WebhookRefused(Refusal.MISSING_TOKEN, str(error)) from None
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise WebhookRefused(Refusal.NOT_JSON, "the body is not JSON") from None
        try:
            record_ids = record_ids_of(payload)
        except PayloadError as error:
            raise WebhookRefused(Refusal.NOT_A_PAYLOAD, str(error)) from None
        if not self.auth.verify(credentials, record_ids):
            raise WebhookRefused(Refusal.BAD_TOKEN, "invalid webhook token")
        try:
            outcome = parse_outcome(payload)
        except PayloadError as error:
            raise WebhookRefused(Refusal.NOT_A_PAYLOAD, str(error)) from None
        if self.source is not None:
            outcome = self._from_source(self.source, outcome.id, record_ids)

        submission_id = credentials.submission_id
        result = self.recorder.record(submission_id, outcome)
        if result.matched_nothing:
            location = self.recorder.store_unmatched(body, outcome.id)
            logger.warning(
                "webhook names nothing known; stored for inspection",
                extra={"submission_id": submission_id, "request_id": outcome.id, "stored_at": location},
            )
            return WebhookReceipt(result, stored_at=location)
        return WebhookReceipt(result)

    def _from_source(self, source: XimilarApi, request_id: str, record_ids: list[str]) -> RequestOutcome:
        """The request as Ximilar's API reports it; the posted body is only a hint of which one."""
        try:
            details = parse_outcome(source.get(request_id))
        except (XimilarError, PayloadError) as error:
            raise WebhookRefused(Refusal.SOURCE_UNAVAILABLE, f"cannot verify with Ximilar: {error}") from None
        if classify_ximilar_state(details.status) is not XimilarStateKind.DONE or details.response is None:
            raise WebhookRefused(Refusal.SOURCE_NOT_DONE, f"Ximilar reports the request {details.status}")
        if sorted(record.record_id for record in details.response.records) != sorted(record_ids):
            raise WebhookRefused(Refusal.SOURCE_MISMATCH, "the request Ximilar reports is not the one signed for")
        return details
