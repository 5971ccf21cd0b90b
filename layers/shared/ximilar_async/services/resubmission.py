"""Submitting a request's images again, for the sweeper: a request whose submitter died (same submission,
same `_id`s), one Ximilar will not finish (its images in new requests), and transient ERROR images
(fresh URLs, a bounded number of times). Every submission goes through the submitter's own path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from ximilar_async.services.ports import DueRequests, ImageResults
from ximilar_async.services.result_recorder import ResultRecorder
from ximilar_async.services.submitter import Submitter
from ximilar_async.values.clock import Clock
from ximilar_async.values.entities import Image, TrackedRequest
from ximilar_async.values.request_types import RequestType, parse_request_type
from ximilar_async.values.statuses import UNFINISHED, Status
from ximilar_async.values.submissions import SubmitOutcome, chunks
from ximilar_async.values.sweeps import SweepOutcome
from ximilar_async.values.uploads import Upload

MAX_IMAGE_ATTEMPTS: Final = 3  # submissions of one image (transient ERRORs) before it ends FAILED


class ResubmissionThrottled(Exception):
    """Ximilar throttled a resubmission; the submitter has already made the request due again."""


@dataclass
class Resubmission:
    images: ImageResults
    requests: DueRequests
    recorder: ResultRecorder
    submitter: Submitter
    records_per_request: Mapping[RequestType, int]
    clock: Clock

    def images_of(self, request: TrackedRequest, record_ids: frozenset[str] | None = None) -> list[Image]:
        """The request's images as they are now, that still belong to it (same upload)."""
        wanted = {
            record_id: uri for record_id, uri in request.images.items() if record_ids is None or record_id in record_ids
        }
        found = self.images.images_by_uri(wanted.values())
        return [
            image for record_id, uri in wanted.items() if (image := found.get(uri)) and image.record_id == record_id
        ]

    def submit_again(self, request: TrackedRequest, outcome: SweepOutcome, deadline: float | None) -> None:
        """A request still SUBMITTING: its images it still holds, under the same submission (same `_id`s)."""
        images = [
            image
            for image in self.images_of(request)
            if image.status is Status.SUBMITTING and image.submission_id == request.submission_id
        ]
        request_type = parse_request_type(request.request_type)
        outcome.api_calls += 1
        result = self.submitter.submit_batch(
            request_type,
            request.endpoint,
            [Upload.of_image(image) for image in images],
            submission_id=request.submission_id,
            previous={image.uri: image for image in images},
            deadline=deadline,
        )
        self._count(result, outcome)

    def elsewhere(self, request: TrackedRequest, state: str, outcome: SweepOutcome, deadline: float | None) -> None:
        """Ximilar will not finish this request (quota): its unfinished images go out in new requests."""
        images = [image for image in self.images_of(request) if image.status in UNFINISHED]
        self._submit_images(request, images, outcome, deadline)
        reason = f"Ximilar state {state}: its images were submitted again"
        self.requests.finish_request(
            request.submission_id,
            Status.FAILED,
            self.clock(),
            ximilar_status=state,
            request_id=request.request_id,
            reason=reason,
        )

    def retry_errors(self, request: TrackedRequest, outcome: SweepOutcome, deadline: float | None) -> None:
        """DONE with transient ERROR images: submitted again with fresh URLs; FAILED after MAX_IMAGE_ATTEMPTS."""
        images = [image for image in self.images_of(request, request.retry_record_ids) if image.status is Status.ERROR]
        again = [image for image in images if image.attempts < MAX_IMAGE_ATTEMPTS]
        for image in images:
            if image not in again:
                reason = f"gave up after {image.attempts} attempts: {image.status_reason}"
                outcome.images_failed += self.recorder.fail_images(
                    {image.record_id: image.uri}, reason, self.clock(), from_statuses=(Status.ERROR,)
                )
        self._submit_images(request, again, outcome, deadline)
        self.requests.clear_retries(request.submission_id, self.clock())

    def _submit_images(
        self, request: TrackedRequest, images: list[Image], outcome: SweepOutcome, deadline: float | None
    ) -> None:
        request_type = parse_request_type(request.request_type)
        limit = self.records_per_request[request_type]
        for chunk in chunks(images, limit):
            outcome.api_calls += 1
            result = self.submitter.submit_batch(
                request_type,
                request.endpoint,
                [Upload.of_image(image) for image in chunk],
                previous={image.uri: image for image in chunk},
                deadline=deadline,
            )
            self._count(result, outcome)

    def _count(self, result: SubmitOutcome, outcome: SweepOutcome) -> None:
        outcome.resubmitted_images += result.images_submitted
        if result.throttled:  # the submitter handed it on; this run stops calling Ximilar
            raise ResubmissionThrottled
