"""gitlab-sts doctor against a correct issuer and broken ones, all served over TLS on loopback with a test CA."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gitlab_sts.core.keys import KeyRing, generate_key, render_keyring
from gitlab_sts.core.publishing import discovery_document
from gitlab_sts.doctor import PROBLEM, WARNING, Doctor, add_doctor_parser, main
from tests.doctor.conftest import IssuerCA, Route, TLSIssuer

NOW = datetime.now(UTC)
DISCOVERY = "/.well-known/openid-configuration"
JWKS = "/.well-known/jwks.json"


@pytest.fixture(scope="module")
def ring() -> KeyRing:
    """One signing key and one published ahead."""
    a = generate_key("ES256", created_at=NOW - timedelta(days=2), activate_at=NOW - timedelta(days=1),
                     retire_at=NOW + timedelta(days=6), remove_at=NOW + timedelta(days=7))
    b = generate_key("ES256", created_at=NOW - timedelta(hours=1), activate_at=NOW + timedelta(days=6),
                     retire_at=NOW + timedelta(days=13), remove_at=NOW + timedelta(days=14))
    return KeyRing((a, b))


def serve_good(issuer: TLSIssuer, ring: KeyRing) -> None:
    issuer.routes[DISCOVERY] = Route(discovery_document(issuer.url, "ES256"))
    issuer.routes[JWKS] = Route(ring.jwks(NOW))


def run(issuer: TLSIssuer, ca: IssuerCA, url: str | None = None, **kw: Any) -> Doctor:
    kw.setdefault("ca_bundle", str(ca.ca_file))
    kw.setdefault("allow_private", True)
    doctor = Doctor(url or issuer.url, now=NOW, timeout=3, **kw)
    doctor.run()
    return doctor


def problems(doctor: Doctor) -> list[str]:
    return [f.message for f in doctor.findings if f.level == PROBLEM]


def test_correct_issuer_passes(issuer: TLSIssuer, test_ca: IssuerCA, ring: KeyRing, tmp_path: Path) -> None:
    serve_good(issuer, ring)
    (tmp_path / "keyset.json").write_text(render_keyring(ring))
    doctor = run(issuer, test_ca, keys_dir=tmp_path, expect_kids=(ring.keys[0].kid,))
    assert not doctor.failed, problems(doctor)
    assert not [f for f in doctor.findings if f.level == WARNING]
    text = "\n".join(f.message for f in doctor.findings)
    assert "every expected key is published (2)" in text and "over verified TLS" in text


def _mutate(issuer: TLSIssuer, ring: KeyRing, case: str) -> None:
    disc, jwks = issuer.routes[DISCOVERY], issuer.routes[JWKS]
    keys = jwks.body["keys"]
    if case == "issuer-mismatch":
        disc.body["issuer"] = issuer.url + "/"
    elif case == "no-jwks-uri":
        del disc.body["jwks_uri"]
    elif case == "jwks-uri-http":
        disc.body["jwks_uri"] = f"http://localhost:{issuer.port}{JWKS}"
    elif case == "jwks-404":
        del issuer.routes[JWKS]
    elif case == "no-cache-control":
        del jwks.headers["Cache-Control"]
    elif case == "private-member":
        keys[0]["d"] = "c2VjcmV0"
    elif case == "symmetric-key":
        keys.append({"kty": "oct", "kid": "hmac", "alg": "HS256", "k": "c2VjcmV0"})
    elif case == "ps256":
        keys[0]["alg"] = "PS256"
    elif case == "encryption-key":
        keys[0]["use"] = "enc"
    elif case == "no-kid":
        del keys[1]["kid"]
    elif case == "duplicate-kid":
        keys.append(dict(keys[0]))
    elif case == "too-many-keys":
        keys.extend({"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "kid": f"k{i}", "alg": "ES256"}
                    for i in range(100))
    elif case == "empty":
        keys.clear()
    elif case == "pending-key-missing":
        keys.pop(1)
    elif case == "not-json":
        issuer.routes[JWKS] = Route(b"<html>hello</html>", headers={"Content-Type": "text/html",
                                                                     "Cache-Control": "max-age=60"})
    elif case == "redirect":
        issuer.routes[DISCOVERY] = Route(b"", 302, {"Location": "https://elsewhere.example/x"})
    elif case == "server-error":
        issuer.routes[DISCOVERY] = Route({"message": "boom"}, 500)
    else:
        raise AssertionError(case)


@pytest.mark.parametrize(("case", "words"), [
    ("issuer-mismatch", "must be equal character for character"),
    ("no-jwks-uri", "has no jwks_uri"),
    ("jwks-uri-http", "jwks_uri http://localhost"),
    ("jwks-404", "answered HTTP 404"),
    ("no-cache-control", "the JWKS has no Cache-Control header"),
    ("private-member", "publishes PRIVATE key material (d)"),
    ("symmetric-key", "has kty 'oct'"),
    ("ps256", "is for 'PS256'"),
    ("encryption-key", "has use 'enc'"),
    ("no-kid", "has no kid while the JWKS holds several keys"),
    ("duplicate-kid", "more than once"),
    ("too-many-keys", "holds 102 EC keys; AWS reads at most 100"),
    ("empty", "the JWKS has no keys"),
    ("pending-key-missing", "signs from"),
    ("not-json", "is not JSON"),
    ("redirect", "answered a redirect (HTTP 302 to https://elsewhere.example/x)"),
    ("server-error", "answered HTTP 500"),
])
def test_broken_issuer_is_explained(issuer: TLSIssuer, test_ca: IssuerCA, ring: KeyRing, tmp_path: Path,
                                    case: str, words: str) -> None:
    serve_good(issuer, ring)
    _mutate(issuer, ring, case)
    (tmp_path / "keyset.json").write_text(render_keyring(ring))
    doctor = run(issuer, test_ca, keys_dir=tmp_path)
    assert doctor.failed
    assert any(words in p for p in problems(doctor)), problems(doctor)


def test_untrusted_certificate(issuer: TLSIssuer, test_ca: IssuerCA, ring: KeyRing) -> None:
    serve_good(issuer, ring)
    doctor = run(issuer, test_ca, ca_bundle=None)  # the public roots do not know the test CA
    assert any("TLS certificate of localhost is not trusted" in p for p in problems(doctor)), problems(doctor)


@pytest.mark.parametrize(("url", "kw", "words"), [
    ("http://localhost:{port}", {}, "must be an https:// URL"),
    ("https://127.0.0.1:{port}", {}, "uses an IP address"),
    ("https://localhost:{port}", {"allow_private": False}, "names a port"),
    ("https://localhost", {"allow_private": False}, "resolves to non-public addresses"),
    ("https://localhost:{port}?x=1", {}, "must not have a query"),
    ("https://no-such-host.invalid", {}, "does not resolve"),
])
def test_url_and_host_rules(issuer: TLSIssuer, test_ca: IssuerCA, ring: KeyRing, url: str, kw: dict[str, Any],
                            words: str) -> None:
    serve_good(issuer, ring)
    doctor = run(issuer, test_ca, url.format(port=issuer.port), **kw)
    assert any(words in p for p in problems(doctor)), problems(doctor)


def test_expect_kid_and_warnings(issuer: TLSIssuer, test_ca: IssuerCA, ring: KeyRing) -> None:
    serve_good(issuer, ring)
    issuer.routes[JWKS].headers["Cache-Control"] = "public, max-age=604800"
    doctor = run(issuer, test_ca, expect_kids=("not-there",))
    assert any("lacks key not-there" in p for p in problems(doctor))
    assert any("may be cached for 604800 s" in f.message for f in doctor.findings if f.level == WARNING)


def test_command_line(issuer: TLSIssuer, test_ca: IssuerCA, ring: KeyRing, capsys: pytest.CaptureFixture[str]) -> None:
    serve_good(issuer, ring)
    args = ["--issuer", issuer.url, "--ca-bundle", str(test_ca.ca_file), "--allow-private"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.strip().endswith("0 problem(s), 0 warning(s): AWS can use this issuer")
    assert main([*args, "--expect-kid", "missing-kid", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and any("missing-kid" in f["message"] for f in doc["findings"])
    # The lead engineer registers it in gitlab_sts/cli.py through add_doctor_parser.
    parser = argparse.ArgumentParser()
    add_doctor_parser(parser.add_subparsers())
    parsed = parser.parse_args(["doctor", "--issuer", "https://sts.example.com"])
    assert parsed.func.__name__ == "run_doctor" and parsed.allow_private is False
