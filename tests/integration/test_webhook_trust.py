"""Results come from Ximilar, not from whoever posts: forged results, ambiguous ids, hostile bodies and
headers, key rotation. Each goes through the real webhook handler (the local HTTP API or its events)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import EMULATOR_TOKEN, RunningEmulator
from tests.support.aws import AwsStack, create_stack
from tests.support.pipeline import Pipeline, as_kept, start_pipeline
from xasync.lambda_runtime import LocalLambdaContext
from ximilar_async.services.webhook_auth import CLOCK_SKEW, WebhookAuth, static_keys


@pytest.fixture
def pipeline(monkeypatch: pytest.MonkeyPatch, aws_stack: AwsStack, emulator: RunningEmulator) -> Iterator[Pipeline]:
    yield from start_pipeline(monkeypatch, aws_stack, emulator)


@pytest.fixture
def quiet_pipeline(pipeline: Pipeline) -> Pipeline:
    """Webhooks dropped by the emulator: the test posts them itself."""
    pipeline.emulator.control.set_knobs(webhook_drop_rate=1.0)
    return pipeline


def forged_payload(request_id: str, record_id: str, label: str = "Forged") -> dict[str, Any]:
    return {
        "status": "DONE",
        "id": request_id,
        "type": "flows",
        "response": {
            "records": [
                {"_id": record_id, "_status": {"code": 200, "text": "OK"}, "_tags": {"Category": [{"name": label}]}}
            ]
        },
    }


def webhook_event(headers: dict[str, str] | None, body: str | None, *, base64_encoded: bool = False) -> dict[str, Any]:
    """An HTTP API (payload 2.0) event as API Gateway hands the webhook function a POST /webhook."""
    return {
        "version": "2.0",
        "routeKey": "POST /webhook",
        "rawPath": "/webhook",
        "rawQueryString": "",
        "headers": headers,
        "requestContext": {
            "http": {"method": "POST", "path": "/webhook", "protocol": "HTTP/1.1", "sourceIp": "203.0.113.9"},
            "requestId": "hostile",
            "routeKey": "POST /webhook",
            "stage": "$default",
        },
        "body": body,
        "isBase64Encoded": base64_encoded,
    }


# --- forged results and ambiguous ids ---------------------------------------------------------------
def test_forged_results_under_a_requests_genuine_headers_are_never_recorded_and_the_genuine_result_is(
    pipeline: Pipeline,
) -> None:
    # Ximilar still working on it when the forgery arrives: the genuine webhook comes after.
    # (long enough that a loaded machine still posts the forgery first)
    pipeline.emulator.control.set_knobs(created_delay_seconds=1.0, processing_delay_seconds=4.0)
    pipeline.upload("incoming/flows/forged.png")
    item = pipeline.image("incoming/flows/forged.png")
    forged = forged_payload(item.request_id, item.record_id)
    answer = pipeline.post(forged, pipeline.signed_headers(item.submission_id))
    assert (answer.status_code, answer.json()["deferred"]) == (202, "not-finished")
    assert pipeline.image("incoming/flows/forged.png").status == "CREATED"

    landed = pipeline.wait_status("incoming/flows/forged.png", "DONE", "ERROR")
    genuine = pipeline.details(item.request_id)["response"]["records"][0]
    assert landed.result.as_dict() == as_kept(genuine, item.image_uri)
    assert "Forged" not in json.dumps(landed.result.as_dict())


def test_a_claimed_failure_is_checked_with_ximilar(quiet_pipeline: Pipeline) -> None:
    pipeline = quiet_pipeline
    pipeline.upload("incoming/flows/claimed.png")
    item = pipeline.image("incoming/flows/claimed.png")
    real = pipeline.done_details(item.request_id)
    claim = {"status": "FAILED", "id": item.request_id, "type": "flows"}
    answer = pipeline.post(claim, pipeline.signed_headers(item.submission_id))
    assert answer.status_code == 200, answer.text
    landed = pipeline.image("incoming/flows/claimed.png")
    assert (landed.status, landed.result.as_dict()) == ("DONE", as_kept(real["response"]["records"][0], item.image_uri))


@pytest.mark.parametrize(("source", "status_code"), [("ximilar", 200), ("payload", 422)])
def test_a_joined_record_id_payload_freezes_nothing(
    monkeypatch: pytest.MonkeyPatch, aws_stack: AwsStack, emulator: RunningEmulator, source: str, status_code: int
) -> None:
    # Under the old token, a record `_id` of "a\nb" verified for records a and b: recorded as nothing,
    # it made the request DONE, and the genuine webhook then counted as a duplicate.
    for pipeline in start_pipeline(monkeypatch, aws_stack, emulator, WebhookResultSource=source):
        pipeline.emulator.control.set_knobs(webhook_drop_rate=1.0)
        keys_ = ("incoming/flows/j1.png", "incoming/flows/j2.png")
        pipeline.upload(*keys_)
        first, second = (pipeline.image(key) for key in keys_)
        assert first.submission_id == second.submission_id
        real = pipeline.done_details(first.request_id)
        joined = forged_payload(first.request_id, "\n".join(sorted([first.record_id, second.record_id])))
        headers = pipeline.signed_headers(first.submission_id)
        assert pipeline.post(joined, headers).status_code == status_code
        genuine = pipeline.post(real, headers)
        assert genuine.status_code == 200, genuine.text
        assert {pipeline.image(key).status for key in keys_} == {"DONE"}


def test_when_ximilar_cannot_be_asked_the_webhook_answers_202_and_the_sweeper_records_soon(
    quiet_pipeline: Pipeline,
) -> None:
    pipeline = quiet_pipeline
    pipeline.upload("incoming/flows/down.png")
    item = pipeline.image("incoming/flows/down.png")
    real = pipeline.done_details(item.request_id)
    pipeline.emulator.control.fail_next(1, status=500)
    before = datetime.now(UTC)
    answer = pipeline.post(real, pipeline.signed_headers(item.submission_id))
    assert (answer.status_code, answer.json()["deferred"]) == (202, "source-unavailable")
    assert pipeline.image("incoming/flows/down.png").status == "CREATED"
    request = pipeline.stack.tables.requests.get(item.submission_id)
    assert before.timestamp() < request.next_check_at <= (before + timedelta(minutes=2)).timestamp()
    pipeline.sweep(timedelta(minutes=2))
    assert pipeline.image("incoming/flows/down.png").status == "DONE"


# --- hostile input ------------------------------------------------------------------------------------
@dataclass
class Target:
    """One request, DONE at Ximilar, whose webhook never came; the hostile deliveries aim at it."""

    pipeline: Pipeline
    item: Any
    details: dict[str, Any]

    @property
    def auth(self) -> WebhookAuth:
        return self.pipeline.stack.auth

    def headers(self, submission_id: str | None = None, auth: WebhookAuth | None = None) -> dict[str, str]:
        signed = (auth or self.auth).headers(submission_id or self.item.submission_id)
        return {"content-type": "application/json", **{name.lower(): value for name, value in signed.items()}}

    def payload(self, **changes: Any) -> dict[str, Any]:
        return {**json.loads(json.dumps(self.details)), **changes}


@pytest.fixture(scope="module")
def target(aws_endpoint: str, template: dict[str, Any], _emulator_session: RunningEmulator) -> Iterator[Target]:
    """Built once for the table below: every case must leave it as it is."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        _emulator_session.control.reset()
        stack = create_stack(aws_endpoint, template, EMULATOR_TOKEN)
        for pipeline in start_pipeline(monkeypatch, stack, _emulator_session):
            pipeline.emulator.control.set_knobs(webhook_drop_rate=1.0)
            pipeline.upload("incoming/flows/target.png")
            item = pipeline.image("incoming/flows/target.png")
            yield Target(pipeline, item, pipeline.done_details(item.request_id))


def signed(body: str | bytes) -> Callable[[Target], dict[str, Any]]:
    def make(target: Target) -> dict[str, Any]:
        if isinstance(body, bytes):
            return webhook_event(target.headers(), base64.b64encode(body).decode(), base64_encoded=True)
        return webhook_event(target.headers(), body)

    return make


def signed_json(change: Callable[[dict[str, Any]], Any]) -> Callable[[Target], dict[str, Any]]:
    """The genuine payload, changed, under genuine headers."""

    def make(target: Target) -> dict[str, Any]:
        return webhook_event(target.headers(), json.dumps(change(target.payload())))

    return make


def record(change: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], Any]:
    def apply(payload: dict[str, Any]) -> Any:
        change(payload["response"]["records"][0])
        return payload

    return apply


def with_headers(change: Callable[[Target, dict[str, str]], dict[str, str] | None]) -> Callable[..., dict[str, Any]]:
    """The genuine payload (as a forger would have it), under headers changed by `change`."""

    def make(target: Target) -> dict[str, Any]:
        return webhook_event(change(target, target.headers()), json.dumps(target.payload()))

    return make


def token_part(index: int, value: str) -> Callable[[Target, dict[str, str]], dict[str, str]]:
    def change(target: Target, headers: dict[str, str]) -> dict[str, str]:
        parts = headers["x-xasync-token"].split(".")
        parts[index] = value
        return {**headers, "x-xasync-token": ".".join(parts)}

    return change


def issued_at(offset: timedelta) -> Callable[[Target, dict[str, str]], dict[str, str]]:
    def change(target: Target, headers: dict[str, str]) -> dict[str, str]:
        auth = WebhookAuth(target.auth.keys, clock=lambda: datetime.now(UTC) + offset)
        return target.headers(auth=auth)

    return change


def deep(depth: int) -> str:
    return '{"status": "DONE", "id": "x", "response": ' + "[" * depth + "]" * depth + "}"


MAX_AGE = timedelta(seconds=86400)  # the template's MaxRequestAgeSeconds
OVER = 4194304 + 1  # one byte over the template's MaxWebhookBodyBytes

HOSTILE: list[Any] = [
    # bodies under genuine headers
    pytest.param(signed(deep(100_000)), 400, id="nesting-100000-deep"),
    pytest.param(signed(deep(40)), 400, id="nesting-over-the-depth-bound"),
    pytest.param(signed_json(lambda p: {**p, "response": None}), 422, id="response-null"),
    pytest.param(signed_json(lambda p: {**p, "response": [1, 2]}), 422, id="response-a-list"),
    pytest.param(signed_json(lambda p: {**p, "response": {"records": None}}), 422, id="records-null"),
    pytest.param(signed_json(lambda p: {**p, "response": {"records": "r"}}), 422, id="records-a-string"),
    pytest.param(signed_json(lambda p: {**p, "response": {"records": [[1]]}}), 422, id="record-a-list"),
    pytest.param(signed_json(lambda p: {**p, "response": {"records": []}}), 422, id="records-empty"),
    pytest.param(signed_json(record(lambda r: r.update(_id=7))), 422, id="record-id-a-number"),
    pytest.param(signed_json(record(lambda r: r.update(_status="OK"))), 422, id="status-a-string"),
    pytest.param(signed_json(record(lambda r: r["_status"].update(code="200"))), 422, id="code-a-string"),
    pytest.param(signed_json(record(lambda r: r["_status"].update(code=True))), 422, id="code-a-boolean"),
    pytest.param(signed_json(record(lambda r: r["_status"].update(code=200.5))), 422, id="code-a-fraction"),
    pytest.param(signed_json(lambda p: {**p, "status": 5}), 422, id="status-a-number"),
    pytest.param(signed_json(lambda p: {**p, "id": None}), 422, id="id-null"),
    pytest.param(signed_json(lambda p: {**p, "id": "x" * 3_000_000}), 422, id="id-a-3mb-string"),
    pytest.param(signed_json(lambda p: [p]), 422, id="payload-in-a-list"),
    pytest.param(signed('{"status": "DONE", "id": 1' + "0" * 5000 + "}"), 400, id="integer-of-5000-digits"),
    pytest.param(signed('{"status": "DONE", "id": 1' + "0" * 40 + "}"), 400, id="integer-beyond-dynamodb"),
    pytest.param(signed('{"status": "DONE", "id": "x", "n": 1e400}'), 400, id="float-overflow"),
    pytest.param(signed('{"status": "DONE", "id": "x", "n": 1e-200}'), 400, id="float-below-dynamodb"),
    pytest.param(signed('{"status": "DONE", "id": "x", "n": NaN}'), 400, id="nan"),
    pytest.param(signed('{"status": "DONE", "id": "x", "n": -Infinity}'), 400, id="infinity"),
    pytest.param(signed('{"status": "DONE", "id": "a", "id": "b"}'), 400, id="duplicate-keys"),
    pytest.param(signed('{"status": "DONE", "id": "\\ud800"}'), 400, id="lone-surrogate-escape"),
    pytest.param(signed(b'{"status": "DONE", "id": "\xff\xfe"}'), 400, id="invalid-utf-8"),
    pytest.param(signed('{"status": "DONE"}'.encode("utf-16")), 400, id="utf-16"),
    pytest.param(signed(b'\xef\xbb\xbf{"status": "DONE", "id": "x"}'), 400, id="utf-8-bom"),
    pytest.param(signed(""), 400, id="empty-body"),
    pytest.param(lambda t: webhook_event(t.headers(), None), 400, id="no-body"),
    pytest.param(signed("null"), 422, id="json-null"),
    pytest.param(signed('"DONE"'), 422, id="json-string"),
    pytest.param(signed('{"status": "DONE", "response": '), 400, id="truncated-json"),
    pytest.param(lambda t: webhook_event(t.headers(), "not base64!!", base64_encoded=True), 400, id="bad-base64"),
    pytest.param(lambda t: webhook_event(t.headers(), "ünï", base64_encoded=True), 400, id="non-ascii-base64"),
    pytest.param(lambda t: webhook_event(t.headers(), "e30", base64_encoded=True), 400, id="unpadded-base64"),
    pytest.param(lambda t: webhook_event(t.headers(), "x" * OVER), 413, id="oversized-signed"),
    pytest.param(
        lambda t: webhook_event(t.headers(), "eA==" * (OVER // 3 + 2), base64_encoded=True),
        413,
        id="oversized-base64",
    ),
    # headers
    pytest.param(lambda t: webhook_event(None, json.dumps(t.payload())), 401, id="no-headers-at-all"),
    pytest.param(lambda t: webhook_event({}, "x" * (OVER - 1)), 401, id="unsigned-near-limit-body-never-parsed"),
    pytest.param(lambda t: webhook_event({}, deep(100_000)), 401, id="unsigned-deep-nesting"),
    pytest.param(lambda t: webhook_event({}, "eA==", base64_encoded=True), 401, id="unsigned-base64"),
    pytest.param(with_headers(lambda t, h: {k: v for k, v in h.items() if k != "x-xasync-token"}), 401, id="no-token"),
    pytest.param(
        with_headers(lambda t, h: {k: v for k, v in h.items() if k != "x-xasync-submission"}),
        401,
        id="no-submission",
    ),
    pytest.param(with_headers(lambda t, h: {**h, "x-xasync-token": ""}), 401, id="empty-token"),
    pytest.param(with_headers(lambda t, h: {**h, "x-xasync-token": " " + h["x-xasync-token"]}), 401, id="padded"),
    pytest.param(with_headers(lambda t, h: {**h, "x-xasync-token": h["x-xasync-token"].upper()}), 401, id="upper"),
    pytest.param(
        with_headers(lambda t, h: {**h, "x-xasync-token": f"{h['x-xasync-token']},{h['x-xasync-token']}"}),
        401,
        id="repeated-header-joined",
    ),
    pytest.param(with_headers(token_part(0, "v1")), 401, id="old-version"),
    pytest.param(with_headers(token_part(1, "0" * 12)), 401, id="unknown-key-id"),
    pytest.param(with_headers(token_part(2, "1")), 401, id="issued-changed"),
    pytest.param(with_headers(token_part(3, "0" * 64)), 401, id="mac-zeroed"),
    pytest.param(
        with_headers(lambda t, h: t.headers(auth=WebhookAuth(static_keys("another key")))), 401, id="another-key"
    ),
    pytest.param(with_headers(lambda t, h: t.headers("other-submission")), 202, id="signed-for-an-unknown-request"),
    pytest.param(
        with_headers(lambda t, h: {**h, "x-xasync-submission": "other-submission"}),
        401,
        id="token-for-another-submission",
    ),
    pytest.param(
        with_headers(lambda t, h: {**h, "x-xasync-submission": t.item.submission_id + "\n"}),
        401,
        id="submission-with-newline",
    ),
    pytest.param(with_headers(issued_at(-(MAX_AGE + CLOCK_SKEW + timedelta(minutes=1)))), 401, id="expired"),
    pytest.param(with_headers(issued_at(CLOCK_SKEW + timedelta(minutes=1))), 401, id="issued-in-the-future"),
    pytest.param(
        with_headers(lambda t, h: {k.upper(): v for k, v in t.headers("gone").items()} | {"x-extra": "1" * 8000}),
        202,
        id="header-case-and-extra-headers",
    ),
]


@pytest.mark.parametrize(("make_event", "status_code"), HOSTILE)
def test_hostile_input_gets_4xx_or_2xx_and_records_nothing(
    target: Target, make_event: Callable[[Target], dict[str, Any]], status_code: int
) -> None:
    answer = target.pipeline.webhook.lambda_handler(make_event(target), LocalLambdaContext())
    assert answer["statusCode"] == status_code, answer["body"]
    image = target.pipeline.image("incoming/flows/target.png")
    request = target.pipeline.stack.tables.requests.get(target.item.submission_id)
    assert (image.status, image.result, request.status) == ("CREATED", None, "CREATED")
    listing = target.pipeline.stack.client("s3").list_objects_v2(Bucket=target.pipeline.stack.results_bucket)
    assert all(entry["Key"].startswith("unmatched/") for entry in listing.get("Contents", []))


def test_a_replayed_payload_for_an_unknown_request_is_kept_once(quiet_pipeline: Pipeline) -> None:
    pipeline = quiet_pipeline
    payload = forged_payload("unknown-request", "nobody")
    answers = [pipeline.post(payload, pipeline.signed_headers("gone-submission")) for _ in range(3)]
    assert {answer.json()["stored"] for answer in answers} == {answers[0].json()["stored"]}
    listing = pipeline.stack.client("s3").list_objects_v2(Bucket=pipeline.stack.results_bucket, Prefix="unmatched/")
    assert listing["KeyCount"] == 1


# --- key rotation -------------------------------------------------------------------------------------
def test_a_token_of_the_previous_key_is_accepted_within_the_max_age_after_a_rotation(
    quiet_pipeline: Pipeline,
) -> None:
    pipeline = quiet_pipeline
    stack = pipeline.stack
    pipeline.upload("incoming/flows/k1.png", "incoming/k2.png")
    first, second = pipeline.image("incoming/flows/k1.png"), pipeline.image("incoming/k2.png")
    old = static_keys(stack.signing_key)
    now = datetime.now(UTC)
    too_old = now - MAX_AGE - CLOCK_SKEW - timedelta(minutes=1)
    within = WebhookAuth(old, clock=lambda: now - MAX_AGE + timedelta(minutes=1)).headers(first.submission_id)
    expired = WebhookAuth(old, clock=lambda: too_old).headers(second.submission_id)

    stack.client("secretsmanager").put_secret_value(SecretId=stack.secret_arn, SecretString="the-new-key" * 6)
    webhook = pipeline.cold_start("WebhookFunction")

    def deliver(headers: dict[str, str], request_id: str) -> dict[str, Any]:
        body = json.dumps(pipeline.done_details(request_id))
        answer: dict[str, Any] = webhook.lambda_handler(webhook_event(headers, body), LocalLambdaContext())
        return answer

    assert deliver(expired, second.request_id)["statusCode"] == 401
    assert deliver(within, first.request_id)["statusCode"] == 200
    assert pipeline.image("incoming/flows/k1.png").status == "DONE"
    new = WebhookAuth(static_keys("the-new-key" * 6)).headers(second.submission_id)
    assert deliver(new, second.request_id)["statusCode"] == 200

    # A second rotation: the first key is two keys ago, and no longer accepted at all.
    stack.client("secretsmanager").put_secret_value(SecretId=stack.secret_arn, SecretString="the-third-key" * 6)
    webhook = pipeline.cold_start("WebhookFunction")
    fresh_but_old_key = WebhookAuth(old).headers(first.submission_id)
    assert deliver(fresh_but_old_key, first.request_id)["statusCode"] == 401
