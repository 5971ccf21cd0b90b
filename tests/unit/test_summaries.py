"""The one-line summary of a result: total over any record a webhook may carry."""

from __future__ import annotations

from typing import Any

import pytest

from ximilar_async.values.summaries import summary


@pytest.mark.parametrize(
    ("result", "line"),
    [
        ({"_width": 12, "_height": 8, "_upscaled_width": 24, "_upscaled_height": 16}, "upscaled 12x8 -> 24x16"),
        ({"_width": 12, "_height": 8, "_upscaled_width": 24}, "upscaled 12x8 -> 24xNone"),
        ({"grades": {"final": 8.5, "condition": "Near Mint"}}, "grade 8.5 (Near Mint)"),
        ({"_objects": [{"_identification": {"best_match": {"name": "P", "set": "S", "card_number": 4}}}]}, "P - S 4"),
        ({"_objects": [1, {"_identification": []}, {"_identification": {"best_match": "x"}}]}, "NonexNone"),
        ({"_objects": "many", "_tags_simple": ["cat", 2]}, "tags: cat, 2"),
        ({"_tags_simple": "cat", "_width": 3, "_height": 4}, "3x4"),
        (["not", "a", "record"], ""),
    ],
)
def test_a_summary_is_a_line_whatever_the_record_holds(result: Any, line: str) -> None:
    assert summary({"status": "DONE", "result": result}) == line


def test_a_failure_is_summarised_by_its_reason() -> None:
    assert summary({"status": "ERROR", "status_reason": "500: Image download failed"}) == "500: Image download failed"
