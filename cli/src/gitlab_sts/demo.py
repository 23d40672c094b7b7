"""`gitlab-sts demo`: the whole exchange on one machine, printed step by step."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from gitlab_sts.core.bindingdoc import load_bindings_dir
from gitlab_sts.core.bindings import subject_for
from gitlab_sts.core.exchange import GRANT_TYPE, ISSUED_TOKEN_TYPE
from gitlab_sts.core.jwtparse import b64url_decode
from gitlab_sts.core.trustpolicy import trust_policy
from gitlab_sts.localserver import free_port, service_env, start_gunicorn, wait_ready
from gitlab_sts.testing import gitlab
from gitlab_sts.testing.sts import RunningSts, start_local_sts
from gitlab_sts.testing.sts_config import parse_config


def _step(n: int, title: str) -> None:
    print(f"\n== {n}. {title}")


def _post(url: str, fields: dict[str, str]) -> tuple[int, dict[str, Any]]:
    data = urllib.parse.urlencode(fields).encode()
    request = urllib.request.Request(url, data=data, method="POST")  # noqa: S310 (loopback URL)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _job_token(issuer: str, audience: str, **claims: Any) -> str:
    body = json.dumps({"aud": audience, "claims": claims}).encode()
    request = urllib.request.Request(issuer + gitlab.TOKEN_PATH, data=body, method="POST")  # noqa: S310
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return str(json.loads(response.read())["token"])


def _decode(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    head, payload, _ = token.split(".")
    return json.loads(b64url_decode(head)), json.loads(b64url_decode(payload))


def exchange_form(token: str, **extra: str) -> dict[str, str]:
    """The RFC 8693 form for a GitLab ID token."""
    return {"grant_type": GRANT_TYPE, "subject_token": token, "subject_token_type": ISSUED_TOKEN_TYPE, **extra}


def _sts_accounts(bindings: Path, issuer: str) -> dict[str, Any]:
    """The local STS's accounts: an OIDC provider for our issuer and, per example role, a trust policy.

    The release role deliberately trusts another binding's sub, to show an AWS-side refusal.
    """
    loaded = load_bindings_dir(bindings)
    accounts = sorted({b.spec.aws.role_arn.split(":")[4] for b in loaded.bindings})
    roles = []
    for b in loaded.bindings:
        policy = trust_policy(b, issuer, "sts.amazonaws.com")
        if b.name == "release-tags":
            policy = json.loads(json.dumps(policy).replace(b.subject, subject_for(b.namespace, "someone-else")))
        roles.append({"arn": b.spec.aws.role_arn, "maxSessionDuration": 3600, "trustPolicy": policy})
    return {"providers": [{"url": issuer, "clientIds": ["sts.amazonaws.com"], "account": a} for a in accounts],
            "roles": roles}


def run_demo(bindings: Path) -> int:
    """Run the demo; returns a process exit code."""
    started = time.monotonic()
    if not bindings.is_dir():
        print(f"demo: bindings folder {bindings} not found (run from the repository root)")
        return 2
    work = Path(tempfile.mkdtemp(prefix="gitlab-sts-demo-"))
    server, fake = gitlab.serve()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    scratch: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    sts: RunningSts | None = None
    try:
        _step(1, "A stand-in GitLab instance (OIDC discovery + JWKS, GitLab's claim set)")
        print(f"GitLab issuer: {fake.issuer}  (JWKS at {fake.issuer}{gitlab.JWKS_PATH})")

        _step(2, "The exchange service under gunicorn, trusting that GitLab")
        sts = start_local_sts(parse_config(_sts_accounts(bindings, url)))
        settings = work / "settings.yaml"
        settings.write_text(
            f"issuer: {url}\n"
            f"gitlab:\n  - issuer: {fake.issuer}\n    audiences: [{url}]\n"
            "tokens: {lifetime: 900, maxLifetime: 3600, audience: sts.amazonaws.com}\n"
            f"sts: {{endpoint: {sts.url}}}\n"
        )
        print(settings.read_text().rstrip())
        env, scratch = service_env(settings, bindings, None, host="127.0.0.1", port=port, workers=2,
                                   metrics_dir=work / "metrics")
        (work / "metrics").mkdir()
        process = start_gunicorn(env, stdout=subprocess.DEVNULL, stderr=(work / "service.log").open("wb"))
        ready = wait_ready(url, process)
        print(f"service ready at {url}: {ready['bindings']} bindings from {bindings}, "
              f"signing kid {ready['signing_kid']} ({ready['signing_alg']})")

        _step(3, "A deploy job on protected main, environment staging, gets its GitLab ID token")
        token = _job_token(fake.issuer, url, environment="staging", environment_protected="false",
                           deployment_tier="staging", environment_action="start")
        _, claims = _decode(token)
        print(json.dumps({k: claims[k] for k in ("iss", "aud", "project_path", "ref", "ref_protected",
                                                 "environment", "runner_id", "user_login")}, indent=2))

        _step(4, "The job exchanges it: POST /v1/token (RFC 8693)")
        status, answer = _post(url + "/v1/token", exchange_form(token))
        print(f"HTTP {status}: binding {answer.get('binding')} -> role {answer.get('role_arn')}, "
              f"expires_in {answer.get('expires_in')}s")
        if status != 200:
            print(json.dumps(answer, indent=2))
            return 1

        _step(5, "The minted token, decoded: what AWS STS will read")
        header, minted = _decode(answer["access_token"])
        print("header:", json.dumps(header))
        print(json.dumps(minted, indent=2))

        _step(6, "A feature-branch job asks for production: refused, with the reason")
        bad = _job_token(fake.issuer, url, ref="feature/login", ref_path="refs/heads/feature/login",
                         ref_protected="false", environment="production", environment_protected="true")
        status, denial = _post(url + "/v1/token", exchange_form(bad))
        print(f"HTTP {status}: {denial['error']}: {denial['error_description']}")

        _step(7, "POST /v1/explain shows every binding of the project for that job")
        _, explained = _post(url + "/v1/explain", exchange_form(bad))
        for row in explained["bindings"]:
            print(f"  {row['binding']}: {'MATCH' if row['matches'] else row['reason']}")

        _step(8, "Exchange latency (200 sequential exchanges over loopback HTTP)")
        timings = []
        for _ in range(200):
            t0 = time.perf_counter()
            status, _ = _post(url + "/v1/token", exchange_form(token))
            timings.append((time.perf_counter() - t0) * 1000)
            assert status == 200
        timings.sort()
        print(f"p50 {statistics.median(timings):.2f} ms, p99 {timings[int(len(timings) * 0.99) - 1]:.2f} ms")
        _step(9, "A role whose trust policy does not name this binding: STS refuses, the job sees why")
        status, refused = _post(url + "/v1/credentials", exchange_form(
            _job_token(fake.issuer, url, ref="v2.0.0", ref_type="tag", ref_path="refs/tags/v2.0.0")))
        print(f"HTTP {status}: {refused['error']}: {refused['error_description']}")
        if "trust_policy" in refused:
            print("the trust policy the role needs:\n" + json.dumps(refused["trust_policy"], indent=2))

        _step(10, "POST /v1/credentials: the service calls STS AssumeRoleWithWebIdentity (a local STS, not AWS)")
        status, creds = _post(url + "/v1/credentials", exchange_form(token))
        if status != 200:
            print(f"HTTP {status}: {json.dumps(creds, indent=2)}")
            return 1
        shown = {k: (v[:8] + "..." if k in ("SecretAccessKey", "SessionToken") else v) for k, v in creds.items()}
        print(f"HTTP {status} (credential_process JSON): {json.dumps(shown)}")

        print(f"\ndemo finished in {time.monotonic() - started:.1f} s")
        return 0
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)
        server.shutdown()
        if sts is not None:
            sts.close()
        shutil.rmtree(work, ignore_errors=True)
        if scratch is not None:  # the development key set holds a private key
            shutil.rmtree(scratch, ignore_errors=True)
