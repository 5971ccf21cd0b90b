"""How items are keyed: image URIs, record ids, and write shards of the status and due indexes."""

from __future__ import annotations

import uuid
import zlib
from typing import Final

from ximilar_async.statuses import Status

# Fixed forever: record ids already sent to Ximilar are derived from it.
RECORD_ID_NAMESPACE: Final = uuid.UUID("6f1d3c5e-1b9a-4c3e-9a51-7d0c2b8e4f21")


def image_uri(bucket: str, key: str) -> str:
    """The images table's key: `s3://bucket/key`, with the key as S3 stores it (decoded)."""
    return f"s3://{bucket}/{key}"


def record_id(bucket: str, key: str, version: str) -> str:
    """The `_id` sent to Ximilar for one version (version id, or ETag when unversioned) of one object.

    A UUID, as Ximilar's own ids are, and deterministic: the same upload always gets the same id,
    a new upload of the same key a new one.
    """
    return str(uuid.uuid5(RECORD_ID_NAMESPACE, f"{image_uri(bucket, key)}#{version}"))


def shard_of(text: str, shards: int) -> int:
    """A stable shard number in [0, shards) (crc32, not `hash()`, which changes per process)."""
    return zlib.crc32(text.encode()) % shards


def status_shard(status: Status, image: str, shards: int) -> str:
    """Hash key of the by-status index: the status and a write shard, e.g. `DONE#03`."""
    return f"{status.value}#{shard_of(image, shards):02d}"


def due_shard(submission_id: str, shards: int) -> str:
    """Hash key of the due index, e.g. `due#03`: spreads pending requests over `shards` partitions."""
    return due_partition(shard_of(submission_id, shards))


def due_partition(number: int) -> str:
    return f"due#{number:02d}"


def all_due_shards(shards: int) -> list[str]:
    return [due_partition(number) for number in range(shards)]


def all_status_shards(status: Status, shards: int) -> list[str]:
    return [f"{status.value}#{number:02d}" for number in range(shards)]
