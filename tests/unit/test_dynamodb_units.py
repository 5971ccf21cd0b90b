"""The cost model's DynamoDB rules (benchmarks/dynamodb_units.py), on the template's own indexes."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.dynamodb_units import Table, item_size, read_units, value_size, write_cost
from xasync.template import load_template


@pytest.fixture(scope="module")
def images() -> Table:
    return Table.from_template("images", load_template()["Resources"]["ImagesTable"]["Properties"])


@pytest.fixture(scope="module")
def requests_() -> Table:
    return Table.from_template("requests", load_template()["Resources"]["RequestsTable"]["Properties"])


def image(**attributes: str) -> dict[str, Any]:
    return {"image_uri": {"S": "s3://b/k.png"}, **{name: {"S": value} for name, value in attributes.items()}}


def test_sizes_follow_the_published_rules() -> None:
    assert value_size({"S": "héllo"}) == 6  # UTF-8 bytes
    assert value_size({"N": "12345"}) == 4  # 5 significant digits: 3 bytes, plus 1
    assert value_size({"M": {"a": {"S": "xy"}}}) == 3 + 1 + 1 + 2
    assert value_size({"L": [{"BOOL": True}, {"NULL": True}]}) == 3 + 2 + 2
    assert item_size({"id": {"S": "abc"}}) == 5


def test_units_round_up_per_item_and_halve_for_eventual_reads() -> None:
    assert read_units(4097, consistent=True) == 2
    assert read_units(1, consistent=False) == 0.5
    assert read_units(0, consistent=False) == 0.5  # an empty read still costs the minimum


def test_a_new_item_enters_only_the_indexes_whose_keys_it_has(images: Table) -> None:
    # Given an image with a status shard and updated_at but no request_id yet
    new = image(status="SUBMITTING", status_shard="SUBMITTING#01", updated_at="2026-11-30T00:00:00")
    # When it is put
    cost = write_cost(images, None, new, applied=True, kind="Put")
    # Then by_status gets one write, by_request (sparse: no request_id) none
    assert cost.index_writes == {"by_status": 1}
    assert cost.table_units == 1


def test_a_changed_index_key_is_a_delete_and_a_put(images: Table) -> None:
    before = image(status="CREATED", status_shard="CREATED#01", updated_at="t1", request_id="r")
    after = image(status="DONE", status_shard="DONE#03", updated_at="t2", request_id="r")
    cost = write_cost(images, before, after, applied=True, kind="Update")
    # by_status moved (its key changed); by_request kept its key but a projected attribute changed
    assert cost.index_writes == {"by_status": 2, "by_request": 1}


def test_an_unprojected_change_writes_no_index(images: Table) -> None:
    before = image(status="DONE", status_shard="DONE#01", updated_at="t", request_id="r", result="a")
    after = image(status="DONE", status_shard="DONE#01", updated_at="t", request_id="r", result="b" * 2000)
    cost = write_cost(images, before, after, applied=True, kind="Update")
    assert cost.index_writes == {}
    assert cost.table_units == 3  # the larger item, per started KB


def test_leaving_a_sparse_index_costs_one_write(requests_: Table) -> None:
    due = {"submission_id": {"S": "s"}, "due_shard": {"S": "due#01"}, "next_check_at": {"N": "1"}}
    done = {"submission_id": {"S": "s"}, "status": {"S": "DONE"}}
    assert write_cost(requests_, due, done, applied=True, kind="Update").index_writes == {"due": 1}


def test_a_refused_conditional_write_bills_the_item_and_no_index(images: Table) -> None:
    before = image(status="DONE", status_shard="DONE#01", updated_at="t", request_id="r")
    cost = write_cost(images, before, None, applied=False, kind="Update")
    assert (cost.table_units, cost.index_writes) == (1, {})
