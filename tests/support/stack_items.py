"""Reading the local stack's tables as a user's AWS CLI would (plain DynamoDB JSON, consistent reads)."""

from __future__ import annotations

from typing import Any

from xasync.local_stack import LocalStack
from ximilar_async.values import identity


def image(local: LocalStack, key: str) -> dict[str, Any]:
    """The image item of an input key, as DynamoDB holds it ({} when there is none)."""
    answer = local.client("dynamodb").get_item(
        TableName=local.outputs["ImagesTableName"],
        Key={"image_uri": {"S": identity.image_uri(local.outputs["InputBucketName"], key)}},
        ConsistentRead=True,
    )
    return dict(answer.get("Item", {}))
