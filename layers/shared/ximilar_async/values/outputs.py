"""Outputs: the files Ximilar hosts for a result (the upscaled image, ...) copied into the user's S3.

Ximilar keeps them about a day, so a result worth keeping must be copied. The recorder marks each
artifact of a DONE result PENDING in the same conditional write as the result and queues one message
per image; the outputs function copies them here, one streamed upload each, and marks each STORED
(or FAILED with the reason). Nothing here runs in the webhook's time.

Artifacts: every top-level `*_url` field of a record except the input's own `_url`. Its name is the
field without underscores, `_url` and a trailing `_image`: `_upscaled_image_url` -> `upscaled`.

Key rule (`output_key`): the input key without `InputPrefix`, under `OutputPrefix`, with
`.<artifact>` before the extension: `incoming/cats/cat.jpg` -> `outputs/cats/cat.upscaled.jpg`. The
extension is the artifact's: from its Content-Type when that is a known type, else from its URL's
path, else the input's. The PENDING URI is written before the download, from the URL (or the
input); the STORED URI is written after it, from the Content-Type, and is the one to trust.
"""

from __future__ import annotations

import json
import logging
import mimetypes
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Final, Protocol
from urllib.parse import quote, urlsplit

from ximilar_async.values.entities import Image, Output, OutputState

logger = logging.getLogger(__name__)

# Extensions for the types Ximilar serves, where mimetypes' first guess is an odd one (.jpe).
PREFERRED_EXTENSIONS: Final = {"image/jpeg": ".jpg", "image/png": ".png", "image/webp": ".webp", "image/tiff": ".tif"}
# An artifact URL that answers these is gone for good: expired or deleted at Ximilar.
GONE_STATUSES: Final = frozenset({403, 404, 410})
MAX_REASON_CHARS: Final = 500


class OutputLocationError(ValueError):
    """The output location would put copies where the pipeline reads uploads."""


class ArtifactGone(Exception):
    """The artifact's URL answered 403, 404 or 410: Ximilar no longer has it (or never had)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"the artifact is gone from Ximilar (HTTP {status})")
        self.status = status


def artifact_name(field_name: str) -> str | None:
    """`_upscaled_image_url` -> `upscaled`; None for fields that are not artifacts (the input's `_url`)."""
    if not field_name.endswith("_url") or field_name == "_url":
        return None
    name = field_name.strip("_").removesuffix("_url").removesuffix("_image").strip("_")
    return name or None


def artifacts_of(record: Mapping[str, Any]) -> dict[str, str]:
    """Artifact name -> URL for every hosted file a record names."""
    found: dict[str, str] = {}
    for field_name, value in record.items():
        name = artifact_name(field_name)
        if name and isinstance(value, str) and value.startswith(("https://", "http://")):
            found[name] = value
    return found


def extension_of(content_type: str | None, url: str | None, input_key: str) -> str:
    """The copy's extension: the Content-Type's, else the URL path's, else the input's (see the module)."""
    if content_type:
        kind = content_type.split(";", 1)[0].strip().lower()
        guessed = PREFERRED_EXTENSIONS.get(kind) or mimetypes.guess_extension(kind)
        if guessed and kind != "application/octet-stream":
            return guessed
    if url:
        suffix = PurePosixPath(urlsplit(url).path).suffix.lower()
        if suffix and len(suffix) <= 6:
            return suffix
    return PurePosixPath(input_key).suffix.lower()


@dataclass(frozen=True)
class OutputLocation:
    """Where copies go: `bucket` under `prefix`, mirroring the input bucket's keys below `input_prefix`, and
    a watched bucket's (one the stack did not create) whole keys under a folder named after the bucket,
    so that the same key in two buckets never makes the same copy."""

    bucket: str
    prefix: str
    input_prefix: str
    watched_buckets: frozenset[str] = frozenset()

    def check(self, input_bucket_prefix: str = "xasync-in-") -> None:
        """Refuse a location inside the input bucket or a watched one (the template refuses the input bucket too;
        this is the cold start's check).

        Every input bucket is named `xasync-in-<account>-<stack id part>`: a copy there under
        InputPrefix would be submitted again, and again.
        """
        if self.bucket.startswith(input_bucket_prefix):
            raise OutputLocationError(
                f"output bucket {self.bucket!r} has the input bucket's name shape ({input_bucket_prefix}...):"
                " outputs never go to the input bucket"
            )
        if self.prefix.startswith("/") or not self.prefix.endswith("/"):
            raise OutputLocationError(f"output prefix {self.prefix!r} must end with / and not start with one")
        if self.bucket in self.watched_buckets:  # a bucket the stack only reads: a watched prefix would submit it
            raise OutputLocationError(f"{self.bucket!r} is watched: outputs never go there")

    def key(self, input_bucket: str, input_key: str, artifact: str, extension: str) -> str:
        if input_bucket in self.watched_buckets:
            relative = f"{input_bucket}/{input_key}"
        else:
            relative = input_key.removeprefix(self.input_prefix)
        path = PurePosixPath(relative)
        stem = str(path.with_suffix("")) if path.suffix else relative
        return f"{self.prefix}{stem}.{artifact}{extension}"

    def uri(self, input_bucket: str, input_key: str, artifact: str, extension: str) -> str:
        return f"s3://{self.bucket}/{self.key(input_bucket, input_key, artifact, extension)}"

    def pending(self, input_uri: str, artifacts: Mapping[str, str]) -> dict[str, Output]:
        """The outputs of a DONE result as the recorder writes them: PENDING, where they will be."""
        bucket, key = split_s3_uri(input_uri)
        return {
            name: Output(self.uri(bucket, key, name, extension_of(None, url, key)), OutputState.PENDING)
            for name, url in artifacts.items()
        }


def split_s3_uri(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


# --- the queue between the recorder and the copier --------------------------------------------------


@dataclass(frozen=True)
class OutputJob:
    """One image's artifacts to copy: the OutputsQueue message body (JSON)."""

    image_uri: str
    record_id: str
    request_id: str
    artifacts: dict[str, str]  # name -> Ximilar's URL

    def to_json(self) -> str:
        return json.dumps(
            {
                "image_uri": self.image_uri,
                "record_id": self.record_id,
                "request_id": self.request_id,
                "artifacts": self.artifacts,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, body: str) -> OutputJob:
        data = json.loads(body)
        artifacts = data.get("artifacts")
        if not isinstance(artifacts, dict) or not all(
            isinstance(key, str) and isinstance(value, str) for key, value in artifacts.items()
        ):
            raise ValueError("an output job needs artifacts: {name: url}")
        return cls(str(data["image_uri"]), str(data["record_id"]), str(data["request_id"]), dict(artifacts))


class OutputQueue(Protocol):
    def send(self, jobs: Iterable[OutputJob]) -> None:
        """Queue each job (SQS SendMessageBatch, 10 a call); raises if any could not be queued."""
        ...


# --- copying ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CopiedArtifact:
    uri: str
    content_type: str
    size_bytes: int


class ArtifactCopier(Protocol):
    def copy(self, url: str, bucket: str, key_for: Callable[[str], str], metadata: Mapping[str, str]) -> CopiedArtifact:
        """Stream `url` into `bucket` at `key_for(extension)`; raises `ArtifactGone` on 403/404/410."""
        ...


@dataclass
class CopyResult:
    stored: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    regenerated: bool = False
    skipped: str | None = None  # why nothing was done (superseded, already stored)


def clip(reason: str) -> str:
    return reason[:MAX_REASON_CHARS]


def metadata_for(image: Image, request_id: str) -> dict[str, str]:
    """S3 user metadata naming where a copy came from; URL-quoted, as S3 metadata travels in ASCII headers."""
    values = {
        "source-bucket": image.bucket,
        "source-key": image.key,
        "source-version": image.version,
        "ximilar-request-id": request_id,
        "record-id": image.record_id,
    }
    return {name: quote(value, safe="/()+,=@") for name, value in values.items()}
