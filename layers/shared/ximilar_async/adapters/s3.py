"""The object store: S3 reads, presigned GETs and JSON writes, and artifact copies, behind the domain's interfaces."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from botocore.exceptions import ClientError

from ximilar_async.services.errors import ObjectGone
from ximilar_async.values.entities import ObjectLocation
from ximilar_async.values.outputs import GONE_STATUSES, ArtifactGone, CopiedArtifact, extension_of

# What S3 answers for an object (or version) that is not there: GetObject's codes, and HeadObject's (no body).
GONE_CODES: Final = frozenset({"NoSuchKey", "NoSuchVersion", "404", "NotFound"})


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


@dataclass(frozen=True)
class S3ArtifactCopier:
    """`outputs.ArtifactCopier`: an HTTP download streamed into S3, never held whole in memory.

    `requests` with `stream=True` hands its raw socket stream to boto3's `upload_fileobj`, which
    reads it part by part (multipart above the TransferConfig's threshold). Memory is bounded by
    the part size times the transfer's concurrency, whatever the artifact's size.
    """

    s3: Any
    session: Any  # a requests.Session
    transfer: Any  # boto3.s3.transfer.TransferConfig
    timeout: tuple[float, float] = (3.05, 30.0)

    def copy(self, url: str, bucket: str, key_for: Callable[[str], str], metadata: Mapping[str, str]) -> CopiedArtifact:
        with self.session.get(url, stream=True, timeout=self.timeout) as answer:
            if answer.status_code in GONE_STATUSES:
                raise ArtifactGone(answer.status_code)
            answer.raise_for_status()
            content_type = answer.headers.get("Content-Type") or "application/octet-stream"
            key = key_for(extension_of(content_type, url, ""))
            answer.raw.decode_content = True  # a gzip transfer encoding is undone, as the browser would
            counted = _CountingReader(answer.raw)
            self.s3.upload_fileobj(
                counted,
                bucket,
                key,
                ExtraArgs={"ContentType": content_type, "Metadata": dict(metadata)},
                Config=self.transfer,
            )
        return CopiedArtifact(f"s3://{bucket}/{key}", content_type, counted.read_bytes)


class _CountingReader:
    """A file-like view of a stream that counts what was read (the copy's size, without a HEAD)."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.read_bytes = 0

    def read(self, size: int = -1) -> bytes:
        chunk: bytes = self.raw.read(size)
        self.read_bytes += len(chunk)
        return chunk


@dataclass(frozen=True)
class S3ExportObjects:
    """`exporter.ExportObjects` on a boto3 S3 client: the export's parts and state, results and output sizes."""

    s3: Any

    def get(self, bucket: str, key: str) -> bytes | None:
        try:
            return S3Objects(self.s3).read(ObjectLocation(bucket, key))
        except ObjectGone:
            return None

    def put(self, bucket: str, key: str, body: bytes, content_type: str) -> None:
        self.s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)

    def delete(self, bucket: str, key: str) -> None:
        self.s3.delete_object(Bucket=bucket, Key=key)

    def size(self, bucket: str, key: str) -> int | None:
        try:
            return int(self.s3.head_object(Bucket=bucket, Key=key)["ContentLength"])
        except ClientError as error:
            # An output bucket the caller may not list answers 403 for an object deleted since: unknown too.
            if error.response["Error"]["Code"] in GONE_CODES | {"403", "AccessDenied"}:
                return None
            raise
