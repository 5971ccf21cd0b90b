"""The errors the ports raise (`ports`): what a service may catch, whichever adapter stands behind the port.

The Ximilar client's are typed so that callers decide from the type whether to retry.
"""

from __future__ import annotations


class XimilarError(Exception):
    """Base class of every error the Ximilar client raises."""


class InvalidRequest(XimilarError, ValueError):
    """Refused before sending: the API would refuse it too (too many records, bad record, unknown type)."""


class XimilarRequestError(XimilarError):
    """Ximilar answered 4xx (other than 429): the request itself is wrong and retrying will not help."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(f"Ximilar answered {status_code}: {message}")
        self.status_code = status_code
        self.message = message


class XimilarAuthError(XimilarRequestError):
    """401/403: the API token is missing, wrong or not allowed."""


class XimilarNotFound(XimilarRequestError):
    """404: no such request."""


class XimilarTransientError(XimilarError):
    """The service was unavailable, throttled or too slow even after the client's retries: try later."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class XimilarThrottled(XimilarTransientError):
    """429 after every retry the deadline allowed; `retry_after`: Ximilar's Retry-After in seconds, if sent."""

    def __init__(self, message: str, status_code: int | None = 429, retry_after: float | None = None) -> None:
        super().__init__(message, status_code)
        self.retry_after = retry_after


class ItemTooLarge(Exception):
    """DynamoDB refused a write because the item would exceed its size limit."""


class ObjectGone(Exception):
    """The object was deleted (or overwritten) before it could be read."""


class BackfillHeld(Exception):
    """A backfill batch is held back, before any write: the submit queue is deep, or the spend guard paused.

    Its name is what the state machine retries with backoff (statemachines/backfill.asl.json, `Retry`), and
    what the local driver waits on the same way: the batch is sent again whole, later.
    """
