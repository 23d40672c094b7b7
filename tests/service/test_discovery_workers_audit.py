"""AWS's view (discovery + JWKS read by an independent library), concurrency across workers, audit lines."""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor

import jwt as pyjwt
import requests

from tests.service.harness import Service


def test_minted_token_verifies_with_pyjwt_via_discovery(service: Service) -> None:
    discovery = requests.get(service.url + "/.well-known/openid-configuration", timeout=10).json()
    assert discovery["issuer"] == service.url
    assert discovery["jwks_uri"] == service.url + "/.well-known/jwks.json"
    assert {"RS256", "ES256"} <= set(discovery["id_token_signing_alg_values_supported"])
    for member in ("response_types_supported", "subject_types_supported", "claims_supported"):
        assert discovery[member]
    token = service.exchange(service.job_token(environment="staging", environment_protected="false"))
    minted = token.json()["access_token"]
    # Read keys the way AWS does: from jwks_uri, choosing by kid, accepting only the advertised algorithms.
    client = pyjwt.PyJWKClient(discovery["jwks_uri"], cache_keys=False)
    key = client.get_signing_key_from_jwt(minted)
    claims = pyjwt.decode(minted, key.key, algorithms=discovery["id_token_signing_alg_values_supported"],
                          audience="sts.amazonaws.com", issuer=discovery["issuer"],
                          options={"require": ["exp", "iat", "sub", "aud", "iss"]})
    assert claims["sub"] == "system:gitlabawsbinding:team-payments:deploy-staging"
    assert pyjwt.get_unverified_header(minted)["alg"] == "ES256"  # the harness key, as settings default to


def test_health_and_readiness(service: Service) -> None:
    assert requests.get(service.url + "/healthz", timeout=10).json() == {"status": "ok"}
    ready = requests.get(service.url + "/readyz", timeout=10).json()
    assert ready["ready"] is True
    assert ready["bindings"] == 4
    assert ready["signing_kid"]
    assert ready["development_keys"] is False


def test_concurrent_exchanges_across_workers_and_metrics_add_up(service: Service) -> None:
    def scrape() -> float:
        total = 0.0
        for line in requests.get(service.url + "/metrics", timeout=10).text.splitlines():
            if line.startswith('gitlab_sts_exchanges_total{endpoint="/v1/token",reason="ok",result="issued"}'):
                total += float(line.rsplit(" ", 1)[1])
        return total

    before = scrape()
    token = service.job_token(environment="staging", environment_protected="false")
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda _: service.exchange(token), range(80)))
    assert all(a.status_code == 200 for a in answers)
    jtis = {pyjwt.decode(a.json()["access_token"], options={"verify_signature": False})["jti"] for a in answers}
    assert len(jtis) == 80  # every minted token is distinct
    # Counters from both gunicorn workers are summed (prometheus multiprocess mode).
    assert scrape() - before == 80


def test_one_audit_line_per_decision_and_never_the_token(service: Service) -> None:
    token = service.job_token(environment="staging", environment_protected="false", job_id="990011")
    answer = service.exchange(token)
    minted = answer.json()["access_token"]
    denied_token = service.job_token(ref="nope", ref_protected="false", environment="production",
                                     environment_protected="true", job_id="990012")
    assert service.exchange(denied_token).status_code == 403

    def lines_for(job: str) -> list[dict[str, object]]:
        return [r for r in service.log_records() if r.get("event") == "exchange" and r.get("job_id") == job]

    from tests.service.harness import eventually

    issued = eventually(lambda: lines_for("990011"))
    denied = eventually(lambda: lines_for("990012"))
    assert len(issued) == 1 and len(denied) == 1
    line = issued[0]
    assert line["result"] == "issued"
    assert line["token_sha256"] == hashlib.sha256(token.encode()).hexdigest()
    assert line["binding"] == "team-payments/deploy-staging"
    assert line["jti"] == pyjwt.decode(minted, options={"verify_signature": False})["jti"]
    for key in ("project_path", "ref", "pipeline_id", "user_login", "role_arn"):
        assert key in line
    assert denied[0]["result"] == "denied" and denied[0]["reason"] == "rule_failed"
    log = service.log()
    for secret in (token, minted, denied_token, token.split(".")[2], minted.split(".")[2]):
        assert secret not in log
    json.dumps(line)
