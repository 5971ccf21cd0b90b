"""The factories: each domain service built from settings, once per cold start, with its clients.

Handlers call these at import (in `cold_start()`); the CLI, tests and benchmarks call the same ones. The
clients a function's typical event uses are built then; the others (`lazy`) on their first use. Secrets come
through Powertools parameters providers, cached for `SECRET_MAX_AGE` so a rotated token or key is
picked up without a redeploy. The webhook signing key is read in two versions, `AWSCURRENT` and
`AWSPREVIOUS`, so that tokens signed before a rotation stay valid for their lifetime. The providers
are made here, per cold start, not taken from Powertools' process-wide defaults, so that what a cold
start configures (`AWS_ENDPOINT_URL` included, which is how the local stack points boto3 and pynamodb
at moto) is what they use.
"""

from __future__ import annotations

import contextvars
import functools
import gc
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Generic, Protocol, TypeVar

import boto3
import botocore.session
import requests
from aws_lambda_powertools.utilities.parameters import SecretsProvider, SSMProvider
from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.credentials import DeferredRefreshableCredentials, create_credential_resolver
from botocore.exceptions import ClientError, NoCredentialsError
from botocore.loaders import Loader

from ximilar_async import snapstart
from ximilar_async.copying import OutputCopier
from ximilar_async.dal.models import bind_tables
from ximilar_async.dal.repository import Repository
from ximilar_async.events import CompletionEvents, EventBridgePublisher
from ximilar_async.objects import S3ArtifactCopier, S3Objects
from ximilar_async.outputs import SqsOutputQueue
from ximilar_async.ports import Store
from ximilar_async.results import ResultRecorder, utc_now
from ximilar_async.settings import (
    CommonSettings,
    OutputSettings,
    OutputsSettings,
    SubmitSettings,
    SweeperSettings,
    WebhookSettings,
)
from ximilar_async.spend import SpendGuard
from ximilar_async.submission import Submitter
from ximilar_async.sweeper import Sweeper
from ximilar_async.webhook import WebhookReceiver
from ximilar_async.webhook_auth import WebhookAuth
from ximilar_async.ximilar import XimilarClient, make_session
from ximilar_async.ximilar.client import CONNECT_TIMEOUT_SECONDS

SECRET_MAX_AGE: Final = 300  # seconds
# A token of an unknown key makes the keys be read again (a rotation may be younger than the cache),
# at most this often, so that forged key ids cannot turn into a Secrets Manager call each.
KEY_REFRESH_INTERVAL: Final = 30.0  # seconds
# A copy holds at most PART_BYTES x COPY_CONCURRENCY of the artifact in memory, whatever its size
# (benchmarks/bench_outputs.py measures it); 8 MB parts reach S3's 10,000-part limit at 80 GB.
PART_BYTES: Final = 8 * 1024 * 1024
COPY_CONCURRENCY: Final = 4
# The only AWS service models the clients load: botocore's, trimmed to the operations the functions call
# (devtools/xasync/service_models.py writes them). Finding and parsing botocore's whole models was a third
# of a cold start.
SERVICE_MODELS: Final = Path(__file__).with_name("service_models")

Clock = Callable[[], datetime]
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
    """A client of the one session (each factory below makes those of its service): built now, or on its
    first use when its service is one of `lazy`, the services the function's typical event does not use."""
    if service in lazy:
        return LazyClient(service, config)
    with _BUILDING:
        return aws_sessions()[0].client(service, config=config)


class SecretSources:
    """The Ximilar token (SSM SecureString) and the webhook signing key (Secrets Manager), cached."""

    def __init__(
        self,
        ssm: OnFirstUse[SSMProvider],
        secrets: OnFirstUse[SecretsProvider],
        previous_secrets: OnFirstUse[SecretsProvider],
    ) -> None:
        self._providers = (ssm, secrets, previous_secrets)

    @property
    def ssm(self) -> SSMProvider:
        return self._providers[0].get()

    @property
    def secrets(self) -> SecretsProvider:
        return self._providers[1].get()

    @property
    def previous_secrets(self) -> SecretsProvider:
        # Powertools caches by secret name only, whatever VersionStage is asked: the previous version
        # needs a provider (a cache) of its own, or it would be answered with the current one.
        return self._providers[2].get()

    @classmethod
    def create(cls, *, lazy: Collection[str] = ()) -> SecretSources:
        """The providers, built now, or when first asked for a value if their service is one of `lazy`
        (a Powertools provider uses its client as it is made)."""
        # Clients of boto3's one session, like every other client here: a provider left to itself makes a
        # session of its own, and each new session loads botocore's endpoints and partitions again.
        secretsmanager = OnFirstUse(lambda: aws_client("secretsmanager"))
        sources = cls(
            OnFirstUse(lambda: SSMProvider(boto3_client=aws_client("ssm"))),
            OnFirstUse(lambda: SecretsProvider(boto3_client=secretsmanager.get())),
            OnFirstUse(lambda: SecretsProvider(boto3_client=secretsmanager.get())),
        )
        if "ssm" not in lazy:
            sources.ssm  # noqa: B018 - the property builds it
        if "secretsmanager" not in lazy:
            sources.secrets, sources.previous_secrets  # noqa: B018 - the properties build them
        snapstart.after_restore(sources.clear)
        return sources

    def clear(self) -> None:
        """Forget every cached value (a SnapStart restore: nothing read before the snapshot is kept)."""
        for provider in self._providers:
            if provider.built:
                provider.get().clear_cache()  # type: ignore[no-untyped-call]  # Powertools leaves it unannotated

    def api_token(self, parameter_name: str) -> str:
        return str(self.ssm.get(parameter_name, decrypt=True, max_age=SECRET_MAX_AGE))

    def signing_key(self, secret_arn: str, *, force_fetch: bool = False) -> bytes:
        return str(self.secrets.get(secret_arn, max_age=SECRET_MAX_AGE, force_fetch=force_fetch)).encode()

    def previous_signing_key(self, secret_arn: str, *, force_fetch: bool = False) -> bytes | None:
        """The key before the last rotation; None when the secret was never rotated."""
        try:
            value = self.previous_secrets.get(
                secret_arn, max_age=SECRET_MAX_AGE, force_fetch=force_fetch, VersionStage="AWSPREVIOUS"
            )
        except GetParameterError as error:
            cause = error.__context__
            if isinstance(cause, ClientError) and cause.response["Error"]["Code"] == "ResourceNotFoundException":
                return None
            raise
        return str(value).encode()


class KeyVersions(Protocol):
    """The signing key's current and previous versions (`SecretSources`, or a fake)."""

    def signing_key(self, secret_arn: str, *, force_fetch: bool = False) -> bytes: ...

    def previous_signing_key(self, secret_arn: str, *, force_fetch: bool = False) -> bytes | None: ...


@dataclass
class SecretSigningKeys:
    """`webhook_auth.SigningKeys` from Secrets Manager: current, then previous (if any), cached.

    "No previous version" is remembered for `SECRET_MAX_AGE` too (Powertools does not cache errors).
    """

    secrets: KeyVersions
    secret_arn: str
    monotonic: Callable[[], float] = time.monotonic
    _no_previous_until: float = field(default=float("-inf"), init=False)
    _refreshed_at: float = field(default=float("-inf"), init=False)

    def __call__(self, *, refresh: bool = False) -> Sequence[bytes]:
        now = self.monotonic()
        force = refresh and now - self._refreshed_at >= KEY_REFRESH_INTERVAL
        if force:
            self._refreshed_at = now
        current = self.secrets.signing_key(self.secret_arn, force_fetch=force)
        if refresh and not force:
            return [current]  # refreshed a moment ago: an unknown key id stays unknown
        if not force and now < self._no_previous_until:
            return [current]
        previous = self.secrets.previous_signing_key(self.secret_arn, force_fetch=force)
        if previous is None:
            self._no_previous_until = now + SECRET_MAX_AGE
            return [current]
        return [current, previous]


def completion_events(settings: CommonSettings, *, lazy: Collection[str] = ()) -> CompletionEvents:
    client = aws_client("events", lazy=lazy)
    return CompletionEvents(EventBridgePublisher(client, settings.event_bus_name, settings.event_source))


def repository(
    settings: CommonSettings, events: CompletionEvents | None = None, *, lazy: Collection[str] = ()
) -> Repository:
    """The tables; every image a write finishes is told to the event bus (the stack's completion events)."""
    with _BUILDING:
        tables = bind_tables(settings.images_table, settings.requests_table, session=aws_sessions()[1])
    events = events or completion_events(settings, lazy=lazy)
    return Repository(
        tables, settings.index_shards, timedelta(days=settings.request_retention_days), finished=events.finished
    )


def output_queue(settings: OutputSettings, *, lazy: Collection[str] = ()) -> SqsOutputQueue:
    return SqsOutputQueue(aws_client("sqs", lazy=lazy), settings.outputs_queue_url)


def recorder(
    settings: OutputSettings,
    store: Store,
    objects: S3Objects,
    *,
    clock: Clock = utc_now,
    lazy: Collection[str] = (),
) -> ResultRecorder:
    """The one recording path, with the outputs of DONE results queued for the copier."""
    return ResultRecorder(
        store,
        objects,
        settings.results_bucket,
        clock=clock,
        output_location=settings.output_location,
        output_queue=output_queue(settings, lazy=lazy),
    )


def object_store(*, lazy: Collection[str] = ()) -> S3Objects:
    # Signature v4 everywhere: presigned URLs of v2 do not work in newer regions.
    return S3Objects(aws_client("s3", config=Config(signature_version="s3v4"), lazy=lazy))


def ximilar_client(settings: CommonSettings, secrets: SecretSources) -> XimilarClient:
    """The client; its token is read from SSM (cached) per call, so a rotated token is used at once."""
    return XimilarClient(
        settings.ximilar_api_url,
        make_session(token=lambda: secrets.api_token(settings.ximilar_token_parameter)),
        timeout=(CONNECT_TIMEOUT_SECONDS, settings.ximilar_read_timeout_seconds),
        records_per_request=settings.records_per_request,
    )


def webhook_auth(secret_arn: str, secrets: SecretSources, max_age: timedelta | None = None) -> WebhookAuth:
    """The one `WebhookAuth` of a cold start; `max_age` (the webhook's) lets it verify, not only sign."""
    return WebhookAuth(SecretSigningKeys(secrets, secret_arn), max_age)


# An upload finishes an image only when it fails: the submit function's event bus client is built when first used.
SUBMIT_LAZY: Final = frozenset({"events"})


def submitter(
    settings: SubmitSettings,
    *,
    clock: Clock = utc_now,
    events: CompletionEvents | None = None,
    lazy: Collection[str] = (),
) -> Submitter:
    secrets = SecretSources.create(lazy=lazy)
    store = repository(settings, events, lazy=lazy)
    ximilar = ximilar_client(settings, secrets)
    guard = SpendGuard(store, ximilar, settings.daily_submit_limit, settings.min_remaining_credits, clock)
    return Submitter(
        store,
        ximilar,
        object_store(lazy=lazy),
        webhook_auth(settings.webhook_secret_arn, secrets),
        settings,
        clock=clock,
        guard=guard,
    )


def webhook_receiver(settings: WebhookSettings) -> WebhookReceiver:
    """The webhook function's service. S3 holds only results too large for their item and payloads of
    unknown requests: its client is built when first used."""
    secrets = SecretSources.create()
    recording = recorder(settings, repository(settings), object_store(lazy={"s3"}))
    auth = webhook_auth(settings.webhook_secret_arn, secrets, timedelta(seconds=settings.max_request_age_seconds))
    source = ximilar_client(settings, secrets)
    return WebhookReceiver(recording, auth, settings.max_webhook_body_bytes, source, settings.result_source)


# A sweep mostly finds nothing due: it reads the due index and writes its summary, DynamoDB only.
SWEEP_LAZY: Final = frozenset({"secretsmanager", "ssm", "s3", "sqs", "events"})


def sweeper(settings: SweeperSettings, *, clock: Clock = utc_now) -> Sweeper:
    """The sweeper function's service. What a due request needs (Ximilar's token, the signing key, S3,
    the outputs queue, the event bus) gets its client when first used (`SWEEP_LAZY`)."""
    submit = submitter(settings, clock=clock, lazy=SWEEP_LAZY)
    recording = recorder(settings, submit.repository, object_store(lazy=SWEEP_LAZY), clock=clock, lazy=SWEEP_LAZY)
    sweeper = Sweeper(submit.repository, submit.ximilar, recording, submit, settings, clock=clock)
    snapstart.reseed(sweeper.rng)
    return sweeper


def copy_transfer_config() -> TransferConfig:
    """Multipart uploads of a stream that hold at most COPY_CONCURRENCY parts in memory."""
    config = TransferConfig(
        multipart_threshold=PART_BYTES,
        multipart_chunksize=PART_BYTES,
        max_concurrency=COPY_CONCURRENCY,
        max_io_queue=COPY_CONCURRENCY,
    )
    # A stream is not seekable, so s3transfer reads parts ahead into memory: 10 of them unless told
    # (s3transfer's own setting, which boto3's TransferConfig inherits without taking it as an argument).
    config.max_in_memory_upload_chunks = COPY_CONCURRENCY
    return config


def output_copier(settings: OutputsSettings, *, clock: Clock = utc_now) -> OutputCopier:
    """The outputs function's service: streamed copies, and a submitter to regenerate expired artifacts,
    whose clients (the token, the signing key, presigning) are built when a regeneration first needs them."""
    events = completion_events(settings)
    submit = submitter(settings, clock=clock, events=events, lazy={"secretsmanager", "ssm", "s3"})
    copier = S3ArtifactCopier(
        aws_client("s3", config=Config(signature_version="s3v4")),
        requests.Session(),
        copy_transfer_config(),
        timeout=(CONNECT_TIMEOUT_SECONDS, settings.ximilar_read_timeout_seconds),
    )
    return OutputCopier(
        submit.repository,
        copier,
        settings.output_location,
        submit,
        settings.regenerate_outputs_for,
        settings.outputs_max_receive_count,
        events=events,
        clock=clock,
    )
