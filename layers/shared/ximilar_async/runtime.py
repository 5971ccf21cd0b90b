"""Clients and secrets the handlers build once per cold start, from settings.

Secrets come through Powertools parameters providers, cached for `SECRET_MAX_AGE` so a rotated token
or key is picked up without a redeploy. The providers are made here, per cold start, not taken from
Powertools' process-wide defaults, so that what a cold start configures (`AWS_ENDPOINT_URL` included,
which is how the local stack points boto3 and pynamodb at moto) is what they use.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Final

from aws_lambda_powertools.utilities.parameters import SecretsProvider, SSMProvider

from ximilar_async.dal.models import bind_tables
from ximilar_async.dal.repository import Repository
from ximilar_async.settings import CommonSettings
from ximilar_async.ximilar import XimilarClient, make_session

SECRET_MAX_AGE: Final = 300  # seconds
CONNECT_TIMEOUT_SECONDS: Final = 3.05


def repository(settings: CommonSettings) -> Repository:
    tables = bind_tables(settings.images_table, settings.requests_table)
    return Repository(tables, settings.index_shards, timedelta(days=settings.request_retention_days))


@dataclass(frozen=True)
class SecretSources:
    """The Ximilar token (SSM SecureString) and the webhook signing key (Secrets Manager), cached."""

    ssm: SSMProvider
    secrets: SecretsProvider

    @classmethod
    def create(cls) -> SecretSources:
        return cls(SSMProvider(), SecretsProvider())

    def api_token(self, settings: CommonSettings) -> str:
        return str(self.ssm.get(settings.ximilar_token_parameter, decrypt=True, max_age=SECRET_MAX_AGE))

    def signing_key(self, secret_arn: str) -> bytes:
        return str(self.secrets.get(secret_arn, max_age=SECRET_MAX_AGE)).encode()


def ximilar_client(settings: CommonSettings) -> XimilarClient:
    """The client, without a token yet: handlers call `set_token(...)` per invocation (the token may rotate)."""
    return XimilarClient(
        settings.ximilar_api_url,
        make_session(token=""),
        timeout=(CONNECT_TIMEOUT_SECONDS, settings.ximilar_read_timeout_seconds),
        records_per_request=settings.records_per_request,
    )
