"""A small client of Ximilar's asynchronous request API, on one `requests.Session`.

Retries and backoff are urllib3's `Retry` mounted on the session; this module only maps answers
to results and typed errors, and refuses locally what the API would refuse.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Final, Self

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from ximilar_async.services.errors import (
    InvalidRequest,
    XimilarAuthError,
    XimilarNotFound,
    XimilarRequestError,
    XimilarThrottled,
    XimilarTransientError,
)
from ximilar_async.values.request_types import (
    API_MAX_RECORDS_PER_REQUEST,
    DEFAULT_RECORDS_PER_REQUEST,
    RequestType,
    parse_request_type,
)

REQUEST_PATH: Final = "/account/v2/request"
ACCOUNT_DETAILS_PATH: Final = "/account/v2/details"
RETRYABLE_STATUSES: Final = frozenset({429, 502, 503, 504})

JsonObject = dict[str, Any]


class RetryPastDeadline(Exception):
    """The next retry would wait past the caller's deadline; `status` is the last answer's, if any."""

    def __init__(self, status: int | None) -> None:
        super().__init__(f"no time left to retry (last status {status})")
        self.status = status


class BoundedRetry(Retry):
    """urllib3's Retry, bounded in time: Retry-After is capped, and no wait runs past `deadline`.

    `deadline` is a `time.monotonic()` value (None: no deadline). urllib3 copies a Retry for every
    request through `new`, so the copy carries it on. A wait that would pass it raises
    `RetryPastDeadline` instead of sleeping: a Lambda must not be killed in a backoff.
    """

    retry_after_cap_seconds: float = 20.0
    deadline: float | None = None

    def new(self, **kwargs: Any) -> Self:
        retry = super().new(**kwargs)
        retry.deadline = self.deadline
        return retry

    def get_retry_after(self, response: Any) -> float | None:
        seconds = super().get_retry_after(response)
        return None if seconds is None else min(seconds, self.retry_after_cap_seconds)

    def sleep(self, response: Any = None) -> None:
        if self.deadline is not None:
            retry_after = self.get_retry_after(response) if response is not None else None
            wait = retry_after if retry_after is not None else self.get_backoff_time()
            if time.monotonic() + wait > self.deadline:
                raise RetryPastDeadline(getattr(response, "status", None))
        super().sleep(response)


def default_retry(attempts: int = 4, backoff_factor: float = 0.5, backoff_max: float = 10.0) -> Retry:
    """Exponential backoff on connection errors and 429/502/503/504, honouring Retry-After.

    Read errors are not retried: a POST that timed out may have been accepted, and Ximilar has no
    idempotency key, so resending it could create (and bill) a second request.
    """
    return BoundedRetry(
        total=attempts,
        connect=attempts,
        read=0,
        status=attempts,
        other=0,
        backoff_factor=backoff_factor,
        backoff_max=backoff_max,
        backoff_jitter=backoff_factor / 2,
        status_forcelist=RETRYABLE_STATUSES,
        allowed_methods=None,  # status retries apply to POST too: 429/503 mean "not processed"
        respect_retry_after_header=True,
        raise_on_status=False,  # the last answer comes back and is mapped to a typed error below
    )


class TokenAuth(requests.auth.AuthBase):
    """`Authorization: Token <token>`, the token read per request: it is cached from SSM and may rotate."""

    def __init__(self, token: Callable[[], str]) -> None:
        self.token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Token {self.token()}"
        return request


def make_session(token: str | Callable[[], str], retry: Retry | None = None, pool_size: int = 10) -> requests.Session:
    """A session that authenticates with `Token <token>` and retries as `default_retry` says."""
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry or default_retry(), pool_connections=pool_size, pool_maxsize=pool_size)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.auth = TokenAuth(token if callable(token) else lambda: token)
    session.headers.update({"Content-Type": "application/json"})
    return session


def validate_records(
    request_type: RequestType,
    records: Sequence[Mapping[str, Any]],
    records_per_request: Mapping[RequestType, int] = DEFAULT_RECORDS_PER_REQUEST,
) -> None:
    """Refuse what the API would refuse: no records, too many, or a record without exactly one image."""
    limit = min(records_per_request.get(request_type, API_MAX_RECORDS_PER_REQUEST), API_MAX_RECORDS_PER_REQUEST)
    if not records:
        raise InvalidRequest("a request needs at least one record")
    if len(records) > limit:
        raise InvalidRequest(f"{request_type.value} takes at most {limit} records per request, got {len(records)}")
    for index, record in enumerate(records):
        sources = [field for field in ("_url", "_base64") if record.get(field)]
        if len(sources) != 1:
            raise InvalidRequest(f"record {index} must have exactly one of _url or _base64, has {sources or 'none'}")


class XimilarClient:
    """Submit, poll, fetch and list asynchronous requests.

    `session` carries authentication and retries (see `make_session`); `timeout` is the
    (connect, read) pair passed to every call, kept well under the Lambda timeout.
    """

    def __init__(
        self,
        base_url: str,
        session: requests.Session,
        *,
        timeout: tuple[float, float] = (3.05, 10.0),
        records_per_request: Mapping[RequestType, int] = DEFAULT_RECORDS_PER_REQUEST,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = session
        self.timeout = timeout
        self.records_per_request = records_per_request
        self.deadline: float | None = None

    def set_deadline(self, deadline: float | None) -> None:
        """No call or retry of this client runs past `deadline` (a `time.monotonic()` value; None: unbounded).

        A Lambda handler sets it from its remaining time, so the client's own retries never outlast it.
        """
        self.deadline = deadline
        for adapter in self.session.adapters.values():
            retry = getattr(adapter, "max_retries", None)
            if isinstance(retry, BoundedRetry):
                retry.deadline = deadline

    def submit(
        self,
        request_type: RequestType | str,
        endpoint: str,
        records: Sequence[Mapping[str, Any]],
        webhook: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> JsonObject:
        """POST a new request; returns Ximilar's answer (`id`, `status`, `type`, `created`, ...).

        `options` are the route's extra body fields (e.g. the upscaler's `mode`), sent as they are.
        """
        try:
            kind = request_type if isinstance(request_type, RequestType) else parse_request_type(request_type)
        except ValueError as error:
            raise InvalidRequest(str(error)) from None
        validate_records(kind, records, self.records_per_request)
        body: JsonObject = {**(options or {}), "type": kind.value, "endpoint": endpoint}
        body["records"] = [dict(r) for r in records]
        if webhook is not None:
            if not webhook.get("endpoint"):
                raise InvalidRequest("a webhook needs an endpoint")
            body["webhook"] = dict(webhook)
        answer = self._call("POST", f"{REQUEST_PATH}/", json=body)
        if not isinstance(answer.get("id"), str):
            raise XimilarTransientError("Ximilar accepted the request but sent no request id")
        return answer

    def status(self, request_id: str) -> str:
        """The request's state, verbatim (it may be one the reference does not list)."""
        answer = self._call("GET", f"{REQUEST_PATH}/{request_id}/status")
        state = answer.get("status")
        if not isinstance(state, str):
            raise XimilarTransientError(f"status answer without a status: {sorted(answer)}")
        return state

    def get(self, request_id: str) -> JsonObject:
        """The request's details, with `response` when it is DONE."""
        return self._call("GET", f"{REQUEST_PATH}/{request_id}")

    def account_details(self) -> JsonObject:
        """The account's details (`credits_counter`: credits used, `credits_limit`, ...)."""
        return self._call("GET", ACCOUNT_DETAILS_PATH)

    def remaining_credits(self) -> int:
        """Credits left on the account: `credits_limit - credits_counter`."""
        details = self.account_details()
        try:
            return int(details["credits_limit"]) - int(details["credits_counter"])
        except (KeyError, TypeError, ValueError):
            raise XimilarTransientError(f"account details without credits: {sorted(details)}") from None

    def list(self, *, status: str | None = None, type: str | None = None) -> Iterator[JsonObject]:
        """Every request matching the filters, following `next` page by page."""
        params = {name: value for name, value in (("status", status), ("type", type)) if value}
        url: str | None = f"{self.base_url}{REQUEST_PATH}/"
        while url:
            page = self._call_url("GET", url, params=params)
            yield from page.get("results", [])
            url = page.get("next")
            params = {}  # `next` already carries the query

    def _call(self, method: str, path: str, **kwargs: Any) -> JsonObject:
        return self._call_url(method, f"{self.base_url}{path}", **kwargs)

    def _timeout(self, method: str, url: str) -> tuple[float, float]:
        """The (connect, read) timeout, shortened so that the call ends by the deadline."""
        if self.deadline is None:
            return self.timeout
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise XimilarTransientError(f"{method} {_path_of(url)}: not sent, no time left before the deadline")
        return (min(self.timeout[0], left), min(self.timeout[1], left))

    def _call_url(self, method: str, url: str, **kwargs: Any) -> JsonObject:
        try:
            response = self.session.request(method, url, timeout=self._timeout(method, url), **kwargs)
        except RetryPastDeadline as error:
            if error.status == 429:
                raise XimilarThrottled(f"{method} {_path_of(url)}: throttled until past the deadline") from None
            raise XimilarTransientError(f"{method} {_path_of(url)}: {error}", status_code=error.status) from None
        except requests.exceptions.RetryError as error:  # only when urllib3 raises instead of returning
            raise XimilarTransientError(f"{method} {_path_of(url)}: retries exhausted: {error}") from None
        except (requests.ConnectionError, requests.Timeout) as error:
            raise XimilarTransientError(f"{method} {_path_of(url)}: {_cause(error)}") from None
        code = response.status_code
        if 200 <= code < 300:
            return _json_object(response)
        message = _error_message(response)
        if code == 429:
            raise XimilarThrottled(
                f"{method} {_path_of(url)}: throttled: {message}", retry_after=_retry_after(response)
            )
        if code >= 500:
            raise XimilarTransientError(f"{method} {_path_of(url)}: {code}: {message}", status_code=code)
        if code in (401, 403):
            raise XimilarAuthError(code, message)
        if code == 404:
            raise XimilarNotFound(code, message)
        raise XimilarRequestError(code, message)


def _path_of(url: str) -> str:
    """The URL without its query: never log query strings (they can carry signatures)."""
    return url.split("?", 1)[0]


def _retry_after(response: requests.Response) -> float | None:
    """Retry-After in seconds (urllib3 parses both forms: seconds and an HTTP date)."""
    if "Retry-After" not in response.headers:
        return None
    return default_retry().parse_retry_after(response.headers["Retry-After"])


def _cause(error: Exception) -> str:
    """The root cause's name (requests wraps a read timeout after retries in a ConnectionError)."""
    reason = getattr(error.args[0], "reason", None) if error.args else None
    if reason is not None:
        return f"{type(error).__name__} ({type(reason).__name__})"
    return type(error).__name__


def _json_object(response: requests.Response) -> JsonObject:
    try:
        body = response.json()
    except ValueError:
        raise XimilarTransientError(f"{response.status_code} answer is not JSON") from None
    if not isinstance(body, dict):
        raise XimilarTransientError(f"{response.status_code} answer is not a JSON object")
    return body


def _error_message(response: requests.Response) -> str:
    """The server's own words: DRF-style `detail`, field errors, or the raw text, shortened."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason or ""
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return str(body["detail"])
    return str(body)[:500]
