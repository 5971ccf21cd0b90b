"""What an export writes, and where: one flat, typed row per finished image (`export_row`), in gzipped
JSON Lines parts under one Hive-style partition per UTC day (`ExportLocation`). `exporting` runs it.

No credential leaves in a row: every http(s) URL in a record loses its query string (Ximilar's hosted
artifact URLs may be signed), and the input's own presigned `_url` is never stored (`results`).
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from ximilar_async.values.entities import Image
from ximilar_async.values.statuses import Status

DEFAULT_PREFIX: Final = "exports/"
TABLE: Final = "images"

# The row's columns, in order, with their Athena (Hive DDL) types: the Glue table in template.yaml and
# docs/sql.md say the same (tests/unit/test_exporting.py checks the template's).
COLUMNS: Final[tuple[tuple[str, str], ...]] = (
    ("uri", "string"),
    ("bucket", "string"),
    ("key", "string"),
    ("version", "string"),
    ("size_bytes", "bigint"),
    ("status", "string"),
    ("status_reason", "string"),
    ("request_type", "string"),
    ("endpoint", "string"),
    ("request_id", "string"),
    ("record_id", "string"),
    ("attempts", "int"),
    ("created_at", "timestamp"),
    ("updated_at", "timestamp"),
    ("finished_day", "date"),
    ("width", "int"),
    ("height", "int"),
    ("grade_final", "double"),
    ("grade_condition", "string"),
    ("grade_corners", "double"),
    ("grade_edges", "double"),
    ("grade_surface", "double"),
    ("grade_centering", "double"),
    ("upscaled_width", "int"),
    ("upscaled_height", "int"),
    ("upscaled_uri", "string"),
    ("upscaled_state", "string"),
    ("upscaled_bytes", "bigint"),
    ("outputs", "string"),
    ("result", "string"),
    ("result_s3_uri", "string"),
)
PARTITION_COLUMN: Final = "dt"
GRADES: Final = ("corners", "edges", "surface", "centering")


# --- where the files go ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportLocation:
    bucket: str
    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if self.prefix and (self.prefix.startswith("/") or not self.prefix.endswith("/")):
            raise ValueError(f"export prefix {self.prefix!r} must end with / and not start with one")

    @property
    def table_prefix(self) -> str:
        return f"{self.prefix}{TABLE}/"

    @property
    def table_uri(self) -> str:
        """The Glue table's LOCATION."""
        return f"s3://{self.bucket}/{self.table_prefix}"

    def partition_prefix(self, day: date) -> str:
        return f"{self.table_prefix}{PARTITION_COLUMN}={day.isoformat()}/"

    def part_key(self, day: date, number: int) -> str:
        return f"{self.partition_prefix(day)}part-{number:05d}.json.gz"

    @property
    def state_key(self) -> str:
        return f"{self.prefix}_state/{TABLE}.json"


# --- what a row says ----------------------------------------------------------------------------------------------


def timestamp_text(moment: datetime) -> str:
    """`YYYY-MM-DD HH:MM:SS.fff`, UTC: what Athena's JSON SerDe and DuckDB both read as a timestamp."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def finished_day(image: Image) -> date:
    return image.updated_at.astimezone(UTC).date()


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _integer(value: Any) -> int | None:
    number = _number(value)
    return None if number is None else int(number)


def grades_of(record: Mapping[str, Any]) -> Mapping[str, Any]:
    """The card grader's `grades`: on the record, else on its first object that has them."""
    grades = record.get("grades")
    if isinstance(grades, Mapping):
        return grades
    for found in record.get("_objects") or ():
        if isinstance(found, Mapping) and isinstance(found.get("grades"), Mapping):
            return found["grades"]  # type: ignore[no-any-return]
    return {}


def without_query(value: Any) -> Any:
    """`value` with every http(s) URL in it cut to scheme, host and path (a signed URL's query is its key)."""
    if isinstance(value, str):
        if value.startswith(("https://", "http://")):
            parts = urlsplit(value)
            return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        return value
    if isinstance(value, Mapping):
        return {name: without_query(item) for name, item in value.items()}
    if isinstance(value, list):
        return [without_query(item) for item in value]
    return value


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True, default=str)


def export_row(
    image: Image, record: Mapping[str, Any] | None, output_bytes: Mapping[str, int | None] | None = None
) -> dict[str, Any]:
    """One finished image as a row of `COLUMNS` (and no other key): `record` is its result, read from the
    item or from `result_s3_uri`; `output_bytes` the stored size of each STORED output (HeadObject)."""
    record = record or {}
    sizes = output_bytes or {}
    grades = grades_of(record) if image.status is Status.DONE else {}
    upscaled = image.outputs.get("upscaled")
    outputs = {
        name: {
            "uri": output.uri,
            "state": output.state.value,
            **({"reason": output.reason} if output.reason else {}),
            **({"bytes": sizes[name]} if sizes.get(name) is not None else {}),
        }
        for name, output in sorted(image.outputs.items())
    }
    condition = grades.get("condition")
    row: dict[str, Any] = {
        "uri": image.uri,
        "bucket": image.bucket,
        "key": image.key,
        "version": image.version,
        "size_bytes": image.size_bytes,
        "status": image.status.value,
        "status_reason": image.status_reason,
        "request_type": image.request_type,
        "endpoint": image.endpoint,
        "request_id": image.request_id,
        "record_id": image.record_id,
        "attempts": image.attempts,
        "created_at": timestamp_text(image.created_at),
        "updated_at": timestamp_text(image.updated_at),
        "finished_day": finished_day(image).isoformat(),
        "width": _integer(record.get("_width")),
        "height": _integer(record.get("_height")),
        "grade_final": _number(grades.get("final")),
        "grade_condition": condition if isinstance(condition, str) else None,
        **{f"grade_{name}": _number(grades.get(name)) for name in GRADES},
        "upscaled_width": _integer(record.get("_upscaled_width")),
        "upscaled_height": _integer(record.get("_upscaled_height")),
        "upscaled_uri": upscaled.uri if upscaled else None,
        "upscaled_state": upscaled.state.value if upscaled else None,
        "upscaled_bytes": sizes.get("upscaled") if upscaled else None,
        "outputs": _json(outputs) if outputs else None,
        "result": _json(without_query(dict(record))) if record else None,
        "result_s3_uri": image.result_s3_uri,
    }
    return row


def part_body(rows: Iterable[Mapping[str, Any]]) -> bytes:
    """JSON Lines, gzipped with no timestamp in its header: the same rows make the same bytes."""
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as compressed:
        for row in rows:
            compressed.write(json.dumps(row, separators=(",", ":"), ensure_ascii=False).encode())
            compressed.write(b"\n")
    return buffer.getvalue()
