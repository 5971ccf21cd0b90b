"""Webhook benchmark: DynamoDB calls per webhook and warm handler latency, on moto server and the emulator.

Submits N requests of 10 records through the real submit handler, lets the emulator finish them
(its own webhooks dropped), then delivers each DONE payload to the warm webhook handler as the HTTP
API would (payload 2.0, signed headers), twice: the first delivery and a duplicate. The webhook
records what Ximilar answers (the default `WebhookResultSource`), so a first delivery costs one GET.

    .venv/bin/python -m benchmarks.bench_webhook --requests 50
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections import Counter
from typing import Any

import requests

from tests.support.aws import count_dynamodb_calls, create_stack, is_test_event
from xasync.lambda_runtime import LocalLambdaContext, load_function
from xasync.local_stack import use_local_credentials
from xasync.sample_images import png_bytes
from xasync.servers import emulator_process, moto_server, wait_for
from xasync.template import load_template
from ximilar_emulator import EmulatorControl

TOKEN = "bench-token"  # noqa: S105 - the local emulator's token


def webhook_event(payload: bytes, headers: dict[str, str]) -> dict[str, Any]:
    return {
        "version": "2.0",
        "routeKey": "POST /webhook",
        "rawPath": "/webhook",
        "rawQueryString": "",
        "headers": {"content-type": "application/json", **{k.lower(): v for k, v in headers.items()}},
        "requestContext": {
            "http": {"method": "POST", "path": "/webhook", "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1"},
            "requestId": "bench",
            "routeKey": "POST /webhook",
            "stage": "$default",
        },
        "body": payload.decode(),
        "isBase64Encoded": False,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args()
    use_local_credentials()
    template = load_template()
    fast = ["--created-delay-seconds", "0.01", "--processing-delay-seconds", "0.01", "--webhook-drop-rate", "1"]
    with moto_server() as endpoint, emulator_process(TOKEN, *fast) as emulator_url:
        stack = create_stack(endpoint, template, TOKEN)
        parameters = {
            "XimilarApiUrl": emulator_url,
            "XimilarTokenParameterName": stack.token_parameter,
            "Routes": "incoming/=flows:bench-flow",
        }
        submit_env = stack.environment("SubmitFunction", **parameters)
        submit = load_function(template, "SubmitFunction", submit_env)
        images = args.requests * 10
        for n in range(images):
            stack.put(f"incoming/img-{n:05d}.png", png_bytes(8, 8))
        notifications = [n for n in stack.receive(images + 1, timeout=120) if not is_test_event(n)]
        for start in range(0, len(notifications), 100):  # full 10-record requests
            submit.lambda_handler({"Records": notifications[start : start + 100]}, LocalLambdaContext())
        # Ximilar's id of each request is on its request item (an image gets it with its result).
        submissions = {item.request_id: item.submission_id for item in stack.tables.requests.scan() if item.request_id}

        webhook = load_function(template, "WebhookFunction", stack.environment("WebhookFunction", **parameters))
        counter: Counter[str] = Counter()
        count_dynamodb_calls(webhook.receiver.recorder.images, counter)
        auth = {"Authorization": f"Token {TOKEN}"}

        def details(request_id: str) -> bytes | None:
            answer = requests.get(f"{emulator_url}/account/v2/request/{request_id}", headers=auth, timeout=5)
            return answer.content if answer.json()["status"] == "DONE" else None

        events = []
        for request_id, submission_id in submissions.items():
            body = wait_for(lambda: details(request_id), timeout=60, what="DONE")  # noqa: B023 - called at once
            events.append(webhook_event(body, stack.auth.headers(submission_id)))

        control = EmulatorControl(emulator_url)
        ximilar_calls_before = len(control.calls())
        webhook.lambda_handler(events[0], LocalLambdaContext())  # cold start and first secret fetch
        counter.clear()
        first: list[float] = []
        duplicate: list[float] = []
        for latencies, label in ((first, "first"), (duplicate, "duplicate")):
            calls_before = sum(counter.values())
            for event in events[1:]:
                started = time.perf_counter()
                answer = webhook.lambda_handler(event, LocalLambdaContext())
                latencies.append(time.perf_counter() - started)
                assert answer["statusCode"] == 200, answer
            calls = sum(counter.values()) - calls_before
            print(
                f"{label} deliveries: {len(events) - 1} webhooks of 10 records, {calls} DynamoDB calls "
                f"({calls / (len(events) - 1):.1f} per webhook, {calls / ((len(events) - 1) * 10):.2f} per image)"
            )
        print(f"DynamoDB calls by operation: {dict(counter)}")
        for label, latencies in (("first", first), ("duplicate", duplicate)):
            ordered = sorted(latencies)
            print(
                f"warm handler latency, {label} delivery (moto server on loopback): "
                f"median {statistics.median(ordered) * 1000:.1f} ms, "
                f"p95 {ordered[math.ceil(len(ordered) * 0.95) - 1] * 1000:.1f} ms, max {ordered[-1] * 1000:.1f} ms"
            )
        ximilar_calls = len(control.calls()) - ximilar_calls_before
        print(
            f"Ximilar calls made by the webhook: {ximilar_calls} for {len(events)} requests delivered twice "
            f"({len(events)} expected: one GET /request/<id> per first delivery, none for a duplicate)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
