"""The DynamoDB fault proxy (devtools/xasync/dynamodb_faults.py) in front of moto server, over real HTTP.

boto3 and the project's pynamodb models point at the proxy, with botocore's standard retries; what
upstream holds is read from moto directly. Lags are timed by a fake clock the tests move.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError

from tests.support.aws import create_table_from_template
from xasync.dynamodb_faults import (
    APPLIED_THEN_500,
    DROPPED_AFTER_WRITE,
    HIDDEN_BY_INDEX_LAG,
    STALE_READ,
    THROTTLED,
    DynamoFaultProxy,
    DynamoFaults,
    dynamodb_fault_proxy,
)
from ximilar_async.adapters.dynamodb.models import bind_tables

THROTTLING_ERRORS = {"ProvisionedThroughputExceededException", "ThrottlingException"}
NEW_IMAGE = "attribute_not_exists(image_uri)"


@dataclass
class FakeClock:
    """The proxy's clock, moved by the test: lags pass without waiting."""

    now: float = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def moto(aws_endpoint: str) -> Any:
    """A client of moto itself: what upstream holds, past the proxy."""
    return boto3.client("dynamodb", endpoint_url=aws_endpoint)


@pytest.fixture
def images_table(moto: Any, template: dict[str, Any]) -> str:
    name = f"images-{uuid.uuid4().hex[:8]}"
    create_table_from_template(moto, template, "ImagesTable", name)
    return name


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def through(proxy: DynamoFaultProxy, attempts: int = 4, connections: int = 10) -> Any:
    """A boto3 DynamoDB client of the proxy, retrying as the functions' clients do (standard mode)."""
    retries: Any = {"mode": "standard", "total_max_attempts": attempts}
    config = Config(retries=retries, max_pool_connections=connections)
    return boto3.client("dynamodb", endpoint_url=proxy.url, config=config)


def image(uri: str, **attributes: str) -> dict[str, Any]:
    return {"image_uri": {"S": uri}, **{name: {"S": value} for name, value in attributes.items()}}


def a_uri() -> str:
    return f"s3://input/incoming/{uuid.uuid4().hex}.jpg"


def stored(moto: Any, table: str, uri: str) -> dict[str, Any] | None:
    answer = moto.get_item(TableName=table, Key={"image_uri": {"S": uri}}, ConsistentRead=True)
    found: dict[str, Any] | None = answer.get("Item")
    return found


def test_a_put_applied_then_answered_500_is_retried_and_the_retry_meets_the_applied_write(
    aws_endpoint: str, moto: Any, images_table: str
) -> None:
    first = image(a_uri(), status="SUBMITTING", attempt="first")
    with dynamodb_fault_proxy(aws_endpoint, DynamoFaults()) as proxy:
        proxy.fail_next_write("applied-then-500", operation="PutItem", table=images_table)
        with pytest.raises(ClientError) as raised:
            through(proxy).put_item(TableName=images_table, Item=first, ConditionExpression=NEW_IMAGE)

    assert raised.value.response["Error"]["Code"] == "ConditionalCheckFailedException"
    assert raised.value.response["ResponseMetadata"]["RetryAttempts"] == 1
    assert stored(moto, images_table, first["image_uri"]["S"]) == first  # the first attempt's write
    assert proxy.counts == Counter({APPLIED_THEN_500: 1})
    assert proxy.operations == Counter({"PutItem": 2})


def test_a_put_applied_then_dropped_is_retried_and_the_retry_meets_the_applied_write(
    aws_endpoint: str, moto: Any, images_table: str
) -> None:
    first = image(a_uri(), status="SUBMITTING", attempt="first")
    with dynamodb_fault_proxy(aws_endpoint, DynamoFaults()) as proxy:
        proxy.fail_next_write("dropped-after-write", operation="PutItem", table=images_table)
        with pytest.raises(ClientError) as raised:
            through(proxy).put_item(TableName=images_table, Item=first, ConditionExpression=NEW_IMAGE)

    assert raised.value.response["Error"]["Code"] == "ConditionalCheckFailedException"
    assert raised.value.response["ResponseMetadata"]["RetryAttempts"] == 1
    assert stored(moto, images_table, first["image_uri"]["S"]) == first
    assert proxy.counts == Counter({DROPPED_AFTER_WRITE: 1})


def test_with_one_attempt_the_client_sees_dynamodbs_500_and_a_closed_connection(
    aws_endpoint: str, moto: Any, images_table: str
) -> None:
    answered_500, dropped = image(a_uri(), status="DONE"), image(a_uri(), status="DONE")
    with dynamodb_fault_proxy(aws_endpoint, DynamoFaults()) as proxy:
        client = through(proxy, attempts=1)
        proxy.fail_next_write("applied-then-500")
        with pytest.raises(ClientError) as raised:
            client.put_item(TableName=images_table, Item=answered_500)
        proxy.fail_next_write("dropped-after-write")
        with pytest.raises(ConnectionClosedError):
            client.put_item(TableName=images_table, Item=dropped)
        client.put_item(TableName=images_table, Item=image(a_uri()))  # the orders are used up

    assert raised.value.response["Error"] == {"Code": "InternalServerError", "Message": "Internal server error"}
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert stored(moto, images_table, answered_500["image_uri"]["S"]) == answered_500
    assert stored(moto, images_table, dropped["image_uri"]["S"]) == dropped
    assert proxy.counts == Counter({APPLIED_THEN_500: 1, DROPPED_AFTER_WRITE: 1})


def test_a_targeted_fault_waits_for_the_write_it_matches(aws_endpoint: str, moto: Any, images_table: str) -> None:
    other_table = f"requests-{uuid.uuid4().hex[:8]}"
    done, submitting = image(a_uri(), status="DONE"), image(a_uri(), status="SUBMITTING")
    with dynamodb_fault_proxy(aws_endpoint, DynamoFaults()) as proxy:
        client = through(proxy, attempts=1)
        proxy.fail_next_write(
            "applied-then-500",
            operation="UpdateItem",
            table=images_table,
            matches=lambda body: body["ExpressionAttributeValues"][":status"] == {"S": "DONE"},
            times=2,
        )
        client.put_item(TableName=images_table, Item=submitting)  # another operation
        with pytest.raises(ClientError, match="ResourceNotFoundException"):  # another table
            client.update_item(
                TableName=other_table,
                Key={"image_uri": done["image_uri"]},
                UpdateExpression="SET #status = :status",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={":status": {"S": "DONE"}},
            )
        update = {
            "TableName": images_table,
            "Key": {"image_uri": submitting["image_uri"]},
            "UpdateExpression": "SET #status = :status",
            "ExpressionAttributeNames": {"#status": "status"},
        }
        client.update_item(**update, ExpressionAttributeValues={":status": {"S": "CREATED"}})  # no match
        for _ in range(2):
            with pytest.raises(ClientError, match="InternalServerError"):
                client.update_item(**update, ExpressionAttributeValues={":status": {"S": "DONE"}})
        client.update_item(**update, ExpressionAttributeValues={":status": {"S": "DONE"}})  # used up

    assert proxy.counts == Counter({APPLIED_THEN_500: 2})
    assert stored(moto, images_table, submitting["image_uri"]["S"]) == {**submitting, "status": {"S": "DONE"}}


def test_throttled_calls_are_retried_and_never_reach_upstream(aws_endpoint: str, moto: Any, images_table: str) -> None:
    item = image(a_uri(), status="SUBMITTING")
    codes: Counter[str] = Counter()
    # Seed 2: both of DynamoDB's throttling errors within two calls (each retry waits up to a second).
    with dynamodb_fault_proxy(aws_endpoint, DynamoFaults(throttle_rate=1.0, seed=2)) as proxy:
        client = through(proxy, attempts=2)
        while len(codes) < len(THROTTLING_ERRORS) and codes.total() < 20:
            with pytest.raises(ClientError) as raised:
                client.put_item(TableName=images_table, Item=item)
            codes[raised.value.response["Error"]["Code"]] += 1
            assert raised.value.response["ResponseMetadata"]["RetryAttempts"] == 1  # retried, as throttling

    assert set(codes) == THROTTLING_ERRORS
    assert proxy.counts == Counter({THROTTLED: 2 * codes.total()})
    assert stored(moto, images_table, item["image_uri"]["S"]) is None


def test_an_index_query_misses_a_fresh_write_until_the_lag_passed_and_table_reads_see_it(
    aws_endpoint: str, images_table: str, clock: FakeClock
) -> None:
    request_id = uuid.uuid4().hex
    older = image("s3://input/incoming/a.jpg", request_id=request_id, status="DONE")
    fresh = image("s3://input/incoming/b.jpg", request_id=request_id, status="DONE")
    with dynamodb_fault_proxy(aws_endpoint, DynamoFaults(index_lag_seconds=30), clock=clock) as proxy:
        client = through(proxy)
        tables = bind_tables(images_table, "requests-not-used", host=proxy.url)

        def by_request() -> list[str]:
            return [item.image_uri for item in tables.images.by_request.query(request_id)]

        client.put_item(TableName=images_table, Item=older)
        clock.advance(31)
        client.put_item(TableName=images_table, Item=fresh)

        assert by_request() == ["s3://input/incoming/a.jpg"]
        answer = client.query(
            TableName=images_table,
            IndexName="by_request",
            KeyConditionExpression="request_id = :id",
            ExpressionAttributeValues={":id": {"S": request_id}},
        )
        assert (answer["Count"], answer["ScannedCount"], answer["ResponseMetadata"]["RetryAttempts"]) == (1, 1, 0)
        assert client.get_item(TableName=images_table, Key={"image_uri": fresh["image_uri"]})["Item"] == fresh
        on_table = client.query(
            TableName=images_table,
            KeyConditionExpression="image_uri = :uri",
            ExpressionAttributeValues={":uri": fresh["image_uri"]},
        )
        assert on_table["Items"] == [fresh]

        clock.advance(30)
        assert by_request() == ["s3://input/incoming/a.jpg", "s3://input/incoming/b.jpg"]

    assert proxy.counts == Counter({HIDDEN_BY_INDEX_LAG: 2})


def test_eventually_consistent_reads_answer_the_item_before_writes_within_the_lag(
    aws_endpoint: str, images_table: str, clock: FakeClock
) -> None:
    uri, created_uri = a_uri(), a_uri()
    key, created_key = {"image_uri": {"S": uri}}, {"image_uri": {"S": created_uri}}
    before, after = image(uri, status="CREATED"), image(uri, status="DONE")
    created = image(created_uri, status="SUBMITTING")
    with dynamodb_fault_proxy(aws_endpoint, DynamoFaults(consistency_lag_seconds=2), clock=clock) as proxy:
        client = through(proxy)

        def batch_get(consistent: bool) -> list[dict[str, Any]]:
            wanted = {"Keys": [key, created_key], "ConsistentRead": consistent}
            answer = client.batch_get_item(RequestItems={images_table: wanted})
            assert answer["ResponseMetadata"]["RetryAttempts"] == 0  # the changed body's checksum holds
            return sorted(answer["Responses"][images_table], key=lambda item: item["status"]["S"])

        client.put_item(TableName=images_table, Item=before)
        clock.advance(5)
        client.update_item(
            TableName=images_table,
            Key=key,
            UpdateExpression="SET #status = :done",
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues={":done": {"S": "DONE"}},
        )
        client.put_item(TableName=images_table, Item=created)

        eventually = client.get_item(TableName=images_table, Key=key)
        assert eventually["Item"] == before
        assert eventually["ResponseMetadata"]["RetryAttempts"] == 0
        assert client.get_item(TableName=images_table, Key=key, ConsistentRead=True)["Item"] == after
        assert client.get_item(
            TableName=images_table, Key=key, ProjectionExpression="#s", ExpressionAttributeNames={"#s": "status"}
        )["Item"] == {"status": {"S": "CREATED"}}
        assert "Item" not in client.get_item(TableName=images_table, Key=created_key)
        assert client.get_item(TableName=images_table, Key=created_key, ConsistentRead=True)["Item"] == created
        assert batch_get(consistent=False) == [before]
        assert batch_get(consistent=True) == [after, created]
        stale_reads = proxy.counts[STALE_READ]

        clock.advance(2)
        assert client.get_item(TableName=images_table, Key=key)["Item"] == after
        assert client.get_item(TableName=images_table, Key=created_key)["Item"] == created
        assert batch_get(consistent=False) == [after, created]

    assert stale_reads == 5  # two GetItems of the updated item, one of the created one, two keys of a batch
    assert proxy.counts == Counter({STALE_READ: stale_reads})


def test_faults_parse_from_the_cli_form_and_back() -> None:
    faults = DynamoFaults.parse("throttle=0.1,applied-500=0.05,dropped=0.02,index-lag=30,consistency-lag=2,seed=3")

    assert faults == DynamoFaults(
        throttle_rate=0.1,
        applied_then_500_rate=0.05,
        dropped_after_write_rate=0.02,
        index_lag_seconds=30,
        consistency_lag_seconds=2,
        seed=3,
    )
    assert DynamoFaults.parse(faults.spec()) == faults
    assert DynamoFaults.parse(" index-lag-rate = 0.5 ") == DynamoFaults(index_lag_rate=0.5)
    assert DynamoFaults.parse("") == DynamoFaults()
    assert DynamoFaults().spec() == ""


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ("throttel=0.1", "unknown DynamoDB fault 'throttel' \\(known: throttle, applied-500, dropped"),
        ("throttle", "'throttle' is not name=value"),
        ("index-lag=soon", "index-lag='soon': not a number"),
        ("seed=1.5", "seed='1.5': not a whole number"),
        ("throttle=1.5", "throttle_rate must be between 0 and 1"),
        ("applied-500=0.6,dropped=0.6", "add up to more than 1"),
        ("consistency-lag=-1", "consistency_lag_seconds must be a finite number"),
        ("dropped=0.1,dropped=0.2", "dropped is given twice"),
    ],
)
def test_a_faults_spec_that_does_not_parse_says_why(spec: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        DynamoFaults.parse(spec)


def workload(client: Any, template: dict[str, Any], table: str) -> list[Any]:
    """What a data layer does with a table, every answer kept (their metadata and the table's name left out)."""
    create_table_from_template(client, template, "ImagesTable", table)
    uris = [f"s3://input/incoming/{n}.jpg" for n in range(5)]
    answers: list[Any] = []
    for n, uri in enumerate(uris):
        item = image(uri, request_id="request-1", status="CREATED", n=str(n))
        answers.append(client.put_item(TableName=table, Item=item, ConditionExpression=NEW_IMAGE))
    answers.append(
        client.update_item(
            TableName=table,
            Key={"image_uri": {"S": uris[0]}},
            UpdateExpression="SET #status = :done",
            ConditionExpression="#status = :created",
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues={":done": {"S": "DONE"}, ":created": {"S": "CREATED"}},
            ReturnValues="ALL_NEW",
        )
    )
    try:
        client.put_item(TableName=table, Item=image(uris[1]), ConditionExpression=NEW_IMAGE)
    except ClientError as error:
        answers.append(error.response["Error"])
    answers.append(
        client.query(
            TableName=table,
            IndexName="by_request",
            KeyConditionExpression="request_id = :id",
            ExpressionAttributeValues={":id": {"S": "request-1"}},
            Limit=3,
        )
    )
    answers.append(
        client.query(
            TableName=table,
            IndexName="by_request",
            KeyConditionExpression="request_id = :id",
            ExpressionAttributeValues={":id": {"S": "request-1"}},
            Select="COUNT",
        )
    )
    answers.append(
        client.batch_write_item(
            RequestItems={
                table: [
                    {"PutRequest": {"Item": image("s3://input/incoming/batch.jpg", status="SUBMITTING")}},
                    {"DeleteRequest": {"Key": {"image_uri": {"S": uris[4]}}}},
                ]
            }
        )
    )
    answers.append(
        client.transact_write_items(
            TransactItems=[
                {
                    "Update": {
                        "TableName": table,
                        "Key": {"image_uri": {"S": uris[2]}},
                        "UpdateExpression": "SET #status = :failed",
                        "ExpressionAttributeNames": {"#status": "status"},
                        "ExpressionAttributeValues": {":failed": {"S": "FAILED"}},
                    }
                },
                {"Delete": {"TableName": table, "Key": {"image_uri": {"S": uris[3]}}}},
            ]
        )
    )
    batch = client.batch_get_item(
        RequestItems={table: {"Keys": [{"image_uri": {"S": uri}} for uri in [*uris, "s3://input/incoming/batch.jpg"]]}}
    )
    batch["Responses"][table].sort(key=lambda item: item["image_uri"]["S"])
    answers.append(batch)
    answers.append(client.get_item(TableName=table, Key={"image_uri": {"S": uris[0]}}))
    answers.append(client.scan(TableName=table, IndexName="by_request"))
    answers.append(client.delete_item(TableName=table, Key={"image_uri": {"S": uris[0]}}, ReturnValues="ALL_OLD"))
    for answer in answers:
        answer.pop("ResponseMetadata", None)
    normalized: list[Any] = json.loads(json.dumps(answers).replace(table, "<table>"))
    return normalized


def test_with_no_fault_the_proxy_answers_as_moto_does(aws_endpoint: str, moto: Any, template: dict[str, Any]) -> None:
    direct = workload(moto, template, f"images-{uuid.uuid4().hex[:8]}")
    with dynamodb_fault_proxy(aws_endpoint, DynamoFaults()) as proxy:
        proxied = workload(through(proxy, attempts=1), template, f"images-{uuid.uuid4().hex[:8]}")

    assert proxied == direct
    assert proxy.counts == Counter()
    assert proxy.operations["PutItem"] == 6


def test_fifty_clients_at_once_go_through(aws_endpoint: str, moto: Any, images_table: str) -> None:
    uris = [a_uri() for _ in range(200)]
    with dynamodb_fault_proxy(aws_endpoint, DynamoFaults()) as proxy:
        client = through(proxy, attempts=1, connections=50)

        def write_and_read(uri: str) -> dict[str, Any]:
            client.put_item(TableName=images_table, Item=image(uri, status="DONE"))
            found: dict[str, Any] = client.get_item(TableName=images_table, Key={"image_uri": {"S": uri}})
            return found

        with ThreadPoolExecutor(max_workers=50) as pool:
            answers = list(pool.map(write_and_read, uris))

    assert [answer["Item"]["image_uri"]["S"] for answer in answers] == uris
    assert proxy.operations == Counter({"PutItem": 200, "GetItem": 200})


def test_a_stopped_proxy_serves_no_kept_alive_connection(aws_endpoint: str, images_table: str) -> None:
    with dynamodb_fault_proxy(aws_endpoint, DynamoFaults()) as proxy:
        client = through(proxy, attempts=1)
        client.put_item(TableName=images_table, Item=image(a_uri()))  # a connection kept alive in the pool

    with pytest.raises((ConnectionClosedError, EndpointConnectionError)):
        client.put_item(TableName=images_table, Item=image(a_uri()))
    assert proxy.operations == Counter({"PutItem": 1})


@pytest.fixture
def proxy(aws_endpoint: str) -> Iterator[DynamoFaultProxy]:
    with dynamodb_fault_proxy(aws_endpoint, DynamoFaults()) as running:
        yield running


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({"kind": "applied-then-404"}, "unknown fault 'applied-then-404'"),
        ({"kind": "applied-then-500", "operation": "GetItem"}, "'GetItem' is not a write"),
        ({"kind": "applied-then-500", "times": 0}, "times must be at least 1"),
    ],
)
def test_a_targeted_fault_that_cannot_happen_is_refused(
    proxy: DynamoFaultProxy, arguments: dict[str, Any], error: str
) -> None:
    with pytest.raises(ValueError, match=error):
        proxy.fail_next_write(**arguments)
