"""Pure logic of the shared package: statuses, request types, routes, settings, keys."""

from __future__ import annotations

import pytest

from ximilar_async.adapters.dynamodb import keys
from ximilar_async.settings import (
    MAX_WEBHOOK_BODY_LIMIT,
    ResultSource,
    SettingsError,
    SubmitSettings,
    WebhookSettings,
)
from ximilar_async.values import identity
from ximilar_async.values.request_types import RequestType, records_per_request
from ximilar_async.values.routing import parse_routes, route_for
from ximilar_async.values.statuses import Status, XimilarStateKind, classify_ximilar_state

VALID_SUBMIT_ENV = {
    "IMAGES_TABLE": "images",
    "REQUESTS_TABLE": "requests",
    "INDEX_SHARDS": "8",
    "XIMILAR_API_URL": "https://api.ximilar.com/",
    "XIMILAR_TOKEN_PARAMETER": "/ximilar-async/api-token",
    "XIMILAR_READ_TIMEOUT_SECONDS": "10",
    "RECORDS_PER_REQUEST": "",
    "REQUEST_RETENTION_DAYS": "30",
    "WEBHOOK_URL": "https://example.execute-api.us-east-1.amazonaws.com/webhook",
    "WEBHOOK_SECRET_ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:key",
    "ROUTES": "incoming/=upscaler:upscale_2x;incoming/cards/=card-grader:grade",
    "MAX_IMAGE_BYTES": "20971520",
    "INLINE_BASE64_MAX_BYTES": "0",
    "PRESIGNED_URL_EXPIRY_SECONDS": "3600",
    "SUBMITTING_TIMEOUT_SECONDS": "900",
    "FIRST_CHECK_DELAY_SECONDS": "120",
    "SUBMIT_CONCURRENCY": "8",
    "DAILY_SUBMIT_LIMIT": "0",
    "MIN_REMAINING_CREDITS": "0",
    "ROUTE_OPTIONS": "",
    "WATCHED_BUCKETS": "",
    "EVENT_BUS_NAME": "default",
    "EVENT_SOURCE": "ximilar-async",
}
# What the recorder (webhook, sweeper) and the outputs function read besides.
OUTPUT_ENV = {
    "RESULTS_BUCKET": "results",
    "OUTPUT_BUCKET_NAME": "",
    "OUTPUT_PREFIX": "outputs/",
    "INPUT_PREFIX": "incoming/",
    "OUTPUTS_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/outputs",
}


@pytest.mark.parametrize(
    ("state", "kind"),
    [
        ("CREATED", XimilarStateKind.PENDING),
        ("PROCESSING", XimilarStateKind.PENDING),
        ("RETRY", XimilarStateKind.PENDING),
        ("DONE", XimilarStateKind.DONE),
        ("done", XimilarStateKind.DONE),
        ("API_LIMIT_EXCEEDED", XimilarStateKind.THROTTLED),
        ("FAILED", XimilarStateKind.FAILED),
        ("NOT_SUPPORTED", XimilarStateKind.FAILED),
        ("SOMETHING_NEW", XimilarStateKind.UNKNOWN),
        ("", XimilarStateKind.UNKNOWN),
    ],
)
def test_every_ximilar_state_is_classified_and_unknown_ones_do_not_crash(state: str, kind: XimilarStateKind) -> None:
    assert classify_ximilar_state(state) is kind


def test_terminal_statuses_are_done_error_and_failed() -> None:
    assert {status for status in Status if status.is_terminal} == {Status.DONE, Status.ERROR, Status.FAILED}


def test_upscaler_takes_one_record_and_the_others_ten_unless_overridden() -> None:
    limits = records_per_request({RequestType.CARD_GRADER: 2})
    assert limits == {
        RequestType.UPSCALER: 1,
        RequestType.FLOWS: 10,
        RequestType.COLLECTIBLES_RECOGNITION: 10,
        RequestType.CARD_GRADER: 2,
    }
    with pytest.raises(ValueError, match=r"1\.\.10"):
        records_per_request({RequestType.FLOWS: 11})


def test_the_longest_matching_prefix_routes_an_object() -> None:
    routes = parse_routes(VALID_SUBMIT_ENV["ROUTES"])
    card = route_for("incoming/cards/front.jpg", routes)
    photo = route_for("incoming/photo.jpg", routes)
    assert card is not None and (card.request_type, card.endpoint) == (RequestType.CARD_GRADER, "grade")
    assert photo is not None and (photo.request_type, photo.endpoint) == (RequestType.UPSCALER, "upscale_2x")
    assert route_for("elsewhere/photo.jpg", routes) is None


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("", "no routes"),
        ("incoming/upscaler:upscale_2x", "prefix=type:endpoint"),
        ("incoming/=painter:paint", "unknown request type"),
        ("incoming/=upscaler:upscale_3x", "no endpoint 'upscale_3x'"),
        ("a/=flows:x;a/=flows:y", "prefix twice"),
    ],
)
def test_a_bad_routing_table_is_refused_with_the_reason(table: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_routes(table)


def test_settings_parse_a_valid_environment() -> None:
    settings = SubmitSettings.from_env(VALID_SUBMIT_ENV)
    assert settings.ximilar_api_url == "https://api.ximilar.com"
    assert settings.index_shards == 8
    assert settings.records_per_request[RequestType.UPSCALER] == 1
    assert [route.prefix for route in settings.routes] == ["incoming/cards/", "incoming/"]


def test_settings_name_every_missing_or_malformed_variable() -> None:
    broken = {**VALID_SUBMIT_ENV, "INDEX_SHARDS": "many", "ROUTES": "x=y"}
    del broken["WEBHOOK_URL"]
    with pytest.raises(SettingsError) as raised:
        SubmitSettings.from_env(broken)
    message = str(raised.value)
    assert "WEBHOOK_URL: missing" in message
    assert "INDEX_SHARDS:" in message
    assert "ROUTES:" in message
    assert "IMAGES_TABLE" not in message


def test_the_webhook_result_source_is_ximilar_or_payload_and_the_body_limit_fits_a_lambda_event() -> None:
    environment = {
        **VALID_SUBMIT_ENV,
        **OUTPUT_ENV,
        "MAX_WEBHOOK_BODY_BYTES": "4194304",
        "WEBHOOK_RESULT_SOURCE": "ximilar",
        "MAX_REQUEST_AGE_SECONDS": "86400",
    }
    assert WebhookSettings.from_env(environment).result_source is ResultSource.XIMILAR
    assert WebhookSettings.from_env({**environment, "WEBHOOK_RESULT_SOURCE": "payload"}).result_source is (
        ResultSource.PAYLOAD
    )
    with pytest.raises(SettingsError, match="WEBHOOK_RESULT_SOURCE"):
        WebhookSettings.from_env({**environment, "WEBHOOK_RESULT_SOURCE": "true"})
    # Base64 makes a body 4/3 larger inside the event, and Lambda takes 6 MB of event.
    assert MAX_WEBHOOK_BODY_LIMIT * 4 // 3 < 6 * 1024 * 1024
    with pytest.raises(SettingsError, match="MAX_WEBHOOK_BODY_BYTES"):
        WebhookSettings.from_env({**environment, "MAX_WEBHOOK_BODY_BYTES": "6000000"})


def test_record_ids_are_stable_per_upload_and_new_per_version() -> None:
    first = identity.record_id("bucket", "incoming/a b.jpg", "etag-1")
    assert first == identity.record_id("bucket", "incoming/a b.jpg", "etag-1")
    assert first != identity.record_id("bucket", "incoming/a b.jpg", "etag-2")
    assert first != identity.record_id("bucket", "incoming/a+b.jpg", "etag-1")


def test_shards_spread_and_stay_in_range() -> None:
    shards = {keys.due_shard(f"submission-{n}", 8) for n in range(200)}
    assert shards == set(keys.all_due_shards(8))
    assert keys.status_shard(Status.DONE, "s3://b/k", 8) in keys.all_status_shards(Status.DONE, 8)
