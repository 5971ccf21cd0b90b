"""Settings of every function, read from the environment in this one module.

Each function loads its own class at cold start; a missing or malformed variable fails there with
its name. The variable names are the field aliases, so the template tests can read them from here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, Final, Self

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from ximilar_async.outputs import OutputLocation
from ximilar_async.request_types import RequestType, parse_request_type, records_per_request
from ximilar_async.routing import Route, parse_routes

# Lambda takes at most 6 MB of event; a binary body arrives base64-encoded (4/3 larger) inside the
# HTTP API's event, with its headers and request context around it (64 KB is generous for those).
LAMBDA_EVENT_MAX_BYTES: Final = 6 * 1024 * 1024
EVENT_ENVELOPE_BYTES: Final = 64 * 1024
MAX_WEBHOOK_BODY_LIMIT: Final = (LAMBDA_EVENT_MAX_BYTES - EVENT_ENVELOPE_BYTES) * 3 // 4


class ResultSource(StrEnum):
    """What the webhook records: Ximilar's own answer to `GET /request/<id>`, or the posted body."""

    XIMILAR = "ximilar"
    PAYLOAD = "payload"  # opt-in: whoever holds a request's headers can then post its results


class SettingsError(RuntimeError):
    """The environment does not hold valid settings; the message names each variable at fault."""


def _parse_limits(text: str) -> dict[RequestType, int]:
    """`type=n,type=n` overrides of the records-per-request table (may be empty)."""
    overrides: dict[RequestType, int] = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        name, sep, number = entry.partition("=")
        if not sep or not number.strip().isdigit():
            raise ValueError(f"{entry!r} is not of the form type=number")
        overrides[parse_request_type(name.strip())] = int(number)
    return records_per_request(overrides)


def _http_url(text: str) -> str:
    if not text.startswith(("https://", "http://")):
        raise ValueError(f"expected an http(s) URL, got {text!r}")
    return text.rstrip("/")


# Fields of a submission body the pipeline writes itself: a route option may not replace them.
RESERVED_REQUEST_FIELDS: Final = frozenset({"type", "endpoint", "records", "webhook"})


def _parse_route_options(text: Any) -> dict[tuple[RequestType, str], dict[str, Any]]:
    """`{"type:endpoint": {field: value, ...}, ...}` (JSON; may be empty): extra fields of those requests."""
    if isinstance(text, dict):
        return text
    if not str(text).strip():
        return {}
    try:
        parsed = json.loads(str(text))
    except json.JSONDecodeError as error:
        raise ValueError(f"not JSON: {error.msg}") from None
    if not isinstance(parsed, dict):
        raise ValueError('expected a JSON object {"type:endpoint": {"field": value}}')
    options: dict[tuple[RequestType, str], dict[str, Any]] = {}
    for route, fields in parsed.items():
        kind, sep, endpoint = str(route).partition(":")
        if not sep or not endpoint.strip():
            raise ValueError(f"{route!r} is not of the form type:endpoint")
        if not isinstance(fields, dict):
            raise ValueError(f"the options of {route!r} must be a JSON object")
        reserved = RESERVED_REQUEST_FIELDS & set(fields)
        if reserved:
            raise ValueError(f"the options of {route!r} may not set {sorted(reserved)}")
        options[(parse_request_type(kind.strip()), endpoint.strip())] = fields
    return options


def _parse_types(text: str) -> frozenset[RequestType]:
    return frozenset(parse_request_type(part.strip()) for part in text.split(",") if part.strip())


NonEmpty = Annotated[str, Field(min_length=1)]
HttpUrl = Annotated[str, AfterValidator(_http_url)]
Routes = Annotated[tuple[Route, ...], BeforeValidator(parse_routes)]
Limits = Annotated[dict[RequestType, int], BeforeValidator(_parse_limits)]
RouteOptions = Annotated[dict[tuple[RequestType, str], dict[str, Any]], BeforeValidator(_parse_route_options)]
RequestTypes = Annotated[frozenset[RequestType], BeforeValidator(_parse_types)]


class _Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", validate_by_alias=True, validate_by_name=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        source = dict(os.environ if environ is None else environ)
        try:
            return cls.model_validate(source)
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in issue['loc'])}: "
                + ("missing" if issue["type"] == "missing" else issue["msg"])
                for issue in error.errors()
            )
            raise SettingsError(f"invalid environment for {cls.__name__}: {problems}") from None

    @classmethod
    def variable_names(cls) -> frozenset[str]:
        """The environment variables this class reads."""
        return frozenset(field.alias or name for name, field in cls.model_fields.items())


class CommonSettings(_Settings):
    images_table: NonEmpty = Field(alias="IMAGES_TABLE")
    requests_table: NonEmpty = Field(alias="REQUESTS_TABLE")
    index_shards: int = Field(alias="INDEX_SHARDS", ge=1, le=100)
    ximilar_api_url: HttpUrl = Field(alias="XIMILAR_API_URL")
    ximilar_token_parameter: NonEmpty = Field(alias="XIMILAR_TOKEN_PARAMETER")
    ximilar_read_timeout_seconds: float = Field(alias="XIMILAR_READ_TIMEOUT_SECONDS", gt=0, le=60)
    records_per_request: Limits = Field(alias="RECORDS_PER_REQUEST")
    request_retention_days: int = Field(alias="REQUEST_RETENTION_DAYS", ge=1)
    event_bus_name: NonEmpty = Field(alias="EVENT_BUS_NAME")
    event_source: NonEmpty = Field(alias="EVENT_SOURCE")  # the stack's name


class OutputSettings(CommonSettings):
    """Where copies of Ximilar's artifacts go; the recorder (webhook, sweeper) and the copier read it."""

    results_bucket: NonEmpty = Field(alias="RESULTS_BUCKET")
    output_bucket_name: str = Field(alias="OUTPUT_BUCKET_NAME")  # empty: the results bucket
    output_prefix: NonEmpty = Field(alias="OUTPUT_PREFIX")
    input_prefix: str = Field(alias="INPUT_PREFIX")
    outputs_queue_url: NonEmpty = Field(alias="OUTPUTS_QUEUE_URL")

    @property
    def output_location(self) -> OutputLocation:
        return OutputLocation(self.output_bucket_name or self.results_bucket, self.output_prefix, self.input_prefix)

    @model_validator(mode="after")
    def _output_not_in_input(self) -> Self:
        # The template's AllowedPattern refuses the input bucket's name already; this is the defence in depth.
        try:
            self.output_location.check()
        except ValueError as error:
            raise ValueError(f"OUTPUT_BUCKET_NAME, OUTPUT_PREFIX: {error}") from None
        return self


class SubmitSettings(CommonSettings):
    webhook_url: HttpUrl = Field(alias="WEBHOOK_URL")
    webhook_secret_arn: NonEmpty = Field(alias="WEBHOOK_SECRET_ARN")
    routes: Routes = Field(alias="ROUTES")
    max_image_bytes: int = Field(alias="MAX_IMAGE_BYTES", ge=1)
    inline_base64_max_bytes: int = Field(alias="INLINE_BASE64_MAX_BYTES", ge=0)
    presigned_url_expiry_seconds: int = Field(alias="PRESIGNED_URL_EXPIRY_SECONDS", ge=60, le=604800)
    submitting_timeout_seconds: int = Field(alias="SUBMITTING_TIMEOUT_SECONDS", ge=30)
    first_check_delay_seconds: int = Field(alias="FIRST_CHECK_DELAY_SECONDS", ge=1)
    submit_concurrency: int = Field(alias="SUBMIT_CONCURRENCY", ge=1, le=32)
    daily_submit_limit: int = Field(alias="DAILY_SUBMIT_LIMIT", ge=0)  # images per UTC day; 0: none
    min_remaining_credits: int = Field(alias="MIN_REMAINING_CREDITS", ge=0)  # Ximilar credits floor; 0: none
    route_options: RouteOptions = Field(alias="ROUTE_OPTIONS")


class WebhookSettings(OutputSettings):
    webhook_secret_arn: NonEmpty = Field(alias="WEBHOOK_SECRET_ARN")
    results_bucket: NonEmpty = Field(alias="RESULTS_BUCKET")
    max_webhook_body_bytes: int = Field(alias="MAX_WEBHOOK_BODY_BYTES", ge=1024, le=MAX_WEBHOOK_BODY_LIMIT)
    result_source: ResultSource = Field(alias="WEBHOOK_RESULT_SOURCE")
    # Also the life of a webhook token: no genuine webhook comes after the sweeper gives up.
    max_request_age_seconds: int = Field(alias="MAX_REQUEST_AGE_SECONDS", ge=60)


class SweeperSettings(SubmitSettings, OutputSettings):
    max_request_age_seconds: int = Field(alias="MAX_REQUEST_AGE_SECONDS", ge=60)
    max_api_calls_per_run: int = Field(alias="MAX_API_CALLS_PER_RUN", ge=1)


class OutputsSettings(SubmitSettings, OutputSettings):
    """The copier: it submits again (an expired artifact of a type in `regenerate_outputs_for`)."""

    regenerate_outputs_for: RequestTypes = Field(alias="REGENERATE_OUTPUTS_FOR")
    outputs_max_receive_count: int = Field(alias="OUTPUTS_MAX_RECEIVE_COUNT", ge=1)
