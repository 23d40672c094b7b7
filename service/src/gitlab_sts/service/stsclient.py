"""AWS STS AssumeRoleWithWebIdentity for POST /v1/credentials: an unsigned boto3 call with bounded retries."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

# boto3/botocore ship no type information; their objects are Any here.
import boto3  # type: ignore[import-untyped]
from botocore import UNSIGNED  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

from gitlab_sts.core.errors import ExchangeError, InvalidRequest, InvalidTarget, TemporarilyUnavailable
from gitlab_sts.core.timefmt import rfc3339

# Worth another try: the IdP (our own JWKS) was unreachable from STS, STS throttled us, or STS itself failed.
RETRYABLE_CODES = frozenset({
    "IDPCommunicationError", "Throttling", "ThrottlingException", "RequestLimitExceeded",
    "ServiceUnavailable", "InternalFailure", "InternalError",
})
_REQUEST_CODES = frozenset({"ValidationError", "MalformedPolicyDocument", "PackedPolicyTooLarge"})


@dataclass(frozen=True)
class StsCredentials:
    """Temporary credentials and what STS said about the session."""

    access_key_id: str
    secret_access_key: str
    session_token: str
    expiration: datetime
    assumed_role_arn: str
    subject: str
    source_identity: str | None

    def credential_process(self) -> dict[str, Any]:
        """The AWS credential_process JSON answer (Version 1)."""
        return {"Version": 1, "AccessKeyId": self.access_key_id, "SecretAccessKey": self.secret_access_key,
                "SessionToken": self.session_token,
                "Expiration": rfc3339(self.expiration)}


class StsError(Exception):
    """STS refused or could not be reached; `code` is STS's error code (or a transport error name)."""

    def __init__(self, code: str, message: str, *, status: int | None, retryable: bool) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.retryable = retryable

    def exchange_error(self, role_arn: str, /, **details: Any) -> ExchangeError:
        """The RFC 6749 error the service answers with for this STS failure (details go into its body)."""
        said = f"AWS STS answered {self.code}: {self.message}"
        if self.retryable:
            return TemporarilyUnavailable(f"AWS STS is unavailable for {role_arn} ({said})", reason="sts_unavailable",
                                          sts_error=self.code, **details)
        if self.code in _REQUEST_CODES:
            return InvalidRequest(f"AWS STS refused the request for {role_arn} ({said})", reason="sts_invalid_request",
                                  sts_error=self.code, **details)
        if self.code == "AccessDenied":
            hint = ("the role's trust policy must trust this service's OIDC provider and this binding's sub "
                    "(see the binding's status.trustPolicy)")
        else:
            hint = ("the role's account needs an IAM OIDC provider for this service's issuer URL, with the "
                    "token's audience among its client IDs")
        return InvalidTarget(f"AWS STS refused {role_arn} ({said}); {hint}", reason="sts_refused",
                             sts_error=self.code, **details)


def _classify(exc: Exception) -> StsError:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or "Unknown")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        retryable = code in RETRYABLE_CODES or (isinstance(status, int) and status >= 500)
        return StsError(code, str(error.get("Message") or ""), status=status, retryable=retryable)
    # Connection refused, timeouts, TLS and DNS failures reach us as BotoCoreError subclasses.
    return StsError(type(exc).__name__, str(exc), status=None, retryable=True)


class StsClient:
    """One STS endpoint; thread-safe (botocore clients are), one instance per process is enough."""

    def __init__(self, endpoint: str, *, region: str = "us-east-1", timeout: float = 5.0,
                 ca_bundle: str | None = None, attempts: int = 3, backoff: float = 0.2,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.endpoint = endpoint
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self._sleep = sleep
        config = Config(signature_version=UNSIGNED, region_name=region, connect_timeout=timeout,
                        read_timeout=timeout, retries={"mode": "standard", "total_max_attempts": 1})
        # Creating a boto3 client is slow; do it once. Retries are ours, so that only the codes above retry.
        self._lock = threading.Lock()
        self._client: Any = None
        self._options: dict[str, Any] = {"endpoint_url": endpoint, "region_name": region, "config": config,
                                         "verify": ca_bundle if ca_bundle else True}

    def _sts(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = boto3.session.Session().client("sts", **self._options)
            return self._client

    def assume_role_with_web_identity(self, role_arn: str, token: str, session_name: str,
                                      duration: int | None = None) -> StsCredentials:
        """Call AssumeRoleWithWebIdentity, retrying transient failures; raises StsError."""
        params: dict[str, Any] = {"RoleArn": role_arn, "RoleSessionName": session_name, "WebIdentityToken": token}
        if duration is not None:
            params["DurationSeconds"] = duration
        for attempt in range(1, self.attempts + 1):
            try:
                answer = self._sts().assume_role_with_web_identity(**params)
            except (ClientError, BotoCoreError) as exc:
                error = _classify(exc)
                if not error.retryable or attempt == self.attempts:
                    raise error from None
                self._sleep(self.backoff * 2 ** (attempt - 1) * random.uniform(0.5, 1.0))  # noqa: S311
                continue
            creds = answer["Credentials"]
            return StsCredentials(
                access_key_id=creds["AccessKeyId"], secret_access_key=creds["SecretAccessKey"],
                session_token=creds["SessionToken"], expiration=creds["Expiration"],
                assumed_role_arn=answer.get("AssumedRoleUser", {}).get("Arn", ""),
                subject=answer.get("SubjectFromWebIdentityToken", ""), source_identity=answer.get("SourceIdentity"))
        raise AssertionError("unreachable")  # pragma: no cover
