"""Results page benchmark: time to first render with N images in the images table.

N image items are written straight into the table (pynamodb batch writes on moto server; 90% DONE, the
rest FAILED, ERROR and PROCESSING, over the last day), with objects for the newest page. Then the page
(`xasync ui`'s app, on a free port) is timed server-side (the first page: one `by_status` page per
shard, one BatchGet, the COUNT queries, presigning) and, when Debian's chromium is installed, in
headless Chromium (navigation to first contentful paint, and to every thumbnail of the page loaded).

    .venv/bin/python -m benchmarks.bench_ui --images 10000
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import requests
from botocore.config import Config

from tests.support.aws import create_stack
from xasync import ui
from xasync.local_stack import use_local_credentials
from xasync.sample_images import png_bytes
from xasync.servers import moto_server, wait_for
from xasync.template import load_template
from ximilar_async.adapters.dynamodb import keys
from ximilar_async.adapters.dynamodb.queries import ResultQueries
from ximilar_async.values import identity
from ximilar_async.values.statuses import Status

STATUS_MIX = [Status.DONE] * 90 + [Status.FAILED] * 5 + [Status.ERROR] * 3 + [Status.PROCESSING] * 2
TYPES = ["upscaler", "flows", "card-grader", "collectibles-recognition"]


def seed(queries: ResultQueries, bucket: str, count: int, now: datetime) -> list[str]:
    """`count` image items, newest first in the returned keys; one batch write."""
    images = queries.tables.images
    written = []
    with images.batch_write() as batch:
        for n in range(count):
            key = f"incoming/bench/{n:06d} photo+ü.png"
            uri = identity.image_uri(bucket, key)
            status = STATUS_MIX[n % len(STATUS_MIX)]
            at = now - timedelta(seconds=5 * n)
            done = status is Status.DONE
            batch.save(
                images(
                    uri,
                    bucket=bucket,
                    key=key,
                    version="etag",
                    sequencer="0" * 64,
                    record_id=identity.record_id(bucket, key, "etag"),
                    status=status.value,
                    status_reason=None if done else "bench: not done",
                    status_shard=keys.status_shard(status, uri, queries.shards),
                    request_type=TYPES[n % len(TYPES)],
                    request_id=f"request-{n // 10}",
                    size_bytes=100,
                    result={"_width": 32, "_height": 24, "_upscaled_width": 64, "_upscaled_height": 48}
                    if done
                    else None,
                    created_at=at,
                    updated_at=at,
                )
            )
            written.append(key)
    return written


def one_query(queries: ResultQueries) -> float:
    images = queries.tables.images
    started = time.perf_counter()
    list(images.by_status.query(f"{Status.DONE.value}#00", scan_index_forward=False, limit=ui.PAGE_SIZE))
    return time.perf_counter() - started


def timed(url: str, runs: int) -> list[float]:
    figures = []
    for _ in range(runs):
        started = time.perf_counter()
        answer = requests.get(url, timeout=60)
        figures.append(time.perf_counter() - started)
        answer.raise_for_status()
    return figures


def in_browser(url: str, runs: int, thumbnails: int) -> dict[str, float] | None:
    chromium = shutil.which("chromium")
    if chromium is None:
        print("  browser: skipped (no chromium binary; `apt-get install -y chromium`)")
        return None
    from playwright.sync_api import sync_playwright

    paint, loaded = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        try:
            for _ in range(runs):
                page = browser.new_page(viewport={"width": 1400, "height": 4000})  # every card in view
                started = time.perf_counter()
                page.goto(url)

                def all_loaded(page: Any = page) -> bool:
                    count: int = page.evaluate(
                        "() => Array.from(document.querySelectorAll('img.input'))"
                        ".filter(img => img.complete && img.naturalWidth > 0).length"
                    )
                    return count >= thumbnails

                wait_for(all_loaded, timeout=60, interval=0.01, what="every thumbnail")
                loaded.append(time.perf_counter() - started)
                paint.append(
                    page.evaluate("() => performance.getEntriesByName('first-contentful-paint')[0].startTime / 1000")
                )
                page.close()
        finally:
            browser.close()
    return {"first_contentful_paint_s": statistics.median(paint), "all_thumbnails_s": statistics.median(loaded)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    use_local_credentials()
    template = load_template()
    shards = int(template["Parameters"]["IndexShards"]["Default"])
    with moto_server() as endpoint:
        stack = create_stack(endpoint, template, "bench-token")
        queries = ResultQueries(stack.tables, shards)
        started = time.perf_counter()
        written = seed(queries, stack.bucket, args.images, datetime.now(UTC))
        seeded = time.perf_counter() - started
        s3 = boto3.client("s3", endpoint_url=endpoint, config=Config(signature_version="s3v4"))
        body = png_bytes(32, 24)
        for key in written[: ui.PAGE_SIZE]:  # the first page's objects; the others are never fetched
            s3.put_object(Bucket=stack.bucket, Key=key, Body=body)
        source = ui.PageSource(queries, s3, stack.bucket)
        with ui.serving(ui.create_app(source)) as url:
            first = timed(url, args.runs)
            api = timed(f"{url}api/images", args.runs)
            counts = timed(f"{url}api/counts", args.runs)
            failed = timed(f"{url}?status=FAILED", args.runs)
            typed = timed(f"{url}?type=card-grader", args.runs)
            browser = in_browser(url, args.runs, min(ui.PAGE_SIZE, len(written)))
        figures = {
            "images": args.images,
            "shards": shards,
            "seed_s": round(seeded, 1),
            "first_page_s": round(statistics.median(first), 3),
            "first_page_json_s": round(statistics.median(api), 3),
            "counts_s": round(statistics.median(counts), 3),
            "one_index_query_s": round(one_query(queries), 3),
            "failed_page_s": round(statistics.median(failed), 3),
            "type_filtered_page_s": round(statistics.median(typed), 3),
            **({name: round(value, 3) for name, value in browser.items()} if browser else {}),
        }
        print(f"{args.images} images ({shards} shards per status), page of {ui.PAGE_SIZE}, median of {args.runs}:")
        print(f"  seeded in {seeded:.1f} s (batch writes on moto server)")
        print(
            f"  server, first page (HTML): {figures['first_page_s'] * 1000:.0f} ms; as JSON: "
            f"{figures['first_page_json_s'] * 1000:.0f} ms; counts by status (fetched after): "
            f"{figures['counts_s'] * 1000:.0f} ms"
        )
        print(
            f"  one by_status query (limit {ui.PAGE_SIZE}) on moto: {figures['one_index_query_s'] * 1000:.0f} ms "
            f"(moto walks the whole table per index query; the first page makes {6 * shards})"
        )
        print(
            f"  server, status=FAILED: {figures['failed_page_s'] * 1000:.0f} ms; type=card-grader: "
            f"{figures['type_filtered_page_s'] * 1000:.0f} ms"
        )
        if browser:
            print(
                f"  browser, first contentful paint: {browser['first_contentful_paint_s'] * 1000:.0f} ms; "
                f"every thumbnail of the page loaded: {browser['all_thumbnails_s'] * 1000:.0f} ms"
            )
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
