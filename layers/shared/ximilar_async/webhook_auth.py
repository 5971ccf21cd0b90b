"""Webhook authentication: Ximilar does not sign webhooks, so the pipeline authenticates them itself.

`WebhookAuth` is the one place that knows the scheme: submit asks it for the webhook headers of a
request, the webhook function asks it whether a delivery carries them. Today's scheme: two custom
headers, the submission id and an HMAC-SHA256, under the stack's signing key, of that id and the
request's record `_id`s. It is different for every request, cannot be made without the key, and a
valid token replayed with another request's payload does not match. The key never leaves Secrets
Manager and nothing goes in the URL.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

# Hyphens, not underscores: many proxies drop header names with underscores.
SUBMISSION_HEADER: Final = "X-Xasync-Submission"
TOKEN_HEADER: Final = "X-Xasync-Token"  # noqa: S105 - a header name, not a secret
_VERSION: Final = "v1"


class MissingCredentials(Exception):
    """The delivery does not carry the webhook headers at all."""


@dataclass(frozen=True)
class Credentials:
    """What a delivery claims: the submission it is about, and its token."""

    submission_id: str
    token: str


@dataclass(frozen=True)
class WebhookAuth:
    """Signs a request's webhook headers and verifies a delivery's; `signing_key` is read per use (it is cached)."""

    signing_key: Callable[[], bytes]

    def webhook(self, url: str, submission_id: str, record_ids: Iterable[str]) -> dict[str, Any]:
        """The `webhook` object of a submission."""
        return {"endpoint": url, "headers": self.headers(submission_id, record_ids)}

    def headers(self, submission_id: str, record_ids: Iterable[str]) -> dict[str, str]:
        return {SUBMISSION_HEADER: submission_id, TOKEN_HEADER: self._token(submission_id, record_ids)}

    def credentials(self, headers: Mapping[str, str]) -> Credentials:
        """The claimed submission and token, from headers in any letter case."""
        lowered = {name.lower(): value for name, value in headers.items()}
        submission_id = lowered.get(SUBMISSION_HEADER.lower(), "")
        token = lowered.get(TOKEN_HEADER.lower(), "")
        if not submission_id or not token:
            raise MissingCredentials("missing webhook token")
        return Credentials(submission_id, token)

    def verify(self, credentials: Credentials, record_ids: Iterable[str]) -> bool:
        """Constant-time check of the token against the records the payload names."""
        expected = self._token(credentials.submission_id, record_ids)
        return hmac.compare_digest(expected.encode(), credentials.token.encode())

    def _token(self, submission_id: str, record_ids: Iterable[str]) -> str:
        message = "\n".join([_VERSION, submission_id, *sorted(record_ids)])
        return hmac.new(self.signing_key(), message.encode(), hashlib.sha256).hexdigest()


def static_key(key: bytes) -> Callable[[], bytes]:
    """A key provider for a fixed key (tests, benchmarks, the local event files)."""
    return lambda: key
