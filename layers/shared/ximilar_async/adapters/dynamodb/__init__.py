"""Data access: the pynamodb models, their keys, and one small store per thing the tables hold.

- `images.ImageStore`: image items (claims, results, outputs);
- `requests.RequestStore`: request items (lifecycle, outcomes, the due index);
- `control.ControlStore`: control items (pause, spend days, the last sweep);
- `queries.ResultQueries`: the read side for people (the CLI, the page, the export), off the pipeline's path.

Each domain service receives only the store it uses, through a narrow port (`ports`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from ximilar_async.adapters.dynamodb.control import ControlStore
from ximilar_async.adapters.dynamodb.images import ImageStore
from ximilar_async.adapters.dynamodb.models import ImageItem, RequestItem, Tables, bind_tables
from ximilar_async.adapters.dynamodb.queries import ResultQueries
from ximilar_async.adapters.dynamodb.requests import RequestStore


@dataclass(frozen=True)
class Storage:
    """The stores of one pair of tables, built together so that they share the tables' client."""

    images: ImageStore
    requests: RequestStore
    control: ControlStore
    queries: ResultQueries

    @classmethod
    def of(cls, tables: Tables, shards: int, request_retention: timedelta) -> Storage:
        return cls(
            ImageStore(tables, shards),
            RequestStore(tables, shards, request_retention),
            ControlStore(tables, shards),
            ResultQueries(tables, shards),
        )

    @property
    def tables(self) -> Tables:
        return self.images.tables


__all__ = [
    "ControlStore",
    "ImageItem",
    "ImageStore",
    "RequestItem",
    "RequestStore",
    "ResultQueries",
    "Storage",
    "Tables",
    "bind_tables",
]
