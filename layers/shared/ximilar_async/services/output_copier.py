"""The outputs function's service: copy one image's artifacts into the output location.

Per job (one OutputsQueue message, `outputs.OutputJob`):
1. read the image (consistent): a job for an upload that was uploaded or submitted again since, or
   whose outputs are no longer PENDING (a repeated message), does nothing;
2. each PENDING output is streamed from Ximilar's URL into S3 (`ArtifactCopier`), then a conditional
   write sets it STORED with its final URI (condition: same upload, still PENDING). The copy's key
   depends only on the input and the artifact, so a repeat overwrites the same object: harmless;
3. an artifact gone from Ximilar (403/404/410) ends its output FAILED with the reason; or, for a
   request type in `regenerate_outputs_for`, the image is submitted again ONCE (counted on the item
   by a conditional write, `output_regenerations`) through `Submitter.submit_batch(previous=...)`,
   and the new result brings new PENDING outputs. A second expiry ends FAILED: never a loop;
4. any other failure (Ximilar's 5xx, a network error, S3) raises: SQS delivers the job again, and the
   delivery that reaches `max_attempts` ends the outputs FAILED with the error instead.
When the last output of an image becomes STORED, one `Image Outputs Stored` event is published.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Final

from ximilar_async.services.completion_events import NO_EVENTS, all_stored
from ximilar_async.services.ports import ImageEvents, ImageOutputs
from ximilar_async.services.submitter import Submitter
from ximilar_async.values.clock import Clock, utc_now
from ximilar_async.values.entities import Image, Output, OutputState
from ximilar_async.values.outputs import (
    ArtifactCopier,
    ArtifactGone,
    CopyResult,
    OutputJob,
    OutputLocation,
    clip,
    metadata_for,
)
from ximilar_async.values.request_types import RequestType, parse_request_type
from ximilar_async.values.statuses import Status
from ximilar_async.values.uploads import Upload

logger = logging.getLogger(__name__)

MAX_REGENERATIONS: Final = 1  # resubmissions of one upload because an artifact expired


@dataclass
class OutputCopier:
    images: ImageOutputs
    copier: ArtifactCopier
    location: OutputLocation
    submitter: Submitter | None  # None: never regenerate
    regenerate_for: frozenset[RequestType]
    max_attempts: int
    events: ImageEvents = NO_EVENTS
    clock: Clock = utc_now

    def copy(self, job: OutputJob, attempt: int = 1) -> CopyResult:
        """Copy the job's PENDING outputs; raises on a failure worth another delivery (before the last)."""
        result = CopyResult()
        image = self.images.image(job.image_uri)
        if image is None or image.record_id != job.record_id or image.status is not Status.DONE:
            result.skipped = "the image was uploaded or submitted again since"
            return result
        pending = {
            name: url
            for name, url in job.artifacts.items()
            if (output := image.outputs.get(name)) is not None and output.state is OutputState.PENDING
        }
        if not pending:
            result.skipped = "no output is pending (a repeated job)"
            return result
        context = {"image_uri": image.uri, "request_id": job.request_id}
        for name, url in pending.items():
            try:
                copied = self.copier.copy(
                    url,
                    self.location.bucket,
                    functools.partial(self.location.key, image.bucket, image.key, name),
                    metadata_for(image, job.request_id),
                )
            except ArtifactGone as gone:
                if self._regenerate(image, name, str(gone)):
                    result.regenerated = True
                    return result  # the new result brings new outputs; the others are moot
                self._finish(image, name, Output(image.outputs[name].uri, OutputState.FAILED, clip(str(gone))), result)
                continue
            except Exception as error:
                if attempt < self.max_attempts:
                    logger.warning(
                        "copy failed; the job will be delivered again",
                        extra={**context, "output": name, "attempt": attempt, "error": type(error).__name__},
                    )
                    raise
                reason = clip(f"not copied after {attempt} attempts: {type(error).__name__}: {error}")
                self._finish(image, name, Output(image.outputs[name].uri, OutputState.FAILED, reason), result)
                continue
            self._finish(image, name, Output(copied.uri, OutputState.STORED, size_bytes=copied.size_bytes), result)
            logger.info("output stored", extra={**context, "output": name, "size_bytes": copied.size_bytes})
        return result

    def _finish(self, image: Image, name: str, output: Output, result: CopyResult) -> None:
        written = self.images.set_output(image.uri, image.record_id, name, output, self.clock())
        if written is None:
            return  # a repeat, or the image moved on: its state is someone else's now
        (result.stored if output.state is OutputState.STORED else result.failed).append(name)
        if output.state is OutputState.FAILED:
            logger.warning("output not copied", extra={"image_uri": image.uri, "output": name, "reason": output.reason})
        if all_stored(written):
            self.events.outputs_stored(written)

    def _regenerate(self, image: Image, name: str, reason: str) -> bool:
        """Submit the image again, once, if its type allows it; False when it may not (or lost the race)."""
        if self.submitter is None or image.request_type is None or image.endpoint is None:
            return False
        request_type = parse_request_type(image.request_type)
        if request_type not in self.regenerate_for or image.output_regenerations >= MAX_REGENERATIONS:
            return False
        counted = self.images.count_output_regeneration(
            image, name, clip(f"{reason}; submitted again to regenerate it"), self.clock(), limit=MAX_REGENERATIONS
        )
        if counted is None:
            return False
        outcome = self.submitter.submit_batch(
            request_type, image.endpoint, [Upload.of_image(counted)], previous={counted.uri: counted}
        )
        logger.info(
            "artifact expired: image submitted again",
            extra={"image_uri": image.uri, "output": name, "submitted": outcome.images_submitted},
        )
        return True
