"""Givens shared by the unit tests: a request as the submitter leaves it, read back as the domain sees it."""

from __future__ import annotations

from tests.support.fakes import FakeObjectStore, FakeXimilar, SentRequest
from ximilar_async.adapters.dynamodb import Storage
from ximilar_async.services.submitter import Submitter
from ximilar_async.services.webhook_auth import SUBMISSION_HEADER
from ximilar_async.values.entities import Image, TrackedRequest
from ximilar_async.values.uploads import Upload

SMALL_PNG = b"\x89PNG\r\n\x1a\n" + bytes(40)


def a_submitted_request(
    submitter: Submitter, objects: FakeObjectStore, ximilar: FakeXimilar, *keys: str
) -> tuple[SentRequest, list[Upload]]:
    """One request Ximilar accepted for `keys` (route them to one request: `incoming/flows/...`)."""
    uploads = [objects.put(key, SMALL_PNG) for key in keys]
    outcome = submitter.submit_uploads(uploads)
    assert outcome.requests_submitted == 1, outcome
    return ximilar.sent[-1], uploads


def submission_id(sent: SentRequest) -> str:
    return sent.webhook_headers[SUBMISSION_HEADER]


def image_of(storage: Storage, upload: Upload) -> Image:
    image = storage.images.image(upload.uri)
    assert image is not None, f"no image item for {upload.uri}"
    return image


def request_of(storage: Storage, sent: SentRequest) -> TrackedRequest:
    request = storage.requests.get_request(submission_id(sent))
    assert request is not None, f"no request item for {sent.id}"
    return request
