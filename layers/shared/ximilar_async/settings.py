"""Settings of every function, read from the environment in this one module.

Each function loads its own class at cold start; a missing or malformed variable fails there with
its name. Each field names its variable (`env`), so the template tests can read them from here.
The classes are plain frozen dataclasses checked by hand, in pydantic's words: pydantic's import and
schema building were a fifth of every cold start.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, Self

from ximilar_async.values.export_layout import ExportLocation
from ximilar_async.values.outputs import OutputLocation
from ximilar_async.values.request_types import RequestType, parse_request_type, records_per_request
from ximilar_async.values.routing import Route, parse_routes
from ximilar_async.values.watched import WatchedPrefix, parse_watched_buckets, routes_with_watched

# Lambda takes at most 6 MB of event; a binary body arrives base64-encoded (4/3 larger) inside the
# HTTP API's event, with its headers and request context around it (64 KB is generous for those).
LAMBDA_EVENT_MAX_BYTES: Final = 6 * 1024 * 1024
EVENT_ENVELOPE_BYTES: Final = 64 * 1024
MAX_WEBHOOK_BODY_LIMIT: Final = (LAMBDA_EVENT_MAX_BYTES - EVENT_ENVELOPE_BYTES) * 3 // 4


# Ximilar calls connect within this (a little over a TCP retransmission window); the read timeout is a setting.
CONNECT_TIMEOUT_SECONDS: Final = 3.05


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


def _non_empty(text: str) -> str:
    if not text:
        raise SettingsProblem("String should have at least 1 character")
    return text


def _any_text(text: str) -> str:
    return text


_WHOLE_NUMBER: Final = re.compile(r"([+-]?[0-9_]+)(?:\.0+)?")


def _integer(minimum: int | None = None, maximum: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        # As pydantic reads an int: ASCII digits (underscores between them), a sign, a zero fraction ("8.0").
        whole = _WHOLE_NUMBER.fullmatch(text.strip())
        try:
            value = int(whole.group(1)) if whole else int("not a number")
        except ValueError:
            raise SettingsProblem("Input should be a valid integer, unable to parse string as an integer") from None
        if minimum is not None and value < minimum:
            raise SettingsProblem(f"Input should be greater than or equal to {minimum}")
        if maximum is not None and value > maximum:
            raise SettingsProblem(f"Input should be less than or equal to {maximum}")
        return value

    return parse


MAX_READ_TIMEOUT_SECONDS: Final = 60


def _seconds(text: str) -> float:
    """More than 0, at most MAX_READ_TIMEOUT_SECONDS."""
    try:
        if not text.isascii():
            raise ValueError(text)
        value = float(text.strip())
    except ValueError:
        raise SettingsProblem("Input should be a valid number, unable to parse string as a number") from None
    if not value <= MAX_READ_TIMEOUT_SECONDS:  # NaN fails this first, as in pydantic
        raise SettingsProblem(f"Input should be less than or equal to {MAX_READ_TIMEOUT_SECONDS}")
    if not value > 0:
        raise SettingsProblem("Input should be greater than 0")
    return value


def _result_source(text: str) -> ResultSource:
    try:
        return ResultSource(text)
    except ValueError:
        choices = " or ".join(f"'{source.value}'" for source in ResultSource)
        raise SettingsProblem(f"Input should be {choices}") from None


class SettingsProblem(ValueError):
    """What is wrong with one variable, in the words given (no "Value error, " before them)."""


def env(name: str, parse: Callable[[str], Any]) -> Any:
    """A field read from the variable `name` by `parse` (a ValueError says what is wrong with it)."""
    return field(metadata={"env": name, "parse": parse})


@dataclass(frozen=True, kw_only=True)
class _Settings:
    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        source = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        problems: list[str] = []
        for each in dataclasses.fields(cls):
            name = each.metadata["env"]
            text = source.get(name)
            if text is None:
                problems.append(f"{name}: missing")
                continue
            try:
                values[each.name] = each.metadata["parse"](text)
            except SettingsProblem as error:
                problems.append(f"{name}: {error}")
            except ValueError as error:
                problems.append(f"{name}: Value error, {error}")
        if not problems:
            settings = cls(**values)
            try:
                settings._check()
            except ValueError as error:
                problems.append(f": Value error, {error}")
            else:
                return settings
        raise SettingsError(f"invalid environment for {cls.__name__}: {'; '.join(problems)}")

    def _check(self) -> None:
        """What no single variable shows (a ValueError says what); run once every variable is valid."""

    @classmethod
    def variable_names(cls) -> frozenset[str]:
        """The environment variables this class reads."""
        return frozenset(each.metadata["env"] for each in dataclasses.fields(cls))


@dataclass(frozen=True, kw_only=True)
class CommonSettings(_Settings):
    images_table: str = env("IMAGES_TABLE", _non_empty)
    requests_table: str = env("REQUESTS_TABLE", _non_empty)
    index_shards: int = env("INDEX_SHARDS", _integer(1, 100))
    ximilar_api_url: str = env("XIMILAR_API_URL", _http_url)
    ximilar_token_parameter: str = env("XIMILAR_TOKEN_PARAMETER", _non_empty)
    ximilar_read_timeout_seconds: float = env("XIMILAR_READ_TIMEOUT_SECONDS", _seconds)
    records_per_request: dict[RequestType, int] = env("RECORDS_PER_REQUEST", _parse_limits)
    request_retention_days: int = env("REQUEST_RETENTION_DAYS", _integer(1))
    event_bus_name: str = env("EVENT_BUS_NAME", _non_empty)
    event_source: str = env("EVENT_SOURCE", _non_empty)  # the stack's name
    # Buckets the stack did not create (`bucket:prefix,...`): their uncovered prefixes join the submitter's
    # routes (watched.py), and their copies go under a folder of their own (`OutputLocation`).
    watched_buckets: tuple[WatchedPrefix, ...] = env("WATCHED_BUCKETS", parse_watched_buckets)


@dataclass(frozen=True, kw_only=True)
class OutputSettings(CommonSettings):
    """Where copies of Ximilar's artifacts go; the recorder (webhook, sweeper) and the copier read it."""

    results_bucket: str = env("RESULTS_BUCKET", _non_empty)
    output_bucket_name: str = env("OUTPUT_BUCKET_NAME", _any_text)  # empty: the results bucket
    output_prefix: str = env("OUTPUT_PREFIX", _non_empty)
    input_prefix: str = env("INPUT_PREFIX", _any_text)
    outputs_queue_url: str = env("OUTPUTS_QUEUE_URL", _non_empty)

    @property
    def output_location(self) -> OutputLocation:
        return OutputLocation(
            self.output_bucket_name or self.results_bucket,
            self.output_prefix,
            self.input_prefix,
            frozenset(each.bucket for each in self.watched_buckets),
        )

    def _check(self) -> None:
        super()._check()
        # The template's AllowedPattern refuses the input bucket's name already; this is the defence in depth.
        try:
            self.output_location.check()
        except ValueError as error:
            raise ValueError(f"OUTPUT_BUCKET_NAME, OUTPUT_PREFIX, WATCHED_BUCKETS: {error}") from None


@dataclass(frozen=True, kw_only=True)
class SubmitSettings(CommonSettings):
    webhook_url: str = env("WEBHOOK_URL", _http_url)
    webhook_secret_arn: str = env("WEBHOOK_SECRET_ARN", _non_empty)
    routes: tuple[Route, ...] = env("ROUTES", parse_routes)
    max_image_bytes: int = env("MAX_IMAGE_BYTES", _integer(1))
    inline_base64_max_bytes: int = env("INLINE_BASE64_MAX_BYTES", _integer(0))
    presigned_url_expiry_seconds: int = env("PRESIGNED_URL_EXPIRY_SECONDS", _integer(60, 604800))
    submitting_timeout_seconds: int = env("SUBMITTING_TIMEOUT_SECONDS", _integer(30))
    first_check_delay_seconds: int = env("FIRST_CHECK_DELAY_SECONDS", _integer(1))
    submit_concurrency: int = env("SUBMIT_CONCURRENCY", _integer(1, 32))
    daily_submit_limit: int = env("DAILY_SUBMIT_LIMIT", _integer(0))  # images per UTC day; 0: none
    min_remaining_credits: int = env("MIN_REMAINING_CREDITS", _integer(0))  # Ximilar credits floor; 0: none
    route_options: dict[tuple[RequestType, str], dict[str, Any]] = env("ROUTE_OPTIONS", _parse_route_options)

    def __post_init__(self) -> None:
        object.__setattr__(self, "routes", routes_with_watched(self.routes, self.watched_buckets))


@dataclass(frozen=True, kw_only=True)
class WebhookSettings(OutputSettings):
    webhook_secret_arn: str = env("WEBHOOK_SECRET_ARN", _non_empty)
    results_bucket: str = env("RESULTS_BUCKET", _non_empty)
    max_webhook_body_bytes: int = env("MAX_WEBHOOK_BODY_BYTES", _integer(1024, MAX_WEBHOOK_BODY_LIMIT))
    result_source: ResultSource = env("WEBHOOK_RESULT_SOURCE", _result_source)
    # Also the life of a webhook token: no genuine webhook comes after the sweeper gives up.
    max_request_age_seconds: int = env("MAX_REQUEST_AGE_SECONDS", _integer(60))


@dataclass(frozen=True, kw_only=True)
class SweeperSettings(SubmitSettings, OutputSettings):
    max_request_age_seconds: int = env("MAX_REQUEST_AGE_SECONDS", _integer(60))
    max_api_calls_per_run: int = env("MAX_API_CALLS_PER_RUN", _integer(1))


@dataclass(frozen=True, kw_only=True)
class OutputsSettings(SubmitSettings, OutputSettings):
    """The copier: it submits again (an expired artifact of a type in `regenerate_outputs_for`)."""

    regenerate_outputs_for: frozenset[RequestType] = env("REGENERATE_OUTPUTS_FOR", _parse_types)
    outputs_max_receive_count: int = env("OUTPUTS_MAX_RECEIVE_COUNT", _integer(1))


@dataclass(frozen=True, kw_only=True)
class ExportSettings(CommonSettings):
    """The scheduled export of finished images to S3 for Athena (`exporting`)."""

    results_bucket: str = env("RESULTS_BUCKET", _non_empty)
    export_prefix: str = env("EXPORT_PREFIX", _any_text)  # under the results bucket; ends with /

    @property
    def export_location(self) -> ExportLocation:
        return ExportLocation(self.results_bucket, self.export_prefix)

    def _check(self) -> None:
        super()._check()
        try:
            self.export_location  # noqa: B018 - built to be checked
        except ValueError as error:
            raise ValueError(f"EXPORT_PREFIX: {error}") from None


@dataclass(frozen=True, kw_only=True)
class BackfillSettings(CommonSettings):
    """The backfill function: one Distributed Map batch of existing objects into the submit queue, paced."""

    submit_queue_url: str = env("SUBMIT_QUEUE_URL", _non_empty)
    input_bucket: str = env("INPUT_BUCKET", _non_empty)
    daily_submit_limit: int = env("DAILY_SUBMIT_LIMIT", _integer(0))  # the spend guard's, read to hold back
    # Held back (BackfillHeld, retried by the state machine) while the submit queue holds more messages.
    max_queue_depth: int = env("BACKFILL_MAX_QUEUE_DEPTH", _integer(0))
