"""The metrics the alarms and the dashboard watch are the ones the functions emit: read from the EMF lines
the handlers print (Powertools writes EMF JSON to stdout; CloudWatch Logs turns it into metrics)."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aws_lambda_powertools import Metrics

from tests.conftest import RunningEmulator
from tests.support.aws import AwsStack
from tests.support.events import load_event
from tests.support.pipeline import Pipeline, start_pipeline
from xasync.lambda_runtime import LocalLambdaContext
from xasync.servers import wait_for
from ximilar_async.services.errors import BackfillHeld

Emitted = dict[str, list[float]]


@pytest.fixture
def pipeline(monkeypatch: pytest.MonkeyPatch, aws_stack: AwsStack, emulator: RunningEmulator) -> Iterator[Pipeline]:
    """Requests come due for the sweeper one second after submission; no metric left over from other tests.

    Powertools' Metrics instances share one metric set per process, and a handler run with metrics
    disabled (the local stack's) adds to it without flushing: cleared here, as Powertools' own tests do.
    """
    for running in start_pipeline(monkeypatch, aws_stack, emulator, FirstCheckDelaySeconds="1"):
        Metrics().clear_metrics()
        yield running


def emf(output: str, namespace: str, service: str) -> Emitted:
    """Metric name -> values, from the EMF documents in `output` under `namespace` with the `service` dimension."""
    emitted: dict[str, list[float]] = defaultdict(list)
    for line in output.splitlines():
        if not line.startswith("{") or '"_aws"' not in line:
            continue
        document = json.loads(line)
        (directive,) = document["_aws"]["CloudWatchMetrics"]
        if directive["Namespace"] != namespace or document.get("service") != service:
            continue
        for metric in directive["Metrics"]:
            value = document[metric["Name"]]
            emitted[metric["Name"]] += value if isinstance(value, list) else [value]
    return dict(emitted)


def pipeline_metrics(template: dict[str, Any]) -> tuple[str, str]:
    """The namespace and service dimension the template gives Powertools (and its alarms watch)."""
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    return variables["POWERTOOLS_METRICS_NAMESPACE"], variables["POWERTOOLS_SERVICE_NAME"]


def watched_by_alarms(template: dict[str, Any], namespace: str) -> set[str]:
    names = set()
    for resource in template["Resources"].values():
        if resource["Type"] != "AWS::CloudWatch::Alarm":
            continue
        properties = resource["Properties"]
        if properties.get("Namespace") == namespace:
            names.add(properties["MetricName"])
        for query in properties.get("Metrics", []):
            metric = query.get("MetricStat", {}).get("Metric", {})
            if metric.get("Namespace") == namespace:
                names.add(metric["MetricName"])
    return names


def on_dashboard(template: dict[str, Any], namespace: str) -> set[str]:
    body = json.loads(template["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"])
    return {row[1] for widget in body["widgets"] for row in widget["properties"]["metrics"] if row[0] == namespace}


def sweep_until_recorded(pipeline: Pipeline, requests: int) -> None:
    recorded = 0

    def more() -> bool:
        nonlocal recorded
        answer = pipeline.sweeper.lambda_handler(load_event("schedule.json"), LocalLambdaContext())
        recorded += int(answer["requests_recorded"])
        return recorded >= requests

    wait_for(more, timeout=20, interval=0.25, what=f"the sweeper to record {requests} requests")


def health(emitted: Emitted) -> float:
    """The webhook-health alarm's expression, on what the functions emitted."""
    swept, hooked = sum(emitted.get("SweepRequestsRecorded", [])), sum(emitted.get("RequestsRecordedByWebhook", []))
    return 100 * swept / (swept + hooked) if swept + hooked >= 5 else 0.0


def threshold(template: dict[str, Any], name: str) -> float:
    return float(template["Parameters"][name]["Default"])


def test_the_webhook_health_metric_moves_when_webhooks_stop(
    pipeline: Pipeline, template: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    namespace, service = pipeline_metrics(template)
    limit = threshold(template, "SweeperShareAlarmPercent")
    keys_ = [f"incoming/healthy-{n}.png" for n in range(5)]  # upscaler: five requests, five webhooks
    pipeline.upload(*keys_)
    for key in keys_:
        pipeline.wait_status(key, "DONE")
    pipeline.sweeper.lambda_handler(load_event("schedule.json"), LocalLambdaContext())
    healthy = emf(capsys.readouterr().out, namespace, service)
    assert sum(healthy["RequestsRecordedByWebhook"]) == 5
    assert health(healthy) == 0 < limit

    pipeline.emulator.control.set_knobs(webhook_drop_rate=1.0)  # webhooks silently stop
    silent = [f"incoming/silent-{n}.png" for n in range(5)]
    pipeline.upload(*silent)
    sweep_until_recorded(pipeline, 5)
    stopped = emf(capsys.readouterr().out, namespace, service)
    assert sum(stopped["SweepRequestsRecorded"]) == 5
    assert sum(stopped.get("RequestsRecordedByWebhook", [])) == 0
    assert health(stopped) == 100 > limit


def backfill_batch(pipeline: Pipeline, keys_: list[str], bucket: str | None = None) -> dict[str, Any]:
    """A Distributed Map batch (events/backfill-listing-batch.json) over the stack's input bucket: each key's
    ETag as S3 lists it when the object is there (an image item for that version makes it known)."""
    batch = load_event("backfill-listing-batch.json")
    bucket = bucket or pipeline.stack.bucket
    batch["BatchInput"] |= {"bucket": bucket, "prefix": "incoming/", "source_uri": f"s3://{bucket}/incoming/"}
    s3 = pipeline.stack.client("s3")

    def etag(key: str) -> str:
        try:
            return str(s3.head_object(Bucket=bucket, Key=key)["ETag"])
        except s3.exceptions.ClientError:
            return f'"{key}"'

    batch["Items"] = [{**batch["Items"][0], "Key": key, "Etag": etag(key)} for key in keys_]
    return batch


def test_every_metric_an_alarm_or_the_dashboard_watches_is_emitted(
    pipeline: Pipeline, template: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    namespace, service = pipeline_metrics(template)
    control = pipeline.emulator.control
    pipeline.upload("incoming/flows/fine.png")  # submitted, recorded by webhook, with a latency
    pipeline.wait_status("incoming/flows/fine.png", "DONE")
    pipeline.upload("incoming/notes.txt", body=b"text")  # FAILED: not an image
    signed_for = {"X-Xasync-Submission": "5f0c8a52-0d7e-4c3f-8a55-3f6f7f4e2b10", "X-Xasync-Token": "0" * 64}
    forged = pipeline.post(load_event("webhook-done.json")["body"].encode(), signed_for)
    assert forged.status_code == 401
    control.set_knobs(webhook_drop_rate=1.0)  # recorded by the sweeper
    pipeline.upload("incoming/flows/swept.png")
    sweep_until_recorded(pipeline, 1)
    control.fail_next(20, status=429, retry_after=0)  # Ximilar throttles the submission
    pipeline.upload("incoming/flows/throttled.png")
    control.clear_faults()
    backfill = pipeline.cold_start("BackfillFunction")
    known_and_new = backfill_batch(pipeline, ["incoming/flows/fine.png", "incoming/flows/old.png"])
    done = backfill.lambda_handler(known_and_new, LocalLambdaContext())
    elsewhere = backfill_batch(pipeline, ["incoming/x.png"], bucket="a-bucket-the-stack-does-not-watch")
    refused = backfill.lambda_handler(elsewhere, LocalLambdaContext())
    assert (done["already_known"], done["enqueued"], refused["failed"]) == (1, 1, 1)
    (sent,) = pipeline.stack.receive_uploads(1)  # the one sent, taken off the queue here
    assert "incoming/flows/old.png" in sent["body"]
    pipeline.storage.control.pause("metrics test", datetime.now(UTC))  # the spend guard holds
    pipeline.upload("incoming/flows/held.png")
    with pytest.raises(BackfillHeld):  # the state machine's Retry waits for the resume
        backfill.lambda_handler(backfill_batch(pipeline, ["incoming/flows/later.png"]), LocalLambdaContext())

    emitted = emf(capsys.readouterr().out, namespace, service)
    alarms = watched_by_alarms(template, namespace)
    assert alarms >= {"ImagesFailed", "SubmissionsPaused", "SweepRequestsRecorded", "RequestsRecordedByWebhook"}
    assert alarms - set(emitted) == set()
    assert sum(emitted["ImagesFailed"]) >= 1 and sum(emitted["SubmissionsPaused"]) == 1
    assert sum(emitted["XimilarThrottled"]) >= 1 and sum(emitted["WebhooksRejected.bad-token"]) == 1
    assert all(0 <= seconds < 60 for seconds in emitted["ResultLatencySeconds"])
    # The dashboard also charts each rejection reason; the ones this test does not provoke are in the code.
    rejection_codes = {"no-route", "empty", "too-large", "object-gone", "refused"}
    assert on_dashboard(template, namespace) - set(emitted) <= {f"ImagesFailed.{code}" for code in rejection_codes}
