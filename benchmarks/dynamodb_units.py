"""DynamoDB billing units from items, by the published rules (on-demand: one write unit per 1 KB written,
one read unit per 4 KB read, half for an eventually consistent read), including global secondary indexes.

Items are in the wire format (`{"name": {"S": "..."}}`), as botocore sends and returns them.

Index writes (the rules DynamoDB documents for GSIs, applied to the item before and after a write):
an item is in an index when it has every key attribute of the index (so an index is sparse); entering
costs one put, leaving one delete; staying with a changed index key costs a delete and a put; staying
with a changed projected attribute costs one put; anything else costs nothing. Each index write is
billed on the size of the index entry (its keys, the table's keys and the projected attributes).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

Item = Mapping[str, Any]
WRITE_UNIT_BYTES = 1024
READ_UNIT_BYTES = 4096


def _number_size(text: str) -> int:
    # "approximately (number of significant digits / 2) + 1 bytes" (DynamoDB developer guide).
    digits = text.lstrip("-").replace(".", "").lstrip("0").rstrip("0") or "0"
    return (len(digits) + 1) // 2 + 1


def value_size(value: Mapping[str, Any]) -> int:
    ((kind, content),) = value.items()
    if kind == "S":
        return len(str(content).encode())
    if kind == "N":
        return _number_size(str(content))
    if kind == "B":
        return len(content)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "SS":
        return sum(len(s.encode()) for s in content)
    if kind == "NS":
        return sum(_number_size(n) for n in content)
    if kind == "BS":
        return sum(len(b) for b in content)
    # Lists and maps: 3 bytes, plus 1 byte per element (and the element's name, for a map).
    if kind == "L":
        return 3 + sum(1 + value_size(element) for element in content)
    if kind == "M":
        return 3 + sum(1 + len(name.encode()) + value_size(element) for name, element in content.items())
    raise ValueError(f"unknown DynamoDB type {kind}")


def item_size(item: Item | None) -> int:
    return sum(len(name.encode()) + value_size(value) for name, value in (item or {}).items())


def write_units(size: int) -> int:
    return max(1, math.ceil(size / WRITE_UNIT_BYTES))


def read_units(size: int, *, consistent: bool) -> float:
    units = max(1, math.ceil(size / READ_UNIT_BYTES))
    return float(units) if consistent else units / 2


@dataclass(frozen=True)
class Index:
    name: str
    keys: tuple[str, ...]
    projection: str  # ALL, KEYS_ONLY, INCLUDE
    non_key_attributes: tuple[str, ...] = ()

    def entry(self, item: Item | None, table_keys: tuple[str, ...]) -> dict[str, Any] | None:
        """The item's entry in this index, or None when the item is not in it (a missing key attribute)."""
        if item is None or any(key not in item for key in self.keys):
            return None
        if self.projection == "ALL":
            return dict(item)
        wanted = set(self.keys) | set(table_keys) | set(self.non_key_attributes)
        return {name: value for name, value in item.items() if name in wanted}


@dataclass(frozen=True)
class Table:
    name: str
    keys: tuple[str, ...]
    indexes: tuple[Index, ...]

    def key_of(self, item: Item) -> dict[str, Any]:
        return {key: item[key] for key in self.keys}

    @classmethod
    def from_template(cls, name: str, properties: Mapping[str, Any]) -> Table:
        """A table from an AWS::DynamoDB::Table's Properties in template.yaml."""

        def keys(schema: list[dict[str, str]]) -> tuple[str, ...]:
            return tuple(element["AttributeName"] for element in schema)

        indexes = tuple(
            Index(
                index["IndexName"],
                keys(index["KeySchema"]),
                index["Projection"]["ProjectionType"],
                tuple(index["Projection"].get("NonKeyAttributes", [])),
            )
            for index in properties.get("GlobalSecondaryIndexes", [])
        )
        return cls(name, keys(properties["KeySchema"]), indexes)


@dataclass(frozen=True)
class WriteCost:
    table_units: int
    index_units: dict[str, int]  # index name -> write units
    index_writes: dict[str, int]  # index name -> index writes (a key change is two)


def write_cost(table: Table, before: Item | None, after: Item | None, *, applied: bool, kind: str) -> WriteCost:
    """What one item write costs: `kind` is Put, Update or Delete; a refused (conditional) write costs
    the size of the item it was checked against, and writes no index."""
    if not applied:
        return WriteCost(write_units(item_size(before)), {}, {})
    # A delete bills the item it removes; a put or an update the larger of the item before and after.
    size = item_size(before) if kind == "Delete" else max(item_size(before), item_size(after))
    units: dict[str, int] = {}
    writes: dict[str, int] = {}
    for index in table.indexes:
        old, new = index.entry(before, table.keys), index.entry(after, table.keys)
        if old is None and new is None:
            continue
        if old is None or new is None:  # enters or leaves the (sparse) index
            sizes = [item_size(new if new is not None else old)]
        elif any(old.get(key) != new.get(key) for key in index.keys):  # moved: delete the old entry, put the new
            sizes = [item_size(old), item_size(new)]
        elif old != new:
            sizes = [item_size(new)]
        else:
            continue
        units[index.name] = sum(write_units(size) for size in sizes)
        writes[index.name] = len(sizes)
    return WriteCost(write_units(size), units, writes)
