"""The `Storage`'s writes and reads, each sent for real to moto server and to dynalite.

Every conditional write, update action, projection and index query the data layer builds meets two
independent DynamoDB implementations here, dynalite with DynamoDB's own validation; and each method is
held to what its docstring promises, the answers to a lost race included. Grouped by what is stored:
images, requests, the sweeper's reading of the due index, images in flight and counts, control items.
"""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import botocore.session
import pytest

from tests.conftest import DynamoDBBackend
from tests.support.aws import create_table_from_template
from ximilar_async.adapters.dynamodb import Storage, keys
from ximilar_async.adapters.dynamodb.mapping import epoch
from ximilar_async.adapters.dynamodb.models import Tables, bind_tables
from ximilar_async.values.entities import (
    DUE_INDEX_LAG,
    FULL_PASS_EVERY,
    Claim,
    DueScan,
    Image,
    ImageResult,
    Output,
    OutputState,
    SpendDay,
    TrackedRequest,
)
from ximilar_async.values.statuses import Status
from ximilar_async.values.uploads import Upload

# The data layer's expressions meet DynamoDB's own validation too (dynalite), not only moto's leniency.
pytestmark = pytest.mark.parametrize("dynamodb_backend", ["moto", "dynalite"], indirect=True)

SHARDS = 4
LEASE = timedelta(minutes=2)
RETENTION = timedelta(days=30)
NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
FIRST_CHECK = NOW + timedelta(minutes=2)
BUCKET = "input"


def at(**offset: float) -> datetime:
    """A moment `offset` after NOW: `at(minutes=3)`."""
    return NOW + timedelta(**offset)


@pytest.fixture(scope="module")
def botocore_session() -> botocore.session.Session:
    """One botocore session for the module's models: a new one per test loads botocore's data again (~0.1 s)."""
    return botocore.session.get_session()


@pytest.fixture
def tables(
    dynamodb: Any,
    template: dict[str, Any],
    dynamodb_backend: DynamoDBBackend,
    botocore_session: botocore.session.Session,
) -> Tables:
    """conftest's `tables` (fresh tables from template.yaml on the test's backend), bound through the module's
    botocore session: binding is then a few milliseconds, not most of a test's time."""
    suffix = uuid.uuid4().hex[:8]
    images, requests_ = f"images-{suffix}", f"requests-{suffix}"
    for logical_id, name in (("ImagesTable", images), ("RequestsTable", requests_)):
        create_table_from_template(
            dynamodb, template, logical_id, name, backups_and_ttl=dynamodb_backend.backups_and_ttl
        )
    return bind_tables(images, requests_, host=dynamodb_backend.endpoint, session=botocore_session)


@pytest.fixture
def storage(tables: Tables) -> Storage:
    return Storage.of(tables, SHARDS, RETENTION)


def an_upload(key: str = "incoming/photo.png", sequencer: str = "0055AED6DCAF0EE501", etag: str = "etag-1") -> Upload:
    return Upload(
        message_id=f"message-{key}",
        bucket=BUCKET,
        key=key,
        size=100,
        etag=etag,
        version_id=None,
        sequencer=sequencer.ljust(32, "0"),
    )


def claim(storage: Storage, upload: Upload, submission_id: str, now: datetime = NOW) -> Claim:
    return storage.images.claim_image(upload, "flows", "my-flow", submission_id, now, LEASE)


def a_result(
    upload: Upload,
    status: Status = Status.DONE,
    *,
    request_id: str = "x1",
    reason: str | None = None,
    outputs: dict[str, Output] | None = None,
) -> ImageResult:
    record = {"_id": upload.record_id, "_status": {"code": 200 if status is Status.DONE else 400}}
    return ImageResult(upload.uri, upload.record_id, request_id, status, reason, record, outputs=outputs or {})


def open_created(storage: Storage, submission_id: str, *uploads: Upload, check_at: datetime = FIRST_CHECK) -> None:
    """A request Ximilar took (its id "x1"), due for the sweeper at `check_at`."""
    images = {upload.record_id: upload.uri for upload in uploads}
    opened = storage.requests.open_request(submission_id, "flows", "my-flow", images, NOW, check_at, request_id="x1")
    assert opened


def open_handed_on(storage: Storage, submission_id: str, *uploads: Upload) -> None:
    """A request whose first POST failed: SUBMITTING, for the sweeper to submit."""
    images = {upload.record_id: upload.uri for upload in uploads}
    opened = storage.requests.open_request(submission_id, "flows", "my-flow", images, NOW, at(minutes=1), reason="503")
    assert opened


def image_of(storage: Storage, upload: Upload) -> Image:
    image = storage.images.image(upload.uri)
    assert image is not None, f"no image {upload.uri}"
    return image


def request_of(storage: Storage, submission_id: str) -> TrackedRequest:
    request = storage.requests.get_request(submission_id)
    assert request is not None, f"no request {submission_id}"
    return request


def expiry_of(tables: Tables, submission_id: str) -> datetime:
    """The TTL of a request item (not part of the domain's `TrackedRequest`)."""
    expires_at: datetime = tables.requests.get(submission_id, consistent_read=True).expires_at
    return expires_at


def due_ids(storage: Storage, now: datetime, scan: DueScan | None = None) -> list[str]:
    """The requests a sweep at `now` finds due, reading every shard (from scratch unless `scan`)."""
    return [request.submission_id for request in storage.requests.due_requests(range(SHARDS), now, scan or DueScan())]


# --- images ---------------------------------------------------------------------------------------------


def test_a_new_upload_is_claimed_submitting_under_a_lease(storage: Storage) -> None:
    # Given an upload never seen
    upload = an_upload()

    # When it is claimed
    claimed = claim(storage, upload, "submission-1")

    # Then it is held SUBMITTING by that submission until the lease ends
    image = image_of(storage, upload)
    assert claimed is Claim.TAKEN
    assert (image.status, image.submission_id, image.request_type, image.endpoint) == (
        Status.SUBMITTING,
        "submission-1",
        "flows",
        "my-flow",
    )
    assert (image.record_id, image.sequencer, image.size_bytes) == (upload.record_id, upload.sequencer, 100)
    assert (image.attempts, image.lease_until, image.created_at, image.updated_at) == (
        1,
        epoch(NOW + LEASE),
        NOW,
        NOW,
    )


def test_a_second_claim_of_an_upload_its_request_holds_is_a_duplicate(storage: Storage) -> None:
    # Given an upload claimed, and its request item written (Ximilar has it)
    upload = an_upload()
    assert claim(storage, upload, "first") is Claim.TAKEN
    open_created(storage, "first", upload)

    # When it is delivered again, within its lease and after it
    within = claim(storage, upload, "second", at(seconds=1))
    after = claim(storage, upload, "third", NOW + LEASE + timedelta(minutes=1))

    # Then both are duplicates, and the image stays the first submission's
    assert (within, after) == (Claim.DUPLICATE, Claim.DUPLICATE)
    assert image_of(storage, upload).submission_id == "first"


def test_a_newer_upload_takes_the_key_over_and_the_older_one_is_then_stale(storage: Storage) -> None:
    # Given an upload of a key claimed, its request written
    older = an_upload(sequencer="0055AED6DCAF0EE501", etag="etag-1")
    newer = an_upload(sequencer="0055AED6DCAF0EE502", etag="etag-2")
    assert claim(storage, older, "first") is Claim.TAKEN
    open_created(storage, "first", older)

    # When a newer upload of the key is claimed, then the older one delivered again
    taken = claim(storage, newer, "second", at(seconds=1))
    stale = claim(storage, older, "third", at(seconds=2))

    # Then the newer upload holds the key, and the older one is a duplicate
    image = image_of(storage, newer)
    assert (taken, stale) == (Claim.TAKEN, Claim.DUPLICATE)
    assert (image.record_id, image.submission_id, image.attempts) == (newer.record_id, "second", 1)


def test_a_live_claim_without_a_request_item_is_busy_until_its_lease_ends(storage: Storage) -> None:
    # Given an upload claimed by a submitter that has not written its request item
    upload = an_upload()
    assert claim(storage, upload, "first") is Claim.TAKEN

    # When it is delivered again within the lease, then after it
    within = claim(storage, upload, "second", NOW + LEASE)
    after = claim(storage, upload, "third", NOW + LEASE + timedelta(seconds=1))

    # Then the first delivery must come back later, and the second takes the image
    image = image_of(storage, upload)
    assert (within, after) == (Claim.BUSY, Claim.TAKEN)
    assert (image.submission_id, image.lease_until) == ("third", epoch(NOW + LEASE + timedelta(seconds=1) + LEASE))


def test_a_released_claim_is_taken_by_the_next_delivery_at_once(storage: Storage) -> None:
    # Given an upload claimed by a submission
    upload = an_upload()
    assert claim(storage, upload, "first") is Claim.TAKEN

    # When another submission releases it (it holds nothing), then its holder does
    by_another = storage.images.release_images("other", [upload.uri], "not mine", at(seconds=1))
    by_holder = storage.images.release_images("first", [upload.uri], "waiting to be submitted", at(seconds=2))

    # Then only the holder's release applies: no lease left, the reason kept, still SUBMITTING
    released = image_of(storage, upload)
    assert (by_another, by_holder) == (0, 1)
    assert (released.status, released.submission_id, released.lease_until) == (Status.SUBMITTING, "first", 0)
    assert (released.status_reason, released.updated_at) == ("waiting to be submitted", at(seconds=2))
    # And the next delivery takes it well within the old lease
    assert claim(storage, upload, "second", at(seconds=3)) is Claim.TAKEN
    assert image_of(storage, upload).submission_id == "second"


def test_a_retry_takes_the_image_only_as_it_was_read(storage: Storage) -> None:
    # Given an image that ended ERROR, read by the sweeper
    upload = an_upload()
    claim(storage, upload, "first")
    assert storage.images.record_image_result(a_result(upload, Status.ERROR, reason="timeout"), at(minutes=1))
    read = image_of(storage, upload)

    # When it is submitted again from that read, twice
    retried = storage.images.claim_image(
        Upload.of_image(read), "flows", "my-flow", "second", at(minutes=10), LEASE, retry_of=read
    )
    again = storage.images.claim_image(
        Upload.of_image(read), "flows", "my-flow", "third", at(minutes=11), LEASE, retry_of=read
    )

    # Then the first retry holds it, one more attempt counted, its upload time kept; the second read was stale
    image = image_of(storage, upload)
    assert (retried, again) == (Claim.TAKEN, Claim.DUPLICATE)
    assert (image.status, image.submission_id, image.attempts) == (Status.SUBMITTING, "second", 2)
    assert (image.created_at, image.updated_at, image.record_id) == (NOW, at(minutes=10), upload.record_id)


def test_a_rejected_upload_is_failed_with_its_reason_and_returned_once(storage: Storage) -> None:
    # Given an upload that is not submitted
    upload = an_upload("incoming/notes.txt")

    # When it is rejected, then delivered (and rejected, and claimed) again
    rejected = storage.images.reject_image(upload, "not an image extension: .txt", NOW)
    again = storage.images.reject_image(upload, "not an image extension: .txt", at(seconds=1))
    claimed = claim(storage, upload, "submission-1", at(seconds=2))

    # Then it is FAILED with its reason, in the status index, the image written returned once (to be told)
    image = image_of(storage, upload)
    assert (rejected, again, claimed) == (image, None, Claim.DUPLICATE)
    assert (image.status, image.status_reason, image.updated_at) == (
        Status.FAILED,
        "not an image extension: .txt",
        NOW,
    )
    assert storage.queries.image_uris_by_status([Status.FAILED], NOW) == [upload.uri]


def test_failing_claims_fails_only_the_images_the_submission_still_holds(storage: Storage) -> None:
    # Given two images claimed by one submission, one of them since taken over by a newer upload
    kept, taken_over = an_upload("incoming/a.png"), an_upload("incoming/b.png")
    newer = an_upload("incoming/b.png", sequencer="0055AED6DCAF0EE502", etag="etag-2")
    for upload in (kept, taken_over):
        claim(storage, upload, "first")
    assert claim(storage, newer, "second", at(seconds=1)) is Claim.TAKEN

    # When the first submission fails its claims
    failed = storage.images.fail_claimed_images("first", [kept.uri, taken_over.uri], "object gone", at(minutes=1))

    # Then only its own image is FAILED (no lease left, in the status index) and returned, to be told of
    image = image_of(storage, kept)
    assert failed == [image]
    assert (image.status, image.status_reason, image.lease_until) == (Status.FAILED, "object gone", None)
    assert image_of(storage, newer).submission_id == "second"
    assert storage.queries.image_uris_by_status([Status.FAILED], NOW) == [kept.uri]


def test_a_result_finishes_an_image_once_and_is_returned_once(storage: Storage) -> None:
    # Given a claimed image
    upload = an_upload()
    claim(storage, upload, "submission-1")
    pending = {"upscaled": Output("s3://output/photo.png", OutputState.PENDING)}

    # When its result is recorded, then another answer for it arrives
    recorded = storage.images.record_image_result(a_result(upload, outputs=pending), at(minutes=1))
    again = storage.images.record_image_result(a_result(upload, Status.ERROR, reason="late"), at(minutes=2))

    # Then the first finishes it (the image as written returned, its upload time with it), with Ximilar's id
    # and its outputs; the second is refused
    image = image_of(storage, upload)
    assert (recorded, again) == (image, None)
    assert recorded is not None and recorded.created_at == NOW
    assert (image.status, image.request_id, image.status_reason, image.lease_until) == (Status.DONE, "x1", None, None)
    assert (image.result, image.outputs, image.updated_at) == (a_result(upload).record, pending, at(minutes=1))


def test_a_result_replaces_a_failure_of_its_upload_but_never_a_newer_upload(storage: Storage) -> None:
    # Given an image given up on (FAILED), and another whose key a newer upload took over
    late, replaced = an_upload("incoming/late.png"), an_upload("incoming/replaced.png")
    newer = an_upload("incoming/replaced.png", sequencer="0055AED6DCAF0EE502", etag="etag-2")
    for upload in (late, replaced):
        claim(storage, upload, "first")
    failed = storage.images.fail_claimed_images("first", [late.uri], "request too old", at(minutes=5))
    assert len(failed) == 1
    claim(storage, newer, "second", at(minutes=5))

    # When Ximilar's answer for both arrives, the late one stored in S3 (too large for the item)
    stored_in_s3 = ImageResult(late.uri, late.record_id, "x1", Status.ERROR, "bad image", None, "s3://results/x.json")
    late_recorded = storage.images.record_image_result(stored_in_s3, at(minutes=6))
    stale_recorded = storage.images.record_image_result(a_result(replaced), at(minutes=6))

    # Then the failure is replaced by the answer, and the newer upload is left alone
    image = image_of(storage, late)
    assert (late_recorded, stale_recorded) == (image, None)
    assert late_recorded is not None and late_recorded.created_at == NOW
    assert (image.status, image.status_reason, image.result, image.result_s3_uri) == (
        Status.ERROR,
        "bad image",
        None,
        "s3://results/x.json",
    )
    assert (image_of(storage, newer).status, image_of(storage, newer).record_id) == (
        Status.SUBMITTING,
        newer.record_id,
    )
    assert [(told.uri, told.status) for told in [*failed, late_recorded]] == [
        (late.uri, Status.FAILED),
        (late.uri, Status.ERROR),
    ]


def test_an_output_leaves_pending_once(storage: Storage) -> None:
    # Given a DONE image with an output to copy
    upload = an_upload()
    claim(storage, upload, "submission-1")
    pending = {"upscaled": Output("s3://output/photo.png", OutputState.PENDING)}
    storage.images.record_image_result(a_result(upload, outputs=pending), at(minutes=1))
    stored = Output("s3://output/photo.png", OutputState.STORED, size_bytes=2048)

    # When its copy is recorded, then recorded again; and an output it does not have, and another upload's
    first = storage.images.set_output(upload.uri, upload.record_id, "upscaled", stored, at(minutes=2))
    repeated = storage.images.set_output(upload.uri, upload.record_id, "upscaled", stored, at(minutes=3))
    unknown = storage.images.set_output(upload.uri, upload.record_id, "crop", stored, at(minutes=3))
    other_upload = storage.images.set_output(upload.uri, "another-record", "upscaled", stored, at(minutes=3))

    # Then only the first applies; it returns the image as written, its status time unchanged
    assert first is not None
    assert (first.outputs, first.updated_at) == ({"upscaled": stored}, at(minutes=1))
    assert (repeated, unknown, other_upload) == (None, None, None)
    assert image_of(storage, upload) == first


def test_an_output_regeneration_is_counted_once_per_read_and_up_to_the_limit(storage: Storage) -> None:
    # Given a DONE image whose output expired before its copy, read by the copier
    upload = an_upload()
    claim(storage, upload, "submission-1")
    pending = {"upscaled": Output("s3://output/photo.png", OutputState.PENDING)}
    storage.images.record_image_result(a_result(upload, outputs=pending), at(minutes=1))
    read = image_of(storage, upload)

    # When a regeneration is counted from that read, twice, and from a fresh read at the limit of one
    counted = storage.images.count_output_regeneration(read, "upscaled", "expired", at(minutes=2), limit=1)
    stale = storage.images.count_output_regeneration(read, "upscaled", "expired", at(minutes=3), limit=1)
    fresh = image_of(storage, upload)
    at_limit = storage.images.count_output_regeneration(fresh, "upscaled", "expired", at(minutes=3), limit=1)

    # Then only the first counts, marking the output FAILED; it returns the image as written
    assert counted is not None
    assert (stale, at_limit) == (None, None)
    assert counted == fresh
    assert (counted.output_regenerations, counted.updated_at) == (1, at(minutes=2))
    assert counted.outputs == {"upscaled": Output("s3://output/photo.png", OutputState.FAILED, "expired")}
    # And the resubmission it allows keeps the count
    retry = storage.images.claim_image(upload, "flows", "my-flow", "second", at(minutes=4), LEASE, retry_of=counted)
    assert retry is Claim.TAKEN
    assert (image_of(storage, upload).output_regenerations, image_of(storage, upload).attempts) == (1, 2)


def test_failing_unfinished_images_leaves_finished_ones_alone(storage: Storage) -> None:
    # Given a request's images: one in flight, one DONE, one ERROR
    waiting, done, error = (an_upload(f"incoming/{name}.png") for name in ("waiting", "done", "error"))
    for upload in (waiting, done, error):
        claim(storage, upload, "first")
    storage.images.record_image_result(a_result(done), at(minutes=1))
    storage.images.record_image_result(a_result(error, Status.ERROR, reason="timeout"), at(minutes=1))
    images = {upload.record_id: upload.uri for upload in (waiting, done, error)}

    # When the request is given up on, then the ERROR images not worth another try are failed
    unfinished = storage.images.fail_unfinished_images(images, "request too old", at(hours=1))
    errors = storage.images.fail_unfinished_images(images, "gave up", at(hours=2), from_statuses=(Status.ERROR,))

    # Then each call fails only the images still in the statuses it names, and returns each once
    now = [image_of(storage, upload) for upload in (waiting, done, error)]
    assert (len(unfinished), len(errors)) == (1, 1)
    assert [(image.status, image.status_reason) for image in now] == [
        (Status.FAILED, "request too old"),
        (Status.DONE, None),
        (Status.FAILED, "gave up"),
    ]
    assert [told.uri for told in [*unfinished, *errors]] == [waiting.uri, error.uri]


# --- requests -------------------------------------------------------------------------------------------


def test_a_request_opened_with_ximilars_id_is_created_and_due(storage: Storage, tables: Tables) -> None:
    # Given a request Ximilar took
    upload = an_upload()

    # When its item is written, then written again under the same submission id
    opened = storage.requests.open_request(
        "submission-1", "flows", "my-flow", {upload.record_id: upload.uri}, NOW, at(minutes=2), request_id="x1"
    )
    again = storage.requests.open_request("submission-1", "flows", "my-flow", {}, NOW, at(minutes=9), request_id="x2")

    # Then the first is CREATED with Ximilar's id, due at its check and kept the retention after; the second refused
    request = request_of(storage, "submission-1")
    assert (opened, again) == (True, False)
    assert (request.status, request.ximilar_status, request.request_id) == (Status.CREATED, "CREATED", "x1")
    assert (request.images, request.submit_attempts, request.held_back) == ({upload.record_id: upload.uri}, 1, False)
    assert (request.next_check_at, request.created_at) == (epoch(at(minutes=2)), NOW)
    assert expiry_of(tables, "submission-1") == at(minutes=2) + RETENTION
    assert due_ids(storage, at(minutes=2)) == ["submission-1"]


def test_a_request_handed_on_is_deferred_while_it_is_submitting(storage: Storage) -> None:
    # Given a request whose first POST was not tried (held back), its images then set
    a, b = an_upload("incoming/a.png"), an_upload("incoming/b.png")
    opened = storage.requests.open_request(
        "submission-1", "flows", "my-flow", {a.record_id: a.uri}, NOW, at(minutes=1), reason="throttled", held_back=True
    )
    storage.requests.set_request_images("submission-1", {a.record_id: a.uri, b.record_id: b.uri}, at(seconds=10))
    handed_on = request_of(storage, "submission-1")

    # When Ximilar does not take it on the sweeper's attempt
    deferred = storage.requests.defer_request("submission-1", "Ximilar answered 503", at(minutes=1), at(minutes=6))

    # Then it stays SUBMITTING, due later, with the reason; this time a failed attempt, not held back
    request = request_of(storage, "submission-1")
    assert (opened, deferred) == (True, True)
    assert (handed_on.status, handed_on.request_id, handed_on.status_reason, handed_on.held_back) == (
        Status.SUBMITTING,
        None,
        "throttled",
        True,
    )
    assert (handed_on.images, handed_on.updated_at) == ({a.record_id: a.uri, b.record_id: b.uri}, at(seconds=10))
    assert (request.status, request.status_reason, request.held_back) == (
        Status.SUBMITTING,
        "Ximilar answered 503",
        False,
    )
    assert (request.next_check_at, request.updated_at) == (epoch(at(minutes=6)), at(minutes=1))


def test_a_submitting_request_is_marked_created_once(storage: Storage, tables: Tables) -> None:
    # Given a request handed on for the sweeper to submit
    open_handed_on(storage, "submission-1", an_upload())

    # When Ximilar takes it, then a second submitter's answer (and deferral) arrive
    created = storage.requests.mark_request_created("submission-1", "x1", at(minutes=1), at(minutes=3))
    again = storage.requests.mark_request_created("submission-1", "x2", at(minutes=2), at(minutes=4))
    deferred = storage.requests.defer_request("submission-1", "503", at(minutes=2), at(minutes=7))

    # Then it is CREATED once, with the first id, its reasons gone, due at the first's check
    request = request_of(storage, "submission-1")
    assert (created, again, deferred) == (True, False, False)
    assert (request.status, request.ximilar_status, request.request_id) == (Status.CREATED, "CREATED", "x1")
    assert (request.status_reason, request.held_back, request.next_check_at) == (None, False, epoch(at(minutes=3)))
    assert expiry_of(tables, "submission-1") == at(minutes=3) + RETENTION


def test_a_done_answer_with_records_missing_keeps_the_request_due_until_it_is_done(storage: Storage) -> None:
    # Given a request Ximilar took
    open_created(storage, "submission-1")

    # When two of its DONE answers leave images without a record, then it finishes, then a third such answer
    first = storage.requests.await_missing_records(
        "submission-1",
        "1 record missing",
        at(minutes=3),
        at(minutes=8),
        ximilar_status="DONE",
        request_id="x1",
        retry_record_ids={"r1"},
    )
    second = storage.requests.await_missing_records(
        "submission-1",
        "2 records missing",
        at(minutes=8),
        at(minutes=13),
        ximilar_status="DONE",
        request_id="x1",
        retry_record_ids={"r2"},
    )
    waiting = request_of(storage, "submission-1")
    due = due_ids(storage, at(minutes=13))
    assert storage.requests.finish_request("submission-1", Status.DONE, at(minutes=14), ximilar_status="DONE")
    late = storage.requests.await_missing_records(
        "submission-1", "late", at(minutes=15), at(minutes=20), ximilar_status="DONE", request_id="x1"
    )

    # Then it waits PROCESSING, its answers counted and retries gathered; once DONE it stays DONE
    assert (first, second, late) == (True, True, False)
    assert (waiting.status, waiting.ximilar_status, waiting.status_reason) == (
        Status.PROCESSING,
        "DONE",
        "2 records missing",
    )
    assert (waiting.incomplete_answers, waiting.retry_record_ids) == (2, frozenset({"r1", "r2"}))
    assert (waiting.next_check_at, due) == (epoch(at(minutes=13)), ["submission-1"])
    assert request_of(storage, "submission-1").status is Status.DONE


def test_a_failed_finish_never_undoes_done(storage: Storage, tables: Tables) -> None:
    # Given a request finished DONE, and another still waiting
    open_created(storage, "done")
    open_created(storage, "waiting")
    assert storage.requests.finish_request("done", Status.DONE, at(minutes=5), ximilar_status="DONE", request_id="x1")

    # When both are finished FAILED (too old)
    undo = storage.requests.finish_request("done", Status.FAILED, at(minutes=6), reason="too old")
    fail = storage.requests.finish_request("waiting", Status.FAILED, at(minutes=6), reason="too old")

    # Then DONE stays as written; the other is FAILED with its reason; both left the due index, kept the retention
    done, failed = request_of(storage, "done"), request_of(storage, "waiting")
    assert (undo, fail) == (False, True)
    assert (done.status, done.ximilar_status, done.status_reason, done.updated_at) == (
        Status.DONE,
        "DONE",
        None,
        at(minutes=5),
    )
    assert (failed.status, failed.ximilar_status, failed.status_reason) == (Status.FAILED, "CREATED", "too old")
    assert (done.next_check_at, failed.next_check_at, due_ids(storage, at(days=1))) == (None, None, [])
    assert expiry_of(tables, "done") == at(minutes=5) + RETENTION


def test_a_done_request_with_images_to_retry_stays_due_until_its_retries_are_cleared(storage: Storage) -> None:
    # Given a request DONE with an image worth another try
    open_created(storage, "submission-1")
    finished_ = storage.requests.finish_request(
        "submission-1",
        Status.DONE,
        at(minutes=5),
        ximilar_status="DONE",
        retry_record_ids={"r1"},
        retry_at=at(minutes=10),
    )
    retrying = request_of(storage, "submission-1")
    due = due_ids(storage, at(minutes=10))

    # When its retries are dealt with
    storage.requests.clear_retries("submission-1", at(minutes=11))

    # Then it was due at the retry time with its images to retry, and has left the due index since
    cleared = request_of(storage, "submission-1")
    assert (finished_, due) == (True, ["submission-1"])
    assert (retrying.status, retrying.retry_record_ids, retrying.next_check_at) == (
        Status.DONE,
        frozenset({"r1"}),
        epoch(at(minutes=10)),
    )
    assert (cleared.status, cleared.retry_record_ids, cleared.next_check_at) == (Status.DONE, frozenset(), None)
    assert due_ids(storage, at(days=1)) == []


def test_a_request_is_finished_once_none_of_its_images_waits_for_it(storage: Storage) -> None:
    # Given a request of two images, one answered
    answered, other = an_upload("incoming/a.png"), an_upload("incoming/b.png")
    for upload in (answered, other):
        claim(storage, upload, "first")
    open_created(storage, "first", answered, other)
    request = request_of(storage, "first")
    storage.images.record_image_result(a_result(answered), at(minutes=1))
    half = (storage.images.request_finished(request), storage.images.unfinished_images(request))

    # When the other's key is uploaded again and claimed by another submission
    again = an_upload("incoming/b.png", sequencer="0055AED6DCAF0EE502", etag="etag-2")
    assert claim(storage, again, "second") is Claim.TAKEN

    # Then the request waited for the other image only, and waits for nothing now
    assert half == (False, {other.record_id: other.uri})
    assert (storage.images.request_finished(request), storage.images.unfinished_images(request)) == (True, {})


def test_images_are_read_by_uri_and_missing_ones_left_out(storage: Storage) -> None:
    # Given two images
    a, b = an_upload("incoming/a.png"), an_upload("incoming/b.png")
    claim(storage, a, "first")
    storage.images.reject_image(b, "empty", NOW)

    # When they are read with a URI that names nothing
    found = storage.images.images_by_uri([a.uri, b.uri, "s3://input/missing.png"])

    # Then both come back by URI, as stored
    assert found == {a.uri: image_of(storage, a), b.uri: image_of(storage, b)}
    assert storage.images.images_by_uri([]) == {}


# --- the sweeper's reading of the due index ----------------------------------------------------------------


def test_a_due_request_is_taken_by_one_run_only(storage: Storage, tables: Tables) -> None:
    # Given a request due, one due later, and one finished
    open_created(storage, "due", check_at=at(minutes=2))
    open_created(storage, "later", check_at=at(hours=1))
    open_created(storage, "finished", check_at=at(minutes=2))
    storage.requests.finish_request("finished", Status.DONE, at(minutes=1), ximilar_status="DONE")

    # When two runs read the due index at once, and each takes what it found
    first = list(storage.requests.due_requests(range(SHARDS), at(minutes=3), DueScan()))
    second = list(storage.requests.due_requests(range(SHARDS), at(minutes=3), DueScan()))
    taken = [storage.requests.take_due(request, at(minutes=8)) for request in first]
    lost = [storage.requests.take_due(request, at(minutes=9)) for request in second]

    # Then both found the one due, only the first holds it, and it is due again when that hold ends
    assert [request.submission_id for request in first + second] == ["due", "due"]
    assert (taken, lost) == ([True], [False])
    assert request_of(storage, "due").next_check_at == epoch(at(minutes=8))
    assert expiry_of(tables, "due") == at(minutes=8) + RETENTION
    assert due_ids(storage, at(minutes=3)) == []
    assert due_ids(storage, at(minutes=8)) == ["due"]


def test_a_rescheduled_request_counts_its_checks_until_it_finishes(storage: Storage) -> None:
    # Given a request due
    open_created(storage, "submission-1")

    # When it is checked while the spend guard holds it, then once it finished
    paused = storage.requests.reschedule(
        "submission-1", at(minutes=10), at(minutes=3), ximilar_status="PROCESSING", paused=True
    )
    checked = request_of(storage, "submission-1")
    storage.requests.finish_request("submission-1", Status.DONE, at(minutes=4), ximilar_status="DONE")
    after = storage.requests.reschedule("submission-1", at(minutes=20), at(minutes=5))

    # Then the first check is counted, its age counting from it; the request finished meanwhile is left
    assert (paused, after) == (True, False)
    assert (checked.checks, checked.ximilar_status, checked.age_from) == (1, "PROCESSING", at(minutes=3))
    assert (checked.next_check_at, checked.updated_at) == (epoch(at(minutes=10)), at(minutes=3))
    assert (request_of(storage, "submission-1").checks, request_of(storage, "submission-1").next_check_at) == (
        1,
        None,
    )


def test_only_a_submitting_request_is_restarted(storage: Storage) -> None:
    # Given a request handed on (SUBMITTING) and one Ximilar took
    open_handed_on(storage, "handed-on", an_upload("incoming/a.png"))
    open_created(storage, "created", an_upload("incoming/b.png"))

    # When the sweeper starts another submission attempt of each
    restarted = storage.requests.restart_request("handed-on", at(minutes=2), at(minutes=7))
    refused = storage.requests.restart_request("created", at(minutes=2), at(minutes=7))

    # Then only the SUBMITTING one counts an attempt and is due later
    handed_on, created = request_of(storage, "handed-on"), request_of(storage, "created")
    assert (restarted, refused) == (True, False)
    assert (handed_on.submit_attempts, handed_on.next_check_at) == (2, epoch(at(minutes=7)))
    assert (created.submit_attempts, created.next_check_at) == (1, epoch(at(minutes=2)))


def test_failed_sweeps_of_a_request_are_counted_until_it_finishes(storage: Storage) -> None:
    # Given a request due
    open_created(storage, "submission-1")

    # When two sweeps of it fail, then it finishes, then another fails
    first = storage.requests.note_sweep_failure("submission-1", "KeyError: 'records'", at(minutes=3), at(minutes=8))
    second = storage.requests.note_sweep_failure("submission-1", "TypeError", at(minutes=8), at(minutes=13))
    failing = request_of(storage, "submission-1")
    storage.requests.finish_request("submission-1", Status.FAILED, at(minutes=14), reason="sweeps kept failing")
    late = storage.requests.note_sweep_failure("submission-1", "late", at(minutes=15), at(minutes=20))

    # Then both failures are counted with the last reason; the finished request is left
    assert (first, second, late) == (True, True, False)
    assert (failing.sweep_failures, failing.status_reason, failing.next_check_at) == (
        2,
        "TypeError",
        epoch(at(minutes=13)),
    )
    assert request_of(storage, "submission-1").status_reason == "sweeps kept failing"


def test_a_sweeps_marks_and_passed_requests_round_trip_through_the_last_sweep_item(storage: Storage) -> None:
    # Given no sweep yet, and a request due a minute before the run (finished by the webhook: left on the index)
    run = at(hours=1)
    assert (storage.control.last_sweep(), storage.control.due_scan()) == (None, DueScan())
    open_created(storage, "submission-1", check_at=run - timedelta(minutes=1))

    # When a run reads the whole due index, passes over that request, and records what it did
    scan = storage.control.due_scan()
    found = due_ids(storage, run, scan)
    storage.control.record_sweep({"checked": 1, "taken": 0}, run, scan)

    # Then the next run starts at the marks, passed over the request and began (and ended) a full pass
    kept = storage.control.due_scan()
    assert found == ["submission-1"]
    assert kept.marks == dict.fromkeys(range(SHARDS), epoch(run))
    assert kept.passed_before == {"submission-1": epoch(run - timedelta(minutes=1))}
    assert (kept.full_from, kept.full_started) == ({}, epoch(run))
    assert storage.control.last_sweep() == (run, {"checked": 1, "taken": 0})
    # And it does not read that request again within the margin
    assert due_ids(storage, run + timedelta(minutes=1), kept) == []


def test_a_full_pass_finds_an_entry_below_the_marks_and_resumes_where_it_stopped(storage: Storage) -> None:
    # Given a run that read every shard, and an entry due long before its marks (visible later than the margin)
    run = at(hours=1)
    scan = storage.control.due_scan()
    assert due_ids(storage, run, scan) == []
    storage.control.record_sweep({}, run, scan)
    open_created(storage, "late", check_at=run - timedelta(seconds=DUE_INDEX_LAG + 60))
    shard = keys.shard_of("late", SHARDS)
    order = [shard, *(other for other in range(SHARDS) if other != shard)]

    # When the next run, a full pass later, stops at the first request it finds
    later = run + timedelta(seconds=FULL_PASS_EVERY)
    scan = storage.control.due_scan()
    reading = storage.requests.due_requests(order, later, scan)
    found = next(reading)
    storage.control.record_sweep({"stopped": True}, later, scan)

    # Then the full pass found it, and the next run resumes that pass at it, the other shards from their start
    kept = storage.control.due_scan()
    assert found.submission_id == "late"
    assert kept.marks == dict.fromkeys(range(SHARDS), epoch(later))
    assert kept.full_started == epoch(later)
    assert kept.full_from == {shard: found.next_check_at, **{other: 0 for other in order[1:]}}
    assert due_ids(storage, later + timedelta(minutes=1), kept) == ["late"]


# --- images in flight, counts and reasons -------------------------------------------------------------------


def test_images_in_flight_show_their_requests_status(storage: Storage) -> None:
    # Given images of a request Ximilar took, of a request handed on, one claimed with no request item, one FAILED
    sent, handed_on = an_upload("incoming/sent.png"), an_upload("incoming/handed-on.png")
    claimed, rejected = an_upload("incoming/claimed.png"), an_upload("incoming/notes.txt")
    for upload, submission_id in ((sent, "created"), (handed_on, "handed-on"), (claimed, "no-request")):
        claim(storage, upload, submission_id)
    open_created(storage, "created", sent)
    open_handed_on(storage, "handed-on", handed_on)
    storage.images.reject_image(rejected, "not an image", NOW)

    # When the images in flight are listed
    in_flight = {image.uri: (image.status, image.request_id) for image in storage.queries.in_flight_images()}

    # Then those of the open requests show with their request's status (and Ximilar's id), no other
    assert in_flight == {sent.uri: (Status.CREATED, "x1"), handed_on.uri: (Status.SUBMITTING, None)}


def test_counts_uris_and_reasons_cover_finished_images_since_a_time_and_those_in_flight(
    storage: Storage,
) -> None:
    # Given images DONE, ERROR and FAILED (one long ago), and one in flight with its request CREATED
    done, error, failed, old = (an_upload(f"incoming/{name}.png") for name in ("done", "error", "failed", "old"))
    flying = an_upload("incoming/flying.png")
    for upload in (done, error):
        claim(storage, upload, "first")
    storage.images.record_image_result(a_result(done), at(minutes=1))
    storage.images.record_image_result(a_result(error, Status.ERROR, reason="timeout"), at(minutes=1))
    storage.images.reject_image(failed, "empty", NOW)
    storage.images.reject_image(old, "empty", at(days=-2))
    claim(storage, flying, "flying")
    open_created(storage, "flying", flying)
    since = at(days=-1)

    # When they are counted, listed by status and their reasons counted
    counts = storage.queries.count_by_status(since)
    uris = storage.queries.image_uris_by_status([Status.FAILED, Status.CREATED], since)
    reasons = storage.queries.status_reasons([Status.DONE, Status.ERROR, Status.FAILED], since)

    # Then only the finished images since `since` and the image in flight are there
    assert counts == {
        Status.SUBMITTING: 0,
        Status.CREATED: 1,
        Status.PROCESSING: 0,
        Status.DONE: 1,
        Status.ERROR: 1,
        Status.FAILED: 1,
    }
    assert uris == [failed.uri, flying.uri]
    assert reasons == Counter({"(no reason)": 1, "timeout": 1, "empty": 1})
    assert storage.queries.count_by_status(since, [Status.FAILED]) == {Status.FAILED: 1}


# --- control items: the pause, the spend guard's days -------------------------------------------------------


def test_a_second_pause_keeps_the_first_reason_until_resume(storage: Storage) -> None:
    # Given submission not paused
    day = NOW.date()
    assert storage.control.pause_reason() is None

    # When it is paused twice, then resumed twice
    first = storage.control.pause("budget review", NOW)
    second = storage.control.pause("another reason", at(minutes=1))
    reason = storage.control.pause_reason()
    resumed = storage.control.resume(day, at(minutes=2))
    again = storage.control.resume(day, at(minutes=3))

    # Then the first pause holds with its reason; the first resume ends it and lifts the day, the second finds neither
    assert (first, second, reason) == (True, False, "budget review")
    assert (resumed, again) == (True, False)
    assert storage.control.pause_reason() is None
    assert storage.control.spend_day(day) == SpendDay(day, 0, resumed=True)


def test_reservations_past_the_daily_limit_are_refused_until_the_day_is_lifted(storage: Storage) -> None:
    # Given a limit of 10 images a day
    day, next_day = NOW.date(), NOW.date() + timedelta(days=1)

    # When batches are reserved against it, then the day is lifted by hand
    answers = [storage.control.reserve_submissions(day, images, 10, NOW) for images in (6, 5, 4, 1)]
    too_many = storage.control.reserve_submissions(next_day, 11, 10, NOW)
    counted = storage.control.spend_day(day)
    lifted = storage.control.resume(day, at(minutes=1))
    past_limit = storage.control.reserve_submissions(day, 5, 10, at(minutes=2))

    # Then only what fits is counted (nothing of a refused batch); a lifted day takes everything
    assert answers == [True, False, True, False]
    assert (too_many, storage.control.spend_day(next_day)) == (False, SpendDay(next_day, 0, resumed=False))
    assert counted == SpendDay(day, 10, resumed=False)
    assert (lifted, past_limit) == (True, True)
    assert storage.control.spend_day(day) == SpendDay(day, 15, resumed=True)
