"""Completion events on EventBridge: `Image Finished` once per image reaching DONE, ERROR or FAILED, and
`Image Outputs Stored` once its outputs are all copied.

Emitted only after a conditional write that applied (the store returns what it wrote, and the service
that asked tells `ports.ImageEvents`), so each finish is told once; a repeat of the same write loses
its condition and tells nothing.
`detail.event_id` (record id, status and Ximilar request id) is the same for the same finish,
so a consumer can de-duplicate should a PutEvents be retried. The detail never holds the result
(it may exceed an event's 256 KB) nor any URL of Ximilar's or presigned one: a one-line summary,
where the input is, and the S3 URIs of the outputs.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Final, Protocol

from ximilar_async.values.entities import Image, OutputState
from ximilar_async.values.summaries import summary

logger = logging.getLogger(__name__)

IMAGE_FINISHED: Final = "Image Finished"
OUTPUTS_STORED: Final = "Image Outputs Stored"


@dataclass(frozen=True)
class CompletionEvent:
    detail_type: str
    detail: dict[str, Any]


class EventPublisher(Protocol):
    def publish(self, events: Iterable[CompletionEvent]) -> None: ...


def event_id(image: Image, detail_type: str) -> str:
    """Deterministic: the same finish of the same upload always has the same id."""
    basis = f"{detail_type}|{image.record_id}|{image.status.value}|{image.request_id or ''}"
    return hashlib.sha256(basis.encode()).hexdigest()[:32]


def detail_of(image: Image, detail_type: str) -> dict[str, Any]:
    item = {**asdict(image), "status": image.status.value}
    return {
        "event_id": event_id(image, detail_type),
        "image_uri": image.uri,
        "input": {"bucket": image.bucket, "key": image.key, "version": image.version},
        "record_id": image.record_id,
        "status": image.status.value,
        "reason": image.status_reason,
        "request_type": image.request_type,
        "endpoint": image.endpoint,
        "request_id": image.request_id,
        "summary": summary(item),
        "result_s3_uri": image.result_s3_uri,
        "outputs": {
            name: {"uri": output.uri, "state": output.state.value, "reason": output.reason}
            for name, output in sorted(image.outputs.items())
        },
    }


@dataclass
class CompletionEvents:
    """`ports.ImageEvents` on a publisher: a service calls `finished` after each finishing write of its applied."""

    publisher: EventPublisher

    def finished(self, image: Image) -> None:
        self._publish(image, IMAGE_FINISHED)

    def outputs_stored(self, image: Image) -> None:
        self._publish(image, OUTPUTS_STORED)

    def _publish(self, image: Image, detail_type: str) -> None:
        # The state is already written: a lost event must not undo it or fail the caller's batch.
        try:
            self.publisher.publish([CompletionEvent(detail_type, detail_of(image, detail_type))])
        except Exception:
            logger.exception(
                "completion event not published", extra={"image_uri": image.uri, "detail_type": detail_type}
            )


@dataclass(frozen=True)
class NoEvents:
    """`ports.ImageEvents` that tells nobody: a service built without a bus (tools, some tests)."""

    def finished(self, image: Image) -> None:
        return None

    def outputs_stored(self, image: Image) -> None:
        return None


NO_EVENTS: Final = NoEvents()


def all_stored(image: Image) -> bool:
    return bool(image.outputs) and all(output.state is OutputState.STORED for output in image.outputs.values())
