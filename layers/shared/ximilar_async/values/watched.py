"""Buckets the stack did not create: which `bucket:prefix` entries it watches, and how their keys are routed.

`WatchedBuckets` is written `bucket:prefix,bucket:prefix` (at most MAX_WATCHED entries, one EventBridge
rule each in template.yaml). A bucket name cannot hold `:`, and a watched prefix may not, so the
template can split an entry with `Fn::Split` alone. Each object created under a watched prefix reaches
the submit queue as S3's EventBridge `Object Created` event (`uploads.uploads_from_eventbridge`).

Routing is the input bucket's: `Routes` match the key itself, in whichever bucket it is. A watched
prefix that no route covers (no route's prefix is a prefix of it) is sent where an empty `Routes` sends
`InputPrefix`, DEFAULT_TARGET, so that a watched bucket works without a routing table of its own.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from ximilar_async.values.request_types import RequestType
from ximilar_async.values.routing import Route, route_for

MAX_WATCHED: Final = 5  # the rule slots of template.yaml (WatchRule0..4)
INPUT_BUCKET_SHAPE: Final = "xasync-in-"  # the stack's own bucket is watched by its notification already
DEFAULT_TARGET: Final = (RequestType.UPSCALER, "upscale_2x")  # the template's default for InputPrefix
_BUCKET_NAME: Final = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


@dataclass(frozen=True, slots=True)
class WatchedPrefix:
    bucket: str
    prefix: str

    def covers(self, bucket: str, key: str) -> bool:
        return bucket == self.bucket and key.startswith(self.prefix)


def parse_watched_buckets(text: str) -> tuple[WatchedPrefix, ...]:
    """`bucket:prefix,...` (may be empty); ValueError names the entry that is wrong."""
    watched: list[WatchedPrefix] = []
    for entry in filter(None, (part.strip() for part in text.split(","))):
        bucket, colon, prefix = entry.partition(":")
        if not colon or not prefix or ":" in prefix:
            raise ValueError(f"{entry!r} is not of the form bucket:prefix (a prefix, without ':')")
        if not _BUCKET_NAME.fullmatch(bucket):
            raise ValueError(f"{entry!r}: {bucket!r} is not a bucket name")
        if bucket.startswith(INPUT_BUCKET_SHAPE):
            raise ValueError(f"{entry!r}: the stack's input bucket is watched by its own notification")
        watched.append(WatchedPrefix(bucket, prefix))
    if len(watched) > MAX_WATCHED:
        raise ValueError(f"{len(watched)} entries: at most {MAX_WATCHED} (the template's rule slots)")
    if len(set(watched)) != len(watched):
        raise ValueError("an entry is named twice")
    return tuple(watched)


def routes_with_watched(routes: Sequence[Route], watched: Sequence[WatchedPrefix]) -> tuple[Route, ...]:
    """The routing table with a DEFAULT_TARGET route for each watched prefix no route covers (longest first)."""
    request_type, endpoint = DEFAULT_TARGET
    added = {
        each.prefix: Route(each.prefix, request_type, endpoint)
        for each in watched
        if route_for(each.prefix, routes) is None
    }
    return tuple(sorted([*routes, *added.values()], key=lambda route: len(route.prefix), reverse=True))
