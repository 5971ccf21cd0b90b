"""How the indexes are keyed: write shards of `by_status` and `due` (an image's own key is `values.identity`'s)."""

from __future__ import annotations

import zlib

from ximilar_async.values.statuses import Status


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
