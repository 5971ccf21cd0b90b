"""Local pipeline benchmark: wall time from upload to last result for N images on the embedded stack.

Images are spread over the four request types (a quarter each), put with boto3 as `aws s3 cp` would;
the clock stops when every image has a terminal status. The emulator's processing delays are its
defaults (0.2 s + 0.3 s per request), so this measures the pipeline's own overhead on this machine.

    .venv/bin/python -m benchmarks.bench_local --images 100
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter

from xasync import local_stack
from xasync.sample_images import png_bytes
from xasync.servers import wait_for
from ximilar_async import keys
from ximilar_async.dal.models import bind_tables
from ximilar_async.statuses import TERMINAL_STATUSES

PREFIXES = ("incoming/", "incoming/cards/", "incoming/collectibles/", "incoming/flows/")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100)
    args = parser.parse_args()
    with local_stack.running(parameters={"LogLevel": "WARNING"}) as local:
        s3 = local.client("s3")
        bucket = local.outputs["InputBucketName"]
        images = bind_tables(local.outputs["ImagesTableName"], local.outputs["RequestsTableName"]).images
        keys_ = [f"{PREFIXES[n % 4]}bench-{n:04d}.png" for n in range(args.images)]
        body = png_bytes(64, 48)
        terminal = {status.value for status in TERMINAL_STATUSES}
        started = time.perf_counter()
        for key in keys_:
            s3.put_object(Bucket=bucket, Key=key, Body=body)
        uploaded = time.perf_counter() - started

        def statuses() -> Counter[str]:
            found = images.batch_get([keys.image_uri(bucket, key) for key in keys_])
            return Counter(item.status for item in found)

        wait_for(
            lambda: sum(c for s, c in statuses().items() if s in terminal) == len(keys_),
            timeout=600,
            interval=0.2,
            what="every image",
        )
        finished = time.perf_counter() - started
        print(f"{len(keys_)} images ({len(keys_) // 4} per request type) on the embedded stack:")
        print(f"  upload: {uploaded:.1f} s; upload to last result: {finished:.1f} s; statuses {dict(statuses())}")
        sqs_invocations = len(local.invocations.answers.get("SubmitFunction", []))
        webhooks = len(local.invocations.answers.get("WebhookFunction", []))
        print(f"  submit invocations: {sqs_invocations}, webhook invocations: {webhooks}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
