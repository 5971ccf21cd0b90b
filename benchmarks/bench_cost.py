"""Cost model: N images per route through the local stack, every AWS call it made turned into billable units.

Each route of the local stack (one request type each: upscaler 1 record per request, card-grader,
collectibles-recognition and flows 10) runs on its own, end to end: upload, submit, webhook (a share of
them lost on purpose, so the sweeper's work shows), results, until every image is terminal and the
stack is idle. Every botocore call the functions and the SQS poller make is counted through the same
hooks as the IAM audit (tests/support/botocore_calls.py) and priced with benchmarks/prices_us_east_1.py
(one dated table: check it before quoting a dollar). What depends on time rather than on images (the
sweeper's idle runs, SQS long polling, cached secrets, the secret itself, custom metrics) is reported
per month, apart from the per-image figures.

    .venv/bin/python -m benchmarks.bench_cost --images 100
"""

from __future__ import annotations

import argparse
import contextvars
import io
import json
import math
import os
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TextIO

from botocore.exceptions import ClientError
from rich.console import Console
from rich.table import Table as RichTable

from benchmarks import prices_us_east_1 as price
from benchmarks.dynamodb_units import Table, item_size, read_units, write_cost, write_units
from benchmarks.local_run import routes
from tests.support import botocore_calls
from tests.support.botocore_calls import ACTING, BotocoreCall
from xasync import local_stack
from xasync.sample_images import png_bytes
from xasync.servers import wait_for
from xasync.template import load_template, resources_of_type
from ximilar_async.adapters.dynamodb.control import LAST_SWEEP_KEY
from ximilar_async.adapters.dynamodb.models import bind_tables
from ximilar_async.values import identity
from ximilar_async.values.statuses import TERMINAL_STATUSES
from ximilar_emulator import EmulatorControl

KB = 1024
SQS_CHUNK = 64 * KB
HTTP_API_CHUNK = 512 * KB
GB = 1024**3
MONTH_SECONDS = 30 * 86400
# Lambda's own lines per invocation (START, END, REPORT with its XRAY part), which the handler never writes.
PLATFORM_LOG_BYTES = 370
# Every DynamoDB item and index entry is stored with 100 bytes of overhead (billed storage, not units).
DYNAMODB_ITEM_OVERHEAD = 100
# Lambda's SQS event source polls an idle queue with 5 long polls (20 s each) at once.
SQS_IDLE_POLLERS, SQS_LONG_POLL_SECONDS = 5, 20
PER_RUN = "per-run."  # usage of a sweeper run whatever the images (its last-run record), not per image
SECRET_MAX_AGE = 300  # ximilar_async.adapters.secrets caches the token and the key this long (per warm container)
# Values of the HTTP API's access-log variables with typical lengths, to size one access-log line.
ACCESS_LOG_SAMPLE = {
    "requestId": "ABCDEFGHIJKLMNO=",
    "identity.sourceIp": "203.0.113.10",
    "requestTime": "30/Nov/2026:12:00:00 +0000",
    "routeKey": "POST /webhook",
    "status": "200",
    "responseLength": "52",
    "responseLatency": "45",
    "integrationLatency": "44",
    "integrationErrorMessage": "-",
}
SERVICES = (
    "DynamoDB",
    "SQS",
    "Lambda",
    "HTTP API",
    "S3 (the upload's PUT)",
    "S3",
    "CloudWatch Logs",
    "X-Ray",
    "EventBridge",
)


class Usage(defaultdict[str, float]):
    """Billable quantities by name (`ddb.wcu.<table>`, `sqs.send`, `lambda.ms.<function>`...); `add` sums."""

    def __init__(self, values: dict[str, float] | None = None) -> None:
        super().__init__(float, values or {})

    def add(self, other: dict[str, float]) -> None:
        for name, value in other.items():
            self[name] += value

    def scaled(self, factor: float) -> Usage:
        return Usage({name: value * factor for name, value in self.items()})


@dataclass
class Invocation:
    """What one handler invocation used: calls made inside it, its overhead from this meter, its log bytes."""

    function: str
    thread: int  # the handler's thread: the meter's reads there delay the handler
    usage: Usage = field(default_factory=Usage)
    overhead: float = 0.0
    log_bytes: int = 0


CURRENT: contextvars.ContextVar[Invocation | None] = contextvars.ContextVar("bench_cost_invocation", default=None)


@dataclass
class FunctionFacts:
    memory_mb: int
    traced: bool


def function_facts(template: dict[str, Any]) -> dict[str, FunctionFacts]:
    """Memory and tracing of each function, from its Properties or the Globals (as SAM merges them)."""
    defaults = template.get("Globals", {}).get("Function", {})
    facts = {}
    for logical_id, resource in resources_of_type(template, "AWS::Serverless::Function").items():
        properties = {**defaults, **resource["Properties"]}
        facts[logical_id] = FunctionFacts(int(properties.get("MemorySize", 128)), properties.get("Tracing") == "Active")
    return facts


def access_log_bytes(template: dict[str, Any]) -> int:
    """One access-log line of the HTTP API, its Format filled with typical values (0 when there is none)."""
    for resource in resources_of_type(template, "AWS::Serverless::HttpApi").values():
        line = str(resource["Properties"].get("AccessLogSettings", {}).get("Format", ""))
        for name, value in sorted(ACCESS_LOG_SAMPLE.items(), key=lambda kv: -len(kv[0])):
            line = line.replace(f"$context.{name}", value)
        return len(line.encode()) + 1 if line else 0
    return 0


class Meter:
    """Counts the billable units of every call, invocation and log line while `phase` is set."""

    def __init__(self, template: dict[str, Any]) -> None:
        self.facts = function_facts(template)
        self.access_log = access_log_bytes(template)
        self.tables: dict[str, Table] = {}  # physical name -> table, once the stack is up (`bind`)
        self.labels: dict[str, str] = {}  # physical name -> logical id
        self.reader: Any = None  # a client of the meter's own, for the items before and after each write
        self.lock = threading.Lock()
        self.items: dict[tuple[str, str], dict[str, Any] | None] = {}  # (table, key) -> item after the last write
        self.busy = threading.local()
        self.phase: Usage | None = None
        self.idle_sweeps = Usage()
        self.cached = Usage()  # secret reads: paid per cache period, not per image
        self.object_sizes: dict[str, int] = {}
        self.largest_message = 0  # S3's notifications: each is one SendMessage while under 64 KB
        self.metrics: set[str] = set()

    def bind(self, tables: dict[str, Table], labels: dict[str, str], reader: Any) -> None:
        """Tables by physical name, their logical ids (the names units are reported under), the reader."""
        self.tables, self.labels, self.reader = tables, labels, reader

    # --- where a unit goes -------------------------------------------------------------------
    def add(self, usage: dict[str, float]) -> None:
        invocation = CURRENT.get()
        with self.lock:
            if invocation is not None:
                invocation.usage.add(usage)
            elif self.phase is not None:
                self.phase.add(usage)

    # --- botocore calls ----------------------------------------------------------------------
    def middleware(self, call: BotocoreCall, proceed: Callable[[], Any]) -> Any:
        poller = threading.current_thread().name.startswith("sqs-")
        if getattr(self.busy, "on", False) or (call.function is None and not poller):
            return proceed()  # the meter's own reads, set-up, and the benchmark's own checks
        if call.service == "dynamodb" and call.operation in WRITE_OPERATIONS and self.phase is not None:
            return self._dynamodb_write(call, proceed)
        answer = proceed()
        if self.phase is not None:  # decided after the call: a long poll may have started before the phase
            self.busy.on = True
            try:
                self.add(self._units(call, answer))
            finally:
                self.busy.on = False
        return answer

    def _overhead(self, seconds: float) -> None:
        """Time the meter's own reads took in the handler's thread, taken off its billed duration."""
        invocation = CURRENT.get()
        if invocation is not None and invocation.thread == threading.get_ident():
            with self.lock:
                invocation.overhead += seconds

    def _get(self, table: Table, key: dict[str, Any]) -> dict[str, Any] | None:
        started = time.perf_counter()
        self.busy.on = True
        try:
            found: dict[str, Any] | None = self.reader.get_item(TableName=table.name, Key=key, ConsistentRead=True).get(
                "Item"
            )
        finally:
            self.busy.on = False
        self._overhead(time.perf_counter() - started)
        return found

    def _known(self, table: Table, key: dict[str, Any]) -> dict[str, Any] | None:
        """The item as the last write the meter saw left it; read only when the meter has not seen it yet."""
        slot = (table.name, json.dumps(key, sort_keys=True))
        with self.lock:
            if slot in self.items:
                return self.items[slot]
        return self._get(table, key)

    def _dynamodb_write(self, call: BotocoreCall, proceed: Callable[[], Any]) -> Any:
        # Before and after each write come from the writes themselves (a put's item, an update's
        # ALL_NEW answer, which pynamodb asks for), so the meter adds no call to the handler's time
        # except a read of an item it has not seen written (a new image's claim).
        writes = item_writes(call.operation, call.params, self.tables)
        before = [self._known(table, key) for table, key, _ in writes]
        failure: ClientError | None = None
        answer: Any = None
        try:
            answer = proceed()
        except ClientError as error:
            failure = error
        refused = failure is not None and failure.response["Error"]["Code"] in (
            "ConditionalCheckFailedException",
            "TransactionCanceledException",
        )
        after: list[dict[str, Any] | None] = []
        for (table, key, kind), old in zip(writes, before, strict=True):
            if refused or kind == "ConditionCheck":
                after.append(old)
            elif kind == "Delete":
                after.append(None)
            elif kind == "Put":
                after.append(dict(item_of(call.operation, call.params, table, key)))
            elif call.operation == "UpdateItem" and call.params.get("ReturnValues") == "ALL_NEW":
                after.append(answer["Attributes"])
            else:
                after.append(self._get(table, key))
        with self.lock:
            for (table, key, _), new in zip(writes, after, strict=True):
                self.items[(table.name, json.dumps(key, sort_keys=True))] = new
        usage = Usage()
        twice = 2 if call.operation == "TransactWriteItems" else 1  # a transaction writes in two phases
        for (table, key, kind), old, new in zip(writes, before, after, strict=True):
            label = self.labels[table.name]
            # Per run, not per image: the sweeper's record of its last run is written once a minute
            # whatever the volume, and `fixed_month` prices it with the schedule's runs.
            per_run = PER_RUN if LAST_SWEEP_KEY in json.dumps(key) else ""
            if kind == "ConditionCheck":
                usage[f"ddb.wcu.{label}"] += twice * write_units(item_size(old))
                continue
            cost = write_cost(table, old, new, applied=not refused, kind=kind)
            usage[f"{per_run}ddb.item_writes"] += 1
            usage[f"{per_run}ddb.wcu.{label}"] += twice * cost.table_units
            for index, units in cost.index_units.items():
                usage[f"{per_run}ddb.wcu.{label}/{index}"] += twice * units
                usage[f"{per_run}ddb.index_writes.{label}/{index}"] += cost.index_writes[index]
        self.add(usage)
        if failure is not None:
            raise failure
        return answer

    def _units(self, call: BotocoreCall, answer: Any) -> Usage:
        usage = Usage()
        service, operation, params = call.service, call.operation, call.params
        if service == "dynamodb":
            usage["ddb.read_requests"] += 1
            usage["ddb.rcu"] += self._read_units(operation, params, answer)
        elif service == "s3":
            if call.presigned:  # Ximilar downloads it: one GET, and the bytes leave AWS
                usage["s3.get"] += 1
                usage["ximilar.records"] += 1
                usage["egress.download_bytes"] += self.object_sizes.get(params.get("Key", ""), 0)
            elif operation in ("GetObject", "HeadObject"):
                usage["s3.get"] += 1
            elif operation.startswith("List"):
                usage["s3.list"] += 1
            else:
                usage["s3.put"] += 1
                body = params.get("Body", b"")
                usage["s3.stored_bytes"] += len(body) if isinstance(body, bytes | str) else 0
        elif service == "sqs":
            usage.update(self._sqs_units(operation, answer))
        elif service in ("ssm", "secretsmanager"):
            with self.lock:  # cached per container: priced per month, see `fixed_month`
                self.cached[f"{service}.calls"] += 1
        else:
            usage[f"{service}.{operation}"] += 1
        return usage

    def _read_units(self, operation: str, params: dict[str, Any], answer: Any) -> float:
        if operation == "GetItem":
            item = answer.get("Item")
            if item is not None and "ProjectionExpression" in params:  # billed on the whole item
                item = self._get(self.tables[params["TableName"]], params["Key"])
            return read_units(item_size(item), consistent=bool(params.get("ConsistentRead")))
        if operation == "BatchGetItem":
            units = 0.0
            for table_name, request in params["RequestItems"].items():
                table = self.tables[table_name]
                returned = {json.dumps(table.key_of(i), sort_keys=True): i for i in answer["Responses"][table_name]}
                consistent = bool(request.get("ConsistentRead"))
                for key in request["Keys"]:
                    item = returned.get(json.dumps(key, sort_keys=True))
                    if item is not None and "ProjectionExpression" in request:
                        item = self._get(table, key)
                    units += read_units(item_size(item), consistent=consistent)
            return units
        if operation in ("Query", "Scan"):
            # One page is one request, its items' sizes added before rounding (an index returns its entries).
            size = sum(item_size(item) for item in answer.get("Items", []))
            return read_units(size, consistent=bool(params.get("ConsistentRead")))
        return 0.0

    def _sqs_units(self, operation: str, answer: Any) -> Usage:
        usage = Usage()
        if operation == "ReceiveMessage":
            messages = answer.get("Messages", [])
            if not messages:
                usage["sqs.empty_receives"] += 1  # an artefact of the local poller: see `fixed_month`
                return usage
            payload = sum(len(m["Body"].encode()) + len(json.dumps(m.get("Attributes", {}))) for m in messages)
            usage["sqs.receive"] += math.ceil(payload / SQS_CHUNK)
            with self.lock:
                self.largest_message = max([self.largest_message, *(len(m["Body"].encode()) for m in messages)])
        elif operation in ("DeleteMessage", "DeleteMessageBatch"):
            usage["sqs.delete"] += 1
        else:
            usage["sqs.other"] += 1
        return usage

    # --- invocations -------------------------------------------------------------------------
    def observe(self, function: str, event: dict[str, Any]) -> Callable[[Any, BaseException | None, float], None]:
        invocation = Invocation(function, threading.get_ident())
        CURRENT.set(invocation)

        def finish(answer: Any, error: BaseException | None, seconds: float) -> None:
            CURRENT.set(None)  # the poller's deletes after the handler are its own
            if self.phase is None:
                return
            facts = self.facts[function]
            billed_ms = max(1, math.ceil((seconds - invocation.overhead) * 1000))
            usage = invocation.usage
            usage[f"lambda.requests.{function}"] += 1
            usage[f"lambda.ms.{function}"] += billed_ms
            usage[f"lambda.gb_seconds.{function}"] += billed_ms / 1000 * facts.memory_mb / 1024
            usage[f"logs.bytes.{function}"] += invocation.log_bytes + PLATFORM_LOG_BYTES
            usage["xray.traces"] += 1 if facts.traced else 0
            if "requestContext" in event and "http" in event["requestContext"]:
                body = len((event.get("body") or "").encode())
                usage["http.requests"] += max(1, math.ceil(body / HTTP_API_CHUNK))
                usage["ingress.webhook_bytes"] += body
                usage["logs.bytes.HttpApiAccessLogs"] += self.access_log
            if event.get("source") == "aws.events":
                usage["events.scheduled"] += 1
            idle = (
                function == "SweeperFunction"
                and isinstance(answer, dict)
                and not (answer.get("items_read") or answer.get("taken") or answer.get("stopped"))
            )
            per_image = Usage({name: value for name, value in usage.items() if not name.startswith(PER_RUN)})
            per_run = Usage({name[len(PER_RUN) :]: value for name, value in usage.items() if name.startswith(PER_RUN)})
            with self.lock:
                if idle:
                    self.idle_sweeps.add(per_image)
                    self.idle_sweeps.add(per_run)
                    self.idle_sweeps["runs"] += 1
                elif self.phase is not None:
                    # A busy run's own record is priced with every run of the schedule (`fixed_month`).
                    self.phase.add(per_image)

        return finish

    # --- log lines ---------------------------------------------------------------------------
    def log_written(self, text: str) -> bool:
        """Count a write to stdout if a function made it (True: it is swallowed, as Lambda ships it)."""
        invocation = CURRENT.get()
        function = ACTING.get()
        if invocation is None and function is None:
            return False
        size = len(text.encode())
        if '"_aws"' in text:  # an EMF line: each metric name and dimension set is a custom metric
            self._metric_names(text)
        with self.lock:
            if invocation is not None:
                invocation.log_bytes += size
            elif self.phase is not None and function is not None:
                self.phase[f"logs.bytes.{function}"] += size
        return True

    def _metric_names(self, text: str) -> None:
        for line in text.splitlines():
            try:
                blob = json.loads(line)
            except ValueError:
                continue
            for directive in blob.get("_aws", {}).get("CloudWatchMetrics", []):
                dimensions = ",".join(sorted(f"{d}={blob.get(d)}" for group in directive["Dimensions"] for d in group))
                for metric in directive["Metrics"]:
                    with self.lock:
                        self.metrics.add(f"{directive['Namespace']}/{metric['Name']}[{dimensions}]")


WRITE_OPERATIONS = {"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"}
_TRANSACT_KINDS = {"Put": "Put", "Update": "Update", "Delete": "Delete", "ConditionCheck": "ConditionCheck"}


def item_writes(operation: str, params: dict[str, Any], tables: dict[str, Table]) -> list[tuple[Table, Any, str]]:
    """(table, key, kind) of each item one write call writes: a batch counts each item."""
    if operation in ("PutItem", "UpdateItem", "DeleteItem"):
        table = tables[params["TableName"]]
        key = params["Key"] if "Key" in params else table.key_of(params["Item"])
        return [(table, key, operation.removesuffix("Item"))]
    writes: list[tuple[Table, Any, str]] = []
    if operation == "BatchWriteItem":
        for table_name, requests in params["RequestItems"].items():
            table = tables[table_name]
            for request in requests:
                if "PutRequest" in request:
                    writes.append((table, table.key_of(request["PutRequest"]["Item"]), "Put"))
                else:
                    writes.append((table, request["DeleteRequest"]["Key"], "Delete"))
        return writes
    for entry in params["TransactItems"]:
        ((kind, body),) = entry.items()
        table = tables[body["TableName"]]
        writes.append((table, body.get("Key") or table.key_of(body["Item"]), _TRANSACT_KINDS[kind]))
    return writes


def item_of(operation: str, params: dict[str, Any], table: Table, key: dict[str, Any]) -> dict[str, Any]:
    """The item a put writes (of a batch or a transaction: the one with this key)."""
    if operation == "PutItem":
        item: dict[str, Any] = params["Item"]
        return item
    if operation == "BatchWriteItem":
        puts = [r["PutRequest"]["Item"] for r in params["RequestItems"][table.name] if "PutRequest" in r]
    else:
        puts = [e["Put"]["Item"] for e in params["TransactItems"] if "Put" in e and e["Put"]["TableName"] == table.name]
    return next(item for item in puts if table.key_of(item) == key)


class CountingStdout(io.TextIOBase):
    """stdout that ships what functions write to the meter (as Lambda ships it to CloudWatch Logs)."""

    def __init__(self, meter: Meter, real: TextIO) -> None:
        self.meter, self.real = meter, real

    def write(self, text: str) -> int:
        if not self.meter.log_written(text):
            self.real.write(text)
        return len(text)

    def flush(self) -> None:
        self.real.flush()


@contextmanager
def counting_stdout(meter: Meter) -> Iterator[None]:
    real = sys.stdout
    sys.stdout = CountingStdout(meter, real)
    try:
        yield
    finally:
        sys.stdout = real


# --- dollars -----------------------------------------------------------------------------------
def dollars(usage: Usage) -> dict[str, float]:
    """Dollars by service for the units in `usage` (per-image units; time-driven ones are in `fixed_month`)."""

    def total(prefix: str) -> float:
        return sum(value for name, value in usage.items() if name.startswith(prefix))

    return {
        "DynamoDB": total("ddb.wcu.") * price.DYNAMODB_PER_WRITE_UNIT
        + usage["ddb.rcu"] * price.DYNAMODB_PER_READ_UNIT
        + usage["ddb.stored_bytes"] / GB * price.DYNAMODB_PER_GB_MONTH,
        "SQS": (usage["sqs.send"] + usage["sqs.receive"] + usage["sqs.delete"] + usage["sqs.other"])
        * price.SQS_PER_REQUEST,
        "Lambda": total("lambda.requests.") * price.LAMBDA_PER_REQUEST
        + total("lambda.gb_seconds.") * price.LAMBDA_ARM64_PER_GB_SECOND,
        "HTTP API": usage["http.requests"] * price.HTTP_API_PER_REQUEST,
        "S3 (the upload's PUT)": usage["s3.upload_put"] * price.S3_PER_PUT_COPY_POST_LIST,
        "S3": (usage["s3.put"] + usage["s3.list"]) * price.S3_PER_PUT_COPY_POST_LIST
        + usage["s3.get"] * price.S3_PER_GET
        + usage["s3.stored_bytes"] / GB * price.S3_PER_GB_MONTH,
        "CloudWatch Logs": total("logs.bytes.") / GB * price.LOGS_PER_GB_INGESTED,
        "X-Ray": usage["xray.traces"] * price.XRAY_PER_TRACE_RECORDED,
        "EventBridge": usage["events.scheduled"] * price.EVENTBRIDGE_PER_SCHEDULED_EVENT,
    }


def fixed_month(meter: Meter, functions: int) -> dict[str, float]:
    """What a month costs whatever the volume: the schedule's idle sweeps, idle SQS polls, secrets, metrics."""
    runs = meter.idle_sweeps["runs"]
    sweep_schedule_runs = MONTH_SECONDS / 60  # SweepSchedule: rate(1 minute)
    idle_runs = Usage({k: v for k, v in meter.idle_sweeps.items() if k != "runs"})
    idle = dollars(idle_runs.scaled(sweep_schedule_runs / runs if runs else 0.0))
    refreshes = functions * MONTH_SECONDS / SECRET_MAX_AGE  # one warm container per function, each refreshing
    return {
        "sweeper idle runs (1/min)": sum(idle.values()),
        "SQS idle long polls": SQS_IDLE_POLLERS * MONTH_SECONDS / SQS_LONG_POLL_SECONDS * price.SQS_PER_REQUEST,
        "Secrets Manager secret": price.SECRETS_MANAGER_PER_SECRET_MONTH,
        "secret reads (300 s cache)": refreshes
        * (price.SECRETS_MANAGER_PER_API_CALL + price.SSM_STANDARD_PER_API_CALL + 2 * price.KMS_PER_REQUEST),
        f"custom metrics ({len(meter.metrics)})": len(meter.metrics) * price.CLOUDWATCH_PER_METRIC_MONTH,
    }


# --- the run -----------------------------------------------------------------------------------
def stored_bytes(client: Any, table_names: list[str], tables: dict[str, Table]) -> int:
    """Billed storage of the tables: each item and each index entry, with 100 bytes of overhead each."""
    total = 0
    for name in table_names:
        table = tables[name]
        for page in client.get_paginator("scan").paginate(TableName=name):
            for item in page["Items"]:
                total += item_size(item) + DYNAMODB_ITEM_OVERHEAD
                for index in table.indexes:
                    entry = index.entry(item, table.keys)
                    if entry is not None:
                        total += item_size(entry) + DYNAMODB_ITEM_OVERHEAD
    return total


def run_route(local: local_stack.LocalStack, meter: Meter, prefix: str, images: int, body: bytes, name: str) -> Usage:
    s3 = local.client("s3")
    ddb = local.client("dynamodb")
    bucket = local.outputs["InputBucketName"]
    table_names = [local.outputs["ImagesTableName"], local.outputs["RequestsTableName"]]
    model = bind_tables(*table_names).images
    terminal = {status.value for status in TERMINAL_STATUSES}
    stored_before = stored_bytes(ddb, table_names, meter.tables)
    usage = Usage()
    meter.phase = usage
    keys_ = [f"{prefix}cost-{name}-{n:05d}.png" for n in range(images)]
    for key in keys_:
        meter.object_sizes[key] = len(body)
        s3.put_object(Bucket=bucket, Key=key, Body=body)  # the user's upload: a PUT and stored bytes
    usage["s3.upload_put"] += images
    usage["sqs.send"] += images  # S3 sends one notification per upload (checked under 64 KB: see `report`)
    usage["s3.stored_bytes"] += images * len(body)

    def finished() -> bool:
        found = model.batch_get([identity.image_uri(bucket, key) for key in keys_])
        return sum(1 for item in found if item.status in terminal) == len(keys_)

    wait_for(finished, timeout=900, interval=0.5, what=f"every {name} image")
    # Late work (a sweep that finishes a request, the poller's deletes): wait until nothing runs for a while.
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < 4.0:
        time.sleep(0.2)
        if not local.invocations.idle():
            quiet_since = time.monotonic()
    meter.phase = None
    usage["ddb.stored_bytes"] += stored_bytes(ddb, table_names, meter.tables) - stored_before
    return usage


def per_million(usage: Usage, images: int) -> Usage:
    return usage.scaled(1_000_000 / images)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100, help="images per route")
    parser.add_argument("--webhook-drop-rate", type=float, default=0.1, help="share of webhooks the emulator loses")
    parser.add_argument("--side", type=int, default=128, help="side of the (solid colour) PNG uploaded, in pixels")
    args = parser.parse_args()
    template = load_template()
    body = png_bytes(args.side, args.side)
    console = Console(width=150)
    meter = Meter(template)
    botocore_calls.add_middleware(meter.middleware)  # before any function's client exists
    botocore_calls.wrap_load_function()
    started = time.perf_counter()
    results: dict[str, Usage] = {}
    lost: dict[str, tuple[int, int]] = {}
    # stdout is replaced before the cold starts: Powertools' loggers keep the stream they were made with.
    with (
        counting_stdout(meter),
        local_stack.running(
            emulator_flags=(
                *("--created-delay-seconds", "0.2", "--processing-delay-seconds", "0.3"),
                *("--webhook-drop-rate", str(args.webhook_drop_rate), "--seed", "13"),
            )
        ) as local,
    ):
        declared = resources_of_type(template, "AWS::DynamoDB::Table")
        labels = {local.physical_ids[logical_id]: logical_id for logical_id in declared}
        tables = {name: Table.from_template(name, declared[label]["Properties"]) for name, label in labels.items()}
        meter.bind(tables, labels, local.client("dynamodb"))
        local.invocations.observers.append(meter.observe)
        # The stack turns EMF off locally; on Lambda each invocation prints its metrics to the log.
        os.environ["POWERTOOLS_METRICS_DISABLED"] = "false"
        control = EmulatorControl(local.ximilar_url)
        for prefix, request_type in routes():
            before = len(control.webhooks())
            results[request_type] = run_route(local, meter, prefix, args.images, body, request_type)
            outcomes = Counter(w["outcome"] for w in control.webhooks()[before:])
            lost[request_type] = (outcomes["dropped"], sum(outcomes.values()))
        errors = {name: len(found) for name, found in local.invocations.errors.items() if found}
    report(console, template, meter, results, lost, args, len(body), time.perf_counter() - started, errors)
    return 0


def report(
    console: Console,
    template: dict[str, Any],
    meter: Meter,
    results: dict[str, Usage],
    lost: dict[str, tuple[int, int]],
    args: argparse.Namespace,
    image_bytes: int,
    seconds: float,
    errors: dict[str, int],
) -> None:
    images = args.images
    scaled = {route: per_million(usage, images) for route, usage in results.items()}
    mixed = Usage()
    for usage in scaled.values():
        mixed.add(usage.scaled(1 / len(scaled)))
    columns = [*scaled, "mix (¼ each)"]
    by_route = {route: dollars(usage) for route, usage in [*scaled.items(), ("mix (¼ each)", mixed)]}

    money = RichTable(title=f"$ per 1M images, us-east-1 list prices as of {price.AS_OF} (check them)")
    money.add_column("service")
    for column in columns:
        money.add_column(column, justify="right")
    for service in SERVICES:
        money.add_row(service, *(f"{by_route[c][service]:.2f}" for c in columns))
    money.add_row("total", *(f"{sum(by_route[c].values()):.2f}" for c in columns), style="bold")
    console.print(money)

    table_names = sorted(meter.tables)
    ddb = RichTable(title="DynamoDB per image")
    ddb.add_column("figure")
    for column in columns:
        ddb.add_column(column, justify="right")
    rows: list[tuple[str, str]] = [("item writes", "ddb.item_writes")]
    for name in table_names:
        label = meter.labels[name]
        rows.append((f"WCU {label}", f"ddb.wcu.{label}"))
        for index in meter.tables[name].indexes:
            rows.append((f"index writes {label}/{index.name}", f"ddb.index_writes.{label}/{index.name}"))
            rows.append((f"WCU {label}/{index.name}", f"ddb.wcu.{label}/{index.name}"))
    rows += [
        ("read requests", "ddb.read_requests"),
        ("RCU", "ddb.rcu"),
        ("stored bytes (items + index entries)", "ddb.stored_bytes"),
    ]
    every = {**scaled, "mix (¼ each)": mixed}
    for label, key in rows:
        ddb.add_row(label, *(f"{every[c][key] / 1_000_000:.2f}" for c in columns))
    console.print(ddb)

    other = RichTable(title="outside the dollars, per 1M images")
    other.add_column("figure")
    for column in columns:
        other.add_column(column, justify="right")
    other.add_row("Ximilar records submitted", *(f"{every[c]['ximilar.records']:,.0f}" for c in columns))
    other.add_row("egress: Ximilar downloads (GB)", *(f"{every[c]['egress.download_bytes'] / GB:.3f}" for c in columns))
    other.add_row("webhook bodies in (GB)", *(f"{every[c]['ingress.webhook_bytes'] / GB:.3f}" for c in columns))
    other.add_row("Lambda invocations", *(f"{sum_of(every[c], 'lambda.requests.'):,.0f}" for c in columns))
    dropped, sent = sum(d for d, _ in lost.values()), sum(n for _, n in lost.values())
    other.add_row("webhooks lost / sent", *(f"{lost[c][0]}/{lost[c][1]}" for c in scaled), f"{dropped}/{sent}")
    console.print(other)

    functions = len(meter.facts)
    fixed = fixed_month(meter, functions)
    monthly = RichTable(title="per month, whatever the volume")
    monthly.add_column("item")
    monthly.add_column("$", justify="right")
    for item, amount in fixed.items():
        monthly.add_row(item, f"{amount:.2f}")
    console.print(monthly)
    secrets = ", ".join(f"{name} {count:.0f}" for name, count in meter.cached.items())
    console.print(
        f"{images} images per route ({image_bytes} B each: egress scales with it), {seconds:.0f} s; "
        f"dollars include one month of storage; largest notification {meter.largest_message} B; "
        f"secret reads measured: {secrets} (priced per month); idle sweeps {meter.idle_sweeps['runs']:.0f}; "
        f"handler errors: {errors or 'none'}"
    )
    line = {
        "images_per_route": images,
        "image_bytes": image_bytes,
        "webhook_drop_rate": args.webhook_drop_rate,
        "prices_as_of": price.AS_OF,
        "dollars_per_million": {c: {s: round(v, 4) for s, v in by_route[c].items()} for c in columns},
        "units_per_million": {c: {k: round(v, 1) for k, v in sorted(every[c].items())} for c in columns},
        "webhooks_lost": {c: {"dropped": d, "sent": n} for c, (d, n) in lost.items()},
        "fixed_per_month": {k: round(v, 4) for k, v in fixed.items()},
        "custom_metrics": sorted(meter.metrics),
        "seconds": round(seconds, 1),
    }
    print(json.dumps(line))


def sum_of(usage: Usage, prefix: str) -> float:
    return sum(value for name, value in usage.items() if name.startswith(prefix))


if __name__ == "__main__":
    sys.exit(main())
