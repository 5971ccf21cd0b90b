"""What a submission is while it is being made: the images owned for one request (`Owned`), and what one
invocation of the submitter did (`SubmitOutcome`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from ximilar_async.values.request_types import RequestType
from ximilar_async.values.uploads import Upload

T = TypeVar("T")


def chunks(items: Sequence[T], size: int) -> Iterable[Sequence[T]]:
    """`itertools.batched`, which needs Python 3.12 (the code runs on 3.11 too)."""
    return (items[start : start + size] for start in range(0, len(items), size))


@dataclass
class SubmitOutcome:
    """What one invocation did; `retry` names the SQS messages to report as batch item failures."""

    retry: dict[str, str] = field(default_factory=dict)  # message id -> reason
    requests_submitted: int = 0
    images_submitted: int = 0
    duplicates: int = 0
    images_failed: Counter[str] = field(default_factory=Counter)  # rejection code -> images
    handed_on: int = 0  # images owned but not posted: the sweeper submits them
    throttled: bool = False  # Ximilar throttled this invocation (its breaker opened)
    max_in_flight: int = 0  # most POSTs out at once
    paused: int = 0  # images handed on because the spend guard paused submission (counted in handed_on too)

    def merge(self, other: SubmitOutcome) -> None:
        self.retry.update(other.retry)
        self.requests_submitted += other.requests_submitted
        self.images_submitted += other.images_submitted
        self.duplicates += other.duplicates
        self.images_failed.update(other.images_failed)
        self.handed_on += other.handed_on
        self.throttled = self.throttled or other.throttled
        self.max_in_flight = max(self.max_in_flight, other.max_in_flight)
        self.paused += other.paused


@dataclass(frozen=True)
class Owned:
    """Images claimed for one submission: owned by the pipeline, ready to POST.

    `opened`: its request item exists already (the sweeper submitting a handed-on request again);
    otherwise the item is written once the POST has an outcome.
    """

    submission_id: str
    request_type: RequestType
    endpoint: str
    uploads: Sequence[Upload]
    opened: bool = False
