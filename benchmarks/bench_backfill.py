"""Backfill benchmark: N objects already in the input bucket, backfilled by BackfillFunction's own handler.

On moto server (a stack of tests.support.aws, without the pipeline's functions), the objects are put under
`archive/` (outside InputPrefix: no notification of their own); then the function is driven with the
Distributed Map's batches of 100 (`xasync backfill`'s local driver, `ops.drive_backfill`, a held batch
retried after a shortened backoff), while a consumer standing in for the submit function takes the
messages and counts them:

1. a run stopped halfway (after half the batches), as a stopped execution;
2. a new run over the whole prefix: it sends the other half, and skips the first half (fresh markers);
3. a second run after it: it sends nothing.

Each object must be in exactly one message (none lost, none doubled). It prints objects per second for
each run and where the function's time went (index reads, markers, sends, counters) beside the listing's.

    .venv/bin/python -m benchmarks.bench_backfill --objects 100000
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any
from urllib.parse import unquote_plus

from tests.support.aws import AwsStack, create_stack
from xasync import ops
from xasync.lambda_runtime import LocalLambdaContext, load_function
from xasync.local_stack import use_local_credentials
from xasync.servers import moto_server
from xasync.template import load_template
from ximilar_async.values.backfill import BackfillRun, BatchOutcome, ExistingObject

PREFIX = "archive/"
BODY = b"\x89PNG\r\n\x1a\n" + bytes(64)


def put_objects(stack: AwsStack, count: int, workers: int = 16) -> float:
    s3 = stack.client("s3")
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(
            pool.map(
                lambda n: s3.put_object(Bucket=stack.bucket, Key=f"{PREFIX}{n // 1000:03d}/{n:06d}.png", Body=BODY),
                range(count),
            )
        )
    return time.perf_counter() - started


class TimedPages:
    """The listing's pages, with the time spent reading them."""

    def __init__(self, pages: Iterable[list[ExistingObject]]) -> None:
        self.pages = iter(pages)
        self.seconds = 0.0

    def __iter__(self) -> Iterator[list[ExistingObject]]:
        while True:
            started = time.perf_counter()
            page = next(self.pages, None)
            self.seconds += time.perf_counter() - started
            if page is None:
                return
            yield page


class Timed:
    """A port of the backfill service whose named methods add their time to `spent` under a label: where a
    batch's time goes, measured around the service rather than inside it."""

    def __init__(self, port: Any, spent: defaultdict[str, float], labels: dict[str, str]) -> None:
        self.port, self.spent, self.labels = port, spent, labels

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.port, name)
        label = self.labels.get(name)
        if label is None:
            return method

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.spent[label] += time.perf_counter() - started

        return timed


def time_ports(backfiller: Any) -> defaultdict[str, float]:
    """Wrap the function's backfiller's ports in `Timed` (anew for each run); the seconds by label."""
    spent: defaultdict[str, float] = defaultdict(float)

    def timed(port: Any, labels: dict[str, str]) -> Timed:
        return Timed(port.port if isinstance(port, Timed) else port, spent, labels)

    backfiller.images = timed(backfiller.images, {"images_by_uri": "index reads"})
    backfiller.ledger = timed(
        backfiller.ledger, {"mark_queued": "markers", "unmark_queued": "markers", "count_backfill": "counters"}
    )
    backfiller.queue = timed(backfiller.queue, {"send": "sends"})
    return spent


# The state machine's Retry of a held batch (1 min, doubling to 15), shortened: the bench's consumer keeps up.
BENCH_RETRY = ops.HeldRetry(interval=0.2, backoff=2.0, max_delay=2.0, max_attempts=100)


def run_backfill(stack: AwsStack, module: Any, name: str, stop_after: int | None = None) -> dict[str, Any]:
    listing = TimedPages(ops.listed_objects(stack.client("s3"), stack.bucket, PREFIX))
    run = BackfillRun(name, f"local:{name}", f"s3://{stack.bucket}/{PREFIX}")
    batches = ops.engine_batches(listing, run, "listing", stack.bucket, PREFIX)
    spent = time_ports(module.backfiller)
    held: list[BaseException] = []

    def is_held(error: BaseException) -> bool:
        held.append(error)
        return type(error).__name__ == "BackfillHeld"

    started = time.perf_counter()
    outcome: BatchOutcome = ops.drive_backfill(
        lambda event: module.lambda_handler(event, LocalLambdaContext(function_name="BackfillFunction")),
        batches,
        BENCH_RETRY,
        is_held=is_held,
        stop_after=stop_after,
    )
    seconds = time.perf_counter() - started
    return {
        "run": name,
        "seconds": round(seconds, 1),
        "objects_per_second": round(outcome.total / seconds) if seconds else 0,
        **{key: value for key, value in asdict(outcome).items() if key != "reasons"},
        "held_back": len(held),
        "time": {
            "listing": round(listing.seconds, 1),
            **{label: round(spent[label], 1) for label in ("index reads", "markers", "sends", "counters")},
        },
    }


class Consumer:
    """Stands in for the submit function: takes the submit queue's messages as they come (moto's queue gets
    slower the more it holds, as SQS does not) and counts the object key each names."""

    def __init__(self, stack: AwsStack, workers: int = 4) -> None:
        self.stack = stack
        self.found: dict[str, set[str]] = {}  # object key -> the ids of the messages that named it
        self.deliveries = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(workers)]

    def __enter__(self) -> Consumer:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def _take(self, sqs: Any) -> int:
        messages = sqs.receive_message(QueueUrl=self.stack.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get(
            "Messages", []
        )
        for message in messages:
            for record in json.loads(message["Body"]).get("Records", []):  # S3's TestEvent has none
                with self.lock:
                    self.deliveries += 1
                    self.found.setdefault(unquote_plus(record["s3"]["object"]["key"]), set()).add(message["MessageId"])
        if messages:
            sqs.delete_message_batch(
                QueueUrl=self.stack.queue_url,
                Entries=[{"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(messages)],
            )
        return len(messages)

    def _run(self) -> None:
        sqs = self.stack.client("sqs")
        while not self.stopping.is_set():
            if not self._take(sqs):
                self.stopping.wait(0.05)

    def drain(self, timeout: float = 120) -> None:
        """Until the queue is empty (three empty answers in a row), within `timeout`."""
        sqs = self.stack.client("sqs")
        deadline, empty = time.monotonic() + timeout, 0
        while empty < 3 and time.monotonic() < deadline:
            empty = 0 if self._take(sqs) else empty + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=100_000)
    args = parser.parse_args()
    use_local_credentials()
    template = load_template()
    with moto_server() as endpoint:
        stack = create_stack(endpoint, template, "bench-token")
        created = put_objects(stack, args.objects)
        # The template's default bound on the queue's depth (1,000): the consumer below keeps under it, mostly.
        environment = {
            **stack.environment("BackfillFunction"),
            "POWERTOOLS_METRICS_DISABLED": "true",
            "POWERTOOLS_LOG_LEVEL": "WARNING",
        }
        module = load_function(template, "BackfillFunction", environment)
        batches = -(-args.objects // 100)
        with Consumer(stack) as consumer:
            runs = [
                run_backfill(stack, module, "bench-stopped-halfway", stop_after=batches // 2),
                run_backfill(stack, module, "bench-restarted"),
                run_backfill(stack, module, "bench-second-run"),
            ]
            started = time.perf_counter()
            consumer.drain()
            counted = time.perf_counter() - started
        queued = consumer.found
    for run in runs:
        print(json.dumps(run))
    # Two messages naming one object is a double send; one message delivered twice is SQS's at-least-once
    # (a receive whose delete came after the visibility timeout), which the submit function's claim absorbs.
    doubled = sum(1 for ids in queued.values() if len(ids) > 1)
    messages = sum(len(ids) for ids in queued.values())
    lost = args.objects - len(queued)
    print(
        f"{args.objects} objects ({created:.0f} s to create on moto): {messages} messages sent for {len(queued)} "
        f"objects, {doubled} doubled, {lost} lost ({consumer.deliveries - messages} redeliveries of a message); "
        f"second run enqueued {runs[2]['enqueued']} (the last messages taken in {counted:.0f} s)"
    )
    if doubled or lost or runs[2]["enqueued"]:
        raise SystemExit("backfill lost, doubled or re-sent objects")


if __name__ == "__main__":
    main()
