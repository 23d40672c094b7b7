"""settings.yaml parsing: defaults, URL rules, caps, and errors that name the field."""

from __future__ import annotations

import pytest

from gitlab_sts.core.errors import ConfigError
from gitlab_sts.core.settings import Settings, check_url, parse_settings
from tests.core.conftest import DEEP_YAML

MINIMAL = """
issuer: https://sts.example.com
gitlab:
  - issuer: https://gitlab.example.com
    audiences: [https://sts.example.com]
"""


def test_minimal_settings_fill_defaults() -> None:
    s = parse_settings(MINIMAL)
    assert s.issuer == "https://sts.example.com"
    assert s.tokens.lifetime == 900
    assert s.tokens.max_lifetime == 3600
    assert s.tokens.audience == "sts.amazonaws.com"
    assert s.tokens.algorithm == "ES256"  # new installations sign with ES256 (issue #16)
    assert s.gitlab[0].algorithms == ("RS256",)
    assert s.jwks_uri == "https://sts.example.com/.well-known/jwks.json"
    assert s.gitlab[0].discovery_url == "https://gitlab.example.com/.well-known/openid-configuration"
    assert s.instance("https://gitlab.example.com") is s.gitlab[0]
    # iss must equal exactly: no normalising of a trailing slash or case.
    assert s.instance("https://gitlab.example.com/") is None
    assert s.instance("https://GITLAB.example.com") is None


def test_camel_case_fields_are_read() -> None:
    s = parse_settings(MINIMAL + """
tokens: {lifetime: 600, maxLifetime: 1200, maxTokenBytes: 2048}
keys: {rotationPeriod: 7200, prePublication: 3600, clockSkew: 10}
sts: {endpoint: https://sts.eu-west-1.amazonaws.com, region: eu-west-1}
guard: [{namespaces: [team-a], accounts: ["123456789012"]}]
""")
    assert (s.tokens.lifetime, s.tokens.max_lifetime, s.tokens.max_token_bytes) == (600, 1200, 2048)
    assert (s.keys.rotation_period, s.keys.pre_publication, s.keys.clock_skew) == (7200, 3600, 10)
    assert s.sts.region == "eu-west-1"
    assert s.guard[0].accounts == ("123456789012",)


@pytest.mark.parametrize(("extra", "field"), [
    ("tokens: {lifetime: 7200, maxLifetime: 3600}", "tokens"),
    ("tokens: {lifetime: 10}", "tokens.lifetime"),
    ("tokens: {leeway: 301}", "tokens.leeway"),
    ("tokens: {algorithm: HS256}", "tokens.algorithm"),
    ("tokens: {maxTokenBytes: 100}", "tokens.maxTokenBytes"),
    ("tokens: {lifetim: 900}", "tokens.lifetim"),
    ("keys: {prePublication: 60}", "keys.prePublication"),
    ("sts: {timeout: 0}", "sts.timeout"),
    ("guard: [{namespaces: []}]", "guard.0.namespaces"),
    ("unknown: 1", "unknown"),
], ids=["lifetime-over-cap", "lifetime-too-short", "leeway-too-large", "hs256-signing", "tiny-token-limit",
        "misspelt-field", "lead-under-an-hour", "zero-timeout", "guard-without-namespaces", "unknown-top-level"])
def test_bad_values_name_the_field(extra: str, field: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_settings(MINIMAL + extra)
    assert field in str(exc.value)
    assert str(exc.value).startswith("settings.yaml: ")


GITLAB_ENTRY = "gitlab:\n  - {{issuer: '{issuer}', audiences: [https://sts.example.com]{extra}}}\n"


@pytest.mark.parametrize(("issuer", "extra", "ok"), [
    ("https://gitlab.example.com", "", True),
    ("https://gitlab.example.com/", "", False),
    ("http://gitlab.example.com", "", False),
    ("http://gitlab.example.com", ", allowInsecureHttp: true", True),
    ("http://127.0.0.1:8080", "", True),
    ("http://localhost:8080", "", True),
    ("http://[::1]:8080", "", True),
    ("ftp://gitlab.example.com", "", False),
    ("gitlab.example.com", "", False),
    ("https://gitlab.example.com?x=1", "", False),
    ("https://gitlab.example.com/sub", "", True),
    ("https://gitlab.example.com", ", algorithms: [HS256]", False),
    ("https://gitlab.example.com", ", algorithms: [none]", False),
    ("https://gitlab.example.com", ", algorithms: []", False),
    ("https://gitlab.example.com", ", algorithms: [RS256, ES256]", True),
    ("https://gitlab.example.com", ", jwksUri: http://keys.example.com/jwks", False),
    ("https://gitlab.example.com", ", audiences: []", False),
], ids=["https", "trailing-slash", "http-remote", "http-allowed", "http-loopback-v4", "http-localhost",
        "http-loopback-v6", "ftp", "no-scheme", "query", "relative-path-instance", "hs256", "none", "no-algorithms",
        "rs-and-es", "http-jwks-uri", "no-audiences"])
def test_gitlab_instance_rules(issuer: str, extra: str, ok: bool) -> None:
    text = "issuer: https://sts.example.com\n" + GITLAB_ENTRY.format(issuer=issuer, extra=extra)
    if ok:
        assert parse_settings(text).gitlab[0].issuer == issuer
    else:
        with pytest.raises(ConfigError, match="gitlab"):
            parse_settings(text)


@pytest.mark.parametrize(("issuer", "ok"), [
    ("https://sts.example.com", True),
    ("https://sts.example.com/tenant-a", True),
    ("https://sts.example.com/", False),
    ("http://sts.example.com", False),
    ("https://sts.example.com:8443", False),
    ("http://127.0.0.1:8080", True),
    ("https://sts.example.com#frag", False),
], ids=["plain", "with-path", "trailing-slash", "http", "port", "loopback-port", "fragment"])
def test_own_issuer_rules(issuer: str, ok: bool) -> None:
    text = MINIMAL.replace("issuer: https://sts.example.com\n", f"issuer: {issuer!r}\n", 1)
    if ok:
        assert parse_settings(text).issuer == issuer
    else:
        with pytest.raises(ConfigError, match="issuer"):
            parse_settings(text)


def test_duplicate_gitlab_instances_refused() -> None:
    text = MINIMAL + "  - issuer: https://gitlab.example.com\n    audiences: [x]\n"
    with pytest.raises(ConfigError, match="listed twice"):
        parse_settings(text)


@pytest.mark.parametrize("text", ["issuer: [unclosed", "- a list", "just a string", "",
                                  "a: " + "[" * DEEP_YAML + "]" * DEEP_YAML],
                         ids=["bad-yaml", "list", "scalar", "empty", "deeply-nested"])
def test_not_a_mapping_or_not_yaml(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^custom\.yaml: "):
        parse_settings(text, source="custom.yaml")


def test_missing_required_fields_are_named() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_settings("tokens: {}")
    assert "issuer" in str(exc.value)
    assert "gitlab" in str(exc.value)


def test_settings_are_frozen() -> None:
    s = parse_settings(MINIMAL)
    with pytest.raises(ValueError, match="frozen"):
        s.issuer = "https://evil.example.com"  # type: ignore[misc]
    assert isinstance(s, Settings)


@pytest.mark.parametrize(("url", "allow_http", "ok"), [
    ("https://a.example", False, True),
    ("http://a.example", True, True),
    ("http://a.example", False, False),
    ("https://", False, False),
    ("file:///etc/passwd", False, False),
    ("https://a.example/x#y", False, False),
], ids=["https", "http-allowed", "http-refused", "no-host", "file", "fragment"])
def test_check_url(url: str, allow_http: bool, ok: bool) -> None:
    if ok:
        assert check_url(url, allow_http=allow_http) == url
    else:
        with pytest.raises(ValueError, match="URL"):
            check_url(url, allow_http=allow_http)
