"""Throughput on the local stack: images per second end to end, and where the time goes.

N images are uploaded to the local stack (moto server, the Ximilar emulator, the real handlers), spread
over the four request types in turn (a quarter each: upscaler 1 record per request, card-grader,
collectibles-recognition and flows 10), the same mix as bench_local and the cost model. The clock runs
from the first upload to the moment every image is seen with a terminal status.

Uploads go 10 at a time, as `aws s3 cp --recursive` puts them, paced so that at most `--max-queued`
(300) notifications wait for the submit function at once: moto 5.2's SQS lists every message of a
queue on each ReceiveMessage, SendMessage, GetQueueAttributes and DeleteMessage, so a queue thousands
deep makes each of those calls take seconds and the local queue, not the pipeline, sets the pace
(10,000 images uploaded at once never finished). The pace follows the submit function (an upload goes
when the submit function has taken a notification), so the queue never runs dry and what is measured
is still the pipeline's rate; 300 is three of the template's batches of 100. `--max-queued 0` uploads
as fast as the PUTs go, and `--upload-rate` caps the uploads per second as well (an offered load).
The output says which pace held the uploads back, how long, and how deep the pollers' queues were.
For the same reason the completion events are read off the local events queue every 2 s (moto's
SendMessage passes over every message of the queue, so unread events slow each PutEvents down).

FirstCheckDelaySeconds is the template's (120 s), not the local stack's quick 3 s, which has the
sweeper race the webhooks for the same requests. The emulator's own delays (time in CREATED and in
PROCESSING) are set to 0 by default (`--delay`): what is measured is the pipeline's own work plus the
emulator's real work (it downloads each image, upscales with Pillow, posts the webhook), not a Ximilar
latency that would be invented.

Where the time goes, from hooks in this process (nothing in the functions changes):
- each function's invocations and handler seconds (the local stack's invocation observers); as on
  one warm instance, each SQS source runs one invocation at a time and the HTTP API one webhook at a time;
- AWS calls by function, service and operation: count and seconds (the botocore hooks of the IAM audit
  and the cost model); the SQS pollers' own calls are counted apart;
- Ximilar calls by function (requests' HTTP adapter): count and seconds;
- time waiting in queues: an SQS message from SentTimestamp to its handler's start, a webhook from
  its arrival at the local HTTP API to its handler's start;
- CPU seconds of the three processes (moto, the emulator, this one) over the run.
Call seconds are summed over threads: where a handler runs calls in a pool they can exceed its time.

    .venv/bin/python -m benchmarks.bench_throughput --images 1000
    .venv/bin/python -m benchmarks.bench_throughput --images 10000 --max-queued 300
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import resource
import statistics
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests.adapters

from benchmarks.local_run import image_items, mixed_keys, routes, upload, wait_until_terminal
from tests.support import botocore_calls
from tests.support.botocore_calls import ACTING, BotocoreCall
from xasync import local_stack
from xasync.sample_images import png_bytes
from xasync.template import load_template

# The target: millions of images a day is 1,000,000 / 86,400 = 11.6 images/s on average.
MILLION_A_DAY = 1_000_000 / 86_400
SUBMIT = "SubmitFunction"  # the function S3's notifications go to (through SubmitQueue)


@dataclass
class Tally:
    count: int = 0
    seconds: float = 0.0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.seconds += seconds


@dataclass
class Waits:
    samples: list[float] = field(default_factory=list)

    def line(self) -> str:
        if not self.samples:
            return "none"
        ordered = sorted(self.samples)
        p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
        return (
            f"n={len(ordered)} mean {statistics.fmean(ordered):.2f} s, p50 {statistics.median(ordered):.2f} s, "
            f"p95 {p95:.2f} s, max {ordered[-1]:.2f} s"
        )


class Meter:
    """Invocations, AWS calls, Ximilar calls and queue waits, summed while `on` is set."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.on = False
        self.handlers: dict[str, Tally] = defaultdict(Tally)
        self.records: Counter[str] = Counter()  # SQS records handled, per function
        self.last_end: dict[str, float] = {}
        self.aws: dict[tuple[str, str, str], Tally] = defaultdict(Tally)  # (who, service, operation)
        self.ximilar: dict[tuple[str, str], Tally] = defaultdict(Tally)  # (function, what)
        self.waits: dict[str, Waits] = defaultdict(Waits)
        self.taken: dict[str, set[str]] = defaultdict(set)  # SQS message ids a function has started on
        self.ximilar_url = ""

    # --- invocations and queue waits (the local stack's observers) -------------------------------------
    def observe(self, function: str, event: dict[str, Any]) -> Callable[[Any, BaseException | None, float], None]:
        now = time.time()
        if self.on:
            with self.lock:
                self.taken[function].update(str(r["messageId"]) for r in event.get("Records", []) if "messageId" in r)
                for record in event.get("Records", []):
                    sent = record.get("attributes", {}).get("SentTimestamp")
                    if sent:
                        self.waits[f"{function}: SQS message, sent to handler start"].samples.append(
                            now - int(sent) / 1000
                        )
                arrived = event.get("requestContext", {}).get("timeEpoch")
                if arrived:
                    self.waits[f"{function}: HTTP request, arrival to handler start"].samples.append(
                        now - arrived / 1000
                    )

        def finish(answer: Any, failure: BaseException | None, seconds: float) -> None:
            if self.on:
                with self.lock:
                    self.handlers[function].add(seconds)
                    self.records[function] += len(event.get("Records", []))
                    self.last_end[function] = time.perf_counter()

        return finish

    # --- AWS calls (botocore hooks) ---------------------------------------------------------------------
    def middleware(self, call: BotocoreCall, proceed: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        try:
            return proceed()
        finally:
            if self.on:
                thread = threading.current_thread().name
                who = call.function or (f"poller {thread[4:]}" if thread.startswith("sqs-") else "benchmark")
                with self.lock:
                    self.aws[(who, call.service, call.operation)].add(time.perf_counter() - started)

    # --- Ximilar calls (requests' HTTP adapter, under every session the functions make) -------------------
    def wrap_requests(self) -> None:
        adapter_class: Any = requests.adapters.HTTPAdapter  # patched: its stubs type `send` exactly
        original = adapter_class.send

        def send(adapter: requests.adapters.HTTPAdapter, request: Any, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(adapter, request, *args, **kwargs)
            finally:
                function = ACTING.get()
                url = str(request.url or "")
                if self.on and function is not None and self.ximilar_url and url.startswith(self.ximilar_url):
                    what = f"{request.method} " + ("API" if "/account/v2/" in url else "artifact")
                    with self.lock:
                        self.ximilar[(function, what)].add(time.perf_counter() - started)

        adapter_class.send = functools.wraps(original)(send)


class Pace:
    """Holds each upload back until it may go: at most `rate` PUTs a second (0: no cap), and at most
    `max_queued` notifications not yet taken by the submit function (0: no cap); a PUT in flight counts
    as queued. Called by the upload workers before each PUT.
    """

    def __init__(self, rate: float, max_queued: int, taken: Callable[[], int]) -> None:
        self.rate, self.max_queued, self.taken = rate, max_queued, taken
        self.lock = threading.Lock()
        self.first: float | None = None
        self.slots = 0  # PUTs given a slot by the rate
        self.let_go = 0  # PUTs let go (each one's notification counts as queued until submit takes it)
        self.held = {"rate": 0.0, "queue": 0.0}  # seconds PUTs were held back, summed over workers
        self.held_puts = {"rate": 0, "queue": 0}

    def __call__(self) -> None:
        if self.rate:
            with self.lock:
                now = time.perf_counter()
                self.first = now if self.first is None else self.first
                slot = self.first + self.slots / self.rate
                self.slots += 1
            if slot > now:
                time.sleep(slot - now)
                self._held("rate", slot - now)
        started = time.perf_counter()
        while True:
            with self.lock:
                if not self.max_queued or self.let_go - self.taken() < self.max_queued:
                    self.let_go += 1
                    break
            time.sleep(0.05)
        if time.perf_counter() - started > 0.01:
            self._held("queue", time.perf_counter() - started)

    def _held(self, why: str, seconds: float) -> None:
        with self.lock:
            self.held[why] += seconds
            self.held_puts[why] += 1

    def describe(self) -> str:
        caps = []
        if self.rate:
            caps.append(f"at most {self.rate:g} PUTs/s")
        if self.max_queued:
            caps.append(f"at most {self.max_queued} notifications queued for {SUBMIT}")
        return " and ".join(caps) or "no pacing (PUTs as fast as they go)"


class QueueDepths:
    """ApproximateNumberOfMessages (+ NotVisible) of the queues the functions poll, every `every` s.

    Cheap while the queues are shallow (moto counts them by listing every message).
    """

    def __init__(
        self, local: local_stack.LocalStack, progress: Callable[[], str], every: float = 5.0, report_every: float = 60.0
    ) -> None:
        self.progress, self.report_every = progress, report_every
        self.sqs = local.client("sqs")
        self.urls: dict[str, str] = {}
        for function in local.template["Resources"].values():
            for event in function.get("Properties", {}).get("Events", {}).values():
                if event.get("Type") == "SQS":  # Queue: !GetAtt SomeQueue.Arn
                    name = event["Properties"]["Queue"]["Fn::GetAtt"][0]
                    self.urls[name] = local.physical_ids[name]
        self.urls["local events queue"] = local.outputs["LocalEventsQueueUrl"]
        self.every = every
        self.samples: dict[str, list[tuple[int, int]]] = defaultdict(list)  # (visible, in flight)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="queue-depths", daemon=True)

    def _run(self) -> None:
        started = last_report = time.perf_counter()
        while not self.stopping.wait(self.every):
            if time.perf_counter() - last_report >= self.report_every:  # to stderr: stdout has the functions' EMF
                last_report = time.perf_counter()
                depths = ", ".join(f"{name} {seen[-1][0]}+{seen[-1][1]}" for name, seen in self.samples.items())
                line = f"[{last_report - started:.0f} s] {self.progress()}; queues (visible+in flight) {depths}"
                print(line, file=sys.stderr, flush=True)
            for name, url in self.urls.items():
                with contextlib.suppress(Exception):
                    attributes = self.sqs.get_queue_attributes(
                        QueueUrl=url,
                        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
                    )["Attributes"]
                    self.samples[name].append(
                        (
                            int(attributes["ApproximateNumberOfMessages"]),
                            int(attributes["ApproximateNumberOfMessagesNotVisible"]),
                        )
                    )

    def __enter__(self) -> QueueDepths:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(timeout=30)

    def lines(self) -> list[str]:
        found = []
        for name, samples in sorted(self.samples.items()):
            visible = [v for v, _ in samples]
            in_flight = [f for _, f in samples]
            found.append(
                f"{name}: n={len(samples)} visible mean {statistics.fmean(visible):.0f}, max {max(visible)}; "
                f"in flight mean {statistics.fmean(in_flight):.0f}, max {max(in_flight)}"
            )
        return found


class EventsReader:
    """Reads the completion events off the local events queue every `every` s, as a user's consumer would.

    Nothing reads that queue otherwise, and moto's SendMessage counts every message of the queue (it
    builds the queue's attributes on each send), so unread events would make each of the functions'
    PutEvents slower as the run goes on: 10,000 images leave over 12,000 events.
    """

    def __init__(self, local: local_stack.LocalStack, every: float = 2.0) -> None:
        self.sqs = local.client("sqs")
        self.url = local.outputs["LocalEventsQueueUrl"]
        self.every = every
        self.read: Counter[str] = Counter()  # by detail-type
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="events-reader", daemon=True)

    def _drain(self) -> None:
        while True:
            messages = self.sqs.receive_message(QueueUrl=self.url, MaxNumberOfMessages=10).get("Messages", [])
            if not messages:
                return
            for message in messages:
                self.read[str(json.loads(message["Body"]).get("detail-type", "?"))] += 1
            self.sqs.delete_message_batch(
                QueueUrl=self.url,
                Entries=[{"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(messages)],
            )

    def _run(self) -> None:
        while not self.stopping.wait(self.every):
            with contextlib.suppress(Exception):
                self._drain()

    def __enter__(self) -> EventsReader:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(timeout=30)
        with contextlib.suppress(Exception):
            self._drain()  # the events of the last images


def sustained_rate(finish_times: list[float], low: float = 0.1, high: float = 0.9) -> tuple[float, float, float]:
    """Images/s between the `low` and `high` shares of images finished (the steady state, without the
    ramp-up and the tail), with the two moments (s from the first upload)."""
    ordered = sorted(finish_times)
    first = ordered[int(low * (len(ordered) - 1))]
    last = ordered[int(high * (len(ordered) - 1))]
    count = int(high * (len(ordered) - 1)) - int(low * (len(ordered) - 1))
    return (count / (last - first) if last > first else float("nan")), first, last


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument(
        "--delay", type=float, default=0.0, help="the emulator's created and processing delays, seconds each"
    )
    parser.add_argument("--side", type=int, default=64, help="side of the (solid colour) PNG uploaded, in pixels")
    parser.add_argument("--timeout", type=float, default=3600, help="give up after this many seconds")
    parser.add_argument("--upload-workers", type=int, default=10, help="PUTs at once (aws s3 cp's default: 10)")
    parser.add_argument(
        "--max-queued",
        type=int,
        default=300,
        help="hold uploads back while this many notifications wait for the submit function (0: no limit; "
        "moto's SQS slows down with the queue's depth)",
    )
    parser.add_argument("--upload-rate", type=float, default=0.0, help="at most this many PUTs a second (0: no limit)")
    parser.add_argument(
        "--first-check-delay",
        default=load_template()["Parameters"]["FirstCheckDelaySeconds"]["Default"],
        help="FirstCheckDelaySeconds: the template's by default (the local stack's 3 s makes the sweeper race "
        "the webhooks)",
    )
    args = parser.parse_args()
    meter = Meter()
    botocore_calls.add_middleware(meter.middleware)  # before any function's client exists
    botocore_calls.wrap_load_function()
    meter.wrap_requests()
    body = png_bytes(args.side, args.side)
    delay = str(args.delay)
    flags = ("--created-delay-seconds", delay, "--processing-delay-seconds", delay)
    parameters = {"LogLevel": "WARNING", "FirstCheckDelaySeconds": str(args.first_check_delay)}
    with local_stack.running(parameters=parameters, emulator_flags=flags) as local:
        meter.ximilar_url = local.ximilar_url
        local.invocations.observers.append(meter.observe)
        pids = {"moto server": local.servers["moto"].pid, "Ximilar emulator": local.servers["emulator"].pid}
        keys_ = mixed_keys(args.images, "tput")
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        own_before = own_cpu_seconds()
        pace = Pace(args.upload_rate, args.max_queued, lambda: len(meter.taken[SUBMIT]))
        meter.on = True
        events = EventsReader(local)

        def progress() -> str:
            return (
                f"{pace.let_go} uploads let go, {len(meter.taken[SUBMIT])} taken by {SUBMIT}, "
                f"{events.read['Image Finished']} Image Finished events"
            )

        with QueueDepths(local, progress) as depths, events:
            started, started_epoch = time.perf_counter(), time.time()
            uploaded_at = upload(local, keys_, body, workers=args.upload_workers, pace=pace)
            uploaded = time.perf_counter() - started
            finished = wait_until_terminal(local, keys_, timeout=args.timeout) - started
        meter.on = False
        cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
        cpu["this process (handlers, pollers, HTTP API, benchmark)"] = own_cpu_seconds() - own_before
        items = image_items(local, keys_)
        errors = {name: len(found) for name, found in local.invocations.errors.items() if found}
    timing = (uploaded, finished, started, started_epoch)
    report(args, len(body), meter, pace, depths, events, timing, uploaded_at, items, cpu, errors)
    return 0


def report(
    args: argparse.Namespace,
    image_bytes: int,
    meter: Meter,
    pace: Pace,
    depths: QueueDepths,
    events: EventsReader,
    timing: tuple[float, float, float, float],
    uploaded_at: dict[str, float],
    items: list[Any],
    cpu: dict[str, float],
    errors: dict[str, int],
) -> None:
    uploaded, finished, started, started_epoch = timing
    images = args.images
    rate = images / finished
    mix = ", ".join(request_type for _, request_type in routes())
    statuses = Counter(item.status for item in items)
    print(
        f"throughput: {images} images ({image_bytes} B PNGs) in turn over {mix}, {args.upload_workers} PUTs at "
        f"once; emulator delays {args.delay} s (created, processing); FirstCheckDelaySeconds {args.first_check_delay}"
    )
    held = ", ".join(
        f"{why} {pace.held_puts[why]} PUTs for {pace.held[why]:.0f} s summed over workers"
        for why in ("rate", "queue")
        if pace.held_puts[why]
    )
    print(
        f"  upload pace: {pace.describe()}; uploads took {uploaded:.1f} s ({images / uploaded:.1f}/s); "
        f"held back by {held or 'nothing'}"
    )
    if pace.max_queued:
        print(
            f"  the limit is the local SQS, not the pipeline: moto's SQS lists every message on each "
            f"ReceiveMessage, so uploads wait for {SUBMIT} to take notifications and the queue stays shallow"
        )
    first_upload = min(uploaded_at.values()) if uploaded_at else started_epoch
    steady, steady_from, steady_to = sustained_rate([item.updated_at.timestamp() - first_upload for item in items])
    print(
        f"  first upload to last terminal status {finished:.1f} s: {rate:.2f} images/s end to end "
        f"({rate / MILLION_A_DAY:.2f}x a million a day's average of {MILLION_A_DAY:.1f}/s); sustained "
        f"{steady:.2f} images/s from 10% to 90% done ({steady_from:.0f} s to {steady_to:.0f} s)"
    )
    print(f"  statuses {dict(statuses)}; handler errors: {errors or 'none'}")
    for depth in depths.lines():
        print(f"  queue depth every {depths.every:.0f} s, {depth}")
    print(f"  completion events read off the local events queue every {events.every:.0f} s: {dict(events.read)}")
    total = [item.updated_at.timestamp() - uploaded_at[item.key] for item in items]
    to_claim = [item.created_at.timestamp() - uploaded_at[item.key] for item in items]
    after_claim = [(item.updated_at - item.created_at).total_seconds() for item in items]
    for name, values in (
        ("upload to terminal", total),
        ("  upload to claimed by submit", to_claim),
        ("  claimed to terminal", after_claim),
    ):
        print(
            f"  per image, {name:<30} p50 {statistics.median(values):6.1f} s  p95 {percentile(values, 0.95):6.1f} s"
            f"  max {max(values):6.1f} s"
        )

    print(f"  {'function':<16} {'invocations':>11} {'records':>8} {'handler s':>9} {'busy':>5} {'mean ms':>8}  ends")
    for function, tally in sorted(meter.handlers.items()):
        ends = meter.last_end.get(function, started) - started
        print(
            f"  {function:<16} {tally.count:>11} {meter.records[function] or '':>8} {tally.seconds:>9.1f} "
            f"{tally.seconds / finished:>5.0%} {tally.seconds / tally.count * 1000:>8.1f}  {ends:.0f} s"
        )
    print("  waiting:")
    for name, waits in sorted(meter.waits.items()):
        print(f"    {name:<56} {waits.line()}")

    by_who: dict[str, dict[str, Tally]] = defaultdict(lambda: defaultdict(Tally))
    for (who, service, operation), tally in meter.aws.items():
        by_who[who][f"{service}.{operation}"].add(tally.seconds, tally.count)
        by_who[who][f"{service} (all)"].add(tally.seconds, tally.count)
    print("  AWS calls (moto) by caller: count, seconds summed over threads, mean ms (top 6 operations)")
    for who, tallies in sorted(by_who.items()):
        services = {name: t for name, t in tallies.items() if name.endswith("(all)")}
        operations = sorted(((n, t) for n, t in tallies.items() if n not in services), key=lambda nt: -nt[1].seconds)
        summary = ", ".join(f"{n[:-6]} {t.count} / {t.seconds:.1f} s" for n, t in sorted(services.items()))
        print(f"    {who}: {summary}")
        for name, tally in operations[:6]:
            mean = tally.seconds / tally.count * 1000
            print(f"      {name:<32} {tally.count:>7} {tally.seconds:>8.1f} s {mean:>7.1f} ms")
    print("  Ximilar calls (the emulator) by function: count, seconds summed over threads")
    for (function, what), tally in sorted(meter.ximilar.items()):
        print(
            f"    {function:<16} {what:<14} {tally.count:>7} {tally.seconds:>8.1f} s "
            f"{tally.seconds / tally.count * 1000:>7.1f} ms"
        )
    cores = os.cpu_count() or 1
    print(f"  CPU seconds over the run ({cores} cores x {finished:.0f} s = {cores * finished:.0f} available):")
    for name, seconds in cpu.items():
        print(f"    {name:<56} {seconds:>7.1f} s ({seconds / finished:.0%} of one core)")

    line = {
        "images": images,
        "image_bytes": image_bytes,
        "emulator_delay_seconds": args.delay,
        "upload_workers": args.upload_workers,
        "max_queued": args.max_queued,
        "upload_rate": args.upload_rate,
        "upload_held_seconds": {why: round(seconds, 1) for why, seconds in pace.held.items()},
        "sustained_images_per_second": round(steady, 3),
        "events_read": dict(events.read),
        "queue_depth_max": {name: max(v for v, _ in samples) for name, samples in depths.samples.items()},
        "first_check_delay_seconds": args.first_check_delay,
        "upload_seconds": round(uploaded, 2),
        "end_to_end_seconds": round(finished, 2),
        "images_per_second": round(rate, 3),
        "statuses": dict(statuses),
        "handlers": {f: {"invocations": t.count, "seconds": round(t.seconds, 2)} for f, t in meter.handlers.items()},
        "aws_calls": {
            f"{who} {service}.{operation}": {"count": t.count, "seconds": round(t.seconds, 2)}
            for (who, service, operation), t in sorted(meter.aws.items())
        },
        "ximilar_calls": {
            f"{function} {what}": {"count": t.count, "seconds": round(t.seconds, 2)}
            for (function, what), t in sorted(meter.ximilar.items())
        },
        "waits_p50": {name: round(statistics.median(w.samples), 3) for name, w in meter.waits.items() if w.samples},
        "cpu_seconds": {name: round(seconds, 1) for name, seconds in cpu.items()},
        "started_epoch": round(started_epoch, 3),
    }
    print(json.dumps(line))


if __name__ == "__main__":
    sys.exit(main())
