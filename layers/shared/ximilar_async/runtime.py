"""Clients and secrets the handlers build once per cold start, from settings.

Secrets come through Powertools parameters, cached for `SECRET_MAX_AGE` so a rotated token or key is
picked up without a redeploy; boto3 and pynamodb follow botocore's configuration (`AWS_ENDPOINT_URL`
included), which is how the local stack points them at moto.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Final

from aws_lambda_powertools.utilities import parameters

from ximilar_async.dal.models import bind_tables
from ximilar_async.dal.repository import Repository
from ximilar_async.settings import CommonSettings
from ximilar_async.ximilar import XimilarClient, make_session

SECRET_MAX_AGE: Final = 300  # seconds
CONNECT_TIMEOUT_SECONDS: Final = 3.05


def repository(settings: CommonSettings) -> Repository:
    tables = bind_tables(settings.images_table, settings.requests_table)
    return Repository(tables, settings.index_shards, timedelta(days=settings.request_retention_days))


def api_token(settings: CommonSettings) -> str:
    return str(parameters.get_parameter(settings.ximilar_token_parameter, decrypt=True, max_age=SECRET_MAX_AGE))


def signing_key(secret_arn: str) -> bytes:
    return str(parameters.get_secret(secret_arn, max_age=SECRET_MAX_AGE)).encode()


def ximilar_client(settings: CommonSettings) -> XimilarClient:
    """The client, without a token yet: handlers call `set_token(api_token(settings))` per invocation."""
    return XimilarClient(
        settings.ximilar_api_url,
        make_session(token=""),
        timeout=(CONNECT_TIMEOUT_SECONDS, settings.ximilar_read_timeout_seconds),
        records_per_request=settings.records_per_request,
    )
