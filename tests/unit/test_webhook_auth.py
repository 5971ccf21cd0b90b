"""The webhook token scheme and the signing keys' cache, without AWS: a clock and fake key versions."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from ximilar_async.adapters.secrets import KEY_REFRESH_INTERVAL, SECRET_MAX_AGE, SecretSigningKeys
from ximilar_async.services.webhook_auth import TOKEN_HEADER, Credentials, InvalidToken, WebhookAuth, static_keys

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def auth_at(moment: datetime, *keys: str) -> WebhookAuth:
    return WebhookAuth(static_keys(*keys), DAY, clock=lambda: moment)


def test_fields_that_concatenate_alike_make_different_tokens() -> None:
    # ("1", 1795946423) and ("17", 95946423) join to the same text; the JSON message keeps them apart.
    first = auth_at(datetime.fromtimestamp(1795946423, UTC), "key").headers("1")[TOKEN_HEADER]
    second = auth_at(datetime.fromtimestamp(95946423, UTC), "key").headers("17")[TOKEN_HEADER]
    assert first.rsplit(".", 1)[1] != second.rsplit(".", 1)[1]
    with pytest.raises(InvalidToken):
        auth_at(datetime.fromtimestamp(1795946423, UTC), "key").verify(Credentials("17", first))


def test_a_token_lives_max_age_plus_the_skew_then_expires() -> None:
    token = auth_at(NOW, "key").headers("submission")[TOKEN_HEADER]
    auth_at(NOW + DAY + timedelta(minutes=4), "key").verify(Credentials("submission", token))
    with pytest.raises(InvalidToken, match="expired"):
        auth_at(NOW + DAY + timedelta(minutes=6), "key").verify(Credentials("submission", token))


def test_the_previous_key_verifies_and_the_current_one_signs() -> None:
    old_token = auth_at(NOW, "old").headers("s")[TOKEN_HEADER]
    rotated = auth_at(NOW, "new", "old")
    rotated.verify(Credentials("s", old_token))
    assert rotated.headers("s")[TOKEN_HEADER].split(".")[1] != old_token.split(".")[1]
    with pytest.raises(InvalidToken, match="unknown key"):
        auth_at(NOW, "newer", "new").verify(Credentials("s", old_token))


@dataclass
class FakeVersions:
    current: bytes = b"current"
    previous: bytes | None = None
    reads: list[tuple[str, bool]] = field(default_factory=list)

    def signing_key(self, secret_arn: str, *, force_fetch: bool = False) -> bytes:
        self.reads.append(("current", force_fetch))
        return self.current

    def previous_signing_key(self, secret_arn: str, *, force_fetch: bool = False) -> bytes | None:
        self.reads.append(("previous", force_fetch))
        return self.previous


@dataclass
class FakeMonotonic:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def test_unknown_key_ids_make_the_keys_be_read_again_at_most_every_interval() -> None:
    versions, clock = FakeVersions(), FakeMonotonic()
    auth = WebhookAuth(SecretSigningKeys(versions, "arn", clock), DAY, clock=lambda: NOW)
    forged = auth_at(NOW, "not ours").headers("s")[TOKEN_HEADER]
    for _ in range(50):
        with pytest.raises(InvalidToken):
            auth.verify(Credentials("s", forged))
    assert [read for read in versions.reads if read[1]] == [("current", True), ("previous", True)]
    clock.now += KEY_REFRESH_INTERVAL
    with pytest.raises(InvalidToken):
        auth.verify(Credentials("s", forged))
    assert sum(forced for _, forced in versions.reads) == 4


def test_a_missing_previous_version_is_remembered_for_the_cache_age() -> None:
    versions, clock = FakeVersions(), FakeMonotonic()
    keys = SecretSigningKeys(versions, "arn", clock)
    assert [keys() for _ in range(10)] == [[b"current"]] * 10
    assert versions.reads.count(("previous", False)) == 1
    versions.previous = b"old"
    clock.now += SECRET_MAX_AGE
    assert keys() == [b"current", b"old"]
