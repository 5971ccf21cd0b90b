"""The emulator against the reference: every JSON example's shape, the lifecycle, webhooks, knobs."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image

from tests.conftest import RunningEmulator
from tests.support.receiver import Receiver, webhook_receiver
from xasync.sample_images import png_base64, png_bytes
from xasync.servers import emulator_process, free_port, wait_for

# The six JSON examples of Ximilar's "Asynchronous Requests" reference page, copied verbatim (WIDTH-like
# placeholders written as 0): the repository carries what its tests compare against.
REFERENCE_EXAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "ximilar"
STATUSES = {"CREATED", "PROCESSING", "DONE"}


def reference_examples() -> dict[str, dict[str, Any]]:
    """Every JSON example of the reference, named by what it shows (the file's stem)."""
    return {path.stem: json.loads(path.read_text()) for path in sorted(REFERENCE_EXAMPLES.glob("*.json"))}


EXAMPLES = reference_examples()


def assert_same_shape(example: Any, actual: Any, path: str = "$") -> None:
    """Same keys at every level, same JSON types at the leaves, statuses from the vocabulary."""
    if isinstance(example, dict):
        assert isinstance(actual, dict), f"{path}: expected an object, got {actual!r}"
        assert set(actual) == set(example), f"{path}: keys {sorted(actual)} != reference {sorted(example)}"
        for key, value in example.items():
            if key == "status" and isinstance(value, str):
                assert actual[key] in STATUSES, f"{path}.status: {actual[key]!r}"
            if value is None:
                assert actual[key] is None or isinstance(actual[key], str), f"{path}.{key}"
                continue
            assert_same_shape(value, actual[key], f"{path}.{key}")
    elif isinstance(example, list):
        assert isinstance(actual, list) and actual, f"{path}: expected a non-empty list"
        for index, item in enumerate(actual):
            assert_same_shape(example[0], item, f"{path}[{index}]")
    elif isinstance(example, bool) or example is None:
        assert type(actual) is type(example), f"{path}: {actual!r}"
    elif isinstance(example, int | float):
        assert isinstance(actual, int | float) and not isinstance(actual, bool), f"{path}: {actual!r} is not a number"
    else:
        assert isinstance(actual, type(example)), f"{path}: {actual!r} is not {type(example).__name__}"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with webhook_receiver() as running:
        yield running


def api(emulator: RunningEmulator, method: str, path: str, **kwargs: Any) -> requests.Response:
    headers = {"Authorization": f"Token {emulator.token}", **kwargs.pop("headers", {})}
    return requests.request(method, f"{emulator.url}/account/v2/request{path}", headers=headers, timeout=10, **kwargs)


def submit(emulator: RunningEmulator, body: dict[str, Any]) -> dict[str, Any]:
    answer = api(emulator, "POST", "/", json=body)
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def wait_done(emulator: RunningEmulator, request_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        details = api(emulator, "GET", f"/{request_id}").json()
        return dict(details) if details["status"] == "DONE" else None

    return wait_for(done, timeout=15, what=f"{request_id} DONE")


def test_the_reference_has_the_six_json_examples() -> None:
    assert set(EXAMPLES) == {"submit", "status", "details", "list", "webhook", "webhook_config"}


def test_every_answer_has_the_shape_of_the_reference_examples(emulator: RunningEmulator, receiver: Receiver) -> None:
    image_url = receiver.host("/example.jpeg", png_bytes(40, 60))
    body = {
        "type": "upscaler",
        "endpoint": "upscale_2x",
        "records": [{"_url": image_url}],
        "webhook": {
            "endpoint": receiver.url,
            "headers": {"X-Optional-Field": "optional_value"},
        },  # "_" in names is dropped by many proxies
    }
    assert set(body["webhook"]) == set(EXAMPLES["webhook_config"]["webhook"])
    submitted = submit(emulator, body)
    assert_same_shape(EXAMPLES["submit"], submitted)
    assert submitted["status"] == "CREATED"

    details = wait_done(emulator, submitted["id"])
    assert_same_shape(EXAMPLES["details"], details)
    assert_same_shape(EXAMPLES["status"], api(emulator, "GET", f"/{submitted['id']}/status").json())
    listed = api(emulator, "GET", "/", params={"status": "DONE", "type": "upscaler"}).json()
    assert_same_shape(EXAMPLES["list"], listed)

    delivery = wait_for(lambda: receiver.deliveries, timeout=10, what="the webhook")[0]
    assert_same_shape(EXAMPLES["webhook"], delivery.body)
    assert delivery.headers["X-Optional-Field"] == "optional_value"
    assert delivery.body["id"] == submitted["id"]


@pytest.mark.parametrize("suffix", ["", "/"])
def test_every_path_answers_with_and_without_a_trailing_slash(emulator: RunningEmulator, suffix: str) -> None:
    request_id = submit(emulator, {"type": "flows", "endpoint": "f", "records": [{"_base64": png_base64()}]})["id"]
    assert api(emulator, "POST", suffix or "", json={"type": "flows", "records": [{"_base64": png_base64()}]}).ok
    assert api(emulator, "GET", f"/{request_id}{suffix}").status_code == 200
    assert api(emulator, "GET", f"/{request_id}/status{suffix}").status_code == 200
    assert api(emulator, "GET", suffix).status_code == 200


def test_a_request_moves_created_processing_done(emulator: RunningEmulator) -> None:
    emulator.control.set_knobs(created_delay_seconds=0.6, processing_delay_seconds=0.6)
    request_id = submit(emulator, {"type": "flows", "records": [{"_base64": png_base64()}]})["id"]
    seen: list[str] = []

    def observe() -> bool:
        state = api(emulator, "GET", f"/{request_id}/status").json()["status"]
        if not seen or seen[-1] != state:
            seen.append(state)
        return bool(state == "DONE")

    wait_for(observe, timeout=10, what="DONE")
    assert seen == ["CREATED", "PROCESSING", "DONE"]
    assert "response" not in api(emulator, "GET", "/").json()["results"][0]


def test_records_keep_their_id_get_one_when_absent_and_report_the_real_size(emulator: RunningEmulator) -> None:
    records = [{"_id": "mine-1", "_base64": png_base64(30, 20)}, {"_base64": png_base64(10, 50)}]
    request_id = submit(emulator, {"type": "card-grader", "endpoint": "grade", "records": records})["id"]
    answered = wait_done(emulator, request_id)["response"]["records"]
    assert answered[0]["_id"] == "mine-1"
    assert answered[1]["_id"]
    assert [(r["_width"], r["_height"]) for r in answered] == [(30, 20), (10, 50)]
    assert all(r["_status"]["code"] == 200 and r["_status"]["request_id"] for r in answered)
    assert all("_base64" not in r for r in answered)
    assert answered[0]["grades"]["final"] >= 5


@pytest.mark.parametrize(("endpoint", "factor"), [("upscale_2x", 2), ("upscale_4x", 4)])
def test_the_upscaler_really_resizes_and_serves_the_result(
    emulator: RunningEmulator, endpoint: str, factor: int
) -> None:
    request_id = submit(
        emulator, {"type": "upscaler", "endpoint": endpoint, "records": [{"_base64": png_base64(16, 9)}]}
    )["id"]
    record = wait_done(emulator, request_id)["response"]["records"][0]
    assert (record["_upscaled_width"], record["_upscaled_height"]) == (16 * factor, 9 * factor)
    served = requests.get(record["_upscaled_image_url"], timeout=10)
    assert served.status_code == 200
    assert Image.open(io.BytesIO(served.content)).size == (16 * factor, 9 * factor)


def test_results_of_each_type_are_deterministic(emulator: RunningEmulator) -> None:
    image = png_base64(21, 21)
    for request_type, field in (("collectibles-recognition", "_objects"), ("flows", "_tags")):
        ids = [submit(emulator, {"type": request_type, "records": [{"_base64": image}]})["id"] for _ in range(2)]
        first, second = (wait_done(emulator, i)["response"]["records"][0] for i in ids)
        assert first[field] == second[field]


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"_base64": "bm90IGFuIGltYWdl"}, "not a supported image format"),
        ({"_base64": "%%%"}, "Unable to decode _base64"),
        ({"_url": "/missing.png"}, "HTTP 404"),
        ({"_url": "/empty.png"}, "empty"),
    ],
)
def test_an_image_that_cannot_be_loaded_gets_a_non_200_status_with_a_reason(
    emulator: RunningEmulator, receiver: Receiver, record: dict[str, str], reason: str
) -> None:
    receiver.host("/empty.png", b"")
    if "_url" in record:
        record = {"_url": receiver.url.rsplit("/", 1)[0] + record["_url"]}
    request_id = submit(emulator, {"type": "flows", "records": [record, {"_base64": png_base64()}]})["id"]
    failed, fine = wait_done(emulator, request_id)["response"]["records"]
    assert failed["_status"]["code"] != 200
    assert reason in failed["_status"]["text"]
    assert fine["_status"]["code"] == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"type": "painter", "records": [{"_base64": "eA=="}]}, "type"),
        ({"records": [{"_base64": "eA=="}]}, "type"),
        ({"type": "flows", "records": []}, "records"),
        ({"type": "flows", "records": [{"_base64": "eA=="}] * 11}, "records"),
        ({"type": "flows", "records": [{"_url": "http://x/a", "_base64": "eA=="}]}, "records"),
        ({"type": "flows", "records": [{"_id": "x"}]}, "records"),
        ({"type": "upscaler", "endpoint": "upscale_2x", "records": [{"_base64": "eA=="}] * 2}, "records"),
        ({"type": "upscaler", "endpoint": "upscale_3x", "records": [{"_base64": "eA=="}]}, "endpoint"),
        ({"type": "flows", "records": [{"_base64": "eA=="}], "webhook": {"headers": {}}}, "webhook"),
        ({"type": "flows", "records": [{"_base64": "eA=="}], "webhook": {"endpoint": "ftp://x"}}, "webhook"),
    ],
)
def test_invalid_submissions_get_400_naming_the_field(
    emulator: RunningEmulator, body: dict[str, Any], field: str
) -> None:
    answer = api(emulator, "POST", "/", json=body)
    assert answer.status_code == 400
    assert field in answer.json()


def test_malformed_json_gets_400(emulator: RunningEmulator) -> None:
    answer = api(emulator, "POST", "/", data=b"{not json", headers={"Content-Type": "application/json"})
    assert answer.status_code == 400


def test_the_upscaler_limit_can_be_switched_off(emulator: RunningEmulator) -> None:
    emulator.control.set_knobs(enforce_type_limits=False)
    body = {"type": "upscaler", "endpoint": "upscale_2x", "records": [{"_base64": png_base64()}] * 2}
    assert api(emulator, "POST", "/", json=body).status_code == 201


@pytest.mark.parametrize(
    ("headers", "detail"),
    [({}, "Authentication credentials were not provided."), ({"Authorization": "Token nope"}, "Invalid token.")],
)
def test_no_or_wrong_token_gets_401(emulator: RunningEmulator, headers: dict[str, str], detail: str) -> None:
    answer = requests.get(f"{emulator.url}/account/v2/request/", headers=headers, timeout=5)
    assert answer.status_code == 401
    assert answer.json() == {"detail": detail}


def test_unknown_requests_get_404(emulator: RunningEmulator) -> None:
    assert api(emulator, "GET", "/nope").status_code == 404
    assert api(emulator, "GET", "/nope/status").status_code == 404


def test_list_paginates_with_next_and_previous(emulator: RunningEmulator) -> None:
    emulator.control.set_knobs(page_size=2, final_state="PROCESSING")
    for _ in range(3):
        submit(emulator, {"type": "flows", "records": [{"_base64": png_base64()}]})
    first = api(emulator, "GET", "/").json()
    assert (first["count"], len(first["results"]), first["previous"]) == (3, 2, None)
    second = requests.get(first["next"], headers={"Authorization": f"Token {emulator.token}"}, timeout=5).json()
    assert len(second["results"]) == 1 and second["next"] is None and second["previous"]
    assert api(emulator, "GET", "/", params={"page": 9}).status_code == 404


def test_a_request_can_end_in_another_state_without_a_webhook(emulator: RunningEmulator, receiver: Receiver) -> None:
    emulator.control.set_knobs(final_state="FAILED")
    body = {"type": "flows", "records": [{"_base64": png_base64()}], "webhook": {"endpoint": receiver.url}}
    request_id = submit(emulator, body)["id"]
    wait_for(lambda: api(emulator, "GET", f"/{request_id}/status").json()["status"] == "FAILED", what="FAILED")
    assert "response" not in api(emulator, "GET", f"/{request_id}").json()
    assert receiver.deliveries == []


def webhook_body(receiver: Receiver) -> dict[str, Any]:
    return {"type": "flows", "records": [{"_base64": png_base64()}], "webhook": {"endpoint": receiver.url}}


def test_webhooks_can_be_dropped(emulator: RunningEmulator, receiver: Receiver) -> None:
    emulator.control.set_knobs(webhook_drop_rate=1.0)
    request_id = submit(emulator, webhook_body(receiver))["id"]
    wait_for(lambda: emulator.control.webhooks(), what="the drop to be logged")
    assert emulator.control.webhooks()[0] | {"at": 0} == {
        "request_id": request_id,
        "attempt": 0,
        "outcome": "dropped",
        "at": 0,
    }
    assert receiver.deliveries == []


def test_webhooks_can_be_duplicated(emulator: RunningEmulator, receiver: Receiver) -> None:
    emulator.control.set_knobs(webhook_duplicate_rate=1.0)
    submit(emulator, webhook_body(receiver))
    wait_for(lambda: len(receiver.deliveries) == 2, what="two deliveries")
    assert receiver.deliveries[0].body == receiver.deliveries[1].body


def test_webhooks_can_be_delayed_and_reordered(emulator: RunningEmulator, receiver: Receiver) -> None:
    emulator.control.set_knobs(webhook_delay_seconds=0.1, webhook_jitter_seconds=1.5)
    submitted = [submit(emulator, webhook_body(receiver))["id"] for _ in range(6)]
    wait_for(lambda: len(receiver.deliveries) == 6, timeout=15, what="six deliveries")
    delivered = [delivery.body["id"] for delivery in receiver.deliveries]
    assert sorted(delivered) == sorted(submitted)
    assert delivered != submitted  # seeded jitter: this order differs from submission order


def test_a_receiver_that_is_down_gets_a_bounded_number_of_deliveries(emulator: RunningEmulator) -> None:
    emulator.control.set_knobs(webhook_max_attempts=3, webhook_retry_backoff_seconds=0.05)
    down = f"http://127.0.0.1:{free_port()}/webhook"
    submit(emulator, {"type": "flows", "records": [{"_base64": png_base64()}], "webhook": {"endpoint": down}})
    wait_for(lambda: any(w["outcome"] == "gave up" for w in emulator.control.webhooks()), what="giving up")
    attempts = emulator.control.webhooks()
    assert [(a["attempt"], a["outcome"]) for a in attempts] == [
        (1, "ConnectionError"),
        (2, "ConnectionError"),
        (3, "ConnectionError"),
        (3, "gave up"),
    ]


def test_a_receiver_answering_5xx_is_retried_until_it_accepts(emulator: RunningEmulator, receiver: Receiver) -> None:
    emulator.control.set_knobs(webhook_retry_backoff_seconds=0.2)
    receiver.answer_status = 503
    submit(emulator, webhook_body(receiver))
    wait_for(lambda: len(receiver.deliveries) >= 2, what="a second delivery")
    receiver.answer_status = 200
    wait_for(lambda: emulator.control.webhooks()[-1]["outcome"] == "HTTP 200", what="an accepted delivery")


def test_faults_answer_the_next_calls_with_retry_after(emulator: RunningEmulator) -> None:
    emulator.control.fail_next(2, status=429, retry_after=3)
    answers = [api(emulator, "GET", "/") for _ in range(3)]
    assert [a.status_code for a in answers] == [429, 429, 200]
    assert answers[0].headers["Retry-After"] == "3"


def test_unknown_knobs_are_refused(emulator: RunningEmulator) -> None:
    answer = requests.patch(f"{emulator.url}/_emulator/knobs", json={"speed": 11}, timeout=5)
    assert answer.status_code == 400
    assert "speed" in answer.json()["detail"]


def test_knobs_can_be_set_from_the_command_line() -> None:
    with emulator_process("t", "--enforce-type-limits", "false", "--final-state", "FAILED", "--page-size", "3") as url:
        knobs = requests.get(f"{url}/_emulator/knobs", timeout=5).json()
    assert (knobs["enforce_type_limits"], knobs["final_state"], knobs["page_size"]) == (False, "FAILED", 3)
