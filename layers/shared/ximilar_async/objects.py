"""The object store: S3 reads, presigned GETs and JSON writes, behind the small interface the domain uses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from botocore.exceptions import ClientError

from ximilar_async.entities import ObjectLocation

GONE_CODES: Final = frozenset({"NoSuchKey", "NoSuchVersion", "404"})


class ObjectGone(Exception):
    """The object was deleted (or overwritten) before it could be read."""


@dataclass(frozen=True)
class S3Objects:
    """`ObjectStore` on a boto3 S3 client (signature v4, so presigned URLs work in every region)."""

    s3: Any

    def read(self, location: ObjectLocation) -> bytes:
        try:
            body: bytes = self.s3.get_object(**_params(location))["Body"].read()
        except ClientError as error:
            if error.response["Error"]["Code"] in GONE_CODES:
                raise ObjectGone(location.key) from None
            raise
        return body

    def presigned_get(self, location: ObjectLocation, expires_in: int) -> str:
        return str(self.s3.generate_presigned_url("get_object", Params=_params(location), ExpiresIn=expires_in))

    def put_json(self, bucket: str, key: str, body: bytes) -> str:
        self.s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")
        return f"s3://{bucket}/{key}"


def _params(location: ObjectLocation) -> dict[str, str]:
    params = {"Bucket": location.bucket, "Key": location.key}
    if location.version_id:
        params["VersionId"] = location.version_id
    return params
