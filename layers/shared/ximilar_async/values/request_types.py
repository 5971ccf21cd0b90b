"""Ximilar's asynchronous request types, their documented endpoints and per-type limits.

One table of records-per-request limits: the async API takes at most 10 records per request;
Ximilar's upscaler documentation says one record per upscaler request. Each limit can be
overridden (setting `RECORDS_PER_REQUEST`), never above the API's 10.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType

API_MAX_RECORDS_PER_REQUEST = 10


class RequestType(StrEnum):
    UPSCALER = "upscaler"
    FLOWS = "flows"
    COLLECTIBLES_RECOGNITION = "collectibles-recognition"
    CARD_GRADER = "card-grader"


DEFAULT_RECORDS_PER_REQUEST: Mapping[RequestType, int] = MappingProxyType(
    {
        RequestType.UPSCALER: 1,
        RequestType.FLOWS: API_MAX_RECORDS_PER_REQUEST,
        RequestType.COLLECTIBLES_RECOGNITION: API_MAX_RECORDS_PER_REQUEST,
        RequestType.CARD_GRADER: API_MAX_RECORDS_PER_REQUEST,
    }
)

# Endpoints documented per type; `flows` names a flow by its id, so any endpoint is accepted there.
DOCUMENTED_ENDPOINTS: Mapping[RequestType, frozenset[str]] = MappingProxyType(
    {
        RequestType.UPSCALER: frozenset({"upscale_2x", "upscale_4x", "upscale_8x"}),
        RequestType.CARD_GRADER: frozenset({"grade", "condition", "centering", "localize", "crop_level"}),
        RequestType.COLLECTIBLES_RECOGNITION: frozenset(
            {
                "process",
                "analyze",
                "tcg_id",
                "sport_id",
                "comics_id",
                "card_ocr_id",
                "slab_id",
                "detect",
                "slab_grade",
            }
        ),
    }
)


def parse_request_type(value: str) -> RequestType:
    """The RequestType named by `value`, or ValueError listing the known ones."""
    try:
        return RequestType(value)
    except ValueError:
        known = ", ".join(t.value for t in RequestType)
        raise ValueError(f"unknown request type {value!r} (known: {known})") from None


def records_per_request(overrides: Mapping[RequestType, int] | None = None) -> dict[RequestType, int]:
    """The limits table with `overrides` applied, each checked against the API's maximum."""
    limits = dict(DEFAULT_RECORDS_PER_REQUEST)
    for request_type, limit in (overrides or {}).items():
        if not 1 <= limit <= API_MAX_RECORDS_PER_REQUEST:
            raise ValueError(
                f"records per request for {request_type.value} must be 1..{API_MAX_RECORDS_PER_REQUEST}, got {limit}"
            )
        limits[request_type] = limit
    return limits
