"""The settings.yaml schema (a public contract written through Helm values)."""

from __future__ import annotations

import ipaddress
from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from gitlab_sts.core.errors import ConfigError

SIGNING_ALGORITHMS = ("RS256", "ES256")
# What a GitLab instance may sign with; GitLab itself uses RS256 only.
VERIFY_ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512")


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, alias_generator=to_camel
    )


def _is_loopback(host: str | None) -> bool:
    if host in ("localhost",):
        return True
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, *, allow_http: bool = False, what: str = "URL") -> str:
    """Return url if it is https (or http on loopback / when allowed), without query or fragment."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise ValueError(f"{what} must be an absolute https:// URL, got {url!r}")
    if parts.scheme == "http" and not (allow_http or _is_loopback(parts.hostname)):
        raise ValueError(f"{what} must use https:// (http is accepted only on loopback), got {url!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"{what} must not have a query or fragment, got {url!r}")
    return url


def check_issuer(url: str, *, allow_http: bool = False, what: str = "issuer") -> str:
    """check_url, and no trailing '/': an issuer must equal the tokens' iss exactly."""
    check_url(url, allow_http=allow_http, what=what)
    if url.endswith("/"):
        raise ValueError(f"{what} must not end with '/' (it must equal the token's iss exactly)")
    return url


class GitLabInstance(_Model):
    """One trusted GitLab instance."""

    issuer: str
    audiences: tuple[str, ...] = Field(min_length=1)
    jwks_uri: str | None = None
    ca_bundle: str | None = None
    # A pinned JWKS for air-gapped instances; when set, nothing is fetched.
    jwks: dict[str, Any] | None = None
    algorithms: tuple[str, ...] = ("RS256",)
    allow_insecure_http: bool = False
    # Accept the original CI_JOB_JWT (GitLab 12.10-16.x): iss is the bare host, no aud, sub job_<id>.
    legacy_job_jwt: bool = False
    # When the pinned jwks was copied; /readyz and a metric warn once it is older than pinnedMaxAgeDays.
    pinned_at: datetime | None = None
    pinned_max_age_days: int = Field(90, ge=1, le=3650)
    # An internal URL the operator refreshes the pinned jwks from (with caBundle); the service then uses the
    # operator's copy whenever it was fetched after pinnedAt (see core.pinnedjwks and docs/private-gitlab.md).
    pinned_jwks_source: str | None = None

    @field_validator("algorithms")
    @classmethod
    def _known_algorithms(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [a for a in v if a not in VERIFY_ALGORITHMS]
        if bad or not v:
            raise ValueError(f"algorithms must be a non-empty subset of {list(VERIFY_ALGORITHMS)}")
        return v

    @model_validator(mode="after")
    def _urls(self) -> GitLabInstance:
        check_issuer(self.issuer, allow_http=self.allow_insecure_http, what="gitlab issuer")
        if self.jwks_uri:
            check_url(self.jwks_uri, allow_http=self.allow_insecure_http, what="jwksUri")
        if self.pinned_at is not None:
            if self.jwks is None:
                raise ValueError("pinnedAt needs a pinned jwks")
            if self.pinned_at.tzinfo is None:
                raise ValueError("pinnedAt must carry a time zone (e.g. 2025-01-31T00:00:00Z)")
        if self.pinned_jwks_source is not None:
            if self.jwks is None:
                raise ValueError("pinnedJwksSource refreshes a pinned key set: it needs jwks (the copy used until "
                                 "the operator's first fetch)")
            check_url(self.pinned_jwks_source, allow_http=self.allow_insecure_http, what="pinnedJwksSource")
        return self

    @property
    def legacy_issuer(self) -> str | None:
        """The bare host CI_JOB_JWT carries as iss, when legacyJobJwt is on."""
        return urlsplit(self.issuer).hostname if self.legacy_job_jwt else None

    @property
    def discovery_url(self) -> str:
        """Where the instance's OIDC discovery document lives."""
        return self.issuer + "/.well-known/openid-configuration"


class ReplayStoreSettings(_Model):
    """A Redis/Valkey server that makes tokens.replayProtection hold across every replica and worker."""

    # A file holding the redis:// or rediss:// URL (a mounted Secret: the URL may carry a password).
    url_file: str
    timeout_seconds: float = Field(0.5, gt=0, le=10)


class TokenSettings(_Model):
    """Defaults and caps for minted tokens and limits for incoming ones."""

    lifetime: int = Field(900, ge=60, le=43200)
    max_lifetime: int = Field(3600, ge=60, le=43200)
    audience: str = "sts.amazonaws.com"
    # AWS STS accepts both. RS256 only for a verifier that knows RSA alone (Microsoft Entra workload identity
    # federation refuses ES256). A change goes through a key rotation (core.keys.plan), never at once.
    algorithm: Literal["RS256", "ES256"] = "ES256"
    leeway: int = Field(30, ge=0, le=300)
    max_token_bytes: int = Field(16384, ge=1024, le=65536)
    # Refuse GitLab tokens issued longer ago than this (None: only exp limits them).
    max_source_age_seconds: int | None = Field(None, ge=1, le=86400)
    # Accept each GitLab token (iss + jti) once: per worker process in memory, or once in the whole deployment
    # with replay_store (service/replaystore.py); see core.replay.
    replay_protection: bool = False
    replay_store: ReplayStoreSettings | None = None

    @model_validator(mode="after")
    def _caps(self) -> TokenSettings:
        if self.lifetime > self.max_lifetime:
            raise ValueError("tokens.lifetime must not exceed tokens.maxLifetime")
        if self.replay_store is not None and not self.replay_protection:
            raise ValueError("tokens.replayStore needs tokens.replayProtection: true")
        return self


class StsSettings(_Model):
    """Where /v1/credentials sends AssumeRoleWithWebIdentity."""

    endpoint: str = "https://sts.us-east-1.amazonaws.com"
    region: str = "us-east-1"
    timeout: float = Field(5.0, gt=0, le=60)
    ca_bundle: str | None = None


class JwksSettings(_Model):
    """How GitLab key sets are cached."""

    min_cache_seconds: int = Field(60, ge=0)
    max_cache_seconds: int = Field(86400, ge=1)
    max_stale_seconds: int = Field(21600, ge=0)
    # An unknown kid waits for the next fetch up to this long (service.jwks.JwksCache.refresh).
    refetch_interval_seconds: float = Field(1.0, ge=0, le=60)
    timeout_seconds: float = Field(5.0, gt=0, le=60)


class KeySettings(_Model):
    """Signing-key rotation policy (applied by the operator)."""

    rotation_period: int = Field(7 * 86400, ge=3600)
    pre_publication: int = Field(86400, ge=3600)
    clock_skew: int = Field(300, ge=0)


class GuardRule(_Model):
    """Which role ARNs the bindings of some namespaces may name."""

    namespaces: tuple[str, ...] = Field(min_length=1)
    accounts: tuple[str, ...] = ()
    role_arns: tuple[str, ...] = ()


class S3Publish(_Model):
    """Where the operator copies the discovery document and JWKS in S3 (or an S3-compatible store)."""

    bucket: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    region: str = Field(pattern=r"^[a-z0-9-]{2,32}$")
    prefix: str = ""
    # An S3-compatible endpoint (MinIO, a VPC endpoint, ...); default: AWS's regional endpoint.
    endpoint_url: str | None = None
    # The URL AWS reads (CloudFront or a custom domain); default: the bucket's virtual-hosted URL,
    # or endpointUrl/bucket/prefix (path style) when endpointUrl is set.
    public_url: str | None = None
    cache_control: str = "public, max-age=300"

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if v.startswith("/") or v.endswith("/") or "//" in v or any(c in v for c in "?#\\ "):
            raise ValueError("prefix must be a relative key prefix without leading or trailing '/'")
        return v

    @model_validator(mode="after")
    def _urls(self) -> S3Publish:
        if self.endpoint_url:
            check_url(self.endpoint_url, what="publish.s3.endpointUrl")
        if self.public_url:
            check_url(self.public_url, what="publish.s3.publicUrl")
        elif "." in self.bucket and not self.endpoint_url:
            # *.s3.<region>.amazonaws.com's certificate does not cover dotted bucket names.
            raise ValueError("a bucket name with dots needs publicUrl (e.g. CloudFront): "
                             "its virtual-hosted URL has no valid TLS certificate")
        return self

    @property
    def url(self) -> str:
        """The public URL the objects are read from (must equal the settings issuer)."""
        if self.public_url:
            return self.public_url.rstrip("/")
        suffix = "/" + self.prefix if self.prefix else ""
        if self.endpoint_url:
            return f"{self.endpoint_url.rstrip('/')}/{self.bucket}{suffix}"
        return f"https://{self.bucket}.s3.{self.region}.amazonaws.com{suffix}"

    def key(self, name: str) -> str:
        """The object key of a document below .well-known/."""
        return f"{self.prefix}/.well-known/{name}" if self.prefix else f".well-known/{name}"


class PublishSettings(_Model):
    """Who serves the issuer's discovery document and JWKS to AWS."""

    # The exchange service's own routes (behind the chart's Ingress); the service serves them regardless.
    ingress: bool = True
    s3: S3Publish | None = None

    @model_validator(mode="after")
    def _some(self) -> PublishSettings:
        if not self.ingress and self.s3 is None:
            raise ValueError("publish needs ingress: true or an s3 target")
        return self

    @property
    def via(self) -> tuple[str, ...]:
        """The publishing targets in use."""
        return (("ingress",) if self.ingress else ()) + (("s3",) if self.s3 else ())


class Settings(_Model):
    """Everything in settings.yaml."""

    issuer: str
    gitlab: tuple[GitLabInstance, ...] = Field(min_length=1)
    tokens: TokenSettings = TokenSettings()
    sts: StsSettings = StsSettings()
    jwks: JwksSettings = JwksSettings()
    keys: KeySettings = KeySettings()
    guard: tuple[GuardRule, ...] = ()
    publish: PublishSettings = PublishSettings()

    @model_validator(mode="after")
    def _check(self) -> Settings:
        check_issuer(self.issuer)
        if urlsplit(self.issuer).port is not None and not _is_loopback(urlsplit(self.issuer).hostname):
            raise ValueError("issuer must not carry a port (AWS IAM OIDC providers reject one)")
        seen: set[str] = set()
        for g in self.gitlab:
            if g.issuer in seen:
                raise ValueError(f"gitlab issuer {g.issuer} is listed twice")
            seen.add(g.issuer)
        hosts = [g.legacy_issuer for g in self.gitlab if g.legacy_issuer]
        if len(hosts) != len(set(hosts)):
            raise ValueError("legacyJobJwt is on for two gitlab instances with the same host: "
                             "a CI_JOB_JWT names only the host, so it could not tell them apart")
        if self.publish.s3 is not None and self.publish.s3.url != self.issuer:
            raise ValueError(f"issuer must equal the S3 publication URL {self.publish.s3.url} "
                             "(AWS reads discovery from the issuer URL); set publish.s3.publicUrl "
                             "for CloudFront or a custom domain")
        return self

    def legacy_instance(self, iss: str) -> GitLabInstance | None:
        """The instance with legacyJobJwt whose bare host equals iss (a CI_JOB_JWT), if any."""
        for g in self.gitlab:
            if g.legacy_issuer is not None and g.legacy_issuer == iss:
                return g
        return None

    def instance(self, issuer: str) -> GitLabInstance | None:
        """Return the trusted instance whose issuer equals iss exactly."""
        for g in self.gitlab:
            if g.issuer == issuer:
                return g
        return None

    @property
    def jwks_uri(self) -> str:
        """The public URL of our own JWKS."""
        return self.issuer + "/.well-known/jwks.json"


def format_validation_error(exc: ValidationError) -> str:
    """Render pydantic errors as 'dotted.field: message' lines."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def parse_settings(text: str, source: str = "settings.yaml") -> Settings:
    """Parse and validate settings YAML, raising ConfigError that names the field."""
    try:
        data = yaml.safe_load(text)
    # RecursionError: deeply nested flow collections exhaust the pure-Python parser's stack.
    except (yaml.YAMLError, RecursionError) as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {format_validation_error(exc)}") from None
