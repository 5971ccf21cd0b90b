"""Outputs: artifacts of a DONE result queued in the result's own write, copied, regenerated once, and told.

The copier runs on fakes (artifacts served from memory, S3 as a dict); the Storage is the real one.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import pytest

from tests.support.fakes import (
    FakeArtifacts,
    FakeClock,
    FakeEventBus,
    FakeObjectStore,
    FakeOutputQueue,
    FakeXimilar,
    ok,
)
from tests.unit.conftest import SETTINGS_ENVIRONMENT
from tests.unit.given import a_submitted_request, image_of, submission_id
from ximilar_async.adapters.dynamodb import Storage
from ximilar_async.services.completion_events import CompletionEvents
from ximilar_async.services.output_copier import OutputCopier
from ximilar_async.services.result_recorder import ResultRecorder
from ximilar_async.services.submitter import Submitter
from ximilar_async.settings import SettingsError, SweeperSettings
from ximilar_async.values.entities import Output, OutputState
from ximilar_async.values.outputs import OutputJob, OutputLocation, OutputLocationError, artifact_name, extension_of
from ximilar_async.values.request_types import RequestType
from ximilar_async.values.statuses import Status
from ximilar_async.values.uploads import Upload
from ximilar_async.values.ximilar_payloads import parse_outcome

CAT = "incoming/cats/cat.jpg"
INPUT = "input-bucket"  # the stack's own (FakeObjectStore's)
ARTIFACT = "https://images.ximilar.example/upscaled/abc.jpg"
LOCATION = OutputLocation("results-bucket", "outputs/", "incoming/")


# --- naming ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "name"),
    [("_upscaled_image_url", "upscaled"), ("_crop_url", "crop"), ("mask_image_url", "mask"), ("_url", None)],
)
def test_artifact_names_come_from_url_fields_and_the_inputs_own_url_is_not_one(field: str, name: str | None) -> None:
    assert artifact_name(field) == name


def test_an_output_key_mirrors_the_input_key_with_the_artifact_before_the_extension() -> None:
    assert LOCATION.key(INPUT, CAT, "upscaled", ".png") == "outputs/cats/cat.upscaled.png"
    assert LOCATION.key(INPUT, "incoming/no-extension", "upscaled", ".jpg") == "outputs/no-extension.upscaled.jpg"
    assert LOCATION.key(INPUT, "incoming/a.b/c d.tif", "crop", ".png") == "outputs/a.b/c d.crop.png"


def test_a_watched_buckets_copies_go_under_its_name_so_the_same_key_elsewhere_never_shares_them() -> None:
    location = replace(LOCATION, watched_buckets=frozenset({"archive", "photos"}))
    copies = {
        location.key(bucket, "incoming/cats/cat.jpg", "upscaled", ".png") for bucket in (INPUT, "archive", "photos")
    }
    assert copies == {
        "outputs/cats/cat.upscaled.png",
        "outputs/archive/incoming/cats/cat.upscaled.png",
        "outputs/photos/incoming/cats/cat.upscaled.png",
    }
    assert location.pending("s3://archive/incoming/cats/cat.jpg", {"upscaled": "https://x/a.png?sig=1"}) == {
        "upscaled": Output("s3://results-bucket/outputs/archive/incoming/cats/cat.upscaled.png", OutputState.PENDING)
    }


def test_the_extension_is_the_content_types_then_the_urls_then_the_inputs() -> None:
    assert extension_of("image/jpeg", "https://x/a.png", CAT) == ".jpg"
    assert extension_of("image/png; charset=binary", None, CAT) == ".png"
    assert extension_of("application/octet-stream", "https://x/a.webp?sig=1", CAT) == ".webp"
    assert extension_of(None, "https://x/no-suffix", CAT) == ".jpg"


# --- never into the input bucket ---------------------------------------------------------------------


def test_the_templates_pattern_refuses_the_input_buckets_name_shape(template: dict[str, Any]) -> None:
    pattern = re.compile(template["Parameters"]["OutputBucketName"]["AllowedPattern"])
    assert pattern.fullmatch("")
    assert pattern.fullmatch("my-company-upscaled")
    assert not pattern.fullmatch("xasync-in-123456789012-5a6b7c8d1e2f")
    assert not pattern.fullmatch("Not_A_Bucket")


def test_settings_refuse_an_output_location_in_the_input_bucket_at_cold_start() -> None:
    with pytest.raises(SettingsError, match="OUTPUT_BUCKET_NAME"):
        SweeperSettings.from_env({**SETTINGS_ENVIRONMENT, "OUTPUT_BUCKET_NAME": "xasync-in-123456789012-abcdef"})
    with pytest.raises(OutputLocationError):
        OutputLocation("bucket", "/outputs", "incoming/").check()
    assert SweeperSettings.from_env(SETTINGS_ENVIRONMENT).output_location.bucket == "results-bucket"


# --- recording -----------------------------------------------------------------------------------------


def an_upscaled_image(
    submitter: Submitter, objects: FakeObjectStore, ximilar: FakeXimilar, recorder: ResultRecorder, key: str = CAT
) -> tuple[Upload, dict[str, Any]]:
    """An upscaler image Ximilar finished (its record echoes the presigned `_url`), recorded."""
    sent, (upload,) = a_submitted_request(submitter, objects, ximilar, key)
    record = ok(
        _url=sent.records[0].get("_url", "https://input.s3.amazonaws.com/x?X-Amz-Signature=abc"),
        _width=8,
        _height=6,
        _upscaled_width=16,
        _upscaled_height=12,
        _upscaled_image_url=ARTIFACT,
    )
    payload = ximilar.finish(sent.id, {upload.record_id: record})
    recorder.record(submission_id(sent), parse_outcome(payload))
    return upload, payload


def test_a_done_result_with_an_artifact_is_pending_in_the_same_write_and_queued_once(
    submitter: Submitter,
    objects: FakeObjectStore,
    ximilar: FakeXimilar,
    recorder: ResultRecorder,
    storage: Storage,
    output_queue: FakeOutputQueue,
    bus: FakeEventBus,
) -> None:
    # Given an upscaler image (large enough to be sent as a presigned URL) that Ximilar finished
    # When its result is recorded, then recorded again (a repeated webhook)
    upload, payload = an_upscaled_image(submitter, objects, ximilar, recorder)
    sent = ximilar.request_of(upload)
    recorder.record(submission_id(sent), parse_outcome(payload))

    # Then the image is DONE with its output PENDING where the copy will be, and one job was queued
    image = image_of(storage, upload)
    assert image.status is Status.DONE
    assert image.outputs["upscaled"].state is OutputState.PENDING
    assert image.outputs["upscaled"].uri == "s3://results-bucket/outputs/cats/cat.upscaled.jpg"
    assert output_queue.jobs == [OutputJob(upload.uri, upload.record_id, sent.id, {"upscaled": ARTIFACT})]
    # And exactly one Image Finished event tells it, with no URL of Ximilar's and no presigned one
    (finished,) = bus.of_type("Image Finished")
    assert finished["status"] == "DONE"
    assert finished["input"] == {"bucket": upload.bucket, "key": CAT, "version": upload.version}
    assert finished["summary"] == "upscaled 8x6 -> 16x12"
    assert finished["outputs"]["upscaled"]["state"] == "PENDING"
    assert ARTIFACT not in str(finished)
    assert "X-Amz-Signature" not in str(finished)


def test_the_stored_result_keeps_the_images_uri_instead_of_the_presigned_url(
    submitter: Submitter, objects: FakeObjectStore, ximilar: FakeXimilar, storage: Storage
) -> None:
    recorder = ResultRecorder(storage.images, storage.requests, objects, "results-bucket")
    sent, (upload,) = a_submitted_request(submitter, objects, ximilar, "incoming/flows/a.png")
    signed = "https://input.s3.amazonaws.com/incoming/flows/a.png?X-Amz-Signature=0123"
    payload = ximilar.finish(sent.id, {upload.record_id: ok(_url=signed, _tags_simple=["cat"])})

    recorder.record(submission_id(sent), parse_outcome(payload))

    result = image_of(storage, upload).result
    assert result is not None
    assert result["_url"] == upload.uri
    assert "X-Amz-Signature" not in str(result)


def test_every_image_ending_failed_is_told_once(
    submitter: Submitter, objects: FakeObjectStore, bus: FakeEventBus
) -> None:
    # Given an upload that is not an image, delivered twice
    upload = objects.put("incoming/notes.txt", b"not an image")
    submitter.submit_uploads([upload])
    submitter.submit_uploads([upload])

    # Then one Image Finished event says it FAILED, and why
    (finished,) = bus.of_type("Image Finished")
    assert finished["status"] == "FAILED"
    assert finished["reason"]


# --- copying -----------------------------------------------------------------------------------------


def a_copier(
    storage: Storage,
    artifacts: FakeArtifacts,
    submitter: Submitter,
    bus: FakeEventBus,
    clock: FakeClock,
    regenerate_for: frozenset[RequestType] = frozenset({RequestType.UPSCALER}),
) -> OutputCopier:
    return OutputCopier(
        storage.images, artifacts, LOCATION, submitter, regenerate_for, 3, CompletionEvents(bus), clock=clock
    )


def test_a_copied_output_is_stored_with_its_source_named_and_a_repeat_is_harmless(
    submitter: Submitter,
    objects: FakeObjectStore,
    ximilar: FakeXimilar,
    recorder: ResultRecorder,
    storage: Storage,
    output_queue: FakeOutputQueue,
    bus: FakeEventBus,
    clock: FakeClock,
) -> None:
    upload, _ = an_upscaled_image(submitter, objects, ximilar, recorder)
    artifacts = FakeArtifacts({ARTIFACT: (b"\xff\xd8 jpeg bytes", "image/jpeg")})
    copier = a_copier(storage, artifacts, submitter, bus, clock)
    (job,) = output_queue.jobs

    first = copier.copy(job)
    again = copier.copy(job)  # SQS delivered the job twice

    uri = "s3://results-bucket/outputs/cats/cat.upscaled.jpg"
    assert (first.stored, again.stored, again.skipped) == (["upscaled"], [], "no output is pending (a repeated job)")
    assert image_of(storage, upload).outputs["upscaled"].state is OutputState.STORED
    assert image_of(storage, upload).outputs["upscaled"].size_bytes == len(b"\xff\xd8 jpeg bytes")  # for the export
    body, content_type, metadata = artifacts.stored[uri]
    assert body == b"\xff\xd8 jpeg bytes"
    assert content_type == "image/jpeg"
    assert metadata["source-key"] == CAT
    assert metadata["record-id"] == upload.record_id
    assert metadata["ximilar-request-id"] == job.request_id
    (stored,) = bus.of_type("Image Outputs Stored")
    assert stored["outputs"]["upscaled"] == {"uri": uri, "state": "STORED", "reason": None}


def test_an_expired_artifact_of_a_type_not_regenerated_ends_failed_with_the_reason(
    submitter: Submitter,
    objects: FakeObjectStore,
    ximilar: FakeXimilar,
    recorder: ResultRecorder,
    storage: Storage,
    output_queue: FakeOutputQueue,
    bus: FakeEventBus,
    clock: FakeClock,
) -> None:
    upload, _ = an_upscaled_image(submitter, objects, ximilar, recorder)
    copier = a_copier(storage, FakeArtifacts(), submitter, bus, clock, regenerate_for=frozenset())

    result = copier.copy(output_queue.jobs[0])

    output = image_of(storage, upload).outputs["upscaled"]
    assert (result.failed, output.state) == (["upscaled"], OutputState.FAILED)
    assert output.reason == "the artifact is gone from Ximilar (HTTP 410)"
    assert bus.of_type("Image Outputs Stored") == []


def test_an_expired_upscale_is_regenerated_once_and_a_second_expiry_ends_failed(
    submitter: Submitter,
    objects: FakeObjectStore,
    ximilar: FakeXimilar,
    recorder: ResultRecorder,
    storage: Storage,
    output_queue: FakeOutputQueue,
    bus: FakeEventBus,
    clock: FakeClock,
) -> None:
    # Given an upscaled image whose artifact expired before its copy
    upload, _ = an_upscaled_image(submitter, objects, ximilar, recorder)
    copier = a_copier(storage, FakeArtifacts(), submitter, bus, clock)

    # When the copier meets the expiry, the image is submitted again (the one regeneration)
    first = copier.copy(output_queue.jobs[0])
    assert first.regenerated
    assert len(ximilar.sent) == 2
    regenerated = image_of(storage, upload)
    assert (regenerated.status, regenerated.output_regenerations) == (Status.SUBMITTING, 1)

    # And when the new result's artifact has expired too, the output ends FAILED: no second regeneration
    clock.advance(minutes=1)
    second_sent = ximilar.sent[-1]
    record = ok(_upscaled_width=16, _upscaled_height=12, _upscaled_image_url=ARTIFACT + "?again")
    payload = ximilar.finish(second_sent.id, {upload.record_id: record})
    recorder.record(submission_id(second_sent), parse_outcome(payload))
    second = copier.copy(output_queue.jobs[-1])

    final = image_of(storage, upload)
    assert (second.regenerated, second.failed, len(ximilar.sent)) == (False, ["upscaled"], 2)
    assert (final.status, final.output_regenerations, final.outputs["upscaled"].state) == (
        Status.DONE,
        1,
        OutputState.FAILED,
    )


def test_a_passing_copy_failure_is_retried_and_the_last_attempt_ends_failed(
    submitter: Submitter,
    objects: FakeObjectStore,
    ximilar: FakeXimilar,
    recorder: ResultRecorder,
    storage: Storage,
    output_queue: FakeOutputQueue,
    bus: FakeEventBus,
    clock: FakeClock,
) -> None:
    upload, _ = an_upscaled_image(submitter, objects, ximilar, recorder)
    artifacts = FakeArtifacts({ARTIFACT: (b"jpeg", "image/jpeg")}, failing=3)
    copier = a_copier(storage, artifacts, submitter, bus, clock)
    job = output_queue.jobs[0]

    for attempt in (1, 2):
        with pytest.raises(ConnectionError):
            copier.copy(job, attempt)
    last = copier.copy(job, 3)

    output = image_of(storage, upload).outputs["upscaled"]
    assert (last.failed, output.state) == (["upscaled"], OutputState.FAILED)
    assert output.reason is not None
    assert output.reason.startswith("not copied after 3 attempts: ConnectionError")


def test_route_options_travel_in_the_submission_body(
    storage: Storage, ximilar: FakeXimilar, objects: FakeObjectStore, submitter: Submitter
) -> None:
    settings = SweeperSettings.from_env(
        {**SETTINGS_ENVIRONMENT, "ROUTE_OPTIONS": '{"upscaler:upscale_2x": {"mode": "photo"}}'}
    )
    with_options = replace(submitter, settings=settings)
    a_submitted_request(with_options, objects, ximilar, CAT)
    assert ximilar.sent[-1].options == {"mode": "photo"}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("not json", "not JSON"),
        ('{"upscaler": {}}', "type:endpoint"),
        ('{"nope:x": {}}', "ROUTE_OPTIONS"),
        ('{"upscaler:upscale_2x": {"records": []}}', "may not set"),
    ],
)
def test_route_options_are_validated_when_settings_load(text: str, problem: str) -> None:
    with pytest.raises(SettingsError, match=problem):
        SweeperSettings.from_env({**SETTINGS_ENVIRONMENT, "ROUTE_OPTIONS": text})
