"""Images in flight: no write between claim and result, so their state is read through their requests."""

from __future__ import annotations

from datetime import timedelta

from tests.support.fakes import FakeClock, FakeObjectStore, FakeXimilar
from tests.unit.given import a_submitted_request, image_of, submission_id
from ximilar_async.adapters.dynamodb import Storage
from ximilar_async.services.result_recorder import ResultRecorder
from ximilar_async.services.submitter import Submitter
from ximilar_async.values.statuses import Status
from ximilar_async.values.ximilar_payloads import parse_outcome


def test_an_image_in_flight_is_reported_with_its_requests_status_and_id_and_counted_under_it(
    submitter: Submitter,
    objects: FakeObjectStore,
    ximilar: FakeXimilar,
    recorder: ResultRecorder,
    storage: Storage,
    clock: FakeClock,
) -> None:
    # Given two requests Ximilar accepted, one of which it has finished and the webhook recorded
    sent, (a, b) = a_submitted_request(submitter, objects, ximilar, "incoming/flows/a.png", "incoming/flows/b.png")
    done, (c,) = a_submitted_request(submitter, objects, ximilar, "incoming/flows/c.png")
    recorder.record(submission_id(done), parse_outcome(ximilar.finish(done.id)))
    since = clock() - timedelta(hours=1)

    # Then the image items of the first are as claimed, but they are reported CREATED with Ximilar's id
    assert {image_of(storage, upload).status for upload in (a, b)} == {Status.SUBMITTING}
    known = storage.queries.images_as_known([a.uri, b.uri, c.uri])
    assert {uri: (image.status, image.request_id) for uri, image in known.items()} == {
        a.uri: (Status.CREATED, sent.id),
        b.uri: (Status.CREATED, sent.id),
        c.uri: (Status.DONE, done.id),
    }
    # ... found by status and by request like finished ones, though no index holds them
    assert sorted(storage.queries.image_uris_by_status([Status.CREATED], since)) == sorted([a.uri, b.uri])
    assert sorted(storage.queries.image_uris_of_request(sent.id)) == sorted([a.uri, b.uri])
    assert storage.queries.image_uris_of_request(done.id) == [c.uri]
    counts = storage.queries.count_by_status(since)
    assert (counts[Status.CREATED], counts[Status.DONE], counts[Status.SUBMITTING]) == (2, 1, 0)
    page = storage.queries.images_page(list(Status), since, 10)
    assert sorted((image.uri, image.status) for image in page.images) == sorted(
        [(a.uri, Status.CREATED), (b.uri, Status.CREATED), (c.uri, Status.DONE)]
    )
    oldest = storage.queries.oldest_in_flight()
    assert oldest is not None and oldest.uri in (a.uri, b.uri)
