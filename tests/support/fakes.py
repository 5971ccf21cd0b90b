"""In-memory collaborators of the domain, for the unit tests: they read like the thing they stand for.

- `FakeXimilar` (`ports.XimilarApi`): remembers every request submitted to it (`assert upload in ximilar`),
  answers `status`/`get` from a state the test sets, and raises the client's typed errors when told to.
- `FakeObjectStore` (`ports.ObjectStore`): S3 as a dict; putting an object gives the `Upload` its S3
  notification would describe, deleting it makes `read` raise `ObjectGone`.
- `FakeClock`: the injected clock, moved by the test instead of waiting.
- The stores are NOT faked here: `in_process_tables` gives the real `dynamodb.Storage` its tables on moto's
  in-process DynamoDB (`moto.mock_aws`: no server, no socket), created from template.yaml. Its
  conditional writes (leases, sequencers, "DONE is never undone") are the rules the domain leans on;
  re-implementing them in a fake would test the fake. Measured on this 2-core machine: creating the two
  tables costs ~0.1-0.3 s and a conditional write ~5 ms, so the tables are created once per test package
  and emptied before each test (`empty_tables`, a few ms), which keeps the whole unit layer in seconds.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import boto3
from moto import mock_aws

from tests.support.aws import create_table_from_template
from ximilar_async.adapters.dynamodb.models import Tables, bind_tables
from ximilar_async.adapters.ximilar import validate_records
from ximilar_async.services.errors import ObjectGone, XimilarError, XimilarNotFound
from ximilar_async.values import identity
from ximilar_async.values.entities import ObjectLocation
from ximilar_async.values.request_types import RequestType, parse_request_type
from ximilar_async.values.uploads import Upload, normalize_sequencer

# --- the clock -----------------------------------------------------------------------------------------


@dataclass
class FakeClock:
    """A clock that moves only when told: `clock()` is now, `clock.advance(minutes=3)` moves it."""

    now: datetime = field(default_factory=lambda: datetime(2026, 11, 30, 12, 0, tzinfo=UTC))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta | None = None, **units: float) -> datetime:
        self.now += delta if delta is not None else timedelta(**units)
        return self.now


# --- Ximilar -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SentRequest:
    """One request Ximilar accepted, as it was sent."""

    id: str
    request_type: RequestType
    endpoint: str
    records: list[dict[str, Any]]
    webhook: dict[str, Any] | None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def record_ids(self) -> list[str]:
        return [record["_id"] for record in self.records]

    @property
    def webhook_headers(self) -> dict[str, str]:
        return dict((self.webhook or {}).get("headers", {}))


METHODS = ("submit", "status", "get")


@dataclass
class _Failure:
    error: XimilarError
    times: int
    methods: frozenset[str]


def ok(**results: Any) -> dict[str, Any]:
    """A record's `_status` (and results) for an image Ximilar processed, with the `request_id` it sends."""
    return {"_status": {"code": 200, "text": "OK", "request_id": str(uuid.uuid4())}, **results}


def error(code: int, text: str) -> dict[str, Any]:
    """A record's `_status` for an image Ximilar could not process."""
    return {"_status": {"code": code, "text": text}}


@dataclass
class FakeXimilar:
    """Ximilar's asynchronous API in memory.

    `submit` refuses what the real client refuses (`validate_records`), keeps the request and answers
    a new id; `status` and `get` answer from what the test set (`set_state`, `finish`) and raise
    `XimilarNotFound` for an id Ximilar does not know (`forget`). `fail_next` makes the next calls raise.
    """

    sent: list[SentRequest] = field(default_factory=list)
    states: dict[str, str] = field(default_factory=dict)  # request id -> Ximilar's state
    details: dict[str, dict[str, Any]] = field(default_factory=dict)  # request id -> what `get` answers
    calls: list[tuple[str, str]] = field(default_factory=list)  # (method, request id or type)
    during_status: Callable[[str], None] | None = None  # runs while `/status` is being answered
    deadline: float | None = None  # what the caller last bounded its calls by
    credits_left: int = 1_000_000  # what `remaining_credits` answers
    _failures: list[_Failure] = field(default_factory=list)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def set_deadline(self, deadline: float | None) -> None:
        self.deadline = deadline

    # what the test tells it
    def fail_next(self, error: XimilarError, times: int = 1, *, on: Sequence[str] = METHODS) -> None:
        """The next `times` calls of the methods `on` raise `error` instead of answering."""
        self._failures.append(_Failure(error, times, frozenset(on)))

    def set_state(self, request_id: str, state: str) -> None:
        self.states[request_id] = state

    def forget(self, request_id: str) -> None:
        """Ximilar no longer knows the request (404)."""
        self.states.pop(request_id, None)
        self.details.pop(request_id, None)

    def finish(self, request_id: str, outcomes: Mapping[str, dict[str, Any]] | None = None) -> dict[str, Any]:
        """DONE, each record answered with `outcomes[_id]` (default `ok()`); returns the payload."""
        sent = self.request(request_id)
        records = [
            {"_id": record["_id"], **(outcomes or {}).get(record["_id"], ok(_upscaled_width=16))}
            for record in sent.records
        ]
        payload = {
            "id": request_id,
            "status": "DONE",
            "type": sent.request_type.value,
            "response": {"records": records},
        }
        self.states[request_id] = "DONE"
        self.details[request_id] = payload
        return payload

    # what the test reads
    def request(self, request_id: str) -> SentRequest:
        return next(sent for sent in self.sent if sent.id == request_id)

    def request_of(self, upload: Upload) -> SentRequest:
        """The last request that carried `upload`."""
        return next(sent for sent in reversed(self.sent) if upload.record_id in sent.record_ids)

    def record_of(self, upload: Upload) -> dict[str, Any]:
        return next(record for record in self.request_of(upload).records if record["_id"] == upload.record_id)

    def __contains__(self, upload: object) -> bool:
        """`upload in ximilar`: some request Ximilar accepted carried this upload."""
        return isinstance(upload, Upload) and any(upload.record_id in sent.record_ids for sent in self.sent)

    # the XimilarApi
    def submit(
        self,
        request_type: RequestType | str,
        endpoint: str,
        records: Sequence[Mapping[str, Any]],
        webhook: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        kind = request_type if isinstance(request_type, RequestType) else parse_request_type(request_type)
        self._answer("submit", kind.value)
        validate_records(kind, records)
        request_id = f"ximilar-request-{next(self._ids):04d}"
        self.sent.append(
            SentRequest(
                request_id, kind, endpoint, [dict(r) for r in records], dict(webhook or {}), dict(options or {})
            )
        )
        self.states[request_id] = "CREATED"
        return {"id": request_id, "status": "CREATED", "type": kind.value}

    def status(self, request_id: str) -> str:
        self._answer("status", request_id)
        state = self.states[request_id]
        if self.during_status is not None:
            self.during_status(request_id)
        return state

    def remaining_credits(self) -> int:
        self.calls.append(("remaining_credits", ""))
        return self.credits_left

    def get(self, request_id: str) -> dict[str, Any]:
        self._answer("get", request_id)
        return self.details.get(request_id, {"id": request_id, "status": self.states[request_id]})

    def _answer(self, method: str, subject: str) -> None:
        self.calls.append((method, subject))
        for failure in self._failures:
            if method in failure.methods and failure.times > 0:
                failure.times -= 1
                raise failure.error
        if method != "submit" and subject not in self.states:
            raise XimilarNotFound(404, "Not found.")


# --- S3 ------------------------------------------------------------------------------------------------


@dataclass
class FakeObjectStore:
    """S3 as a dict of `s3://bucket/key` -> bytes."""

    objects: dict[str, bytes] = field(default_factory=dict)
    _sequencer: Iterator[int] = field(default_factory=lambda: itertools.count(0x0055AED6DCAF0EE501))
    _messages: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def put(self, key: str, body: bytes, *, bucket: str = "input-bucket") -> Upload:
        """Store an object; returns the upload its ObjectCreated notification describes (unversioned bucket)."""
        self.objects[identity.image_uri(bucket, key)] = body
        return Upload(
            message_id=f"message-{next(self._messages):04d}",
            bucket=bucket,
            key=key,
            size=len(body),
            etag=hashlib.md5(body, usedforsecurity=False).hexdigest(),
            version_id=None,
            sequencer=normalize_sequencer(f"{next(self._sequencer):X}"),
        )

    def delete(self, upload: Upload) -> None:
        self.objects.pop(upload.uri, None)

    def __contains__(self, uri: object) -> bool:
        """`"s3://bucket/key" in objects`."""
        return uri in self.objects

    def json(self, uri: str) -> Any:
        return json.loads(self.objects[uri])

    # the ObjectStore
    def read(self, location: ObjectLocation) -> bytes:
        try:
            return self.objects[identity.image_uri(location.bucket, location.key)]
        except KeyError:
            raise ObjectGone(location.key) from None

    def presigned_get(self, location: ObjectLocation, expires_in: int) -> str:
        return f"https://{location.bucket}.s3.amazonaws.com/{quote(location.key)}?X-Amz-Expires={expires_in}"

    def put_json(self, bucket: str, key: str, body: bytes) -> str:
        uri = f"s3://{bucket}/{key}"
        self.objects[uri] = body
        return uri


# --- DynamoDB (the real stores' tables, in process) ------------------------------------------------


@contextmanager
def in_process_tables(template: dict[str, Any]) -> Iterator[Tables]:
    """The images and requests tables, created from template.yaml on moto's in-process backend."""
    with mock_aws():
        dynamodb = boto3.client("dynamodb", region_name="us-east-1")
        create_table_from_template(dynamodb, template, "ImagesTable", "images")
        create_table_from_template(dynamodb, template, "RequestsTable", "requests")
        yield bind_tables("images", "requests", region="us-east-1")


def empty_tables(tables: Tables) -> None:
    """Delete every item, so each test starts from empty tables without the cost of new ones."""
    for model in (tables.images, tables.requests):
        with model.batch_write() as batch:
            for item in model.scan():
                batch.delete(item)


# --- outputs and events -----------------------------------------------------------------------------


@dataclass
class FakeOutputQueue:
    """`outputs.OutputQueue`: the jobs the recorder queued (`assert job in queue`)."""

    jobs: list[Any] = field(default_factory=list)
    sends: int = 0

    def send(self, jobs: Any) -> None:
        self.sends += 1
        self.jobs.extend(jobs)

    def __contains__(self, job: object) -> bool:
        return job in self.jobs


@dataclass
class FakeEventBus:
    """`events.EventPublisher`: the events published, in order (`bus.of_type("Image Finished")`)."""

    events: list[Any] = field(default_factory=list)

    def publish(self, events: Any) -> None:
        self.events.extend(events)

    def of_type(self, detail_type: str) -> list[dict[str, Any]]:
        return [event.detail for event in self.events if event.detail_type == detail_type]


@dataclass
class FakeArtifacts:
    """`outputs.ArtifactCopier` over URLs the test serves from memory; a URL it forgot answers 410."""

    served: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    stored: dict[str, tuple[bytes, str, dict[str, str]]] = field(default_factory=dict)  # s3 URI -> body, type, meta
    failing: int = 0  # copies that raise a passing error first

    def copy(self, url: str, bucket: str, key_for: Callable[[str], str], metadata: Mapping[str, str]) -> Any:
        from ximilar_async.values.outputs import ArtifactGone, CopiedArtifact, extension_of

        if self.failing:
            self.failing -= 1
            raise ConnectionError("the artifact's server went away")
        if url not in self.served:
            raise ArtifactGone(410)
        body, content_type = self.served[url]
        uri = f"s3://{bucket}/{key_for(extension_of(content_type, url, ''))}"
        self.stored[uri] = (body, content_type, dict(metadata))
        return CopiedArtifact(uri, content_type, len(body))
