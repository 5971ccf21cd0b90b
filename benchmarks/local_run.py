"""What the benchmarks on the local stack share: its routes, a mixed upload, the wait for terminal statuses.

Used by bench_local, bench_throughput, bench_cost and bench_chaos, so they upload and wait the same way.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from xasync import local_stack
from xasync.servers import wait_for
from ximilar_async.adapters.dynamodb.models import ImageItem, bind_tables
from ximilar_async.values import identity
from ximilar_async.values.statuses import TERMINAL_STATUSES

TERMINAL = frozenset(status.value for status in TERMINAL_STATUSES)


def routes() -> list[tuple[str, str]]:
    """(prefix, request type) of the local stack's routes, read from its Routes parameter."""
    found = []
    for entry in local_stack.LOCAL_PARAMETERS["Routes"].split(";"):
        prefix, target = entry.split("=", 1)
        found.append((prefix, target.split(":", 1)[0]))
    return found


PREFIXES = tuple(prefix for prefix, _ in routes())


def mixed_keys(count: int, name: str) -> list[str]:
    """`count` keys spread over the routes in turn (a quarter per request type with the local four)."""
    return [f"{PREFIXES[n % len(PREFIXES)]}{name}-{n:05d}.png" for n in range(count)]


def upload(
    local: local_stack.LocalStack,
    keys_: Sequence[str],
    body: bytes,
    workers: int = 1,
    pace: Callable[[], None] | None = None,
) -> dict[str, float]:
    """PUT each key into the input bucket, `workers` at a time; returns each key's upload time (epoch s).

    `aws s3 cp --recursive` puts 10 at a time (its max_concurrent_requests). `pace`, if given, is called
    by a worker before each PUT and returns when that PUT may go (bench_throughput holds uploads back
    with it).
    """
    s3 = local.client("s3")  # boto3 clients are thread-safe
    bucket = local.outputs["InputBucketName"]
    uploaded: dict[str, float] = {}

    def put(key: str) -> None:
        if pace is not None:
            pace()
        s3.put_object(Bucket=bucket, Key=key, Body=body)
        uploaded[key] = time.time()

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(put, keys_))
    return uploaded


def images_model(local: local_stack.LocalStack) -> type[ImageItem]:
    return bind_tables(local.outputs["ImagesTableName"], local.outputs["RequestsTableName"]).images


def image_items(local: local_stack.LocalStack, keys_: Sequence[str]) -> list[ImageItem]:
    bucket = local.outputs["InputBucketName"]
    return list(images_model(local).batch_get([identity.image_uri(bucket, key) for key in keys_]))


def statuses(local: local_stack.LocalStack, keys_: Sequence[str]) -> Counter[str]:
    return Counter(item.status for item in image_items(local, keys_))


def wait_until_terminal(local: local_stack.LocalStack, keys_: Sequence[str], timeout: float) -> float:
    """Wait until every key's image has a terminal status; returns when that was seen (perf_counter).

    Only the images not yet terminal are read again, and less often while many are left (a poll reads
    up to 100 items per call): about two reads a second at most, so the wait itself costs moto little,
    and 0.2 s between polls at the end, when the last images finish.
    """
    pending = list(keys_)

    def done() -> bool:
        nonlocal pending
        finished = {item.key for item in image_items(local, pending) if item.status in TERMINAL}
        pending = [key for key in pending if key not in finished]
        if pending:
            time.sleep(min(60.0, len(pending) / 200))
        return not pending

    wait_for(done, timeout=timeout, interval=0.2, what=f"every image of {len(keys_)} to end")
    return time.perf_counter()
