"""S3's EventBridge events on the local stack, in the shape AWS documents.

moto 5.2 does send S3's events to EventBridge once a bucket has `EventBridgeConfiguration` (for PUT and
COPY), and its rules deliver them to SQS, but not as S3 sends them
(https://docs.aws.amazon.com/AmazonS3/latest/userguide/ev-events.html): `eTag` for `etag`, the same
`sequencer` for every event (the documentation's example), `time` in epoch seconds, the key as
uploaded (S3 URL-encodes it, as in its notifications), `reason` `ObjectCreated` (S3 says `PutObject`,
`CopyObject`, ...). The submit function reads the documented shape only, so the local stack points each
of the template's `aws.s3` rules at a relay queue, and a relay thread sends each event on to the rule's
own target in the documented shape (`documented`), its sequencer made from moto's event time, in
microseconds: later uploads of a key sort after earlier ones, as S3's sequencer does.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote_plus

from ximilar_async.adapters.sqs import SqsSubmitQueue
from ximilar_async.values.clock import parse_time
from ximilar_async.values.uploads import sequencer_at

S3_SOURCE = "aws.s3"
RELAY_SUFFIX = "-s3-events"


def documented(event: dict[str, Any]) -> dict[str, Any]:
    """moto's S3 EventBridge event as AWS documents the event (Object Created; other types unchanged)."""
    if event.get("source") != S3_SOURCE or event.get("detail-type") != "Object Created":
        return event
    moment = parse_time(event["time"])
    detail, s3_object = event["detail"], event["detail"]["object"]
    documented_object: dict[str, Any] = {
        "key": quote_plus(s3_object["key"], safe="/"),  # as S3 encodes keys in its notifications
        "size": s3_object["size"],
        "etag": s3_object.get("etag") or s3_object.get("eTag", ""),
    }
    if s3_object.get("version-id"):
        documented_object["version-id"] = s3_object["version-id"]
    documented_object["sequencer"] = sequencer_at(moment)
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Object Created",
        "source": S3_SOURCE,
        "account": event["account"],
        "time": moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": event["region"],
        "resources": event["resources"],
        "detail": {
            "version": "0",
            "bucket": {"name": detail["bucket"]["name"]},
            "object": documented_object,
            "request-id": detail.get("request-id", ""),
            "requester": detail.get("requester", ""),
            "source-ip-address": detail.get("source-ip-address", ""),
            "reason": "PutObject",
        },
    }


def s3_rules(template: dict[str, Any]) -> list[str]:
    """The template's EventBridge rules on S3's events (WatchRule0..4)."""
    return [
        logical_id
        for logical_id, resource in template["Resources"].items()
        if resource["Type"] == "AWS::Events::Rule"
        and S3_SOURCE in resource["Properties"].get("EventPattern", {}).get("source", [])
    ]


@dataclass
class S3EventRelay:
    """One rule's relay: its events from a local queue to the rule's own SQS target, in the documented shape."""

    sqs: Any
    relay_url: str
    target_url: str
    stopping: threading.Event = field(default_factory=threading.Event)
    relayed: int = 0

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, name=f"s3-events-{self.relay_url}", daemon=True)

    def _run(self) -> None:
        while not self.stopping.is_set():
            messages = self.sqs.receive_message(QueueUrl=self.relay_url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
                "Messages", []
            )
            if not messages:
                continue
            bodies = [json.dumps(documented(json.loads(m["Body"]))) for m in messages]
            refused = set(SqsSubmitQueue(self.sqs, self.target_url).send(bodies))
            sent = [m for n, m in enumerate(messages) if n not in refused]  # a refused one is received again
            if sent:
                self.sqs.delete_message_batch(
                    QueueUrl=self.relay_url,
                    Entries=[{"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(sent)],
                )
            self.relayed += len(sent)


def relay_s3_rules(
    sqs: Any, events: Any, template: dict[str, Any], physical: dict[str, str], stack_name: str
) -> dict[str, S3EventRelay]:
    """Point each S3 rule moto created (its condition held) at a relay queue; the relays, by logical id, not started."""
    relays: dict[str, S3EventRelay] = {}
    for logical_id in s3_rules(template):
        if logical_id not in physical:
            continue  # its slot is off
        rule = physical[logical_id]
        for target in events.list_targets_by_rule(Rule=rule)["Targets"]:
            target_url = sqs.get_queue_url(QueueName=target["Arn"].rsplit(":", 1)[1])["QueueUrl"]
            relay_url = sqs.create_queue(QueueName=f"{stack_name}-{logical_id}{RELAY_SUFFIX}")["QueueUrl"]
            relay_arn = sqs.get_queue_attributes(QueueUrl=relay_url, AttributeNames=["QueueArn"])["Attributes"][
                "QueueArn"
            ]
            events.put_targets(Rule=rule, Targets=[{"Id": target["Id"], "Arn": relay_arn}])
            relays[logical_id] = S3EventRelay(sqs, relay_url, target_url)
    return relays
