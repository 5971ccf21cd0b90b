"""Who an upload is: its image URI (the images table's key) and the record id sent to Ximilar for its version."""

from __future__ import annotations

import uuid
from typing import Final

# Fixed forever: record ids already sent to Ximilar are derived from it.
RECORD_ID_NAMESPACE: Final = uuid.UUID("6f1d3c5e-1b9a-4c3e-9a51-7d0c2b8e4f21")


def image_uri(bucket: str, key: str) -> str:
    """The images table's key: `s3://bucket/key`, with the key as S3 stores it (decoded)."""
    return f"s3://{bucket}/{key}"


def version(version_id: str | None, etag: str) -> str:
    """Which version of an object a record id names: its version id, or its ETag in an unversioned bucket."""
    return version_id or etag


def record_id(bucket: str, key: str, version: str) -> str:
    """The `_id` sent to Ximilar for one version (version id, or ETag when unversioned) of one object.

    A UUID, as Ximilar's own ids are, and deterministic: the same upload always gets the same id,
    a new upload of the same key a new one.
    """
    return str(uuid.uuid5(RECORD_ID_NAMESPACE, f"{image_uri(bucket, key)}#{version}"))
