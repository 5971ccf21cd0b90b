"""The requests table's request items: one per Ximilar request, from its submission to its result.

A request item is written when its first POST has an outcome (`open_request`) and is due for the
sweeper (the sparse `due` index, write-sharded) until it finishes; every write that sets a check time
goes through `_due_at`, so a request still due never expires before its check. Every conditional
write returns whether it applied (`writes`); the caller decides what a lost race means there.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from pynamodb.expressions.update import Action

from ximilar_async.adapters.dynamodb import keys, writes
from ximilar_async.adapters.dynamodb.mapping import epoch, to_request
from ximilar_async.adapters.dynamodb.models import RequestItem, Tables
from ximilar_async.values.entities import DueScan, TrackedRequest
from ximilar_async.values.statuses import Status


@dataclass(frozen=True)
class RequestStore:
    tables: Tables
    shards: int
    request_retention: timedelta

    # --- the lifecycle (the submitter) ------------------------------------------------------------------
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
            created_at=now,
            updated_at=now,
        )
        # Kept from its creation: a request the webhook finishes is not written again (see `DueScan`).
        item.next_check_at, item.expires_at = self._check_time(check_at)
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

    # --- outcomes (the webhook, the sweeper, through `ResultRecorder`) -----------------------------------
    def get_request(self, submission_id: str) -> TrackedRequest | None:
        try:
            return to_request(self.tables.requests.get(submission_id, consistent_read=True))
        except self.tables.requests.DoesNotExist:
            return None

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

    # --- the due index (the sweeper) ------------------------------------------------------------------
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

    # --- the one rule of a check time ------------------------------------------------------------------
    def _check_time(self, check_at: datetime) -> tuple[int, datetime]:
        """Due for the sweeper at `check_at`, and kept (the TTL) the retention period after it: the one
        rule of every write that sets a check time, so a request still due never expires before its
        check, however far off (a long Retry-After, a paused spend guard, a sweeper down for days)."""
        return epoch(check_at), check_at + self.request_retention

    def _due_at(self, check_at: datetime) -> list[Action]:
        """`_check_time` as the actions of an update."""
        requests = self.tables.requests
        next_check_at, expires_at = self._check_time(check_at)
        return [requests.next_check_at.set(next_check_at), requests.expires_at.set(expires_at)]
