"""Cold-start mechanics: what makes a handler's cold start cheaper, and what it must not do yet.

A Lambda cold start imports the handler module once, and every new instance pays for it. What this module
does about it, each piece with its reasons below:
- garbage collection: the imports and the clients of a cold start leave some 90,000 objects that live as
  long as the process; `cold_start()` keeps the collector off while they are built, then freezes them out
  of its sight for good (each handler turns collection off on its first line, before its imports);
- botocore's data: every AWS client of the process comes from one session (`aws_sessions`), which loads
  botocore's endpoints, partitions and each service's model once, from the layer's trimmed models only
  (`LayerModels`, `SERVICE_MODELS`): finding and parsing botocore's whole models was a third of a cold start;
- credentials: the session asks botocore's credential chain on a client's first call, not when the client
  is built (`DeferredCredentials`), so a cold start opens no connection and a SnapStart snapshot keeps no
  credentials;
- clients a function's typical event does not use: built on their first use (`OnFirstUse`, `LazyClient`,
  `aws_client(..., lazy=...)`), not during the cold start.

botocore sessions are not thread safe: clients, and what holds them, are built one at a time (`building`).
"""

from __future__ import annotations

import contextvars
import functools
import gc
import threading
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Generic, TypeVar

import boto3
import botocore.session
from botocore.config import Config
from botocore.credentials import DeferredRefreshableCredentials, create_credential_resolver
from botocore.exceptions import NoCredentialsError
from botocore.loaders import Loader

# The only AWS service models the clients load: botocore's, trimmed to the operations the functions call
# (devtools/xasync/service_models.py writes them). Finding and parsing botocore's whole models was a third
# of a cold start.
SERVICE_MODELS: Final = Path(__file__).with_name("service_models")

T = TypeVar("T")
# botocore sessions are not thread safe: clients (and what holds them) are built one at a time.
_BUILDING = threading.RLock()


@contextmanager
def cold_start() -> Iterator[None]:
    """The end of a handler's cold start: no garbage collection while it builds what lives as long as the
    process, then `gc.freeze()`, and collection on.

    The imports and the clients and services of a cold start leave some 90,000 objects the collector
    tracks (modules' functions and classes, botocore's handlers and models) that stay until the process
    ends; every collection on the way walks them again, a tenth of the import (`bench_cold_start`). So
    each handler turns collection off before its first import, and this turns it on once they are built:
    `gc.freeze()` first moves them out of the collector's sight for good, so later collections do not
    walk them either. Collection is on after it, whatever it was before. The few reference cycles the
    cold start leaves behind (some hundreds of objects) are frozen with the rest, never freed.
    """
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


class LayerModels(Loader):
    """botocore's data loader, reading SERVICE_MODELS only, which it takes for its own data (they are,
    trimmed): botocore resolves endpoints differently from data it takes for a user's override."""

    def __init__(self) -> None:
        super().__init__([str(SERVICE_MODELS)], include_default_search_paths=False)

    def is_builtin_path(self, path: str) -> bool:
        return Path(path).is_relative_to(SERVICE_MODELS)


@functools.cache
def aws_sessions() -> tuple[boto3.session.Session, botocore.session.Session]:
    """The one session every AWS client of this process comes from (on Lambda, of this cold start).

    A session loads botocore's endpoints, partitions and each service's model once; the Powertools
    providers and pynamodb, left to themselves, make sessions of their own and load them again. It loads
    them from SERVICE_MODELS only, before boto3 adds its own folder (resources, which clients never read).
    """
    core = botocore.session.get_session()
    core.register_component("data_loader", LayerModels())
    core.register_component("credential_provider", DeferredCredentials(core))
    return boto3.session.Session(botocore_session=core), core


@contextmanager
def building() -> Iterator[botocore.session.Session]:
    """The one botocore session, for a library that makes its clients of it itself (pynamodb), held by
    this thread until they are made."""
    with _BUILDING:
        yield aws_sessions()[1]


class DeferredCredentials:
    """botocore's credential chain, asked on a client's first call rather than when the client is built.

    A session resolves its credentials when it builds its first client: with the container credentials
    endpoint, which is where Lambda gives SnapStart functions theirs, that is a connection during the
    cold start, and credentials (and a pooled socket) kept in the snapshot every restored instance
    shares. Deferred, the cold start opens nothing, and an instance fetches its own on its first call.
    The chain's credentials refresh themselves; these re-read them about every minute (`REREAD`, less
    botocore's 15-minute advisory margin), well inside the chain's own margins.
    """

    REREAD: Final = timedelta(minutes=16)

    def __init__(self, session: botocore.session.Session) -> None:
        self._session = session
        self._chain: Any = None
        self._lock = threading.Lock()

    def load_credentials(self) -> DeferredRefreshableCredentials:
        return DeferredRefreshableCredentials(refresh_using=self._fetch, method="deferred")

    def _fetch(self) -> dict[str, Any]:
        with self._lock:
            if self._chain is None:
                self._chain = create_credential_resolver(self._session).load_credentials()
        if self._chain is None:
            raise NoCredentialsError()
        frozen = self._chain.get_frozen_credentials()
        expiry = datetime.now(UTC) + self.REREAD
        return {
            "access_key": frozen.access_key,
            "secret_key": frozen.secret_key,
            "token": frozen.token,
            "expiry_time": expiry.isoformat(),
        }


class OnFirstUse(Generic[T]):
    """What `build` makes, made on the first `get()` and kept: for the clients a function's typical event
    does not use (the factories' `lazy`), so its cold start does not build them. Built once, whatever
    threads ask for it together (the submit and sweeper pools), and in the context of the cold start
    that asked for it (`contextvars`), as if built then."""

    def __init__(self, build: Callable[[], T]) -> None:
        self._build = build
        self._context = contextvars.copy_context()
        self._built: list[T] = []

    @property
    def built(self) -> bool:
        return bool(self._built)

    def get(self) -> T:
        if not self._built:
            with _BUILDING:
                if not self._built:
                    self._built.append(self._context.run(self._build))
        return self._built[0]


class LazyClient:
    """A client of the one session that is built on its first use (see `OnFirstUse`), then used as is."""

    def __init__(self, service: str, config: Config | None) -> None:
        self._client = OnFirstUse(lambda: aws_client(service, config))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client.get(), name)


def aws_client(service: Any, config: Config | None = None, *, lazy: Collection[str] = ()) -> Any:
    """A client of the one session (each factory of `runtime` makes those of its service): built now, or on
    its first use when its service is one of `lazy`, the services the function's typical event does not use."""
    if service in lazy:
        return LazyClient(service, config)
    with _BUILDING:
        return aws_sessions()[0].client(service, config=config)
