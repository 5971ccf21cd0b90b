"""Where the CLI's commands act: the local stack of `xasync up` (its endpoint), or a deployed stack (real AWS)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import boto3
from botocore.config import Config

from xasync import local_stack, ui
from ximilar_async import runtime
from ximilar_async.adapters.dynamodb import Storage
from ximilar_async.adapters.dynamodb.models import bind_tables
from ximilar_async.services.sweeper import Sweeper
from ximilar_async.settings import SweeperSettings


@dataclass
class Target:
    """Where the commands act: the local stack (its endpoint) or a deployed one (real AWS)."""

    outputs: dict[str, str]
    index_shards: int
    endpoint: str | None = None
    environments: dict[str, dict[str, str]] = field(default_factory=dict)
    stack_name: str | None = None  # a deployed stack

    def client(self, service: str, **options: Any) -> Any:
        factory: Any = boto3.client
        return factory(service, endpoint_url=self.endpoint, **options) if self.endpoint else factory(service, **options)

    def page_source(self) -> ui.PageSource:
        """What `xasync ui` reads: the tables, and S3 with the user's own credentials for presigned GETs."""
        # SigV4: what every region and SSE-KMS objects accept (botocore may presign with SigV2 otherwise).
        s3 = self.client("s3", config=Config(signature_version="s3v4"))
        return ui.PageSource(self.storage().queries, s3, self.outputs["InputBucketName"])

    def storage(self) -> Storage:
        tables = bind_tables(self.outputs["ImagesTableName"], self.outputs["RequestsTableName"], host=self.endpoint)
        # Retention only matters to writes of requests; the CLI's writes are control items with their own.
        return Storage.of(tables, self.index_shards, timedelta(days=1))

    def environment(self, function: str) -> dict[str, str]:
        """A function's environment: the local stack's, or the deployed function's configuration."""
        if function not in self.environments and self.stack_name:
            resource = self.client("cloudformation").describe_stack_resource(
                StackName=self.stack_name, LogicalResourceId=function
            )["StackResourceDetail"]
            configuration = self.client("lambda").get_function_configuration(
                FunctionName=resource["PhysicalResourceId"]
            )
            self.environments[function] = dict(configuration.get("Environment", {}).get("Variables", {}))
        return self.environments[function]

    @contextlib.contextmanager
    def services(self) -> Iterator[Sweeper]:
        """The sweeper and its collaborators (submitter, recorder, Ximilar client) as `runtime` builds them,
        with the sweeper function's settings, run here with the caller's credentials (or the local stack's)."""
        environment = self.environment("SweeperFunction")
        saved = dict(os.environ)
        os.environ.update(environment)  # the factories' boto3 and pynamodb clients read the endpoint from it
        try:
            yield runtime.sweeper(SweeperSettings.from_env(environment))
        finally:
            os.environ.clear()
            os.environ.update(saved)


def target_for(stack_name: str | None) -> Target:
    if stack_name:
        stack = boto3.client("cloudformation").describe_stacks(StackName=stack_name)["Stacks"][0]
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
        parameters = {p["ParameterKey"]: p["ParameterValue"] for p in stack.get("Parameters", [])}
        return Target(outputs, int(parameters.get("IndexShards", 8)), stack_name=stack_name)
    state = local_stack.read_state()
    local_stack.use_local_credentials()
    shards = int(state["environments"]["SweeperFunction"]["INDEX_SHARDS"])
    return Target(state["outputs"], shards, state["aws_endpoint"], state["environments"])
