"""The submit function, end to end on moto server and the emulator: S3 -> SQS -> handler -> Ximilar."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest
import requests

from tests.conftest import RunningEmulator
from tests.support.aws import AwsStack, is_test_event, sqs_event
from tests.support.events import load_event
from tests.support.receiver import Receiver, webhook_receiver
from xasync.lambda_runtime import LocalLambdaContext, load_function
from xasync.sample_images import png_bytes
from xasync.servers import wait_for
from ximilar_async.services.webhook_auth import SUBMISSION_HEADER, TOKEN_HEADER, Credentials, InvalidToken
from ximilar_async.values import identity

ROUTES = "incoming/=upscaler:upscale_2x;incoming/cards/=card-grader:grade;incoming/flows/=flows:my-flow"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with webhook_receiver() as running:
        yield running


@pytest.fixture
def submit_handler(
    monkeypatch: pytest.MonkeyPatch, aws_stack: AwsStack, emulator: RunningEmulator, receiver: Receiver
) -> Callable[..., ModuleType]:
    """Cold-start the submit handler with the template's environment pointed at this test's stack."""

    def cold_start(**parameters: str) -> ModuleType:
        environment = aws_stack.environment(
            "SubmitFunction",
            XimilarApiUrl=emulator.url,
            XimilarTokenParameterName=aws_stack.token_parameter,
            Routes=ROUTES,
            **parameters,
        )
        environment["WEBHOOK_URL"] = receiver.url  # the webhook function is not under test here
        for name, value in environment.items():
            monkeypatch.setenv(name, value)  # undone after the test
        return load_function(aws_stack.template, "SubmitFunction", environment)

    return cold_start


def upload_all(stack: AwsStack, keys_: list[str], body: bytes | None = None) -> list[dict[str, Any]]:
    """Put objects as `aws s3 cp` would and return the notifications S3 sent, TestEvent first."""
    for key in keys_:
        stack.put(key, png_bytes() if body is None else body)
    return stack.receive(len(keys_) + 1)


def invoke(handler: ModuleType, records: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(handler.lambda_handler(sqs_event(records), LocalLambdaContext()))


def posts(emulator: RunningEmulator) -> list[dict[str, Any]]:
    return [call for call in emulator.control.calls() if call["method"] == "POST"]


def ximilar_request(emulator: RunningEmulator, request_id: str) -> dict[str, Any]:
    answer = requests.get(
        f"{emulator.url}/account/v2/request/{request_id}",
        headers={"Authorization": f"Token {emulator.token}"},
        timeout=5,
    )
    return dict(answer.json())


def image(stack: AwsStack, key: str) -> Any:
    return stack.tables.images.get(identity.image_uri(stack.bucket, key))


def state(stack: AwsStack, key: str) -> tuple[str, str]:
    """(the image's status, its request's status): an image stays SUBMITTING until its result."""
    item = image(stack, key)
    return item.status, stack.request_of(item).status


def request_id(stack: AwsStack, key: str) -> str:
    return str(stack.request_of(image(stack, key)).request_id)


def test_23_objects_of_a_10_record_type_become_requests_of_10_10_and_3(
    submit_handler: Callable[..., ModuleType], aws_stack: AwsStack, emulator: RunningEmulator
) -> None:
    handler = submit_handler()
    records = upload_all(aws_stack, [f"incoming/cards/card-{n:02d}.png" for n in range(23)])
    assert is_test_event(records[0])

    assert invoke(handler, records) == {"batchItemFailures": []}

    request_ids = {request_id(aws_stack, f"incoming/cards/card-{n:02d}.png") for n in range(23)}
    sizes = sorted(len(ximilar_request(emulator, rid)["request"]["records"]) for rid in request_ids)
    assert sizes == [3, 10, 10]
    assert len(posts(emulator)) == 3
    assert {state(aws_stack, f"incoming/cards/card-{n:02d}.png") for n in range(23)} == {("SUBMITTING", "CREATED")}


def test_upscaler_objects_are_one_request_each_and_two_routes_make_two_requests(
    submit_handler: Callable[..., ModuleType], aws_stack: AwsStack, emulator: RunningEmulator
) -> None:
    handler = submit_handler()
    keys_ = ["incoming/a.png", "incoming/b.png", "incoming/flows/c.png", "incoming/flows/d.png"]
    invoke(handler, upload_all(aws_stack, keys_))
    items = {key: image(aws_stack, key) for key in keys_}
    ids = {key: aws_stack.request_of(item).request_id for key, item in items.items()}
    assert len({ids["incoming/a.png"], ids["incoming/b.png"]}) == 2
    assert ids["incoming/flows/c.png"] == ids["incoming/flows/d.png"]
    assert len(posts(emulator)) == 3
    flows = ximilar_request(emulator, ids["incoming/flows/c.png"])
    assert (flows["type"], flows["request"]["endpoint"]) == ("flows", "my-flow")


@pytest.mark.parametrize("key", ["incoming/with space.png", "incoming/a+b=c&d.png", "incoming/ünïcödé/日本.png"])
def test_keys_that_need_decoding_are_stored_decoded_and_really_fetched(
    submit_handler: Callable[..., ModuleType], aws_stack: AwsStack, emulator: RunningEmulator, key: str
) -> None:
    handler = submit_handler()
    records = upload_all(aws_stack, [key], png_bytes(37, 19))
    assert key not in records[1]["body"]  # S3 sent it URL-encoded
    invoke(handler, records)
    stored = image(aws_stack, key)
    assert (stored.key, state(aws_stack, key)) == (key, ("SUBMITTING", "CREATED"))
    assert stored.record_id == identity.record_id(aws_stack.bucket, key, stored.version)

    def fetched() -> dict[str, Any] | None:
        details = ximilar_request(emulator, request_id(aws_stack, key))
        return details if details["status"] == "DONE" else None

    record = wait_for(fetched, what="the emulator to process the presigned URL")["response"]["records"][0]
    assert record["_status"]["code"] == 200, record["_status"]
    assert (record["_width"], record["_height"], record["_id"]) == (37, 19, stored.record_id)


@pytest.mark.parametrize("inline_max_bytes", ["0", "100000"], ids=["presigned", "inline"])
def test_in_a_versioned_bucket_the_uploaded_version_is_the_one_sent(
    submit_handler: Callable[..., ModuleType], aws_stack: AwsStack, emulator: RunningEmulator, inline_max_bytes: str
) -> None:
    # Versioning is the owner's choice (README); reading a given version needs s3:GetObjectVersion.
    aws_stack.client("s3").put_bucket_versioning(Bucket=aws_stack.bucket, VersioningConfiguration={"Status": "Enabled"})
    handler = submit_handler(InlineBase64MaxBytes=inline_max_bytes)
    records = upload_all(aws_stack, ["incoming/versioned.png"], png_bytes(21, 13))
    s3 = aws_stack.client("s3")
    version = s3.head_object(Bucket=aws_stack.bucket, Key="incoming/versioned.png")["VersionId"]
    # S3's notifications of a versioned bucket carry the versionId; moto's leave it out.
    body = json.loads(records[1]["body"])
    body["Records"][0]["s3"]["object"]["versionId"] = version
    records[1]["body"] = json.dumps(body)
    aws_stack.put("incoming/versioned.png", png_bytes(5, 5))  # a newer version, not the one notified
    invoke(handler, records)
    stored = image(aws_stack, "incoming/versioned.png")
    assert stored.version_id

    def fetched() -> dict[str, Any] | None:
        details = ximilar_request(emulator, request_id(aws_stack, "incoming/versioned.png"))
        return details if details["status"] == "DONE" else None

    record = wait_for(fetched, what="the emulator to process the versioned image")["response"]["records"][0]
    assert record["_status"]["code"] == 200, record["_status"]
    assert (record["_width"], record["_height"]) == (21, 13)


def test_the_test_event_alone_does_nothing(
    submit_handler: Callable[..., ModuleType], aws_stack: AwsStack, emulator: RunningEmulator
) -> None:
    handler = submit_handler()
    aws_stack.put("incoming/x.png", png_bytes())
    test_event = next(record for record in aws_stack.receive(2) if is_test_event(record))
    assert invoke(handler, [test_event]) == {"batchItemFailures": []}
    assert emulator.control.calls() == []


def test_a_duplicate_notification_makes_no_second_request(
    submit_handler: Callable[..., ModuleType], aws_stack: AwsStack, emulator: RunningEmulator
) -> None:
    handler = submit_handler()
    records = upload_all(aws_stack, ["incoming/flows/once.png"])
    invoke(handler, records)
    first = image(aws_stack, "incoming/flows/once.png")
    invoke(handler, records)  # delivered again
    invoke(handler, records + records)  # and twice in one batch
    assert len(posts(emulator)) == 1
    assert image(aws_stack, "incoming/flows/once.png").submission_id == first.submission_id


def test_a_new_upload_of_the_same_key_is_a_new_submission(
    submit_handler: Callable[..., ModuleType], aws_stack: AwsStack, emulator: RunningEmulator
) -> None:
    handler = submit_handler()
    first_records = upload_all(aws_stack, ["incoming/flows/again.png"], png_bytes(10, 10))
    invoke(handler, first_records)
    first = image(aws_stack, "incoming/flows/again.png")
    aws_stack.put("incoming/flows/again.png", png_bytes(20, 20))
    invoke(handler, aws_stack.receive(1))
    second = image(aws_stack, "incoming/flows/again.png")
    assert second.record_id != first.record_id
    assert second.submission_id != first.submission_id
    # The older notification arriving late changes nothing.
    invoke(handler, first_records[1:])
    assert image(aws_stack, "incoming/flows/again.png").record_id == second.record_id
    assert len(posts(emulator)) == 2


def test_429_then_success_submits_once(
    submit_handler: Callable[..., ModuleType], aws_stack: AwsStack, emulator: RunningEmulator
) -> None:
    handler = submit_handler()
    records = upload_all(aws_stack, ["incoming/flows/busy.png"])
    emulator.control.fail_next(1, status=429, retry_after=1)
    assert invoke(handler, records) == {"batchItemFailures": []}
    assert [call["status"] for call in posts(emulator)] == [429, 201]
    assert state(aws_stack, "incoming/flows/busy.png") == ("SUBMITTING", "CREATED")


def test_a_500_storm_hands_exactly_the_affected_images_to_the_sweeper_and_retries_no_message(
    submit_handler: Callable[..., ModuleType], aws_stack: AwsStack, emulator: RunningEmulator
) -> None:
    handler = submit_handler(SubmitConcurrency="1")  # one POST at a time: the first one meets the fault
    keys_ = [f"incoming/flows/storm-{n:02d}.png" for n in range(12)]
    records = upload_all(aws_stack, keys_)[1:]
    emulator.control.fail_next(1, status=500)  # the first request (10 images) fails, the second (2) passes
    answer = invoke(handler, records)
    assert answer == {"batchItemFailures": []}  # every upload is owned: the pipeline retries, not SQS
    waiting = [image(aws_stack, key) for key in keys_[:10]]
    assert [item.status for item in waiting] == ["SUBMITTING"] * 10
    assert all(item.status_reason.startswith("waiting to be submitted: not accepted yet") for item in waiting)
    assert [state(aws_stack, key) for key in keys_[10:]] == [("SUBMITTING", "CREATED")] * 2
    request = aws_stack.tables.requests.get(waiting[0].submission_id)
    assert (request.status, request.due_shard is not None) == ("SUBMITTING", True)  # due for the sweeper
    assert [call["status"] for call in posts(emulator)] == [500, 201]


def test_a_400_marks_the_images_failed_with_ximilars_message_and_is_not_retried(
    submit_handler: Callable[..., ModuleType], aws_stack: AwsStack, emulator: RunningEmulator
) -> None:
    handler = submit_handler(RecordsPerRequest="upscaler=2")  # beyond what the service accepts
    keys_ = ["incoming/one.png", "incoming/two.png"]
    assert invoke(handler, upload_all(aws_stack, keys_)) == {"batchItemFailures": []}
    for key in keys_:
        stored = image(aws_stack, key)
        assert stored.status == "FAILED"
        assert "400" in stored.status_reason and "no more than 1" in stored.status_reason
    # Nothing for the sweeper, and no request item: Ximilar has nothing of it (the images say why).
    assert aws_stack.tables.requests.count(stored.submission_id) == 0


def test_bad_inputs_end_failed_with_a_reason_and_no_request(
    submit_handler: Callable[..., ModuleType], aws_stack: AwsStack, emulator: RunningEmulator
) -> None:
    handler = submit_handler(MaxImageBytes="1000")
    aws_stack.put("incoming/notes.txt", b"not an image")
    aws_stack.put("incoming/empty.png", b"")
    aws_stack.put("incoming/huge.png", png_bytes(400, 400) + b"\0" * 1000)
    invoke(handler, aws_stack.receive(4))
    reasons = {key: image(aws_stack, key) for key in ("incoming/notes.txt", "incoming/empty.png", "incoming/huge.png")}
    assert {key: item.status for key, item in reasons.items()} == dict.fromkeys(reasons, "FAILED")
    assert "not an image extension: .txt" in reasons["incoming/notes.txt"].status_reason
    assert reasons["incoming/empty.png"].status_reason == "the object is empty"
    assert "over the maximum of 1000" in reasons["incoming/huge.png"].status_reason
    assert emulator.control.calls() == []


def test_a_non_image_with_an_image_name_is_answered_with_a_non_200_status(
    submit_handler: Callable[..., ModuleType], aws_stack: AwsStack, emulator: RunningEmulator
) -> None:
    handler = submit_handler()
    invoke(handler, upload_all(aws_stack, ["incoming/flows/fake.jpg"], b"this is text, not a jpeg"))

    def done() -> dict[str, Any] | None:
        details = ximilar_request(emulator, request_id(aws_stack, "incoming/flows/fake.jpg"))
        return details if details["status"] == "DONE" else None

    status = wait_for(done, what="DONE")["response"]["records"][0]["_status"]
    assert status["code"] != 200
    assert "not a supported image format" in status["text"]


def test_small_objects_can_go_inline_as_base64(
    submit_handler: Callable[..., ModuleType], aws_stack: AwsStack, emulator: RunningEmulator
) -> None:
    handler = submit_handler(InlineBase64MaxBytes="100000")
    invoke(handler, upload_all(aws_stack, ["incoming/flows/inline.png"], png_bytes(13, 7)))
    sent = ximilar_request(emulator, request_id(aws_stack, "incoming/flows/inline.png"))["request"]["records"][0]
    assert "_base64" in sent and "_url" not in sent


def test_the_webhook_headers_authenticate_this_request_only(
    submit_handler: Callable[..., ModuleType], aws_stack: AwsStack, emulator: RunningEmulator, receiver: Receiver
) -> None:
    handler = submit_handler()
    invoke(handler, upload_all(aws_stack, ["incoming/flows/w1.png", "incoming/w2.png"]))
    wait_for(lambda: len(receiver.deliveries) == 2, what="two webhooks")
    for delivery in receiver.deliveries:
        submission_id, token = delivery.headers[SUBMISSION_HEADER], delivery.headers[TOKEN_HEADER]
        aws_stack.auth.verify(Credentials(submission_id, token))  # raises InvalidToken if not
        assert aws_stack.signing_key.decode() not in json.dumps(delivery.headers)
    first, second = receiver.deliveries
    forged = Credentials(second.headers[SUBMISSION_HEADER], first.headers[TOKEN_HEADER])
    with pytest.raises(InvalidToken):
        aws_stack.auth.verify(forged)


def test_request_items_record_what_was_sent(
    submit_handler: Callable[..., ModuleType], aws_stack: AwsStack, emulator: RunningEmulator
) -> None:
    handler = submit_handler()
    invoke(handler, upload_all(aws_stack, ["incoming/flows/r1.png", "incoming/flows/r2.png"]))
    stored = image(aws_stack, "incoming/flows/r1.png")
    request = aws_stack.tables.requests.get(stored.submission_id)
    assert (request.status, request.request_type) == ("CREATED", "flows")
    sent = ximilar_request(emulator, request.request_id)["request"]["records"]
    assert sorted(record["_id"] for record in sent) == sorted(request.images.as_dict())
    assert sorted(request.images.as_dict().values()) == sorted(
        identity.image_uri(aws_stack.bucket, k) for k in ("incoming/flows/r1.png", "incoming/flows/r2.png")
    )
    assert request.due_shard is not None and request.next_check_at is not None
    # The image is not written after the POST: in no status index until its result (one write saved, and
    # three index writes), without Ximilar's id (the request has it), and findable in flight from its request.
    assert (stored.status, stored.status_shard, stored.request_id) == ("SUBMITTING", None, None)


def test_logs_carry_no_token_key_or_url_signature(
    submit_handler: Callable[..., ModuleType],
    aws_stack: AwsStack,
    emulator: RunningEmulator,
    capsys: pytest.CaptureFixture[str],
) -> None:
    handler = submit_handler(LogLevel="DEBUG")
    emulator.control.fail_next(1, status=500)
    invoke(handler, upload_all(aws_stack, ["incoming/flows/log1.png", "incoming/flows/log2.png"]))
    output = capsys.readouterr()
    logged = output.out + output.err
    assert "incoming/flows/log1.png" in logged  # the logs do say what happened
    for secret in (emulator.token, aws_stack.signing_key.decode(), "X-Amz-Signature", "Signature="):
        assert secret not in logged


def test_a_plain_s3_event_works_as_sam_local_invoke_sends_it(
    submit_handler: Callable[..., ModuleType], aws_stack: AwsStack, emulator: RunningEmulator
) -> None:
    handler = submit_handler()
    event = load_event("s3-put.json")
    record = event["Records"][0]["s3"]
    record["bucket"]["name"] = aws_stack.bucket
    aws_stack.put("incoming/holiday photos/café terrace.jpg", png_bytes())
    answer = handler.lambda_handler(event, LocalLambdaContext())
    assert answer["images_submitted"] == 1
    assert state(aws_stack, "incoming/holiday photos/café terrace.jpg") == ("SUBMITTING", "CREATED")


def test_the_sqs_event_file_is_handled_test_event_route_and_rejection_included(
    submit_handler: Callable[..., ModuleType], aws_stack: AwsStack, emulator: RunningEmulator
) -> None:
    handler = submit_handler()
    event = load_event("sqs-s3-put.json")
    for record in event["Records"]:
        body = json.loads(record["body"])
        for s3_record in body.get("Records", []):
            s3_record["s3"]["bucket"]["name"] = aws_stack.bucket
        record["body"] = json.dumps(body)
    aws_stack.put("incoming/cards/pikachu (1999).png", png_bytes())
    assert invoke(handler, event["Records"]) == {"batchItemFailures": []}
    assert state(aws_stack, "incoming/cards/pikachu (1999).png") == ("SUBMITTING", "CREATED")
    assert image(aws_stack, "incoming/notes.txt").status == "FAILED"


def test_a_message_that_is_not_a_notification_is_retried_not_dropped(
    submit_handler: Callable[..., ModuleType], aws_stack: AwsStack
) -> None:
    handler = submit_handler()
    records = upload_all(aws_stack, ["incoming/flows/good.png"])
    broken = {**records[1], "messageId": "broken-1", "body": "{not json"}
    answer = invoke(handler, [*records, broken])
    assert answer == {"batchItemFailures": [{"itemIdentifier": "broken-1"}]}
    assert state(aws_stack, "incoming/flows/good.png") == ("SUBMITTING", "CREATED")
