"""How DynamoDB sizes an item, so a result is measured by the limit it must fit, not by its JSON.

The rules are the developer guide's ("DynamoDB item sizes and formats"): an attribute counts its
name's UTF-8 bytes plus its value; a string counts its UTF-8 bytes; a number about one byte per two
significant digits (leading and trailing zeroes trimmed) plus one; binary its raw bytes; null and
Boolean one byte; a List or Map three bytes of overhead plus its elements, each element one byte
more (a Map's elements also count their names). An item stops at 400 KB.

JSON and DynamoDB disagree both ways: `[0,0,0]` is 2 bytes an element in JSON and 3 in DynamoDB,
while a non-ASCII character escaped as `\\u00e9` is 6 bytes of JSON and 2 of UTF-8.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Final

ITEM_MAX_BYTES: Final = 400 * 1024
CONTAINER_OVERHEAD: Final = 3  # a List or a Map, whatever it holds
ELEMENT_OVERHEAD: Final = 1  # each element of a List or a Map


def attribute_size(name: str, value: Any) -> int:
    """The bytes one top-level attribute `name` holding `value` adds to its item."""
    return len(name.encode()) + value_size(value)


def item_size(attributes: Mapping[str, Any]) -> int:
    return sum(attribute_size(name, value) for name, value in attributes.items())


def value_size(value: Any) -> int:
    """The size of a value as DynamoDB stores it (Python values as boto3 and pynamodb map them)."""
    if value is None or isinstance(value, bool):  # bool before numbers: True is an int
        return 1
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, bytes | bytearray):
        return len(value)
    if isinstance(value, int | float | Decimal):
        return number_size(value)
    if isinstance(value, Mapping):
        return CONTAINER_OVERHEAD + sum(
            len(str(key).encode()) + value_size(element) + ELEMENT_OVERHEAD for key, element in value.items()
        )
    if isinstance(value, list | tuple):
        return CONTAINER_OVERHEAD + sum(value_size(element) + ELEMENT_OVERHEAD for element in value)
    if isinstance(value, set | frozenset):  # a string, number or binary set: its members, no overhead
        return sum(value_size(element) for element in value)
    raise TypeError(f"DynamoDB stores no {type(value).__name__}")


def number_size(number: int | float | Decimal) -> int:
    """One byte per two significant digits, plus one (and one more for a negative number, to be safe)."""
    # repr of a float is its shortest round-tripping form: the digits DynamoDB would be sent.
    decimal = Decimal(repr(number)) if isinstance(number, float) else Decimal(number)
    if not decimal.is_finite():
        raise ValueError(f"DynamoDB stores no {number}")
    sign, digits, _ = decimal.normalize().as_tuple()  # normalize trims the trailing zeroes
    significant = max(1, len(digits))
    return math.ceil(significant / 2) + 1 + (1 if sign and decimal != 0 else 0)
