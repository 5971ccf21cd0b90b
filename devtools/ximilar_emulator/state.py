"""The emulator's state: run-time knobs, stored requests, pending API faults, and call logs."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

REQUEST_TYPES = ("upscaler", "flows", "collectibles-recognition", "card-grader")
WORKSPACE = "88431559-20ea-4d43-98a6-7a1cb38160e3"


@dataclass
class Knobs:
    """Everything a test or a user can turn, at start (CLI flags) or at run time (PATCH /_emulator/knobs)."""

    created_delay_seconds: float = 0.2  # CREATED -> PROCESSING
    processing_delay_seconds: float = 0.3  # PROCESSING -> final state
    final_state: str = "DONE"  # the state requests end in: DONE, FAILED, API_LIMIT_EXCEEDED, PROCESSING (never ends)...
    enforce_type_limits: bool = True  # upscaler: one record per request, as Ximilar documents
    page_size: int = 10  # list endpoint page size
    response_delay_seconds: float = 0.0  # every API answer waits this long (client timeouts)
    webhook_drop_rate: float = 0.0  # share of webhooks never sent
    webhook_duplicate_rate: float = 0.0  # share of webhooks sent twice
    webhook_delay_seconds: float = 0.0  # every webhook waits this long after DONE
    webhook_jitter_seconds: float = 0.0  # plus a random 0..jitter: webhooks arrive out of order
    webhook_max_attempts: int = 5  # deliveries tried when the receiver is down or answers 5xx
    webhook_retry_backoff_seconds: float = 0.5  # doubled after each failed delivery
    image_fetch_timeout_seconds: float = 10.0
    dropped_records: int = 0  # the last N records of each DONE answer are left out (details and webhook)
    renamed_records: int = 0  # the last N records kept carry an `_id` that was never sent
    credits_limit: int = 1_000_000  # GET /account/v2/details: the account's credits
    credits_counter: int = 0  # credits used; each accepted record adds credits_per_record
    credits_per_record: int = 1
    artifact_ttl_seconds: float = 0.0  # upscaled images answer 410 Gone this long after DONE (0: kept)

    def update(self, changes: dict[str, Any]) -> None:
        known = {f.name: f.type for f in fields(self)}
        unknown = sorted(set(changes) - set(known))
        if unknown:
            raise ValueError(f"unknown knobs: {', '.join(unknown)}")
        for name, value in changes.items():
            current = getattr(self, name)
            if isinstance(current, bool):
                if not isinstance(value, bool):
                    raise ValueError(f"{name} takes true or false")
            elif isinstance(current, int | float):
                if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                    raise ValueError(f"{name} takes a number >= 0")
                value = type(current)(value)
            elif not isinstance(value, str):
                raise ValueError(f"{name} takes a string")
            setattr(self, name, value)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class StoredRequest:
    id: str
    type: str
    endpoint: str | None
    records: list[dict[str, Any]]
    webhook: dict[str, Any] | None
    final_state: str
    status: str = "CREATED"
    created: str = field(default_factory=lambda: timestamp())
    modified: str = field(default_factory=lambda: timestamp())
    response: dict[str, Any] | None = None
    options: dict[str, Any] = field(default_factory=dict)  # the body's other fields (e.g. the upscaler's `mode`)

    def request_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {**self.options, "type": self.type, "records": self.records}
        if self.endpoint is not None:
            body["endpoint"] = self.endpoint
        return body

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "type": self.type,
            "created": self.created,
            "workspace": WORKSPACE,
        }

    def details(self) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "id": self.id,
            "created": self.created,
            "modified": self.modified,
            "request": self.request_body(),
            "type": self.type,
            "status": self.status,
            "workspace": WORKSPACE,
        }
        if self.status == "DONE" and self.response is not None:
            answer["response"] = self.response
        return answer


@dataclass
class PendingFault:
    status: int
    remaining: int
    retry_after: float | None


def timestamp() -> str:
    """Ximilar's timestamp shape: `2022-03-02T13:38:22.784359Z`."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_id() -> str:
    return str(uuid.uuid4())


class Store:
    """All mutable state behind one lock: requests, faults, logs, upscaled images."""

    def __init__(self, knobs: Knobs) -> None:
        self.lock = threading.RLock()
        self.initial_knobs = Knobs(**knobs.as_dict())
        self.knobs = knobs
        self.requests: dict[str, StoredRequest] = {}
        self.faults: list[PendingFault] = []
        self.calls: list[dict[str, Any]] = []
        self.webhooks: list[dict[str, Any]] = []
        self.upscaled: dict[str, tuple[bytes, str, float]] = {}  # name -> bytes, type, published (monotonic)

    def reset(self) -> None:
        with self.lock:
            self.knobs.update(self.initial_knobs.as_dict())
            self.requests.clear()
            self.faults.clear()
            self.calls.clear()
            self.webhooks.clear()
            self.upscaled.clear()

    def take_fault(self) -> PendingFault | None:
        """The fault the next API call answers with, if any (each counts down once)."""
        with self.lock:
            while self.faults and self.faults[0].remaining <= 0:
                self.faults.pop(0)
            if not self.faults:
                return None
            fault = self.faults[0]
            fault.remaining -= 1
            return fault

    def log_call(
        self, method: str, path: str, status: int, started: float, *, record_ids: list[str] | None = None
    ) -> None:
        """One API call: `started` when it arrived, `at` when it was answered (epoch seconds); an accepted
        submission also lists its records' `_id`s (how often each record reached Ximilar)."""
        call: dict[str, Any] = {"method": method, "path": path, "status": status, "started": started, "at": time.time()}
        if record_ids is not None:
            call["record_ids"] = record_ids
        with self.lock:
            self.calls.append(call)

    def log_webhook(self, request_id: str, attempt: int, outcome: str) -> None:
        with self.lock:
            self.webhooks.append({"request_id": request_id, "attempt": attempt, "outcome": outcome, "at": time.time()})
