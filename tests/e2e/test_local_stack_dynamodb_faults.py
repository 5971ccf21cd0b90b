"""The embedded stack with `dynamodb_faults`: the functions reach DynamoDB through the fault proxy, the stack
itself does not, and nothing of it is left in the environment after the stack stopped."""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

from xasync import cli, local_stack
from xasync.dynamodb_faults import APPLIED_THEN_500, DynamoFaults
from xasync.sample_images import png_bytes
from xasync.servers import wait_for
from ximilar_async.values import identity

pytestmark = pytest.mark.slow


def test_the_functions_reach_dynamodb_through_the_proxy_and_their_images_end_done(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A user's own endpoint of a service is not the local stack's: the functions must not take it.
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    monkeypatch.delenv("AWS_ENDPOINT_URL_DYNAMODB", raising=False)
    uploads = ["incoming/faults-1.png", "incoming/faults-2.png"]
    with local_stack.running(
        parameters={"LogLevel": "WARNING"}, sweep_every=0.5, retry_delay=1, dynamodb_faults=DynamoFaults()
    ) as local:
        proxy = local.dynamodb_faults
        assert proxy is not None
        assert {environment["AWS_ENDPOINT_URL_DYNAMODB"] for environment in local.environments.values()} == {proxy.url}
        assert local.client("dynamodb").meta.endpoint_url == local.aws_endpoint
        images_table, bucket = local.outputs["ImagesTableName"], local.outputs["InputBucketName"]
        # The next writes of the images table are applied, then answered 500: each retry meets its own write.
        proxy.fail_next_write("applied-then-500", table=images_table, times=len(uploads))
        for key in uploads:
            local.client("s3").put_object(Bucket=bucket, Key=key, Body=png_bytes(16, 12))

        def status(key: str) -> str | None:
            answer = local.client("dynamodb").get_item(
                TableName=images_table, Key={"image_uri": {"S": identity.image_uri(bucket, key)}}, ConsistentRead=True
            )
            return answer["Item"]["status"]["S"] if "Item" in answer else None

        wait_for(lambda: all(status(key) == "DONE" for key in uploads), timeout=60, interval=0.25, what="DONE")
        wait_for(lambda: proxy.operations["Query"], timeout=10, what="a sweeper run's query of the due index")

        assert proxy.counts == {APPLIED_THEN_500: len(uploads)}
        assert not local.invocations.errors

    assert os.environ.get("AWS_ENDPOINT_URL_DYNAMODB") is None
    assert os.environ["AWS_ENDPOINT_URL_S3"] == "http://127.0.0.1:9"


def test_xasync_up_refuses_a_faults_spec_it_cannot_read() -> None:
    result = CliRunner().invoke(cli.main, ["up", "--dynamodb-faults", "throttel=0.1"])

    assert result.exit_code == 2
    assert "unknown DynamoDB fault 'throttel'" in result.output
