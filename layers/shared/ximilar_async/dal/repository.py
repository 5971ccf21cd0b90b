"""The operations on the two tables, each one conditional write that keeps the state machine honest.

An image is written twice in its life when all goes well: claimed SUBMITTING, then finished DONE or
ERROR (or FAILED) with its result; while Ximilar has it, the request item, not the image, says so
(CREATED, PROCESSING). A write never moves a finished image back, never lets an older upload of a
key replace a newer one, and never lets two submitters hold the same upload at once. Only finished
images enter the `by_status` index and carry Ximilar's `request_id` (`by_request`): a status
change in flight would cost index writes nobody reads.

One rule for a lost race: every conditional write returns whether it applied (`writes`: a write's own
echo, met by botocore's retry after an ambiguous answer, counts as applied), and its caller decides
what a lost race means there. A write that would make an item too large raises `ItemTooLarge` (the
caller can store less); any other DynamoDB error propagates. Items never leave
this module: reads return the domain's values (`entities`).
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final, TypeVar

from pynamodb.expressions.condition import Condition
from pynamodb.expressions.update import Action

from ximilar_async import keys
from ximilar_async.dal import writes
from ximilar_async.dal.models import ImageItem, RequestItem, Tables
from ximilar_async.entities import Claim, DueScan, Image, ImageResult, Output, OutputState, SpendDay, TrackedRequest
from ximilar_async.statuses import Status
from ximilar_async.uploads import Upload

UNFINISHED: Final = (Status.SUBMITTING, Status.CREATED, Status.PROCESSING)
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
PARALLEL_QUERIES: Final = 16  # index queries of one page read in flight at once
T = TypeVar("T")
PAUSE_KEY: Final = "control#pause"
LAST_SWEEP_KEY: Final = "control#last-sweep"
SPEND_DAY_RETENTION: Final = timedelta(days=7)  # a day's counter is kept a week, for `xasync status`


def spend_key(day: date) -> str:
    return f"control#spend#{day.isoformat()}"


def _image(item: ImageItem) -> Image:
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
        outputs=_outputs(item.outputs.as_dict() if item.outputs is not None else {}),  # type: ignore[no-untyped-call]
        output_regenerations=int(item.output_regenerations or 0),
        lease_until=None if item.lease_until is None else int(item.lease_until),
        created_at=item.created_at,
        updated_at=item.updated_at,
    )


def _outputs(stored: dict[str, Any]) -> dict[str, Output]:
    return {
        name: Output(uri=str(value["uri"]), state=OutputState(value["state"]), reason=value.get("reason"))
        for name, value in stored.items()
    }


def _output_value(output: Output) -> dict[str, str]:
    value = {"uri": output.uri, "state": output.state.value}
    if output.reason:
        value["reason"] = output.reason
    return value


def _request(item: RequestItem) -> TrackedRequest:
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


def _as_known(image: Image, request: TrackedRequest) -> Image:
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


def _waiting(request: TrackedRequest, found: Mapping[str, Image], candidates: Mapping[str, str]) -> dict[str, Image]:
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


@dataclass(frozen=True)
class Repository:
    tables: Tables
    shards: int
    request_retention: timedelta
    # Told of each image a write of this repository finished (DONE, ERROR, FAILED), once, after the
    # write applied, with the item as DynamoDB returned it: the completion events hang here because
    # only here is it known which of several racing writers won (runtime wires it; None: nobody).
    finished: Callable[[Image], None] | None = None

    def _tell_finished(self, item: ImageItem) -> None:
        if self.finished is not None:
            self.finished(_image(item))

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
            status_shard=self._status_shard(status, upload.uri),
            created_at=now,
            updated_at=now,
        )

    def _status_shard(self, status: Status, uri: str) -> str | None:
        """The `by_status` key of an image in `status`: only finished images are in that index."""
        return keys.status_shard(status, uri, self.shards) if status.is_terminal else None

    def claim_image(
        self,
        upload: Upload,
        request_type: str,
        endpoint: str,
        submission_id: str,
        now: datetime,
        lease: timedelta,
        *,
        retry_of: Image | None = None,
    ) -> Claim:
        """Write the image SUBMITTING for `submission_id`: TAKEN, DUPLICATE (a duplicate or stale
        upload), or BUSY (a live claim with no request item yet holds it: ask again after its lease).

        Taken: a new key, a newer upload of a key, or this upload when nobody holds it any more
        (`_claim_held`). With `retry_of` (the sweeper submitting an image again), only if the
        image is still exactly as it was read.
        """
        image = self._image(upload, Status.SUBMITTING, now)
        image.request_type, image.endpoint, image.submission_id = request_type, endpoint, submission_id
        image.attempts = 1 if retry_of is None else retry_of.attempts + 1
        if retry_of is not None and retry_of.output_regenerations:
            image.output_regenerations = retry_of.output_regenerations  # a regeneration stays counted
        image.lease_until = epoch(now + lease)
        if retry_of is not None:
            image.created_at = retry_of.created_at
            return Claim.TAKEN if writes.put(image, self._unchanged(retry_of)) else Claim.DUPLICATE
        if writes.put(image, self._new_image_condition(upload)):
            return Claim.TAKEN
        # Taken already: the common duplicate costs this one read more, and only duplicates pay it.
        held = self.image(upload.uri)
        if held is None:
            return Claim.BUSY  # a condition failed on an item now gone: ask again later
        verdict = self._claim_held(held, upload, now)
        if verdict is not Claim.TAKEN:
            return verdict
        return Claim.TAKEN if writes.put(image, self._unchanged(held)) else Claim.DUPLICATE

    def _unchanged(self, image: Image) -> Condition:
        images = self.tables.images
        condition: Condition = (
            (images.record_id == image.record_id)
            & (images.status == image.status.value)
            & (images.updated_at == image.updated_at)
        )
        return condition

    def _claim_held(self, held: Image, upload: Upload, now: datetime) -> Claim:
        """May a new delivery of `upload` take it from the submission that claimed it?

        TAKEN when that claim was released (handed on: the next delivery may take it at once), or when
        its lease ran out before any request item was written: the submitter died before or right
        after its POST. A claim whose request item exists belongs to that request (Ximilar has it, or
        the sweeper will submit it): DUPLICATE; the image stays SUBMITTING while Ximilar works, with no
        write after the POST, so the request item is what says it was posted. A live claim with no
        request item is BUSY: its submitter is at work, or died; this delivery must come back after
        the lease (SQS redelivers it) rather than be taken for a duplicate, or a dead claim would hold
        the image forever.
        """
        if held.record_id != upload.record_id or held.status is not Status.SUBMITTING:
            return Claim.DUPLICATE
        if held.lease_until == 0:
            return Claim.TAKEN
        if held.lease_until is None or held.submission_id is None:
            return Claim.DUPLICATE
        if self.get_request(held.submission_id) is not None:
            return Claim.DUPLICATE
        return Claim.BUSY if held.lease_until >= epoch(now) else Claim.TAKEN

    def reject_image(self, upload: Upload, reason: str, now: datetime) -> bool:
        """Record an upload that is not submitted as FAILED with `reason`; False for a duplicate."""
        image = self._image(upload, Status.FAILED, now)
        image.status_reason = reason
        applied = writes.put(image, self._new_image_condition(upload))
        if applied:
            self._tell_finished(image)
        return applied

    def _status_actions(self, uri: str, status: Status, now: datetime) -> list[Action]:
        """A status change of one image: the status, its `by_status` shard key, the time; no lease left."""
        images = self.tables.images
        shard = self._status_shard(status, uri)
        return [
            images.status.set(status.value),
            images.status_shard.set(shard) if shard else images.status_shard.remove(),
            images.updated_at.set(now),
            images.lease_until.remove(),
        ]

    def _update_claimed(
        self,
        submission_id: str,
        uris: Iterable[str],
        actions_for: Callable[[str], list[Action]],
        *,
        finishes: bool = False,
    ) -> int:
        """Apply each image's actions to the images this submission still holds in SUBMITTING; returns how many.

        An image it no longer holds (a webhook was faster, or a newer upload took the key) is left as it is.
        """
        images = self.tables.images
        held = (images.submission_id == submission_id) & (images.status == Status.SUBMITTING.value)

        def update(uri: str) -> bool:
            item = images(uri)
            applied = writes.update(item, actions_for(uri), held)
            if applied and finishes:
                self._tell_finished(item)  # pynamodb's update loads the item DynamoDB returns (ALL_NEW)
            return applied

        return sum(update(uri) for uri in uris)

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
            finishes=True,
        )

    # --- requests -----------------------------------------------------------------------------------
    def _due_at(self, check_at: datetime) -> list[Action]:
        """Due for the sweeper at `check_at`, and kept (the TTL) the retention period after it: the one
        rule of every write that sets a check time, so a request still due never expires before its
        check, however far off (a long Retry-After, a paused spend guard, a sweeper down for days)."""
        requests = self.tables.requests
        return [requests.next_check_at.set(epoch(check_at)), requests.expires_at.set(check_at + self.request_retention)]

    def open_request(
        self,
        submission_id: str,
        request_type: str,
        endpoint: str,
        images: Mapping[str, str],
        now: datetime,
        check_at: datetime,
        *,
        request_id: str | None = None,
        reason: str | None = None,
        held_back: bool = False,
    ) -> bool:
        """The request item, written once its first POST has an outcome, due for the sweeper at `check_at`.

        With Ximilar's `request_id` it is CREATED (the webhook finishes it, or the sweeper checks it);
        without, it is SUBMITTING with `reason`: handed on for the sweeper to submit (`held_back`: not
        tried, which is not a failed attempt). Before the POST, the images' claims (each naming the
        submission) are the record of what is being sent. False if the submission id is taken (never,
        for a fresh UUID).
        """
        status = Status.CREATED if request_id else Status.SUBMITTING
        item = self.tables.requests(
            submission_id,
            request_type=request_type,
            endpoint=endpoint,
            status=status.value,
            ximilar_status=Status.CREATED.value if request_id else None,
            request_id=request_id,
            status_reason=reason,
            held_back=held_back or None,
            images=dict(images),
            submit_attempts=1,
            due_shard=keys.due_shard(submission_id, self.shards),
            next_check_at=epoch(check_at),
            created_at=now,
            updated_at=now,
            # Set from its creation: a request the webhook finishes is not written again (see `DueScan`).
            expires_at=check_at + self.request_retention,
        )
        return writes.put(item, self.tables.requests.submission_id.does_not_exist())

    def set_request_images(self, submission_id: str, images: Mapping[str, str], now: datetime) -> None:
        requests = self.tables.requests
        requests(submission_id).update(actions=[requests.images.set(dict(images)), requests.updated_at.set(now)])

    def mark_request_created(self, submission_id: str, request_id: str, now: datetime, check_at: datetime) -> bool:
        """SUBMITTING -> CREATED with Ximilar's id; False when the request is no longer SUBMITTING."""
        requests = self.tables.requests
        actions: list[Action] = [
            requests.request_id.set(request_id),
            requests.status.set(Status.CREATED.value),
            requests.ximilar_status.set(Status.CREATED.value),
            requests.status_reason.remove(),
            requests.held_back.remove(),
            *self._due_at(check_at),
            requests.updated_at.set(now),
        ]
        submitting = requests.status == Status.SUBMITTING.value
        return writes.update(requests(submission_id), actions, submitting)

    def defer_request(
        self, submission_id: str, reason: str, now: datetime, check_at: datetime, *, held_back: bool = False
    ) -> bool:
        """Ximilar did not take it this time: keep it SUBMITTING, due for the sweeper at `check_at`.

        `held_back`: it was not tried (throttled, or no time left), which is not a failed attempt.
        False when the request is no longer SUBMITTING.
        """
        requests = self.tables.requests
        actions: list[Action] = [
            requests.held_back.set(held_back),
            requests.status_reason.set(reason),
            *self._due_at(check_at),
            requests.updated_at.set(now),
        ]
        submitting = requests.status == Status.SUBMITTING.value
        return writes.update(requests(submission_id), actions, submitting)

    # --- results (the webhook and the sweeper) ---------------------------------------------------------
    def get_request(self, submission_id: str) -> TrackedRequest | None:
        try:
            return _request(self.tables.requests.get(submission_id, consistent_read=True))
        except self.tables.requests.DoesNotExist:
            return None

    def record_image_result(self, result: ImageResult, now: datetime) -> datetime | None:
        """Finish one image DONE or ERROR: the image's `created_at` (its upload, for the latency metric) when
        it applied, None when it is already finished or was uploaded again since.

        The write returns the item's new attributes anyway, so the upload time costs no read. Raises
        `ItemTooLarge` when the result does not fit in the item.
        """
        images = self.tables.images
        # The result first: DynamoDB applies an update whole or not at all, but moto (the tests' DynamoDB)
        # applies actions in order and keeps those before an item-size refusal.
        actions: list[Action] = []
        if result.record is not None:
            actions += [images.result.set(result.record), images.result_s3_uri.remove()]
        elif result.result_s3_uri is not None:
            actions += [images.result_s3_uri.set(result.result_s3_uri), images.result.remove()]
        actions += [*self._status_actions(result.uri, result.status, now), images.request_id.set(result.request_id)]
        actions.append(images.status_reason.set(result.reason) if result.reason else images.status_reason.remove())
        # The outputs to copy ride on the result's own write: no second write, and no PENDING without a result.
        if result.outputs:
            outputs = {name: _output_value(output) for name, output in result.outputs.items()}
            actions.append(images.outputs.set(outputs))
        else:
            actions.append(images.outputs.remove())
        replaceable = [status.value for status in (*UNFINISHED, Status.FAILED)]
        condition = (images.record_id == result.record_id) & images.status.is_in(*replaceable)
        item = images(result.uri)
        if not writes.update(item, actions, condition):
            return None
        self._tell_finished(item)
        created_at: datetime | None = getattr(item, "created_at", None)
        return created_at or now

    def set_output(self, uri: str, record_id: str, name: str, output: Output, now: datetime) -> Image | None:
        """Move one PENDING output of this upload's DONE image to `output` (STORED or FAILED).

        Returns the image as written, or None when the condition failed: the output is no longer
        PENDING (a repeated message: harmless), or the image was uploaded or submitted again since.
        """
        images = self.tables.images
        condition = (
            (images.record_id == record_id)
            & (images.status == Status.DONE.value)
            & (images.outputs[name]["state"] == OutputState.PENDING.value)
        )
        # `updated_at` is the time of the image's status, and the range key of `by_status`: leaving it
        # spares a delete and a put in that index (and a write in `by_request`) per copied output.
        actions = [images.outputs[name].set(_output_value(output))]
        item = images(uri)
        return _image(item) if writes.update(item, actions, condition) else None

    def count_output_regeneration(
        self, image: Image, name: str, reason: str, now: datetime, *, limit: int
    ) -> Image | None:
        """Count one regeneration of `image` (its artifact `name` expired) if fewer than `limit` were made.

        The image must be exactly as read (same `updated_at`), so two copiers cannot both count one.
        Returns the image as written (for `claim_image(retry_of=...)`), or None when refused.
        """
        images = self.tables.images
        condition = (
            (images.record_id == image.record_id)
            & (images.status == Status.DONE.value)
            & (images.updated_at == image.updated_at)
            & (images.output_regenerations.does_not_exist() | (images.output_regenerations < limit))
        )
        failed = Output(image.outputs[name].uri if name in image.outputs else "", OutputState.FAILED, reason)
        actions = [
            images.output_regenerations.add(1),
            images.outputs[name].set(_output_value(failed)),
            images.updated_at.set(now),
        ]
        item = images(image.uri)
        return _image(item) if writes.update(item, actions, condition) else None

    def await_missing_records(
        self,
        submission_id: str,
        reason: str,
        now: datetime,
        check_at: datetime,
        *,
        ximilar_status: str,
        request_id: str,
        retry_record_ids: Collection[str] = (),
    ) -> bool:
        """Ximilar answered DONE but some images are still unfinished: keep the request due at `check_at`.

        The request is PROCESSING (not SUBMITTING: Ximilar has it, so it must not be submitted again),
        back on the due index, with `reason`, one more incomplete answer counted, and `retry_record_ids`
        added to those already waiting. False when it became DONE meanwhile.
        """
        requests = self.tables.requests
        actions: list[Action] = [
            requests.status.set(Status.PROCESSING.value),
            requests.ximilar_status.set(ximilar_status),
            requests.request_id.set(request_id),
            requests.status_reason.set(reason),
            requests.incomplete_answers.add(1),
            requests.due_shard.set(keys.due_shard(submission_id, self.shards)),
            *self._due_at(check_at),
            requests.updated_at.set(now),
        ]
        if retry_record_ids:
            actions.append(requests.retry_record_ids.add(set(retry_record_ids)))
        not_done = requests.status != Status.DONE.value
        return writes.update(requests(submission_id), actions, not_done)

    def fail_unfinished_images(
        self,
        record_ids_to_uris: Mapping[str, str],
        reason: str,
        now: datetime,
        *,
        from_statuses: tuple[Status, ...] = UNFINISHED,
    ) -> int:
        """FAILED with `reason` for every image of a request still in one of `from_statuses` (any holder).

        Returns how many changed; the others had finished, or were uploaded again, meanwhile.
        """
        images = self.tables.images
        pending = [status.value for status in from_statuses]

        def fail(record_id: str, uri: str) -> bool:
            actions = [*self._status_actions(uri, Status.FAILED, now), images.status_reason.set(reason)]
            condition = (images.record_id == record_id) & images.status.is_in(*pending)
            item = images(uri)
            applied = writes.update(item, actions, condition)
            if applied:
                self._tell_finished(item)
            return applied

        return sum(fail(record_id, uri) for record_id, uri in record_ids_to_uris.items())

    def finish_request(
        self,
        submission_id: str,
        status: Status,
        now: datetime,
        *,
        ximilar_status: str | None = None,
        request_id: str | None = None,
        reason: str | None = None,
        retry_record_ids: Collection[str] = (),
        retry_at: datetime | None = None,
    ) -> bool:
        """DONE or FAILED: off the due index, kept for the retention period. DONE is never undone.

        `ximilar_status` is None when Ximilar never took the request (nothing of its to record).
        `retry_record_ids` keeps a DONE request due at `retry_at`, for the sweeper to submit those
        images again. False when a FAILED would have undone a DONE (the request finished meanwhile).
        """
        requests = self.tables.requests
        actions: list[Action] = [requests.status.set(status.value), requests.updated_at.set(now)]
        if ximilar_status:
            actions.append(requests.ximilar_status.set(ximilar_status))
        if request_id:
            actions.append(requests.request_id.set(request_id))
        if retry_record_ids:
            actions += [
                requests.retry_record_ids.set(set(retry_record_ids)),
                requests.due_shard.set(keys.due_shard(submission_id, self.shards)),
                *self._due_at(retry_at or now),
            ]
        else:
            actions += [
                requests.due_shard.remove(),
                requests.next_check_at.remove(),
                requests.expires_at.set(now + self.request_retention),
            ]
        actions.append(requests.status_reason.set(reason) if reason else requests.status_reason.remove())
        condition = None if status is Status.DONE else requests.status != Status.DONE.value
        return writes.update(requests(submission_id), actions, condition)

    # --- the sweeper ------------------------------------------------------------------------------------
    def due_scan(self) -> DueScan:
        """A sweep's pass over the due index, starting where the last run's reading got to."""
        try:
            item = self.tables.control.get(LAST_SWEEP_KEY, consistent_read=True)
        except self.tables.control.DoesNotExist:
            return DueScan()
        marks = item.due_marks.as_dict() if item.due_marks is not None else {}  # type: ignore[no-untyped-call]
        passed = item.due_passed.as_dict() if item.due_passed is not None else {}  # type: ignore[no-untyped-call]
        full = item.due_full_from.as_dict() if item.due_full_from is not None else {}  # type: ignore[no-untyped-call]
        return DueScan(
            marks={int(shard): int(mark) for shard, mark in marks.items()},
            passed_before={str(request): int(check_at) for request, check_at in passed.items()},
            full_from={int(shard): int(start) for shard, start in full.items()},
            full_started=None if item.due_full_at is None else int(item.due_full_at),
        )

    def due_requests(self, shard_order: Iterable[int], now: datetime, scan: DueScan) -> Iterator[TrackedRequest]:
        """Requests whose next check is due, shard by shard from `scan`'s marks, then the full pass's
        share (`DueScan`), read lazily: the caller stops when it must (`scan` records how far each
        shard was read). Called again with the same `scan` after a read failed, it resumes where it was.

        The index holds keys only: each due request is read from the table (consistently), and one whose
        check time changed since the index was read (another run took it, or it finished) is passed over;
        between this read and `take_due`, the conditional write decides.
        """
        requests = self.tables.requests
        until = epoch(now)
        shards = list(shard_order)
        for shard in shards:
            if shard in scan.read_through:
                continue
            window = requests.next_check_at.between(scan.resume_of(shard, until), until)
            for entry in requests.due.query(keys.due_partition(shard), window, page_size=100):
                scan.reached[shard] = int(entry.next_check_at)
                yield from self._due_entry(entry, scan)
            scan.read_through[shard] = until
        scan.begin_full_pass_if_due(until, self.shards)
        for shard in shards:
            if shard not in scan.full_from or shard in scan.full_done:
                continue
            if (full := scan.full_window(shard, until)) is not None:
                entries = requests.due.query(
                    keys.due_partition(shard), requests.next_check_at.between(*full), page_size=100
                )
                for entry in entries:
                    scan.full_reached[shard] = int(entry.next_check_at)
                    yield from self._due_entry(entry, scan)
            scan.full_done.add(shard)

    def _due_entry(self, entry: RequestItem, scan: DueScan) -> Iterator[TrackedRequest]:
        """The request of one due-index entry, if it is still due at the entry's time."""
        scan.items_read += 1
        check_at = int(entry.next_check_at)
        if scan.passed_before.get(entry.submission_id) == check_at:
            return  # the last run was done with it (finished: it stays on the index)
        request = self.get_request(entry.submission_id)
        if request is not None and request.next_check_at == check_at:
            yield request
            # Only once the caller asks for the next one is it done with this one.
        scan.passed[entry.submission_id] = check_at

    def take_due(self, request: TrackedRequest, until: datetime) -> bool:
        """Hold a due request until `until`: False when another sweeper run took (or finished) it first."""
        requests = self.tables.requests
        unchanged = requests.next_check_at == request.next_check_at
        return writes.update(requests(request.submission_id), self._due_at(until), unchanged)

    def reschedule(
        self,
        submission_id: str,
        check_at: datetime,
        now: datetime,
        *,
        ximilar_status: str | None = None,
        paused: bool = False,
    ) -> bool:
        """Check again at `check_at`; False when the request left the due index meanwhile (it finished).

        `paused`: the spend guard holds it; its age limit counts from now.
        """
        requests = self.tables.requests
        actions: list[Action] = [
            *self._due_at(check_at),
            requests.checks.add(1),
            requests.updated_at.set(now),
        ]
        if ximilar_status:
            actions.append(requests.ximilar_status.set(ximilar_status))
        if paused:
            actions.append(requests.age_from.set(now))
        due = requests.due_shard.exists()
        return writes.update(requests(submission_id), actions, due)

    def restart_request(self, submission_id: str, now: datetime, check_at: datetime) -> bool:
        """Another submission attempt of a request still SUBMITTING; False when it is not SUBMITTING now."""
        requests = self.tables.requests
        actions: list[Action] = [
            requests.submit_attempts.add(1),
            *self._due_at(check_at),
            requests.updated_at.set(now),
        ]
        submitting = requests.status == Status.SUBMITTING.value
        return writes.update(requests(submission_id), actions, submitting)

    def note_sweep_failure(self, submission_id: str, reason: str, now: datetime, check_at: datetime) -> bool:
        """One more sweep of this request failed with `reason`: count it, check again at `check_at`.

        False when the request left the due index meanwhile (it finished).
        """
        requests = self.tables.requests
        actions: list[Action] = [
            requests.sweep_failures.add(1),
            requests.status_reason.set(reason),
            *self._due_at(check_at),
            requests.updated_at.set(now),
        ]
        due = requests.due_shard.exists()
        return writes.update(requests(submission_id), actions, due)

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

    # --- queries (the sweeper, the CLI, users) ----------------------------------------------------------
    def images_by_uri(self, uris: Iterable[str], *, consistent: bool = True) -> dict[str, Image]:
        wanted = list(uris)
        if not wanted:
            return {}
        found = self.tables.images.batch_get(wanted, consistent_read=consistent)
        return {item.image_uri: _image(item) for item in found}

    def unfinished_images(
        self, request: TrackedRequest, candidates: Mapping[str, str] | None = None, *, consistent: bool = True
    ) -> dict[str, str]:
        """Of `candidates` (record `_id` -> URI; default: all the request's), those still waiting for it.

        Eventually consistent is enough to skip work (an image read as waiting is only checked again).
        """
        wanted = request.images if candidates is None else candidates
        if not wanted:
            return {}
        found = self.images_by_uri(wanted.values(), consistent=consistent)
        return {record_id: image.uri for record_id, image in _waiting(request, found, wanted).items()}

    def request_finished(self, request: TrackedRequest) -> bool:
        """None of the request's images waits for it (see `_waiting`), read cheaply: first the images its
        answer finished, from `by_request` (a few hundred bytes each, whatever their results' size),
        then only the others, from the table, consistently: a stale read of an older upload's finished
        item would pass over the request a re-upload waits for. (An entry in `by_request` was put there
        by this request's answer: stale or not, that image does not wait for it.)"""
        answered = (
            {entry.image_uri for entry in self.tables.images.by_request.query(request.request_id)}
            if request.request_id
            else set()
        )
        others = {record_id: uri for record_id, uri in request.images.items() if uri not in answered}
        return not self.unfinished_images(request, others, consistent=True)

    def image(self, uri: str) -> Image | None:
        try:
            return _image(self.tables.images.get(uri, consistent_read=True))
        except self.tables.images.DoesNotExist:
            return None

    def image_uris_of_request(self, request_id: str) -> list[str]:
        """Every image of one Ximilar request: those answered (`by_request`), else those still in flight."""
        return list(self.image_statuses_of_request(request_id))

    # --- images in flight: the unfinished requests' images (they are in no status index) ----------------
    def in_flight_images(self) -> list[Image]:
        """The images of every unfinished request (the `due` index), each with its request's status.

        An image item stays SUBMITTING from its claim to its result; while Ximilar has it, its request
        says CREATED or PROCESSING, and that is the status shown here. An image claimed a moment ago
        whose request item is not written yet is not among them. O(images in flight), for the CLI and
        the page, never for the pipeline.
        """
        return [
            _as_known(image, request)
            for request, waiting in self._due_with_waiting_images()
            if not request.status.is_terminal
            for image in waiting
        ]

    def _due_with_waiting_images(self) -> list[tuple[TrackedRequest, list[Image]]]:
        """Each request on the `due` index from the sweeper's marks, with its images that wait for it.

        Entries before the marks were all handled (`DueScan`); those after may be finished too (the
        webhook recorded their images and left them there), and then none of their images waits.
        """
        requests = self.tables.requests
        scan = self.due_scan()
        ids = [
            entry.submission_id
            for shard in range(self.shards)
            for entry in requests.due.query(keys.due_partition(shard), requests.next_check_at >= scan.start_of(shard))
            if scan.passed_before.get(entry.submission_id) != int(entry.next_check_at)  # done with: finished
        ]
        found_requests = [_request(item) for item in requests.batch_get(ids)] if ids else []
        due = [request for request in found_requests if request.next_check_at is not None]
        found = self.images_by_uri({uri for request in due for uri in request.images.values()}, consistent=False)
        return [(request, list(_waiting(request, found, request.images).values())) for request in due]

    def images_as_known(self, uris: Iterable[str]) -> dict[str, Image]:
        """`images_by_uri` (eventually consistent), each image in flight with its request's status and id."""
        found = self.images_by_uri(uris, consistent=False)
        flying = {image.submission_id for image in found.values() if image.status is Status.SUBMITTING}
        wanted = [submission_id for submission_id in flying if submission_id]
        requests = {item.submission_id: _request(item) for item in self.tables.requests.batch_get(wanted)}
        return {
            uri: _as_known(image, request) if (request := requests.get(image.submission_id or "")) else image
            for uri, image in found.items()
        }

    def _in_flight(self, statuses: Iterable[Status]) -> list[Image]:
        wanted = set(statuses) & set(UNFINISHED)
        return [image for image in self.in_flight_images() if image.status in wanted] if wanted else []

    def image_uris_by_status(self, statuses: Iterable[Status], since: datetime) -> list[str]:
        """Images in `statuses`: finished ones changed since `since` (every shard of `by_status`), and
        every image in flight in an unfinished status."""
        images = self.tables.images
        statuses = list(statuses)
        return [
            item.image_uri
            for status in statuses
            if status.is_terminal
            for shard in keys.all_status_shards(status, self.shards)
            for item in images.by_status.query(shard, images.updated_at >= since)
        ] + [image.uri for image in self._in_flight(statuses)]

    # --- pages of images (the results page) ---------------------------------------------------------
    def count_by_status(self, since: datetime, statuses: Iterable[Status] = tuple(Status)) -> dict[Status, int]:
        """How many images of each status: finished ones changed since `since` (a COUNT query per
        `by_status` shard: it still reads the index items, but no item leaves DynamoDB), and every
        image in flight in an unfinished status.
        """
        images = self.tables.images
        statuses = list(statuses)
        in_flight = Counter(image.status for image in self._in_flight(statuses))
        shards = [
            (status, shard)
            for status in statuses
            if status.is_terminal
            for shard in keys.all_status_shards(status, self.shards)
        ]
        with ThreadPoolExecutor(max_workers=min(len(shards), PARALLEL_QUERIES) or 1) as pool:
            counted = pool.map(lambda pair: images.by_status.count(pair[1], images.updated_at >= since), shards)
            counts = {status: in_flight[status] for status in dict.fromkeys(statuses)}
            for (status, _), count in zip(shards, counted, strict=True):
                counts[status] += count
        return counts

    def _by_status_newest_first(
        self, shard: str, since: datetime, after: PagePosition | None, uri_prefix: str | None, page_size: int
    ) -> Iterator[tuple[datetime, str]]:
        """(updated_at, uri) of one `by_status` shard, newest first, strictly after `after` in page order."""
        images = self.tables.images
        if after is not None and after.updated_at < since:
            return
        condition = images.updated_at >= since if after is None else images.updated_at.between(since, after.updated_at)
        # image_uri is the table's key, so every index holds it and a prefix filter needs no base-table read.
        prefix = images.image_uri.startswith(uri_prefix) if uri_prefix else None
        items = images.by_status.query(
            shard, condition, filter_condition=prefix, scan_index_forward=False, page_size=page_size
        )
        # Equal times have no order in the index: sort each run of them by URI, so that a position names
        # one place in the page order and the next page starts exactly after it.
        for _, tied in itertools.groupby(items, key=lambda item: item.updated_at):
            for position in sorted(((item.updated_at, item.image_uri) for item in tied), reverse=True):
                if after is None or position < (after.updated_at, after.uri):
                    yield position

    def images_page(
        self,
        statuses: Iterable[Status],
        since: datetime,
        limit: int,
        *,
        after: PagePosition | None = None,
        uri_prefix: str | None = None,
        request_type: str | None = None,
        budget: int = 1000,
    ) -> ImagePage:
        """The newest images in `statuses` changed since `since`, `limit` at most, after `after`.

        Every shard of every status is read newest first, lazily, `limit` items a page, and merged, so a
        page costs about `limit` index items per shard whatever the table holds. `request_type` is not
        in the index: it filters the fetched images, and at most `budget` index items are examined
        for one page (the page may then be short; `after` of the answer continues the search).
        Images in flight (no status index holds them) come from `in_flight_images`, merged in by time.
        """
        page_size = max(1, min(limit, 100))
        statuses = list(dict.fromkeys(statuses))
        shards = [
            self._by_status_newest_first(shard, since, after, uri_prefix, page_size)
            for status in statuses
            if status.is_terminal
            for shard in keys.all_status_shards(status, self.shards)
        ]
        in_flight = {
            image.uri: image
            for image in self._in_flight(statuses)
            if image.updated_at >= since
            and (uri_prefix is None or image.uri.startswith(uri_prefix))
            and (after is None or (image.updated_at, image.uri) < (after.updated_at, after.uri))
        }
        flying = sorted(((image.updated_at, image.uri) for image in in_flight.values()), reverse=True)
        merged = heapq.merge(iter(flying), *_first_pages_at_once(shards), reverse=True)
        found: list[Image] = []
        examined = 0
        last: tuple[datetime, str] | None = None
        seen: set[str] = set()
        while len(found) < limit and examined < budget:
            chunk = list(itertools.islice(merged, min(limit - len(found), budget - examined)))
            if not chunk:
                return ImagePage(found, None)
            examined += len(chunk)
            by_uri = self.images_by_uri([uri for _, uri in chunk if uri not in in_flight], consistent=False)
            by_uri.update(in_flight)
            for position in chunk:
                last = position
                image = by_uri.get(position[1])
                # The index is eventually consistent: an image that just changed status may show up in
                # two shards for a moment; it is shown once.
                if image is None or image.uri in seen or (request_type and image.request_type != request_type):
                    continue
                seen.add(image.uri)
                found.append(image)
        more = last is not None and next(merged, None) is not None
        return ImagePage(found, PagePosition(*last) if more and last else None)

    def images_of_request_page(self, request_id: str, limit: int, *, after_uri: str | None = None) -> ImagePage:
        """One page of the images of a Ximilar request (the `by_request` index), in URI order.

        The index orders by URI, so only the `uri` of the answer's `after` counts here.
        """
        images = self.tables.images
        condition = images.image_uri > after_uri if after_uri else None
        uris = [item.image_uri for item in images.by_request.query(request_id, condition, limit=limit + 1)]
        if not uris and after_uri is None:
            flying = sorted(self._in_flight_of_request(request_id).items())
            return ImagePage([image for _, image in flying[:limit]], None)
        by_uri = self.images_by_uri(uris[:limit], consistent=False)
        found = [by_uri[uri] for uri in uris[:limit] if uri in by_uri]
        if len(uris) <= limit:
            return ImagePage(found, None)
        last = by_uri.get(uris[limit - 1])
        return ImagePage(found, PagePosition(last.updated_at if last else EPOCH, uris[limit - 1]))

    def status_reasons(self, statuses: Iterable[Status], since: datetime) -> Counter[str]:
        """The `status_reason`s of images in `statuses` since `since` (projected in `by_status`), counted."""
        images = self.tables.images
        return Counter(
            str(item.status_reason or "(no reason)")
            for status in statuses
            for shard in keys.all_status_shards(status, self.shards)
            for item in images.by_status.query(shard, images.updated_at >= since)
        )

    def oldest_in_flight(self) -> Image | None:
        """The image in flight uploaded longest ago (see `in_flight_images`)."""
        return min(self.in_flight_images(), key=lambda image: image.created_at, default=None)

    def unfinished_requests(self) -> list[TrackedRequest]:
        """Every request not finished (some image waits for it), or DONE with images to retry."""
        return [request for request, waiting in self._due_with_waiting_images() if waiting or request.retry_record_ids]

    def image_statuses_of_request(self, request_id: str) -> dict[str, Status]:
        """Image URI -> status of every image of this Ximilar request: those answered carry its id (the
        `by_request` index); before any answer, the request's images in flight."""
        answered = {item.image_uri: Status(item.status) for item in self.tables.images.by_request.query(request_id)}
        if answered:
            return answered
        return {uri: image.status for uri, image in self._in_flight_of_request(request_id).items()}

    def _in_flight_of_request(self, request_id: str) -> dict[str, Image]:
        return {image.uri: image for image in self.in_flight_images() if image.request_id == request_id}

    # --- spend guard and operations state (control items in the requests table) ----------------------
    def pause_reason(self) -> str | None:
        """Why submission is paused by hand, or None."""
        try:
            return str(self.tables.control.get(PAUSE_KEY, consistent_read=True).reason or "paused")
        except self.tables.control.DoesNotExist:
            return None

    def pause(self, reason: str, now: datetime) -> bool:
        """Pause submission until `resume`; False when it was already paused (the first reason is kept)."""
        control = self.tables.control
        item = control(PAUSE_KEY, reason=reason, updated_at=now)
        return writes.put(item, control.submission_id.does_not_exist())

    def resume(self, day: date, now: datetime) -> bool:
        """End a pause by hand and lift `day`'s limit; False when neither was in force (the day is lifted anyway)."""
        control = self.tables.control
        unpaused = writes.delete(control(PAUSE_KEY), control.submission_id.exists())
        lift: list[Action] = [
            control.resumed.set(True),
            control.updated_at.set(now),
            control.expires_at.set(now + SPEND_DAY_RETENTION),
        ]
        lifted = writes.update(control(spend_key(day)), lift, control.resumed.does_not_exist())
        return unpaused or lifted

    def reserve_submissions(self, day: date, images: int, limit: int, now: datetime) -> bool:
        """Count `images` against `day`'s limit in one atomic ADD; False (nothing counted) when they do not fit.

        The condition makes the check and the count one write: concurrent submitters never overshoot.
        A day whose limit was lifted by `resume` takes everything.
        """
        control = self.tables.control
        actions: list[Action] = [
            control.submitted.add(images),
            control.updated_at.set(now),
            control.expires_at.set(now + SPEND_DAY_RETENTION),
        ]
        # `resumed` is only ever set (to true): its existence is the lift.
        fits = control.resumed.exists()
        if images <= limit:
            fits = fits | control.submitted.does_not_exist() | (control.submitted <= limit - images)
        return writes.update(control(spend_key(day)), actions, fits)

    def spend_day(self, day: date) -> SpendDay:
        try:
            item = self.tables.control.get(spend_key(day), consistent_read=True)
        except self.tables.control.DoesNotExist:
            return SpendDay(day, 0, resumed=False)
        return SpendDay(day, int(item.submitted or 0), resumed=bool(item.resumed))

    def record_sweep(self, outcome: Mapping[str, Any], now: datetime, scan: DueScan) -> None:
        """Keep what the last sweeper run did, and where the next starts reading (one small item,
        overwritten every run). Overlapping runs may write theirs in either order: an earlier mark
        only makes the next run read some entries again."""
        marks = {str(shard): mark for shard, mark in scan.next_marks().items()}
        passed = scan.next_passed(lambda submission_id: keys.shard_of(submission_id, self.shards))
        full = {str(shard): start for shard, start in scan.next_full_from().items()}
        self.tables.control(
            LAST_SWEEP_KEY,
            outcome=dict(outcome),
            due_marks=marks,
            due_passed=passed,
            due_full_from=full,
            due_full_at=scan.full_started,
            updated_at=now,
        ).save()

    def last_sweep(self) -> tuple[datetime, dict[str, Any]] | None:
        """When the last sweeper run ended, and what it did."""
        try:
            item = self.tables.control.get(LAST_SWEEP_KEY, consistent_read=True)
        except self.tables.control.DoesNotExist:
            return None
        return item.updated_at, item.outcome.as_dict() if item.outcome is not None else {}  # type: ignore[no-untyped-call]


_END: Final = object()


def _first_pages_at_once(shards: list[Iterator[T]]) -> list[Iterator[T]]:
    """The shards' iterators with their first item (so their first page) read concurrently.

    A page reads every shard of every status (48 queries with 8 shards); one after the other, their
    round trips add up to most of the page's time.
    """
    with ThreadPoolExecutor(max_workers=min(len(shards), PARALLEL_QUERIES) or 1) as pool:
        heads = list(pool.map(lambda shard: next(shard, _END), shards))
    return [itertools.chain([head], shard) for head, shard in zip(heads, shards, strict=True) if head is not _END]  # type: ignore[list-item]


@dataclass(frozen=True, order=True)
class PagePosition:
    """Where a page of images ended (its last image's time and URI): the next page starts after it."""

    updated_at: datetime
    uri: str


@dataclass(frozen=True)
class ImagePage:
    images: list[Image]
    after: PagePosition | None  # None: there is nothing after this page
