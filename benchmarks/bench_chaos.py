"""Chaos benchmark: N images through the local stack while the world misbehaves; every image must end.

The faults, all at once:
- the emulator loses a share of webhooks, duplicates a share, and reorders them (delay jitter);
- Ximilar answers 429 in bursts (a thread makes the next 15 calls fail every few seconds, a bounded
  number of times; a burst ends with the next one);
- the functions' DynamoDB is the fault proxy (`xasync.dynamodb_faults`): a share of calls throttled,
  a share of writes applied then answered 500 (or their connection dropped after the write), the
  indexes and eventually consistent reads behind the table;
- the submit function is "killed" between a successful POST and its write, a few times: the POST
  happened, the CREATED write did not, so the sweeper must resubmit the request after the submitting
  timeout (same `_id`s): those records reach Ximilar twice, which no client can avoid (Ximilar has no
  idempotency key), and the run says which;
- failed SQS messages come back after `--redeliver-after` seconds: 2 by default, or the queue's own
  visibility timeout (`--real-visibility`), with sweeps running meanwhile.

It reports per record how many times it reached Ximilar (the emulator's log of accepted POSTs) and per
image how it ended, and checks: every image has an item and a terminal status; every record reached
Ximilar exactly once (but those of killed POSTs); no (image, Ximilar request) pair was recorded twice;
every finished image has exactly one `Image Finished` event (the stack's bus, delivered to its local
queue); every DONE image's outputs are STORED. Runs on the embedded stack (moto server, the emulator,
the proxy), nothing leaves 127.0.0.1.

    .venv/bin/python -m benchmarks.bench_chaos --images 200 --ambiguous 0.05 --throttled 0.1 --index-lag 30
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from benchmarks.local_run import PREFIXES, mixed_keys
from xasync import local_stack
from xasync.dynamodb_faults import DynamoFaults
from xasync.sample_images import png_bytes
from xasync.servers import wait_for
from xasync.template import load_template
from ximilar_async.adapters.dynamodb.models import Tables, bind_tables
from ximilar_async.values import identity
from ximilar_async.values.entities import ImageResult
from ximilar_async.values.statuses import TERMINAL_STATUSES
from ximilar_emulator import EmulatorControl


def kill_after_post(submit_module: Any, kills: int, counter: Counter[str], killed: set[str]) -> None:
    """The first `kills` successful POSTs end the request's work right there, before any write; the
    record ids they carried go into `killed`."""
    ximilar = submit_module.submitter.ximilar
    real_submit = ximilar.submit
    lock = threading.Lock()

    def submit(request_type: Any, endpoint: Any, records: list[dict[str, Any]], *args: Any, **kwargs: Any) -> Any:
        answer: dict[str, Any] = real_submit(request_type, endpoint, records, *args, **kwargs)
        with lock:
            kill = counter["killed after POST"] < kills
            if kill:
                counter["killed after POST"] += 1
                killed.update(str(record["_id"]) for record in records)
        if kill:
            raise RuntimeError("chaos: the function died after its POST")
        return answer

    ximilar.submit = submit


def count_recordings(
    module: Any, path: Callable[[Any], Any], source: str, recordings: Counter[tuple[str, str]]
) -> None:
    """Count each applied result write by (image, Ximilar request), whoever made it."""
    images = path(module)
    real = images.record_image_result
    lock = threading.Lock()

    def record_image_result(result: ImageResult, now: Any) -> Any:
        applied = real(result, now)
        if applied is not None:
            with lock:
                recordings[(result.uri, result.request_id)] += 1
                recordings[("by", source)] += 1
        return applied

    object.__setattr__(images, "record_image_result", record_image_result)  # a frozen dataclass


def bursts_of_429(control: EmulatorControl, stop: threading.Event, counter: Counter[str], every: float) -> None:
    """Ximilar throttles in bursts, as a rate limit does: each burst is the next 15 calls, and ends with the
    next burst or after `every` seconds. (The emulator queues faults until calls use them up: a burst left
    queued would wait for the sweeper's calls, a minute apart when throttled, not for the clock.)"""
    try:
        for _ in range(12):  # bounded: at most 12 bursts
            if stop.wait(every):
                return
            control.clear_faults()
            control.fail_next(15, status=429, retry_after=1)
            counter["429 bursts"] += 1
        stop.wait(every)
    finally:
        control.clear_faults()


def stuck_requests(tables: Tables, uris: list[str], terminal: set[str]) -> list[dict[str, Any]]:
    """What a failed run leaves to look at: the request items of the images not terminal."""
    submissions = {item.submission_id for item in tables.images.batch_get(uris) if item.status not in terminal}
    now = int(time.time())
    return [
        {
            "status": item.status,
            "request_id": item.request_id,
            "check in (s)": None if item.next_check_at is None else int(item.next_check_at) - now,
            "reason": item.status_reason,
        }
        for item in tables.requests.batch_get(sorted(filter(None, submissions)))
    ]


def finished_events(sqs: Any, queue_url: str) -> Counter[str]:
    """`Image Finished` events by image URI, drained from the stack's local events queue."""
    found: Counter[str] = Counter()
    while True:
        answer = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        messages = answer.get("Messages", [])
        if not messages:
            return found
        for message in messages:
            event = json.loads(message["Body"])
            if event.get("detail-type") == "Image Finished":
                found[str(event["detail"]["image_uri"])] += 1
        sqs.delete_message_batch(
            QueueUrl=queue_url,
            Entries=[{"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(messages)],
        )


@dataclass(frozen=True)
class ImageRow:
    """How one image ended."""

    uri: str
    status: str
    reason: str | None
    reached_ximilar: int  # accepted POSTs that carried its record
    killed_post: bool  # one of them was a POST the benchmark killed
    events: int  # `Image Finished` events
    outputs: list[str]  # the states of its outputs


def images_report(
    tables: Tables, uris: list[str], reached: Counter[str], events: Counter[str], killed: set[str]
) -> tuple[list[ImageRow], dict[str, list[str]]]:
    """Per image: its status, how many times its record reached Ximilar, its events, its outputs; and
    what is wrong among them (each list names the images)."""
    rows = []
    for item in sorted(tables.images.batch_get(uris), key=lambda found: found.image_uri):
        outputs = item.outputs.as_dict() if item.outputs is not None else {}  # type: ignore[no-untyped-call]
        rows.append(
            ImageRow(
                uri=item.image_uri,
                status=item.status,
                reason=item.status_reason,
                reached_ximilar=reached[item.record_id],
                killed_post=item.record_id in killed,
                events=events[item.image_uri],
                outputs=sorted({str(output["state"]) for output in outputs.values()}),
            )
        )
    terminal = {status.value for status in TERMINAL_STATUSES}
    problems = {
        "no item": sorted(set(uris) - {row.uri for row in rows}),
        "not terminal": [row.uri for row in rows if row.status not in terminal],
        "never reached Ximilar": [row.uri for row in rows if row.status != "FAILED" and row.reached_ximilar == 0],
        "reached Ximilar more than once": [row.uri for row in rows if row.reached_ximilar > 1 and not row.killed_post],
        "not one Image Finished event": [row.uri for row in rows if row.status in terminal and row.events != 1],
        "outputs not STORED": [row.uri for row in rows if row.status == "DONE" and row.outputs not in ([], ["STORED"])],
    }
    return rows, problems


def outputs_settled(tables: Tables, uris: list[str]) -> bool:
    """No DONE image has an output still PENDING (the copier has done with every one)."""
    for item in tables.images.batch_get(uris):
        outputs = item.outputs.as_dict() if item.outputs is not None else {}  # type: ignore[no-untyped-call]
        if item.status == "DONE" and any(output["state"] == "PENDING" for output in outputs.values()):
            return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--lost", type=float, default=0.3, help="share of webhooks lost")
    parser.add_argument("--duplicated", type=float, default=0.2, help="share of webhooks delivered twice")
    parser.add_argument("--throttled", type=float, default=0.1, help="share of DynamoDB calls throttled")
    parser.add_argument("--ambiguous", type=float, default=0.05, help="share of DynamoDB writes applied, then 500")
    parser.add_argument("--dropped", type=float, default=0.0, help="share of writes applied, then no answer")
    parser.add_argument("--index-lag", type=float, default=30.0, help="seconds the indexes are behind the table")
    parser.add_argument("--read-lag", type=float, default=0.0, help="seconds eventually consistent reads lag")
    parser.add_argument("--kills", type=int, default=3, help="submit invocations killed between POST and write")
    parser.add_argument("--redeliver-after", type=int, default=2, help="seconds before a failed message is back")
    parser.add_argument(
        "--real-visibility", action="store_true", help="failed messages come back after the queue's own timeout"
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for every image")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    counter: Counter[str] = Counter()
    recordings: Counter[tuple[str, str]] = Counter()
    killed: set[str] = set()
    faults = DynamoFaults(
        throttle_rate=args.throttled,
        applied_then_500_rate=args.ambiguous,
        dropped_after_write_rate=args.dropped,
        index_lag_seconds=args.index_lag,
        consistency_lag_seconds=args.read_lag,
        seed=args.seed,
    )
    template = load_template()
    visibility = int(template["Resources"]["SubmitQueue"]["Properties"]["VisibilityTimeout"])
    redeliver_after = visibility if args.real_visibility else args.redeliver_after
    with local_stack.running(
        parameters={"LogLevel": "ERROR"},
        emulator_flags=("--created-delay-seconds", "0.2", "--processing-delay-seconds", "0.3", "--seed", "7"),
        dynamodb_faults=faults,
        retry_delay=redeliver_after,
    ) as local:
        control = EmulatorControl(local.ximilar_url)
        control.set_knobs(
            webhook_drop_rate=args.lost, webhook_duplicate_rate=args.duplicated, webhook_jitter_seconds=1.0
        )
        kill_after_post(local.modules["SubmitFunction"], args.kills, counter, killed)
        count_recordings(local.modules["WebhookFunction"], lambda m: m.receiver.recorder.images, "webhook", recordings)
        count_recordings(local.modules["SweeperFunction"], lambda m: m.sweeper.recorder.images, "sweeper", recordings)
        stop = threading.Event()
        bursts = threading.Thread(target=bursts_of_429, args=(control, stop, counter, 4.0), daemon=True)
        bursts.start()

        s3, sqs = local.client("s3"), local.client("sqs")
        bucket = local.outputs["InputBucketName"]
        # The benchmark's own reads go to moto directly, not through the functions' faults.
        tables = bind_tables(
            local.outputs["ImagesTableName"], local.outputs["RequestsTableName"], host=local.aws_endpoint
        )
        images = tables.images
        keys_ = mixed_keys(args.images, "chaos")
        body = png_bytes(24, 16)
        started = time.monotonic()
        for key in keys_:
            s3.put_object(Bucket=bucket, Key=key, Body=body)
        terminal = {status.value for status in TERMINAL_STATUSES}
        uris = [identity.image_uri(bucket, key) for key in keys_]

        def statuses() -> Counter[str]:
            found = Counter(item.status for item in images.batch_get(uris))
            found["(no item)"] = len(uris) - sum(found.values())
            return found

        def finished() -> bool:
            now = statuses()
            return sum(now[status] for status in terminal) == len(uris) and outputs_settled(tables, uris)

        with contextlib.suppress(TimeoutError):  # what is unfinished is reported below
            wait_for(finished, timeout=args.timeout, interval=2.0, what="every image and output to finish")
        took = time.monotonic() - started
        stop.set()
        wait_for(local.invocations.idle, timeout=60, what="the functions to settle")
        final = statuses()
        calls = control.calls()
        webhooks = Counter(delivery["outcome"] for delivery in control.webhooks())
        stuck = stuck_requests(tables, uris, terminal)
        errors = {function: Counter(found).most_common(3) for function, found in local.invocations.errors.items()}
        sweeps = Counter[str]()
        for answer in local.invocations.answers.get("SweeperFunction", []):
            sweeps.update({name: value for name, value in answer.items() if isinstance(value, int)})
        reached = Counter(
            record_id for call in calls if call["method"] == "POST" for record_id in call.get("record_ids", [])
        )
        events = finished_events(sqs, local.outputs["LocalEventsQueueUrl"])
        rows, problems = images_report(tables, uris, reached, events, killed)
        injected = dict(local.dynamodb_faults.counts) if local.dynamodb_faults is not None else {}

    twice = {pair: n for pair, n in recordings.items() if pair[0] != "by" and n > 1}
    posts = Counter(call["status"] for call in calls if call["method"] == "POST")
    unfinished = sum(n for status, n in final.items() if status not in terminal)
    report = {
        "images": args.images,
        "seconds": round(took, 1),
        "failed messages back after (s)": redeliver_after,
        "final statuses": dict(final),
        "unfinished": unfinished,
        "records by times they reached Ximilar": dict(sorted(Counter(row.reached_ximilar for row in rows).items())),
        "records of killed POSTs": len(killed),
        "Image Finished events per image": dict(sorted(Counter(row.events for row in rows).items())),
        "failed images": Counter(row.reason for row in rows if row.status == "FAILED").most_common(5),
        "recorded twice": len(twice),
        "recorded by webhook": recordings[("by", "webhook")],
        "recorded by sweeper": recordings[("by", "sweeper")],
        "ximilar POSTs by status": dict(posts),
        "webhook deliveries": dict(webhooks),
        "DynamoDB faults injected": injected,
        "other faults injected": dict(counter),
        "sweeps (summed answers)": dict(sweeps),
        "handler errors": errors,
        "problems": {name: found[:10] for name, found in problems.items() if found},
        "requests of unfinished images": stuck,
    }
    print(f"chaos: {args.images} images across {len(PREFIXES)} request types, finished in {took:.1f} s")
    for name, value in report.items():
        print(f"  {name}: {value}")
    print(json.dumps({**report, "per image": [asdict(row) for row in rows]}))
    ok = not any(problems.values()) and not twice
    print(
        "every image terminal, every record sent once (but killed POSTs'), one event each, outputs stored"
        if ok
        else "FAILED: see above"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
