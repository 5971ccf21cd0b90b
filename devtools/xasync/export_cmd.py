"""`xasync export`: finished images to S3 as JSON Lines by day, for Athena (or DuckDB on a laptop).

What is exported, and how, is `ximilar_async.services.exporter`'s (the scheduled function runs the same code);
this is the command: where the stack is, its options, and a download of the files for DuckDB.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from xasync.target import Target, target_for
from ximilar_async.adapters.s3 import S3ExportObjects
from ximilar_async.services.exporter import Exporter, ExportOutcome
from ximilar_async.values.export_layout import DEFAULT_PREFIX, ExportLocation


def exporter(target: Target, location: ExportLocation) -> Exporter:
    return Exporter(target.storage().queries, S3ExportObjects(target.client("s3")), location)


def download(s3: Any, location: ExportLocation, destination: Path) -> list[Path]:
    """Every part of the export, into `destination` with the same `dt=YYYY-MM-DD/` folders (what DuckDB's
    `hive_partitioning` reads); parts of days no longer exported are removed there too."""
    wanted: dict[Path, str] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=location.bucket, Prefix=location.table_prefix):
        for entry in page.get("Contents", []):
            wanted[destination / entry["Key"].removeprefix(location.table_prefix)] = entry["Key"]
    for stale in set(destination.glob("dt=*/*.json.gz")) - set(wanted):
        stale.unlink()
    for path, key in wanted.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(location.bucket, key, str(path))
    return sorted(wanted)


def summary(outcome: ExportOutcome, location: ExportLocation) -> str:
    kind = "full export" if outcome.full else f"changes since {outcome.since:%Y-%m-%d %H:%M:%S} UTC"
    lines = [
        f"{kind}: {outcome.rows} rows in {len(outcome.days)} day(s), {outcome.parts_written} part(s) written, "
        f"{outcome.parts_deleted} deleted, {outcome.seconds:.1f} s ({outcome.rows_per_second:.0f} rows/s)",
        f"table: {location.table_uri} (dt=YYYY-MM-DD/part-NNNNN.json.gz)",
        f"read from S3: {outcome.results_read_from_s3} result(s) too large for their item, "
        f"{outcome.outputs_sized} copy size(s) the copier had not kept",
    ]
    if outcome.days_removed:
        lines.append(f"days with no row left, removed: {', '.join(outcome.days_removed)}")
    return "\n".join(lines)


@click.command("export")
@click.option("--full", is_flag=True, help="rewrite every day (default: the days changed since the last export)")
@click.option("--bucket", help="bucket of the export (default: the stack's results bucket)")
@click.option("--prefix", default=DEFAULT_PREFIX, show_default=True, help="key prefix of the export")
@click.option(
    "--download",
    "destination",
    type=click.Path(file_okay=False, path_type=Path),
    help="also copy the exported files here (dt=YYYY-MM-DD/ folders), e.g. for DuckDB",
)
@click.option("--stack-name", help="a deployed stack (default: the local stack of `xasync up`)")
def export_command(
    full: bool, bucket: str | None, prefix: str, destination: Path | None, stack_name: str | None
) -> None:
    """Export finished images (DONE, ERROR, FAILED) to S3 as gzipped JSON Lines by day, for Athena."""
    target = target_for(stack_name)
    location = ExportLocation(bucket or target.outputs["ResultsBucketName"], prefix)
    outcome = exporter(target, location).export(full=full)
    click.echo(summary(outcome, location))
    if destination is not None:
        files = download(target.client("s3"), location, destination)
        click.echo(f"{len(files)} file(s) in {destination}")
