"""Per-request webhook tokens: Ximilar does not sign webhooks, so the pipeline authenticates them itself.

Submit sends two custom headers with each request: the submission id and an HMAC-SHA256, under the
stack's signing key, of that id and the request's record `_id`s. The webhook recomputes it from the
header and the payload's records: it is different for every request, cannot be made without the key,
and a valid token replayed with another request's payload does not match. The key itself never
leaves Secrets Manager and nothing goes in the URL.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from typing import Any, Final

# Hyphens, not underscores: many proxies drop header names with underscores.
SUBMISSION_HEADER: Final = "X-Xasync-Submission"
TOKEN_HEADER: Final = "X-Xasync-Token"  # noqa: S105 - a header name, not a secret
_VERSION: Final = "v1"


def sign(key: bytes, submission_id: str, record_ids: Iterable[str]) -> str:
    message = "\n".join([_VERSION, submission_id, *sorted(record_ids)])
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def verify(key: bytes, submission_id: str, record_ids: Iterable[str], token: str) -> bool:
    """Constant-time check of `token` against the one `sign` makes."""
    return hmac.compare_digest(sign(key, submission_id, record_ids).encode(), token.encode())


def webhook_config(url: str, key: bytes, submission_id: str, record_ids: Iterable[str]) -> dict[str, Any]:
    """The `webhook` object of a submission."""
    return {
        "endpoint": url,
        "headers": {SUBMISSION_HEADER: submission_id, TOKEN_HEADER: sign(key, submission_id, record_ids)},
    }
