"""The secrets: the Ximilar token (SSM SecureString) and the webhook signing key (Secrets Manager), cached.

They come through Powertools parameters providers, cached for `SECRET_MAX_AGE` so a rotated token or key
is picked up without a redeploy. The webhook signing key is read in two versions, `AWSCURRENT` and
`AWSPREVIOUS`, so that tokens signed before a rotation stay valid for their lifetime (`SecretSigningKeys`,
the rotation rule `webhook_auth.WebhookAuth` asks per webhook). The providers are made per cold start,
not taken from Powertools' process-wide defaults, so that what a cold start configures
(`AWS_ENDPOINT_URL` included, which is how the local stack points boto3 and pynamodb at moto) is what
they use. Nothing read before a SnapStart snapshot is kept after a restore.

(Named `secret_store`, not `secrets`: the standard library's `secrets` is imported in this package.)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from aws_lambda_powertools.utilities.parameters import SecretsProvider, SSMProvider
from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError
from botocore.exceptions import ClientError

from ximilar_async import snapstart
from ximilar_async.coldstart import OnFirstUse, aws_client

SECRET_MAX_AGE: Final = 300  # seconds
# A token of an unknown key makes the keys be read again (a rotation may be younger than the cache),
# at most this often, so that forged key ids cannot turn into a Secrets Manager call each.
KEY_REFRESH_INTERVAL: Final = 30.0  # seconds


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
