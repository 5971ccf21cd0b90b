"""Items to the domain's values and back: pynamodb items never leave the data layer.

Also the vocabulary every store shares: which statuses are unfinished, and DynamoDB's epoch seconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Final

from ximilar_async.adapters.dynamodb.models import ImageItem, RequestItem
from ximilar_async.values.entities import Image, Output, OutputState, TrackedRequest
from ximilar_async.values.statuses import Status

EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def to_image(item: ImageItem) -> Image:
    result = item.result.as_dict() if item.result is not None else None  # type: ignore[no-untyped-call]
    return Image(
        uri=item.image_uri,
        bucket=item.bucket,
        key=item.key,
        version=item.version,
        version_id=item.version_id,
        sequencer=item.sequencer,
        size_bytes=int(item.size_bytes or 0),
        record_id=item.record_id,
        status=Status(item.status),
        status_reason=item.status_reason,
        request_type=item.request_type,
        endpoint=item.endpoint,
        submission_id=item.submission_id,
        request_id=item.request_id,
        result=result,
        result_s3_uri=item.result_s3_uri,
        attempts=int(item.attempts or 0),
        outputs=to_outputs(item.outputs.as_dict() if item.outputs is not None else {}),  # type: ignore[no-untyped-call]
        output_regenerations=int(item.output_regenerations or 0),
        lease_until=None if item.lease_until is None else int(item.lease_until),
        created_at=item.created_at,
        updated_at=item.updated_at,
    )


def to_outputs(stored: dict[str, Any]) -> dict[str, Output]:
    return {
        name: Output(
            uri=str(value["uri"]),
            state=OutputState(value["state"]),
            reason=value.get("reason"),
            size_bytes=int(value["size_bytes"]) if value.get("size_bytes") is not None else None,
        )
        for name, value in stored.items()
    }


def output_value(output: Output) -> dict[str, Any]:
    value: dict[str, Any] = {"uri": output.uri, "state": output.state.value}
    if output.reason:
        value["reason"] = output.reason
    if output.size_bytes is not None:
        value["size_bytes"] = output.size_bytes
    return value


def to_request(item: RequestItem) -> TrackedRequest:
    images = item.images.as_dict()  # type: ignore[no-untyped-call]
    return TrackedRequest(
        submission_id=item.submission_id,
        request_id=item.request_id,
        request_type=item.request_type,
        endpoint=item.endpoint,
        status=Status(item.status),
        ximilar_status=item.ximilar_status,
        status_reason=item.status_reason,
        images={str(record_id): str(uri) for record_id, uri in images.items()},
        checks=int(item.checks or 0),
        submit_attempts=int(item.submit_attempts or 0),
        retry_record_ids=frozenset(item.retry_record_ids or ()),
        held_back=bool(item.held_back),
        incomplete_answers=int(item.incomplete_answers or 0),
        sweep_failures=int(item.sweep_failures or 0),
        next_check_at=None if item.next_check_at is None else int(item.next_check_at),
        created_at=item.created_at,
        age_from=item.age_from,
        updated_at=item.updated_at,
    )


def as_known(image: Image, request: TrackedRequest) -> Image:
    """An image as the pipeline knows it: one in flight (SUBMITTING from claim to result) takes its
    request's status (CREATED, PROCESSING at Ximilar) and Ximilar's id, which only the request item holds."""
    if image.status is not Status.SUBMITTING or image.submission_id != request.submission_id:
        return image
    if request.status not in (Status.CREATED, Status.PROCESSING):
        # Waiting to be submitted; or the request finished after the image was read (the image with it):
        # Ximilar's id, if any, still names the request it went out in.
        return replace(image, request_id=request.request_id)
    reason = image.status_reason or request.status_reason
    return replace(image, status=request.status, status_reason=reason, request_id=request.request_id)


def waiting_images(
    request: TrackedRequest, found: Mapping[str, Image], candidates: Mapping[str, str]
) -> dict[str, Image]:
    """Of `candidates` (record `_id` -> URI), the images still waiting for `request`'s answer, from `found`.

    An image uploaded again (another `_id`), submitted again in another request, or finished (through
    this request or another of the same upload) is no longer waiting for this one. A request none of
    whose images waits is finished, whatever its item says: the webhook does not write it when it has
    nothing else to say (`ResultRecorder`).
    """
    return {
        record_id: image
        for record_id, uri in candidates.items()
        if (image := found.get(uri)) is not None
        and image.record_id == record_id
        and image.submission_id == request.submission_id
        and not image.status.is_terminal
    }


def epoch(moment: datetime) -> int:
    return int(moment.timestamp())
