"""EventBridge: the completion events (`services.completion_events`) put on the stack's bus."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ximilar_async.services.completion_events import CompletionEvent


@dataclass(frozen=True)
class EventBridgePublisher:
    """`EventPublisher` on a boto3 EventBridge client: `source` is the stack's name."""

    events: Any
    bus: str
    source: str

    def publish(self, events: Iterable[CompletionEvent]) -> None:
        entries = [
            {
                "Source": self.source,
                "DetailType": event.detail_type,
                "Detail": json.dumps(event.detail, separators=(",", ":"), default=str),
                "EventBusName": self.bus,
                "Resources": [],
            }
            for event in events
        ]
        for start in range(0, len(entries), 10):
            answer = self.events.put_events(Entries=entries[start : start + 10])
            if answer.get("FailedEntryCount"):
                raise RuntimeError(f"{answer['FailedEntryCount']} events refused by EventBridge")
