"""Models of what Ximilar sends and answers: webhook payloads and request details (Parser-style, pydantic).

Only the fields the pipeline relies on are required; everything else in a record is kept as sent.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class RecordStatus(BaseModel):
    model_config = ConfigDict(extra="allow")

    code: int
    text: str = ""
    request_id: str | None = None


class ResultRecord(BaseModel):
    """One record of a response: `_id`, `_status`, and whatever results the service added."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    record_id: str = Field(alias="_id", min_length=1)
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

    status: str = Field(min_length=1)
    id: str = Field(min_length=1)
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


def record_ids_of(body: Any) -> list[str]:
    """The records' `_id`s, read with no more parsing than the token check needs."""
    records = body.get("response", {}).get("records") if isinstance(body, dict) else None
    if not isinstance(records, list) or not records:
        raise PayloadError("response.records: a webhook payload needs a non-empty list of records")
    ids = [record.get("_id") if isinstance(record, dict) else None for record in records]
    if not all(isinstance(record_id, str) and record_id for record_id in ids):
        raise PayloadError("response.records[]._id: every record needs its _id")
    return [str(record_id) for record_id in ids]
