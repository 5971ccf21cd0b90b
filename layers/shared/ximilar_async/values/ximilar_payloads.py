"""Models of what Ximilar sends and answers: webhook payloads and request details (checked by hand, as pydantic would).

Only the fields the pipeline relies on are required; everything else in a record is kept as sent.
`load_json` reads a webhook body with bounds, because anyone can post one: whatever the bytes, it
returns a value or raises `NotJson`, never anything else (no RecursionError, no 4,300-digit ValueError),
and what it returns fits DynamoDB (numbers within its range, strings encodable).
"""

from __future__ import annotations

import copy
import json
import math
from typing import Any, Final

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


# The models below check what they are given by hand, with pydantic's words for each problem (these
# modules once used pydantic; its import and schema building were a fifth of every cold start).
Location = tuple[str | int, ...]
Problems = list[tuple[Location, str]]
_MISSING: Final = object()


def _string(
    problems: Problems, location: Location, value: Any, *, min_length: int = 0, max_length: int | None = None
) -> str:
    if value is _MISSING:
        problems.append((location, "Field required"))
        return ""
    if not isinstance(value, str):
        problems.append((location, "Input should be a valid string"))
        return ""
    if len(value) < min_length:
        plural = "" if min_length == 1 else "s"
        problems.append((location, f"String should have at least {min_length} character{plural}"))
    elif max_length is not None and len(value) > max_length:
        problems.append((location, f"String should have at most {max_length} characters"))
    return value


def _mapping(problems: Problems, location: Location, value: Any, model: str) -> dict[str, Any] | None:
    if value is _MISSING:
        problems.append((location, "Field required"))
        return None
    if not isinstance(value, dict):
        problems.append((location, f"Input should be a valid dictionary or instance of {model}"))
        return None
    return value


def _take(data: dict[str, Any], alias: str, name: str | None = None) -> Any:
    """The value of a field (by its alias, else by its name when the model accepts it) and the rest of `data`."""
    if alias in data:
        return data.pop(alias)
    if name is not None and name in data:
        return data.pop(name)
    return _MISSING


class RecordStatus:
    """A record's `_status`: `code` (an integer 0-999), `text`, `request_id`, and whatever else was sent."""

    def __init__(
        self, code: int, text: str = "", request_id: str | None = None, extra: dict[str, Any] | None = None
    ) -> None:
        self.code = code
        self.text = text
        self.request_id = request_id
        self.extra = extra or {}

    @classmethod
    def parse(cls, problems: Problems, location: Location, value: Any) -> RecordStatus | None:
        data = _mapping(problems, location, value, "RecordStatus")
        if data is None:
            return None
        rest = dict(data)
        before = len(problems)
        code = _take(rest, "code")
        if code is _MISSING:
            problems.append(((*location, "code"), "Field required"))
        elif type(code) is not int:  # strict: no bool, float or numeric string
            problems.append(((*location, "code"), "Input should be a valid integer"))
        elif code < 0:
            problems.append(((*location, "code"), "Input should be greater than or equal to 0"))
        elif code > 999:
            problems.append(((*location, "code"), "Input should be less than or equal to 999"))
        text = _take(rest, "text")
        text = "" if text is _MISSING else _string(problems, (*location, "text"), text)
        request_id = _take(rest, "request_id")
        if request_id is _MISSING or request_id is None:
            request_id = None
        else:
            request_id = _string(problems, (*location, "request_id"), request_id)
        return cls(code, text, request_id, rest) if len(problems) == before else None

    def as_stored(self) -> dict[str, Any]:
        return {"code": self.code, "text": self.text, "request_id": self.request_id, **copy.deepcopy(self.extra)}


class ResultRecord:
    """One record of a response: `_id`, `_status`, and whatever results the service added."""

    def __init__(self, record_id: str, status: RecordStatus, extra: dict[str, Any] | None = None) -> None:
        self.record_id = record_id
        self.status = status
        self.extra = extra or {}

    @classmethod
    def parse(cls, problems: Problems, location: Location, value: Any) -> ResultRecord | None:
        data = _mapping(problems, location, value, "ResultRecord")
        if data is None:
            return None
        rest = dict(data)
        before = len(problems)
        record_id = _string(
            problems, (*location, "_id"), _take(rest, "_id", "record_id"), min_length=1, max_length=MAX_ID_LENGTH
        )
        status = RecordStatus.parse(problems, (*location, "_status"), _take(rest, "_status", "status"))
        if len(problems) != before or status is None:
            return None
        return cls(record_id, status, rest)

    def as_stored(self) -> dict[str, Any]:
        """The record exactly as Ximilar sent it (for the item's `result`)."""
        return {"_id": self.record_id, "_status": self.status.as_stored(), **copy.deepcopy(self.extra)}


class ResultResponse:
    def __init__(self, records: list[ResultRecord], extra: dict[str, Any] | None = None) -> None:
        self.records = records
        self.extra = extra or {}

    @classmethod
    def parse(cls, problems: Problems, location: Location, value: Any) -> ResultResponse | None:
        data = _mapping(problems, location, value, "ResultResponse")
        if data is None:
            return None
        rest = dict(data)
        items = _take(rest, "records")
        if items is _MISSING:
            problems.append(((*location, "records"), "Field required"))
            return None
        if not isinstance(items, list):
            problems.append(((*location, "records"), "Input should be a valid list"))
            return None
        before = len(problems)
        records = [ResultRecord.parse(problems, (*location, "records", n), item) for n, item in enumerate(items)]
        if len(problems) != before:
            return None
        if not records:
            problems.append(((*location, "records"), "List should have at least 1 item after validation, not 0"))
            return None
        return cls([record for record in records if record is not None], rest)


class RequestOutcome:
    """A webhook payload (`status`, `id`, `type`, `response`) or a request's details (the same fields, and more)."""

    def __init__(
        self,
        status: str,
        id: str,
        type: str = "",
        response: ResultResponse | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.status = status
        self.id = id
        self.type = type
        self.response = response
        self.extra = extra or {}

    @classmethod
    def parse(cls, problems: Problems, value: Any) -> RequestOutcome | None:
        data = _mapping(problems, (), value, "RequestOutcome")
        if data is None:
            return None
        rest = dict(data)
        before = len(problems)
        status = _string(problems, ("status",), _take(rest, "status"), min_length=1, max_length=64)
        id_ = _string(problems, ("id",), _take(rest, "id"), min_length=1, max_length=MAX_ID_LENGTH)
        kind = _take(rest, "type")
        kind = "" if kind is _MISSING else _string(problems, ("type",), kind)
        response = _take(rest, "response")
        response = (
            None
            if response is _MISSING or response is None
            else ResultResponse.parse(problems, ("response",), response)
        )
        return cls(status, id_, kind, response, rest) if len(problems) == before else None


class PayloadError(ValueError):
    """The JSON is not a webhook payload of the reference; the message says what is wrong."""


def parse_outcome(body: Any) -> RequestOutcome:
    problems: Problems = []
    outcome = RequestOutcome.parse(problems, body)
    if outcome is None:
        raise PayloadError(
            "; ".join(
                f"{'.'.join(str(part) for part in location) or 'body'}: {message}" for location, message in problems
            )
        )
    if outcome.status.upper() == "DONE" and outcome.response is None:
        raise PayloadError("response: a DONE payload needs response.records")
    return outcome


def requested_record_ids(outcome: RequestOutcome) -> list[str]:
    """The `_id`s of the request's records: from `response` when it is DONE, else from the echoed `request`."""
    if outcome.response is not None:
        return [record.record_id for record in outcome.response.records]
    request = outcome.extra.get("request")
    records = request.get("records") if isinstance(request, dict) else None
    if not isinstance(records, list):
        return []
    return [record["_id"] for record in records if isinstance(record, dict) and isinstance(record.get("_id"), str)]
