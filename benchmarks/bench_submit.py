"""Submit benchmark: Ximilar and DynamoDB calls per image for N uploads (cold imports: bench_cold_start).

Runs the real handler against moto in server mode and the emulator, as the tests do, feeding it the
notifications S3 really sent, in batches of the template's SubmitBatchSize. Counts, not seconds, are
the result: wall times on this machine are printed for orientation only.

    .venv/bin/python -m benchmarks.bench_submit --images 1000
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from typing import Any

from tests.support.aws import AwsStack, count_dynamodb_calls, create_stack
from xasync.lambda_runtime import LocalLambdaContext, load_function
from xasync.local_stack import use_local_credentials
from xasync.sample_images import png_bytes
from xasync.servers import emulator_process, moto_server
from xasync.template import load_template
from ximilar_async.values.submissions import SubmitOutcome
from ximilar_emulator import EmulatorControl

TOKEN = "bench-token"  # noqa: S105 - the local emulator's token
ROUTES = "incoming/=upscaler:upscale_2x;incoming/cards/=card-grader:grade"


class RecordingSubmitter:
    """The handler's submitter, keeping each invocation's outcome (images submitted, handed on, in flight)."""

    def __init__(self, inner: Any, outcomes: list[SubmitOutcome]) -> None:
        self.inner, self.outcomes = inner, outcomes

    def submit_uploads(self, *args: Any, **kwargs: Any) -> SubmitOutcome:
        outcome: SubmitOutcome = self.inner.submit_uploads(*args, **kwargs)
        self.outcomes.append(outcome)
        return outcome

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def run_batches(stack: AwsStack, handler: Any, images: int, batch_size: int) -> tuple[int, float]:
    """Deliver every notification (TestEvent included) in batches, each an invocation with Lambda's 60 s.

    Returns (failed messages, seconds).
    """
    pending = stack.receive(images + 1, timeout=120)
    failed, started = 0, time.perf_counter()
    for start in range(0, len(pending), batch_size):
        answer = handler.lambda_handler({"Records": pending[start : start + batch_size]}, LocalLambdaContext())
        failed += len(answer["batchItemFailures"])
    return failed, time.perf_counter() - started


def bench(
    endpoint: str,
    emulator_url: str,
    prefix: str,
    images: int,
    batch_size: int,
    response_delay: float = 0.0,
    concurrency: int | None = None,
) -> dict[str, Any]:
    control = EmulatorControl(emulator_url)
    control.reset()
    control.set_knobs(webhook_drop_rate=1.0)  # webhooks are the webhook function's business
    stack = create_stack(endpoint, load_template(), TOKEN)
    parameters = {"XimilarApiUrl": emulator_url, "XimilarTokenParameterName": stack.token_parameter, "Routes": ROUTES}
    if concurrency is not None:
        parameters["SubmitConcurrency"] = str(concurrency)
    environment = stack.environment("SubmitFunction", **parameters)
    handler = load_function(stack.template, "SubmitFunction", environment)
    counter: Counter[str] = Counter()
    count_dynamodb_calls(handler.submitter.images, counter)
    outcomes: list[SubmitOutcome] = []
    setattr(handler, "submitter", RecordingSubmitter(handler.submitter, outcomes))  # noqa: B010 - a module
    body = png_bytes(8, 8)
    for n in range(images):
        stack.put(f"{prefix}img-{n:05d}.png", body)
    control.set_knobs(response_delay_seconds=response_delay)
    failed, seconds = run_batches(stack, handler, images, batch_size)
    ximilar_calls = len(control.calls())
    return {
        "concurrency": int(environment["SUBMIT_CONCURRENCY"]),
        "images_submitted": sum(outcome.images_submitted for outcome in outcomes),
        "images_handed_on": sum(outcome.handed_on for outcome in outcomes),
        "images": images,
        "failed_messages": failed,
        "ximilar_calls": ximilar_calls,
        "dynamodb_calls": sum(counter.values()),
        "dynamodb_by_operation": dict(counter),
        "seconds": seconds,
        "most_in_flight": control.most_in_flight(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument(
        "--response-delay",
        type=float,
        default=0.0,
        help="seconds the emulator takes to answer each call (slow Ximilar)",
    )
    parser.add_argument(
        "--concurrency",
        type=lambda text: [int(value) for value in text.split(",")],
        default=None,
        help="SubmitConcurrency values to run, comma-separated (default: the template's)",
    )
    args = parser.parse_args()
    use_local_credentials()
    template = load_template()
    batch_size = int(template["Parameters"]["SubmitBatchSize"]["Default"])
    fast = ["--created-delay-seconds", "0.01", "--processing-delay-seconds", "0.01"]
    routes = (("card-grader (10 per request)", "incoming/cards/"), ("upscaler (1 per request)", "incoming/"))
    results = []
    with moto_server() as endpoint, emulator_process(TOKEN, *fast) as emulator_url:
        for concurrency in args.concurrency or [None]:
            for name, prefix in routes:
                result = bench(
                    endpoint, emulator_url, prefix, args.images, batch_size, args.response_delay, concurrency
                )
                results.append((name, result))
    print(
        f"submit benchmark: {args.images} images per run, SQS batches of {batch_size} (one invocation each, "
        f"Lambda's 60 s), Ximilar answering after {args.response_delay} s"
    )
    print(
        f"{'pool':>4} {'route':<30} {'requests':>8} {'failed':>6} {'ximilar/img':>11} {'dynamodb/img':>12} "
        f"{'in flight':>9} {'handed on':>9} {'img/s':>7}  dynamodb calls"
    )
    for name, result in results:
        per_image = result["images"]
        print(
            f"{result['concurrency']:>4} {name:<30} {result['ximilar_calls']:>8} {result['failed_messages']:>6} "
            f"{result['ximilar_calls'] / per_image:>11.3f} {result['dynamodb_calls'] / per_image:>12.3f} "
            f"{result['most_in_flight']:>9} {result['images_handed_on']:>9} "
            f"{result['images_submitted'] / result['seconds']:>7.1f}  "
            f"{result['dynamodb_by_operation']}  ({result['seconds']:.1f} s wall here)"
        )
    print("img/s: images submitted per second of submit invocations (handed on: left to the sweeper, not counted)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
