"""The webhook function: the full round trip submit -> emulator -> HTTP API -> webhook -> DynamoDB,
and every way a webhook can be wrong."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from tests.conftest import RunningEmulator
from tests.support.aws import AwsStack, create_stack
from tests.support.events import load_event
from tests.support.pipeline import Pipeline, as_kept, start_pipeline
from xasync.lambda_runtime import LocalLambdaContext, load_function
from xasync.local_stack import LOCAL_SIGNING_KEY, freshly_signed
from xasync.sample_images import png_bytes
from xasync.servers import wait_for
from ximilar_async.adapters.dynamodb import item_size
from ximilar_async.services.webhook_auth import SUBMISSION_HEADER, TOKEN_HEADER


@pytest.fixture
def pipeline(monkeypatch: pytest.MonkeyPatch, aws_stack: AwsStack, emulator: RunningEmulator) -> Iterator[Pipeline]:
    yield from start_pipeline(monkeypatch, aws_stack, emulator)


@pytest.fixture
def quiet_pipeline(pipeline: Pipeline) -> Pipeline:
    """Webhooks dropped by the emulator: the test posts them itself."""
    pipeline.emulator.control.set_knobs(webhook_drop_rate=1.0)
    return pipeline


@pytest.fixture
def payload_pipeline(
    monkeypatch: pytest.MonkeyPatch, aws_stack: AwsStack, emulator: RunningEmulator
) -> Iterator[Pipeline]:
    """Webhooks posted by the test, and their bodies recorded as posted (the opt-in `payload` source)."""
    for pipeline in start_pipeline(monkeypatch, aws_stack, emulator, WebhookResultSource="payload"):
        pipeline.emulator.control.set_knobs(webhook_drop_rate=1.0)
        yield pipeline


def test_an_upload_ends_done_with_its_result_through_the_webhook(pipeline: Pipeline) -> None:
    pipeline.upload("incoming/photo.png", "incoming/flows/a.png", "incoming/flows/b.png")
    photo = pipeline.wait_status("incoming/photo.png", "DONE")
    assert (photo.result["_upscaled_width"], photo.result["_upscaled_height"]) == (24, 16)
    assert photo.result["_status"]["code"] == 200
    assert photo.status_shard.startswith("DONE#")
    flows = [pipeline.wait_status(key, "DONE") for key in ("incoming/flows/a.png", "incoming/flows/b.png")]
    assert all(item.result["_tags"] for item in flows)
    # The request item is not written again: its images say it is finished (none waits for it), and
    # it expires on its own; the sweeper's marks pass over its due entry.
    request = pipeline.stack.tables.requests.get(photo.submission_id)
    assert (request.status, request.request_id) == ("CREATED", photo.request_id)
    assert request.next_check_at is not None and request.expires_at is not None
    tracked = pipeline.storage.requests.get_request(photo.submission_id)
    assert tracked is not None and pipeline.storage.images.unfinished_images(tracked) == {}


def test_duplicate_and_reordered_deliveries_leave_the_same_state(pipeline: Pipeline) -> None:
    pipeline.emulator.control.set_knobs(webhook_duplicate_rate=1.0, webhook_jitter_seconds=0.5)
    keys_ = [f"incoming/flows/dup-{n}.png" for n in range(12)] + ["incoming/one.png", "incoming/two.png"]
    pipeline.upload(*keys_)
    finished = {key: pipeline.wait_status(key, "DONE") for key in keys_}
    wait_for(lambda: sum(w["outcome"] == "HTTP 200" for w in pipeline.emulator.control.webhooks()) == 8, what="8")
    for key, item in finished.items():
        again = pipeline.image(key)
        assert (again.status, again.updated_at, again.result.as_dict()) == (
            "DONE",
            item.updated_at,
            item.result.as_dict(),
        )


def test_a_record_with_a_non_200_status_ends_error_with_code_and_text(pipeline: Pipeline) -> None:
    pipeline.upload("incoming/flows/fake.jpg", body=b"plain text in disguise")
    item = pipeline.wait_status("incoming/flows/fake.jpg", "ERROR", "DONE")
    assert item.status == "ERROR"
    assert item.status_reason.startswith("400: Unable to load image")
    assert item.result["_status"]["code"] == 400


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(lambda token, other: token[:-1] + ("0" if token[-1] != "0" else "1"), id="one-character-off"),
        pytest.param(lambda token, other: token + "00", id="different-length"),
        pytest.param(lambda token, other: token[:10], id="shorter"),
        pytest.param(lambda token, other: "", id="empty"),
        pytest.param(lambda token, other: other, id="another-requests-valid-token"),
    ],
)
def test_wrong_tokens_get_401_and_write_nothing(quiet_pipeline: Pipeline, forge: Callable[[str, str], str]) -> None:
    pipeline = quiet_pipeline
    pipeline.upload("incoming/flows/t1.png", "incoming/t2.png")
    first, second = pipeline.image("incoming/flows/t1.png"), pipeline.image("incoming/t2.png")
    payload = pipeline.done_details(first.request_id)
    headers = pipeline.signed_headers(first.submission_id)
    other_headers = pipeline.signed_headers(second.submission_id)
    headers[TOKEN_HEADER] = forge(headers[TOKEN_HEADER], other_headers[TOKEN_HEADER])
    answer = pipeline.post(payload, headers)
    assert answer.status_code == 401
    assert pipeline.image("incoming/flows/t1.png").status == "CREATED"


@pytest.mark.parametrize(("source", "status_code"), [("ximilar", 200), ("payload", 422)])
def test_a_valid_token_replayed_with_another_requests_payload_records_nothing_of_it(
    monkeypatch: pytest.MonkeyPatch, aws_stack: AwsStack, emulator: RunningEmulator, source: str, status_code: int
) -> None:
    # The token no longer names records: by default the body is ignored and the first request gets
    # Ximilar's own answer; trusting the body, its records must be the request's (422 otherwise).
    for pipeline in start_pipeline(monkeypatch, aws_stack, emulator, WebhookResultSource=source):
        pipeline.emulator.control.set_knobs(webhook_drop_rate=1.0)
        pipeline.upload("incoming/flows/r1.png", "incoming/r2.png")
        first, second = pipeline.image("incoming/flows/r1.png"), pipeline.image("incoming/r2.png")
        pipeline.done_details(first.request_id)
        headers = pipeline.signed_headers(first.submission_id)
        answer = pipeline.post(pipeline.done_details(second.request_id), headers)
        assert answer.status_code == status_code, answer.text
        assert pipeline.image("incoming/r2.png").status == "CREATED"
        first_now = pipeline.image("incoming/flows/r1.png")
        assert first_now.status == ("DONE" if source == "ximilar" else "CREATED")
        if source == "ximilar":
            genuine = pipeline.details(first.request_id)["response"]["records"][0]
            assert first_now.result.as_dict() == as_kept(genuine, first.image_uri)


def test_missing_token_headers_get_401(quiet_pipeline: Pipeline) -> None:
    pipeline = quiet_pipeline
    pipeline.upload("incoming/flows/m.png")
    payload = pipeline.done_details(pipeline.image("incoming/flows/m.png").request_id)
    assert pipeline.post(payload, {"Content-Type": "application/json"}).status_code == 401
    assert pipeline.image("incoming/flows/m.png").status == "CREATED"


def test_malformed_not_a_payload_and_oversized_bodies_are_refused(
    monkeypatch: pytest.MonkeyPatch, aws_stack: AwsStack, emulator: RunningEmulator
) -> None:
    for pipeline in start_pipeline(monkeypatch, aws_stack, emulator, MaxWebhookBodyBytes="2048"):
        unsigned = {SUBMISSION_HEADER: "s", TOKEN_HEADER: "t", "Content-Type": "application/json"}
        assert pipeline.post(b'{"status": "DONE", "response": ', unsigned).status_code == 401  # never parsed
        headers = pipeline.signed_headers("s")
        malformed = pipeline.post(b'{"status": "DONE", "response": ', headers)
        assert (malformed.status_code, malformed.json()["message"]) == (400, "the body is not JSON")
        not_a_payload = pipeline.post({"status": "DONE", "id": "x"}, headers)
        assert not_a_payload.status_code == 422
        assert "response.records" in not_a_payload.json()["message"]
        no_ids = pipeline.post({"status": "DONE", "id": "x", "response": {"records": [{"_url": "u"}]}}, headers)
        assert (no_ids.status_code, "_id" in no_ids.json()["message"]) == (422, True)
        oversized = pipeline.post(b"{" + b" " * 4096 + b"}", unsigned)
        assert oversized.status_code == 413


def test_a_signed_payload_missing_required_fields_gets_422(quiet_pipeline: Pipeline) -> None:
    pipeline = quiet_pipeline
    pipeline.upload("incoming/flows/f.png")
    item = pipeline.image("incoming/flows/f.png")
    payload = pipeline.done_details(item.request_id)
    del payload["response"]["records"][0]["_status"]
    answer = pipeline.post(payload, pipeline.signed_headers(item.submission_id))
    assert answer.status_code == 422
    assert "_status" in answer.json()["message"]
    assert pipeline.image("incoming/flows/f.png").status == "CREATED"


def test_a_payload_lands_when_its_request_id_never_reached_dynamodb(quiet_pipeline: Pipeline) -> None:
    pipeline = quiet_pipeline
    pipeline.upload("incoming/flows/crash.png")
    item = pipeline.image("incoming/flows/crash.png")
    payload = pipeline.done_details(item.request_id)
    # The state a crash right after the POST leaves: nothing of Ximilar's answer was written.
    requests_table, images = pipeline.stack.tables.requests, pipeline.stack.tables.images
    requests_table(item.submission_id).update(
        actions=[requests_table.status.set("SUBMITTING"), requests_table.request_id.remove()]
    )
    images(item.image_uri).update(actions=[images.status.set("SUBMITTING"), images.request_id.remove()])

    answer = pipeline.post(payload, pipeline.signed_headers(item.submission_id))
    assert answer.status_code == 200, answer.text
    landed = pipeline.image("incoming/flows/crash.png")
    assert (landed.status, landed.request_id) == ("DONE", payload["id"])
    assert pipeline.stack.tables.requests.get(item.submission_id).request_id == payload["id"]


def test_a_payload_that_names_nothing_known_is_stored_and_answered_2xx(quiet_pipeline: Pipeline) -> None:
    pipeline = quiet_pipeline
    payload = {
        "status": "DONE",
        "id": "unknown-request",
        "type": "flows",
        "response": {"records": [{"_id": "nobody", "_status": {"code": 200, "text": "OK"}}]},
    }
    answer = pipeline.post(payload, pipeline.signed_headers("no-such-submission"))
    assert answer.status_code == 202
    location = answer.json()["stored"]
    bucket, key = location.removeprefix("s3://").split("/", 1)
    assert bucket == pipeline.stack.results_bucket
    stored = pipeline.stack.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    assert json.loads(stored) == payload


def test_a_late_or_out_of_order_webhook_never_moves_a_done_image_back(quiet_pipeline: Pipeline) -> None:
    pipeline = quiet_pipeline
    pipeline.upload("incoming/flows/late.png")
    item = pipeline.image("incoming/flows/late.png")
    payload = pipeline.done_details(item.request_id)
    headers = pipeline.signed_headers(item.submission_id)
    assert pipeline.post(payload, headers).json() == {"recorded": 1, "duplicates": 0, "unmatched": 0}
    late = json.loads(json.dumps(payload))
    late["response"]["records"][0]["_status"] = {"code": 500, "text": "late failure"}
    assert pipeline.post(late, headers).json() == {"recorded": 0, "duplicates": 1, "unmatched": 0}
    final = pipeline.image("incoming/flows/late.png")
    assert (final.status, final.result["_status"]["code"]) == ("DONE", 200)


def test_a_result_too_large_for_an_item_lands_in_s3_with_a_pointer(
    monkeypatch: pytest.MonkeyPatch, aws_stack: AwsStack, emulator: RunningEmulator
) -> None:
    # The emulator's results are small: the large one is posted, so the body must be what is recorded.
    for pipeline in start_pipeline(monkeypatch, aws_stack, emulator, WebhookResultSource="payload"):
        pipeline.emulator.control.set_knobs(webhook_drop_rate=1.0)
        check_a_large_result_lands_in_s3(pipeline)


def check_a_large_result_lands_in_s3(pipeline: Pipeline) -> None:
    pipeline.upload("incoming/flows/big.png")
    item = pipeline.image("incoming/flows/big.png")
    payload = pipeline.done_details(item.request_id)
    payload["response"]["records"][0]["_objects"] = [{"name": "x" * 1000, "n": n} for n in range(450)]
    answer = pipeline.post(payload, pipeline.signed_headers(item.submission_id))
    assert answer.status_code == 200, answer.text
    landed = pipeline.image("incoming/flows/big.png")
    assert (landed.status, landed.result) == ("DONE", None)
    bucket, key = landed.result_s3_uri.removeprefix("s3://").split("/", 1)
    stored = json.loads(pipeline.stack.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read())
    # The record as Ximilar sent it, but for its presigned `_url`: the image's URI instead (issue 12)
    assert stored == {**payload["response"]["records"][0], "_url": item.image_uri}
    assert "X-Amz-Signature" not in json.dumps(stored)
    assert bucket != pipeline.stack.bucket  # never the input bucket: it cannot trigger submit


def test_by_default_a_signed_body_is_a_notification_and_what_ximilar_says_is_recorded(
    quiet_pipeline: Pipeline,
) -> None:
    pipeline = quiet_pipeline
    pipeline.upload("incoming/flows/v.png")
    item = pipeline.image("incoming/flows/v.png")
    real = pipeline.done_details(item.request_id)
    forged = json.loads(json.dumps(real))
    forged["response"]["records"][0]["_tags"] = {"Category": [{"name": "Forged", "prob": 1.0}]}
    answer = pipeline.post(forged, pipeline.signed_headers(item.submission_id))
    assert answer.status_code == 200, answer.text
    recorded = pipeline.image("incoming/flows/v.png").result.as_dict()
    assert recorded["_tags"] == real["response"]["records"][0]["_tags"]


def test_other_paths_and_methods_are_not_found(pipeline: Pipeline) -> None:
    assert requests.get(pipeline.webhook_url, timeout=5).status_code == 404  # the HTTP API routes POST only
    assert requests.post(f"{pipeline.api.url}/other", timeout=5).status_code == 404
    event = load_event("webhook-done.json")
    event["requestContext"]["http"]["method"] = "GET"
    event["routeKey"] = "GET /webhook"
    answer = pipeline.webhook.lambda_handler(event, LocalLambdaContext())
    assert (answer["statusCode"], answer["headers"]["Allow"]) == (405, "POST")


@pytest.mark.parametrize(
    ("event_file", "status_code"),
    [("webhook-done.json", 202), ("webhook-wrong-token.json", 401), ("webhook-malformed.json", 400)],
)
def test_the_event_files_get_their_answers_with_the_local_signing_key(
    monkeypatch: pytest.MonkeyPatch,
    aws_endpoint: str,
    template: dict[str, Any],
    emulator: RunningEmulator,
    event_file: str,
    status_code: int,
) -> None:
    stack = create_stack(aws_endpoint, template, emulator.token, signing_key=LOCAL_SIGNING_KEY)
    environment = stack.environment("WebhookFunction")
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    webhook = load_function(template, "WebhookFunction", environment)
    # The committed tokens expire (MaxRequestAgeSeconds): the files are used as `xasync invoke` uses them.
    answer = webhook.lambda_handler(freshly_signed(load_event(event_file)), LocalLambdaContext())
    assert answer["statusCode"] == status_code, answer["body"]


def test_an_older_uploads_result_never_replaces_a_newer_uploads_state(quiet_pipeline: Pipeline) -> None:
    pipeline = quiet_pipeline
    pipeline.upload("incoming/flows/again.png")
    old = pipeline.image("incoming/flows/again.png")
    old_payload = pipeline.done_details(old.request_id)
    pipeline.upload("incoming/flows/again.png", body=png_bytes(30, 30))  # a new version of the key
    new = pipeline.image("incoming/flows/again.png")
    assert new.record_id != old.record_id

    answer = pipeline.post(old_payload, pipeline.signed_headers(old.submission_id))
    assert answer.json() == {"recorded": 0, "duplicates": 1, "unmatched": 0}
    current = pipeline.image("incoming/flows/again.png")
    assert (current.record_id, current.status, current.result) == (new.record_id, "CREATED", None)


def test_a_finished_image_stays_finished_when_its_request_was_not_marked_done(quiet_pipeline: Pipeline) -> None:
    pipeline = quiet_pipeline
    pipeline.upload("incoming/flows/half.png")
    item = pipeline.image("incoming/flows/half.png")
    payload = pipeline.done_details(item.request_id)
    headers = pipeline.signed_headers(item.submission_id)
    pipeline.post(payload, headers)
    # As if the first delivery died after the image writes, before the request's.
    requests_table = pipeline.stack.tables.requests
    requests_table(item.submission_id).update(actions=[requests_table.status.set("CREATED")])
    late = json.loads(json.dumps(payload))
    late["response"]["records"][0]["_status"] = {"code": 500, "text": "late failure"}
    assert pipeline.post(late, headers).json() == {"recorded": 0, "duplicates": 1, "unmatched": 0}
    assert pipeline.image("incoming/flows/half.png").status == "DONE"
    # Nothing to add to what the image says: the request item is left as it was.
    assert requests_table.get(item.submission_id).status == "CREATED"


def stored_result(pipeline: Pipeline, location: str) -> Any:
    bucket, key = location.removeprefix("s3://").split("/", 1)
    assert bucket == pipeline.stack.results_bucket
    return json.loads(pipeline.stack.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read())


def test_a_result_over_dynamodbs_item_size_but_under_300_kb_of_json_lands_in_s3(payload_pipeline: Pipeline) -> None:
    # Given a record of many tiny values: 2 bytes each in JSON, 3 by DynamoDB's rules
    pipeline = payload_pipeline
    pipeline.upload("incoming/flows/tiny.png")
    item = pipeline.image("incoming/flows/tiny.png")
    payload = pipeline.done_details(item.request_id)
    record = payload["response"]["records"][0]
    record["_objects"] = [0] * 140_000
    assert len(json.dumps(record, separators=(",", ":"))) < 300_000
    assert item_size.attribute_size("result", record) > item_size.ITEM_MAX_BYTES

    # When its webhook arrives
    answer = pipeline.post(payload, pipeline.signed_headers(item.submission_id))

    # Then the record is in S3, under its image and request, and the item points to it
    assert answer.status_code == 200, answer.text
    landed = pipeline.image("incoming/flows/tiny.png")
    assert (landed.status, landed.result) == ("DONE", None)
    assert landed.result_s3_uri.endswith(f"/results/{item.record_id}/{item.request_id}.json")
    assert stored_result(pipeline, landed.result_s3_uri) == as_kept(record, landed.image_uri)


def test_a_result_dynamodb_refuses_as_too_large_is_stored_in_s3_instead(
    payload_pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a recorder whose size estimate lets a too-large record through (as if its margin were wrong)
    pipeline = payload_pipeline
    monkeypatch.setattr(pipeline.webhook.receiver.recorder, "inline_max_bytes", 10 * item_size.ITEM_MAX_BYTES)
    pipeline.upload("incoming/flows/refused.png")
    item = pipeline.image("incoming/flows/refused.png")
    payload = pipeline.done_details(item.request_id)
    record = payload["response"]["records"][0]
    record["_text"] = "y" * 420_000

    # When its webhook arrives, and DynamoDB refuses the item write as too large
    answer = pipeline.post(payload, pipeline.signed_headers(item.submission_id))

    # Then the record went to S3 after all, with the pointer in the item
    assert answer.status_code == 200, answer.text
    landed = pipeline.image("incoming/flows/refused.png")
    assert (landed.status, landed.result) == ("DONE", None)
    assert stored_result(pipeline, landed.result_s3_uri) == as_kept(record, landed.image_uri)


def test_a_losing_duplicate_never_overwrites_the_winners_stored_result(payload_pipeline: Pipeline) -> None:
    # Given an image whose large result is recorded from its request
    pipeline = payload_pipeline
    pipeline.upload("incoming/flows/twice.png")
    item = pipeline.image("incoming/flows/twice.png")
    first = pipeline.done_details(item.request_id)
    first["response"]["records"][0]["_objects"] = [{"name": "first" * 200, "n": n} for n in range(450)]
    headers = pipeline.signed_headers(item.submission_id)
    assert pipeline.post(first, headers).json() == {"recorded": 1, "duplicates": 0, "unmatched": 0}
    winner = pipeline.image("incoming/flows/twice.png")

    # When a second submission of the same upload answers too (its message came again after a crash
    # between the POST and the write, and the claim's lease had run out: the README's double submission)
    submitter = pipeline.submit.submitter
    again = f"again-{item.record_id[:8]}"
    now = datetime.now(UTC)
    assert submitter.requests.open_request(
        again, "flows", "my-flow", {item.record_id: item.image_uri}, now, now + timedelta(minutes=15)
    )
    record = {"_id": item.record_id, "_base64": base64_png()}
    second = pipeline.done_details(submitter.ximilar.submit("flows", "my-flow", [record])["id"])
    second["response"]["records"][0]["_objects"] = [{"name": "second" * 200, "n": n} for n in range(450)]
    answer = pipeline.post(second, pipeline.signed_headers(again))
    assert answer.json() == {"recorded": 0, "duplicates": 1, "unmatched": 0}

    # Then the item still points at the winner's object, and that object still holds the winner's record
    final = pipeline.image("incoming/flows/twice.png")
    assert (final.result_s3_uri, final.request_id) == (winner.result_s3_uri, item.request_id)
    assert stored_result(pipeline, final.result_s3_uri) == as_kept(first["response"]["records"][0], final.image_uri)


def base64_png() -> str:
    return base64.b64encode(png_bytes(12, 8)).decode()
