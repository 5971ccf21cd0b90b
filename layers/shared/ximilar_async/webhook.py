"""The webhook: authenticate what claims to be Ximilar, then record it through `results`.

Order matters: the size is checked before reading, the token headers before parsing, and the token
(which covers the records' `_id`s) before anything else in the payload is looked at or written.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ximilar_async.payloads import PayloadError, RequestOutcome, parse_outcome, record_ids_of
from ximilar_async.results import RecordingOutcome, ResultRecorder
from ximilar_async.statuses import XimilarStateKind, classify_ximilar_state
from ximilar_async.webhook_token import SUBMISSION_HEADER, TOKEN_HEADER, verify
from ximilar_async.ximilar import XimilarClient, XimilarError

logger = logging.getLogger(__name__)


class WebhookRejected(Exception):
    """Answer `status_code` with `message`; `reason` names it in metrics."""

    def __init__(self, status_code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class WebhookAnswer:
    status_code: int
    body: dict[str, Any]
    outcome: RecordingOutcome


@dataclass
class WebhookReceiver:
    recorder: ResultRecorder
    signing_key: bytes
    max_body_bytes: int
    source: XimilarClient | None = None  # set: record what Ximilar's API says, not what was posted

    def receive(self, headers: Mapping[str, str], body: bytes) -> WebhookAnswer:
        if len(body) > self.max_body_bytes:
            raise WebhookRejected(413, "too-large", f"the body is over {self.max_body_bytes} bytes")
        lowered = {name.lower(): value for name, value in headers.items()}
        submission_id = lowered.get(SUBMISSION_HEADER.lower(), "")
        token = lowered.get(TOKEN_HEADER.lower(), "")
        if not submission_id or not token:
            raise WebhookRejected(401, "missing-token", "missing webhook token")
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise WebhookRejected(400, "not-json", "the body is not JSON") from None
        try:
            record_ids = record_ids_of(payload)
        except PayloadError as error:
            raise WebhookRejected(422, "not-a-payload", str(error)) from None
        if not verify(self.signing_key, submission_id, record_ids, token):
            raise WebhookRejected(401, "bad-token", "invalid webhook token")
        try:
            outcome = parse_outcome(payload)
        except PayloadError as error:
            raise WebhookRejected(422, "not-a-payload", str(error)) from None
        if self.source is not None:
            outcome = self._from_source(self.source, outcome.id, record_ids)

        result = self.recorder.record(submission_id, outcome)
        if result.matched_nothing:
            location = self.recorder.store_unmatched(body, outcome.id)
            logger.warning(
                "webhook names nothing known; stored for inspection",
                extra={"submission_id": submission_id, "request_id": outcome.id, "stored_at": location},
            )
            return WebhookAnswer(202, {"stored": location}, result)
        return WebhookAnswer(
            200,
            {"recorded": result.recorded, "duplicates": result.duplicates, "unmatched": result.unmatched},
            result,
        )

    def _from_source(self, source: XimilarClient, request_id: str, record_ids: list[str]) -> RequestOutcome:
        """The request as Ximilar's API reports it; the posted body is only a hint of which one."""
        try:
            details = parse_outcome(source.get(request_id))
        except (XimilarError, PayloadError) as error:
            raise WebhookRejected(502, "source-unavailable", f"cannot verify with Ximilar: {error}") from None
        if classify_ximilar_state(details.status) is not XimilarStateKind.DONE or details.response is None:
            raise WebhookRejected(409, "source-not-done", f"Ximilar reports the request {details.status}")
        if sorted(record.record_id for record in details.response.records) != sorted(record_ids):
            raise WebhookRejected(401, "source-mismatch", "the request Ximilar reports is not the one signed for")
        return details
