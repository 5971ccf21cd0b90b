"""Every botocore call made in this process, attributed to the function that made it.

One set of hooks shared by the IAM audit (`iam_audit.py`: which actions each function needs) and the
cost model (`benchmarks/bench_cost.py`: what each call bills). Each of them registers a middleware:
a callable that sees the call and runs it (`proceed()`), so one can record before the call and another
can look at the answer or time around it.

Attribution (the functions run in this process, some from the local stack's threads):
- `ACTING`, a contextvar, names the function while its cold start (the module import) or its handler
  runs: the module `load_function` returns has its handler wrapped to set it. A contextvar follows the
  code into a thread pool that copies the context (the submit function's pool does); the local stack's
  threads call the wrapped handler, so they set it themselves.
- A botocore client created while `ACTING` is set belongs to that function, and every call through it
  counts for that function, also when a test drives the function's objects outside its handler
  (`pipeline.sweep(...)` runs `Sweeper.sweep` directly). pynamodb creates its clients on first use,
  so the cold start creates them for the module's tables.
- Calls with neither are passed to the middlewares with `function=None`: the audit ignores them (the
  tests' own set-up and checks), the cost model attributes them itself (the local SQS poller's).
"""

from __future__ import annotations

import contextvars
import functools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import botocore.client
import botocore.signers

from xasync import lambda_runtime
from xasync.template import functions

ACTING: contextvars.ContextVar[str | None] = contextvars.ContextVar("xasync_acting_function", default=None)
_OWNER = "_xasync_owner"


@dataclass(frozen=True)
class BotocoreCall:
    """One API call (or presigned URL: no request is made, `presigned` says so) about to be made."""

    function: str | None
    service: str  # the signing name: "dynamodb", "s3", "sqs", "ssm", "secretsmanager"
    operation: str  # the API operation: "PutItem", "GetObject" (also for a presigned GET)
    params: dict[str, Any]
    presigned: bool
    client: Any


Middleware = Callable[[BotocoreCall, Callable[[], Any]], Any]
_MIDDLEWARES: list[Middleware] = []
_INSTALLED: list[bool] = []


@contextmanager
def acting_as(function: str) -> Iterator[None]:
    token = ACTING.set(function)
    try:
        yield
    finally:
        ACTING.reset(token)


def function_of(client: Any) -> str | None:
    acting = ACTING.get()
    return acting if acting is not None else getattr(client, _OWNER, None)


def _through_middlewares(call: BotocoreCall, last: Callable[[], Any]) -> Any:
    proceed = last
    for middleware in reversed(_MIDDLEWARES):
        proceed = functools.partial(middleware, call, proceed)
    return proceed()


def add_middleware(middleware: Middleware) -> None:
    """Start seeing calls (the first middleware added is the outermost); hooks botocore once."""
    _install()
    _MIDDLEWARES.append(middleware)


def _install() -> None:
    if _INSTALLED:
        return
    _INSTALLED.append(True)
    client_class: Any = botocore.client.BaseClient  # patched: its stubs do not declare the private method
    original_init = client_class.__init__
    original_call = client_class._make_api_call
    original_presign = botocore.signers.generate_presigned_url

    @functools.wraps(original_init)
    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        function = ACTING.get()
        if function is not None:
            setattr(self, _OWNER, function)

    @functools.wraps(original_call)
    def make_api_call(self: Any, operation_name: str, api_params: dict[str, Any]) -> Any:
        call = BotocoreCall(
            function_of(self), self.meta.service_model.signing_name, operation_name, api_params, False, self
        )
        return _through_middlewares(call, lambda: original_call(self, operation_name, api_params))

    # Client classes take this function when they are created (botocore's creating-client-class
    # handler reads the module attribute), so it is replaced before any function's client exists.
    @functools.wraps(original_presign)
    def generate_presigned_url(self: Any, ClientMethod: str, Params: Any = None, *args: Any, **kwargs: Any) -> Any:
        operation = self.meta.method_to_api_mapping.get(ClientMethod, ClientMethod)
        call = BotocoreCall(
            function_of(self), self.meta.service_model.signing_name, operation, dict(Params or {}), True, self
        )
        return _through_middlewares(call, lambda: original_presign(self, ClientMethod, Params, *args, **kwargs))

    client_class.__init__ = init
    client_class._make_api_call = make_api_call
    botocore.signers.generate_presigned_url = generate_presigned_url


def wrap_load_function(on_load: Callable[[str, dict[str, str]], None] | None = None) -> None:
    """Make every `load_function` already imported (the tests', the local stack's, the CLI's) an attributed one.

    `on_load(logical_id, environment)` runs before each cold start (the audit learns names from it).
    """
    original: Callable[..., ModuleType] = lambda_runtime.load_function
    if getattr(original, "_xasync_attributed", False):
        return

    @functools.wraps(original)
    def load_function(template: dict[str, Any], logical_id: str, environment: dict[str, str]) -> ModuleType:
        if on_load is not None:
            on_load(logical_id, environment)
        with acting_as(logical_id):
            module = original(template, logical_id, environment)
            _create_table_clients(module)
        handler_name = functions(template)[logical_id].handler_name
        handler = getattr(module, handler_name)

        @functools.wraps(handler)
        def attributed_handler(*args: Any, **kwargs: Any) -> Any:
            with acting_as(logical_id):
                return handler(*args, **kwargs)

        setattr(module, handler_name, attributed_handler)
        return module

    load_function._xasync_attributed = True  # type: ignore[attr-defined]
    for module in list(sys.modules.values()):
        if getattr(module, "load_function", None) is original:
            setattr(module, "load_function", load_function)  # noqa: B010 - any module, not a known type


def _create_table_clients(module: ModuleType) -> None:
    """pynamodb makes its botocore client on first use: make the cold start's models make theirs now."""
    for service in vars(module).values():
        # The handlers hold their services (submitter, sweeper, receiver); their stores hold the tables.
        store = getattr(service, "images", None) or getattr(getattr(service, "recorder", None), "images", None)
        tables = getattr(store, "tables", None)
        for model in (getattr(tables, "images", None), getattr(tables, "requests", None)):
            if model is not None and hasattr(model, "_get_connection"):
                model._get_connection().connection.client  # noqa: B018 - the property creates the client
