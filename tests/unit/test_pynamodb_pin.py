"""pynamodb as `dal.models.bind_tables` uses it: what the pinned version does, so that an upgrade that
changes it fails here rather than in a function's cold start or under load.

pynamodb 6.1 takes neither a botocore session nor a client through its settings or a model's `Meta`
(region, host, timeouts, retries, pool size, extra headers and static credentials only), and makes one
client per model from a session of its own per thread. `bind_tables` writes two of its private attributes
instead: `Connection._local.session` (this thread's session: ours, with the layer's trimmed models and
the deferred credentials) and `Connection._client` (the first model's client, for the other two).
"""

from __future__ import annotations

import importlib.metadata
import re
import threading
from pathlib import Path
from typing import Any

import botocore.session
import pytest

from ximilar_async import coldstart
from ximilar_async.adapters.dynamodb.models import CONNECTIONS, Tables, bind_tables

REQUIREMENTS = Path(__file__).parents[2] / "layers" / "shared" / "requirements.txt"


def clients(tables: Tables) -> list[Any]:
    return [model._get_connection().connection.client for model in (tables.images, tables.requests, tables.control)]


@pytest.fixture
def session(monkeypatch: pytest.MonkeyPatch) -> botocore.session.Session:
    """The functions' session, as `runtime.storage` gives it to `bind_tables`."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return coldstart.aws_sessions()[1]


def test_the_installed_pynamodb_is_the_version_the_layer_pins() -> None:
    pinned = re.search(r"^pynamodb==(\S+)$", REQUIREMENTS.read_text(), re.MULTILINE)
    assert pinned is not None, "layers/shared/requirements.txt pins pynamodb"
    assert importlib.metadata.version("pynamodb") == pinned[1], "check bind_tables against the new pynamodb"


def test_the_three_models_share_one_client_made_from_the_given_session(session: botocore.session.Session) -> None:
    images, requests, control = clients(bind_tables("images", "requests", session=session))

    assert images is requests is control
    # Only the given session's credentials are deferred (`coldstart.DeferredCredentials`), and only its
    # loader reads the layer's trimmed models: a session pynamodb made would give neither.
    assert images._request_signer._credentials.method == "deferred"
    assert set(images.meta.service_model.operation_names) < set(
        botocore.session.get_session().get_service_model("dynamodb").operation_names
    )
    assert images.meta.config.max_pool_connections == CONNECTIONS  # the Meta option reaches the shared client


def test_another_thread_gets_the_same_client_not_one_of_its_own(session: botocore.session.Session) -> None:
    tables = bind_tables("images", "requests", session=session)
    made_here = clients(tables)[0]
    seen: list[Any] = []

    # pynamodb's session is per thread: a thread with none would make its own, and a client of it
    thread = threading.Thread(target=lambda: seen.extend(clients(tables)))
    thread.start()
    thread.join()

    assert len(seen) == 3 and all(client is made_here for client in seen)
