"""The Ximilar asynchronous request API client."""

from ximilar_async.ximilar.client import XimilarClient, default_retry, make_session, validate_records
from ximilar_async.ximilar.exceptions import (
    InvalidRequest,
    XimilarAuthError,
    XimilarError,
    XimilarNotFound,
    XimilarRequestError,
    XimilarThrottled,
    XimilarTransientError,
)

__all__ = [
    "InvalidRequest",
    "XimilarAuthError",
    "XimilarClient",
    "XimilarError",
    "XimilarNotFound",
    "XimilarRequestError",
    "XimilarThrottled",
    "XimilarTransientError",
    "default_retry",
    "make_session",
    "validate_records",
]
