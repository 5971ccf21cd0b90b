"""The images table: one item per uploaded key, written by conditional writes that keep its state machine honest.

An image is written twice in its life when all goes well: claimed SUBMITTING, then finished DONE or
ERROR (or FAILED) with its result; while Ximilar has it, the request item, not the image, says so
(CREATED, PROCESSING). A write never moves a finished image back, never lets an older upload of a
key replace a newer one, and never lets two submitters hold the same upload at once. Only finished
images enter the `by_status` index and carry Ximilar's `request_id` (`by_request`): a status
change in flight would cost index writes nobody reads.

Every conditional write returns whether it applied (`writes`: its own echo counts as applied) and a
write that finishes images returns them as written, the winner of any race: the service that asked
tells the event bus, never this module. A write that would make an item too large raises
`ItemTooLarge`; any other DynamoDB error propagates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from pynamodb.expressions.condition import Condition
from pynamodb.expressions.update import Action

from ximilar_async.adapters.dynamodb import keys, writes
from ximilar_async.adapters.dynamodb.mapping import epoch, output_value, to_image, waiting_images
from ximilar_async.adapters.dynamodb.models import ImageItem, Tables
from ximilar_async.values.entities import Claim, Image, ImageResult, Output, OutputState, TrackedRequest
from ximilar_async.values.statuses import UNFINISHED, Status
from ximilar_async.values.uploads import Upload


@dataclass(frozen=True)
class ImageStore:
    tables: Tables
    shards: int

    # --- claims (the submitter) -------------------------------------------------------------------------
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
        image = self._new_item(upload, Status.SUBMITTING, now)
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
        if self._request_exists(held.submission_id):
            return Claim.DUPLICATE
        return Claim.BUSY if held.lease_until >= epoch(now) else Claim.TAKEN

    def _request_exists(self, submission_id: str) -> bool:
        try:
            self.tables.requests.get(submission_id, consistent_read=True)
        except self.tables.requests.DoesNotExist:
            return False
        return True

    def reject_image(self, upload: Upload, reason: str, now: datetime) -> Image | None:
        """Record an upload that is not submitted as FAILED with `reason`: the image written, None for a duplicate."""
        item = self._new_item(upload, Status.FAILED, now)
        item.status_reason = reason
        return to_image(item) if writes.put(item, self._new_image_condition(upload)) else None

    def release_images(self, submission_id: str, uris: Iterable[str], reason: str, now: datetime) -> int:
        """Let the next delivery (or the sweeper) take these images again at once."""
        images = self.tables.images
        released = self._update_claimed(
            submission_id,
            uris,
            lambda uri: [images.lease_until.set(0), images.status_reason.set(reason), images.updated_at.set(now)],
        )
        return len(released)

    def fail_claimed_images(self, submission_id: str, uris: Iterable[str], reason: str, now: datetime) -> list[Image]:
        """FAILED with `reason`, those of these images the submission still holds: the images written."""
        images = self.tables.images
        failed = self._update_claimed(
            submission_id,
            uris,
            lambda uri: [*self._status_actions(uri, Status.FAILED, now), images.status_reason.set(reason)],
        )
        return [to_image(item) for item in failed]  # pynamodb's update loads the item DynamoDB returns (ALL_NEW)

    def _update_claimed(
        self, submission_id: str, uris: Iterable[str], actions_for: Callable[[str], list[Action]]
    ) -> list[ImageItem]:
        """Apply each image's actions to the images this submission still holds in SUBMITTING; returns those.

        An image it no longer holds (a webhook was faster, or a newer upload took the key) is left as it is.
        """
        images = self.tables.images
        held = (images.submission_id == submission_id) & (images.status == Status.SUBMITTING.value)
        updated = [(images(uri), uri) for uri in uris]
        return [item for item, uri in updated if writes.update(item, actions_for(uri), held)]

    # --- results (the webhook and the sweeper, through `ResultRecorder`) ----------------------------------
    def record_image_result(self, result: ImageResult, now: datetime) -> Image | None:
        """Finish one image DONE or ERROR: the image as written (its `created_at` is the upload, for the
        latency metric), None when it is already finished or was uploaded again since.

        The write returns the item's new attributes anyway, so this costs no read. Raises
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
            outputs = {name: output_value(output) for name, output in result.outputs.items()}
            actions.append(images.outputs.set(outputs))
        else:
            actions.append(images.outputs.remove())
        replaceable = [status.value for status in (*UNFINISHED, Status.FAILED)]
        condition = (images.record_id == result.record_id) & images.status.is_in(*replaceable)
        item = images(result.uri)
        return to_image(item) if writes.update(item, actions, condition) else None

    def fail_unfinished_images(
        self,
        record_ids_to_uris: Mapping[str, str],
        reason: str,
        now: datetime,
        *,
        from_statuses: tuple[Status, ...] = UNFINISHED,
    ) -> list[Image]:
        """FAILED with `reason` for every image of a request still in one of `from_statuses` (any holder).

        Returns the images written; the others had finished, or were uploaded again, meanwhile.
        """
        images = self.tables.images
        pending = [status.value for status in from_statuses]
        failed: list[Image] = []
        for record_id, uri in record_ids_to_uris.items():
            actions = [*self._status_actions(uri, Status.FAILED, now), images.status_reason.set(reason)]
            item = images(uri)
            if writes.update(item, actions, (images.record_id == record_id) & images.status.is_in(*pending)):
                failed.append(to_image(item))
        return failed

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
        return {record_id: image.uri for record_id, image in waiting_images(request, found, wanted).items()}

    def request_finished(self, request: TrackedRequest) -> bool:
        """None of the request's images waits for it (`mapping.waiting_images`), read cheaply: first the images
        its answer finished, from `by_request` (a few hundred bytes each, whatever their results' size),
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

    # --- outputs (the copier) ------------------------------------------------------------------------------
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
        actions = [images.outputs[name].set(output_value(output))]
        item = images(uri)
        return to_image(item) if writes.update(item, actions, condition) else None

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
            images.outputs[name].set(output_value(failed)),
            images.updated_at.set(now),
        ]
        item = images(image.uri)
        return to_image(item) if writes.update(item, actions, condition) else None

    # --- reads -----------------------------------------------------------------------------------------------
    def image(self, uri: str) -> Image | None:
        try:
            return to_image(self.tables.images.get(uri, consistent_read=True))
        except self.tables.images.DoesNotExist:
            return None

    def images_by_uri(self, uris: Iterable[str], *, consistent: bool = True) -> dict[str, Image]:
        wanted = list(uris)
        if not wanted:
            return {}
        found = self.tables.images.batch_get(wanted, consistent_read=consistent)
        return {item.image_uri: to_image(item) for item in found}

    # --- the shape of a write --------------------------------------------------------------------------------
    def _new_image_condition(self, upload: Upload) -> Condition:
        images = self.tables.images
        newer_upload = (images.record_id != upload.record_id) & (images.sequencer < upload.sequencer)
        condition: Condition = images.image_uri.does_not_exist() | newer_upload
        return condition

    def _unchanged(self, image: Image) -> Condition:
        images = self.tables.images
        condition: Condition = (
            (images.record_id == image.record_id)
            & (images.status == image.status.value)
            & (images.updated_at == image.updated_at)
        )
        return condition

    def _new_item(self, upload: Upload, status: Status, now: datetime) -> ImageItem:
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
