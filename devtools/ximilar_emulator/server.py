"""The emulator's HTTP server (Flask on werkzeug) and its worker (a scheduler thread and a pool)."""

from __future__ import annotations

import heapq
import hmac
import itertools
import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlencode

import requests
from flask import Flask, Response, g, jsonify, request
from werkzeug.serving import BaseWSGIServer, make_server

from ximilar_async.values.request_types import DOCUMENTED_ENDPOINTS as DOCUMENTED
from ximilar_emulator.processing import process_record
from ximilar_emulator.state import (
    REQUEST_TYPES,
    WORKSPACE,
    Knobs,
    PendingFault,
    Store,
    StoredRequest,
    new_id,
    timestamp,
)

API_PREFIX = "/account/v2/request"
ACCOUNT_DETAILS = "/account/v2/details"
MAX_RECORDS = 10
TYPE_RECORD_LIMITS = {"upscaler": 1}
# Ximilar's documented endpoints per type: one table, shared with the client's own checks.
DOCUMENTED_ENDPOINTS: dict[str, frozenset[str]] = {kind.value: names for kind, names in DOCUMENTED.items()}


class Scheduler:
    """Runs callables at a time, on a small pool: state changes, processing and webhook deliveries."""

    def __init__(self, workers: int = 4) -> None:
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._counter = itertools.count()
        self._wakeup = threading.Condition()
        self._stopped = False
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="emulator-worker")
        self._thread = threading.Thread(target=self._run, name="emulator-scheduler", daemon=True)
        self._thread.start()

    def at(self, delay_seconds: float, action: Callable[[], None]) -> None:
        with self._wakeup:
            heapq.heappush(self._queue, (time.monotonic() + delay_seconds, next(self._counter), action))
            self._wakeup.notify()

    def clear(self) -> None:
        with self._wakeup:
            self._queue.clear()

    def stop(self) -> None:
        with self._wakeup:
            self._stopped = True
            self._wakeup.notify()
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _run(self) -> None:
        while True:
            with self._wakeup:
                while not self._stopped and (not self._queue or self._queue[0][0] > time.monotonic()):
                    timeout = self._queue[0][0] - time.monotonic() if self._queue else None
                    self._wakeup.wait(timeout)
                if self._stopped:
                    return
                _, _, action = heapq.heappop(self._queue)
            self._pool.submit(action)


class EmulatorServer:
    """The emulator: `start()` binds 127.0.0.1 (port 0 picks a free one), `stop()` ends it cleanly."""

    def __init__(
        self,
        token: str,
        knobs: Knobs | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        public_url: str | None = None,
        seed: int | None = None,
    ) -> None:
        self.token = token
        self.store = Store(knobs or Knobs())
        self.random = random.Random(seed)
        self.http = requests.Session()
        self.scheduler = Scheduler()
        self.app = create_app(self)
        self._server: BaseWSGIServer = make_server(host, port, self.app, threaded=True)
        self.port: int = self._server.server_port
        self.url = public_url.rstrip("/") if public_url else f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="emulator-http", daemon=True)

    def start(self) -> EmulatorServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=5)
        self.scheduler.stop()
        self._server.server_close()

    # --- the worker ------------------------------------------------------------------------------
    def accept(self, stored: StoredRequest) -> None:
        knobs = self.store.knobs
        self.scheduler.at(knobs.created_delay_seconds, lambda: self._start_processing(stored))

    def _start_processing(self, stored: StoredRequest) -> None:
        with self.store.lock:
            stored.status, stored.modified = "PROCESSING", timestamp()
            delay = self.store.knobs.processing_delay_seconds
        self.scheduler.at(delay, lambda: self._finish(stored))

    def _finish(self, stored: StoredRequest) -> None:
        if stored.final_state == "PROCESSING":
            return  # a request that never finishes
        if stored.final_state != "DONE":
            with self.store.lock:
                stored.status, stored.modified = stored.final_state, timestamp()
            return
        knobs = self.store.knobs
        records = [
            process_record(
                record,
                stored.type,
                stored.endpoint,
                session=self.http,
                fetch_timeout=knobs.image_fetch_timeout_seconds,
                publish=self._publish,
            )
            for record in stored.records
        ]
        with self.store.lock:
            stored.response = {"records": incomplete(records, knobs.dropped_records, knobs.renamed_records)}
            stored.status, stored.modified = "DONE", timestamp()
        if stored.webhook:
            self._schedule_webhooks(stored)

    def _publish(self, data: bytes, name: str) -> str:
        with self.store.lock:
            self.store.upscaled[name] = (data, "image/jpeg", time.monotonic())
        return f"{self.url}/_emulator/upscaled/{name}"

    def _schedule_webhooks(self, stored: StoredRequest) -> None:
        knobs = self.store.knobs
        with self.store.lock:
            if self.random.random() < knobs.webhook_drop_rate:
                self.store.log_webhook(stored.id, 0, "dropped")
                return
            copies = 2 if self.random.random() < knobs.webhook_duplicate_rate else 1
            delays = [
                knobs.webhook_delay_seconds + self.random.uniform(0, knobs.webhook_jitter_seconds)
                for _ in range(copies)
            ]
        for delay in delays:
            self.scheduler.at(delay, lambda: self._deliver(stored, 1))

    def _deliver(self, stored: StoredRequest, attempt: int) -> None:
        webhook = stored.webhook or {}
        payload = {"status": "DONE", "id": stored.id, "type": stored.type, "response": stored.response}
        headers = {str(k): str(v) for k, v in (webhook.get("headers") or {}).items()}
        headers["Content-Type"] = "application/json"
        try:
            answer = self.http.post(str(webhook["endpoint"]), data=json.dumps(payload), headers=headers, timeout=10)
            outcome = f"HTTP {answer.status_code}"
            failed = answer.status_code >= 500
        except requests.RequestException as error:
            outcome, failed = type(error).__name__, True
        self.store.log_webhook(stored.id, attempt, outcome)
        knobs = self.store.knobs
        if failed and attempt < knobs.webhook_max_attempts:
            backoff = knobs.webhook_retry_backoff_seconds * 2 ** (attempt - 1)
            self.scheduler.at(backoff, lambda: self._deliver(stored, attempt + 1))
        elif failed:
            self.store.log_webhook(stored.id, attempt, "gave up")


def incomplete(records: list[dict[str, Any]], dropped: int, renamed: int) -> list[dict[str, Any]]:
    """An answer as a misbehaving service might give it: the last `dropped` records left out, then the
    last `renamed` of the rest under an `_id` that was never sent."""
    kept = records[: max(0, len(records) - dropped)]
    first_renamed = max(0, len(kept) - renamed)
    return [
        {**record, "_id": f"{record['_id']}-renamed"} if index >= first_renamed else record
        for index, record in enumerate(kept)
    ]


def _error(status: int, body: Any, retry_after: float | None = None) -> Response:
    response = jsonify(body)
    response.status_code = status
    if retry_after is not None:
        response.headers["Retry-After"] = str(int(retry_after) if float(retry_after).is_integer() else retry_after)
    return response


def _validate_submission(body: Any, enforce_type_limits: bool) -> dict[str, list[str]]:
    """DRF-style field errors; empty when the submission is valid."""
    if not isinstance(body, dict):
        return {"non_field_errors": ["Invalid data. Expected a dictionary."]}
    errors: dict[str, list[str]] = {}
    request_type = body.get("type")
    if request_type not in REQUEST_TYPES:
        errors["type"] = [f'"{request_type}" is not a valid choice.' if request_type else "This field is required."]
    endpoint = body.get("endpoint")
    if endpoint is not None and not isinstance(endpoint, str):
        errors["endpoint"] = ["Not a valid string."]
    elif (
        isinstance(request_type, str)
        and endpoint
        and endpoint not in DOCUMENTED_ENDPOINTS.get(request_type, {endpoint})
    ):
        errors["endpoint"] = [f'"{endpoint}" is not a valid endpoint for {request_type}.']
    records = body.get("records")
    if not isinstance(records, list) or not records:
        errors["records"] = ["This field is required and must be a non-empty list."]
    else:
        limit = MAX_RECORDS
        if enforce_type_limits and isinstance(request_type, str):
            limit = TYPE_RECORD_LIMITS.get(request_type, MAX_RECORDS)
        if len(records) > limit:
            errors["records"] = [f"Ensure this field has no more than {limit} elements."]
        for index, record in enumerate(records):
            if not isinstance(record, dict):
                errors.setdefault("records", []).append(f"Record {index} is not an object.")
                continue
            sources = [name for name in ("_url", "_base64") if isinstance(record.get(name), str) and record[name]]
            if len(sources) != 1:
                errors.setdefault("records", []).append(f"Record {index} must contain exactly one of _url or _base64.")
    webhook = body.get("webhook")
    if webhook is not None:
        if not isinstance(webhook, dict) or not isinstance(webhook.get("endpoint"), str):
            errors["webhook"] = ["Webhook must be an object with an endpoint."]
        elif not webhook["endpoint"].startswith(("http://", "https://")):
            errors["webhook"] = ["Webhook endpoint must be an http(s) URL."]
        elif "headers" in webhook and not isinstance(webhook["headers"], dict):
            errors["webhook"] = ["Webhook headers must be an object."]
    return errors


def create_app(emulator: EmulatorServer) -> Flask:
    app = Flask("ximilar_emulator")
    app.json.sort_keys = False  # type: ignore[attr-defined]
    store = emulator.store

    def authorized() -> Response | None:
        header = request.headers.get("Authorization", "")
        scheme, _, credential = header.partition(" ")
        if not header:
            return _error(401, {"detail": "Authentication credentials were not provided."})
        if scheme not in ("Token", "JWT") or not hmac.compare_digest(credential.encode(), emulator.token.encode()):
            return _error(401, {"detail": "Invalid token."})
        return None

    @app.before_request
    def gate() -> Response | None:
        if not request.path.startswith((API_PREFIX, ACCOUNT_DETAILS)):
            return None
        g.started = time.time()
        delay = store.knobs.response_delay_seconds
        if delay:
            time.sleep(delay)  # the knob *is* a slow server
        fault = store.take_fault()
        if fault is not None:
            return _error(fault.status, {"detail": f"Emulated fault {fault.status}."}, fault.retry_after)
        return authorized()

    @app.after_request
    def log(response: Response) -> Response:
        if request.path.startswith((API_PREFIX, ACCOUNT_DETAILS)):
            store.log_call(
                request.method,
                request.path,
                response.status_code,
                g.get("started", time.time()),
                record_ids=g.get("record_ids"),
            )
        return response

    @app.post(API_PREFIX)
    @app.post(f"{API_PREFIX}/")
    def submit() -> Response:
        body = request.get_json(silent=True)
        if body is None:
            return _error(400, {"detail": "JSON parse error - request body is not valid JSON."})
        errors = _validate_submission(body, store.knobs.enforce_type_limits)
        if errors:
            return _error(400, errors)
        records = [dict(record, _id=record.get("_id") or new_id()) for record in body["records"]]
        endpoint = body.get("endpoint") or None
        options = {
            name: value for name, value in body.items() if name not in ("type", "endpoint", "records", "webhook")
        }
        with store.lock:
            stored = StoredRequest(
                options=options,
                id=new_id(),
                type=body["type"],
                endpoint=endpoint,
                records=records,
                webhook=body.get("webhook"),
                final_state=store.knobs.final_state,
            )
            store.requests[stored.id] = stored
            store.knobs.credits_counter += store.knobs.credits_per_record * len(records)
        emulator.accept(stored)
        g.record_ids = [str(record["_id"]) for record in records]  # what reached Ximilar, for the call log
        answer = {
            "id": stored.id,
            "request": {**options, "type": stored.type, "endpoint": endpoint, "records": body["records"]},
            "type": stored.type,
            "status": stored.status,
            "created": stored.created,
            "workspace": stored.summary()["workspace"],
        }
        if endpoint is None:
            del answer["request"]["endpoint"]
        response = jsonify(answer)
        response.status_code = 201
        return response

    def find(request_id: str) -> StoredRequest | None:
        with store.lock:
            return store.requests.get(request_id)

    @app.get(ACCOUNT_DETAILS)
    @app.get(f"{ACCOUNT_DETAILS}/")
    def account_details() -> Response:
        """The user's account, as far as the pipeline reads it: credits used and the limit."""
        with store.lock:
            knobs = store.knobs
            return jsonify(
                {
                    "email": "emulator@example.com",
                    "credits_counter": knobs.credits_counter,
                    "credits_limit": knobs.credits_limit,
                    "workspaces": [{"id": WORKSPACE, "name": "Default"}],
                }
            )

    @app.get(f"{API_PREFIX}/<request_id>")
    @app.get(f"{API_PREFIX}/<request_id>/")
    def details(request_id: str) -> Response:
        stored = find(request_id)
        if stored is None:
            return _error(404, {"detail": "Not found."})
        with store.lock:
            return jsonify(stored.details())

    @app.get(f"{API_PREFIX}/<request_id>/status")
    @app.get(f"{API_PREFIX}/<request_id>/status/")
    def status(request_id: str) -> Response:
        stored = find(request_id)
        if stored is None:
            return _error(404, {"detail": "Not found."})
        return jsonify({"status": stored.status})

    @app.get(API_PREFIX)
    @app.get(f"{API_PREFIX}/")
    def list_requests() -> Response:
        filters = {name: request.args[name] for name in ("status", "type") if request.args.get(name)}
        page_size = request.args.get("page_size", type=int) or store.knobs.page_size
        page = request.args.get("page", default=1, type=int) or 1
        with store.lock:
            matching = [
                stored.summary()
                for stored in sorted(store.requests.values(), key=lambda r: r.created, reverse=True)
                if all(getattr(stored, name) == value for name, value in filters.items())
            ]
        pages = max(1, -(-len(matching) // page_size))
        if page < 1 or page > pages:
            return _error(404, {"detail": "Invalid page."})

        def page_url(number: int) -> str | None:
            if number < 1 or number > pages:
                return None
            query = {**filters, "page": number}
            if "page_size" in request.args:
                query["page_size"] = page_size
            return f"{emulator.url}{request.path}?{urlencode(query)}"

        return jsonify(
            {
                "count": len(matching),
                "next": page_url(page + 1),
                "previous": page_url(page - 1),
                "results": matching[(page - 1) * page_size : page * page_size],
            }
        )

    # --- control endpoints (no token: the emulator binds 127.0.0.1) --------------------------------
    @app.get("/_emulator/knobs")
    def get_knobs() -> Response:
        with store.lock:
            return jsonify(store.knobs.as_dict())

    @app.patch("/_emulator/knobs")
    def set_knobs() -> Response:
        changes = request.get_json(silent=True)
        if not isinstance(changes, dict):
            return _error(400, {"detail": "expected a JSON object of knobs"})
        try:
            with store.lock:
                store.knobs.update(changes)
        except ValueError as error:
            return _error(400, {"detail": str(error)})
        return get_knobs()

    @app.post("/_emulator/faults")
    def add_fault() -> Response:
        body = request.get_json(silent=True) or {}
        status_code, count = body.get("status"), body.get("count", 1)
        if not isinstance(status_code, int) or not 400 <= status_code <= 599 or not isinstance(count, int):
            return _error(400, {"detail": "expected {status: 4xx|5xx, count: n, retry_after?: seconds}"})
        with store.lock:
            store.faults.append(PendingFault(status_code, count, body.get("retry_after")))
        return jsonify({"queued": count})

    @app.delete("/_emulator/faults")
    def clear_faults() -> Response:
        """The storm is over: no more queued faults (requests and logs are kept)."""
        with store.lock:
            store.faults.clear()
        return jsonify({"queued": 0})

    @app.get("/_emulator/calls")
    def calls() -> Response:
        with store.lock:
            return jsonify(list(store.calls))

    @app.get("/_emulator/webhooks")
    def webhooks() -> Response:
        with store.lock:
            return jsonify(list(store.webhooks))

    @app.post("/_emulator/reset")
    def reset() -> Response:
        emulator.scheduler.clear()
        store.reset()
        return jsonify({"reset": True})

    @app.get("/_emulator/upscaled/<name>")
    def upscaled(name: str) -> Response:
        with store.lock:
            found = store.upscaled.get(name)
            ttl = store.knobs.artifact_ttl_seconds
        if found is None:
            return _error(404, {"detail": "Not found."})
        data, mimetype, published = found
        if ttl and time.monotonic() - published > ttl:
            return _error(410, {"detail": "Expired."})  # as a hosted file past its lifetime
        return Response(data, mimetype=mimetype)

    @app.get("/_emulator/blob/<int:megabytes>.jpg")
    def blob(megabytes: int) -> Response:
        """An N-MB artifact, streamed in 1 MB chunks: never built in memory (for copies of huge upscales)."""
        chunk = bytes(range(256)) * 4096

        def stream() -> Iterator[bytes]:
            for _ in range(megabytes):
                yield chunk

        response = Response(stream(), mimetype="image/jpeg")
        response.headers["Content-Length"] = str(megabytes * len(chunk))
        return response

    return app
