"""DynamoDB's item size rules (developer guide, "DynamoDB item sizes and formats"), as `item_size` computes them."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from ximilar_async.adapters.dynamodb.item_size import ITEM_MAX_BYTES, attribute_size, item_size, number_size, value_size


def test_a_string_counts_its_name_and_its_utf8_bytes_not_its_characters() -> None:
    assert attribute_size("name", "abc") == 4 + 3
    assert attribute_size("name", "é") == 4 + 2
    assert attribute_size("naïve", "猫") == 6 + 3
    assert value_size("😀") == 4


@pytest.mark.parametrize(
    ("number", "size"),
    [
        (0, 2),
        (7, 2),
        (12, 2),
        (123, 3),
        (1000, 2),  # trailing zeroes trimmed: one significant digit
        (0.001, 2),  # leading zeroes trimmed
        (12345.678, 5),  # 8 significant digits: 4 bytes, plus 1
        (Decimal("1.50"), 2),
        (-12, 3),  # a negative number: one byte more
    ],
)
def test_a_number_counts_one_byte_per_two_significant_digits_plus_one(number: float, size: int) -> None:
    assert number_size(number) == size


def test_null_and_boolean_are_one_byte() -> None:
    assert attribute_size("flag", True) == 5
    assert attribute_size("none", None) == 5


def test_binary_counts_its_raw_bytes() -> None:
    assert attribute_size("b", b"\x00\x01\x02") == 4


def test_lists_and_maps_cost_three_bytes_and_one_byte_per_element() -> None:
    assert attribute_size("l", []) == 1 + 3
    assert attribute_size("m", {}) == 1 + 3
    assert attribute_size("l", ["a", "bc"]) == 1 + 3 + (1 + 1) + (2 + 1)
    # a map's element also counts its name
    assert attribute_size("m", {"k": "v", "kk": 1}) == 1 + 3 + (1 + 1 + 1) + (2 + 2 + 1)
    assert value_size({"nested": [{"a": None}]}) == 3 + (6 + (3 + ((3 + (1 + 1 + 1)) + 1)) + 1)


def test_an_item_is_the_sum_of_its_attributes() -> None:
    assert item_size({"id": "x", "n": 10, "tags": ["a"]}) == (2 + 1) + (1 + 2) + (4 + 3 + 2)


def test_many_tiny_values_are_larger_in_dynamodb_than_in_json() -> None:
    record = {"_id": "r", "_objects": [0] * 140_000}
    assert len(json.dumps(record, separators=(",", ":"))) < 300_000
    assert attribute_size("result", record) > ITEM_MAX_BYTES


def test_escaped_unicode_is_smaller_in_dynamodb_than_in_json() -> None:
    record = {"text": "猫" * 60_000}
    assert len(json.dumps(record)) > 300_000  # \u732b: six bytes a character
    assert attribute_size("result", record) < 200_000  # three in UTF-8


def test_a_value_dynamodb_cannot_store_is_refused() -> None:
    with pytest.raises(TypeError):
        value_size(object())
    with pytest.raises(ValueError, match="nan"):
        number_size(float("nan"))
