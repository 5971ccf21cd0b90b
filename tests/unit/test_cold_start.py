"""The end of a cold start: what it built is frozen out of the collector's way, and collection is on."""

from __future__ import annotations

import gc
from typing import Any

import botocore.credentials
import pytest

from ximilar_async import coldstart


def test_a_cold_start_ends_with_what_it_built_frozen_and_collection_on() -> None:
    gc.disable()  # as a handler does before its imports
    try:
        frozen_before = gc.get_freeze_count()
        with coldstart.cold_start():
            assert not gc.isenabled()
            built = [[n] for n in range(1000)]
        assert gc.isenabled()
        assert gc.get_freeze_count() >= frozen_before + len(built)
    finally:
        gc.unfreeze()
        gc.enable()


def test_a_sessions_credentials_are_fetched_on_a_clients_first_call_not_when_it_is_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given credentials in the environment, and a count of the chain's lookups
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    lookups: list[str] = []
    real = botocore.credentials.create_credential_resolver

    def counted(session: Any) -> Any:
        lookups.append("chain")
        return real(session)

    monkeypatch.setattr(coldstart, "create_credential_resolver", counted)

    # When a client of a new session is built (the cold start), then signs its first call. A new one: the
    # process's own (cached) session may have asked the chain already, for an earlier test's calls.
    client = coldstart.aws_sessions.__wrapped__()[0].client("sqs")
    built = list(lookups)
    frozen = client._request_signer._credentials.get_frozen_credentials()

    # Then the chain is asked on the first call only, and gives the environment's credentials
    assert (built, lookups) == ([], ["chain"])
    assert (frozen.access_key, frozen.secret_key) == ("AKIDEXAMPLE", "secret")
