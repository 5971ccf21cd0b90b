"""Webhook authentication: Ximilar does not sign webhooks, so the pipeline authenticates them itself.

`WebhookAuth` is the one place that knows the scheme: submit asks it for the webhook headers of a
request, the webhook function asks it whether a delivery's headers carry a valid token. Two custom
headers: the submission id, and a token

    v2.<kid>.<issued>.<hexmac>

where `mac` is HMAC-SHA256, under the signing key whose id is `kid`, of the canonical JSON array
`["xasync-webhook", "v2", kid, submission_id, issued]` (no whitespace, ASCII escapes). JSON quotes
and escapes every field, so no two different field tuples share a message (the previous scheme joined
record ids with newlines, and a record `_id` of "a\\nb" verified for the records a and b).

The token is checked from the headers alone, before the body is read: a delivery without a valid
token costs a few microseconds whatever its body. It names no records; whoever uses the body compares
its records with the request item's. `issued` (epoch seconds) bounds a token's life to `max_age`
(MaxRequestAgeSeconds: no genuine webhook comes later than the sweeper gives up), which expires
leaked headers and gives key rotation its rule: the previous key is accepted for as long as a token
signed with it can be valid. `kid` is a short hash of the key (not secret: it reveals nothing of a
64-character random key), so a token names its key without any bookkeeping in Secrets Manager.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final, Protocol

from ximilar_async.values.clock import Clock, utc_now

# Hyphens, not underscores: many proxies drop header names with underscores.
SUBMISSION_HEADER: Final = "X-Xasync-Submission"
TOKEN_HEADER: Final = "X-Xasync-Token"  # noqa: S105 - a header name, not a secret
VERSION: Final = "v2"
# Lambda's clock and ours may disagree a little; a token "from the future" by more is refused.
CLOCK_SKEW: Final = timedelta(minutes=5)
_KID_LENGTH: Final = 12
# The whole token, strictly: anything else is refused before any HMAC is computed.
_TOKEN_PATTERN: Final = re.compile(rf"{VERSION}\.([0-9a-f]{{{_KID_LENGTH}}})\.([0-9]{{1,12}})\.([0-9a-f]{{64}})")
# Submission ids are UUIDs; leave room for other ids but not for arbitrary text in logs and keys.
_SUBMISSION_PATTERN: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class MissingCredentials(Exception):
    """The delivery does not carry the webhook headers at all."""


class InvalidToken(Exception):
    """The headers are there but do not authenticate; the message says why (never the token)."""


class SigningKeys(Protocol):
    """The signing keys: the current one first, then the previous one if there is one."""

    def __call__(self, *, refresh: bool = False) -> Sequence[bytes]:
        """`refresh`: the caller met a key id it does not know; look again (a rotation may have happened)."""
        ...


@dataclass(frozen=True)
class Credentials:
    """What a delivery claims: the submission it is about, and its token."""

    submission_id: str
    token: str


def key_id(key: bytes) -> str:
    """The public name of a key in tokens."""
    return hashlib.sha256(b"xasync-webhook-kid\0" + key).hexdigest()[:_KID_LENGTH]


@dataclass(frozen=True)
class WebhookAuth:
    """Signs a request's webhook headers and verifies a delivery's.

    `keys` is read per use (the provider caches it), so a rotated key is used without a redeploy.
    `max_age` is how long a token stays valid; submit only signs and leaves it None.
    """

    keys: SigningKeys
    max_age: timedelta | None = None
    clock: Clock = utc_now

    def webhook(self, url: str, submission_id: str) -> dict[str, Any]:
        """The `webhook` object of a submission."""
        return {"endpoint": url, "headers": self.headers(submission_id)}

    def headers(self, submission_id: str) -> dict[str, str]:
        key = self.keys()[0]
        issued = int(self.clock().timestamp())
        kid = key_id(key)
        token = f"{VERSION}.{kid}.{issued}.{_mac(key, kid, submission_id, issued)}"
        return {SUBMISSION_HEADER: submission_id, TOKEN_HEADER: token}

    def credentials(self, headers: Mapping[str, str]) -> Credentials:
        """The claimed submission and token, from headers in any letter case."""
        lowered = {name.lower(): value for name, value in headers.items()}
        submission_id = lowered.get(SUBMISSION_HEADER.lower(), "")
        token = lowered.get(TOKEN_HEADER.lower(), "")
        if not submission_id or not token:
            raise MissingCredentials("missing webhook token")
        return Credentials(submission_id, token)

    def authenticate(self, headers: Mapping[str, str]) -> Credentials:
        """The delivery's credentials, verified; raises `MissingCredentials` or `InvalidToken`."""
        credentials = self.credentials(headers)
        self.verify(credentials)
        return credentials

    def verify(self, credentials: Credentials) -> None:
        """Raises `InvalidToken` unless the token is ours, for this submission, and not expired."""
        if self.max_age is None:
            raise RuntimeError("this WebhookAuth only signs: it was built without max_age")
        match = _TOKEN_PATTERN.fullmatch(credentials.token)
        if match is None or not _SUBMISSION_PATTERN.fullmatch(credentials.submission_id):
            raise InvalidToken("malformed webhook token")
        kid, issued_text, mac = match.groups()
        issued = int(issued_text)
        now = self.clock().timestamp()
        # Checked before the MAC: an expired token costs no key lookup, and says nothing of its MAC.
        if issued > now + CLOCK_SKEW.total_seconds():
            raise InvalidToken("webhook token issued in the future")
        if issued < now - (self.max_age + CLOCK_SKEW).total_seconds():
            raise InvalidToken("webhook token expired")
        key = self._key(kid)
        if key is None:
            raise InvalidToken("webhook token of an unknown key")
        expected = _mac(key, kid, credentials.submission_id, issued)
        if not hmac.compare_digest(expected.encode(), mac.encode()):
            raise InvalidToken("invalid webhook token")

    def signs(self, token: str) -> bool:
        """Whether `token` has this scheme's form and names one of these keys (valid or not)."""
        match = _TOKEN_PATTERN.fullmatch(token)
        return match is not None and any(key_id(key) == match.group(1) for key in self.keys())

    def _key(self, kid: str) -> bytes | None:
        for refresh in (False, True):
            for key in self.keys(refresh=refresh):
                if key_id(key) == kid:
                    return key
        return None


def _mac(key: bytes, kid: str, submission_id: str, issued: int) -> str:
    message = json.dumps(["xasync-webhook", VERSION, kid, submission_id, issued], separators=(",", ":"))
    return hmac.new(key, message.encode("ascii"), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class StaticKeys:
    """Fixed keys, current first (tests, benchmarks, the local event files)."""

    keys: tuple[bytes, ...]

    def __call__(self, *, refresh: bool = False) -> Sequence[bytes]:
        return self.keys


def static_keys(*keys: bytes | str) -> StaticKeys:
    return StaticKeys(tuple(key.encode() if isinstance(key, str) else key for key in keys))
