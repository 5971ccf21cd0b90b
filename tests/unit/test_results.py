"""ResultRecorder: what Ximilar answered for a request, recorded once per image, by the webhook or the sweeper."""

from __future__ import annotations

from datetime import timedelta

from tests.support.fakes import FakeClock, FakeObjectStore, FakeXimilar, error, ok
from tests.unit.conftest import RESULTS_BUCKET
from tests.unit.given import a_submitted_request, image_of, request_of, submission_id
from ximilar_async.adapters.dynamodb import Storage
from ximilar_async.adapters.dynamodb.mapping import epoch
from ximilar_async.services.result_recorder import RETRY_ERRORS_AFTER, ResultRecorder
from ximilar_async.services.submitter import Submitter
from ximilar_async.values.statuses import Status
from ximilar_async.values.ximilar_payloads import RequestOutcome, parse_outcome

TWO_FLOWS = ("incoming/flows/a.png", "incoming/flows/b.png")


def test_a_done_request_records_each_image_done_with_its_record(
    submitter: Submitter,
    objects: FakeObjectStore,
    ximilar: FakeXimilar,
    recorder: ResultRecorder,
    storage: Storage,
) -> None:
    # Given a request of two images that Ximilar finished
    sent, uploads = a_submitted_request(submitter, objects, ximilar, *TWO_FLOWS)
    payload = ximilar.finish(sent.id)

    before = request_of(storage, sent)

    # When its outcome is recorded
    outcome = recorder.record(submission_id(sent), parse_outcome(payload))

    # Then both images are DONE with their record; the request item is not written again (its images
    # say it is finished: none waits for it, which is what the sweeper and the views read)
    assert (outcome.recorded, outcome.duplicates, outcome.unmatched) == (2, 0, 0)
    for upload, record in zip(uploads, payload["response"]["records"], strict=True):
        image = image_of(storage, upload)
        assert (image.status, image.status_reason, image.result) == (Status.DONE, None, record)
    request = request_of(storage, sent)
    assert request == before
    assert storage.images.unfinished_images(request) == {}


def test_an_error_record_ends_its_image_error_with_the_reason_and_a_transient_one_is_kept_for_retry(
    submitter: Submitter,
    objects: FakeObjectStore,
    ximilar: FakeXimilar,
    recorder: ResultRecorder,
    storage: Storage,
    clock: FakeClock,
) -> None:
    # Given a request of three images: one done, one whose download failed, one Ximilar cannot process
    keys = ("incoming/flows/fine.png", "incoming/flows/expired.png", "incoming/flows/broken.png")
    sent, (fine, expired, broken) = a_submitted_request(submitter, objects, ximilar, *keys)
    payload = ximilar.finish(
        sent.id,
        {
            expired.record_id: error(500, "Image download failed"),
            broken.record_id: error(400, "Unsupported image format"),
        },
    )

    # When its outcome is recorded
    outcome = recorder.record(submission_id(sent), parse_outcome(payload))

    # Then each image has its status and reason; only the download failure is due for another try
    assert outcome.recorded == 3
    assert image_of(storage, fine).status is Status.DONE
    expired_image, broken_image = image_of(storage, expired), image_of(storage, broken)
    assert (expired_image.status, expired_image.status_reason) == (Status.ERROR, "500: Image download failed")
    assert (broken_image.status, broken_image.status_reason) == (Status.ERROR, "400: Unsupported image format")
    request = request_of(storage, sent)
    assert request.status is Status.DONE
    assert request.retry_record_ids == {expired.record_id}
    assert request.next_check_at == epoch(clock() + RETRY_ERRORS_AFTER)


def test_the_same_outcome_recorded_twice_is_a_duplicate_the_second_time(
    submitter: Submitter,
    objects: FakeObjectStore,
    ximilar: FakeXimilar,
    recorder: ResultRecorder,
    storage: Storage,
    clock: FakeClock,
) -> None:
    sent, uploads = a_submitted_request(submitter, objects, ximilar, *TWO_FLOWS)
    payload = parse_outcome(ximilar.finish(sent.id))
    recorder.record(submission_id(sent), payload)
    first_written = image_of(storage, uploads[0]).updated_at

    clock.advance(minutes=1)
    again = recorder.record(submission_id(sent), payload)

    assert (again.recorded, again.duplicates) == (0, 2)
    assert image_of(storage, uploads[0]).updated_at == first_written


def test_a_request_ximilar_failed_fails_its_unfinished_images_with_the_state_as_reason(
    submitter: Submitter,
    objects: FakeObjectStore,
    ximilar: FakeXimilar,
    recorder: ResultRecorder,
    storage: Storage,
) -> None:
    sent, uploads = a_submitted_request(submitter, objects, ximilar, *TWO_FLOWS)

    outcome = recorder.record(submission_id(sent), RequestOutcome(status="FAILED", id=sent.id))

    reason = "Ximilar ended the request FAILED"
    assert (outcome.recorded, outcome.duplicates) == (2, 0)
    assert {(image_of(storage, u).status, image_of(storage, u).status_reason) for u in uploads} == {
        (Status.FAILED, reason)
    }
    request = request_of(storage, sent)
    assert (request.status, request.ximilar_status, request.status_reason) == (Status.FAILED, "FAILED", reason)


def test_a_failed_state_after_done_changes_nothing(
    submitter: Submitter,
    objects: FakeObjectStore,
    ximilar: FakeXimilar,
    recorder: ResultRecorder,
    storage: Storage,
) -> None:
    sent, uploads = a_submitted_request(submitter, objects, ximilar, *TWO_FLOWS)
    recorder.record(submission_id(sent), parse_outcome(ximilar.finish(sent.id)))

    outcome = recorder.record(submission_id(sent), RequestOutcome(status="FAILED", id=sent.id))

    assert outcome.recorded == 0
    assert {image_of(storage, upload).status for upload in uploads} == {Status.DONE}
    assert storage.images.unfinished_images(request_of(storage, sent)) == {}
    assert request_of(storage, sent).status is Status.CREATED  # not written: FAILED would be a lie


def test_a_pending_state_records_nothing_yet(
    submitter: Submitter,
    objects: FakeObjectStore,
    ximilar: FakeXimilar,
    recorder: ResultRecorder,
    storage: Storage,
) -> None:
    sent, uploads = a_submitted_request(submitter, objects, ximilar, *TWO_FLOWS)

    outcome = recorder.record(submission_id(sent), RequestOutcome(status="PROCESSING", id=sent.id))

    assert (outcome.recorded, outcome.duplicates, outcome.matched_nothing) == (0, 0, True)
    assert {image_of(storage, upload).status for upload in uploads} == {Status.SUBMITTING}
    assert request_of(storage, sent).status is Status.CREATED


def test_an_unknown_request_matches_nothing_and_writes_nothing(
    ximilar: FakeXimilar, recorder: ResultRecorder, storage: Storage
) -> None:
    payload = {
        "id": "someone-elses-request",
        "status": "DONE",
        "response": {"records": [{"_id": "r-1", **ok()}, {"_id": "r-2", **ok()}]},
    }

    outcome = recorder.record("no-such-submission", parse_outcome(payload))

    assert (outcome.request_known, outcome.unmatched, outcome.matched_nothing) == (False, 2, True)
    assert storage.requests.get_request("no-such-submission") is None


def test_a_record_the_request_does_not_name_is_unmatched(
    submitter: Submitter,
    objects: FakeObjectStore,
    ximilar: FakeXimilar,
    recorder: ResultRecorder,
) -> None:
    sent, _ = a_submitted_request(submitter, objects, ximilar, *TWO_FLOWS)
    payload = ximilar.finish(sent.id)
    payload["response"]["records"].append({"_id": "not-in-this-request", **ok()})

    outcome = recorder.record(submission_id(sent), parse_outcome(payload))

    assert (outcome.recorded, outcome.unmatched) == (2, 1)


def test_a_record_too_large_for_an_item_is_stored_in_the_results_bucket(
    submitter: Submitter,
    objects: FakeObjectStore,
    ximilar: FakeXimilar,
    recorder: ResultRecorder,
    storage: Storage,
) -> None:
    sent, (upload,) = a_submitted_request(submitter, objects, ximilar, "incoming/flows/detailed.png")
    payload = ximilar.finish(sent.id, {upload.record_id: ok(_objects=["x" * 1000] * 400)})

    outcome = recorder.record(submission_id(sent), parse_outcome(payload))

    stored = f"s3://{RESULTS_BUCKET}/results/{upload.record_id}/{sent.id}.json"  # one object per request: no overwrite
    assert outcome.stored_in_s3 == [stored]
    assert stored in objects
    assert objects.json(stored) == payload["response"]["records"][0]
    image = image_of(storage, upload)
    assert (image.status, image.result, image.result_s3_uri) == (Status.DONE, None, stored)


def test_results_are_recorded_at_the_recorders_time(
    submitter: Submitter,
    objects: FakeObjectStore,
    ximilar: FakeXimilar,
    recorder: ResultRecorder,
    storage: Storage,
    clock: FakeClock,
) -> None:
    sent, (upload,) = a_submitted_request(submitter, objects, ximilar, "incoming/flows/when.png")

    recorded_at = clock.advance(timedelta(minutes=7))
    recorder.record(submission_id(sent), parse_outcome(ximilar.finish(sent.id)))

    assert image_of(storage, upload).updated_at == recorded_at


def test_a_failed_state_for_a_processing_request_with_nothing_waiting_takes_it_off_the_due_index(
    submitter: Submitter,
    objects: FakeObjectStore,
    ximilar: FakeXimilar,
    recorder: ResultRecorder,
    storage: Storage,
    clock: FakeClock,
) -> None:
    # Given a request kept due after an incomplete answer, whose images have all finished since
    sent, uploads = a_submitted_request(submitter, objects, ximilar, *TWO_FLOWS)
    payload = ximilar.finish(sent.id)
    first = {**payload, "response": {"records": payload["response"]["records"][:1]}}
    recorder.record(submission_id(sent), parse_outcome(first))
    request = request_of(storage, sent)
    assert request.status is Status.PROCESSING
    storage.images.fail_unfinished_images(storage.images.unfinished_images(request), "given up by hand", clock())
    assert storage.images.unfinished_images(request) == {}

    # When Ximilar then says the request FAILED
    recorder.record(submission_id(sent), RequestOutcome(status="FAILED", id=sent.id))

    # Then its images keep their statuses, and the request leaves the due index (no sweep loops on it)
    assert {image_of(storage, upload).status for upload in uploads} == {Status.DONE, Status.FAILED}
    request = request_of(storage, sent)
    assert (request.status, request.next_check_at) == (Status.FAILED, None)
