"""One line about an image's result, for people: the CLI's table and the completion events share it.

Events carry this line instead of the result, which can be far larger than an event may be (256 KB).
"""

from __future__ import annotations

from typing import Any


def summary(item: dict[str, Any]) -> str:
    """A one-line summary of an image's result (or of why it has none); `item` as the images table names it.

    Total over whatever a record holds: a field missing or of another type is left out, never raised
    (a record is Ximilar's, or whoever posted it, and a completion event must not be lost to it).
    """
    status = item.get("status")
    if status in ("FAILED", "ERROR"):
        return str(item.get("status_reason") or "")
    result = item.get("result") or {}
    if item.get("result_s3_uri"):
        return f"result stored at {item['result_s3_uri']}"
    if not isinstance(result, dict) or not result:
        return ""
    if "_upscaled_width" in result:
        size = f"{result.get('_width')}x{result.get('_height')}"
        return f"upscaled {size} -> {result.get('_upscaled_width')}x{result.get('_upscaled_height')}"
    grades = result.get("grades")
    if isinstance(grades, dict):
        return f"grade {grades.get('final')} ({grades.get('condition')})"
    objects = result.get("_objects")
    for found in objects if isinstance(objects, list) else []:
        identification = found.get("_identification") if isinstance(found, dict) else None
        match = identification.get("best_match") if isinstance(identification, dict) else None
        if isinstance(match, dict) and match:
            return f"{match.get('name')} - {match.get('set')} {match.get('card_number')}"
    tags = result.get("_tags_simple")
    if isinstance(tags, list) and tags:
        return "tags: " + ", ".join(str(tag) for tag in tags)
    return f"{result.get('_width')}x{result.get('_height')}"
