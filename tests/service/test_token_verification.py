"""Bad GitLab tokens over real HTTP: each is refused with a precise invalid_request and never echoed."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from gitlab_sts.core.jwtparse import b64url_encode as _b64
from tests.service.harness import Service


def _segments(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())


def _good_claims(service: Service, **overrides: Any) -> dict[str, Any]:
    from gitlab_sts.testing.gitlab import job_claims

    return job_claims(service.gitlab.issuer, service.url, environment="staging", environment_protected="false",
                      **overrides)


def _refused(service: Service, token: str, reason_words: str) -> dict[str, Any]:
    answer = service.exchange(token)
    assert answer.status_code == 400, answer.text
    body: dict[str, Any] = answer.json()
    assert body["error"] == "invalid_request"
    assert reason_words in body["error_description"]
    assert token not in answer.text
    return body


def test_forged_signature(service: Service) -> None:
    attacker = RSAKey.generate_key(2048, private=True)
    kid = service.gitlab.control()["ci_kid"]
    forged = jwt.encode({"alg": "RS256", "kid": kid}, _good_claims(service), attacker)
    _refused(service, forged, "signature is not valid")


def test_tampered_payload(service: Service) -> None:
    token = service.job_token(environment="staging", environment_protected="false")
    head, _, sig = token.split(".")
    payload = _b64(json.dumps(_good_claims(service, project_path="platform/other")).encode())
    _refused(service, f"{head}.{payload}.{sig}", "signature is not valid")


def test_alg_none(service: Service) -> None:
    token = _segments({"alg": "none", "typ": "JWT"}, _good_claims(service)) + "."
    _refused(service, token, "algorithm 'none' is not allowed")


def test_hs256_signed_with_the_public_key(service: Service) -> None:
    # The classic RS/HS confusion: HMAC keyed with the issuer's public key material.
    jwks = service.gitlab.jwks()
    public_pem = json.dumps(jwks["keys"][-1]).encode()
    signing_input = _segments({"alg": "HS256", "kid": jwks["keys"][-1]["kid"]}, _good_claims(service))
    signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    _refused(service, signing_input + "." + _b64(signature), "algorithm 'HS256' is not allowed")


def test_unknown_kid(service: Service) -> None:
    attacker = RSAKey.generate_key(2048, private=True)
    token = jwt.encode({"alg": "RS256", "kid": "not-a-gitlab-key"}, _good_claims(service), attacker)
    _refused(service, token, "key the GitLab instance does not publish")


def test_missing_kid_with_several_published_keys(service: Service) -> None:
    # The fake GitLab publishes two keys, like GitLab (OIDC key + CI key): without kid, no choice.
    token = service.gitlab.token(service.url, header={"kid": None})
    _refused(service, token, "no 'kid'")


@pytest.mark.parametrize("member", ["jku", "x5u", "jwk", "crit"])
def test_key_pointing_headers_are_refused(service: Service, member: str) -> None:
    header: dict[str, Any] = {
        "jku": {"jku": "http://127.0.0.1:1/keys"}, "x5u": {"x5u": "http://127.0.0.1:1/cert"},
        "jwk": {"jwk": {"kty": "RSA"}}, "crit": {"crit": ["urn:example:x"], "urn:example:x": True},
    }[member]
    token = service.gitlab.token(service.url, header=header, environment="staging")
    _refused(service, token, member)


def test_wrong_issuer_is_refused_without_fetching(service: Service) -> None:
    token = service.gitlab.token(service.url, iss="https://evil.example.com")
    _refused(service, token, "not a trusted GitLab instance")


@pytest.mark.parametrize("aud", ["https://someone-else.example.com", ["a", "b"]])
def test_wrong_audience(service: Service, aud: Any) -> None:
    _refused(service, service.gitlab.token(aud), "audience is not accepted")


def test_audience_list_containing_ours_is_accepted(service: Service) -> None:
    token = service.gitlab.token([service.url, "other"], environment="staging", environment_protected="false")
    assert service.exchange(token).status_code == 200


def test_expired(service: Service) -> None:
    now = int(time.time())
    token = service.gitlab.token(service.url, iat=now - 4000, nbf=now - 4005, exp=now - 120)
    _refused(service, token, "expired")


def test_not_yet_valid(service: Service) -> None:
    now = int(time.time())
    token = service.gitlab.token(service.url, iat=now + 600, nbf=now + 600, exp=now + 4000)
    _refused(service, token, "not valid yet")


def test_oversized(service: Service) -> None:
    token = service.gitlab.token(service.url, padding="x" * 20000)
    _refused(service, token, "larger than")


def test_huge_body_is_refused_before_parsing(service: Service) -> None:
    import requests

    answer = requests.post(service.url + "/v1/token", data={"subject_token": "x" * 200_000}, timeout=10)
    assert answer.status_code == 413
    assert answer.json()["error"] == "invalid_request"


def test_huge_chunked_body_is_refused_not_truncated(service: Service) -> None:
    import requests

    # No Content-Length: werkzeug stops reading at the limit without an error; the service must still
    # answer 413 rather than parse the first 96 KiB as if they were the whole form.
    def chunks() -> Iterator[bytes]:
        yield b"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token="
        for _ in range(20):
            yield b"x" * 10_000

    answer = requests.post(service.url + "/v1/token", data=chunks(), timeout=10,
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert answer.status_code == 413, answer.text
    assert answer.json()["error"] == "invalid_request"


@pytest.mark.parametrize(("token", "words"), [
    pytest.param("not-a-jwt", "three dot-separated parts", id="one-part"),
    pytest.param("a.b", "three dot-separated parts", id="two-parts"),
    pytest.param("e30.e30.e30.e30", "three dot-separated parts", id="four-parts"),
    pytest.param("!!!.e30.e30", "not base64url", id="bad-base64"),
    pytest.param(_b64(b"not json") + ".e30.e30", "not valid JSON", id="bad-json"),
    pytest.param(_b64(b"[1]") + ".e30.e30", "not a JSON object", id="json-array"),
    pytest.param(_b64(b'{"alg":"RS256"}') + "." + _b64(b"\xff\xfe{}") + ".e30", "UTF-8", id="non-utf8"),
])
def test_malformed(service: Service, token: str, words: str) -> None:
    _refused(service, token, words)


def test_duplicate_claims_even_when_signed(service: Service) -> None:
    claims = json.dumps(_good_claims(service))
    payload = claims[:-1] + ', "project_path": "platform/other"}'
    _refused(service, service.gitlab.sign_raw(payload), "duplicate member 'project_path'")


@pytest.mark.parametrize(("claim", "value"), [
    ("ref_protected", True), ("project_id", 4321), ("runner_id", "12"), ("exp", "9999999999"),
    ("user_access_level", "superuser"), ("ref_type", "commit"),
])
def test_wrong_claim_types(service: Service, claim: str, value: Any) -> None:
    token = service.gitlab.token(service.url, **{claim: value})
    body = _refused(service, token, claim)
    assert "claim" in body["error_description"]


def test_missing_required_claim(service: Service) -> None:
    _refused(service, service.gitlab.token(service.url, project_id=None), "project_id")
