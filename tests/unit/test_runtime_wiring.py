"""The composition root: each collaborator is built once and handed to every service that uses it."""

from __future__ import annotations

import pytest

from tests.unit.conftest import SETTINGS_ENVIRONMENT
from ximilar_async import runtime
from ximilar_async.settings import OutputsSettings, SweeperSettings


@pytest.fixture(autouse=True)
def _lambda_region(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


def test_the_sweeper_is_given_the_repository_ximilar_client_and_spend_guard_its_submitter_has() -> None:
    sweeper = runtime.sweeper(SweeperSettings.from_env(SETTINGS_ENVIRONMENT))

    assert sweeper.guard is not None and sweeper.guard is sweeper.submitter.guard
    assert sweeper.repository is sweeper.submitter.repository is sweeper.recorder.repository
    assert sweeper.ximilar is sweeper.submitter.ximilar


def test_the_copier_is_given_the_repository_its_submitter_has() -> None:
    environment = {**SETTINGS_ENVIRONMENT, "REGENERATE_OUTPUTS_FOR": "", "OUTPUTS_MAX_RECEIVE_COUNT": "5"}
    copier = runtime.output_copier(OutputsSettings.from_env(environment))

    assert copier.submitter is not None
    assert copier.repository is copier.submitter.repository
