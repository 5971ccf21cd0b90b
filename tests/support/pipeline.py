"""The pipeline as deployed, in this process: submit and webhook handlers cold-started with the
template's environment, the webhook served by a local HTTP API, moto server and the emulator behind."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from types import ModuleType
from typing import Any

import pytest
import requests

from tests.conftest import RunningEmulator
from tests.support.aws import AwsStack, time_shifted
from xasync.http_api import LocalHttpApi, Route
from xasync.lambda_runtime import LocalLambdaContext, load_function
from xasync.sample_images import png_bytes
from xasync.servers import wait_for
from xasync.template import functions
from ximilar_async.adapters.dynamodb import Storage
from ximilar_async.services.sweeper import Sweeper
from ximilar_async.values import identity
from ximilar_async.values.sweeps import SweepOutcome

ROUTES = "incoming/=upscaler:upscale_2x;incoming/flows/=flows:my-flow"


@dataclass
class Pipeline:
    stack: AwsStack
    emulator: RunningEmulator
    submit: ModuleType
    webhook: ModuleType
    sweeper: ModuleType
    api: LocalHttpApi
    parameters: dict[str, str]

    @property
    def webhook_url(self) -> str:
        return f"{self.api.url}/webhook"

    def upload(self, *keys_: str, body: bytes | None = None) -> None:
        for key in keys_:
            self.stack.put(key, png_bytes(12, 8) if body is None else body)
        records = self.stack.receive_uploads(len(keys_))
        self.submit.lambda_handler({"Records": records}, LocalLambdaContext())

    @property
    def storage(self) -> Storage:
        """The pipeline's storage on the test's own tables (not a function's clients): the test's
        reads are nobody's IAM to grant."""
        settings = self.sweeper.sweeper.settings
        return Storage.of(self.stack.tables, settings.index_shards, timedelta(days=settings.request_retention_days))

    def image(self, key: str) -> Any:
        """The image item as the pipeline reports it (`AsReported`)."""
        uri = identity.image_uri(self.stack.bucket, key)
        reported = self.storage.queries.images_as_known([uri])[uri]
        item = self.stack.tables.images.get(uri)  # read after: finished meanwhile, it speaks for itself
        if item.status != "SUBMITTING":
            return AsReported(item, item.status, item.request_id)
        return AsReported(item, reported.status.value, reported.request_id)

    def wait_status(self, key: str, *statuses: str) -> Any:
        return wait_for(
            lambda: (item := self.image(key)).status in statuses and item, timeout=15, what=f"{key} in {statuses}"
        )

    def details(self, request_id: str) -> dict[str, Any]:
        answer = requests.get(
            f"{self.emulator.url}/account/v2/request/{request_id}",
            headers={"Authorization": f"Token {self.emulator.token}"},
            timeout=5,
        )
        return dict(answer.json())

    def done_details(self, request_id: str) -> dict[str, Any]:
        return wait_for(lambda: (d := self.details(request_id))["status"] == "DONE" and d, what="DONE at Ximilar")

    def post(self, payload: Any, headers: dict[str, str]) -> requests.Response:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return requests.post(self.webhook_url, data=data, headers=headers, timeout=10)

    def sweeper_at(self, ahead: timedelta) -> Sweeper:
        """The sweeper as the handler builds it, living `ahead` in the future (instead of waiting)."""
        sweeper: Sweeper = time_shifted(self.sweeper.sweeper, ahead)
        return sweeper

    def sweep(self, ahead: timedelta, remaining_millis: Callable[[], int] = lambda: 60_000) -> SweepOutcome:
        return self.sweeper_at(ahead).sweep(remaining_millis)

    def cold_start(self, logical_id: str) -> ModuleType:
        """The function imported afresh (empty caches: the secrets are read again), as a new cold start."""
        environment = self.stack.environment(logical_id, **self.parameters)
        if logical_id != "WebhookFunction":
            environment["WEBHOOK_URL"] = self.webhook_url
        return load_function(self.stack.template, logical_id, environment)

    def signed_headers(self, submission_id: str) -> dict[str, str]:
        """The headers submit gave Ximilar for this request (a token made now)."""
        return {"Content-Type": "application/json", **self.stack.auth.headers(submission_id)}


class AsReported:
    """An image item, with the status and Ximilar id the pipeline reports for it (what `xasync results`
    shows): an image in flight stays SUBMITTING with no Ximilar id in its own item from claim to result,
    and its request item says CREATED or PROCESSING and holds the id (`Storage.images_as_known`)."""

    def __init__(self, item: Any, status: str, request_id: str | None) -> None:
        self.item, self.status, self.request_id = item, status, request_id

    def __getattr__(self, name: str) -> Any:
        return getattr(self.item, name)


def as_kept(record: dict[str, Any], image_uri: str) -> dict[str, Any]:
    """A record as the pipeline keeps it: its presigned `_url` replaced by the image's URI (no credential at rest)."""
    return {**record, "_url": image_uri} if "_url" in record else record


def start_pipeline(
    monkeypatch: pytest.MonkeyPatch, stack: AwsStack, emulator: RunningEmulator, **parameters: str
) -> Iterator[Pipeline]:
    parameters = {
        "XimilarApiUrl": emulator.url,
        "XimilarTokenParameterName": stack.token_parameter,
        "Routes": ROUTES,
        **parameters,
    }
    webhook_environment = stack.environment("WebhookFunction", **parameters)
    for name, value in webhook_environment.items():
        monkeypatch.setenv(name, value)
    webhook = load_function(stack.template, "WebhookFunction", webhook_environment)
    (event,) = functions(stack.template)["WebhookFunction"].events.values()
    route = Route(
        event["Properties"]["Method"], event["Properties"]["Path"], webhook.lambda_handler, LocalLambdaContext
    )
    api = LocalHttpApi([route]).start()
    try:
        submit_environment = {**stack.environment("SubmitFunction", **parameters), "WEBHOOK_URL": f"{api.url}/webhook"}
        for name, value in submit_environment.items():
            monkeypatch.setenv(name, value)
        submit = load_function(stack.template, "SubmitFunction", submit_environment)
        sweeper_environment = {
            **stack.environment("SweeperFunction", **parameters),
            "WEBHOOK_URL": f"{api.url}/webhook",
        }
        for name, value in sweeper_environment.items():
            monkeypatch.setenv(name, value)
        sweeper = load_function(stack.template, "SweeperFunction", sweeper_environment)
        yield Pipeline(stack, emulator, submit, webhook, sweeper, api, parameters)
    finally:
        api.stop()
