"""Results out for SQL on the local stack: the export's files read back with DuckDB, and README's three queries.

Card grades and upscaled outputs come through the real pipeline (uploads, the emulator, the copier); failures
on earlier days, and a result too large for its item (in S3), are written through the data layer's models,
since the pipeline stamps only today. The scheduled function (ExportSchedule on: every second here) exports
what changes; `xasync export --full` rewrites every day. DuckDB stands in for Athena: the queries are the
README's own SQL text, over a view with the Glue table's columns.
"""

from __future__ import annotations

import io
import json
import re
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
from click.testing import CliRunner
from PIL import Image

from tests.support.stack_items import image
from xasync import local_stack
from xasync.export_cmd import download, export_command
from xasync.local_stack import LocalStack
from xasync.sample_images import png_bytes
from xasync.servers import wait_for
from xasync.template import PROJECT_ROOT
from ximilar_async.adapters.dynamodb import keys
from ximilar_async.adapters.dynamodb.models import bind_tables
from ximilar_async.values import identity
from ximilar_async.values.export_layout import COLUMNS, ExportLocation
from ximilar_async.values.statuses import Status
from ximilar_emulator.processing import card_grader_result

CARDS = [f"incoming/cards/card-{n}.png" for n in range(8)]  # card-grader (the local stack's routes)
UPSCALED = {"incoming/photos/a.png": (16, 12), "incoming/photos/b.png": (16, 12), "incoming/photos/c.png": (20, 10)}
EMPTY, TEXT = "incoming/photos/empty.png", "incoming/notes.txt"
DUCKDB_TYPES = {"string": "VARCHAR", "bigint": "BIGINT", "int": "INTEGER", "double": "DOUBLE", "timestamp": "TIMESTAMP"}


def card_bytes(n: int) -> bytes:
    return png_bytes(20 + n, 14, color=(10 * n, 90, 200))


def grade_of(data: bytes) -> float:
    """The grade the emulator gives these bytes (its own function, on the same image)."""
    return float(card_grader_result(data, Image.open(io.BytesIO(data)), "grade")["grades"]["final"])


def readme_queries() -> list[str]:
    """The three ```sql blocks of README (graded 9 or higher; failures by reason per day; upscaled by size)."""
    blocks = re.findall(r"```sql\n(.*?)```", (PROJECT_ROOT / "README.md").read_text(), re.DOTALL)
    assert len(blocks) == 3, "README shows three SQL queries"
    return blocks


def query(folder: Path, sql: str) -> list[tuple[Any, ...]]:
    """`sql` on the exported files of `folder`, as Athena would run it on the Glue table `images`."""
    connection = duckdb.connect()
    columns = ", ".join(f"'{name}': '{DUCKDB_TYPES.get(kind, kind.upper())}'" for name, kind in COLUMNS)
    connection.execute(
        f"CREATE VIEW images AS SELECT * FROM read_json('{folder}/dt=*/*.json.gz', format = 'newline_delimited', "  # noqa: S608 - a test folder
        f"compression = 'gzip', hive_partitioning = true, hive_types = {{'dt': 'VARCHAR'}}, columns = {{{columns}}})"
    )
    return connection.execute(sql).fetchall()


@pytest.fixture(scope="module")
def local() -> Iterator[LocalStack]:
    parameters = {"LogLevel": "WARNING", "ExportSchedule": "rate(1 day)"}
    with local_stack.running(parameters=parameters, sweep_every=1.0, retry_delay=1) as running:
        yield running


def seed_through_the_models(local: LocalStack, now: datetime) -> dict[str, Any]:
    """Finished images the pipeline cannot date in the past: failures 2 and 3 days ago, a card graded 9.5
    today whose result is in S3 (`result_s3_uri`), and an upscaled copy stored before the copier kept its
    size (the export asks S3 for it). Returns what the queries should find of them."""
    bucket, results_bucket = local.outputs["InputBucketName"], local.outputs["ResultsBucketName"]
    shards = int(local.environments["SweeperFunction"]["INDEX_SHARDS"])
    tables = bind_tables(local.outputs["ImagesTableName"], local.outputs["RequestsTableName"], host=local.aws_endpoint)
    failures = [
        (3, "old/a.txt", Status.FAILED, "not an image (text/plain)"),
        (3, "old/b.txt", Status.FAILED, "not an image (text/plain)"),
        (2, "old/c.png", Status.ERROR, "400: Unable to load image"),
        (2, "old/d.png", Status.FAILED, "request FAILED at Ximilar"),
    ]
    big = "incoming/cards/big-result.png"
    record_id, request_id = identity.record_id(bucket, big, "v1"), "req-big"
    result_key = f"results/{record_id}/{request_id}.json"
    record = {"_id": record_id, "_width": 600, "_height": 800, "grades": {"final": 9.5, "condition": "Mint"}}
    local.client("s3").put_object(Bucket=results_bucket, Key=result_key, Body=json.dumps(record).encode())

    def put_image(key: str, status: Status, when: datetime, **fields: Any) -> None:
        uri = identity.image_uri(bucket, key)
        tables.images(
            uri,
            bucket=bucket,
            key=key,
            version="v1",
            sequencer="0" * 16,
            size_bytes=100,
            record_id=identity.record_id(bucket, key, "v1"),
            status=status.value,
            status_shard=keys.status_shard(status, uri, shards),
            created_at=when,
            updated_at=when,
            **fields,
        ).save()

    for days, key, status, reason in failures:
        put_image(key, status, now - timedelta(days=days), status_reason=reason)
    graded = {"request_type": "card-grader", "endpoint": "grade", "request_id": request_id}
    put_image(big, Status.DONE, now, result_s3_uri=f"s3://{results_bucket}/{result_key}", **graded)
    unsized, copy = "incoming/photos/unsized.png", b"an upscaled copy stored before sizes were kept"
    copy_uri = f"s3://{results_bucket}/outputs/photos/unsized.upscaled.jpg"
    local.client("s3").put_object(Bucket=results_bucket, Key=copy_uri.split("/", 3)[3], Body=copy)
    put_image(
        unsized,
        Status.DONE,
        now,
        request_type="upscaler",
        endpoint="upscale_2x",
        request_id="req-unsized",
        result={"_upscaled_width": 900, "_upscaled_height": 700},
        outputs={"upscaled": {"uri": copy_uri, "state": "STORED"}},  # no size_bytes
    )
    return {
        "failures": Counter(((now - timedelta(days=d)).date().isoformat(), s.value, r) for d, _, s, r in failures),
        "graded": (big, 9.5),
        "upscaled": ((900, 700), len(copy)),
        "rows": len(failures) + 2,
    }


def item_value(item: dict[str, Any], name: str) -> Any:
    value = item.get(name)
    return None if value is None else next(iter(value.values()))


def test_the_three_queries_answer_from_the_export_of_the_scheduled_function_and_of_xasync_export(
    local: LocalStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given card-grader and upscaler uploads finished by the pipeline, two uploads it failed, and older failures
    now = datetime.now(UTC)
    s3, bucket = local.client("s3"), local.outputs["InputBucketName"]
    uploads = {key: card_bytes(n) for n, key in enumerate(CARDS)}
    uploads |= {key: png_bytes(*size) for key, size in UPSCALED.items()}
    uploads |= {EMPTY: b"", TEXT: b"just notes"}
    for key, body in uploads.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    seeded = seed_through_the_models(local, now)

    def settled() -> bool:
        items = {key: image(local, key) for key in uploads}
        finished = all(item_value(item, "status") in {"DONE", "ERROR", "FAILED"} for item in items.values())
        stored = all(
            item_value(items[key], "outputs")
            and item_value(items[key], "outputs")["upscaled"]["M"]["state"]["S"] == "STORED"
            for key in UPSCALED
        )
        return finished and stored

    wait_for(settled, timeout=30, interval=0.25, what="every upload finished and its upscaled copy stored")
    items = {key: image(local, key) for key in uploads}
    grades = {key: grade_of(uploads[key]) for key in CARDS}
    assert {item_value(items[key], "status") for key in CARDS} == {"DONE"}
    high = sorted(
        [(key, grade) for key, grade in grades.items() if grade >= 9] + [seeded["graded"]],
        key=lambda kg: (-kg[1], kg[0]),
    )
    assert 1 < len(high) < len(CARDS) + 1, "some cards grade 9 or more, some less"
    upscaled: Counter[tuple[int, int]] = Counter()
    stored_bytes: Counter[tuple[int, int]] = Counter()
    for key, (width, height) in UPSCALED.items():
        output_uri = item_value(items[key], "outputs")["upscaled"]["M"]["uri"]["S"]
        output_bucket, output_key = output_uri.removeprefix("s3://").split("/", 1)
        upscaled[(2 * width, 2 * height)] += 1
        stored_bytes[(2 * width, 2 * height)] += s3.head_object(Bucket=output_bucket, Key=output_key)["ContentLength"]
    seeded_size, seeded_bytes = seeded["upscaled"]
    upscaled[seeded_size] += 1
    stored_bytes[seeded_size] += seeded_bytes
    today = now.date().isoformat()
    failures = seeded["failures"] + Counter(
        (today, item_value(items[key], "status"), item_value(items[key], "status_reason")) for key in (EMPTY, TEXT)
    )
    graded_sql, failures_sql, upscaled_sql = readme_queries()
    location = ExportLocation(local.outputs["ResultsBucketName"])
    expected_upscaled = sorted(
        ((w, h, upscaled[(w, h)], stored_bytes[(w, h)]) for w, h in upscaled), key=lambda row: -row[0] * row[1]
    )

    def graded(folder: Path) -> list[tuple[str, float]]:
        return [(row[0], row[1]) for row in query(folder, graded_sql)]

    def by_size(folder: Path) -> list[tuple[int, int, int, int]]:
        return [(row[0], row[1], row[2], row[3]) for row in query(folder, upscaled_sql)]

    # When the scheduled function has exported what changed (it runs every second here)
    function_export = tmp_path / "function"

    def function_exported() -> bool:
        download(s3, location, function_export)
        return (
            graded(function_export) == [(key, grade) for key, grade in high]
            and by_size(function_export) == expected_upscaled
        )

    wait_for(function_exported, timeout=20, interval=0.5, what="the scheduled export of today's results")

    # And `xasync export --full` rewrites every day, including the days before the function's first run
    monkeypatch.setattr(local_stack, "STATE_FILE", tmp_path / "local.json")
    local_stack.write_state(local, tmp_path / "local.json")
    cli_export = tmp_path / "cli"
    result = CliRunner().invoke(export_command, ["--full", "--download", str(cli_export)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "full export:" in result.output
    # (S3 is asked only for the sizes the copier did not keep: the seeded copy's; and the one result in S3)
    assert "read from S3: 1 result(s) too large for their item, 1 copy size(s) the copier had not kept" in result.output

    # Then the three queries answer from the files
    assert graded(cli_export) == [(key, grade) for key, grade in high]
    assert Counter({(row[0], row[1], row[2]): row[3] for row in query(cli_export, failures_sql)}) == failures
    assert by_size(cli_export) == expected_upscaled
    # And each image is one row, with no presigned URL in it
    rows = query(cli_export, "SELECT uri, result FROM images")
    assert len(rows) == len({uri for uri, _ in rows}) == len(uploads) + seeded["rows"]
    assert not any("X-Amz-" in (result or "") for _, result in rows)
    assert local.invocations.errors.get("ExportFunction", []) == []
    assert any(answer["rows"] for answer in local.invocations.answers["ExportFunction"])
