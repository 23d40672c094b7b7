"""The local STS's picture of an AWS account: IAM OIDC providers and roles (not AWS).

The YAML file it reads::

    account: "123456789012"          # default account of providers (optional)
    jwksCacheSeconds: 60              # how long fetched discovery/JWKS are reused (optional)
    caBundle: /path/ca.pem            # trust for https discovery/JWKS fetches (optional)
    providers:
      - url: https://sts.example.com  # = the token's iss, like IAM CreateOpenIDConnectProvider
        clientIds: [sts.amazonaws.com]
        account: "123456789012"       # optional, else the top-level account
    roles:
      - arn: arn:aws:iam::123456789012:role/deploy
        maxSessionDuration: 3600      # 3600-43200 like IAM, default 3600
        trustPolicy: {...}            # JSON object, or a JSON string
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from gitlab_sts.testing.sts_policy import TrustPolicy, parse_trust_policy

DEFAULT_ACCOUNT = "123456789012"
_ACCOUNT = re.compile(r"^\d{12}$")
# IAM role ARN: optional path, name of [\w+=,.@-]{1,64}.
ROLE_ARN = re.compile(r"^arn:aws:iam::(\d{12}):role/((?:[\w+=,.@-]+/)*)([\w+=,.@-]{1,64})$", re.ASCII)


class StsConfigError(ValueError):
    """A local STS configuration that cannot be used."""


def is_loopback_host(host: str | None) -> bool:
    """True for localhost and loopback IP literals (the only hosts plain http is allowed for)."""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_fetch_url(url: str, what: str) -> None:
    """Refuse URLs the local STS would not fetch: https, or http on loopback only."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and is_loopback_host(parts.hostname):
        return
    raise StsConfigError(f"{what} must be an https URL (http only on loopback): {url!r}")


@dataclass(frozen=True)
class Provider:
    """An IAM OIDC identity provider registered in one account."""

    url: str
    client_ids: tuple[str, ...]
    account: str

    @property
    def host_path(self) -> str:
        """The URL without its scheme: the ARN suffix and the condition-key prefix."""
        return self.url.split("://", 1)[1]

    @property
    def arn(self) -> str:
        """arn:aws:iam::<acct>:oidc-provider/<url without scheme>."""
        return f"arn:aws:iam::{self.account}:oidc-provider/{self.host_path}"


@dataclass(frozen=True)
class Role:
    """An IAM role with its trust policy."""

    arn: str
    account: str
    name: str
    max_session_duration: int
    trust_policy: TrustPolicy


@dataclass(frozen=True)
class StsConfig:
    """Everything the local STS knows about its accounts."""

    providers: tuple[Provider, ...] = ()
    roles: tuple[Role, ...] = ()
    jwks_cache_seconds: float = 60.0
    ca_bundle: str | None = None
    _roles_by_arn: dict[str, Role] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._roles_by_arn.update({r.arn: r for r in self.roles})

    def role(self, arn: str) -> Role | None:
        """The role with exactly this ARN, if registered."""
        return self._roles_by_arn.get(arn)

    def provider(self, account: str, url: str) -> Provider | None:
        """The provider registered in an account for exactly this URL (case-sensitive, like IAM)."""
        for p in self.providers:
            if p.account == account and p.url == url:
                return p
        return None


def _provider(raw: Any, default_account: str, index: int) -> Provider:
    where = f"providers[{index}]"
    if not isinstance(raw, dict):
        raise StsConfigError(f"{where} must be a mapping")
    url = raw.get("url")
    if not isinstance(url, str) or not url:
        raise StsConfigError(f"{where}.url must be a non-empty string")
    check_fetch_url(url, f"{where}.url")
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise StsConfigError(f"{where}.url must not hold a query or fragment (IAM refuses them)")
    client_ids = raw.get("clientIds")
    if (not isinstance(client_ids, list) or not 1 <= len(client_ids) <= 100
            or not all(isinstance(c, str) and 1 <= len(c) <= 255 for c in client_ids)):
        raise StsConfigError(f"{where}.clientIds must list 1-100 strings of 1-255 characters")
    account = str(raw.get("account", default_account))
    if not _ACCOUNT.match(account):
        raise StsConfigError(f"{where}.account must be 12 digits")
    return Provider(url=url, client_ids=tuple(client_ids), account=account)


def _role(raw: Any, index: int) -> Role:
    where = f"roles[{index}]"
    if not isinstance(raw, dict):
        raise StsConfigError(f"{where} must be a mapping")
    arn = raw.get("arn")
    match = ROLE_ARN.match(arn) if isinstance(arn, str) else None
    if match is None or not isinstance(arn, str):
        raise StsConfigError(f"{where}.arn must be an IAM role ARN (arn:aws:iam::<12 digits>:role/<name>)")
    max_session = raw.get("maxSessionDuration", 3600)
    if isinstance(max_session, bool) or not isinstance(max_session, int) or not 3600 <= max_session <= 43200:
        raise StsConfigError(f"{where}.maxSessionDuration must be an integer 3600-43200 (IAM's range)")
    policy_raw = raw.get("trustPolicy")
    if isinstance(policy_raw, str):
        try:
            policy_raw = json.loads(policy_raw)
        except json.JSONDecodeError as exc:
            raise StsConfigError(f"{where}.trustPolicy is not JSON: {exc}") from None
    try:
        policy = parse_trust_policy(policy_raw)
    except ValueError as exc:
        raise StsConfigError(f"{where}.trustPolicy: {exc}") from None
    return Role(arn=arn, account=match.group(1), name=match.group(3),
                max_session_duration=max_session, trust_policy=policy)


def parse_config(raw: Any) -> StsConfig:
    """Build a configuration from its YAML/JSON data, refusing anything IAM would refuse."""
    if not isinstance(raw, dict):
        raise StsConfigError("the local STS configuration must be a mapping")
    account = str(raw.get("account", DEFAULT_ACCOUNT))
    if not _ACCOUNT.match(account):
        raise StsConfigError("account must be 12 digits")
    providers = tuple(_provider(p, account, i) for i, p in enumerate(raw.get("providers") or []))
    seen: set[tuple[str, str]] = set()
    for p in providers:
        if (p.account, p.url) in seen:
            raise StsConfigError(f"provider {p.url} is registered twice in account {p.account}")
        seen.add((p.account, p.url))
    roles = tuple(_role(r, i) for i, r in enumerate(raw.get("roles") or []))
    if len({r.arn for r in roles}) != len(roles):
        raise StsConfigError("a role ARN is listed twice")
    cache = raw.get("jwksCacheSeconds", 60)
    if isinstance(cache, bool) or not isinstance(cache, int | float) or cache < 0:
        raise StsConfigError("jwksCacheSeconds must be a number >= 0")
    ca_bundle = raw.get("caBundle")
    if ca_bundle is not None and not isinstance(ca_bundle, str):
        raise StsConfigError("caBundle must be a file path")
    return StsConfig(providers=providers, roles=roles, jwks_cache_seconds=float(cache), ca_bundle=ca_bundle)


def load_config(path: str | Path) -> StsConfig:
    """Read and check a local STS YAML file."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise StsConfigError(f"cannot read {path}: {exc}") from None
    return parse_config(raw)
