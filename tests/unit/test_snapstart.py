"""SnapStart: environments restored from one snapshot do not share what the cold start left in memory."""

from __future__ import annotations

import random

import pytest

from ximilar_async import snapstart
from ximilar_async.adapters.secrets import SecretSources


def test_generators_made_at_cold_start_are_seeded_again_after_a_restore() -> None:
    saved = random.getstate()
    try:
        made_at_cold_start = random.Random(7)
        snapstart.reseed(made_at_cold_start)
        in_the_snapshot = made_at_cold_start.getstate(), random.getstate()
        snapstart.restored()
        assert made_at_cold_start.getstate() != in_the_snapshot[0]
        assert random.getstate() != in_the_snapshot[1]  # botocore's retry jitter, the schedule's
    finally:
        random.setstate(saved)


def test_cached_secrets_are_forgotten_after_a_restore(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    sources = SecretSources.create()  # clients only: nothing is read
    sources.ssm.store[("token", "plain")] = object()  # type: ignore[assignment]
    sources.secrets.store[("key", "plain")] = object()  # type: ignore[assignment]
    snapstart.restored()
    assert not sources.ssm.store
    assert not sources.secrets.store
