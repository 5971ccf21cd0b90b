"""How results read for people: one line per image, and rows for table, JSON and CSV output."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

from ximilar_async.entities import Image

COLUMNS = ("key", "status", "request_id", "summary")


def as_item(image: Image) -> dict[str, Any]:
    """An image as its DynamoDB item names things (what `--output json` prints and users query)."""
    values = asdict(image)
    return {"image_uri": values.pop("uri"), **values, "status": image.status.value}


def summary(item: dict[str, Any]) -> str:
    """A one-line summary of an image's result (or of why it has none)."""
    status = item.get("status")
    if status in ("FAILED", "ERROR"):
        return str(item.get("status_reason") or "")
    result = item.get("result") or {}
    if item.get("result_s3_uri"):
        return f"result stored at {item['result_s3_uri']}"
    if not result:
        return ""
    if "_upscaled_width" in result:
        size = f"{result.get('_width')}x{result.get('_height')}"
        return f"upscaled {size} -> {result['_upscaled_width']}x{result['_upscaled_height']}"
    grades = result.get("grades")
    if isinstance(grades, dict):
        return f"grade {grades.get('final')} ({grades.get('condition')})"
    for found in result.get("_objects") or []:
        match = (found.get("_identification") or {}).get("best_match")
        if match:
            return f"{match.get('name')} - {match.get('set')} {match.get('card_number')}"
    tags = result.get("_tags_simple") or []
    if tags:
        return "tags: " + ", ".join(str(tag) for tag in tags)
    return f"{result.get('_width')}x{result.get('_height')}"


def row(item: dict[str, Any]) -> dict[str, str]:
    return {
        "key": str(item.get("key", "")),
        "status": str(item.get("status", "")),
        "request_id": str(item.get("request_id") or ""),
        "summary": summary(item),
    }


def parse_since(text: str | None) -> datetime | None:
    """`30m`, `2h`, `1d` before now, or an ISO time; None for no text. ValueError for anything else."""
    if not text:
        return None
    units = {"m": "minutes", "h": "hours", "d": "days"}
    if text[-1] in units and text[:-1].isdigit():
        return datetime.now(UTC) - timedelta(**{units[text[-1]]: int(text[:-1])})
    return datetime.fromisoformat(text).astimezone(UTC)
