"""Sweeper benchmark: items read and API calls for one sweep of N due requests in a large table.

The table holds `--filler` finished request items (not due) and N requests whose webhooks were lost
(Ximilar finished them, no webhook came). One sweep, its clock a few minutes ahead, records them all.

    .venv/bin/python -m benchmarks.bench_sweeper --due 50 --filler 100000
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

from tests.support.aws import count_dynamodb_calls, create_stack, time_shifted
from xasync.lambda_runtime import LocalLambdaContext, load_function
from xasync.local_stack import use_local_credentials
from xasync.sample_images import png_bytes
from xasync.servers import emulator_process, moto_server, wait_for
from xasync.template import load_template
from ximilar_emulator import EmulatorControl

TOKEN = "bench-token"  # noqa: S105 - the local emulator's token


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--due", type=int, default=50)
    parser.add_argument("--filler", type=int, default=100_000)
    args = parser.parse_args()
    use_local_credentials()
    template = load_template()
    fast = ["--created-delay-seconds", "0.01", "--processing-delay-seconds", "0.01", "--webhook-drop-rate", "1"]
    with moto_server() as endpoint, emulator_process(TOKEN, *fast) as emulator_url:
        control = EmulatorControl(emulator_url)
        stack = create_stack(endpoint, template, TOKEN)
        parameters = {"XimilarApiUrl": emulator_url, "XimilarTokenParameterName": stack.token_parameter}
        submit = load_function(template, "SubmitFunction", stack.environment("SubmitFunction", **parameters))
        for n in range(args.due):
            stack.put(f"incoming/lost-{n:04d}.png", png_bytes(8, 8))
        submit.lambda_handler({"Records": stack.receive_uploads(args.due, timeout=60)}, LocalLambdaContext())

        started = time.perf_counter()
        now = datetime.now(UTC)
        requests_table = stack.tables.requests
        with requests_table.batch_write() as batch:
            for n in range(args.filler):
                batch.save(
                    requests_table(
                        f"finished-{n:06d}",
                        request_type="upscaler",
                        endpoint="upscale_2x",
                        status="DONE",
                        ximilar_status="DONE",
                        request_id=f"old-{n}",
                        images={},
                        created_at=now,
                        updated_at=now,
                    )
                )
        print(f"filled the requests table with {args.filler} finished items in {time.perf_counter() - started:.0f} s")
        wait_for(lambda: all(c["status"] == 201 for c in control.calls()), what="submissions")
        total = stack.client("dynamodb").describe_table(TableName=stack.requests_table)["Table"]["ItemCount"]

        sweeper_module = load_function(template, "SweeperFunction", stack.environment("SweeperFunction", **parameters))
        counter: Counter[str] = Counter()
        count_dynamodb_calls(sweeper_module.sweeper.requests, counter)
        scanned: list[int] = []
        sweeper_module.sweeper.requests.tables.requests._get_connection().connection.client.meta.events.register(
            "after-call.dynamodb.Query", lambda parsed, **_: scanned.append(parsed.get("ScannedCount", 0))
        )
        sweeper = time_shifted(sweeper_module.sweeper, timedelta(minutes=3))  # past the first check
        calls_before = len(control.calls())
        started = time.perf_counter()
        outcome = sweeper.sweep(lambda: 120_000)
        seconds = time.perf_counter() - started
        ximilar = Counter(
            "status" if c["path"].endswith("/status") else "details" for c in control.calls()[calls_before:]
        )
        done = sum(1 for image in stack.tables.images.scan() if image.status == "DONE")
        print(f"one sweep over a requests table of {total} items with {args.due} due (webhooks lost):")
        print(f"  due-index items read: {sum(scanned)} in {len(scanned)} Query calls (one per shard)")
        print(f"  DynamoDB calls: {sum(counter.values())} {dict(counter)}")
        print(f"  Ximilar calls: {sum(ximilar.values())} {dict(ximilar)}")
        print(f"  requests taken {outcome.taken}, images recorded {outcome.recorded}, images DONE now {done}")
        print(f"  ({seconds:.1f} s wall here, moto server on loopback)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
