"""The operations on the two tables, each one conditional write that keeps the state machine honest.

An image moves SUBMITTING -> CREATED -> (PROCESSING) -> DONE | ERROR, or ends FAILED; a write never
moves a finished image back, never lets an older upload of a key replace a newer one, and never
lets two submitters hold the same upload at once (the SUBMITTING claim carries a lease).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pynamodb.exceptions import PutError, UpdateError
from pynamodb.expressions.condition import Condition
from pynamodb.expressions.update import Action

from ximilar_async.dal import keys
from ximilar_async.dal.models import ImageItem, RequestItem, Tables
from ximilar_async.statuses import Status
from ximilar_async.uploads import Upload

CONDITION_FAILED = "ConditionalCheckFailedException"


def _lost_race(error: PutError | UpdateError) -> bool:
    if error.cause_response_code == CONDITION_FAILED:
        return True
    raise error


def epoch(moment: datetime) -> int:
    return int(moment.timestamp())


@dataclass(frozen=True)
class Repository:
    tables: Tables
    shards: int
    request_retention: timedelta

    # --- images -------------------------------------------------------------------------------------
    def _new_image_condition(self, upload: Upload) -> Condition:
        images = self.tables.images
        newer_upload = (images.record_id != upload.record_id) & (images.sequencer < upload.sequencer)
        condition: Condition = images.image_uri.does_not_exist() | newer_upload
        return condition

    def _image(self, upload: Upload, status: Status, now: datetime) -> ImageItem:
        return self.tables.images(
            upload.uri,
            bucket=upload.bucket,
            key=upload.key,
            version=upload.version,
            version_id=upload.version_id,
            sequencer=upload.sequencer,
            size_bytes=upload.size,
            record_id=upload.record_id,
            status=status.value,
            status_shard=keys.status_shard(status, upload.uri, self.shards),
            created_at=now,
            updated_at=now,
        )

    def claim_image(
        self,
        upload: Upload,
        request_type: str,
        endpoint: str,
        submission_id: str,
        now: datetime,
        lease: timedelta,
        retry_of: ImageItem | None = None,
    ) -> bool:
        """Write the image SUBMITTING for `submission_id`; False when it is a duplicate or stale upload.

        Taken: a new key, a newer upload of a key, or this upload when its earlier claim was released
        or its lease ran out (the submitter that held it failed or died). With `retry_of` (the sweeper
        submitting an image again), only if the image is still exactly as it was read.
        """
        images = self.tables.images
        image = self._image(upload, Status.SUBMITTING, now)
        image.request_type, image.endpoint, image.submission_id = request_type, endpoint, submission_id
        image.attempts = 1 if retry_of is None else int(retry_of.attempts) + 1
        image.lease_until = epoch(now + lease)
        if retry_of is None:
            reclaimable = (
                (images.record_id == upload.record_id)
                & (images.status == Status.SUBMITTING.value)
                & (images.lease_until < epoch(now))
            )
            condition = self._new_image_condition(upload) | reclaimable
        else:
            image.created_at = retry_of.created_at
            condition = (
                (images.record_id == upload.record_id)
                & (images.status == retry_of.status)
                & (images.updated_at == retry_of.updated_at)
            )
        try:
            image.save(condition=condition)
        except PutError as error:
            return not _lost_race(error)
        return True

    def reject_image(self, upload: Upload, reason: str, now: datetime) -> bool:
        """Record an upload that is not submitted as FAILED with `reason`; False for a duplicate."""
        image = self._image(upload, Status.FAILED, now)
        image.status_reason = reason
        try:
            image.save(condition=self._new_image_condition(upload))
        except PutError as error:
            return not _lost_race(error)
        return True

    def _status_actions(self, uri: str, status: Status, now: datetime) -> list[Action]:
        """A status change of one image: the status, its `by_status` shard key, the time; no lease left."""
        images = self.tables.images
        return [
            images.status.set(status.value),
            images.status_shard.set(keys.status_shard(status, uri, self.shards)),
            images.updated_at.set(now),
            images.lease_until.remove(),
        ]

    def _update_claimed(
        self, submission_id: str, uris: Iterable[str], actions_for: Callable[[str], list[Action]]
    ) -> int:
        """Apply each image's actions to the images this submission still holds in SUBMITTING; returns how many."""
        images = self.tables.images
        changed = 0
        for uri in uris:
            try:
                images(uri).update(
                    actions=actions_for(uri),
                    condition=(images.submission_id == submission_id) & (images.status == Status.SUBMITTING.value),
                )
                changed += 1
            except UpdateError as error:
                _lost_race(error)  # a webhook was faster, or a newer upload took the key
        return changed

    def mark_images_created(self, submission_id: str, request_id: str, uris: Iterable[str], now: datetime) -> int:
        images = self.tables.images
        return self._update_claimed(
            submission_id,
            uris,
            lambda uri: [*self._status_actions(uri, Status.CREATED, now), images.request_id.set(request_id)],
        )

    def release_images(self, submission_id: str, uris: Iterable[str], reason: str, now: datetime) -> int:
        """Let the next delivery (or the sweeper) take these images again at once."""
        images = self.tables.images
        return self._update_claimed(
            submission_id,
            uris,
            lambda uri: [images.lease_until.set(0), images.status_reason.set(reason), images.updated_at.set(now)],
        )

    def fail_claimed_images(self, submission_id: str, uris: Iterable[str], reason: str, now: datetime) -> int:
        images = self.tables.images
        return self._update_claimed(
            submission_id,
            uris,
            lambda uri: [*self._status_actions(uri, Status.FAILED, now), images.status_reason.set(reason)],
        )

    # --- requests -----------------------------------------------------------------------------------
    def open_request(
        self,
        submission_id: str,
        request_type: str,
        endpoint: str,
        images: Mapping[str, str],
        now: datetime,
        check_at: datetime,
    ) -> None:
        """The request item, SUBMITTING and due for the sweeper at `check_at` should nothing follow."""
        self.tables.requests(
            submission_id,
            request_type=request_type,
            endpoint=endpoint,
            status=Status.SUBMITTING.value,
            images=dict(images),
            submit_attempts=1,
            due_shard=keys.due_shard(submission_id, self.shards),
            next_check_at=epoch(check_at),
            created_at=now,
            updated_at=now,
        ).save(condition=self.tables.requests.submission_id.does_not_exist())

    def set_request_images(self, submission_id: str, images: Mapping[str, str], now: datetime) -> None:
        requests = self.tables.requests
        requests(submission_id).update(actions=[requests.images.set(dict(images)), requests.updated_at.set(now)])

    def forget_request(self, submission_id: str) -> None:
        """Delete a request item that never led to a POST (every upload in it was a duplicate)."""
        requests = self.tables.requests
        requests(submission_id).delete(condition=requests.status == Status.SUBMITTING.value)

    def mark_request_created(self, submission_id: str, request_id: str, now: datetime, check_at: datetime) -> bool:
        requests = self.tables.requests
        try:
            requests(submission_id).update(
                actions=[
                    requests.request_id.set(request_id),
                    requests.status.set(Status.CREATED.value),
                    requests.ximilar_status.set(Status.CREATED.value),
                    requests.status_reason.remove(),
                    requests.next_check_at.set(epoch(check_at)),
                    requests.updated_at.set(now),
                ],
                condition=requests.status == Status.SUBMITTING.value,
            )
        except UpdateError as error:
            return not _lost_race(error)
        return True

    def defer_request(self, submission_id: str, reason: str, now: datetime, check_at: datetime) -> None:
        """Ximilar did not take it this time: keep it SUBMITTING, due for the sweeper at `check_at`."""
        requests = self.tables.requests
        requests(submission_id).update(
            actions=[
                requests.status_reason.set(reason),
                requests.next_check_at.set(epoch(check_at)),
                requests.updated_at.set(now),
            ],
            condition=requests.status == Status.SUBMITTING.value,
        )

    # --- results (the webhook and the sweeper) ---------------------------------------------------------
    def images_of(self, request: RequestItem) -> dict[str, str]:
        """A request's images: record `_id` -> image URI."""
        return {str(record_id): str(uri) for record_id, uri in request.images.as_dict().items()}  # type: ignore[no-untyped-call]

    def get_request(self, submission_id: str) -> RequestItem | None:
        try:
            return self.tables.requests.get(submission_id, consistent_read=True)
        except self.tables.requests.DoesNotExist:
            return None

    def record_image_result(self, result: ImageResult, now: datetime) -> bool:
        """Finish one image DONE or ERROR; False when it is already finished or was uploaded again since."""
        images = self.tables.images
        actions = [*self._status_actions(result.uri, result.status, now), images.request_id.set(result.request_id)]
        actions.append(images.status_reason.set(result.reason) if result.reason else images.status_reason.remove())
        if result.record is not None:
            actions += [images.result.set(result.record), images.result_s3_uri.remove()]
        elif result.result_s3_uri is not None:
            actions += [images.result_s3_uri.set(result.result_s3_uri), images.result.remove()]
        unfinished = [Status.SUBMITTING.value, Status.CREATED.value, Status.PROCESSING.value, Status.FAILED.value]
        try:
            images(result.uri).update(
                actions=actions,
                condition=(images.record_id == result.record_id) & images.status.is_in(*unfinished),
            )
        except UpdateError as error:
            return not _lost_race(error)
        return True

    def fail_unfinished_images(
        self,
        record_ids_to_uris: Mapping[str, str],
        reason: str,
        now: datetime,
        from_statuses: tuple[Status, ...] = (Status.SUBMITTING, Status.CREATED, Status.PROCESSING),
    ) -> int:
        """FAILED with `reason` for every image of a request still in one of `from_statuses` (any holder)."""
        images = self.tables.images
        pending = [status.value for status in from_statuses]
        failed = 0
        for record_id, uri in record_ids_to_uris.items():
            try:
                images(uri).update(
                    actions=[*self._status_actions(uri, Status.FAILED, now), images.status_reason.set(reason)],
                    condition=(images.record_id == record_id) & images.status.is_in(*pending),
                )
                failed += 1
            except UpdateError as error:
                _lost_race(error)
        return failed

    def finish_request(
        self,
        submission_id: str,
        status: Status,
        ximilar_status: str | None,
        request_id: str | None,
        reason: str | None,
        now: datetime,
        retry: tuple[Iterable[str], datetime] | None = None,
    ) -> None:
        """DONE or FAILED: off the due index, kept for the retention period. DONE is never undone.

        `ximilar_status` is None when Ximilar never took the request (nothing of its to record).
        `retry` (record ids, when) keeps a DONE request due, for the sweeper to submit those images again.
        """
        requests = self.tables.requests
        actions: list[Action] = [
            requests.status.set(status.value),
            requests.updated_at.set(now),
            requests.expires_at.set(now + self.request_retention),
        ]
        if ximilar_status:
            actions.append(requests.ximilar_status.set(ximilar_status))
        if request_id:
            actions.append(requests.request_id.set(request_id))
        retry_ids = set(retry[0]) if retry else set()
        if retry and retry_ids:
            actions += [
                requests.retry_record_ids.set(retry_ids),
                requests.due_shard.set(keys.due_shard(submission_id, self.shards)),
                requests.next_check_at.set(epoch(retry[1])),
            ]
        else:
            actions += [requests.due_shard.remove(), requests.next_check_at.remove()]
        actions.append(requests.status_reason.set(reason) if reason else requests.status_reason.remove())
        condition = None if status is Status.DONE else requests.status != Status.DONE.value
        try:
            requests(submission_id).update(actions=actions, condition=condition)
        except UpdateError as error:
            _lost_race(error)

    # --- the sweeper ------------------------------------------------------------------------------------
    def due_requests(self, shard_order: Iterable[int], now: datetime, counter: DueCounter) -> Iterator[RequestItem]:
        """Requests whose next check is due, shard by shard, read lazily: the caller stops when it must."""
        requests = self.tables.requests
        for shard in shard_order:
            for request in requests.due.query(f"due#{shard:02d}", requests.next_check_at <= epoch(now), page_size=100):
                counter.items_read += 1
                yield request

    def take_due(self, request: RequestItem, until: datetime) -> bool:
        """Hold a due request until `until`: False when another sweeper run took (or finished) it first."""
        requests = self.tables.requests
        try:
            requests(request.submission_id).update(
                actions=[requests.next_check_at.set(epoch(until))],
                condition=requests.next_check_at == request.next_check_at,
            )
        except UpdateError as error:
            return not _lost_race(error)
        return True

    def reschedule(self, submission_id: str, check_at: datetime, ximilar_status: str | None, now: datetime) -> None:
        requests = self.tables.requests
        actions: list[Action] = [
            requests.next_check_at.set(epoch(check_at)),
            requests.checks.add(1),
            requests.updated_at.set(now),
        ]
        if ximilar_status:
            actions.append(requests.ximilar_status.set(ximilar_status))
        requests(submission_id).update(actions=actions, condition=requests.due_shard.exists())

    def restart_request(self, submission_id: str, now: datetime, check_at: datetime) -> None:
        """Another submission attempt of a request still SUBMITTING."""
        requests = self.tables.requests
        requests(submission_id).update(
            actions=[
                requests.submit_attempts.add(1),
                requests.next_check_at.set(epoch(check_at)),
                requests.updated_at.set(now),
            ],
            condition=requests.status == Status.SUBMITTING.value,
        )

    def clear_retries(self, submission_id: str, now: datetime) -> None:
        requests = self.tables.requests
        requests(submission_id).update(
            actions=[
                requests.retry_record_ids.remove(),
                requests.due_shard.remove(),
                requests.next_check_at.remove(),
                requests.updated_at.set(now),
            ]
        )

    def images_by_uri(self, uris: Iterable[str]) -> dict[str, ImageItem]:
        return {image.image_uri: image for image in self.tables.images.batch_get(list(uris), consistent_read=True)}


@dataclass
class DueCounter:
    items_read: int = 0


@dataclass(frozen=True)
class ImageResult:
    """What one record of a finished request says about one image."""

    uri: str
    record_id: str
    request_id: str
    status: Status  # DONE or ERROR
    reason: str | None
    record: dict[str, Any] | None  # the record, when it fits in the item
    result_s3_uri: str | None = None  # else where it is stored
