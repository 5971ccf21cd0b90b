"""The composition root: each collaborator is built once and handed to every service that uses it."""

from __future__ import annotations

import pytest

from tests.unit.conftest import SETTINGS_ENVIRONMENT
from ximilar_async import runtime
from ximilar_async.settings import OutputsSettings, SweeperSettings


def one_object(*parts: object) -> bool:
    """The same object, seen through different ports (which mypy would call unrelated types)."""
    return len({id(part) for part in parts}) == 1


@pytest.fixture(autouse=True)
def _lambda_region(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


def test_the_sweeper_is_given_the_stores_ximilar_client_and_spend_guard_its_submitter_has() -> None:
    sweeper = runtime.sweeper(SweeperSettings.from_env(SETTINGS_ENVIRONMENT))

    assert sweeper.guard is not None and sweeper.guard is sweeper.submitter.guard
    assert one_object(sweeper.images, sweeper.recorder.images, sweeper.submitter.images)
    assert one_object(sweeper.requests, sweeper.recorder.requests, sweeper.submitter.requests)
    assert one_object(sweeper.guard and sweeper.guard.ledger, sweeper.sweep_log)  # the control items: one store
    assert sweeper.ximilar is sweeper.submitter.ximilar


def test_the_copier_is_given_the_image_store_its_submitter_has() -> None:
    environment = {**SETTINGS_ENVIRONMENT, "REGENERATE_OUTPUTS_FOR": "", "OUTPUTS_MAX_RECEIVE_COUNT": "5"}
    copier = runtime.output_copier(OutputsSettings.from_env(environment))

    assert copier.submitter is not None
    assert one_object(copier.images, copier.submitter.images)
