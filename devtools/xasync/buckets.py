"""`xasync connect-bucket NAME`: S3's EventBridge delivery on for a bucket the stack did not create.

The stack watches such a bucket through EventBridge rules (`WatchedBuckets` in template.yaml), which
see its events only once the bucket sends them to EventBridge. S3 keeps a bucket's notification
configuration as one document, replaced whole by each write: this reads it, adds
`EventBridgeConfiguration` and writes back every Queue, Topic and LambdaFunction configuration that
was there, then reads it again to prove they are all still on. Nothing else of the bucket is touched,
and objects already in it are not sent (that is backfill's work). S3 offers no conditional write of
this document: run it when nobody else is changing the bucket's notifications.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import click

from xasync.target import target_for
from ximilar_async.values.watched import parse_watched_buckets

# The destinations a notification configuration may hold, besides EventBridge (kept as they are).
DESTINATIONS = ("QueueConfigurations", "TopicConfigurations", "LambdaFunctionConfigurations")
EVENTBRIDGE = "EventBridgeConfiguration"


class ConfigurationLost(RuntimeError):
    """A configuration that was on the bucket before the write is not there after it."""


@dataclass(frozen=True)
class Connection:
    bucket: str
    kept: dict[str, int]  # destination kind -> how many configurations of it were kept
    changed: bool  # False: EventBridge delivery was on already, nothing was written
    confirmed: bool  # S3 reported EventBridgeConfiguration back after the write (moto 5.2 never reports it)


def _destinations(configuration: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    return {kind: list(configuration[kind]) for kind in DESTINATIONS if configuration.get(kind)}


def connect_bucket(s3: Any, bucket: str) -> Connection:
    """Turn EventBridge delivery on for `bucket`, keeping every other notification configuration on it."""
    before = s3.get_bucket_notification_configuration(Bucket=bucket)
    kept = _destinations(before)
    counts = {kind: len(entries) for kind, entries in kept.items()}
    if EVENTBRIDGE in before:
        return Connection(bucket, counts, changed=False, confirmed=True)
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={**kept, EVENTBRIDGE: {}})
    after = s3.get_bucket_notification_configuration(Bucket=bucket)
    lost = [
        f"{kind} {entry.get('Id', '')}".strip()
        for kind, entries in kept.items()
        for entry in entries
        if entry not in after.get(kind, [])
    ]
    if lost:
        raise ConfigurationLost(f"{bucket}: after the write, missing {', '.join(lost)}")
    return Connection(bucket, counts, changed=True, confirmed=EVENTBRIDGE in after)


@click.command("connect-bucket")
@click.argument("bucket")
@click.option("--stack-name", default=None, help="A deployed stack (default: the local stack of `xasync up`).")
def connect_bucket_command(bucket: str, stack_name: str | None) -> None:
    """Send BUCKET's S3 events to EventBridge, keeping its notification configuration (for WatchedBuckets)."""
    target = target_for(stack_name)
    watched = parse_watched_buckets(target.environment("SubmitFunction").get("WATCHED_BUCKETS", ""))
    connection = connect_bucket(target.client("s3"), bucket)
    kept = ", ".join(f"{count} {kind.removesuffix('Configurations')}" for kind, count in connection.kept.items())
    state = "turned on" if connection.changed else "was on already"
    click.echo(f"{bucket}: EventBridge delivery {state}; kept: {kept or 'no other configuration'}")
    if not connection.confirmed:
        click.echo("S3 did not report EventBridgeConfiguration back (moto 5.2 never does): uploads will tell")
    prefixes = [each.prefix for each in watched if each.bucket == bucket]
    if prefixes:
        click.echo(f"watched under: {', '.join(prefixes)}")
    else:
        click.echo(f"{bucket} is not in the stack's WatchedBuckets: add `{bucket}:<prefix>` to submit its uploads")
