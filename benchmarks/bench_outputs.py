"""Outputs benchmark: one large artifact copied from the emulator into S3 (moto server), peak memory measured.

The copy runs in a fresh interpreter, as a cold Lambda would: the outputs function's own copier
(`runtime.output_copier`'s `S3ArtifactCopier` with its TransferConfig) streams the emulator's N-MB
artifact (`GET /_emulator/blob/<N>.jpg`, itself streamed) into a bucket. The child reports its peak
RSS (`ru_maxrss`: imports, clients and the copy) and the copy's own peak Python allocations
(`tracemalloc`); the parent checks the object's size in S3.

    .venv/bin/python -m benchmarks.bench_outputs --megabytes 300
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import boto3

from xasync.local_stack import use_local_credentials
from xasync.servers import emulator_process, moto_server

TOKEN = "bench-token"  # noqa: S105 - the local emulator's token
MEMORY_LIMIT_MB = 200

CHILD = """
import json, resource, sys, time, tracemalloc
import boto3, requests
from botocore.config import Config
from ximilar_async import runtime
from ximilar_async.adapters.s3 import S3ArtifactCopier

url, bucket = sys.argv[1], sys.argv[2]
copier = S3ArtifactCopier(
    boto3.client("s3", config=Config(signature_version="s3v4")),
    requests.Session(),
    runtime.copy_transfer_config(),
)
before_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
tracemalloc.start()
started = time.monotonic()
copied = copier.copy(url, bucket, lambda extension: "outputs/big.upscaled" + extension, {"record-id": "bench"})
seconds = time.monotonic() - started
_, traced_peak = tracemalloc.get_traced_memory()
print(json.dumps({
    "uri": copied.uri,
    "bytes": copied.size_bytes,
    "seconds": seconds,
    "rss_before_copy_mb": before_mb,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "copy_traced_peak_mb": traced_peak / 2**20,
}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=int, default=300)
    args = parser.parse_args()
    use_local_credentials()
    with moto_server() as endpoint, emulator_process(TOKEN) as emulator_url:
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="bench-outputs")
        started = time.monotonic()
        child = subprocess.run(  # noqa: S603 - this interpreter, a fixed program
            [sys.executable, "-c", CHILD, f"{emulator_url}/_emulator/blob/{args.megabytes}.jpg", "bench-outputs"],
            env={**os.environ, "AWS_ENDPOINT_URL": endpoint},
            capture_output=True,
            text=True,
            check=False,
        )
        if child.returncode != 0:
            print(child.stderr, file=sys.stderr)
            return 1
        figures = json.loads(child.stdout.strip().splitlines()[-1])
        head = s3.head_object(Bucket="bench-outputs", Key="outputs/big.upscaled.jpg")
    expected = args.megabytes * 2**20
    print(f"artifact: {args.megabytes} MB streamed from the emulator into S3 (moto server), multipart")
    print(f"  copied          {figures['bytes']:>12,} bytes in {figures['seconds']:.1f} s ({figures['uri']})")
    print(f"  in S3           {head['ContentLength']:>12,} bytes, {head['ContentType']}")
    print(f"  RSS before copy {figures['rss_before_copy_mb']:>9.1f} MB (interpreter, boto3, requests, the layer)")
    print(f"  peak RSS        {figures['peak_rss_mb']:>9.1f} MB (limit {MEMORY_LIMIT_MB} MB)")
    print(f"  copy's peak Python allocations (tracemalloc) {figures['copy_traced_peak_mb']:.1f} MB")
    print(f"  wall time with servers {time.monotonic() - started:.1f} s")
    ok = head["ContentLength"] == expected == figures["bytes"] and figures["peak_rss_mb"] < MEMORY_LIMIT_MB
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
