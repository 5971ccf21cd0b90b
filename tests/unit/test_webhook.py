"""WebhookReceiver: a delivery is authenticated before anything in it is believed, then recorded once."""

from __future__ import annotations

import hashlib
import json
from typing import Any
from unittest import mock

import pytest

from tests.support.fakes import FakeObjectStore, FakeXimilar, SentRequest
from tests.unit.conftest import RESULTS_BUCKET
from tests.unit.given import a_submitted_request, image_of, submission_id
from ximilar_async.adapters.dynamodb import RequestStore, Storage
from ximilar_async.services.submitter import Submitter
from ximilar_async.services.webhook_auth import WebhookAuth, static_keys
from ximilar_async.services.webhook_receiver import Refusal, WebhookReceiver, WebhookRefused
from ximilar_async.values.statuses import Status
from ximilar_async.values.uploads import Upload


@pytest.fixture
def submitted(submitter: Submitter, objects: FakeObjectStore, ximilar: FakeXimilar) -> tuple[SentRequest, list[Upload]]:
    return a_submitted_request(submitter, objects, ximilar, "incoming/flows/a.png", "incoming/flows/b.png")


def delivery(sent: SentRequest, payload: dict[str, Any]) -> tuple[dict[str, str], bytes]:
    """What Ximilar posts: the headers submit gave it for this request, the payload as JSON."""
    return {"Content-Type": "application/json", **sent.webhook_headers}, json.dumps(payload).encode()


def refusal(receiver: WebhookReceiver, headers: dict[str, str], body: bytes) -> Refusal:
    with pytest.raises(WebhookRefused) as refused:
        receiver.receive(headers, body)
    return refused.value.refusal


def test_a_valid_signed_delivery_is_recorded(
    receiver: WebhookReceiver,
    submitted: tuple[SentRequest, list[Upload]],
    ximilar: FakeXimilar,
    storage: Storage,
) -> None:
    sent, uploads = submitted
    headers, body = delivery(sent, ximilar.finish(sent.id))

    receipt = receiver.receive(headers, body)

    assert (receipt.outcome.recorded, receipt.stored_at) == (2, None)
    assert {image_of(storage, upload).status for upload in uploads} == {Status.DONE}


def test_a_webhook_faster_than_the_request_items_write_waits_for_it_and_records(
    receiver: WebhookReceiver,
    submitted: tuple[SentRequest, list[Upload]],
    ximilar: FakeXimilar,
    storage: Storage,
) -> None:
    # Given a delivery that comes before the submitter wrote the request item (it writes it after the POST)
    sent, uploads = submitted
    headers, body = delivery(sent, ximilar.finish(sent.id))
    real_get = RequestStore.get_request
    reads: list[str] = []

    def written_a_moment_later(self: RequestStore, wanted: str) -> Any:
        reads.append(wanted)
        return None if len(reads) == 1 else real_get(self, wanted)

    # When it is received
    with mock.patch.object(RequestStore, "get_request", written_a_moment_later):
        receipt = receiver.receive(headers, body)

    # Then it looked again, found the item and recorded the results (nothing kept as unmatched)
    assert len(reads) >= 2
    assert (receipt.outcome.recorded, receipt.deferred, receipt.stored_at) == (2, None, None)
    assert {image_of(storage, upload).status for upload in uploads} == {Status.DONE}


def test_headers_are_read_in_any_letter_case(
    receiver: WebhookReceiver, submitted: tuple[SentRequest, list[Upload]], ximilar: FakeXimilar
) -> None:
    sent, _ = submitted
    headers, body = delivery(sent, ximilar.finish(sent.id))

    receipt = receiver.receive({name.lower(): value for name, value in headers.items()}, body)

    assert receipt.outcome.recorded == 2


def test_a_repeated_delivery_records_nothing_twice(
    receiver: WebhookReceiver, submitted: tuple[SentRequest, list[Upload]], ximilar: FakeXimilar
) -> None:
    sent, _ = submitted
    headers, body = delivery(sent, ximilar.finish(sent.id))
    receiver.receive(headers, body)

    again = receiver.receive(headers, body)

    assert (again.outcome.recorded, again.outcome.duplicates, again.stored_at) == (0, 2, None)


def test_a_body_over_the_limit_is_refused_before_it_is_read(
    receiver: WebhookReceiver, submitted: tuple[SentRequest, list[Upload]]
) -> None:
    sent, _ = submitted
    headers, _ = delivery(sent, {})

    assert refusal(receiver, headers, b"{" + b" " * receiver.max_body_bytes + b"}") is Refusal.TOO_LARGE


@pytest.mark.parametrize("missing", ["X-Xasync-Submission", "X-Xasync-Token"])
def test_a_delivery_without_the_webhook_headers_is_refused(
    receiver: WebhookReceiver, submitted: tuple[SentRequest, list[Upload]], ximilar: FakeXimilar, missing: str
) -> None:
    sent, _ = submitted
    headers, body = delivery(sent, ximilar.finish(sent.id))
    del headers[missing]

    assert refusal(receiver, headers, body) is Refusal.MISSING_TOKEN


@pytest.mark.parametrize("body", [b"not json", b"\xff\xfe", b'{"status": "DONE",'])
def test_a_body_that_is_not_json_is_refused(
    receiver: WebhookReceiver, submitted: tuple[SentRequest, list[Upload]], body: bytes
) -> None:
    sent, _ = submitted
    headers, _ = delivery(sent, {})

    assert refusal(receiver, headers, body) is Refusal.NOT_JSON


@pytest.mark.parametrize(
    "payload",
    [
        {"status": "DONE", "id": "r"},  # no records
        {"status": "DONE", "id": "r", "response": {"records": []}},
        {"status": "DONE", "id": "r", "response": {"records": [{"_status": {"code": 200}}]}},  # no _id
        ["a", "list"],
    ],
)
def test_json_that_is_not_a_webhook_payload_is_refused(
    receiver: WebhookReceiver, submitted: tuple[SentRequest, list[Upload]], payload: Any
) -> None:
    sent, _ = submitted
    headers = {"Content-Type": "application/json", **sent.webhook_headers}

    assert refusal(receiver, headers, json.dumps(payload).encode()) is Refusal.NOT_A_PAYLOAD


def test_a_signed_payload_missing_what_the_recorder_needs_is_refused_after_the_token_check(
    receiver: WebhookReceiver, submitted: tuple[SentRequest, list[Upload]], ximilar: FakeXimilar
) -> None:
    sent, _ = submitted
    payload = ximilar.finish(sent.id)
    del payload["id"]
    headers, body = delivery(sent, payload)

    assert refusal(receiver, headers, body) is Refusal.NOT_A_PAYLOAD


def test_a_token_made_with_another_key_is_refused_and_nothing_is_written(
    receiver: WebhookReceiver,
    submitted: tuple[SentRequest, list[Upload]],
    ximilar: FakeXimilar,
    storage: Storage,
) -> None:
    sent, uploads = submitted
    payload = ximilar.finish(sent.id)
    forged = WebhookAuth(static_keys(b"not-the-stack-key")).headers(submission_id(sent))
    _, body = delivery(sent, payload)

    assert refusal(receiver, forged, body) is Refusal.BAD_TOKEN
    assert {image_of(storage, upload).status for upload in uploads} == {Status.SUBMITTING}


def test_a_valid_token_replayed_with_another_requests_records_records_only_what_ximilar_says(
    receiver: WebhookReceiver,
    submitter: Submitter,
    objects: FakeObjectStore,
    ximilar: FakeXimilar,
    storage: Storage,
    submitted: tuple[SentRequest, list[Upload]],
) -> None:
    # Given the headers of one request (still processing at Ximilar) and the finished body of another
    sent, uploads = submitted
    other, other_uploads = a_submitted_request(submitter, objects, ximilar, "incoming/flows/other.png")
    headers, _ = delivery(sent, {})
    _, other_body = delivery(other, ximilar.finish(other.id))

    # When they are posted together
    receipt = receiver.receive(headers, other_body)

    # Then the body is only a notification: Ximilar says the signed request is not finished, nothing is recorded
    assert (receipt.outcome.recorded, receipt.deferred is not None) == (0, True)
    assert {image_of(storage, upload).status for upload in [*uploads, *other_uploads]} == {Status.SUBMITTING}


def test_a_signed_delivery_naming_nothing_known_is_kept_for_inspection(
    receiver: WebhookReceiver, auth: WebhookAuth, objects: FakeObjectStore
) -> None:
    # Given a delivery signed with the stack's key for a submission the tables do not hold (it expired)
    payload = {
        "id": "an-old-request",
        "status": "DONE",
        "response": {"records": [{"_id": "r-1", "_status": {"code": 200, "text": "OK"}}]},
    }
    headers = auth.headers("an-expired-submission")
    body = json.dumps(payload).encode()

    # When it is received
    receipt = receiver.receive(headers, body)

    # Then nothing is recorded and the body is stored in the results bucket, as it came
    assert receipt.outcome.matched_nothing
    assert receipt.stored_at is not None
    assert receipt.stored_at == f"s3://{RESULTS_BUCKET}/unmatched/{hashlib.sha256(body).hexdigest()}.json"
    assert objects.objects[receipt.stored_at] == body
