"""Chaos benchmark: N images through the local stack while the world misbehaves; every image must end.

The faults, all at once:
- the emulator loses a share of webhooks, duplicates a share, and reorders them (delay jitter);
- Ximilar answers 429 in bursts (a thread makes the next 15 calls fail every few seconds, a bounded
  number of times; a burst ends with the next one);
- a share of every DynamoDB call the functions make is answered ProvisionedThroughputExceeded before it
  leaves the process (botocore's retries then apply, as they would against a throttled table);
- the submit function is "killed" between a successful POST and its write, a few times: the POST
  happened, the CREATED write did not, so the sweeper must resubmit the request after the submitting
  timeout (same `_id`s) and the results must still be recorded once.

It checks: every image has an item, every item is terminal, and no (image, Ximilar request) pair was
recorded twice. Runs on the embedded stack (moto server + emulator), nothing leaves 127.0.0.1.

    .venv/bin/python -m benchmarks.bench_chaos --images 1000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import botocore.client
from botocore.awsrequest import AWSResponse, HTTPHeaders

from benchmarks.local_run import PREFIXES, mixed_keys
from xasync import local_stack
from xasync.sample_images import png_bytes
from xasync.servers import wait_for
from ximilar_async import keys
from ximilar_async.dal.models import Tables, bind_tables
from ximilar_async.entities import ImageResult
from ximilar_async.statuses import TERMINAL_STATUSES
from ximilar_emulator import EmulatorControl


class _Body:
    """What botocore reads an HTTP response body from."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.data


@contextmanager
def dynamodb_throttling(share: float, rng: random.Random, counter: Counter[str]) -> Iterator[None]:
    """Every DynamoDB client created meanwhile has `share` of its calls answered 400 throttled."""
    body = json.dumps(
        {"__type": "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException", "message": "chaos"}
    ).encode()
    lock = threading.Lock()

    def throttle(request: Any, **_: Any) -> AWSResponse | None:
        with lock:
            hit = rng.random() < share
        if not hit:
            return None
        counter["dynamodb throttled"] += 1
        headers = HTTPHeaders()
        headers["Content-Type"] = "application/x-amz-json-1.0"
        headers["x-amzn-RequestId"] = "chaos"
        return AWSResponse(request.url, 400, headers, _Body(body))

    original = botocore.client.ClientCreator.create_client

    def create_client(self: Any, service_name: str, *args: Any, **kwargs: Any) -> Any:
        client = original(self, service_name, *args, **kwargs)
        if service_name == "dynamodb":
            hook: Any = throttle  # a before-send hook may answer instead of the network
            client.meta.events.register("before-send.dynamodb", hook)
        return client

    botocore.client.ClientCreator.create_client = create_client  # type: ignore[method-assign]
    try:
        yield
    finally:
        botocore.client.ClientCreator.create_client = original  # type: ignore[method-assign]


def kill_after_post(submit_module: Any, kills: int, counter: Counter[str]) -> None:
    """The first `kills` successful POSTs end the request's work right there, before any write."""
    ximilar = submit_module.submitter.ximilar
    real_submit = ximilar.submit
    lock = threading.Lock()

    def submit(*args: Any, **kwargs: Any) -> dict[str, Any]:
        answer: dict[str, Any] = real_submit(*args, **kwargs)
        with lock:
            kill = counter["killed after POST"] < kills
            if kill:
                counter["killed after POST"] += 1
        if kill:
            raise RuntimeError("chaos: the function died after its POST")
        return answer

    ximilar.submit = submit


def count_recordings(
    module: Any, path: Callable[[Any], Any], source: str, recordings: Counter[tuple[str, str]]
) -> None:
    """Count each applied result write by (image, Ximilar request), whoever made it."""
    repository = path(module)
    real = repository.record_image_result
    lock = threading.Lock()

    def record_image_result(result: ImageResult, now: Any) -> bool:
        applied: bool = real(result, now)
        if applied:
            with lock:
                recordings[(result.uri, result.request_id)] += 1
                recordings[("by", source)] += 1
        return applied

    object.__setattr__(repository, "record_image_result", record_image_result)  # a frozen dataclass


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--lost", type=float, default=0.3, help="share of webhooks lost")
    parser.add_argument("--duplicated", type=float, default=0.2, help="share of webhooks delivered twice")
    parser.add_argument("--throttled", type=float, default=0.05, help="share of DynamoDB calls throttled")
    parser.add_argument("--kills", type=int, default=3, help="submit invocations killed between POST and write")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for every image")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    counter: Counter[str] = Counter()
    recordings: Counter[tuple[str, str]] = Counter()
    with (
        dynamodb_throttling(args.throttled, rng, counter),
        local_stack.running(
            parameters={"LogLevel": "ERROR"},
            emulator_flags=("--created-delay-seconds", "0.2", "--processing-delay-seconds", "0.3", "--seed", "7"),
        ) as local,
    ):
        control = EmulatorControl(local.ximilar_url)
        control.set_knobs(
            webhook_drop_rate=args.lost, webhook_duplicate_rate=args.duplicated, webhook_jitter_seconds=1.0
        )
        kill_after_post(local.modules["SubmitFunction"], args.kills, counter)
        count_recordings(
            local.modules["WebhookFunction"], lambda m: m.receiver.recorder.repository, "webhook", recordings
        )
        count_recordings(local.modules["SweeperFunction"], lambda m: m.sweeper.repository, "sweeper", recordings)
        stop = threading.Event()
        bursts = threading.Thread(target=bursts_of_429, args=(control, stop, counter, 4.0), daemon=True)
        bursts.start()

        s3 = local.client("s3")
        bucket = local.outputs["InputBucketName"]
        tables = bind_tables(local.outputs["ImagesTableName"], local.outputs["RequestsTableName"])
        images = tables.images
        keys_ = mixed_keys(args.images, "chaos")
        body = png_bytes(24, 16)
        started = time.monotonic()
        for key in keys_:
            s3.put_object(Bucket=bucket, Key=key, Body=body)
        terminal = {status.value for status in TERMINAL_STATUSES}
        uris = [keys.image_uri(bucket, key) for key in keys_]

        def statuses() -> Counter[str]:
            found = Counter(item.status for item in images.batch_get(uris))
            found["(no item)"] = len(uris) - sum(found.values())
            return found

        def finished() -> bool:
            now = statuses()
            return sum(now[status] for status in terminal) == len(uris)

        with contextlib.suppress(TimeoutError):  # what is unfinished is reported below
            wait_for(finished, timeout=args.timeout, interval=2.0, what="every image to finish")
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

    twice = {pair: n for pair, n in recordings.items() if pair[0] != "by" and n > 1}
    posts = Counter(call["status"] for call in calls if call["method"] == "POST")
    unfinished = sum(n for status, n in final.items() if status not in terminal)
    report = {
        "images": args.images,
        "seconds": round(took, 1),
        "final statuses": dict(final),
        "unfinished": unfinished,
        "recorded twice": len(twice),
        "recorded by webhook": recordings[("by", "webhook")],
        "recorded by sweeper": recordings[("by", "sweeper")],
        "ximilar POSTs by status": dict(posts),
        "webhook deliveries": dict(webhooks),
        "faults injected": dict(counter),
        "sweeps (summed answers)": dict(sweeps),
        "handler errors": errors,
        "requests of unfinished images": stuck,
    }
    print(f"chaos: {args.images} images across {len(PREFIXES)} request types, finished in {took:.1f} s")
    for name, value in report.items():
        print(f"  {name}: {value}")
    print(json.dumps(report))
    ok = unfinished == 0 and final["(no item)"] == 0 and not twice
    print("every image terminal, none lost, none recorded twice" if ok else "FAILED: see above")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
