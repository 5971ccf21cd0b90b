"""What the operations commands do (`status`, `backfill`, `reprocess`, `redrive`, `reconcile`), apart from printing.

Each function takes its collaborators (the stores, boto3 clients, the services `runtime` builds), so
the same code runs on the local stack and on a deployed one, and tests call it directly. Reads go through
the stores (indexes, batch gets, never a Scan); resubmission goes through the Submitter, and recording
through the ResultRecorder, exactly as the functions do it.
"""

from __future__ import annotations

import csv
import functools
import gzip
import io
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from xasync.template import PROJECT_ROOT
from ximilar_async.adapters.dynamodb import Storage
from ximilar_async.adapters.sqs import SqsSubmitQueue
from ximilar_async.adapters.ximilar import XimilarClient
from ximilar_async.services.backfiller import Backfiller
from ximilar_async.services.result_recorder import ResultRecorder
from ximilar_async.services.submitter import Submitter
from ximilar_async.values.backfill import (
    LISTING,
    MAX_ITEMS_PER_BATCH,
    BackfillRun,
    Batch,
    BatchOutcome,
    ExistingObject,
    allowed,
    batch_input,
    from_inventory,
    inventory_item,
    listing_item,
)
from ximilar_async.values.clock import utc_now
from ximilar_async.values.entities import Image
from ximilar_async.values.request_types import parse_request_type
from ximilar_async.values.statuses import TERMINAL_STATUSES, UNFINISHED, Status
from ximilar_async.values.submissions import SubmitOutcome, chunks
from ximilar_async.values.uploads import Rejection, Upload, admit
from ximilar_async.values.watched import WatchedPrefix
from ximilar_async.values.ximilar_payloads import parse_outcome

QUEUE_ATTRIBUTES: Final = [
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
]
BATCH_GET_SIZE: Final = 100  # DynamoDB's BatchGetItem limit
SQS_BATCH_SIZE: Final = 10  # SendMessageBatch's limit
BACKFILL_DEFINITION: Final = PROJECT_ROOT / "statemachines" / "backfill.asl.json"


# --- status -------------------------------------------------------------------------------------------
def queue_depths(sqs: Any, queues: dict[str, str]) -> dict[str, dict[str, int]]:
    """name -> visible, in flight, delayed: SQS's own attributes, no message read."""
    depths: dict[str, dict[str, int]] = {}
    for name, url in queues.items():
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=QUEUE_ATTRIBUTES)["Attributes"]
        depths[name] = {
            "visible": int(attributes.get("ApproximateNumberOfMessages", 0)),
            "in_flight": int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)),
            "delayed": int(attributes.get("ApproximateNumberOfMessagesDelayed", 0)),
        }
    return depths


def status_report(
    storage: Storage,
    sqs: Any,
    queues: dict[str, str],
    since: datetime,
    daily_limit: int,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Everything `xasync status` shows, as plain data (what `--output json` prints)."""
    now = now or utc_now()
    counts = storage.queries.count_by_status(since, list(Status))
    in_flight = Counter(request.status.value for request in storage.queries.unfinished_requests())
    oldest = storage.queries.oldest_in_flight()
    last_sweep = storage.control.last_sweep()
    day = storage.control.spend_day(now.date())
    paused_by_hand = storage.control.pause_reason()
    limit_reached = bool(daily_limit) and day.submitted >= daily_limit and not day.resumed
    backfills = [
        {**asdict(run), "started_at": run.started_at.isoformat(), "updated_at": run.updated_at.isoformat()}
        for run in storage.control.backfill_runs()
    ]
    return {
        "backfills": backfills,
        "since": since.isoformat(),
        "images_by_status": {status.value: count for status, count in counts.items()},
        "requests_unfinished": dict(sorted(in_flight.items())),
        "oldest_unfinished": None
        if oldest is None
        else {
            "key": oldest.key,
            "status": oldest.status.value,
            "reason": oldest.status_reason,
            "uploaded_at": oldest.created_at.isoformat(),
            "age_seconds": int((now - oldest.created_at).total_seconds()),
        },
        "queues": queue_depths(sqs, queues),
        "last_sweep": None
        if last_sweep is None
        else {
            "at": last_sweep[0].isoformat(),
            "age_seconds": int((now - last_sweep[0]).total_seconds()),
            **last_sweep[1],
        },
        "top_failure_reasons": storage.queries.status_reasons([Status.FAILED, Status.ERROR], since).most_common(5),
        "spend_guard": {
            "day": day.day.isoformat(),
            "submitted_today": day.submitted,
            "daily_limit": daily_limit or None,
            "resumed_today": day.resumed,
            "paused": paused_by_hand is not None or limit_reached,
            "reason": paused_by_hand
            if paused_by_hand is not None
            else ("daily limit reached" if limit_reached else None),
        },
    }


# --- backfill -----------------------------------------------------------------------------------------
def listed_objects(s3: Any, bucket: str, prefix: str) -> Iterator[list[ExistingObject]]:
    """Pages of the objects under `prefix` (ListObjectsV2; ListObjectVersions' latest in a versioned bucket)."""
    versioned = s3.get_bucket_versioning(Bucket=bucket).get("Status") == "Enabled"
    if versioned:
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
            yield [
                ExistingObject(bucket, v["Key"], v["Size"], v["ETag"].strip('"'), v["VersionId"], v["LastModified"])
                for v in page.get("Versions", [])
                if v.get("IsLatest")
            ]
        return
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        yield [
            ExistingObject(bucket, o["Key"], o["Size"], o["ETag"].strip('"'), None, o["LastModified"])
            for o in page.get("Contents", [])
        ]


def inventory_objects(s3: Any, manifest: dict[str, Any], prefix: str) -> Iterator[list[ExistingObject]]:
    """Pages (one per data file) of an S3 Inventory report in CSV, from its `manifest.json`."""
    if manifest.get("fileFormat", "CSV") != "CSV":
        raise ValueError(f"only CSV inventories are read, this one is {manifest['fileFormat']}")
    columns = [name.strip() for name in manifest["fileSchema"].split(",")]
    destination = manifest["destinationBucket"].rsplit(":", 1)[-1]
    for data_file in manifest["files"]:
        body = s3.get_object(Bucket=destination, Key=data_file["key"])["Body"].read()
        rows = csv.reader(io.StringIO(gzip.decompress(body).decode()))
        found = (from_inventory(dict(zip(columns, row, strict=False))) for row in rows)
        yield [each for each in found if each is not None and each.key.startswith(prefix)]


def engine_batches(
    pages: Iterable[list[ExistingObject]], run: BackfillRun, source: str, bucket: str | None, prefix: str
) -> Iterator[dict[str, Any]]:
    """The events a Distributed Map's ItemBatcher hands the backfill function (MaxItemsPerBatch 100), made here
    from the same listing: each object in its ItemReader's documented shape (`values.backfill`)."""
    to_item = listing_item if source == LISTING else inventory_item
    pending: list[dict[str, Any]] = []
    for page in pages:
        for found in page:
            pending.append(to_item(found))
            if len(pending) == MAX_ITEMS_PER_BATCH:
                yield {"BatchInput": batch_input(run, source, bucket, prefix), "Items": pending}
                pending = []
    if pending:
        yield {"BatchInput": batch_input(run, source, bucket, prefix), "Items": pending}


@dataclass(frozen=True)
class HeldRetry:
    """The state machine's Retry for BackfillHeld (statemachines/backfill.asl.json), which the local driver follows."""

    interval: float
    backoff: float
    max_delay: float
    max_attempts: int

    @classmethod
    def from_definition(cls, path: Path = BACKFILL_DEFINITION, scale: float = 1.0) -> HeldRetry:
        """Read from the definition itself; `scale` shrinks the waits (tests, benchmarks)."""
        definition = json.loads(path.read_text())
        task = definition["States"]["FromListing"]["ItemProcessor"]["States"]["Enqueue"]
        retry = next(each for each in task["Retry"] if each["ErrorEquals"] == ["BackfillHeld"])
        return cls(
            retry["IntervalSeconds"] * scale,
            float(retry["BackoffRate"]),
            retry.get("MaxDelaySeconds", 3600) * scale,
            int(retry["MaxAttempts"]),
        )

    def delay(self, attempt: int) -> float:
        return float(min(self.max_delay, self.interval * self.backoff**attempt))


def drive_backfill(
    handler: Callable[[dict[str, Any]], dict[str, Any]],
    batches: Iterable[dict[str, Any]],
    retry: HeldRetry,
    *,
    is_held: Callable[[BaseException], bool],
    sleep: Callable[[float], None] = time.sleep,
    progress: Callable[[dict[str, Any]], None] = lambda _: None,
    stop_after: int | None = None,
) -> BatchOutcome:
    """What the Distributed Map does with the batches, one at a time (MaxConcurrency 1): invoke the function,
    and retry a held batch after the definition's backoff (bounded by its MaxAttempts: then it raises).
    `stop_after`: stop after that many batches, as a run stopped halfway (benchmarks)."""
    total = BatchOutcome()
    for number, event in enumerate(batches):
        if stop_after is not None and number >= stop_after:
            break
        for attempt in range(retry.max_attempts + 1):
            try:
                answer = handler(event)
                break
            except Exception as error:
                if not is_held(error) or attempt == retry.max_attempts:
                    raise
                sleep(retry.delay(attempt))
        total.merge(
            BatchOutcome(
                answer.get("total", 0),
                answer.get("enqueued", 0),
                answer.get("already_known", 0),
                answer.get("already_queued", 0),
                answer.get("failed", 0),
                list(answer.get("reasons", [])),
            )
        )
        progress(answer)
    return total


def laptop_backfiller(
    storage: Storage, sqs: Any, queue_url: str, region: str, input_bucket: str, watched: Sequence[WatchedPrefix]
) -> Backfiller:
    """The backfill function's service run here (the laptop path): no pacing (small prefixes, the local stack)."""
    return Backfiller(
        storage.images,
        storage.control,
        SqsSubmitQueue(sqs, queue_url),
        region,
        None,
        0,
        functools.partial(allowed, input_bucket=input_bucket, watched=watched),
    )


def backfill(
    backfiller: Backfiller,
    run: BackfillRun,
    pages: Iterable[list[ExistingObject]],
    progress: Callable[[int], None] = lambda _: None,
) -> BatchOutcome:
    """Send each listed object that has no image item for its version (nor a fresh marker) to the submit queue,
    as S3 would have: the backfill function's own rule (`Backfiller.run_batch`), 100 objects at a time."""
    outcome = BatchOutcome()
    for page in pages:
        for batch in chunks(page, MAX_ITEMS_PER_BATCH):
            outcome.merge(backfiller.run_batch(Batch(run, list(batch))))
            progress(len(batch))
    return outcome


# --- reprocess ------------------------------------------------------------------------------------------
@dataclass
class Planned:
    image: Image
    route: tuple[str, str] | None  # (type, endpoint) it is submitted to, or None when skipped
    skip: str | None = None


def select_images(
    storage: Storage,
    *,
    statuses: Sequence[Status],
    since: datetime,
    request_id: str | None,
    uris_under_prefix: Iterable[str] | None,
    prefix: str | None,
) -> list[Image]:
    """The images a selection names: by Ximilar request, by key prefix (S3's listing), or by status and time."""
    if request_id:
        uris: Iterable[str] = storage.queries.image_uris_of_request(request_id)
    elif uris_under_prefix is not None:
        uris = uris_under_prefix
    else:
        uris = storage.queries.image_uris_by_status(statuses, since)
    found: list[Image] = []
    for batch in chunks(list(dict.fromkeys(uris)), BATCH_GET_SIZE):
        found += storage.queries.images_by_uri(batch).values()
    wanted = set(statuses)
    return sorted(
        (
            image
            for image in found
            if image.status in wanted and image.updated_at >= since and (not prefix or image.key.startswith(prefix))
        ),
        key=lambda image: image.key,
    )


def plan_reprocess(images: Iterable[Image], submitter: Submitter) -> list[Planned]:
    """Where each image would go again: its own type and endpoint, or its route now; unfinished ones are skipped."""
    settings = submitter.settings
    planned = []
    for image in images:
        if image.status not in TERMINAL_STATUSES:
            planned.append(Planned(image, None, f"{image.status.value}: not finished, left alone"))
            continue
        route = admit(Upload.of_image(image), settings.routes, settings.max_image_bytes)
        if isinstance(route, Rejection):
            planned.append(Planned(image, None, route.text))
            continue
        request_type = image.request_type or route.request_type.value
        planned.append(Planned(image, (request_type, image.endpoint or route.endpoint)))
    return planned


def reprocess(planned: Sequence[Planned], submitter: Submitter) -> SubmitOutcome:
    """Submit the planned images again as a new attempt each: `submit_batch(..., previous=...)`, as the sweeper does."""
    outcome = SubmitOutcome()
    groups: dict[tuple[str, str], list[Image]] = {}
    for plan in planned:
        if plan.route is not None:
            groups.setdefault(plan.route, []).append(plan.image)
    for (type_name, endpoint), images in groups.items():
        request_type = parse_request_type(type_name)
        for chunk in chunks(images, submitter.settings.records_per_request[request_type]):
            outcome.merge(
                submitter.submit_batch(
                    request_type,
                    endpoint,
                    [Upload.of_image(image) for image in chunk],
                    previous={image.uri: image for image in chunk},
                )
            )
    return outcome


# --- redrive --------------------------------------------------------------------------------------------
def redrive(sqs: Any, dead_letter_url: str, queue_url: str, limit: int | None = None) -> int:
    """Move dead-letter messages back to the submit queue: receive, send, then delete what was sent.

    Not SQS's StartMessageMoveTask: moto (the local stack) does not implement it, and this works on both.
    A message is deleted only after its copy was sent, so a crash in between duplicates, never loses, it.
    """
    moved = 0
    while limit is None or moved < limit:
        want = SQS_BATCH_SIZE if limit is None else min(SQS_BATCH_SIZE, limit - moved)
        messages = sqs.receive_message(
            QueueUrl=dead_letter_url, MaxNumberOfMessages=want, WaitTimeSeconds=1, VisibilityTimeout=60
        ).get("Messages", [])
        if not messages:
            break
        refused = set(SqsSubmitQueue(sqs, queue_url).send([m["Body"] for m in messages]))
        done = [{"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(messages) if n not in refused]
        if done:
            sqs.delete_message_batch(QueueUrl=dead_letter_url, Entries=done)
        moved += len(done)
        if len(done) < len(messages):
            raise RuntimeError(f"SQS refused to send {len(messages) - len(done)} messages; they stay in the DLQ")
    return moved


# --- reconcile ------------------------------------------------------------------------------------------
@dataclass
class Finding:
    request_id: str
    ximilar_status: str
    type: str
    created: str
    finding: str  # unknown | recorded | ok | pending
    images: int = 0  # images of ours that carry this request id
    recorded: int = 0  # images this run recorded
    records: list[dict[str, str]] = field(default_factory=list)  # for unknown requests: what was sent


def _record_summary(record: dict[str, Any]) -> dict[str, str]:
    """A record as the report shows it: its `_id` and where the image was (never a URL's signature)."""
    source = "_base64" if record.get("_base64") else str(record.get("_url", ""))
    if source.startswith("http"):
        parts = urlsplit(source)
        source = f"{parts.scheme}://{parts.netloc}{parts.path}"
    return {"_id": str(record.get("_id", "")), "source": source}


def reconcile(
    storage: Storage,
    ximilar: XimilarClient,
    recorder: ResultRecorder,
    *,
    status: str | None = None,
    type: str | None = None,
) -> list[Finding]:
    """Ximilar's request list (every page) against our items, through the images' `by_request` index.

    - a request no image of ours carries: billed, but lost to us (a crash between the POST and the write,
      or images submitted again since); reported with its records;
    - DONE at Ximilar, images of ours unfinished: recorded now, through the one recording path;
    - otherwise ok (or still pending at Ximilar).
    """
    findings = []
    for summary in ximilar.list(status=status, type=type):
        request_id = str(summary["id"])
        finding = Finding(
            request_id, str(summary.get("status")), str(summary.get("type")), str(summary.get("created")), "ok"
        )
        images = storage.queries.image_statuses_of_request(request_id)
        finding.images = len(images)
        if not images:
            finding.finding = "unknown"
            details = ximilar.get(request_id)
            finding.records = [_record_summary(r) for r in (details.get("request") or {}).get("records", [])]
        elif finding.ximilar_status == "DONE":
            unfinished = [uri for uri, state in images.items() if state in UNFINISHED]
            if unfinished:
                outcome = parse_outcome(ximilar.get(request_id))
                submissions = {image.submission_id for image in storage.queries.images_by_uri(unfinished).values()}
                for submission_id in sorted(filter(None, submissions)):
                    finding.recorded += recorder.record(submission_id, outcome).recorded
                finding.finding = "recorded"
        elif finding.ximilar_status in ("CREATED", "PROCESSING"):
            finding.finding = "pending"
        findings.append(finding)
    return findings
