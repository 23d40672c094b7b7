"""The settings.yaml schema (a public contract written through Helm values)."""

from __future__ import annotations

import ipaddress
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

    @field_validator("algorithms")
    @classmethod
    def _known_algorithms(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [a for a in v if a not in VERIFY_ALGORITHMS]
        if bad or not v:
            raise ValueError(f"algorithms must be a non-empty subset of {list(VERIFY_ALGORITHMS)}")
        return v

    @model_validator(mode="after")
    def _urls(self) -> GitLabInstance:
        if self.issuer.endswith("/"):
            raise ValueError("issuer must not end with '/' (it must equal the iss claim exactly)")
        check_url(self.issuer, allow_http=self.allow_insecure_http, what="gitlab issuer")
        if self.jwks_uri:
            check_url(self.jwks_uri, allow_http=self.allow_insecure_http, what="jwksUri")
        return self

    @property
    def discovery_url(self) -> str:
        """Where the instance's OIDC discovery document lives."""
        return self.issuer + "/.well-known/openid-configuration"


class TokenSettings(_Model):
    """Defaults and caps for minted tokens and limits for incoming ones."""

    lifetime: int = Field(900, ge=60, le=43200)
    max_lifetime: int = Field(3600, ge=60, le=43200)
    audience: str = "sts.amazonaws.com"
    algorithm: Literal["RS256", "ES256"] = "RS256"
    leeway: int = Field(30, ge=0, le=300)
    max_token_bytes: int = Field(16384, ge=1024, le=65536)

    @model_validator(mode="after")
    def _caps(self) -> TokenSettings:
        if self.lifetime > self.max_lifetime:
            raise ValueError("tokens.lifetime must not exceed tokens.maxLifetime")
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
    refetch_interval_seconds: float = Field(10.0, ge=0)
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


class Settings(_Model):
    """Everything in settings.yaml."""

    issuer: str
    gitlab: tuple[GitLabInstance, ...] = Field(min_length=1)
    tokens: TokenSettings = TokenSettings()
    sts: StsSettings = StsSettings()
    jwks: JwksSettings = JwksSettings()
    keys: KeySettings = KeySettings()
    guard: tuple[GuardRule, ...] = ()

    @model_validator(mode="after")
    def _check(self) -> Settings:
        check_url(self.issuer, what="issuer")
        if self.issuer.endswith("/"):
            raise ValueError("issuer must not end with '/'")
        if urlsplit(self.issuer).port is not None and not _is_loopback(urlsplit(self.issuer).hostname):
            raise ValueError("issuer must not carry a port (AWS IAM OIDC providers reject one)")
        seen: set[str] = set()
        for g in self.gitlab:
            if g.issuer in seen:
                raise ValueError(f"gitlab issuer {g.issuer} is listed twice")
            seen.add(g.issuer)
        return self

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
