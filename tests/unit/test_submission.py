"""Submitter: uploads become Ximilar requests, grouped by route, chunked by the type's limit, recorded."""

from __future__ import annotations

import base64
from datetime import timedelta

import pytest

from tests.support.fakes import FakeClock, FakeObjectStore, FakeXimilar
from ximilar_async.adapters.dynamodb import Storage
from ximilar_async.services.errors import XimilarRequestError, XimilarThrottled, XimilarTransientError
from ximilar_async.services.submitter import CLAIM_LEASE, Submitter
from ximilar_async.services.webhook_auth import WebhookAuth
from ximilar_async.values.entities import Claim, Image
from ximilar_async.values.request_types import RequestType
from ximilar_async.values.statuses import Status
from ximilar_async.values.uploads import Upload

SMALL = b"\x89PNG\r\n\x1a\n" + bytes(40)  # sent inline (settings: up to 100 bytes)
LARGE = b"\x89PNG\r\n\x1a\n" + bytes(500)  # sent by URL (and under the 1000-byte maximum)


def image_of(storage: Storage, upload: Upload) -> Image:
    image = storage.images.image(upload.uri)
    assert image is not None, f"no image item for {upload.uri}"
    return image


def status_of(storage: Storage, upload: Upload) -> tuple[Status, str | None]:
    image = image_of(storage, upload)
    return image.status, image.status_reason


def test_uploads_are_grouped_by_route_and_chunked_by_the_type_limit(
    submitter: Submitter, objects: FakeObjectStore, ximilar: FakeXimilar, storage: Storage
) -> None:
    # Given twelve uploads routed to flows (10 records a request) and two to the upscaler (1 a request)
    flows = [objects.put(f"incoming/flows/item-{n:02d}.png", SMALL) for n in range(12)]
    photos = [objects.put(f"incoming/photo-{n}.png", SMALL) for n in range(2)]

    # When they are submitted in one invocation
    outcome = submitter.submit_uploads([*flows, *photos])

    # Then flows go out as 10 + 2, the upscaler one by one, each image exactly once
    shapes = sorted((sent.request_type, sent.endpoint, len(sent.records)) for sent in ximilar.sent)
    assert shapes == [
        (RequestType.FLOWS, "my-flow", 2),
        (RequestType.FLOWS, "my-flow", 10),
        (RequestType.UPSCALER, "upscale_2x", 1),
        (RequestType.UPSCALER, "upscale_2x", 1),
    ]
    assert all(upload in ximilar for upload in [*flows, *photos])
    assert (outcome.requests_submitted, outcome.images_submitted, outcome.retry) == (4, 14, {})
    # In flight, each image stays as claimed (SUBMITTING) until its result: its request item says CREATED.
    assert {status_of(storage, upload)[0] for upload in [*flows, *photos]} == {Status.SUBMITTING}


def test_a_submitted_request_is_recorded_created_with_ximilars_id_and_a_webhook_that_authenticates_it(
    submitter: Submitter, objects: FakeObjectStore, ximilar: FakeXimilar, storage: Storage, auth: WebhookAuth
) -> None:
    upload = objects.put("incoming/photo.png", SMALL)

    submitter.submit_uploads([upload])

    (sent,) = ximilar.sent
    image = storage.images.image(upload.uri)
    # The image is not written after the POST: Ximilar's id is on the request item (one write, not 1 + N).
    assert image is not None and (image.status, image.request_id) == (Status.SUBMITTING, None)
    request = storage.requests.get_request(str(image.submission_id))
    assert request is not None
    assert (request.status, request.request_id) == (Status.CREATED, sent.id)
    assert request.images == {upload.record_id: upload.uri}
    assert sent.webhook is not None and sent.webhook["endpoint"] == submitter.settings.webhook_url
    credentials = auth.authenticate(sent.webhook_headers)  # raises unless the headers are ours and unexpired
    assert credentials.submission_id == image.submission_id


def test_a_repeated_notification_and_a_stale_upload_are_skipped_as_duplicates(
    submitter: Submitter, objects: FakeObjectStore, ximilar: FakeXimilar, storage: Storage
) -> None:
    # Given an upload, already submitted, and a newer upload of another key submitted before an older one
    first = objects.put("incoming/photo.png", SMALL)
    submitter.submit_uploads([first])
    older = objects.put("incoming/other.png", SMALL)
    newer = objects.put("incoming/other.png", SMALL + b"v2")
    submitter.submit_uploads([newer])

    # When the first notification comes again (SQS delivers at least once) and the older one arrives late
    outcome = submitter.submit_uploads([first, older])

    # Then neither goes to Ximilar again
    assert outcome.duplicates == 2
    assert (outcome.requests_submitted, outcome.retry) == (0, {})
    assert len(ximilar.sent) == 2
    assert older not in ximilar
    assert image_of(storage, older).record_id == newer.record_id


def test_a_notification_repeated_after_the_claims_lease_never_submits_a_posted_image_again(
    submitter: Submitter, objects: FakeObjectStore, ximilar: FakeXimilar, storage: Storage, clock: FakeClock
) -> None:
    # Given an upload submitted (its image stays SUBMITTING until its result: no write after the POST)
    upload = objects.put("incoming/photo.png", SMALL)
    submitter.submit_uploads([upload])

    # When its notification comes again long after the claim's lease ran out
    clock.advance(CLAIM_LEASE * 10)
    outcome = submitter.submit_uploads([upload])

    # Then the request item shows the image is Ximilar's: it is a duplicate, not sent again
    assert (outcome.duplicates, outcome.requests_submitted, len(ximilar.sent)) == (1, 0, 1)
    assert image_of(storage, upload).status is Status.SUBMITTING


def test_a_claim_left_by_a_submitter_that_died_is_taken_by_the_next_delivery_after_its_lease(
    submitter: Submitter, objects: FakeObjectStore, ximilar: FakeXimilar, storage: Storage, clock: FakeClock
) -> None:
    # Given an upload claimed by a submitter that died before writing any request item
    upload = objects.put("incoming/photo.png", SMALL)
    claim = storage.images.claim_image(upload, "upscaler", "upscale_2x", "died-before-posting", clock(), CLAIM_LEASE)
    assert claim is Claim.TAKEN

    # When SQS delivers the message again, first within the lease, then after it
    within = submitter.submit_uploads([upload])
    clock.advance(CLAIM_LEASE + timedelta(seconds=1))
    after = submitter.submit_uploads([upload])

    # Then the live-looking claim is respected without dropping the message (SQS brings it back after
    # the lease: a claim with no request item is no proof of a submission), and the dead one is taken
    # and submitted once
    assert (within.duplicates, within.requests_submitted, set(within.retry)) == (0, 0, {upload.message_id})
    assert (after.duplicates, after.requests_submitted, len(ximilar.sent)) == (0, 1, 1)
    assert image_of(storage, upload).submission_id != "died-before-posting"


def test_the_same_notification_twice_in_one_batch_is_sent_once(
    submitter: Submitter, objects: FakeObjectStore, ximilar: FakeXimilar
) -> None:
    upload = objects.put("incoming/flows/twice.png", SMALL)

    outcome = submitter.submit_uploads([upload, upload])

    assert (outcome.images_submitted, outcome.duplicates) == (1, 1)
    assert [len(sent.records) for sent in ximilar.sent] == [1]


@pytest.mark.parametrize(
    ("key", "body", "code", "reason"),
    [
        ("elsewhere/photo.png", SMALL, "no-route", "no route matches the key"),
        ("incoming/notes.txt", SMALL, "not-an-image", "not an image extension: .txt"),
        ("incoming/empty.png", b"", "empty", "the object is empty"),
        ("incoming/huge.png", bytes(1001), "too-large", "the object is 1001 bytes, over the maximum of 1000"),
    ],
)
def test_a_rejected_upload_is_recorded_failed_with_its_reason_and_never_sent(
    submitter: Submitter,
    objects: FakeObjectStore,
    ximilar: FakeXimilar,
    storage: Storage,
    key: str,
    body: bytes,
    code: str,
    reason: str,
) -> None:
    upload = objects.put(key, body)

    outcome = submitter.submit_uploads([upload])

    assert status_of(storage, upload) == (Status.FAILED, reason)
    assert outcome.images_failed == {code: 1}
    assert (outcome.retry, ximilar.sent) == ({}, [])


def test_a_rejected_upload_notified_twice_is_a_duplicate_the_second_time(
    submitter: Submitter, objects: FakeObjectStore
) -> None:
    upload = objects.put("incoming/notes.txt", SMALL)
    submitter.submit_uploads([upload])

    outcome = submitter.submit_uploads([upload])

    assert (outcome.duplicates, outcome.images_failed) == (1, {})


@pytest.mark.parametrize(
    ("failure", "why", "held_back"),
    [
        (XimilarTransientError("503: unavailable", 503), "not accepted yet: 503: unavailable", False),
        (XimilarThrottled("throttled", 429), "Ximilar is throttling (429)", True),
    ],
    ids=["503", "429"],
)
def test_a_transient_ximilar_failure_hands_the_request_to_the_sweeper_with_its_claims_released(
    submitter: Submitter,
    objects: FakeObjectStore,
    ximilar: FakeXimilar,
    storage: Storage,
    failure: XimilarTransientError,
    why: str,
    held_back: bool,
) -> None:
    # Given Ximilar will not take the next request
    uploads = [objects.put(f"incoming/flows/retry-{n}.png", SMALL) for n in range(3)]
    ximilar.fail_next(failure, on=["submit"])

    # When the uploads are submitted
    outcome = submitter.submit_uploads(uploads)

    # Then no message is retried: the uploads are owned, waiting with the reason, due for the sweeper ...
    reason = f"waiting to be submitted: {why}"
    assert (outcome.retry, outcome.handed_on, outcome.throttled) == ({}, 3, held_back)
    assert outcome.requests_submitted == 0
    image = storage.images.image(uploads[0].uri)
    assert image is not None and (image.status, image.status_reason) == (Status.SUBMITTING, reason)
    request = storage.requests.get_request(str(image.submission_id))
    assert request is not None and (request.status, request.status_reason) == (Status.SUBMITTING, reason)
    assert request.next_check_at is not None and request.held_back is held_back
    # ... and the claims are released: a redelivered notification takes them at once, without the lease
    again = submitter.submit_uploads(uploads)
    assert (again.images_submitted, again.duplicates, again.retry) == (3, 0, {})
    assert all(upload in ximilar for upload in uploads)


def test_a_refused_request_ends_its_images_failed_without_retry(
    submitter: Submitter, objects: FakeObjectStore, ximilar: FakeXimilar, storage: Storage
) -> None:
    uploads = [objects.put(f"incoming/flows/bad-{n}.png", SMALL) for n in range(2)]
    ximilar.fail_next(XimilarRequestError(400, "invalid endpoint"), on=["submit"])

    outcome = submitter.submit_uploads(uploads)

    reason = "Ximilar refused the request: Ximilar answered 400: invalid endpoint"
    assert [status_of(storage, upload) for upload in uploads] == [(Status.FAILED, reason)] * 2
    assert (outcome.retry, outcome.images_failed) == ({}, {"refused": 2})
    submission_id = image_of(storage, uploads[0]).submission_id
    # Nothing left for the sweeper: no request item was ever written (the images say why they failed).
    assert storage.requests.get_request(str(submission_id)) is None


def test_an_object_deleted_before_it_is_read_ends_failed_and_the_rest_is_sent(
    submitter: Submitter, objects: FakeObjectStore, ximilar: FakeXimilar, storage: Storage
) -> None:
    # Given two uploads of which one was deleted before submit read it
    kept = objects.put("incoming/flows/kept.png", SMALL)
    gone = objects.put("incoming/flows/gone.png", SMALL)
    objects.delete(gone)

    # When they are submitted
    outcome = submitter.submit_uploads([kept, gone])

    # Then the deleted one ends FAILED, the other is sent, and the request names only what was sent
    assert status_of(storage, gone) == (Status.FAILED, "the object no longer exists")
    assert (outcome.images_failed, outcome.images_submitted) == ({"object-gone": 1}, 1)
    assert kept in ximilar and gone not in ximilar
    request = storage.requests.get_request(str(image_of(storage, kept).submission_id))
    assert request is not None and request.images == {kept.record_id: kept.uri}


def test_a_request_whose_every_object_is_gone_ends_failed_without_a_call(
    submitter: Submitter, objects: FakeObjectStore, ximilar: FakeXimilar, storage: Storage
) -> None:
    gone = objects.put("incoming/gone.png", SMALL)
    objects.delete(gone)

    outcome = submitter.submit_uploads([gone])

    assert status_of(storage, gone) == (Status.FAILED, "the object no longer exists")
    assert outcome.images_failed == {"object-gone": 1}
    assert ximilar.calls == []
    assert storage.requests.get_request(str(image_of(storage, gone).submission_id)) is None  # nothing was sent


def test_small_objects_are_sent_inline_and_large_ones_by_presigned_url(
    submitter: Submitter, objects: FakeObjectStore, ximilar: FakeXimilar
) -> None:
    small = objects.put("incoming/flows/small.png", SMALL)
    large = objects.put("incoming/flows/large image.png", LARGE)

    submitter.submit_uploads([small, large])

    assert ximilar.record_of(small) == {"_id": small.record_id, "_base64": base64.b64encode(SMALL).decode()}
    assert ximilar.record_of(large) == {
        "_id": large.record_id,
        "_url": "https://input-bucket.s3.amazonaws.com/incoming/flows/large%20image.png?X-Amz-Expires=3600",
    }
