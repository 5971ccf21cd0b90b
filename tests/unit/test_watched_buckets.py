"""Buckets the stack did not create: S3's EventBridge events read as S3's notifications are, the
`WatchedBuckets` entries and their routes, the template's rule slots, `connect-bucket`, and the local
stack's rewrite of moto's events into AWS's documented shape."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.support.events import load_event
from tests.support.fakes import FakeObjectStore, FakeXimilar
from tests.support.iam_audit import Audit
from tests.unit.conftest import SETTINGS_ENVIRONMENT
from xasync.buckets import ConfigurationLost, connect_bucket
from xasync.s3_eventbridge import documented
from xasync.template import Resolver
from ximilar_async.adapters.dynamodb import Storage
from ximilar_async.services.submitter import Submitter
from ximilar_async.settings import OutputsSettings, SettingsError, SweeperSettings
from ximilar_async.values.request_types import RequestType
from ximilar_async.values.routing import parse_routes, route_for
from ximilar_async.values.uploads import NotAnS3Notification, Upload, uploads_from_notification
from ximilar_async.values.watched import MAX_WATCHED, WatchedPrefix, parse_watched_buckets, routes_with_watched


def eventbridge_body(upload: Upload) -> str:
    """S3's EventBridge Object Created event of `upload` (events/eventbridge-object-created.json, its fields set)."""
    event = load_event("eventbridge-object-created.json")
    event["detail"]["bucket"]["name"] = upload.bucket
    s3_object = event["detail"]["object"]
    s3_object.update({"key": upload.key, "size": upload.size, "etag": upload.etag, "sequencer": upload.sequencer})
    if upload.version_id is None:
        del s3_object["version-id"]
    else:
        s3_object["version-id"] = upload.version_id
    return json.dumps(event)


# --- the event, read -------------------------------------------------------------------------------
def test_the_eventbridge_event_and_the_notification_of_one_upload_give_the_same_upload() -> None:
    # Given S3's notification and S3's EventBridge event of the same object version (AWS's examples)
    notification = load_event("s3-put.json")
    event = load_event("eventbridge-object-created.json")
    s3_object = notification["Records"][0]["s3"]["object"]
    s3_object["versionId"] = event["detail"]["object"]["version-id"]
    s3_object["sequencer"] = event["detail"]["object"]["sequencer"]
    s3_object["key"] = event["detail"]["object"]["key"]  # URL-encoded in both
    notification["Records"][0]["s3"]["bucket"]["name"] = event["detail"]["bucket"]["name"]

    # When both are read
    (from_notification,) = uploads_from_notification("m-1", json.dumps(notification))
    (from_event,) = uploads_from_notification("m-2", json.dumps(event))

    # Then they are one upload: same record id, version and sequencer (so the same dedupe and ordering)
    assert from_event.record_id == from_notification.record_id
    assert (from_event.version, from_event.sequencer) == (from_notification.version, from_notification.sequencer)
    assert from_event.key == "photos/holiday photos/café terrace.jpg"  # URL-decoded, as S3's notification's
    assert (from_event.bucket, from_event.size, from_event.version_id) == (
        "photos-archive",
        48213,
        "IYV3p45BT0ac8hjHg1houSdS1a.Mro8e",
    )


def test_an_sqs_batch_of_eventbridge_events_gives_the_object_created_and_skips_other_s3_events() -> None:
    batch = load_event("sqs-eventbridge-object-created.json")

    uploads = [u for r in batch["Records"] for u in uploads_from_notification(r["messageId"], r["body"])]

    assert [(u.message_id, u.key) for u in uploads] == [
        (batch["Records"][0]["messageId"], "photos/holiday photos/café terrace.jpg")
    ]


def test_an_unversioned_buckets_event_is_versioned_by_its_etag_and_ordered_by_time_without_a_sequencer() -> None:
    event = load_event("eventbridge-object-created.json")
    del event["detail"]["object"]["version-id"]
    del event["detail"]["object"]["sequencer"]

    (upload,) = uploads_from_notification("m-1", event)

    assert (upload.version_id, upload.version) == (None, "0123456789abcdef0123456789abcdef")
    assert upload.sequencer.startswith("000661675B352800")  # 2026-11-29T10:00:00Z in microseconds, hex


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda e: e.update({"source": "my.app"}), "not from aws.s3"),
        (lambda e: e["detail"].pop("object"), "without 'object'"),
        (lambda e: e["detail"]["object"].update({"size": "big"}), "with a malformed field"),
    ],
)
def test_an_eventbridge_event_that_is_not_s3s_object_created_is_refused(change: Any, problem: str) -> None:
    event = load_event("eventbridge-object-created.json")
    change(event)
    with pytest.raises(NotAnS3Notification, match=problem):
        list(uploads_from_notification("m-1", json.dumps(event)))


def test_the_submitter_dedupes_and_orders_eventbridge_events_as_it_does_notifications(
    submitter: Submitter, objects: FakeObjectStore, ximilar: FakeXimilar, storage: Storage
) -> None:
    # Given an upload submitted from its S3 notification, and two uploads of another key, the newer submitted first
    first = objects.put("incoming/photo.png", b"\x89PNG" + bytes(40))
    submitter.submit_uploads([first])
    older = objects.put("incoming/other.png", b"\x89PNG" + bytes(40))
    newer = objects.put("incoming/other.png", b"\x89PNG" + bytes(41))
    (newer_event,) = uploads_from_notification("m-3", eventbridge_body(newer))
    submitter.submit_uploads([newer_event])

    # When the first upload's EventBridge event arrives too, and the older upload's event arrives late
    (first_event,) = uploads_from_notification("m-1", eventbridge_body(first))
    (older_event,) = uploads_from_notification("m-2", eventbridge_body(older))
    outcome = submitter.submit_uploads([first_event, older_event])

    # Then neither goes to Ximilar again, and the newer upload stays the key's
    assert (outcome.duplicates, outcome.requests_submitted) == (2, 0)
    assert len(ximilar.sent) == 2
    image = storage.images.image(newer.uri)
    assert image is not None and image.record_id == newer.record_id


# --- WatchedBuckets and routes -----------------------------------------------------------------
def test_watched_entries_are_bucket_and_prefix_pairs() -> None:
    assert parse_watched_buckets("") == ()
    assert parse_watched_buckets("photos-archive:cards/2024/, other.bucket:scans/") == (
        WatchedPrefix("photos-archive", "cards/2024/"),
        WatchedPrefix("other.bucket", "scans/"),
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("photos-archive", "not of the form bucket:prefix"),
        ("photos-archive:", "not of the form bucket:prefix"),
        ("photos-archive:a:b", "not of the form bucket:prefix"),
        ("Photos:cards/", "not a bucket name"),
        ("xasync-in-123456789012-abcdef:incoming/", "the stack's input bucket"),
        (",".join(f"b-{n}:p/" for n in range(MAX_WATCHED + 1)), "at most 5"),
        ("abc:p/,abc:p/", "named twice"),
    ],
)
def test_a_wrong_watched_entry_is_named(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_watched_buckets(text)


def test_a_watched_prefix_no_route_covers_gets_the_default_route_and_covered_ones_keep_theirs() -> None:
    routes = parse_routes("incoming/=upscaler:upscale_2x;photos/cards/=card-grader:grade;scans/=flows:my-flow")
    watched = parse_watched_buckets("archive:photos/,archive:scans/2024/")

    table = routes_with_watched(routes, watched)

    grader, photo, scan = (route_for(key, table) for key in ("photos/cards/a.jpg", "photos/b.jpg", "scans/2024/c.jpg"))
    assert grader is not None and grader.request_type is RequestType.CARD_GRADER  # longest prefix still wins
    assert photo is not None and (photo.request_type, photo.endpoint) == (RequestType.UPSCALER, "upscale_2x")
    assert scan is not None and scan.request_type is RequestType.FLOWS
    assert len(table) == 4


def test_the_settings_route_watched_prefixes_and_refuse_outputs_into_a_watched_bucket() -> None:
    environment = {**SETTINGS_ENVIRONMENT, "WATCHED_BUCKETS": ""}
    watching = {**environment, "WATCHED_BUCKETS": "archive:photos/"}
    assert route_for("photos/a.jpg", SweeperSettings.from_env(watching).routes) is not None
    assert route_for("photos/a.jpg", SweeperSettings.from_env(environment).routes) is None  # empty: none watched

    outputs = {**watching, "REGENERATE_OUTPUTS_FOR": "upscaler", "OUTPUTS_MAX_RECEIVE_COUNT": "5"}
    with pytest.raises(SettingsError, match="'archive' is watched: outputs never go there"):
        OutputsSettings.from_env({**outputs, "OUTPUT_BUCKET_NAME": "archive"})
    # The webhook and the sweeper name that location too (in an image's PENDING output): the same refusal.
    with pytest.raises(SettingsError, match="'archive' is watched: outputs never go there"):
        SweeperSettings.from_env({**watching, "OUTPUT_BUCKET_NAME": "archive"})
    with pytest.raises(SettingsError, match="WATCHED_BUCKETS: Value error"):
        SweeperSettings.from_env({**environment, "WATCHED_BUCKETS": "archive"})


# --- the template -----------------------------------------------------------------------------------
def test_the_template_has_a_rule_slot_per_entry_and_its_pattern_agrees_with_the_settings(
    template: dict[str, Any],
) -> None:
    parameter = template["Parameters"]["WatchedBuckets"]
    rules = [logical_id for logical_id in template["Resources"] if logical_id.startswith("WatchRule")]
    assert len(rules) == MAX_WATCHED
    pattern = re.compile(parameter["AllowedPattern"])
    for text in ["", "photos-archive:cards/", "a.b-c:x/y z/,abc:p/", ",".join(f"b-{n}:p/" for n in range(5))]:
        assert pattern.fullmatch(text) and parse_watched_buckets(text) is not None
    for text in ["photos-archive", "xasync-in-1-2:incoming/", "abc:p:q", ",".join(f"b-{n}:p/" for n in range(6))]:
        assert not pattern.fullmatch(text)
        with pytest.raises(ValueError, match=r"bucket:prefix|input bucket|at most"):
            parse_watched_buckets(text)


def test_each_entry_gets_its_rule_its_queue_permission_and_read_only_access_under_its_prefix(
    template: dict[str, Any],
) -> None:
    resolver = Resolver(template, parameters={"WatchedBuckets": "photos-archive:cards/2024/,other.bucket:scans/"})
    resources = template["Resources"]

    created = [name for name in resources if resources[name].get("Condition", "").startswith("Watch")]
    assert [name for name in created if resolver.condition(resources[name]["Condition"])] == [
        "WatchRule0",
        "WatchRule1",
    ]
    rule = resolver.resolve(resources["WatchRule1"]["Properties"])
    assert rule["EventPattern"] == {
        "source": ["aws.s3"],
        "detail-type": ["Object Created"],
        "detail": {"bucket": {"name": ["other.bucket"]}, "object": {"key": [{"prefix": "scans/"}]}},
    }
    assert rule["Targets"] == [{"Id": "SubmitQueue", "Arn": resolver.get_att("SubmitQueue", "Arn")}]
    policy = resolver.resolve(resources["SubmitQueuePolicy"]["Properties"])["PolicyDocument"]
    (sends,) = [s for s in policy["Statement"] if s["Principal"] == {"Service": "events.amazonaws.com"}]
    assert sends["Condition"]["ArnEquals"]["aws:SourceArn"] == [
        resolver.get_att("WatchRule0", "Arn"),
        resolver.get_att("WatchRule1", "Arn"),
    ]
    for function in ("SubmitFunction", "SweeperFunction", "OutputsFunction"):
        statements = resolver.resolve(resources[function]["Properties"]["Policies"][0]["Statement"])
        (read,) = [s for s in statements if s.get("Sid") == "ReadWatchedUploads"]
        assert read["Action"] == ["s3:GetObject", "s3:GetObjectVersion"]
        assert read["Resource"] == ["arn:aws:s3:::photos-archive/cards/2024/*", "arn:aws:s3:::other.bucket/scans/*"]
        every_bucket = json.dumps(statements)
        assert "photos-archive" not in every_bucket.replace(json.dumps(read), "")  # no other grant names it


def test_without_watched_buckets_the_template_adds_nothing(template: dict[str, Any]) -> None:
    resolver = Resolver(template)
    assert not any(resolver.condition(f"Watch{n}") for n in range(MAX_WATCHED))
    assert not resolver.condition("HasWatchedBuckets")
    policy = resolver.resolve(template["Resources"]["SubmitQueuePolicy"]["Properties"])["PolicyDocument"]
    assert [s["Sid"] for s in policy["Statement"]] == ["OnlyTheInputBucketSends"]


def test_the_iam_audit_compares_a_watched_buckets_calls_with_its_prefix(template: dict[str, Any]) -> None:
    audit = Audit(template)
    audit.learn_names("SubmitFunction", {"WATCHED_BUCKETS": "archive:photos/,archive:scans/"})
    audit.record("SubmitFunction", "s3", "GetObject", {"Bucket": "archive", "Key": "scans/a.png", "VersionId": "v"})
    audit.record("SubmitFunction", "s3", "GetObject", {"Bucket": "archive", "Key": "elsewhere/a.png"})
    audit.record("SubmitFunction", "s3", "PutObject", {"Bucket": "archive", "Key": "photos/a.png"})
    assert [(call.action, call.resource) for call in audit.disallowed()] == [
        ("s3:GetObject", "arn:aws:s3:::@WatchedBucket/elsewhere/a.png"),
        ("s3:PutObject", "arn:aws:s3:::@WatchedBucket/@watched/a.png"),
    ]


# --- connect-bucket ---------------------------------------------------------------------------------
class FakeS3Notifications:
    """A bucket's notification configuration as S3 keeps it: one document, replaced by each write."""

    def __init__(self, configuration: dict[str, Any]) -> None:
        self.configuration = configuration
        self.writes: list[dict[str, Any]] = []

    def get_bucket_notification_configuration(self, Bucket: str) -> dict[str, Any]:
        return {"ResponseMetadata": {"HTTPStatusCode": 200}, **json.loads(json.dumps(self.configuration))}

    def put_bucket_notification_configuration(self, Bucket: str, NotificationConfiguration: dict[str, Any]) -> None:
        self.writes.append(NotificationConfiguration)
        self.configuration = NotificationConfiguration


OWN = {
    "QueueConfigurations": [{"Id": "own", "QueueArn": "arn:aws:sqs:us-east-1:1:own", "Events": ["s3:ObjectCreated:*"]}],
    "LambdaFunctionConfigurations": [
        {"Id": "thumbs", "LambdaFunctionArn": "arn:aws:lambda:us-east-1:1:function:t", "Events": ["s3:ObjectCreated:*"]}
    ],
}


def test_connect_bucket_adds_eventbridge_and_keeps_every_configuration_there() -> None:
    s3 = FakeS3Notifications(json.loads(json.dumps(OWN)))

    connection = connect_bucket(s3, "archive")

    assert s3.writes == [{**OWN, "EventBridgeConfiguration": {}}]
    assert (connection.kept, connection.changed, connection.confirmed) == (
        {"QueueConfigurations": 1, "LambdaFunctionConfigurations": 1},
        True,
        True,
    )


def test_connect_bucket_writes_nothing_when_eventbridge_is_on_already() -> None:
    s3 = FakeS3Notifications({**OWN, "EventBridgeConfiguration": {}})
    assert connect_bucket(s3, "archive").changed is False
    assert s3.writes == []


def test_connect_bucket_says_so_when_a_configuration_did_not_survive_the_write() -> None:
    class Forgetful(FakeS3Notifications):
        def put_bucket_notification_configuration(self, Bucket: str, NotificationConfiguration: dict[str, Any]) -> None:
            super().put_bucket_notification_configuration(Bucket, {"EventBridgeConfiguration": {}})

    with pytest.raises(ConfigurationLost, match="QueueConfigurations own, LambdaFunctionConfigurations thumbs"):
        connect_bucket(Forgetful(json.loads(json.dumps(OWN))), "archive")


# --- the local stack's relay ---------------------------------------------------------------------
def test_motos_event_is_put_in_the_documented_shape_and_read_as_s3s() -> None:
    # Given what moto 5.2 sends for a PUT (eTag, epoch time, the example's fixed sequencer, the key as uploaded)
    moto = {
        "version": "0",
        "id": "17793124-05d4-b198-2fde-7ededc63b103",
        "detail-type": "Object Created",
        "source": "aws.s3",
        "account": "123456789012",
        "time": 1795946400.123456,
        "region": "us-east-1",
        "resources": ["arn:aws:s3:::archive"],
        "detail": {
            "version": "0",
            "bucket": {"name": "archive"},
            "object": {"key": "photos/a b+c.png", "size": 5, "eTag": "abc", "version-id": None, "sequencer": "617f"},
            "request-id": "N4N7GDK58NMKJ12R",
            "requester": "123456789012",
            "source-ip-address": "1.2.3.4",
            "reason": "ObjectCreated",
        },
    }

    shaped = documented(moto)

    expected = load_event("eventbridge-object-created.json")
    assert set(shaped) == set(expected)
    assert set(shaped["detail"]) == set(expected["detail"])
    assert shaped["detail"]["object"] == {
        "key": "photos/a+b%2Bc.png",
        "size": 5,
        "etag": "abc",
        "sequencer": f"{1795946400123456:016X}",
    }
    (upload,) = uploads_from_notification("m-1", json.dumps(shaped))
    assert (upload.key, upload.version, upload.version_id) == ("photos/a b+c.png", "abc", None)
