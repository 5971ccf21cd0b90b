"""The one status vocabulary of images and requests, used by every function and by users.

Ximilar's own request states are `CREATED`, `PROCESSING` and `DONE`. The project adds:

- `SUBMITTING`: the item is written, Ximilar has not (yet) accepted the request;
- `ERROR`: Ximilar answered this image's record with a non-200 `_status`;
- `FAILED`: never submitted (bad input) or given up on; always stored with a reason.

The live service is reported to use more request states than its reference lists. Those are
kept verbatim (in `ximilar_status`) and classified by `classify_ximilar_state`; an unknown
state is never a crash.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    SUBMITTING = "SUBMITTING"
    CREATED = "CREATED"
    PROCESSING = "PROCESSING"
    DONE = "DONE"
    ERROR = "ERROR"
    FAILED = "FAILED"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({Status.DONE, Status.ERROR, Status.FAILED})
UNFINISHED = (Status.SUBMITTING, Status.CREATED, Status.PROCESSING)  # in the order an image passes them


class XimilarStateKind(StrEnum):
    """What a Ximilar request state means for the pipeline."""

    PENDING = "PENDING"  # still being worked on: check again later
    DONE = "DONE"  # results are ready: record them
    THROTTLED = "THROTTLED"  # the service refused for load or quota: check again or resubmit later
    FAILED = "FAILED"  # the service gave up: the images end FAILED with the state as reason
    UNKNOWN = "UNKNOWN"  # not a documented state: keep checking until the request is too old


_STATE_KINDS: dict[str, XimilarStateKind] = {
    "CREATED": XimilarStateKind.PENDING,
    "PROCESSING": XimilarStateKind.PENDING,
    "RETRY": XimilarStateKind.PENDING,
    "DONE": XimilarStateKind.DONE,
    "API_LIMIT_EXCEEDED": XimilarStateKind.THROTTLED,
    "FAILED": XimilarStateKind.FAILED,
    "NOT_SUPPORTED": XimilarStateKind.FAILED,
}


def classify_ximilar_state(state: str) -> XimilarStateKind:
    """Classify a request state string exactly as Ximilar sent it (case-insensitive)."""
    return _STATE_KINDS.get(state.strip().upper(), XimilarStateKind.UNKNOWN)
