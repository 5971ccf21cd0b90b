"""Local pipeline benchmark: wall time from upload to last result for N images on the embedded stack.

Images are spread over the four request types (a quarter each), put with boto3 as `aws s3 cp` would;
the clock stops when every image has a terminal status. The emulator's processing delays are its
defaults (0.2 s + 0.3 s per request), so this measures the pipeline's own overhead on this machine.
`bench_throughput` runs the same upload without those delays and says where the time goes.

    .venv/bin/python -m benchmarks.bench_local --images 100
"""

from __future__ import annotations

import argparse
import sys
import time

from benchmarks.local_run import mixed_keys, statuses, upload, wait_until_terminal
from xasync import local_stack
from xasync.sample_images import png_bytes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100)
    args = parser.parse_args()
    with local_stack.running(parameters={"LogLevel": "WARNING"}) as local:
        keys_ = mixed_keys(args.images, "bench")
        started = time.perf_counter()
        upload(local, keys_, png_bytes(64, 48))
        uploaded = time.perf_counter() - started
        finished = wait_until_terminal(local, keys_, timeout=600) - started
        print(f"{len(keys_)} images ({len(keys_) // 4} per request type) on the embedded stack:")
        print(
            f"  upload: {uploaded:.1f} s; upload to last result: {finished:.1f} s; "
            f"statuses {dict(statuses(local, keys_))}"
        )
        sqs_invocations = len(local.invocations.answers.get("SubmitFunction", []))
        webhooks = len(local.invocations.answers.get("WebhookFunction", []))
        print(f"  submit invocations: {sqs_invocations}, webhook invocations: {webhooks}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
