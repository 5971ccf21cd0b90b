"""The sweeper on moto server and the emulator: lost webhooks, stuck and failed requests, bounded runs.

Instead of waiting minutes for a next check, a test runs the sweeper with its clock moved ahead.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import RunningEmulator
from tests.support.aws import AwsStack
from tests.support.events import load_event
from tests.support.pipeline import Pipeline, start_pipeline
from xasync.lambda_runtime import LocalLambdaContext
from xasync.sample_images import png_bytes
from xasync.servers import wait_for
from ximilar_async.adapters.dynamodb import keys
from ximilar_async.services.resubmission import MAX_IMAGE_ATTEMPTS
from ximilar_async.services.result_recorder import MAX_INCOMPLETE_ANSWERS
from ximilar_async.services.submitter import CLAIM_LEASE
from ximilar_async.services.sweeper import HOLD, MAX_SWEEP_FAILURES
from ximilar_async.values.entities import Claim
from ximilar_async.values.statuses import Status
from ximilar_async.values.uploads import Upload, uploads_from_notification

LATER = timedelta(minutes=3)  # past the first check of a fresh request


@pytest.fixture
def pipeline(monkeypatch: pytest.MonkeyPatch, aws_stack: AwsStack, emulator: RunningEmulator) -> Iterator[Pipeline]:
    yield from start_pipeline(monkeypatch, aws_stack, emulator, MaxRequestAgeSeconds="600")


def statuses(pipeline: Pipeline, keys_: list[str]) -> Counter[str]:
    return Counter(pipeline.image(key).status for key in keys_)


def emulator_done(pipeline: Pipeline, keys_: list[str]) -> None:
    """Wait until Ximilar (the emulator) has finished every request of these images."""
    for request_id in {pipeline.image(key).request_id for key in keys_}:
        pipeline.done_details(request_id)


def posts(pipeline: Pipeline) -> list[dict[str, Any]]:
    return [call for call in pipeline.emulator.control.calls() if call["method"] == "POST"]


def test_lost_webhooks_are_recovered_and_nothing_is_recorded_twice(pipeline: Pipeline) -> None:
    pipeline.emulator.control.set_knobs(webhook_drop_rate=0.3, webhook_duplicate_rate=0.2)
    keys_ = [f"incoming/lost-{n:02d}.png" for n in range(20)]  # upscaler: 20 requests
    pipeline.upload(*keys_)
    emulator_done(pipeline, keys_)
    deliveries = pipeline.emulator.control.webhooks()
    dropped = sum(1 for w in deliveries if w["outcome"] == "dropped")
    assert 0 < dropped < 20
    wait_for(lambda: statuses(pipeline, keys_)["DONE"] == 20 - dropped, what="the delivered ones")

    outcome = pipeline.sweep(LATER)
    assert statuses(pipeline, keys_) == {"DONE": 20}
    assert outcome.recorded == dropped  # the sweeper wrote only what the webhooks had not
    assert outcome.by_state == {"DONE": dropped}
    assert pipeline.sweep(LATER).taken == 0  # nothing left due


def test_a_request_that_never_finishes_ends_failed_after_the_maximum_age(pipeline: Pipeline) -> None:
    pipeline.emulator.control.set_knobs(final_state="PROCESSING")
    pipeline.upload("incoming/flows/stuck-1.png", "incoming/flows/stuck-2.png")
    wait_for(
        lambda: pipeline.details(pipeline.image("incoming/flows/stuck-1.png").request_id)["status"] == "PROCESSING"
    )

    first = pipeline.sweep(LATER)
    assert (first.rescheduled, first.by_state) == (1, {"PROCESSING": 1})
    request = pipeline.stack.tables.requests.get(pipeline.image("incoming/flows/stuck-1.png").submission_id)
    assert (request.status, request.ximilar_status, request.checks) == ("CREATED", "PROCESSING", 1)

    final = pipeline.sweep(timedelta(minutes=11))
    assert final.failed_too_old == 1
    for key in ("incoming/flows/stuck-1.png", "incoming/flows/stuck-2.png"):
        image = pipeline.image(key)
        assert image.status == "FAILED"
        assert image.status_reason == "not finished after 600 s (last state PROCESSING)"
    request = pipeline.stack.tables.requests.get(request.submission_id)
    assert request.status == "FAILED"
    assert request.due_shard is None


class WebhookDuringStatus:
    """Ximilar's client, where the webhook finishes the request while `/status` is being answered."""

    def __init__(self, real: Any, finish: Callable[[], None]) -> None:
        self.real, self.finish = real, finish

    def status(self, request_id: str) -> str:
        state: str = self.real.status(request_id)
        self.finish()
        return state

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_a_webhook_finishing_the_request_during_a_check_does_not_crash_the_sweep(pipeline: Pipeline) -> None:
    # Given a request Ximilar still reports PROCESSING, due for a check
    pipeline.emulator.control.set_knobs(final_state="PROCESSING")
    pipeline.upload("incoming/flows/race.png")
    image = pipeline.image("incoming/flows/race.png")
    wait_for(lambda: pipeline.details(image.request_id)["status"] == "PROCESSING")
    storage = pipeline.storage

    def webhook_finishes_it() -> None:
        storage.requests.finish_request(
            image.submission_id, Status.DONE, datetime.now(UTC), request_id=image.request_id
        )

    # When the webhook finishes it between the sweeper's /status call and its reschedule
    sweeper = replace(
        pipeline.sweeper_at(LATER), ximilar=WebhookDuringStatus(pipeline.sweeper.sweeper.ximilar, webhook_finishes_it)
    )
    outcome = sweeper.sweep(lambda: 60_000)

    # Then the run goes on, and the request stays finished and off the due index
    assert (outcome.taken, outcome.rescheduled, outcome.finished_meanwhile) == (1, 0, 1)
    request = pipeline.stack.tables.requests.get(image.submission_id)
    assert request.status == "DONE"
    assert request.due_shard is None  # off the due index: no sweep looks at it again


@pytest.mark.parametrize("state", ["FAILED", "NOT_SUPPORTED"])
def test_terminal_states_outside_the_reference_end_the_images_failed(pipeline: Pipeline, state: str) -> None:
    pipeline.emulator.control.set_knobs(final_state=state)
    pipeline.upload("incoming/flows/x.png")
    request_id = pipeline.image("incoming/flows/x.png").request_id
    wait_for(lambda: pipeline.details(request_id)["status"] == state, what=state)
    pipeline.sweep(LATER)
    image = pipeline.image("incoming/flows/x.png")
    assert (image.status, image.status_reason) == ("FAILED", f"Ximilar ended the request {state}")


@pytest.mark.parametrize("state", ["RETRY", "SOMETHING_NEW"])
def test_pending_and_unknown_states_are_checked_again_later(pipeline: Pipeline, state: str) -> None:
    pipeline.emulator.control.set_knobs(final_state=state)
    pipeline.upload("incoming/flows/wait.png")
    image = pipeline.image("incoming/flows/wait.png")
    wait_for(lambda: pipeline.details(image.request_id)["status"] == state, what=state)
    outcome = pipeline.sweep(LATER)
    assert outcome.rescheduled == 1
    request = pipeline.stack.tables.requests.get(image.submission_id)
    assert (request.ximilar_status, request.status) == (state, "CREATED")
    assert request.next_check_at > (datetime.now(UTC) + LATER).timestamp()


def test_a_throttled_request_is_submitted_again_and_finishes(pipeline: Pipeline) -> None:
    pipeline.emulator.control.set_knobs(final_state="API_LIMIT_EXCEEDED")
    pipeline.upload("incoming/flows/quota-1.png", "incoming/flows/quota-2.png")
    first = pipeline.image("incoming/flows/quota-1.png")
    wait_for(lambda: pipeline.details(first.request_id)["status"] == "API_LIMIT_EXCEEDED", what="the quota state")
    pipeline.emulator.control.set_knobs(final_state="DONE")

    outcome = pipeline.sweep(LATER)
    assert outcome.resubmitted_images == 2
    done = pipeline.wait_status("incoming/flows/quota-1.png", "DONE")
    assert done.request_id != first.request_id and done.attempts == 2
    pipeline.wait_status("incoming/flows/quota-2.png", "DONE")
    old = pipeline.stack.tables.requests.get(first.submission_id)
    assert (old.status, old.ximilar_status) == ("FAILED", "API_LIMIT_EXCEEDED")


def stuck_submission(pipeline: Pipeline, key: str) -> tuple[str, Upload]:
    """The state a submit function leaves when it dies after claiming, before the POST."""
    pipeline.stack.put(key, png_bytes(9, 9))
    (record,) = pipeline.stack.receive_uploads(1)
    upload = next(iter(upload_of(record)))
    submitter = pipeline.submit.submitter
    now = datetime.now(UTC)
    storage = pipeline.storage
    submission_id = "stuck-" + upload.record_id[:8]
    give_up = now + timedelta(seconds=submitter.settings.submitting_timeout_seconds)
    assert storage.requests.open_request(
        submission_id, "flows", "my-flow", {upload.record_id: upload.uri}, now, give_up
    )
    assert storage.images.claim_image(upload, "flows", "my-flow", submission_id, now, CLAIM_LEASE) is Claim.TAKEN
    return submission_id, upload


def upload_of(record: dict[str, Any]) -> list[Upload]:
    return list(uploads_from_notification(record["messageId"], record["body"]))


def test_a_stuck_submitting_request_is_submitted_again_once(pipeline: Pipeline) -> None:
    submission_id, upload = stuck_submission(pipeline, "incoming/flows/crashed.png")
    assert pipeline.sweep(LATER).taken == 0  # not before the submitting timeout
    outcome = pipeline.sweep(timedelta(minutes=16))
    assert outcome.resubmitted_images == 1
    assert len(posts(pipeline)) == 1
    image = pipeline.wait_status("incoming/flows/crashed.png", "DONE")
    assert (image.record_id, image.submission_id, image.attempts) == (upload.record_id, submission_id, 2)
    request = pipeline.storage.requests.get_request(submission_id)
    assert request is not None and request.submit_attempts == 2
    assert pipeline.storage.images.unfinished_images(request) == {}  # finished: no image waits for it
    pipeline.sweep(timedelta(minutes=40))
    assert len(posts(pipeline)) == 1


def test_a_request_whose_images_went_elsewhere_is_closed_as_superseded(pipeline: Pipeline) -> None:
    submission_id, upload = stuck_submission(pipeline, "incoming/flows/moved.png")
    images = pipeline.stack.tables.images
    images(upload.uri).update(actions=[images.submission_id.set("another"), images.status.set("CREATED")])
    pipeline.sweep(timedelta(minutes=16))
    request = pipeline.stack.tables.requests.get(submission_id)
    assert request.status == "FAILED"
    assert request.status_reason.startswith("superseded")
    assert posts(pipeline) == []


def test_a_transient_error_is_submitted_again_with_a_fresh_url(pipeline: Pipeline) -> None:
    pipeline.emulator.control.set_knobs(created_delay_seconds=1.0)
    key = "incoming/flows/flaky.png"
    body = png_bytes(11, 11)
    pipeline.stack.put(key, body)
    pipeline.submit.lambda_handler({"Records": pipeline.stack.receive_uploads(1)}, LocalLambdaContext())
    pipeline.stack.client("s3").delete_object(Bucket=pipeline.stack.bucket, Key=key)  # gone when Ximilar fetches
    error = pipeline.wait_status(key, "ERROR")
    assert "Unable to download image" in error.status_reason
    pipeline.stack.put(key, body)  # back, same bytes: the same upload
    pipeline.emulator.control.set_knobs(created_delay_seconds=0.05)

    outcome = pipeline.sweep(LATER)
    assert outcome.resubmitted_images == 1
    done = pipeline.wait_status(key, "DONE")
    assert (done.record_id, done.attempts) == (error.record_id, 2)
    assert done.request_id != error.request_id


def test_a_transient_error_is_tried_a_bounded_number_of_times_then_failed(pipeline: Pipeline) -> None:
    pipeline.emulator.control.set_knobs(created_delay_seconds=0.5)
    key = "incoming/flows/gone.png"
    pipeline.stack.put(key, png_bytes())
    pipeline.submit.lambda_handler({"Records": pipeline.stack.receive_uploads(1)}, LocalLambdaContext())
    pipeline.stack.client("s3").delete_object(Bucket=pipeline.stack.bucket, Key=key)
    for attempt in range(1, MAX_IMAGE_ATTEMPTS + 1):
        image = pipeline.wait_status(key, "ERROR")
        assert image.attempts == attempt
        # The image's ERROR is written before its request notes the retry: sweep once both are there.
        wait_for(
            lambda: pipeline.stack.tables.requests.get(image.submission_id).retry_record_ids,  # noqa: B023
            what="the retry noted on the request",
        )
        pipeline.sweep(LATER * attempt)
    final = pipeline.image(key)
    assert final.status == "FAILED"
    assert final.status_reason.startswith(f"gave up after {MAX_IMAGE_ATTEMPTS} attempts: 400: Unable to download")
    assert len(posts(pipeline)) == MAX_IMAGE_ATTEMPTS


def make_processing_requests(pipeline: Pipeline, count: int) -> list[str]:
    pipeline.emulator.control.set_knobs(final_state="PROCESSING")
    keys_ = [f"incoming/slow-{n:02d}.png" for n in range(count)]
    pipeline.upload(*keys_)
    return keys_


def test_a_run_near_its_deadline_stops_early_and_the_next_run_finishes(pipeline: Pipeline) -> None:
    make_processing_requests(pipeline, 6)
    checks = 0

    def remaining() -> int:
        nonlocal checks
        checks += 1
        return 60_000 if checks <= 2 else 5_000

    first = pipeline.sweep(LATER, remaining)
    assert (first.stopped, first.taken) == ("deadline", 2)
    second = pipeline.sweep(LATER)
    assert (second.stopped, second.taken) == (None, 4)


def test_a_run_stops_at_its_api_call_budget(
    monkeypatch: pytest.MonkeyPatch, aws_stack: AwsStack, emulator: RunningEmulator
) -> None:
    for pipeline in start_pipeline(monkeypatch, aws_stack, emulator, MaxApiCallsPerRun="6"):
        make_processing_requests(pipeline, 8)
        outcome = pipeline.sweep(LATER)
        # Each take reserves the two calls a DONE request needs: a pending one spends one.
        assert (outcome.stopped, outcome.taken, outcome.api_calls) == ("budget", 5, 5)
        assert pipeline.sweep(LATER).taken == 3  # the next run continues


def test_two_overlapping_runs_check_each_due_request_once(pipeline: Pipeline) -> None:
    keys_ = make_processing_requests(pipeline, 10)
    sweepers = [pipeline.sweeper_at(LATER), pipeline.sweeper_at(LATER)]
    outcomes: list[Any] = [None, None]
    start = threading.Barrier(2)

    def run(index: int) -> None:
        start.wait()
        outcomes[index] = sweepers[index].sweep(lambda: 60_000)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    status_calls = Counter(
        call["path"] for call in pipeline.emulator.control.calls() if call["path"].endswith("/status")
    )
    assert len(status_calls) == 10
    assert set(status_calls.values()) == {1}
    assert outcomes[0].taken + outcomes[1].taken == 10
    assert {pipeline.image(key).status for key in keys_} == {"CREATED"}


def test_a_429_storm_stops_the_run_and_leaves_the_rest_for_later(pipeline: Pipeline) -> None:
    make_processing_requests(pipeline, 3)
    pipeline.emulator.control.fail_next(50, status=429, retry_after=0)
    outcome = pipeline.sweep(LATER)
    assert (outcome.stopped, outcome.taken) == ("throttled", 1)
    pipeline.emulator.control.reset()
    pipeline.emulator.control.set_knobs(final_state="PROCESSING")
    assert pipeline.sweep(timedelta(minutes=5)).taken == 3  # every one still due, none lost


def test_the_sweep_reads_what_is_due_not_the_table(pipeline: Pipeline) -> None:
    requests_table = pipeline.stack.tables.requests
    now = datetime.now(UTC)
    with requests_table.batch_write() as batch:
        for n in range(2000):
            batch.save(
                requests_table(
                    f"finished-{n:04d}",
                    request_type="flows",
                    endpoint="f",
                    status="DONE",
                    ximilar_status="DONE",
                    request_id=f"r-{n}",
                    images={},
                    created_at=now,
                    updated_at=now,
                )
            )
    pipeline.emulator.control.set_knobs(final_state="PROCESSING")
    client = pipeline.submit.submitter.ximilar
    images_table = pipeline.stack.tables.images
    for n in range(50):
        request_id = client.submit("flows", "f", [{"_base64": "aGVsbG8="}])["id"]
        submission_id = f"due-{n:02d}"
        uri = f"s3://{pipeline.stack.bucket}/incoming/flows/due-{n:02d}.png"
        images_table(
            uri,
            bucket=pipeline.stack.bucket,
            key=f"incoming/flows/due-{n:02d}.png",
            version="v1",
            sequencer="0",
            record_id=f"record-{n:02d}",
            status="SUBMITTING",
            submission_id=submission_id,
            created_at=now,
            updated_at=now,
        ).save()  # its claim: the image waits for the request
        requests_table(
            submission_id,
            request_type="flows",
            endpoint="f",
            status="CREATED",
            request_id=request_id,
            images={f"record-{n:02d}": uri},
            due_shard=keys.due_shard(submission_id, pipeline.sweeper.settings.index_shards),
            next_check_at=int(now.timestamp()) - 1,
            created_at=now,
            updated_at=now,
        ).save()

    scanned: list[int] = []
    events = pipeline.sweeper.sweeper.requests.tables.requests._get_connection().connection.client.meta.events

    def note_index(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["index"] = params.get("IndexName")

    def count_due_reads(parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        if context.get("index") == "due":  # the tables share one client: the images' by_request reads pass too
            scanned.append(parsed.get("ScannedCount", 0))

    events.register("before-parameter-build.dynamodb.Query", note_index)
    events.register("after-call.dynamodb.Query", count_due_reads)
    outcome = pipeline.sweep(timedelta(seconds=1))
    assert outcome.taken == 50
    assert outcome.items_read == 50
    assert sum(scanned) == 50  # what DynamoDB returned, across every shard: not the 2,050-item table
    assert len(scanned) == pipeline.sweeper.settings.index_shards


def test_the_schedule_event_runs_a_sweep(pipeline: Pipeline) -> None:
    event = load_event("schedule.json")
    answer = pipeline.sweeper.lambda_handler(event, LocalLambdaContext())
    assert answer["stopped"] is None
    assert answer["taken"] == 0


@pytest.fixture
def quick_pipeline(
    monkeypatch: pytest.MonkeyPatch, aws_stack: AwsStack, emulator: RunningEmulator
) -> Iterator[Pipeline]:
    """A pipeline whose requests come due for the sweeper one second after submission."""
    yield from start_pipeline(monkeypatch, aws_stack, emulator, FirstCheckDelaySeconds="1")


def test_a_sweep_logs_at_info_only_when_it_found_work(
    quick_pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The schedule fires every minute (every 2 s locally): idle runs must not bury the rest of the log.
    pipeline = quick_pipeline
    infos: list[str] = []
    monkeypatch.setattr(pipeline.sweeper.logger, "info", lambda message, **_: infos.append(message))
    event = load_event("schedule.json")
    assert pipeline.sweeper.lambda_handler(event, LocalLambdaContext())["items_read"] == 0
    assert infos == []

    pipeline.emulator.control.set_knobs(webhook_drop_rate=1.0)  # only the sweeper can finish it
    pipeline.upload("incoming/flows/quiet.png")
    wait_for(
        lambda: pipeline.sweeper.lambda_handler(event, LocalLambdaContext())["taken"],
        timeout=15,
        interval=0.25,
        what="the request to come due and be taken",
    )
    assert infos == ["sweep finished"]


def detail_fetches(pipeline: Pipeline, request_id: str) -> int:
    path = f"/account/v2/request/{request_id}"
    return sum(1 for call in pipeline.emulator.control.calls() if call["method"] == "GET" and call["path"] == path)


@pytest.mark.parametrize(
    ("knob", "note"),
    [("dropped_records", ""), ("renamed_records", " (1 with an _id that was not sent)")],
)
def test_an_answer_missing_a_record_keeps_the_request_due_until_the_image_ends_with_a_reason(
    pipeline: Pipeline, knob: str, note: str
) -> None:
    # Given Ximilar answers DONE without one of the request's two records (and no webhook arrives)
    pipeline.emulator.control.set_knobs(webhook_drop_rate=1.0, **{knob: 1})
    keys_ = ["incoming/flows/kept.png", "incoming/flows/lost.png"]
    pipeline.upload(*keys_)
    request_id = pipeline.image(keys_[0]).request_id
    answered = {record["_id"] for record in pipeline.done_details(request_id)["response"]["records"]}
    (lost_key,) = [key for key in keys_ if pipeline.image(key).record_id not in answered]
    (kept_key,) = [key for key in keys_ if key != lost_key]

    fetched_before = detail_fetches(pipeline, request_id)

    # When the sweeper records the answer
    first = pipeline.sweep(LATER)

    # Then the answered image is DONE, and the request stays due with the reason
    assert (first.recorded, first.incomplete) == (1, 1)
    # (the lost image in flight is reported with its request's status: PROCESSING, Ximilar has it)
    assert (pipeline.image(kept_key).status, pipeline.image(lost_key).status) == ("DONE", "PROCESSING")
    submission_id = pipeline.image(kept_key).submission_id
    request = pipeline.stack.tables.requests.get(submission_id)
    assert (request.status, request.status_reason, request.incomplete_answers) == (
        "PROCESSING",
        f"1 record missing from Ximilar's answer{note}",
        1,
    )
    assert request.due_shard is not None

    # When the sweeper checks again, up to the bound, and the answer stays incomplete
    for check in range(2, MAX_INCOMPLETE_ANSWERS + 1):
        assert pipeline.image(lost_key).status == "PROCESSING"
        assert pipeline.sweep(LATER + timedelta(minutes=10 * check)).taken == 1

    # Then the image ends FAILED with the cause, and the request DONE, off the due index
    lost = pipeline.image(lost_key)
    assert (lost.status, lost.status_reason) == (
        "FAILED",
        f"no record for this image in Ximilar's answer after {MAX_INCOMPLETE_ANSWERS} checks",
    )
    assert pipeline.image(kept_key).status == "DONE"
    request = pipeline.stack.tables.requests.get(submission_id)
    assert request.status == "DONE"
    assert request.due_shard is None
    assert request.status_reason.startswith(f"1 record missing from Ximilar's answer{note} after")
    # fetched again at each check
    assert detail_fetches(pipeline, request_id) - fetched_before == MAX_INCOMPLETE_ANSWERS
    assert pipeline.sweep(timedelta(hours=2)).taken == 0


class FailingFor:
    """Ximilar's client, where asking about one request hits an unexpected error (a bug)."""

    def __init__(self, real: Any, request_id: str) -> None:
        self.real, self.request_id = real, request_id

    def status(self, request_id: str) -> str:
        if request_id == self.request_id:
            raise ValueError("boom: an unexpected bug")
        state: str = self.real.status(request_id)
        return state

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_an_error_in_one_request_does_not_stop_the_sweep_and_after_n_the_request_ends_failed(
    pipeline: Pipeline,
) -> None:
    # Given three pending requests, and one whose check fails every time
    keys_ = make_processing_requests(pipeline, 3)
    broken = pipeline.image(keys_[0])

    def sweep(ahead: timedelta) -> Any:
        real = pipeline.sweeper.sweeper.ximilar
        return replace(pipeline.sweeper_at(ahead), ximilar=FailingFor(real, broken.request_id)).sweep(lambda: 60_000)

    # When a sweep runs
    first = sweep(LATER)

    # Then the others are checked, and the failure is counted on the request, which stays due
    assert (first.taken, first.errors, first.rescheduled) == (3, 1, 2)
    request = pipeline.stack.tables.requests.get(broken.submission_id)
    assert (request.status, request.sweep_failures, request.due_shard is not None) == ("CREATED", 1, True)
    assert request.status_reason == f"sweep failed (1 of {MAX_SWEEP_FAILURES}): ValueError: boom: an unexpected bug"

    # When it keeps failing, up to the bound (each run past the backoff, capped at 30 minutes)
    for failure in range(2, MAX_SWEEP_FAILURES + 1):
        assert sweep(timedelta(hours=failure)).errors == 1

    # Then the request and its image end FAILED with the error, off the due index
    request = pipeline.stack.tables.requests.get(broken.submission_id)
    reason = f"gave up after {MAX_SWEEP_FAILURES} failed sweeps: ValueError: boom: an unexpected bug"
    assert (request.status, request.status_reason) == ("FAILED", reason)
    assert request.due_shard is None
    image = pipeline.image(keys_[0])
    assert (image.status, image.status_reason) == ("FAILED", reason)
    assert sweep(timedelta(hours=10)).errors == 0


class BookkeepingFails:
    """The request store, where recording a failed sweep fails too."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def note_sweep_failure(self, *args: Any, **kwargs: Any) -> bool:
        raise RuntimeError("DynamoDB unavailable")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_when_even_the_failure_cannot_be_recorded_the_sweep_goes_on_and_the_hold_brings_it_back(
    pipeline: Pipeline,
) -> None:
    keys_ = make_processing_requests(pipeline, 2)
    broken = pipeline.image(keys_[0])
    sweeper = pipeline.sweeper_at(LATER)
    sweeper = replace(
        sweeper,
        ximilar=FailingFor(sweeper.ximilar, broken.request_id),
        requests=BookkeepingFails(sweeper.requests),
    )
    outcome = sweeper.sweep(lambda: 60_000)
    assert (outcome.taken, outcome.errors, outcome.rescheduled) == (2, 1, 1)
    held = pipeline.stack.tables.requests.get(broken.submission_id)
    assert (held.sweep_failures, held.checks) == (0, 0)  # nothing could be written
    assert pipeline.sweep(LATER).taken == 0  # held, and the other one rescheduled
    assert pipeline.sweep(LATER + HOLD + timedelta(seconds=5)).taken == 2  # back after the hold
    assert pipeline.stack.tables.requests.get(broken.submission_id).checks == 1
