"""DynamoDB as it fails in production, on this machine: an HTTP proxy in front of moto that injects faults.

Real DynamoDB sometimes applies a write and answers 500 InternalServerError ("the request may or may not
have succeeded"), or the connection drops after the write applied; it throttles; its global secondary
indexes lag the table with no bound; an eventually consistent read may return an older version. moto does
none of this, so code that must survive it (a retried conditional write meeting its own applied write, a
query that misses a fresh item) is never exercised locally. `dynamodb_fault_proxy` starts a proxy on
127.0.0.1 that forwards every request unchanged to a DynamoDB endpoint (moto server, DynamoDB Local) and
injects, as `DynamoFaults` says:

- throttling: a share of calls answered 400 ProvisionedThroughputExceededException (ThrottlingException
  for a quarter of them) without reaching upstream;
- applied then 500: a share of writes forwarded (so applied, if upstream accepts them), then answered 500
  InternalServerError instead of upstream's answer;
- dropped after write: a share of writes forwarded, then the connection closed with no answer, which is
  what a client's timeout looks like;
- index lag: a Query or Scan of a secondary index leaves out the items written less than
  `index_lag_seconds` ago (whole items: the index shows neither the new version nor the old one);
- stale reads: an eventually consistent GetItem or BatchGetItem of an item written less than
  `consistency_lag_seconds` ago answers the item as it was before the earliest of those writes.

`DynamoFaultProxy.fail_next_write` fails the next matching write(s) so, for tests that need one particular
write to fail: by default once, so that the client's retry goes through and meets the write its first
attempt applied.

Limits, on purpose: a projection (ProjectionExpression, AttributesToGet) is applied to an earlier item by
top-level attribute only (a nested path gets the whole top-level attribute); the state before a write is
read just before forwarding it, so concurrent writes of one key may remember a state one write too old;
items whose answer lacks the table's key attributes are left as they are.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import socket
import socketserver
import threading
import time
import uuid
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final, Literal, get_args

import urllib3

logger = logging.getLogger("xasync.dynamodb_faults")

TARGET_PREFIX: Final = "DynamoDB_20120810."
WRITE_OPERATIONS: Final = frozenset({"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"})
JSON_CONTENT_TYPE: Final = "application/x-amz-json-1.0"
ERROR_TYPE_PREFIX: Final = "com.amazonaws.dynamodb.v20120810#"
# Of the throttled calls, the share answered ThrottlingException (DynamoDB's answer to a request rate over
# an account's or an on-demand table's limits) rather than ProvisionedThroughputExceededException.
THROTTLING_EXCEPTION_SHARE: Final = 0.25
# Enough connections to upstream for ~50 clients at once (the submit and sweeper pools, the pollers).
UPSTREAM_CONNECTIONS: Final = 64
UPSTREAM_TIMEOUT: Final = urllib3.Timeout(connect=5.0, read=60.0)

FaultKind = Literal["applied-then-500", "dropped-after-write"]

# What `DynamoFaultProxy.counts` counts, by kind.
THROTTLED: Final = "throttled"
APPLIED_THEN_500: Final = "applied then 500"
DROPPED_AFTER_WRITE: Final = "dropped after write"
HIDDEN_BY_INDEX_LAG: Final = "hidden by index lag"
STALE_READ: Final = "stale read"
_COUNTED: Final[dict[FaultKind, str]] = {
    "applied-then-500": APPLIED_THEN_500,
    "dropped-after-write": DROPPED_AFTER_WRITE,
}

# The names of `DynamoFaults.parse`, for its fields.
_SPEC_NAMES: Final = {
    "throttle": "throttle_rate",
    "applied-500": "applied_then_500_rate",
    "dropped": "dropped_after_write_rate",
    "index-lag": "index_lag_seconds",
    "index-lag-rate": "index_lag_rate",
    "consistency-lag": "consistency_lag_seconds",
    "seed": "seed",
}
# Headers of one connection, not of the message: each side of the proxy has its own connection. Host names
# the proxy; the upstream's is set by the client that sends there (moto checks no signature).
_NOT_FORWARDED: Final = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "host"}
    | {"content-length"}
)
# The answer's body is passed back decoded (urllib3 decodes it) with a length of its own.
_NOT_PASSED_BACK: Final = _NOT_FORWARDED | {"content-encoding"}

Item = dict[str, Any]  # DynamoDB JSON: attribute name -> {"S": ...}
KeyId = tuple[str, str]  # (table, the key's attributes as canonical JSON)
Headers = list[tuple[str, str]]


@dataclass(frozen=True)
class DynamoFaults:
    """Which faults the proxy injects, and how often; all off by default.

    `DynamoFaults.parse("throttle=0.1,applied-500=0.05,dropped=0.02,index-lag=30,consistency-lag=2,seed=3")`
    reads the CLI's form; `spec()` writes it.
    """

    throttle_rate: float = 0.0  # share of calls answered 400 throttling, never reaching upstream
    applied_then_500_rate: float = 0.0  # share of writes forwarded, then answered 500 InternalServerError
    dropped_after_write_rate: float = 0.0  # share of writes forwarded, then the connection closed unanswered
    index_lag_seconds: float = 0.0  # a secondary index query does not see an item written less long ago
    index_lag_rate: float = 1.0  # share of writes whose index update lags (each write decided once)
    consistency_lag_seconds: float = 0.0  # an eventually consistent read answers the item before such writes
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("throttle_rate", "applied_then_500_rate", "dropped_after_write_rate", "index_lag_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, not {value}")
        if self.applied_then_500_rate + self.dropped_after_write_rate > 1.0:
            raise ValueError("applied_then_500_rate and dropped_after_write_rate add up to more than 1")
        for name in ("index_lag_seconds", "consistency_lag_seconds"):
            value = getattr(self, name)
            if not (value >= 0.0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number of seconds, not {value}")

    @classmethod
    def parse(cls, spec: str) -> DynamoFaults:
        """Faults from `name=value,...` (names: throttle, applied-500, dropped, index-lag, index-lag-rate,
        consistency-lag, seed); an empty spec is no fault."""
        known = ", ".join(_SPEC_NAMES)
        values: dict[str, Any] = {}
        for part in (part.strip() for part in spec.split(",")):
            if not part:
                continue
            name, equals, text = (piece.strip() for piece in part.partition("="))
            field_name = _SPEC_NAMES.get(name)
            if not equals:
                raise ValueError(f"{part!r} is not name=value (names: {known})")
            if field_name is None:
                raise ValueError(f"unknown DynamoDB fault {name!r} (known: {known})")
            if field_name in values:
                raise ValueError(f"{name} is given twice")
            try:
                values[field_name] = int(text) if field_name == "seed" else float(text)
            except ValueError:
                raise ValueError(f"{name}={text!r}: not a {'whole ' if field_name == 'seed' else ''}number") from None
        return cls(**values)

    def spec(self) -> str:
        """The form `parse` reads, defaults left out: `DynamoFaults.parse(faults.spec()) == faults`."""
        defaults = {field.name: field.default for field in fields(self)}
        return ",".join(
            f"{name}={getattr(self, field_name)!r}"
            for name, field_name in _SPEC_NAMES.items()
            if getattr(self, field_name) != defaults[field_name]
        )

    @property
    def tracks_writes(self) -> bool:
        """Whether the proxy must remember which keys were written when (a lag is set)."""
        return self.index_lag_seconds > 0 or self.consistency_lag_seconds > 0


@dataclass(frozen=True)
class Answer:
    """An HTTP answer to pass back to the client."""

    status: int
    headers: Headers
    body: bytes

    def document(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def with_document(self, document: Any) -> Answer:
        """This answer with another JSON body, and the checksum botocore verifies made for it."""
        body = json.dumps(document, separators=(",", ":")).encode()
        headers = [(name, value) for name, value in self.headers if name.lower() != "x-amz-crc32"]
        return Answer(self.status, [*headers, ("x-amz-crc32", str(zlib.crc32(body)))], body)


def dynamodb_error(status: int, error: str, message: str) -> Answer:
    """An error answer as DynamoDB writes it (botocore reads the code after the `#` of `__type`)."""
    body = json.dumps({"__type": ERROR_TYPE_PREFIX + error, "message": message}).encode()
    headers = [
        ("Content-Type", JSON_CONTENT_TYPE),
        ("x-amzn-RequestId", uuid.uuid4().hex.upper()),
        ("x-amz-crc32", str(zlib.crc32(body))),
    ]
    return Answer(status, headers, body)


@dataclass(frozen=True)
class Written:
    """A key written: the table, the key's attributes, and its identity."""

    table: str
    key: Item

    @property
    def id(self) -> KeyId:
        return self.table, canonical(self.key)


@dataclass(frozen=True)
class Earlier:
    """An item as it was before a write: None when it did not exist."""

    item: Item | None


@dataclass
class TargetedFault:
    """A `fail_next_write` order: the next `remaining` writes that match fail as `kind`."""

    kind: FaultKind
    operation: str | None
    table: str | None
    matches: Callable[[dict[str, Any]], bool] | None
    remaining: int

    def applies_to(self, operation: str, tables: set[str], request: dict[str, Any]) -> bool:
        return (
            self.operation in (None, operation)
            and (self.table is None or self.table in tables)
            and (self.matches is None or self.matches(request))
        )


class IndexLag:
    """The keys whose last write has not reached the indexes yet: written less than `lag` ago, chosen to lag.

    Pruned by age as time goes; the caller holds the proxy's lock.
    """

    def __init__(self, lag: float) -> None:
        self.lag = lag
        self._written_at: dict[KeyId, float] = {}
        self._order: deque[tuple[float, KeyId]] = deque()

    def written(self, key: KeyId, at: float, *, lagging: bool) -> None:
        self._prune(at)
        if lagging:
            self._written_at[key] = at
            self._order.append((at, key))
        else:
            # The indexes have this write, so they have the earlier ones too.
            self._written_at.pop(key, None)

    def hides(self, key: KeyId | None, now: float) -> bool:
        self._prune(now)
        return key is not None and key in self._written_at

    def _prune(self, now: float) -> None:
        while self._order and now - self._order[0][0] >= self.lag:
            at, key = self._order.popleft()
            if self._written_at.get(key) == at:  # not written again since
                del self._written_at[key]


class EarlierStates:
    """For each key written less than `lag` ago, its item before each of those writes, oldest first.

    Pruned by age as time goes; the caller holds the proxy's lock.
    """

    def __init__(self, lag: float) -> None:
        self.lag = lag
        self._states: dict[KeyId, deque[tuple[float, Earlier]]] = {}
        self._order: deque[tuple[float, KeyId]] = deque()

    def written(self, key: KeyId, at: float, before: Earlier) -> None:
        self._prune(at)
        self._states.setdefault(key, deque()).append((at, before))
        self._order.append((at, key))

    def before(self, key: KeyId, now: float) -> Earlier | None:
        """The item before the earliest write still within the lag; None when no write is."""
        self._prune(now)
        states = self._states.get(key)
        return states[0][1] if states else None

    def _prune(self, now: float) -> None:
        while self._order and now - self._order[0][0] >= self.lag:
            _, key = self._order.popleft()
            states = self._states.get(key)
            if states:
                states.popleft()  # the oldest of the key's is the oldest of all, both kept in time order
                if not states:
                    del self._states[key]


class DynamoFaultProxy:
    """The proxy: `url` to point DynamoDB clients at, `counts` of the faults injected so far by kind,
    `operations` of the calls received by DynamoDB operation, and `fail_next_write` for one-shot faults.

    Start it with `dynamodb_fault_proxy`. `clock` times the lags (tests move a fake one instead of waiting).
    """

    def __init__(self, upstream: str, faults: DynamoFaults, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.upstream = upstream.rstrip("/")
        self.faults = faults
        self._clock = clock
        # One lock for everything shared between the request threads, the dice included.
        self._lock = threading.Lock()
        self._random = random.Random(faults.seed)
        self._counts: Counter[str] = Counter()
        self._operations: Counter[str] = Counter()
        self._targeted: list[TargetedFault] = []
        self._key_names: dict[str, tuple[str, ...]] = {}
        self._index_lag = IndexLag(faults.index_lag_seconds)
        self._earlier = EarlierStates(faults.consistency_lag_seconds)
        self._pool = urllib3.PoolManager(num_pools=4, maxsize=UPSTREAM_CONNECTIONS, block=False)
        self._server = ProxyServer(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="dynamodb-fault-proxy", daemon=True
        )
        self.url = f"http://127.0.0.1:{self._server.server_port}"

    @property
    def counts(self) -> Counter[str]:
        """The faults injected so far, by kind ("throttled", "applied then 500", ...): a copy."""
        with self._lock:
            return Counter(self._counts)

    @property
    def operations(self) -> Counter[str]:
        """The DynamoDB calls received so far, faulted or not, by operation ("PutItem", ...): a copy."""
        with self._lock:
            return Counter(self._operations)

    def fail_next_write(
        self,
        kind: FaultKind,
        *,
        operation: str | None = None,
        table: str | None = None,
        matches: Callable[[dict[str, Any]], bool] | None = None,
        times: int = 1,
    ) -> None:
        """The next `times` writes that match are forwarded, then answered with `kind` instead of upstream's answer.

        A write matches when it is `operation` ("UpdateItem"), writes to `table` (any of a batch's or a
        transaction's tables), and `matches` its JSON body; each left None matches any. `matches` runs under
        the proxy's lock: keep it quick. Orders are tried in the order given, before the random faults, and
        used up whatever upstream answers (a write it refused, a failed condition, gets the fault too: the
        client cannot tell either way).
        """
        if kind not in get_args(FaultKind):
            raise ValueError(f"unknown fault {kind!r} (known: {', '.join(get_args(FaultKind))})")
        if operation is not None and operation not in WRITE_OPERATIONS:
            raise ValueError(f"{operation!r} is not a write (writes: {', '.join(sorted(WRITE_OPERATIONS))})")
        if times < 1:
            raise ValueError(f"times must be at least 1, not {times}")
        with self._lock:
            self._targeted.append(TargetedFault(kind, operation, table, matches, times))

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop serving, close the clients' open connections (so none is served after), free the pool."""
        started = self._thread.ident is not None
        if started:  # else shutdown() would wait for a serve_forever that never ran
            self._server.shutdown()
        self._server.close_connections()
        self._server.server_close()
        if started:
            self._thread.join(timeout=10)
        self._pool.clear()

    # --- one request -------------------------------------------------------------------------------------

    def answer(self, method: str, path: str, headers: Headers, body: bytes) -> Answer | None:
        """What to answer a request (None: close the connection without an answer)."""
        target = header(headers, "X-Amz-Target") or ""
        request = json_object(body) if target.startswith(TARGET_PREFIX) and method == "POST" else None
        if request is None:
            return self.forward(method, path, headers, body)
        operation = target.removeprefix(TARGET_PREFIX)
        with self._lock:
            self._operations[operation] += 1
            throttling = self._throttling()
        if throttling is not None:
            return throttling
        if operation in WRITE_OPERATIONS:
            return self._write(operation, request, method, path, headers, body)
        answer = self.forward(method, path, headers, body)
        if answer is None or answer.status != 200:
            return answer
        if operation in ("CreateTable", "DeleteTable"):
            with self._lock:
                self._key_names.pop(str(request.get("TableName")), None)
        elif operation in ("Query", "Scan") and "IndexName" in request:
            return self._without_lagging(request, answer, headers)
        elif operation == "GetItem":
            return self._as_before_get(request, answer)
        elif operation == "BatchGetItem":
            return self._as_before_batch_get(request, answer)
        return answer

    def forward(self, method: str, path: str, headers: Headers, body: bytes) -> Answer | None:
        """Upstream's answer to the request as it came (None when upstream could not be reached)."""
        try:
            response = self._pool.request(
                method,
                self.upstream + path,
                body=body,
                headers={name: value for name, value in headers if name.lower() not in _NOT_FORWARDED},
                redirect=False,
                retries=False,  # a write sent twice is a fault this proxy injects on purpose only
                timeout=UPSTREAM_TIMEOUT,
                preload_content=True,
                decode_content=True,
            )
        except urllib3.exceptions.HTTPError as error:
            # Closing the client's connection is what an unreachable DynamoDB looks like; no fault counted.
            logger.warning("DynamoDB fault proxy: %s %s%s failed: %s", method, self.upstream, path, error)
            return None
        return Answer(response.status, list(response.headers.items()), response.data)

    def _chance(self, rate: float) -> bool:
        # No draw for a rate of 0, so that turning a fault on leaves the others' dice as they were.
        return rate > 0 and self._random.random() < rate

    def _throttling(self) -> Answer | None:
        """A throttling error for a share of calls, None for the others (the caller holds the lock)."""
        if not self._chance(self.faults.throttle_rate):
            return None
        self._counts[THROTTLED] += 1
        if self._chance(THROTTLING_EXCEPTION_SHARE):
            return dynamodb_error(400, "ThrottlingException", "Rate of requests exceeds the allowed throughput.")
        return dynamodb_error(
            400,
            "ProvisionedThroughputExceededException",
            "The level of configured provisioned throughput for the table was exceeded. "
            "Consider increasing your provisioning level with the UpdateTable API.",
        )

    def _write(
        self, operation: str, request: dict[str, Any], method: str, path: str, headers: Headers, body: bytes
    ) -> Answer | None:
        writes = named_writes(operation, request)
        fault = self._write_fault(operation, request, {table for table, _ in writes})
        keys = [key for key in (self._key_of(table, named, headers) for table, named in writes) if key is not None]
        earlier: list[tuple[Written, Earlier]] = []
        if self.faults.consistency_lag_seconds > 0:
            for key in keys:
                before = self._current(key, headers)
                if before is not None:
                    earlier.append((key, before))
        answer = self.forward(method, path, headers, body)
        if answer is None:
            return None
        if answer.status == 200 and self.faults.tracks_writes:
            self._remember(keys, earlier)
        if fault is None:
            return answer
        with self._lock:
            self._counts[_COUNTED[fault]] += 1
        if fault == "dropped-after-write":
            return None
        return dynamodb_error(500, "InternalServerError", "Internal server error")

    def _write_fault(self, operation: str, request: dict[str, Any], tables: set[str]) -> FaultKind | None:
        with self._lock:
            for order in self._targeted:
                if order.applies_to(operation, tables, request):
                    order.remaining -= 1
                    if not order.remaining:
                        self._targeted.remove(order)
                    return order.kind
            applied_then_500, dropped = self.faults.applied_then_500_rate, self.faults.dropped_after_write_rate
            # One draw for both (no draw when both are off, as in `_chance`).
            draw = self._random.random() if applied_then_500 + dropped > 0 else 1.0
        if draw < applied_then_500:
            return "applied-then-500"
        if draw < applied_then_500 + dropped:
            return "dropped-after-write"
        return None

    def _remember(self, keys: list[Written], earlier: list[tuple[Written, Earlier]]) -> None:
        with self._lock:
            now = self._clock()
            if self.faults.index_lag_seconds > 0:
                lagging = self._chance(self.faults.index_lag_rate)
                for key in keys:
                    self._index_lag.written(key.id, now, lagging=lagging)
            for key, before in earlier:
                self._earlier.written(key.id, now, before)

    def _key_of(self, table: str, named: Item, headers: Headers) -> Written | None:
        """The key a write names, by the table's key attributes alone (a PutItem names the whole item)."""
        if not self.faults.tracks_writes:
            return None
        names = self._table_key_names(table, headers)
        if names is None or any(name not in named for name in names):
            return None
        return Written(table, {name: named[name] for name in names})

    def _table_key_names(self, table: str, headers: Headers) -> tuple[str, ...] | None:
        """The table's key attribute names, asked of upstream once per table."""
        with self._lock:
            names = self._key_names.get(table)
        if names is None:
            described = self._call(headers, "DescribeTable", {"TableName": table})
            if described is None:
                return None
            names = tuple(str(element["AttributeName"]) for element in described["Table"]["KeySchema"])
            with self._lock:
                self._key_names[table] = names
        return names

    def _current(self, key: Written, headers: Headers) -> Earlier | None:
        """The item as upstream has it now (None when it could not be read)."""
        found = self._call(headers, "GetItem", {"TableName": key.table, "Key": key.key, "ConsistentRead": True})
        return None if found is None else Earlier(found.get("Item"))

    def _call(self, like: Headers, operation: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        """A call of the proxy's own to upstream, with the headers of the client's request it serves (DynamoDB
        Local keeps a database per access key; moto checks no signature)."""
        headers = [(name, value) for name, value in like if name.lower() != "x-amz-target"]
        headers.append(("X-Amz-Target", TARGET_PREFIX + operation))
        answer = self.forward("POST", "/", headers, json.dumps(payload).encode())
        if answer is None or answer.status != 200:
            # The client's own request meets the same refusal (a missing table) or failure: left to it.
            logger.debug("DynamoDB fault proxy: its own %s %s was refused", operation, payload)
            return None
        document = answer.document()
        return document if isinstance(document, dict) else None

    # --- reads answered as a lagging DynamoDB would --------------------------------------------------------

    def _without_lagging(self, request: dict[str, Any], answer: Answer, headers: Headers) -> Answer:
        if self.faults.index_lag_seconds <= 0:
            return answer
        document = answer.document()
        items = document.get("Items") if isinstance(document, dict) else None
        if not items:  # none, or a Select=COUNT answer: nothing to leave out
            return answer
        table = str(request.get("TableName"))
        names = self._table_key_names(table, headers)
        if names is None:
            return answer
        with self._lock:
            now = self._clock()
            shown = [item for item in items if not self._index_lag.hides(item_key(table, item, names), now)]
            hidden = len(items) - len(shown)
            self._counts[HIDDEN_BY_INDEX_LAG] += hidden
        if not hidden:
            return answer
        document["Items"] = shown
        document["Count"] = len(shown)
        if "ScannedCount" in document:
            document["ScannedCount"] = max(len(shown), int(document["ScannedCount"]) - hidden)
        return answer.with_document(document)

    def _earlier_item(self, table: str, key: Item, request: Mapping[str, Any]) -> Earlier | None:
        """The item of `key` an eventually consistent read answers now, projected as `request` asks; None when
        the read must see what upstream answers."""
        if self.faults.consistency_lag_seconds <= 0 or request.get("ConsistentRead") is True:
            return None
        with self._lock:
            before = self._earlier.before((table, canonical(key)), self._clock())
        if before is None or before.item is None:
            return before
        return Earlier(projected(before.item, request))

    def _as_before_get(self, request: dict[str, Any], answer: Answer) -> Answer:
        key = request.get("Key")
        if not isinstance(key, dict):
            return answer
        earlier = self._earlier_item(str(request.get("TableName")), key, request)
        document = answer.document()
        if earlier is None or not isinstance(document, dict) or document.get("Item") == earlier.item:
            return answer
        if earlier.item is None:
            document.pop("Item", None)
        else:
            document["Item"] = earlier.item
        with self._lock:
            self._counts[STALE_READ] += 1
        return answer.with_document(document)

    def _as_before_batch_get(self, request: dict[str, Any], answer: Answer) -> Answer:
        document = answer.document()
        if self.faults.consistency_lag_seconds <= 0 or not isinstance(document, dict):
            return answer
        responses: dict[str, list[Item]] = document.setdefault("Responses", {})
        unprocessed = document.get("UnprocessedKeys") or {}
        stale = 0
        for table, wanted in (request.get("RequestItems") or {}).items():
            keys: list[Item] = wanted.get("Keys") or []
            if not keys or not covers_keys(wanted, keys[0]):
                continue  # answered items without their key cannot be told apart
            skipped = {canonical(key) for key in unprocessed.get(table, {}).get("Keys", [])}
            items = list(responses.get(table, []))
            for key in keys:
                if canonical(key) in skipped:
                    continue
                earlier = self._earlier_item(table, key, wanted)
                if earlier is None:
                    continue
                names = tuple(key)
                current = [item for item in items if item_key(table, item, names) == (table, canonical(key))]
                if current == ([] if earlier.item is None else [earlier.item]):
                    continue
                items = [item for item in items if item_key(table, item, names) != (table, canonical(key))]
                if earlier.item is not None:
                    items.append(earlier.item)
                stale += 1
            responses[table] = items
        if not stale:
            return answer
        with self._lock:
            self._counts[STALE_READ] += stale
        return answer.with_document(document)


class ProxyHandler(BaseHTTPRequestHandler):
    """One client connection: each request answered by the proxy (HTTP/1.1, kept alive as botocore wants)."""

    protocol_version = "HTTP/1.1"
    server: ProxyServer

    def do_POST(self) -> None:
        self._relay()

    def do_GET(self) -> None:
        self._relay()

    def _relay(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        answer = self.server.proxy.answer(self.command, self.path, list(self.headers.items()), body)
        if answer is None:
            # Nothing written: the client reads the connection's end where it waits for an answer.
            self.close_connection = True
            return
        self.send_response_only(answer.status)
        for name, value in answer.headers:
            if name.lower() not in _NOT_PASSED_BACK:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        self.wfile.write(answer.body)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("DynamoDB fault proxy: " + format, *args)


class ProxyServer(ThreadingHTTPServer):
    """The proxy's HTTP server on a free port of 127.0.0.1; it knows its open connections, to close them."""

    daemon_threads = True

    def __init__(self, proxy: DynamoFaultProxy) -> None:
        self.proxy = proxy
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        self._closing = False
        super().__init__(("127.0.0.1", 0), ProxyHandler)

    def server_bind(self) -> None:
        # HTTPServer's own asks DNS for the host's name, which can take seconds on some machines.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "127.0.0.1", int(self.socket.getsockname()[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """End the kept-alive connections, whose threads would otherwise serve them after the proxy stopped."""
        self._closing = True
        with self._open_lock:
            connections = list(self._open)
        for connection in connections:
            with suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not self._closing:
            logger.exception("DynamoDB fault proxy: failed to answer %s", client_address)


@contextmanager
def dynamodb_fault_proxy(
    upstream: str, faults: DynamoFaults, *, clock: Callable[[], float] = time.monotonic
) -> Iterator[DynamoFaultProxy]:
    """A fault-injecting proxy to `upstream` (a DynamoDB endpoint URL) serving in this process until the exit."""
    proxy = DynamoFaultProxy(upstream, faults, clock=clock)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.close()


# --- DynamoDB JSON ----------------------------------------------------------------------------------------


def header(headers: Headers, name: str) -> str | None:
    wanted = name.lower()
    return next((value for key, value in headers if key.lower() == wanted), None)


def json_object(body: bytes) -> dict[str, Any] | None:
    try:
        document = json.loads(body or b"{}")
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def canonical(key: Mapping[str, Any]) -> str:
    return json.dumps(key, sort_keys=True, separators=(",", ":"))


def item_key(table: str, item: Mapping[str, Any], names: tuple[str, ...]) -> KeyId | None:
    """The identity of an item's key (None when the item lacks a key attribute, as a projection may leave it)."""
    if any(name not in item for name in names):
        return None
    return table, canonical({name: item[name] for name in names})


def named_writes(operation: str, request: dict[str, Any]) -> list[tuple[str, Item]]:
    """(table, key or whole item) for each item a write writes: PutItem and BatchWriteItem's PutRequest name
    the whole item, the others the key."""
    try:
        if operation == "PutItem":
            return [(request["TableName"], request["Item"])]
        if operation in ("UpdateItem", "DeleteItem"):
            return [(request["TableName"], request["Key"])]
        if operation == "BatchWriteItem":
            return [
                (table, entry["PutRequest"]["Item"] if "PutRequest" in entry else entry["DeleteRequest"]["Key"])
                for table, entries in request["RequestItems"].items()
                for entry in entries
            ]
        if operation == "TransactWriteItems":
            return [
                (action["TableName"], action.get("Item") or action["Key"])
                for entry in request["TransactItems"]
                for kind, action in entry.items()
                if kind in ("Put", "Update", "Delete")
            ]
    except (KeyError, TypeError, AttributeError):
        pass  # a malformed write is upstream's to refuse
    return []


_PATH_HEAD = re.compile(r"[.\[]")


def projection(request: Mapping[str, Any]) -> frozenset[str] | None:
    """The top-level attributes a read asks for (None: all of them)."""
    if "ProjectionExpression" in request:
        aliases: Mapping[str, str] = request.get("ExpressionAttributeNames") or {}
        heads = (_PATH_HEAD.split(path.strip(), maxsplit=1)[0] for path in request["ProjectionExpression"].split(","))
        return frozenset(aliases.get(head, head) for head in heads)
    if "AttributesToGet" in request:
        return frozenset(request["AttributesToGet"])
    return None


def projected(item: Item, request: Mapping[str, Any]) -> Item:
    names = projection(request)
    return item if names is None else {name: value for name, value in item.items() if name in names}


def covers_keys(request: Mapping[str, Any], key: Mapping[str, Any]) -> bool:
    """Whether the items a read answers carry the key's attributes (its projection keeps them)."""
    names = projection(request)
    return names is None or set(key) <= names


__all__ = [
    "APPLIED_THEN_500",
    "DROPPED_AFTER_WRITE",
    "HIDDEN_BY_INDEX_LAG",
    "STALE_READ",
    "THROTTLED",
    "WRITE_OPERATIONS",
    "DynamoFaultProxy",
    "DynamoFaults",
    "FaultKind",
    "dynamodb_fault_proxy",
]
