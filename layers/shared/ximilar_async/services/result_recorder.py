"""Record what Ximilar answered for a request: the one path shared by the webhook and the sweeper.

Each record is matched to its image through the request item's `images` map (record `_id` -> image
URI), then written with a conditional update that never moves a finished image back and never lets
an older upload's result replace a newer upload's. A record too large for a DynamoDB item (measured
as DynamoDB measures items, `item_size`) goes to the results bucket, with a pointer in the item.

A request is DONE only when every one of its images is finished (DONE, ERROR or FAILED) or no longer
belongs to it (uploaded again, or submitted again in another request). An answer that leaves some
without a record (Ximilar left them out, or named an `_id` it was not sent) keeps the request due, so
the sweeper fetches the answer again; after `MAX_INCOMPLETE_ANSWERS` such answers those images end
FAILED with the reason and the request is DONE.

Large results are stored under `results/<record_id>/<request_id>.json`: one object per image *and*
Ximilar request, written before the conditional item write. A losing duplicate (another request of
the same upload, e.g. one submitted twice) writes its own object, never the winner's, and only the
winner's key is ever referenced by the item. Two writers of the same key are two deliveries of the
same Ximilar request (webhook and sweeper), whose record is the same. Writing after winning instead
would leave a pointer to nothing if the function died between the two writes. A loser's object is
left in place (it cannot be told from the winner's without another read); the results bucket's
lifecycle, if any, applies to it.

No credential at rest: Ximilar echoes each record's input `_url`, a presigned URL of the input
bucket; the stored record holds the image's `s3://` URI there instead (and so do unmatched payloads).

Outputs: a DONE record that names artifacts (`outputs.artifacts_of`: the upscaled image, ...) gets
them in the same conditional write as the result, each PENDING with the S3 URI its copy will have,
and one job per image goes to the outputs queue (SendMessageBatch) for the copier, after the writes
and before the request is finished: a failed send fails the call, so the caller sees it.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

from ximilar_async.adapters.dynamodb import item_size
from ximilar_async.services.completion_events import NO_EVENTS
from ximilar_async.services.errors import ItemTooLarge
from ximilar_async.services.ports import ImageEvents, ImageResults, ObjectStore, RequestOutcomes
from ximilar_async.values.clock import Clock, utc_now
from ximilar_async.values.entities import Image, ImageResult, Output, TrackedRequest
from ximilar_async.values.outputs import OutputJob, OutputLocation, OutputQueue, artifacts_of
from ximilar_async.values.statuses import UNFINISHED, Status, XimilarStateKind, classify_ximilar_state
from ximilar_async.values.ximilar_payloads import RequestOutcome, ResultRecord

logger = logging.getLogger(__name__)

# The rest of an image item (its keys, up to 1 KB each, the status reason, times, ids) fits well in this.
OTHER_ATTRIBUTES_MARGIN: Final = 16 * 1024
# The most a `result` attribute may hold, by DynamoDB's own item size rules.
INLINE_RESULT_MAX_BYTES: Final = item_size.ITEM_MAX_BYTES - OTHER_ATTRIBUTES_MARGIN
# Ximilar's error text is kept whole in the result; the reason (an indexed, listed attribute) is bounded.
MAX_REASON_CHARS: Final = 1024
# A record that failed for a passing reason (its URL expired, the download failed) is tried again.
RETRY_ERRORS_AFTER: Final = timedelta(minutes=1)
# Image writes of one answer run at once, up to this many (a request has at most 10 records).
PARALLEL_WRITES: Final = 10
# DONE answers that leave images without a record before those images end FAILED.
MAX_INCOMPLETE_ANSWERS: Final = 3
# An incomplete answer is fetched again after this, doubled for each incomplete answer before it.
RECHECK_INCOMPLETE_AFTER: Final = timedelta(minutes=1)
# Payloads for unknown requests are kept for inspection, not as an archive: larger ones are only logged.
UNMATCHED_MAX_BYTES: Final = 256 * 1024


def is_transient_record_error(code: int, text: str) -> bool:
    """Worth another submission with a fresh URL: download failures, throttling, server errors."""
    lowered = text.lower()
    return code in (408, 429) or code >= 500 or any(word in lowered for word in ("download", "expired", "timeout"))


@dataclass
class RecordingOutcome:
    recorded: int = 0  # images that changed to DONE, ERROR or FAILED
    duplicates: int = 0  # records whose image had already finished (or was uploaded again)
    unmatched: int = 0  # records whose `_id` the request does not name
    missing: int = 0  # images the answer left unfinished: the request stays due for another look
    request_known: bool = True
    stored_in_s3: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # seconds from upload to result, per image recorded

    @property
    def matched_nothing(self) -> bool:
        return not self.request_known or (self.recorded == 0 and self.duplicates == 0)


def result_key(record_id: str, request_id: str) -> str:
    """Where a large result of one image from one Ximilar request is stored (see the module's docstring)."""
    return f"results/{record_id}/{request_id}.json"


def missing_reason(missing: int, unmatched: int) -> str:
    records = "record" if missing == 1 else "records"
    reason = f"{missing} {records} missing from Ximilar's answer"
    if unmatched:
        reason += f" ({unmatched} with an _id that was not sent)"
    return reason


@dataclass
class ResultRecorder:
    images: ImageResults
    requests: RequestOutcomes
    objects: ObjectStore
    results_bucket: str
    clock: Clock = utc_now
    inline_max_bytes: int = INLINE_RESULT_MAX_BYTES
    output_location: OutputLocation | None = None  # None: artifacts stay at Ximilar (no copier wired)
    output_queue: OutputQueue | None = None
    events: ImageEvents = NO_EVENTS  # told of each image a write of this recorder finished

    def record(self, submission_id: str, outcome: RequestOutcome) -> RecordingOutcome:
        """Record `outcome` (a webhook payload, or a request's details) for the request `submission_id`."""
        request = self.requests.get_request(submission_id)
        if request is None:
            return RecordingOutcome(
                request_known=False, unmatched=len(outcome.response.records if outcome.response else [])
            )
        return self.record_for(request, outcome)

    def record_for(self, request: TrackedRequest, outcome: RequestOutcome) -> RecordingOutcome:
        """`record` for a request item the caller has just read (the webhook reads it first to check it)."""
        submission_id = request.submission_id
        if request.status is Status.DONE:
            # Every image had finished before the request became DONE: a repeat changes nothing.
            return RecordingOutcome(duplicates=len(outcome.response.records if outcome.response else []))
        images = request.images
        now = self.clock()
        kind = classify_ximilar_state(outcome.status)
        if kind is XimilarStateKind.FAILED:
            waiting = self.images.unfinished_images(request)
            if not waiting and request.status is Status.CREATED and not request.retry_record_ids:
                # Every image had finished (its request with them, though its item was not written again).
                return RecordingOutcome(duplicates=len(images))
            reason = f"Ximilar ended the request {outcome.status}"
            recorded = self.fail_images(waiting, reason, now)
            # False: it became DONE meanwhile, and DONE is never undone.
            self.requests.finish_request(
                submission_id, Status.FAILED, now, ximilar_status=outcome.status, request_id=outcome.id, reason=reason
            )
            return RecordingOutcome(recorded=recorded, duplicates=len(images) - recorded)
        if kind is not XimilarStateKind.DONE or outcome.response is None:
            return RecordingOutcome(unmatched=0)  # nothing final to record yet

        result = RecordingOutcome()
        # Retries noted by an earlier, incomplete answer are kept until the request is DONE.
        retry: set[str] = set(request.retry_record_ids)
        matched = [
            (images[record.record_id], record) for record in outcome.response.records if record.record_id in images
        ]
        result.unmatched = len(outcome.response.records) - len(matched)
        answered = {record.record_id for _, record in matched}
        jobs: list[OutputJob] = []
        for (_, record), (image_result, written) in zip(
            matched, self._record_all(matched, outcome.id, now), strict=True
        ):
            if image_result.result_s3_uri:
                result.stored_in_s3.append(image_result.result_s3_uri)
            if written is not None:
                self.events.finished(written)
                result.recorded += 1
                result.latencies.append((now - written.created_at).total_seconds())
                if image_result.outputs:
                    jobs.append(self._job(image_result, record))
                if image_result.status is Status.ERROR and is_transient_record_error(
                    record.status.code, record.status.text
                ):
                    retry.add(record.record_id)
            else:
                result.duplicates += 1

        if jobs and self.output_queue is not None:
            self.output_queue.send(jobs)
        unanswered = {record_id: uri for record_id, uri in images.items() if record_id not in answered}
        unfinished = self.images.unfinished_images(request, unanswered)
        context = {"submission_id": submission_id, "request_id": outcome.id}
        request_reason: str | None = None
        if unfinished:
            request_reason = missing_reason(len(unfinished), result.unmatched)
            answers = request.incomplete_answers + 1
            if answers < MAX_INCOMPLETE_ANSWERS:
                result.missing = len(unfinished)
                check_at = now + RECHECK_INCOMPLETE_AFTER * 2**request.incomplete_answers
                if not self.requests.await_missing_records(
                    submission_id,
                    request_reason,
                    now,
                    check_at,
                    ximilar_status=outcome.status,
                    request_id=outcome.id,
                    retry_record_ids=retry,
                ):
                    logger.info("request finished while an incomplete answer was recorded", extra=context)
                logger.warning("Ximilar's answer is incomplete", extra={**context, "reason": request_reason})
                return result
            image_reason = f"no record for this image in Ximilar's answer after {answers} checks"
            result.recorded += self.fail_images(unfinished, image_reason, now)
            request_reason = f"{request_reason} after {answers} checks: their images ended FAILED"
            logger.warning("images without a record given up", extra={**context, "reason": request_reason})
        # Every image is recorded. The request's DONE would only repeat what its images say (none waits
        # for it, which is how the sweeper and the views tell it finished): it is written only when it
        # says more (images to retry, a reason) or changes what the item says (its status, Ximilar's id).
        says_more = bool(retry) or request_reason is not None
        if says_more or request.status is not Status.CREATED or request.request_id != outcome.id:
            self.requests.finish_request(
                submission_id,
                Status.DONE,
                now,
                ximilar_status=outcome.status,
                request_id=outcome.id,
                reason=request_reason,
                retry_record_ids=retry,
                retry_at=now + RETRY_ERRORS_AFTER,
            )
        logger.info(
            "results recorded",
            extra={
                **context,
                "recorded": result.recorded,
                "duplicates": result.duplicates,
                "unmatched": result.unmatched,
            },
        )
        return result

    def fail_images(
        self,
        record_ids_to_uris: Mapping[str, str],
        reason: str,
        now: datetime,
        *,
        from_statuses: tuple[Status, ...] = UNFINISHED,
    ) -> int:
        """FAILED with `reason`, those of these images still in `from_statuses`: how many (each one told)."""
        failed = self.images.fail_unfinished_images(record_ids_to_uris, reason, now, from_statuses=from_statuses)
        for image in failed:
            self.events.finished(image)
        return len(failed)

    def _record_all(
        self, matched: list[tuple[str, ResultRecord]], request_id: str, now: datetime
    ) -> list[tuple[ImageResult, Image | None]]:
        """Each image's conditional write, at once: they are independent items (a transaction would bill twice)."""
        if len(matched) <= 1:
            return [self._record_image(uri, request_id, record, now) for uri, record in matched]
        with ThreadPoolExecutor(max_workers=min(len(matched), PARALLEL_WRITES)) as pool:
            futures = [
                pool.submit(contextvars.copy_context().run, self._record_image, uri, request_id, record, now)
                for uri, record in matched
            ]
            return [future.result() for future in futures]

    def _record_image(
        self, uri: str, request_id: str, record: ResultRecord, now: datetime
    ) -> tuple[ImageResult, Image | None]:
        """Write one image's result (inline, or in S3 with a pointer); returns it and, when the write
        applied, the image as written (None: it had finished already)."""
        stored = without_credentials(record.as_stored(), uri)
        code, text = record.status.code, record.status.text
        status = Status.DONE if code == 200 else Status.ERROR
        reason = None if status is Status.DONE else f"{code}: {text}"[:MAX_REASON_CHARS]
        outputs = self._outputs(uri, stored) if status is Status.DONE else {}
        if item_size.attribute_size("result", stored) <= self.inline_max_bytes:
            inline = ImageResult(uri, record.record_id, request_id, status, reason, stored, outputs=outputs)
            try:
                return inline, self.images.record_image_result(inline, now)
            except ItemTooLarge:
                # The margin for the item's other attributes was not enough: store less in the item.
                logger.warning(
                    "result too large for its item after all; storing it in S3",
                    extra={"request_id": request_id, "record_id": record.record_id},
                )
        body = json.dumps(stored, separators=(",", ":")).encode()
        location = self.objects.put_json(self.results_bucket, result_key(record.record_id, request_id), body)
        pointer = ImageResult(uri, record.record_id, request_id, status, reason, None, location, outputs=outputs)
        return pointer, self.images.record_image_result(pointer, now)

    def _outputs(self, uri: str, stored: dict[str, object]) -> dict[str, Output]:
        if self.output_location is None:
            return {}
        return self.output_location.pending(uri, artifacts_of(stored))

    def _job(self, image_result: ImageResult, record: ResultRecord) -> OutputJob:
        artifacts = artifacts_of(record.as_stored())
        return OutputJob(image_result.uri, image_result.record_id, image_result.request_id, artifacts)

    def store_unmatched(self, body: bytes) -> str | None:
        """Keep a payload for a request the tables do not know, for someone to inspect; returns where.

        The key is the body's hash, so a replayed payload makes no new object; None when the body is
        over `UNMATCHED_MAX_BYTES` (not kept: only authenticated senders get here, but keys leak).
        """
        if len(body) > UNMATCHED_MAX_BYTES:
            return None
        key = f"unmatched/{hashlib.sha256(body).hexdigest()}.json"
        return self.objects.put_json(self.results_bucket, key, scrub_payload(body))


REMOVED: Final = "(presigned URL removed)"


def without_credentials(record: dict[str, object], image_uri: str) -> dict[str, object]:
    """The record with its input `_url` (a presigned URL, signed with the submitter's credentials)
    replaced by the image's `s3://` URI: nothing that grants access is kept at rest."""
    if "_url" in record:
        return {**record, "_url": image_uri}
    return record


def scrub_payload(body: bytes) -> bytes:
    """A payload kept for inspection, with every record's `_url` removed (the body as is, if not JSON)."""
    try:
        payload = json.loads(body)
        records = payload["response"]["records"]
    except (ValueError, KeyError, TypeError):
        return body
    if not isinstance(records, list):
        return body
    signed = [record for record in records if isinstance(record, dict) and "_url" in record]
    if not signed:
        return body  # kept byte for byte when there is nothing to remove
    for record in signed:
        record["_url"] = REMOVED
    return json.dumps(payload, separators=(",", ":")).encode()
