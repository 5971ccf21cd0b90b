"""The export's rows, files and state, without a network: what an analyst's columns hold, and what never leaves."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, date, datetime
from typing import Any

import pytest

from ximilar_async.services.exporter import ExportState
from ximilar_async.values.entities import Image, Output, OutputState
from ximilar_async.values.export_layout import (
    COLUMNS,
    PARTITION_COLUMN,
    ExportLocation,
    export_row,
    part_body,
    without_query,
)
from ximilar_async.values.statuses import Status

FINISHED = datetime(2026, 11, 29, 23, 59, 59, 999999, tzinfo=UTC)


def an_image(**changes: Any) -> Image:
    values: dict[str, Any] = {
        "uri": "s3://in/incoming/cards/a.png",
        "bucket": "in",
        "key": "incoming/cards/a.png",
        "version": "v1",
        "version_id": None,
        "sequencer": "0" * 16,
        "size_bytes": 1234,
        "record_id": "rec-1",
        "status": Status.DONE,
        "request_type": "card-grader",
        "endpoint": "grade",
        "request_id": "req-1",
        "attempts": 1,
        "created_at": datetime(2026, 11, 29, 23, 59, 0, tzinfo=UTC),
        "updated_at": FINISHED,
    }
    return Image(**(values | changes))


def test_a_card_grader_row_has_its_grades_as_numbers_and_every_column_in_order() -> None:
    record = {
        "_url": "s3://in/incoming/cards/a.png",
        "_width": 600,
        "_height": 800,
        "grades": {
            "corners": 9.5,
            "edges": "9",
            "surface": 8.5,
            "centering": 10,
            "final": 8.5,
            "condition": "Near Mint",
        },
    }
    row = export_row(an_image(), record)
    assert list(row) == [name for name, _ in COLUMNS]
    assert (row["grade_final"], row["grade_condition"], row["grade_edges"], row["grade_centering"]) == (
        8.5,
        "Near Mint",
        9.0,
        10.0,
    )
    assert (row["width"], row["height"]) == (600, 800)
    assert (row["created_at"], row["updated_at"], row["finished_day"]) == (
        "2026-11-29 23:59:00.000",
        "2026-11-29 23:59:59.999",
        "2026-11-29",
    )
    assert json.loads(row["result"])["grades"]["final"] == 8.5
    assert row["upscaled_uri"] is None and row["outputs"] is None


def test_grades_on_the_records_first_object_count_too() -> None:
    record = {"_objects": [{"name": "Card", "grades": {"final": 9.5, "condition": "Mint"}}]}
    assert export_row(an_image(), record)["grade_final"] == 9.5


def test_an_upscaled_row_has_the_outputs_dimensions_state_and_stored_bytes_and_no_signed_url() -> None:
    image = an_image(
        request_type="upscaler",
        endpoint="upscale_2x",
        outputs={"upscaled": Output("s3://res/outputs/a.upscaled.jpg", OutputState.STORED)},
    )
    record = {
        "_upscaled_width": 64,
        "_upscaled_height": 48,
        "_upscaled_image_url": "https://images.ximilar.com/a.jpg?X-Amz-Signature=secret&X-Amz-Credential=key",
    }
    row = export_row(image, record, {"upscaled": 5120})
    assert (row["upscaled_width"], row["upscaled_height"], row["upscaled_state"], row["upscaled_bytes"]) == (
        64,
        48,
        "STORED",
        5120,
    )
    assert row["upscaled_uri"] == "s3://res/outputs/a.upscaled.jpg"
    assert json.loads(row["outputs"]) == {
        "upscaled": {"uri": "s3://res/outputs/a.upscaled.jpg", "state": "STORED", "bytes": 5120}
    }
    assert "secret" not in row["result"] and "X-Amz" not in row["result"]
    assert json.loads(row["result"])["_upscaled_image_url"] == "https://images.ximilar.com/a.jpg"
    assert row["grade_final"] is None


def test_a_failed_row_keeps_its_reason_and_has_no_result() -> None:
    row = export_row(an_image(status=Status.FAILED, status_reason="not an image", request_id=None), None)
    assert (row["status"], row["status_reason"], row["result"], row["grade_final"]) == (
        "FAILED",
        "not an image",
        None,
        None,
    )


def test_urls_lose_their_query_strings_at_any_depth() -> None:
    assert without_query({"a": ["https://h/p?sig=1#f", {"b": "http://h/q?x=1"}], "c": "plain?text"}) == {
        "a": ["https://h/p", {"b": "http://h/q"}],
        "c": "plain?text",
    }


def test_a_part_is_json_lines_gzipped_and_the_same_rows_make_the_same_bytes() -> None:
    rows = [export_row(an_image(), {"grades": {"final": 9}}), export_row(an_image(key="b.png"), None)]
    body = part_body(rows)
    assert body == part_body(rows)
    assert [json.loads(line) for line in gzip.decompress(body).splitlines()] == rows


def test_the_layout_is_one_folder_per_day_under_the_table_and_the_state_beside_it() -> None:
    location = ExportLocation("results")
    assert location.part_key(date(2026, 11, 29), 3) == "exports/images/dt=2026-11-29/part-00003.json.gz"
    assert location.table_uri == "s3://results/exports/images/"
    assert location.state_key == "exports/_state/images.json"
    assert not location.state_key.startswith(location.table_prefix)
    with pytest.raises(ValueError, match="must end with /"):
        ExportLocation("results", "exports")


def test_the_state_round_trips() -> None:
    state = ExportState(FINISHED, {"2026-11-29": 2}, {"2026-11-28"})
    assert ExportState.from_json(state.to_json()) == state
    assert ExportState.from_json(None) == ExportState()


def test_the_glue_table_has_the_rows_columns_and_the_day_partition(template: dict[str, Any]) -> None:
    table = template["Resources"]["ExportGlueTable"]["Properties"]["TableInput"]
    assert [(c["Name"], c["Type"]) for c in table["StorageDescriptor"]["Columns"]] == list(COLUMNS)
    assert table["PartitionKeys"] == [{"Name": PARTITION_COLUMN, "Type": "string"}]
    assert table["Parameters"]["projection.dt.format"] == "yyyy-MM-dd"
    assert template["Resources"]["ExportGlueTable"]["Condition"] == "HasExportGlueTable"
    assert template["Resources"]["ExportFunction"]["Condition"] == "ExportScheduled"
