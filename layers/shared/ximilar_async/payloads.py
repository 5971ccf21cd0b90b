"""Models of what Ximilar sends and answers: webhook payloads and request details (Parser-style, pydantic).

Only the fields the pipeline relies on are required; everything else in a record is kept as sent.
`load_json` reads a webhook body with bounds, because anyone can post one: whatever the bytes, it
returns a value or raises `NotJson`, never anything else (no RecursionError, no 4,300-digit ValueError),
and what it returns fits DynamoDB (numbers within its range, strings encodable).
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Final

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError

MAX_DEPTH: Final = 32  # a Ximilar record nests a few levels; nothing needs 32
MAX_INT_DIGITS: Final = 38  # DynamoDB keeps 38 digits of a number
MAX_NUMBER_CHARS: Final = 64
# DynamoDB's number range is 1E-130 .. 9.99E+125; stay inside it with room to spare.
MAX_FLOAT_MAGNITUDE: Final = 1e120
MIN_FLOAT_MAGNITUDE: Final = 1e-120
MAX_ID_LENGTH: Final = 128


class NotJson(ValueError):
    """The body is not JSON within this service's bounds; the message says which bound."""


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise NotJson(f"an integer has more than {MAX_INT_DIGITS} digits")
    return int(text)


def _bounded_float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise NotJson(f"a number is longer than {MAX_NUMBER_CHARS} characters")
    value = float(text)
    magnitude = abs(value)
    if not math.isfinite(value) or magnitude > MAX_FLOAT_MAGNITUDE or 0 < magnitude < MIN_FLOAT_MAGNITUDE:
        raise NotJson("a number is out of range")
    return value


def _no_constant(text: str) -> Any:
    raise NotJson(f"{text} is not JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Duplicate keys are read differently by different parsers: which `_id` would count?
    result = dict(pairs)
    if len(result) != len(pairs):
        raise NotJson("an object repeats a key")
    return result


def _check_shape(value: Any) -> None:
    """Depth and strings, walked without recursion (the value may be as deep as the parser allowed)."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")  # "\ud800" escapes decode to lone surrogates, which no store takes
            except UnicodeEncodeError:
                raise NotJson("a string is not valid Unicode") from None
        elif isinstance(item, dict | list):
            if depth > MAX_DEPTH:
                raise NotJson(f"nested deeper than {MAX_DEPTH}")
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)


def load_json(body: bytes) -> Any:
    """The JSON value of `body` (UTF-8), within the bounds above; raises `NotJson` otherwise."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise NotJson("the body is not UTF-8") from None
    try:
        value = json.loads(
            text,
            parse_int=_bounded_int,
            parse_float=_bounded_float,
            parse_constant=_no_constant,
            object_pairs_hook=_unique_keys,
        )
    except NotJson:
        raise
    except RecursionError:
        raise NotJson(f"nested deeper than {MAX_DEPTH}") from None
    except ValueError:  # JSONDecodeError, and int()'s own digit limit
        raise NotJson("the body is not JSON") from None
    _check_shape(value)
    return value


class RecordStatus(BaseModel):
    model_config = ConfigDict(extra="allow")

    code: Annotated[int, Strict()] = Field(ge=0, le=999)
    text: str = ""
    request_id: str | None = None


class ResultRecord(BaseModel):
    """One record of a response: `_id`, `_status`, and whatever results the service added."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    record_id: str = Field(alias="_id", min_length=1, max_length=MAX_ID_LENGTH)
    status: RecordStatus = Field(alias="_status")

    def as_stored(self) -> dict[str, Any]:
        """The record exactly as Ximilar sent it (for the item's `result`)."""
        return self.model_dump(by_alias=True, exclude_none=False)


class ResultResponse(BaseModel):
    model_config = ConfigDict(extra="allow")

    records: list[ResultRecord] = Field(min_length=1)


class RequestOutcome(BaseModel):
    """A webhook payload (`status`, `id`, `type`, `response`) or a request's details (the same fields, and more)."""

    model_config = ConfigDict(extra="allow")

    status: str = Field(min_length=1, max_length=64)
    id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    type: str = ""
    response: ResultResponse | None = None


class PayloadError(ValueError):
    """The JSON is not a webhook payload of the reference; the message says what is wrong."""


def parse_outcome(body: Any) -> RequestOutcome:
    try:
        outcome = RequestOutcome.model_validate(body)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in issue['loc']) or 'body'}: {issue['msg']}" for issue in error.errors()
        )
        raise PayloadError(problems) from None
    if outcome.status.upper() == "DONE" and outcome.response is None:
        raise PayloadError("response: a DONE payload needs response.records")
    return outcome


def requested_record_ids(outcome: RequestOutcome) -> list[str]:
    """The `_id`s of the request's records: from `response` when it is DONE, else from the echoed `request`."""
    if outcome.response is not None:
        return [record.record_id for record in outcome.response.records]
    request = (outcome.model_extra or {}).get("request")
    records = request.get("records") if isinstance(request, dict) else None
    if not isinstance(records, list):
        return []
    return [record["_id"] for record in records if isinstance(record, dict) and isinstance(record.get("_id"), str)]
