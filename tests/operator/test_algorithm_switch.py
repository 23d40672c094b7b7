"""Changing tokens.algorithm on a running installation never fails a job (issue #16), on one injected clock.

The parts run as they do in a cluster, minus the cluster: the operator's key rotation against KMock (a settings
change rolls the operator pod, so a new Runtime reads the new settings), the keys Secret copied into the
service's keys folder as the kubelet does, the exchange service (the Flask app with the clock injected, served
over loopback HTTP), and the local STS, which fetches discovery and JWKS from the service the way AWS does and
caches them for keys.prePublication (the longest a cache may hold a JWKS in this design).

Every token minted from the settings change until the old key is gone is checked against the JWKS a verifier
fetched before the new key signed (the earliest copy that holds the new key), against the JWKS fetched before
the change itself (for as long as a cache may keep it), and by the local STS, when minted and again at every
later step until it expires.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import requests
import yaml
from botocore.exceptions import ClientError
from joserfc import jwt
from joserfc.jwk import KeySet
from operator_helpers import T0, Clock
from werkzeug.serving import BaseWSGIServer, make_server

from gitlab_sts.core.bindingdoc import load_bindings_dir
from gitlab_sts.core.keys import KEYSET_FILE, generate_key
from gitlab_sts.core.settings import parse_settings
from gitlab_sts.core.trustpolicy import trust_policy
from gitlab_sts.localserver import free_port
from gitlab_sts.operator.config import OperatorConfig
from gitlab_sts.operator.keyrotation import STATUS_KEY
from gitlab_sts.operator.kube import Endpoint, KubeClient, path_for
from gitlab_sts.operator.runtime import Runtime, build_runtime
from gitlab_sts.service.app import create_app
from gitlab_sts.service.paths import ConfigPaths
from gitlab_sts.testing.gitlab import FakeGitLab, job_claims
from gitlab_sts.testing.sts import RunningSts, start_local_sts
from gitlab_sts.testing.sts_config import parse_config
from tests.sts.conftest import sts_client

GITLAB = "https://gitlab.example.com"
ROLE = "arn:aws:iam::111122223333:role/payments-deploy"
SECRET = path_for("v1", "secrets", "gitlab-sts", "gitlab-sts-keys")
STATUS = path_for("v1", "configmaps", "gitlab-sts", "gitlab-sts-status")
GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
LEAD = timedelta(seconds=86400)  # keys.prePublication
LIFETIME = 3600  # tokens.maxLifetime: minted tokens live this long
OVERLAP = timedelta(seconds=LIFETIME + 300)  # + keys.clockSkew: how long a retired key stays published
SECOND, HOUR = timedelta(seconds=1), timedelta(hours=1)
KTY = {"RS256": "RSA", "ES256": "EC"}
PUBLIC_MEMBERS = {"RSA": {"kty", "n", "e", "kid", "use", "alg"}, "EC": {"kty", "crv", "x", "y", "kid", "use", "alg"}}
BINDING = """\
apiVersion: gitlab-sts.io/v1alpha1
kind: GitLabAWSBinding
metadata: {name: deploy, namespace: team-payments}
spec:
  project: {path: platform/payments}
  rules: {refs: [main], protectedRef: true}
  aws:
    roleArn: arn:aws:iam::111122223333:role/payments-deploy
    tokenLifetimeSeconds: 3600
    sessionTags: [project_path, ref]
"""


def settings_yaml(issuer: str, gitlab: FakeGitLab, algorithm: str) -> str:
    return yaml.safe_dump({
        "issuer": issuer,
        "gitlab": [{"issuer": GITLAB, "audiences": [issuer], "jwks": gitlab.jwks()}],
        "tokens": {"lifetime": LIFETIME, "maxLifetime": LIFETIME, "algorithm": algorithm},
        "keys": {"rotationPeriod": 7 * 86400, "prePublication": int(LEAD.total_seconds()), "clockSkew": 300},
    })


@dataclass
class Minted:
    """A token the service minted, and what it was signed with."""

    token: str
    at: datetime
    kid: str
    alg: str
    exp: datetime


@dataclass
class Installation:
    """The operator, the service and the local STS of one installation, on one clock."""

    root: Path
    clock: Clock
    gitlab: FakeGitLab
    k8s: Any
    url: str = ""
    server: BaseWSGIServer | None = None
    app: Any = None
    operator: Runtime | None = None
    sts: RunningSts | None = None
    minted: list[Minted] = field(default_factory=list)

    def start_service(self, algorithm: str) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        (self.root / "keys").mkdir()
        (self.root / "bindings").mkdir()
        (self.root / "bindings" / "deploy.yaml").write_text(BINDING)
        (self.root / "settings.yaml").write_text(settings_yaml(self.url, self.gitlab, algorithm))
        paths = ConfigPaths(self.root / "settings.yaml", self.root / "bindings", self.root / "keys")
        self.app = create_app(paths, clock=lambda: self.clock.now.timestamp(), watch=False)
        self.server = make_server("127.0.0.1", port, self.app, threaded=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    async def set_algorithm(self, algorithm: str) -> None:
        """What `helm upgrade --set settings.tokens.algorithm=...` does: new settings, and the operator pod rolls."""
        text = settings_yaml(self.url, self.gitlab, algorithm)
        (self.root / "settings.yaml").write_text(text)
        self.reload()
        await self.stop_operator()
        self.operator = build_runtime(OperatorConfig(namespace="gitlab-sts", debounce_seconds=0), parse_settings(text),
                                      Endpoint(server=str(self.k8s.server.url)), clock=self.clock, new_key=generate_key)

    def reload(self) -> None:
        """What the service's file watcher does within a second of a change."""
        self.app.extensions["gitlab_sts"].state.reload(force=False)

    async def operator_pass(self, client: KubeClient) -> None:
        """One key check of the operator, then the kubelet's copy of the Secret into the service's keys folder."""
        assert self.operator is not None
        await self.operator.check_keys()
        data = (await client.get(SECRET))["data"][KEYSET_FILE]
        target = self.root / "keys" / KEYSET_FILE
        if not target.exists() or target.read_bytes() != base64.b64decode(data):
            tmp = target.with_suffix(".tmp")
            tmp.write_bytes(base64.b64decode(data))
            tmp.replace(target)  # atomic, as the kubelet swaps a Secret volume
            self.reload()

    def get(self, path: str) -> Any:
        answer = requests.get(self.url + path, timeout=10)
        assert answer.status_code == 200, (path, answer.text)
        return answer.json()

    def mint(self) -> Minted:
        """A job exchanges a fresh GitLab token at the current time; the exchange must succeed."""
        now = int(self.clock.now.timestamp())
        subject = self.gitlab.sign(job_claims(GITLAB, self.url, now=now, lifetime=2 * LIFETIME))
        answer = requests.post(self.url + "/v1/token", data={"grant_type": GRANT, "subject_token": subject,
                                                             "subject_token_type": JWT_TYPE}, timeout=10)
        assert answer.status_code == 200, answer.text
        token = answer.json()["access_token"]
        header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
        claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
        assert claims["exp"] - claims["iat"] == LIFETIME
        minted = Minted(token, self.clock.now, header["kid"], header["alg"], datetime.fromtimestamp(claims["exp"], UTC))
        self.minted.append(minted)
        return minted

    def assume_role(self, token: str) -> None:
        """AssumeRoleWithWebIdentity at the local STS (which reads our discovery and JWKS, and caches them)."""
        assert self.sts is not None
        try:
            answer = sts_client(self.sts.url).assume_role_with_web_identity(
                RoleArn=ROLE, RoleSessionName="switch-test", WebIdentityToken=token)
        except ClientError as exc:
            detail = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("x-gitlab-sts-local-detail")
            raise AssertionError(f"local STS refused a token at {self.clock.now}: {exc} ({detail})") from None
        assert answer["Credentials"]["AccessKeyId"].startswith("ASIA")

    def start_sts(self) -> None:
        loaded = load_bindings_dir(self.root / "bindings")
        policy = trust_policy(loaded.bindings[0], self.url, "sts.amazonaws.com")
        config = parse_config({
            "providers": [{"url": self.url, "clientIds": ["sts.amazonaws.com"], "account": "111122223333"}],
            "roles": [{"arn": ROLE, "maxSessionDuration": 3600, "trustPolicy": policy}],
            "jwksCacheSeconds": LEAD.total_seconds(),
        })
        self.sts = start_local_sts(config, clock=lambda: self.clock.now.timestamp())

    async def stop_operator(self) -> None:
        if self.operator is not None:
            await self.operator.client.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        if self.sts is not None:
            self.sts.close()


@pytest_asyncio.fixture
async def installation(k8s: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Installation]:
    monkeypatch.setenv("GITLAB_STS_STATE_DIR", str(tmp_path / "state"))  # last-good copies stay in the test
    gitlab = FakeGitLab()
    gitlab.issuer = GITLAB
    inst = Installation(tmp_path, Clock(), gitlab, k8s)
    yield inst
    await inst.stop_operator()
    inst.close()


def verify(token: str, jwks: dict[str, Any]) -> None:
    """Verify a token's signature with a JWKS as a verifier holding that copy would."""
    alg = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))["alg"]
    jwt.decode(token, KeySet.import_key_set(jwks), algorithms=[alg])  # raises when no key of the JWKS verifies it


def kids(jwks: dict[str, Any]) -> set[str]:
    return {k["kid"] for k in jwks["keys"]}


def check_jwks(jwks: dict[str, Any]) -> None:
    """Every published key is well formed for its type and carries no private member."""
    for key in jwks["keys"]:
        assert set(key) == PUBLIC_MEMBERS[key["kty"]], key.keys()
        assert key["use"] == "sig" and key["alg"] == {"RSA": "RS256", "EC": "ES256"}[key["kty"]]
        if key["kty"] == "EC":
            assert key["crv"] == "P-256"


async def key_status(client: KubeClient) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((await client.get(STATUS))["data"][STATUS_KEY])
    return doc


@pytest.mark.asyncio
@pytest.mark.parametrize(("old", "new"), [("RS256", "ES256"), ("ES256", "RS256")])
async def test_switching_the_algorithm_never_fails_a_job(installation: Installation, client: KubeClient,
                                                         old: str, new: str) -> None:
    inst, clock = installation, installation.clock
    inst.start_service(old)
    await inst.set_algorithm(old)  # the operator as installed
    await inst.operator_pass(client)  # bootstraps the key set at T0
    first = inst.get("/readyz")
    assert (first["signing_alg"], first["algorithm_switch"]) == (old, None)
    old_kid = first["signing_kid"]

    # Two days in, before the change: a verifier (AWS) fetches the JWKS and the local STS caches it for the lead.
    change = T0 + timedelta(days=2)
    clock.now = change - SECOND
    await inst.operator_pass(client)
    jwks_before = inst.get("/.well-known/jwks.json")
    inst.start_sts()
    inst.assume_role(inst.mint().token)  # the STS's first fetch: this copy is cached until change + lead - 1 s

    # The change: new settings, the operator rolls and adds a key of the new type.
    clock.now = change
    await inst.set_algorithm(new)
    # The service has the new settings before the operator's pass: it keeps signing and says what it waits for.
    waiting = inst.get("/readyz")
    assert waiting["ready"] is True and waiting["signing_kid"] == old_kid
    assert (waiting["algorithm_switch"]["to"], waiting["algorithm_switch"]["kid"]) == (new, None)
    assert inst.mint().kid == old_kid
    await inst.operator_pass(client)
    ready = inst.get("/readyz")
    switch = ready["algorithm_switch"]
    activation = change + LEAD
    assert ready["signing_kid"] == old_kid and ready["signing_alg"] == old
    assert switch["from"] == old and switch["to"] == new and switch["at"] == f"{activation:%Y-%m-%dT%H:%M:%SZ}"
    new_kid = switch["kid"]
    status = await key_status(client)
    assert status["algorithm"] == new and status["signing"]["kid"] == old_kid
    assert status["algorithmSwitch"] == switch  # the operator's status says the same as /readyz
    # The JWKS a verifier fetches now, before the new key signs: both types, public members only.
    jwks_published = inst.get("/.well-known/jwks.json")
    check_jwks(jwks_published)
    assert {old_kid, new_kid} <= kids(jwks_published)
    assert {k["kty"] for k in jwks_published["keys"]} == {"RSA", "EC"}
    discovery = inst.get("/.well-known/openid-configuration")
    assert set(discovery["id_token_signing_alg_values_supported"]) >= {old, new}
    old_removed = activation + OVERLAP

    times = sorted({change + n * HOUR for n in range(0, 28)} | {
        activation - SECOND, activation, activation + SECOND,  # the switch itself
        activation - SECOND + timedelta(seconds=LIFETIME) - SECOND,  # the last old-key token's last second
        old_removed - SECOND, old_removed, old_removed + HOUR,
    })
    for at in times:
        clock.now = at
        await inst.operator_pass(client)
        minted = inst.mint()
        if at < activation:
            assert (minted.kid, minted.alg) == (old_kid, old), f"the new key signed at {at}, before its time"
            assert inst.get("/readyz")["algorithm_switch"]["at"] == switch["at"]
        else:
            assert (minted.kid, minted.alg) == (new_kid, new), f"the old key signed at {at}, after the switch"
            assert inst.get("/readyz")["algorithm_switch"] is None
        # AWS: the new token, and again every earlier token that has not expired (a job may use it late).
        published = inst.get("/.well-known/jwks.json")
        check_jwks(published)
        for earlier in inst.minted:
            if earlier.exp > at:
                assert earlier.kid in kids(published), f"{earlier.kid} was unpublished at {at}, before {earlier.exp}"
                inst.assume_role(earlier.token)
        if at >= old_removed:
            assert old_kid not in kids(published)
            assert {k["kty"] for k in published["keys"]} == {KTY[new]}
        else:
            assert old_kid in kids(published)

    status = await key_status(client)
    assert status["algorithmSwitch"] is None and status["signing"]["alg"] == new
    assert all(k["alg"] == new for k in status["keys"])
    discovery = inst.get("/.well-known/openid-configuration")
    assert discovery["id_token_signing_alg_values_supported"] == sorted({"RS256", new})  # RS256: always listed
    across = [m for m in inst.minted if m.at >= change]
    assert len(across) == len(times) + 1 and {m.alg for m in across} == {old, new}
    for m in across:
        # The copy fetched before the new key signed verifies every token minted across the switch; the copy
        # fetched before the change verifies every token minted while a cache could still hold it.
        verify(m.token, jwks_published)
        if m.at < change + LEAD:
            verify(m.token, jwks_before)
