"""Record what Ximilar answered for a request: the one path shared by the webhook and the sweeper.

Each record is matched to its image through the request item's `images` map (record `_id` -> image
URI), then written with a conditional update that never moves a finished image back and never lets
an older upload's result replace a newer upload's. A record too large for a DynamoDB item goes to the
results bucket, with a pointer in the item.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from ximilar_async.entities import ImageResult
from ximilar_async.payloads import RequestOutcome
from ximilar_async.ports import ObjectStore, Store
from ximilar_async.statuses import Status, XimilarStateKind, classify_ximilar_state

logger = logging.getLogger(__name__)

# DynamoDB items stop at 400 KB; leave room for the item's other attributes.
INLINE_RESULT_MAX_BYTES: Final = 300_000
# A record that failed for a passing reason (its URL expired, the download failed) is tried again.
RETRY_ERRORS_AFTER: Final = timedelta(minutes=1)


def is_transient_record_error(code: int, text: str) -> bool:
    """Worth another submission with a fresh URL: download failures, throttling, server errors."""
    lowered = text.lower()
    return code in (408, 429) or code >= 500 or any(word in lowered for word in ("download", "expired", "timeout"))


@dataclass
class RecordingOutcome:
    recorded: int = 0  # images that changed to DONE, ERROR or FAILED
    duplicates: int = 0  # records whose image had already finished (or was uploaded again)
    unmatched: int = 0  # records whose `_id` the request does not name
    request_known: bool = True
    stored_in_s3: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # seconds from upload to result, per image recorded

    @property
    def matched_nothing(self) -> bool:
        return not self.request_known or (self.recorded == 0 and self.duplicates == 0)


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class ResultRecorder:
    repository: Store
    objects: ObjectStore
    results_bucket: str
    clock: Callable[[], datetime] = utc_now

    def record(self, submission_id: str, outcome: RequestOutcome) -> RecordingOutcome:
        """Record `outcome` (a webhook payload, or a request's details) for the request `submission_id`."""
        request = self.repository.get_request(submission_id)
        if request is None:
            return RecordingOutcome(
                request_known=False, unmatched=len(outcome.response.records if outcome.response else [])
            )
        if request.status is Status.DONE:
            # Every record was written before the request became DONE: a repeat changes nothing.
            return RecordingOutcome(duplicates=len(outcome.response.records if outcome.response else []))
        images = request.images
        now = self.clock()
        kind = classify_ximilar_state(outcome.status)
        if kind is XimilarStateKind.FAILED:
            reason = f"Ximilar ended the request {outcome.status}"
            recorded = self.repository.fail_unfinished_images(images, reason, now)
            # False: it became DONE meanwhile, and DONE is never undone.
            self.repository.finish_request(
                submission_id, Status.FAILED, now, ximilar_status=outcome.status, request_id=outcome.id, reason=reason
            )
            return RecordingOutcome(recorded=recorded, duplicates=len(images) - recorded)
        if kind is not XimilarStateKind.DONE or outcome.response is None:
            return RecordingOutcome(unmatched=0)  # nothing final to record yet

        result = RecordingOutcome()
        retry: list[str] = []
        for record in outcome.response.records:
            uri = images.get(record.record_id)
            if uri is None:
                result.unmatched += 1
                continue
            image_result = self._image_result(
                uri, outcome.id, record.as_stored(), record.status.code, record.status.text
            )
            if image_result.result_s3_uri:
                result.stored_in_s3.append(image_result.result_s3_uri)
            uploaded_at = self.repository.record_image_result(image_result, now)
            if uploaded_at is not None:
                result.recorded += 1
                result.latencies.append((now - uploaded_at).total_seconds())
                if image_result.status is Status.ERROR and is_transient_record_error(
                    record.status.code, record.status.text
                ):
                    retry.append(record.record_id)
            else:
                result.duplicates += 1
        self.repository.finish_request(
            submission_id,
            Status.DONE,
            now,
            ximilar_status=outcome.status,
            request_id=outcome.id,
            retry_record_ids=retry,
            retry_at=now + RETRY_ERRORS_AFTER,
        )
        logger.info(
            "results recorded",
            extra={
                "submission_id": submission_id,
                "request_id": outcome.id,
                "recorded": result.recorded,
                "duplicates": result.duplicates,
                "unmatched": result.unmatched,
            },
        )
        return result

    def _image_result(self, uri: str, request_id: str, record: dict[str, Any], code: int, text: str) -> ImageResult:
        status = Status.DONE if code == 200 else Status.ERROR
        reason = None if status is Status.DONE else f"{code}: {text}"
        encoded = json.dumps(record, separators=(",", ":"))
        if len(encoded.encode()) <= INLINE_RESULT_MAX_BYTES:
            return ImageResult(uri, record["_id"], request_id, status, reason, record)
        location = self.objects.put_json(self.results_bucket, f"results/{record['_id']}.json", encoded.encode())
        return ImageResult(uri, record["_id"], request_id, status, reason, None, location)

    def store_unmatched(self, body: bytes, request_id: str) -> str:
        """Keep a payload that names nothing known, for someone to inspect; returns where."""
        now = self.clock()
        key = f"unmatched/{now:%Y/%m/%d}/{request_id or 'no-id'}-{uuid.uuid4().hex[:8]}.json"
        return self.objects.put_json(self.results_bucket, key, body)
