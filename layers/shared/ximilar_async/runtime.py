"""The factories: each domain service built from settings, once per cold start, with its clients.

Handlers call these at import; the CLI, tests and benchmarks call the same ones. Secrets come
through Powertools parameters providers, cached for `SECRET_MAX_AGE` so a rotated token or key is
picked up without a redeploy. The webhook signing key is read in two versions, `AWSCURRENT` and
`AWSPREVIOUS`, so that tokens signed before a rotation stay valid for their lifetime. The providers
are made here, per cold start, not taken from Powertools' process-wide defaults, so that what a cold
start configures (`AWS_ENDPOINT_URL` included, which is how the local stack points boto3 and pynamodb
at moto) is what they use.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final, Protocol

import boto3
from aws_lambda_powertools.utilities.parameters import SecretsProvider, SSMProvider
from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError
from botocore.config import Config
from botocore.exceptions import ClientError

from ximilar_async.dal.models import bind_tables
from ximilar_async.dal.repository import Repository
from ximilar_async.objects import S3Objects
from ximilar_async.results import ResultRecorder, utc_now
from ximilar_async.settings import CommonSettings, SubmitSettings, SweeperSettings, WebhookSettings
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

Clock = Callable[[], datetime]


@dataclass(frozen=True)
class SecretSources:
    """The Ximilar token (SSM SecureString) and the webhook signing key (Secrets Manager), cached."""

    ssm: SSMProvider
    secrets: SecretsProvider
    # Powertools caches by secret name only, whatever VersionStage is asked: the previous version
    # needs a provider (a cache) of its own, or it would be answered with the current one.
    previous_secrets: SecretsProvider

    @classmethod
    def create(cls) -> SecretSources:
        return cls(SSMProvider(), SecretsProvider(), SecretsProvider())

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


def repository(settings: CommonSettings) -> Repository:
    tables = bind_tables(settings.images_table, settings.requests_table)
    return Repository(tables, settings.index_shards, timedelta(days=settings.request_retention_days))


def object_store() -> S3Objects:
    # Signature v4 everywhere: presigned URLs of v2 do not work in newer regions.
    return S3Objects(boto3.client("s3", config=Config(signature_version="s3v4")))


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


def submitter(settings: SubmitSettings, *, clock: Clock = utc_now) -> Submitter:
    secrets = SecretSources.create()
    store = repository(settings)
    ximilar = ximilar_client(settings, secrets)
    guard = SpendGuard(store, ximilar, settings.daily_submit_limit, settings.min_remaining_credits, clock)
    return Submitter(
        store,
        ximilar,
        object_store(),
        webhook_auth(settings.webhook_secret_arn, secrets),
        settings,
        clock=clock,
        guard=guard,
    )


def webhook_receiver(settings: WebhookSettings) -> WebhookReceiver:
    secrets = SecretSources.create()
    recorder = ResultRecorder(repository(settings), object_store(), settings.results_bucket)
    auth = webhook_auth(settings.webhook_secret_arn, secrets, timedelta(seconds=settings.max_request_age_seconds))
    source = ximilar_client(settings, secrets)
    return WebhookReceiver(recorder, auth, settings.max_webhook_body_bytes, source, settings.result_source)


def sweeper(settings: SweeperSettings, *, clock: Clock = utc_now) -> Sweeper:
    submit = submitter(settings, clock=clock)
    recorder = ResultRecorder(submit.repository, submit.objects, settings.results_bucket, clock=clock)
    return Sweeper(submit.repository, submit.ximilar, recorder, submit, settings, clock=clock)
