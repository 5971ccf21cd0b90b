"""The Ximilar client against the emulator, a real HTTP server: success paths, retries, errors."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from tests.conftest import RunningEmulator
from xasync.sample_images import png_base64
from xasync.servers import free_port, wait_for
from ximilar_async.adapters.ximilar import XimilarClient, default_retry, make_session
from ximilar_async.services.errors import (
    InvalidRequest,
    XimilarAuthError,
    XimilarNotFound,
    XimilarRequestError,
    XimilarThrottled,
    XimilarTransientError,
)


def client_for(url: str, token: str, *, read_timeout: float = 5.0, attempts: int = 3) -> XimilarClient:
    session = make_session(token, retry=default_retry(attempts=attempts, backoff_factor=0.05, backoff_max=0.2))
    return XimilarClient(url, session, timeout=(1.0, read_timeout))


@pytest.fixture
def client(emulator: RunningEmulator) -> Iterator[XimilarClient]:
    client = client_for(emulator.url, emulator.token)
    yield client
    client.session.close()


def record() -> dict[str, str]:
    return {"_base64": png_base64()}


def test_submit_answers_with_the_request_id_and_created(client: XimilarClient) -> None:
    answer = client.submit("card-grader", "grade", [record(), record()])
    assert answer["status"] == "CREATED"
    assert answer["type"] == "card-grader"
    assert isinstance(answer["id"], str) and answer["id"]


def test_status_and_get_follow_a_request_to_done(client: XimilarClient) -> None:
    request_id = client.submit("flows", "any-flow", [record()])["id"]
    wait_for(lambda: client.status(request_id) == "DONE", timeout=10, what="DONE")
    details = client.get(request_id)
    assert details["status"] == "DONE"
    assert details["response"]["records"][0]["_status"]["code"] == 200


def test_list_follows_next_across_pages_and_filters(client: XimilarClient, emulator: RunningEmulator) -> None:
    emulator.control.set_knobs(page_size=2, final_state="PROCESSING")
    submitted = {client.submit("card-grader", "grade", [record()])["id"] for _ in range(5)}
    submitted.add(client.submit("flows", "f", [record()])["id"])
    listed = list(client.list(type="card-grader"))
    assert {item["id"] for item in listed} == submitted - {
        listed_flow["id"] for listed_flow in client.list(type="flows")
    }
    assert len(listed) == 5
    pages = [
        call for call in emulator.control.calls() if call["method"] == "GET" and call["path"].endswith("/request/")
    ]
    assert len(pages) >= 3  # 5 results, 2 per page


def test_429_is_retried_after_retry_after_and_then_succeeds(client: XimilarClient, emulator: RunningEmulator) -> None:
    emulator.control.fail_next(1, status=429, retry_after=1)
    answer = client.submit("flows", "f", [record()])
    assert answer["status"] == "CREATED"
    first, second = emulator.control.calls()[:2]
    assert (first["status"], second["status"]) == (429, 201)
    assert second["at"] - first["at"] >= 0.95  # the client waited for Retry-After


def test_a_429_storm_ends_in_a_throttled_error_after_bounded_retries(emulator: RunningEmulator) -> None:
    client = client_for(emulator.url, emulator.token, attempts=2)
    emulator.control.fail_next(10, status=429, retry_after=0)
    with pytest.raises(XimilarThrottled):
        client.status("any")
    assert len(emulator.control.calls()) == 3  # the first try and two retries


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_end_in_a_transient_error(emulator: RunningEmulator, status: int) -> None:
    client = client_for(emulator.url, emulator.token, attempts=2)
    emulator.control.fail_next(10, status=status)
    with pytest.raises(XimilarTransientError) as raised:
        client.submit("flows", "f", [record()])
    assert raised.value.status_code == status
    # 500 is not in the retry list (an unknown failure of a POST may have created the request).
    assert len(emulator.control.calls()) == (1 if status == 500 else 3)


def test_a_5xx_then_success_is_invisible_to_the_caller(client: XimilarClient, emulator: RunningEmulator) -> None:
    emulator.control.fail_next(2, status=503)
    assert client.submit("flows", "f", [record()])["status"] == "CREATED"


def test_4xx_raises_with_the_servers_message_and_is_not_retried(
    client: XimilarClient, emulator: RunningEmulator
) -> None:
    with pytest.raises(XimilarRequestError) as raised:
        client.submit("upscaler", "upscale_3x", [record()])
    assert raised.value.status_code == 400
    assert "upscale_3x" in raised.value.message
    assert len(emulator.control.calls()) == 1


def test_a_wrong_token_is_an_auth_error(emulator: RunningEmulator) -> None:
    with pytest.raises(XimilarAuthError) as raised:
        client_for(emulator.url, "wrong-token").status("x")
    assert raised.value.message == "Invalid token."


def test_an_unknown_request_is_not_found(client: XimilarClient) -> None:
    with pytest.raises(XimilarNotFound):
        client.get("00000000-0000-0000-0000-000000000000")


def test_a_slow_answer_times_out_once_without_resending(emulator: RunningEmulator) -> None:
    emulator.control.set_knobs(response_delay_seconds=1.5)
    client = client_for(emulator.url, emulator.token, read_timeout=0.3)
    with pytest.raises(XimilarTransientError, match="ReadTimeoutError"):
        client.submit("flows", "f", [record()])
    # A timed-out POST may have been accepted: it is never sent a second time.
    emulator.control.set_knobs(response_delay_seconds=0)
    wait_for(lambda: len(emulator.control.calls()) == 1, timeout=5, what="the one slow call to be logged")
    assert len(emulator.control.calls()) == 1


def test_a_refused_connection_is_a_transient_error() -> None:
    client = client_for(f"http://127.0.0.1:{free_port()}", "t", attempts=1)
    with pytest.raises(XimilarTransientError, match="ConnectionError"):
        client.status("x")


@pytest.mark.parametrize(
    ("request_type", "records", "message"),
    [
        ("flows", [], "at least one record"),
        ("flows", [{"_base64": "eA=="}] * 11, "at most 10"),
        ("upscaler", [{"_base64": "eA=="}] * 2, "at most 1"),
        ("flows", [{"_url": "https://x/a.jpg", "_base64": "eA=="}], "exactly one of _url or _base64"),
        ("flows", [{"_id": "no-image"}], "exactly one of _url or _base64"),
        ("painter", [{"_base64": "eA=="}], "unknown request type"),
    ],
)
def test_what_the_api_would_refuse_is_refused_before_sending(
    client: XimilarClient, emulator: RunningEmulator, request_type: str, records: list[dict[str, str]], message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message):
        client.submit(request_type, "upscale_2x" if request_type == "upscaler" else "f", records)
    assert emulator.control.calls() == []


def test_the_token_travels_as_a_token_header(emulator: RunningEmulator) -> None:
    answer = requests.get(
        f"{emulator.url}/account/v2/request/", headers={"Authorization": f"Token {emulator.token}"}, timeout=5
    )
    assert answer.status_code == 200
    session = make_session(emulator.token)
    sent = session.prepare_request(requests.Request("GET", f"{emulator.url}/account/v2/request/"))
    assert sent.headers["Authorization"] == f"Token {emulator.token}"


def test_a_rotated_token_is_used_from_the_next_call(emulator: RunningEmulator) -> None:
    tokens = ["stale-token", emulator.token]
    client = XimilarClient(emulator.url, make_session(lambda: tokens[0]))
    with pytest.raises(XimilarAuthError):
        client.status("anything")
    tokens.pop(0)  # SSM now holds the new token
    assert list(client.list()) == []


def test_remaining_credits_are_the_accounts_limit_less_what_it_used(
    client: XimilarClient, emulator: RunningEmulator
) -> None:
    emulator.control.set_knobs(credits_limit=100, credits_counter=90)
    assert client.account_details()["credits_limit"] == 100
    assert client.remaining_credits() == 10
    client.submit("flows", "my-flow", [record(), record()])
    assert client.remaining_credits() == 8  # one credit a record, in the emulator
