"""How results read for people: one line per image, and rows for table, JSON and CSV output."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

from ximilar_async.values.entities import Image
from ximilar_async.values.summaries import summary

COLUMNS = ("key", "status", "request_id", "summary", "outputs")


def as_item(image: Image) -> dict[str, Any]:
    """An image as its DynamoDB item names things (what `--output json` prints and users query)."""
    values = asdict(image)
    return {"image_uri": values.pop("uri"), **values, "status": image.status.value}


def row(item: dict[str, Any]) -> dict[str, str]:
    return {
        "key": str(item.get("key", "")),
        "status": str(item.get("status", "")),
        "request_id": str(item.get("request_id") or ""),
        "summary": summary(item),
        "outputs": outputs_line(item),
    }


def parse_since(text: str | None) -> datetime | None:
    """`30m`, `2h`, `1d` before now, or an ISO time; None for no text. ValueError for anything else."""
    if not text:
        return None
    units = {"m": "minutes", "h": "hours", "d": "days"}
    if text[-1] in units and text[:-1].isdigit():
        return datetime.now(UTC) - timedelta(**{units[text[-1]]: int(text[:-1])})
    return datetime.fromisoformat(text).astimezone(UTC)


def outputs_line(item: dict[str, Any]) -> str:
    """Each output's state and where its copy is (or why there is none)."""
    parts = []
    for name, output in sorted((item.get("outputs") or {}).items()):
        state = output.get("state")
        # The key alone: the output bucket is one for the stack (`OutputLocation` output).
        where = str(output.get("uri", "")).removeprefix("s3://").partition("/")[2] if state == "STORED" else ""
        where = where or str(output.get("reason") or "")
        parts.append(f"{name} {state} {where}".strip())
    return "; ".join(parts)
